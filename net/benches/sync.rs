//! Sync throughput between two nodes on loopback, in two processes.
//!
//! The bench re-executes itself (`KAPPA_BENCH_ROLE`): first a child that
//! creates and fills the source database and exits, then the serving node,
//! a child that opens it, listens on `/ip4/127.0.0.1/tcp/0` and prints its
//! address on stdout. The parent runs the receiving node, starts empty and
//! dials the serving node; the clock runs from the dial until the parent
//! holds every entry. Two scenarios:
//!
//! - one feed of `KAPPA_BENCH_ENTRIES` entries (default 1,000,000) of
//!   `KAPPA_BENCH_PAYLOAD` bytes (default 100);
//! - `KAPPA_BENCH_FEEDS` feeds (default 1,000) of `KAPPA_BENCH_FEED_ENTRIES`
//!   entries (default 1,000);
//! - `big`: one feed of `KAPPA_BENCH_BIG_ENTRIES` entries (default 40,000)
//!   of 16 KiB, beside the limits of the disk and of loopback measured in
//!   the same run: `dd` writing as many bytes into the receiver's
//!   directory (one fsync at the end, and an fsync per MiB written, as
//!   ingest pages do), and a plain TCP copy of as many bytes over
//!   127.0.0.1 (64 KiB writes, one thread each side).
//!
//! Reported per scenario: entries/s, MB/s of payload, and for each node's
//! process its peak RSS (`VmHWM`; the parent resets its own before each
//! scenario) and the CPU time it spent during the sync.
//!
//! `KAPPA_BENCH_ONLY=one|many|big` runs one of them (`big` runs only when
//! asked for). `KAPPA_BENCH_IN_FLIGHT`,
//! `KAPPA_BENCH_INGEST_ENTRIES` and `KAPPA_BENCH_BUFFERED` override the
//! receiving node's [`kappadb_net::SyncConfig`] `max_in_flight`,
//! `max_ingest_entries` and `max_buffered_bytes`. Run with
//! `cargo bench -p kappadb-net --bench sync`. Linux only (`/proc`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use kappadb_core::{CreateOptions, Db, Entry, NetworkKey, SigningKey};
use kappadb_net::{Multiaddr, Node, NodeConfig};

/// Set in a child's environment: `fill-one`, `fill-many` or `serve`.
const ROLE: &str = "KAPPA_BENCH_ROLE";
/// Set in a child's environment: the source database's directory.
const DIR: &str = "KAPPA_BENCH_DIR";
/// The `big` scenario's payload size.
const BIG_PAYLOAD: usize = 16 * 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn network() -> NetworkKey {
    NetworkKey::from_bytes([0xbe; 32])
}

fn create(dir: &Path) -> Db {
    Db::create(
        dir,
        CreateOptions {
            network_key: Some(network()),
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

/// A field of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`).
fn proc_status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reset this process's peak RSS to its current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// User + system CPU time of this process (all threads), in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th and stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    f.iter().sum::<u64>() as f64 / 100.0
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn fill_one_feed(db: &Db, n: usize, size: usize) {
    let mut left = n;
    let mut i = 0u64;
    while left > 0 {
        let k = left.min(20_000);
        let payloads = (0..k)
            .map(|_| {
                i += 1;
                let mut p = vec![b'x'; size];
                let tag = i.to_le_bytes();
                let m = tag.len().min(size);
                p[..m].copy_from_slice(&tag[..m]);
                p
            })
            .collect();
        db.append_batch(payloads).unwrap();
        left -= k;
    }
}

fn fill_many_feeds(db: &Db, feeds: usize, per: usize, size: usize) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = 50usize;
    for start in (0..feeds).step_by(chunk) {
        let end = (start + chunk).min(feeds);
        let ids: Vec<usize> = (start..end).collect();
        let entries: Vec<Entry> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .chunks(ids.len().div_ceil(threads))
                .map(|part| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for &f in part {
                            let mut seed = [0u8; 32];
                            seed[..8].copy_from_slice(&(f as u64 + 1).to_le_bytes());
                            seed[31] = 0xbe;
                            let key = SigningKey::from_seed(seed);
                            let mut prev: Option<Entry> = None;
                            for i in 0..per {
                                let e = Entry::sign(
                                    &key,
                                    prev.as_ref(),
                                    1 + i as u64,
                                    vec![b'y'; size],
                                );
                                prev = Some(e.clone());
                                out.push(e);
                            }
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for part in entries.chunks(20_000) {
            let report = db.ingest(part.to_vec()).unwrap();
            assert!(report.rejected.is_empty());
        }
    }
}

/// The filling child: create the source database in `KAPPA_BENCH_DIR`,
/// fill it, print its peak RSS and exit.
fn fill(scenario: &str, dir: &Path) {
    let payload = env("KAPPA_BENCH_PAYLOAD", 100);
    let db = create(dir);
    let t = Instant::now();
    match scenario {
        "one" => {
            let n = env("KAPPA_BENCH_ENTRIES", 1_000_000);
            fill_one_feed(&db, n, payload);
            eprintln!("setup: {n} entries in one feed in {:.1?}", t.elapsed());
        }
        "big" => {
            let n = env("KAPPA_BENCH_BIG_ENTRIES", 40_000);
            fill_one_feed(&db, n, BIG_PAYLOAD);
            eprintln!(
                "setup: {n} entries of {BIG_PAYLOAD} bytes in one feed in {:.1?}",
                t.elapsed()
            );
        }
        "many" => {
            let feeds = env("KAPPA_BENCH_FEEDS", 1_000);
            let per = env("KAPPA_BENCH_FEED_ENTRIES", 1_000);
            fill_many_feeds(&db, feeds, per, payload);
            eprintln!(
                "setup: {feeds} feeds of {per} entries in {:.1?}",
                t.elapsed()
            );
        }
        other => panic!("unknown scenario {other}"),
    }
    db.flush_index().unwrap();
    drop(db);
    println!("filled {}", proc_status_kb("self", "VmHWM"));
}

/// The serving child: open the database in `KAPPA_BENCH_DIR`, serve it
/// until told to stop on stdin, then print its peak RSS and CPU time.
fn serve(dir: &Path) {
    let db = Db::open(dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt
        .block_on(
            Node::builder(db.clone())
                .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .mdns(false)
                .address_book(false)
                .spawn(),
        )
        .unwrap();
    let cpu0 = cpu_secs();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready {} {}",
        node.listen_addrs()[0],
        db.status().entries
    )
    .unwrap();
    out.flush().unwrap();
    // The node runs on the runtime's worker threads; wait for the parent.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let cpu = cpu_secs() - cpu0;
    let peak = proc_status_kb("self", "VmHWM");
    writeln!(out, "done {peak} {cpu:.2}").unwrap();
    out.flush().unwrap();
    rt.block_on(node.shutdown());
}

/// Kills the serving child if the parent panics.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn spawn(role: &str, dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .env(DIR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self, tag: &str) -> Vec<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let mut words = line.split_whitespace().map(str::to_string);
        assert_eq!(words.next().as_deref(), Some(tag), "child said {line:?}");
        words.collect()
    }

    /// Ask the serving child to stop; returns its peak RSS (kB) and its CPU
    /// seconds while serving.
    fn stop(&mut self) -> (u64, f64) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"stop\n").unwrap();
        drop(stdin);
        let w = self.line("done");
        self.child.wait().unwrap();
        (w[0].parse().unwrap(), w[1].parse().unwrap())
    }

    /// Wait for the filling child; returns its peak RSS (kB).
    fn filled(mut self) -> u64 {
        let w = self.line("filled");
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
        w[0].parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The receiving node's settings: the defaults, but for the overrides.
fn receiver_config() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.sync.max_in_flight = env("KAPPA_BENCH_IN_FLIGHT", config.sync.max_in_flight);
    config.sync.max_ingest_entries =
        env("KAPPA_BENCH_INGEST_ENTRIES", config.sync.max_ingest_entries);
    config.sync.max_buffered_bytes = env("KAPPA_BENCH_BUFFERED", config.sync.max_buffered_bytes);
    config
}

/// `dd` writing `bytes` (rounded up to MiB) into a file in `dir` with
/// `flags`; its MB/s (as dd counts: 10^6 bytes).
fn dd(dir: &Path, bytes: u64, flags: &str) -> f64 {
    let file = dir.join("dd.out");
    let count = bytes.div_ceil(1 << 20);
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", &format!("count={count}"), flags])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("dd runs");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "dd failed");
    // "... bytes (...) copied, 1.23 s, 456 MB/s": bytes over seconds, not
    // dd's rounded rate.
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains(" copied"))
        .expect("dd's summary");
    let copied: f64 = line
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .expect("bytes copied");
    let secs: f64 = line
        .split_once(" copied, ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .expect("seconds");
    copied / secs / 1e6
}

/// A plain TCP copy of `bytes` over loopback: one thread writes 64 KiB
/// buffers, another reads them; MB/s.
fn tcp_copy(bytes: u64) -> f64 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    });
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let buf = vec![b'z'; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(s);
    let got = reader.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, bytes);
    bytes as f64 / secs / 1e6
}

fn run(name: &str, scenario: &str, payload: usize) {
    let src = tempfile::tempdir().unwrap();
    let fill_peak = Server::spawn(&format!("fill-{scenario}"), src.path()).filled();
    let mut server = Server::spawn("serve", src.path());
    let ready = server.line("ready");
    let addr: Multiaddr = ready[0].parse().unwrap();
    let total: u64 = ready[1].parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let limits = (scenario == "big").then(|| {
        // The same bytes the sync moves, payloads only.
        let bytes = total * payload as u64;
        (
            dd(dst.path(), bytes, "conv=fsync"),
            dd(dst.path(), bytes, "oflag=dsync"),
            tcp_copy(bytes),
        )
    });
    let b = create(dst.path());
    let nb = rt
        .block_on(
            Node::builder(b.clone())
                .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .mdns(false)
                .address_book(false)
                .config(receiver_config())
                .spawn(),
        )
        .unwrap();
    reset_peak_rss();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    rt.block_on(nb.dial(addr)).unwrap();
    let mut last_report = Instant::now();
    while b.status().entries < total {
        b.watch().wait_past(b.log_end(), Duration::from_millis(50));
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {name}: {}/{} after {:.1?}",
                b.status().entries,
                total,
                t0.elapsed()
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(3600), "gave up");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let peak = proc_status_kb("self", "VmHWM");
    let (server_peak, server_cpu) = server.stop();
    rt.block_on(nb.shutdown());

    let payload_mb = (total as f64 * payload as f64) / 1e6;
    let wire_mb = (total as f64 * (payload as f64 + 180.0)) / 1e6;
    println!(
        "{name}: {total} entries in {secs:.2} s: {:.0} entries/s, {:.1} MB/s payload, ~{:.1} MB/s on the wire",
        total as f64 / secs,
        payload_mb / secs,
        wire_mb / secs
    );
    println!(
        "  receiving process: peak RSS {:.0} MiB, CPU {cpu:.1} s ({:.0}% of one core)",
        mib(peak),
        100.0 * cpu / secs
    );
    println!(
        "  serving process:   peak RSS {:.0} MiB, CPU {server_cpu:.1} s ({:.0}% of one core) (filling process: peak RSS {:.0} MiB)",
        mib(server_peak),
        100.0 * server_cpu / secs,
        mib(fill_peak),
    );
    if let Some((dd_fsync, dd_dsync, tcp)) = limits {
        println!(
            "  limits, same bytes: dd to the receiver's disk {dd_fsync:.0} MB/s (one fsync), \
             {dd_dsync:.0} MB/s (fsync per MiB); plain TCP over loopback {tcp:.0} MB/s"
        );
        println!(
            "  sync / disk (fsync per MiB): {:.0}%, sync / TCP: {:.1}%",
            100.0 * payload_mb / secs / dd_dsync,
            100.0 * payload_mb / secs / tcp
        );
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
        match role.strip_prefix("fill-") {
            Some(scenario) => fill(scenario, &dir),
            None => serve(&dir),
        }
        return;
    }
    let only = std::env::var("KAPPA_BENCH_ONLY").unwrap_or_default();
    let payload = env("KAPPA_BENCH_PAYLOAD", 100);
    if only.is_empty() || only == "one" {
        run("one feed", "one", payload);
    }
    if only.is_empty() || only == "many" {
        let feeds = env("KAPPA_BENCH_FEEDS", 1_000);
        let per = env("KAPPA_BENCH_FEED_ENTRIES", 1_000);
        run(&format!("{feeds} feeds of {per}"), "many", payload);
    }
    if only == "big" {
        run("one feed of 16 KiB payloads", "big", BIG_PAYLOAD);
    }
}
