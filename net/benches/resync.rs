//! What a connection costs as the network grows in feeds: two real nodes
//! on loopback, the dialing one connected through a byte-counting TCP
//! relay, so the figures are bytes on the wire (encrypted, with every
//! protocol's framing: pnet, Noise, Yamux, identify, gossipsub).
//!
//! For each size `n` (`KAPPA_BENCH_SIZES`, default `1000,10000,100000`)
//! of feeds of 10 entries (`KAPPA_BENCH_FEED_ENTRIES`):
//!
//! - first sync: A holds every feed, B none; B dials A. Time from the
//!   dial until both report the other in sync (`SyncIdle`), bytes both
//!   ways;
//! - converged re-sync: the same two reconnect, holding the same feeds,
//!   with the heads reconciliation (protocol version 3) and with the plain
//!   heads exchange (both nodes configured as version 2 nodes), side by
//!   side;
//! - 10 feeds differing by one entry: A one entry ahead on 10 feeds, then
//!   reconnect; both ways again;
//! - `Db::open` of B's database, and the bench process's RSS (`VmRSS`,
//!   both nodes and databases in it) at the end.
//!
//! The first sync runs up to `KAPPA_BENCH_FIRST_SYNC_MAX` feeds (default
//! 10,000); above that B's database is filled directly (pulls of many
//! small feeds are bound by round trips, one feed per request).
//!
//! Run with `cargo bench -p kappadb-net --bench resync`. Linux only
//! (`/proc`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry, NetworkKey};
use kappadb_net::{Multiaddr, Node, NodeConfig, NodeEvent, NodeHandle, SyncConfig};
use rayon::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn network() -> NetworkKey {
    NetworkKey::from_bytes([0xbf; 32])
}

fn create(dir: &std::path::Path) -> Db {
    Db::create(
        dir,
        CreateOptions {
            network_key: Some(network()),
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kb as f64 / 1024.0
}

/// A TCP relay to `target` that counts the bytes it carries.
async fn relay(target: std::net::SocketAddr, bytes: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pipe(ri, wo, bytes.clone()));
            tokio::spawn(pipe(ro, wi, bytes.clone()));
        }
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

async fn spawn(db: &Db, reconcile: bool) -> NodeHandle {
    let config = NodeConfig {
        sync: SyncConfig {
            reconcile,
            ..SyncConfig::default()
        },
        ..NodeConfig::default()
    };
    Node::builder(db.clone())
        .listen("/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>().unwrap())
        .mdns(false)
        .address_book(false)
        .config(config)
        .spawn()
        .await
        .unwrap()
}

fn tcp_addr(node: &NodeHandle) -> std::net::SocketAddr {
    use libp2p::multiaddr::Protocol;
    let addr = node.listen_addrs()[0].clone();
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(t) => port = Some(t),
            _ => {}
        }
    }
    std::net::SocketAddr::from((ip.unwrap(), port.unwrap()))
}

struct Run {
    secs: f64,
    bytes: u64,
}

/// Connect B to A through the relay; wait until both report the other in
/// sync and B holds `want` heads.
async fn connect(a: &Db, b: &Db, reconcile: bool, want: usize) -> Run {
    let na = spawn(a, reconcile).await;
    let nb = spawn(b, reconcile).await;
    let (mut ea, mut eb) = (na.events(), nb.events());
    let bytes = Arc::new(AtomicU64::new(0));
    let via = relay(tcp_addr(&na), bytes.clone()).await;
    let addr: Multiaddr = format!("/ip4/{}/tcp/{}", via.ip(), via.port())
        .parse()
        .unwrap();
    let started = Instant::now();
    nb.dial(addr).await.unwrap();
    let (pa, pb) = (na.peer_id(), nb.peer_id());
    let (mut idle_a, mut idle_b) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !(idle_a && idle_b && b.heads().len() >= want) {
        assert!(Instant::now() < deadline, "no sync within 10 minutes");
        tokio::select! {
            ev = ea.recv() => if let Ok(NodeEvent::SyncIdle { peer, .. }) = ev { idle_a |= peer == pb },
            ev = eb.recv() => if let Ok(NodeEvent::SyncIdle { peer, .. }) = ev { idle_b |= peer == pa },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = bytes.load(Ordering::Relaxed);
    na.shutdown().await;
    nb.shutdown().await;
    Run { secs, bytes }
}

fn kib(b: u64) -> String {
    if b >= 10 * 1024 * 1024 {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = env("KAPPA_BENCH_SIZES", "1000,10000,100000")
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    let per_feed: u64 = env("KAPPA_BENCH_FEED_ENTRIES", "10").parse().unwrap_or(10);
    let first_max: u64 = env("KAPPA_BENCH_FIRST_SYNC_MAX", "10000")
        .replace('_', "")
        .parse()
        .unwrap_or(10_000);
    println!(
        "resync: feeds of {per_feed} entries (100-byte payloads), two nodes on loopback, bytes counted by a TCP relay"
    );
    println!(
        "{:>8} | {:>20} | {:>20} | {:>20} | {:>20} | {:>20} | {:>9} | {:>8}",
        "feeds",
        "first sync",
        "re-sync (v3)",
        "re-sync (plain)",
        "10 differ (v3)",
        "10 differ (plain)",
        "Db::open",
        "RSS"
    );
    for n in sizes {
        let started = Instant::now();
        let feeds: Vec<Vec<Entry>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut p = TestPeer::new(1_000_000 + i);
                (0..per_feed + 2)
                    .map(|t| p.make(t, vec![b'x'; 100]))
                    .collect()
            })
            .collect();
        let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = create(da.path());
        let b = create(db_.path());
        let base: Vec<Entry> = feeds
            .iter()
            .flat_map(|f| f[..per_feed as usize].iter().cloned())
            .collect();
        for chunk in base.chunks(8192) {
            a.ingest(chunk.to_vec()).unwrap();
        }
        drop(base);
        eprintln!(
            "  {n} feeds: entries made and stored in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let want = a.heads().len();
        // Pulls go one feed per request, 4 in flight: a first sync of many
        // small feeds is bound by round trips (over 10 minutes for 100,000
        // feeds here). Above the limit B is filled directly instead.
        let first = if n <= first_max {
            Some(connect(&a, &b, true, want).await)
        } else {
            let base: Vec<Entry> = feeds
                .iter()
                .flat_map(|f| f[..per_feed as usize].iter().cloned())
                .collect();
            for chunk in base.chunks(8192) {
                b.ingest(chunk.to_vec()).unwrap();
            }
            None
        };
        let v3 = connect(&a, &b, true, want).await;
        let plain = connect(&a, &b, false, want).await;
        // A one entry ahead on 10 feeds; once for each protocol.
        let mut differ = Vec::new();
        for (extra, reconcile) in [(0usize, true), (1, false)] {
            let step: Vec<Entry> = feeds
                .iter()
                .take(10)
                .map(|f| f[per_feed as usize + extra].clone())
                .collect();
            a.ingest(step).unwrap();
            differ.push(connect(&a, &b, reconcile, want).await);
        }
        let ids = |db: &Db| -> Vec<_> {
            let mut h: Vec<_> = db
                .heads()
                .into_iter()
                .map(|(f, h)| (f, h.seq, h.id))
                .collect();
            h.sort();
            h
        };
        assert!(ids(&a) == ids(&b), "the two nodes did not converge");
        let rss = rss_mb();
        drop(b);
        let t = Instant::now();
        let b = Db::open(db_.path()).unwrap();
        let open = t.elapsed().as_secs_f64();
        drop(b);
        let cell = |r: &Run| format!("{:>7.3} s {:>10}", r.secs, kib(r.bytes));
        println!(
            "{:>8} | {} | {} | {} | {} | {} | {:>7.3} s | {:>5.0} MB",
            n,
            first
                .as_ref()
                .map_or_else(|| format!("{:>20}", "(filled directly)"), cell),
            cell(&v3),
            cell(&plain),
            cell(&differ[0]),
            cell(&differ[1]),
            open,
            rss
        );
    }
}
