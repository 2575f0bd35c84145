//! Bridge throughput: N entries of 100 bytes (KAPPADB_BENCH_N, 1,000,000 by
//! default) appended first, then produced through the bridge to a local
//! broker (Tansu on loopback, which this bench starts; or
//! KAPPADB_KAFKA_BROKERS). Prints entries/s, MB/s, the bridge's CPU time
//! and peak memory, and the broker's CPU time. Asserts nothing.
//!
//! ```text
//! cargo bench -p kappadb-bridge --bench produce
//! ```

use std::time::{Duration, Instant};

use kappadb_bridge::test_broker::{Broker, tansu_binary};
use kappadb_bridge::{BridgeConfig, KafkaBridge};
use kappadb_core::{CreateOptions, Db};

/// A field of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`).
fn proc_status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (all threads).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

fn main() {
    let n: usize = std::env::var("KAPPADB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, addr, broker_pid) = match std::env::var("KAPPADB_KAFKA_BROKERS") {
        Ok(a) => (None, a, None),
        Err(_) => {
            let bin = tansu_binary()
                .expect("no broker: run .ci/run once (it builds Tansu), or set KAPPADB_TANSU");
            let b = Broker::start(&bin, &tmp.path().join("broker"));
            let (a, pid) = (b.addr(), b.pid());
            (Some(b), a, pid)
        }
    };
    let db = Db::create(&tmp.path().join("db"), CreateOptions::default()).unwrap();
    let t = Instant::now();
    let payload = vec![b'x'; 100];
    let mut left = n;
    while left > 0 {
        let k = left.min(10_000);
        db.append_batch(vec![payload.clone(); k]).unwrap();
        left -= k;
    }
    println!(
        "appended {n} entries of 100 bytes in {:.1} s ({} log bytes)",
        t.elapsed().as_secs_f64(),
        db.log_end()
    );

    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss0 = proc_status_kb("self", "VmRSS");
    let cpu0 = cpu_secs("self");
    let bcpu0 = broker_pid.map(|p| cpu_secs(&p.to_string()));
    let t = Instant::now();
    let cfg = BridgeConfig::new(&addr, "bench", tmp.path().join("cp.json"));
    let bridge = KafkaBridge::start(db.clone(), cfg).unwrap();
    let mut last_print = Instant::now();
    loop {
        let s = bridge.status();
        if s.state == "running" && s.lag_records == 0 && s.in_flight == 0 {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "  {:.0} s: {} produced, {} behind",
                t.elapsed().as_secs_f64(),
                s.produced,
                s.lag_records
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    let s = bridge.status();
    let cpu = cpu_secs("self") - cpu0;
    let peak = proc_status_kb("self", "VmHWM");
    bridge.stop().unwrap();
    let payload_mb = (n * 100) as f64 / 1e6;
    let log_mb = db.log_end() as f64 / 1e6;
    println!("bridged {} records in {secs:.1} s", s.produced);
    println!(
        "  {:.0} entries/s, {:.1} MB/s of payload ({:.1} MB/s of log)",
        n as f64 / secs,
        payload_mb / secs,
        log_mb / secs
    );
    println!(
        "  bridge CPU {cpu:.1} s ({:.0}% of one core), memory +{:.0} MiB over the {:.0} MiB before it (peak RSS {:.0} MiB)",
        100.0 * cpu / secs,
        peak.saturating_sub(rss0) as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let t = Instant::now();
    match kappadb_bridge::consume::read_topic(&addr, "bench", Duration::from_secs(60)) {
        Ok(all) => println!(
            "read the topic back: {} records in {:.1} s ({:.0} records/s)",
            all.len(),
            t.elapsed().as_secs_f64(),
            all.len() as f64 / t.elapsed().as_secs_f64()
        ),
        Err(e) => println!("reading the topic back failed: {e}"),
    }
    if let (Some(p), Some(b0)) = (broker_pid, bcpu0) {
        let bcpu = cpu_secs(&p.to_string()) - b0;
        println!(
            "  broker CPU {bcpu:.1} s ({:.0}% of one core), peak RSS {:.0} MiB",
            100.0 * bcpu / secs,
            proc_status_kb(&p.to_string(), "VmHWM") as f64 / 1024.0
        );
    }
}
