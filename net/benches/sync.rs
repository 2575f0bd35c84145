//! Sync throughput between two nodes on loopback.
//!
//! Node A holds the entries, node B starts empty and dials A; the clock
//! runs from the dial until B holds every entry. Two scenarios:
//!
//! - one feed of `KAPPA_BENCH_ENTRIES` entries (default 1,000,000) of
//!   `KAPPA_BENCH_PAYLOAD` bytes (default 100);
//! - `KAPPA_BENCH_FEEDS` feeds (default 1,000) of `KAPPA_BENCH_FEED_ENTRIES`
//!   entries (default 1,000).
//!
//! `KAPPA_BENCH_ONLY=one|many` runs one of them. Run with
//! `cargo bench -p kappadb-net --bench sync`.

use std::time::{Duration, Instant};

use kappadb_core::{CreateOptions, Db, Entry, NetworkKey, SigningKey};
use kappadb_net::{Multiaddr, Node};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn create(network: &NetworkKey) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            network_key: Some(network.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (dir, db)
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

async fn run(name: &str, a: &Db, b: &Db, payload: usize) {
    let total = a.status().entries;
    let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let na = Node::builder(a.clone())
        .listen(loopback.clone())
        .mdns(false)
        .spawn()
        .await
        .unwrap();
    let nb = Node::builder(b.clone())
        .listen(loopback)
        .mdns(false)
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    nb.dial(na.listen_addrs()[0].clone()).await.unwrap();
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
    let payload_mb = (total as f64 * payload as f64) / 1e6;
    let wire_mb = (total as f64 * (payload as f64 + 180.0)) / 1e6;
    println!(
        "{name}: {total} entries in {secs:.2} s: {:.0} entries/s, {:.1} MB/s payload, ~{:.1} MB/s on the wire",
        total as f64 / secs,
        payload_mb / secs,
        wire_mb / secs
    );
    na.shutdown().await;
    nb.shutdown().await;
}

fn main() {
    let only = std::env::var("KAPPA_BENCH_ONLY").unwrap_or_default();
    let payload = env("KAPPA_BENCH_PAYLOAD", 100);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let network = NetworkKey::from_bytes([0xbe; 32]);

    if only.is_empty() || only == "one" {
        let n = env("KAPPA_BENCH_ENTRIES", 1_000_000);
        let (_da, a) = create(&network);
        let (_db, b) = create(&network);
        let t = Instant::now();
        fill_one_feed(&a, n, payload);
        eprintln!("setup: {n} entries in one feed in {:.1?}", t.elapsed());
        rt.block_on(run("one feed", &a, &b, payload));
    }
    if only.is_empty() || only == "many" {
        let feeds = env("KAPPA_BENCH_FEEDS", 1_000);
        let per = env("KAPPA_BENCH_FEED_ENTRIES", 1_000);
        let (_da, a) = create(&network);
        let (_db, b) = create(&network);
        let t = Instant::now();
        fill_many_feeds(&a, feeds, per, payload);
        eprintln!(
            "setup: {feeds} feeds of {per} entries in {:.1?}",
            t.elapsed()
        );
        rt.block_on(run(&format!("{feeds} feeds of {per}"), &a, &b, payload));
    }
}
