//! The libp2p port under hostile use: hundreds of idle TCP connections
//! and garbage senders neither lock an honest peer out nor grow the node's
//! memory without bound (connection limits, `kappadb_net::admission`).
//!
//! Its own test binary, so the resident-set figures are the node's alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kappadb_core::{CreateOptions, Db, NetworkKey};
use kappadb_net::multiaddr::Protocol;
use kappadb_net::{ConnectionLimitsConfig, Node, sync_once};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Idle connections from one address.
const IDLE_ONE_ADDRESS: usize = 500;
/// Idle connections from as many addresses, one each.
const IDLE_MANY_ADDRESSES: u8 = 100;
/// Connections that send garbage instead of a handshake.
const GARBAGE: u8 = 50;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn db_in(dir: &std::path::Path, network: &NetworkKey) -> Db {
    Db::create(
        dir,
        CreateOptions {
            network_key: Some(network.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// How a connection ended within `wait`: `Some(bytes read)` if the node
/// closed it, `None` if it was still open.
async fn closed_within(mut stream: TcpStream, wait: Duration) -> (Option<usize>, TcpStream) {
    let mut got = 0;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (None, stream),
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(got), stream),
            Ok(Ok(n)) => got += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_garbage_do_not_lock_out_an_honest_peer() {
    let needed = IDLE_ONE_ADDRESS as u64 + 2 * (IDLE_MANY_ADDRESSES as u64 + GARBAGE as u64) + 200;
    let limit = open_files_limit();
    assert!(
        limit >= needed,
        "this test holds about {needed} sockets open; raise the open-files limit (ulimit -n, now {limit})"
    );
    let network = NetworkKey::from_bytes([21; 32]);
    let dir_a = tempfile::tempdir().unwrap();
    let a = db_in(dir_a.path(), &network);
    for chunk in 0..4 {
        let payloads: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("entry {chunk}/{i}").into_bytes())
            .collect();
        a.append_batch(payloads).unwrap();
    }
    let limits = ConnectionLimitsConfig::default();
    assert!(limits.max_pending_incoming > IDLE_MANY_ADDRESSES as u32 + GARBAGE as u32);
    let node = Node::builder(a.clone())
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .mdns(false)
        .spawn()
        .await
        .unwrap();
    let addr = node.listen_addrs()[0].clone();
    let port = addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Warm up: one honest sync first, so the figures below measure the
    // connections and not the first sync's allocations.
    let dir_w = tempfile::tempdir().unwrap();
    let warm = db_in(dir_w.path(), &network);
    sync_once(warm.clone(), addr.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let rss_before = rss_kib();

    // 500 idle connections from 127.0.0.2: only a few may wait in the
    // handshake, the rest are refused at once.
    let mut one_address = Vec::new();
    for _ in 0..IDLE_ONE_ADDRESS {
        one_address.push(connect_from(Ipv4Addr::new(127, 0, 0, 2), target).await);
    }
    // One idle connection from each of 100 addresses: within the total
    // cap, so they are held (until the handshake timeout).
    let mut many_addresses = Vec::new();
    for i in 1..=IDLE_MANY_ADDRESSES {
        many_addresses.push(connect_from(Ipv4Addr::new(127, 0, 1, i), target).await);
    }
    // Garbage instead of a handshake: refused once the network check fails.
    let mut garbage = Vec::new();
    for i in 1..=GARBAGE {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 2, i), target).await;
        let junk: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(2654435761) >> 13) as u8 ^ i)
            .collect();
        // The node may already have hung up; that is fine.
        let _ = s.write_all(&junk).await;
        garbage.push(s);
    }

    // An honest peer syncs everything while all of that is going on.
    let dir_b = tempfile::tempdir().unwrap();
    let b = db_in(dir_b.path(), &network);
    let summary = sync_once(b.clone(), addr.clone(), Duration::from_secs(30))
        .await
        .expect("the honest peer could not sync");
    assert_eq!(summary.pulled, 2000);
    assert_eq!(b.head(&a.feed_id()).map(|h| h.seq), Some(2000));

    let mut set = JoinSet::new();
    let wait = Duration::from_secs(5);
    for s in one_address {
        set.spawn(async move { (0u8, closed_within(s, wait).await) });
    }
    for s in many_addresses {
        set.spawn(async move { (1u8, closed_within(s, wait).await) });
    }
    for s in garbage {
        set.spawn(async move { (2u8, closed_within(s, wait).await) });
    }
    let mut refused = [0usize; 3];
    let mut held = Vec::new();
    while let Some(r) = set.join_next().await {
        let (group, (closed, stream)) = r.unwrap();
        if closed.is_some() {
            refused[group as usize] += 1;
        }
        held.push(stream);
    }
    let rss_after = rss_kib();
    let grew = rss_after.saturating_sub(rss_before);
    println!(
        "refused: {}/{IDLE_ONE_ADDRESS} from one address, {}/{IDLE_MANY_ADDRESSES} from many, {}/{GARBAGE} garbage; \
         RSS {rss_before} KiB -> {rss_after} KiB (+{grew} KiB)",
        refused[0], refused[1], refused[2]
    );
    let per_ip = limits.max_pending_incoming_per_ip as usize;
    assert!(
        refused[0] >= IDLE_ONE_ADDRESS - per_ip,
        "only {} of {IDLE_ONE_ADDRESS} connections from one address were refused (cap {per_ip})",
        refused[0]
    );
    assert!(
        refused[1] < IDLE_MANY_ADDRESSES as usize / 10,
        "{} of {IDLE_MANY_ADDRESSES} single connections from distinct addresses were refused",
        refused[1]
    );
    assert_eq!(
        refused[2], GARBAGE as usize,
        "every garbage sender is hung up on"
    );
    assert!(
        grew < 64 * 1024,
        "the node grew by {grew} KiB holding {} connections",
        IDLE_ONE_ADDRESS + IDLE_MANY_ADDRESSES as usize + GARBAGE as usize
    );
    drop(held);

    // And it still serves afterwards.
    a.append(b"after".to_vec()).unwrap();
    let again = sync_once(b.clone(), addr, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.pulled, 1);
    node.shutdown().await;
}
