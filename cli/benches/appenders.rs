//! Many writers through the local API: one client, then W concurrent
//! clients (default 8), each appending single entries over HTTP to a
//! `kappa serve` in a fresh database for a fixed time. Prints acknowledged
//! appends/s (each durable when acknowledged) and p50/p99 latency of each,
//! side by side, with the entries per append batch (so per fsync) the
//! node's /metrics counted and the node's CPU use (% of one core).
//!
//! `KAPPADB_BENCH_SECS` sets each phase's length (default 5),
//! `KAPPADB_BENCH_WRITERS` W, `KAPPADB_BENCH_KAPPA` the `kappa` binary to
//! run (default: this package's, to compare builds),
//! `KAPPADB_BENCH_SERVE_ARGS` more options for `kappa serve`
//! (`--no-views`).
//! Run with `cargo bench -p kappadb-cli --bench appenders`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kappa() -> PathBuf {
    std::env::var_os("KAPPADB_BENCH_KAPPA")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kappa")), PathBuf::from)
}

/// `KAPPADB_BENCH_SERVE_ARGS`, split on whitespace (`--no-views`, say).
fn extra_serve_args() -> Vec<String> {
    std::env::var("KAPPADB_BENCH_SERVE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `kappa init`, then `kappa serve` with its API on a free loopback port;
/// returns once the API's address file is there.
fn start(dir: &Path) -> (Server, String, String) {
    let status = Command::new(kappa())
        .arg("--dir")
        .arg(dir)
        .arg("init")
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("kappa init: {e}"));
    assert!(status.success(), "kappa init failed");
    let child = Command::new(kappa())
        .arg("--dir")
        .arg(dir)
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(["--api", "127.0.0.1:0"])
        .args(extra_serve_args())
        .env_remove("KAPPA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("kappa serve: {e}"));
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let file = std::fs::read_to_string(dir.join("api.json")).ok();
        let token = std::fs::read_to_string(dir.join("api.token")).ok();
        if let (Some(file), Some(token)) = (file, token) {
            let v: serde_json::Value =
                serde_json::from_str(&file).unwrap_or_else(|e| panic!("api.json: {e}"));
            if let Some(addr) = v["addr"].as_str() {
                return (server, format!("http://{addr}"), token.trim().to_string());
            }
        }
        assert!(
            Instant::now() < deadline,
            "kappa serve did not start its API"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `writers` clients appending one entry per request for `secs`; returns
/// the acknowledged count and every request's latency.
fn run(base: &str, token: &str, writers: usize, secs: u64) -> (usize, Vec<Duration>) {
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let url = format!("{base}/v1/append");
            let auth = format!("Bearer {token}");
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let body = serde_json::json!({
                        "payload": {"type": "bench", "writer": w, "i": i, "text": "x".repeat(64)}
                    })
                    .to_string();
                    let t = Instant::now();
                    let res = agent
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                        .unwrap_or_else(|e| panic!("append: {e}"));
                    let text = res
                        .into_body()
                        .read_to_string()
                        .unwrap_or_else(|e| panic!("append answer: {e}"));
                    latencies.push(t.elapsed());
                    assert!(text.contains("\"appended\""), "append failed: {text}");
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap_or_else(|_| panic!("a writer panicked")));
    }
    all.sort();
    (all.len(), all)
}

/// `kappa_appended_entries_total` and the count of
/// `kappa_append_duration_seconds` (one per append batch, so one per
/// fsync) from the node's /metrics.
fn batches(base: &str, token: &str) -> (f64, f64) {
    let res = ureq::get(format!("{base}/metrics"))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    let text = res
        .into_body()
        .read_to_string()
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("kappa_appended_entries_total"),
        value("kappa_append_duration_seconds_count"),
    )
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
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

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let secs = env_or("KAPPADB_BENCH_SECS", 5);
    let writers = env_or("KAPPADB_BENCH_WRITERS", 8) as usize;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path().join("node");
    let (server, base, token) = start(&dir);
    println!(
        "kappadb-cli appenders bench: {} , {secs} s per phase, database in {}",
        kappa().display(),
        tmp.path().display()
    );
    // Warm up the connection and the node.
    run(&base, &token, 1, 1);
    let pid = server.0.id();
    let mut rows = Vec::new();
    for w in [1, writers] {
        let (entries0, fsyncs0) = batches(&base, &token);
        let cpu0 = cpu_secs(pid);
        let (n, lat) = run(&base, &token, w, secs);
        let cpu = cpu_secs(pid) - cpu0;
        let (entries1, fsyncs1) = batches(&base, &token);
        let per_fsync = (entries1 - entries0) / (fsyncs1 - fsyncs0).max(1.0);
        rows.push((
            w,
            n as f64 / secs as f64,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            per_fsync,
            100.0 * cpu / secs as f64,
        ));
    }
    println!("writers  appends/s   p50 ms   p99 ms  entries/fsync  node CPU");
    for (w, rate, p50, p99, per_fsync, cpu) in &rows {
        println!("{w:>7}  {rate:>9.0}  {p50:>7.2}  {p99:>7.2}  {per_fsync:>13.2}  {cpu:>7.0}%");
    }
    if let [(_, one, ..), (_, many, ..)] = rows[..] {
        println!("{writers} writers / 1 writer: {:.2}x", many / one);
    }
    drop(server);
}
