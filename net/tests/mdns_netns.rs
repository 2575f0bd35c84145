//! LAN discovery with mDNS, for real: two network namespaces joined by a
//! veth pair (10.77.x.0/24 inside the namespaces only), one node process in
//! each, no addresses given. They must find each other, connect once and
//! sync both ways.
//!
//! mDNS skips loopback, so this cannot run on 127.0.0.1. It needs root and
//! `ip netns`; without them the test fails and says so. The binary is its
//! own child: `ip netns exec NS <this binary> --child ...` runs one node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kappadb_core::{CreateOptions, Db, FeedId, NetworkKey};
use kappadb_net::{Node, NodeEvent};

const ENTRIES: usize = 50;
const CHILD_TIMEOUT: Duration = Duration::from_secs(40);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("mdns_netns: test");
        return;
    }
    if args.iter().any(|a| a == "--child") {
        std::process::exit(child(&args));
    }
    println!("running 1 test");
    let t = Instant::now();
    mdns_discovers_and_syncs_across_namespaces();
    println!(
        "test mdns_discovers_and_syncs_across_namespaces ... ok ({:?})",
        t.elapsed()
    );
}

fn arg<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("missing {name}"))
}

/// One node in a namespace: run until this db holds the other feed, then
/// stop. Exit code 0 on success.
fn child(args: &[String]) -> i32 {
    let dir = PathBuf::from(arg(args, "--dir"));
    let want: FeedId = arg(args, "--want").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let db = Db::open(&dir).unwrap();
        let node = Node::builder(db.clone())
            .listen("/ip4/0.0.0.0/tcp/0".parse().unwrap())
            .mdns(true)
            .spawn()
            .await
            .unwrap();
        let mut events = node.events();
        let deadline = tokio::time::Instant::now() + CHILD_TIMEOUT;
        let (mut discovered, mut connected, mut idle) = (0, 0, false);
        let have = |db: &Db| db.head(&want).is_some_and(|h| h.seq == ENTRIES as u64);
        // Done when this side holds the other feed and the session is idle
        // (both sides hold everything), or the other side, idle first,
        // has left.
        let mut gone = false;
        while !(have(&db) && (idle || gone)) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => {
                    eprintln!(
                        "child: timed out (discovered {discovered}, connected {connected}, idle {idle}, have {})",
                        have(&db)
                    );
                    return 1;
                }
                Ok(Ok(NodeEvent::PeerDiscovered { peer, addr })) => {
                    discovered += 1;
                    eprintln!("child: discovered {peer} at {addr}");
                }
                Ok(Ok(NodeEvent::PeerConnected { peer, .. })) => {
                    connected += 1;
                    eprintln!("child: connected to {peer}");
                }
                Ok(Ok(NodeEvent::SyncIdle { .. })) => idle = true,
                Ok(Ok(NodeEvent::PeerDisconnected { .. })) => gone = true,
                Ok(_) => {}
            }
        }
        println!(
            "child: synced; connections {}, self {}",
            node.connected_peers().len(),
            node.peer_id()
        );
        node.shutdown().await;
        0
    })
}

/// Deletes the namespaces (and with them the veth pair) on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip`: {e}; this test needs iproute2"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_db(dir: &Path, network: &NetworkKey, tag: &str) -> FeedId {
    let db = Db::create(
        dir,
        CreateOptions {
            network_key: Some(network.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let payloads = (0..ENTRIES)
        .map(|i| format!("{tag}{i}").into_bytes())
        .collect();
    db.append_batch(payloads).unwrap();
    db.feed_id()
}

fn wait_child(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mdns_discovers_and_syncs_across_namespaces() {
    // Fail loudly, not silently, where namespaces are unavailable.
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`ip netns` is unavailable ({}): this test needs root and iproute2 to create network namespaces",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "`ip netns` is unavailable ({e}): this test needs root and iproute2 to create network namespaces"
        ),
    }
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("kdb-a-{pid}"), format!("kdb-b-{pid}"));
    let (veth_a, veth_b) = (format!("kdba{pid}"), format!("kdbb{pid}"));
    let add = Command::new("ip")
        .args(["netns", "add", &ns_a])
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "`ip netns add` failed ({}): this test needs root to create network namespaces",
        String::from_utf8_lossy(&add.stderr).trim()
    );
    let mut guard = Namespaces(vec![ns_a.clone()]);
    ip(&["netns", "add", &ns_b]);
    guard.0.push(ns_b.clone());
    ip(&[
        "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
    ]);
    ip(&["link", "set", &veth_a, "netns", &ns_a]);
    ip(&["link", "set", &veth_b, "netns", &ns_b]);
    for (ns, dev, addr) in [
        (&ns_a, &veth_a, "10.77.0.1/24"),
        (&ns_b, &veth_b, "10.77.0.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    let network = NetworkKey::from_bytes([0x3d; 32]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let feed_a = create_db(dir_a.path(), &network, "a");
    let feed_b = create_db(dir_b.path(), &network, "b");

    let exe = std::env::current_exe().unwrap();
    let spawn = |ns: &str, dir: &Path, want: FeedId| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(["--child", "--dir"])
            .arg(dir)
            .args(["--want", &want.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child_a = spawn(&ns_a, dir_a.path(), feed_b);
    let mut child_b = spawn(&ns_b, dir_b.path(), feed_a);
    let deadline = Instant::now() + CHILD_TIMEOUT + Duration::from_secs(10);
    let status_a = wait_child(&mut child_a, deadline);
    let status_b = wait_child(&mut child_b, deadline);
    drop(guard);
    assert!(
        status_a.is_some_and(|s| s.success()),
        "node A did not sync: {status_a:?}"
    );
    assert!(
        status_b.is_some_and(|s| s.success()),
        "node B did not sync: {status_b:?}"
    );

    let a = Db::open(dir_a.path()).unwrap();
    let b = Db::open(dir_b.path()).unwrap();
    assert_eq!(a.head(&feed_b).unwrap().seq, ENTRIES as u64);
    assert_eq!(b.head(&feed_a).unwrap().seq, ENTRIES as u64);
    // Each remembers the other, at its 10.77 address.
    let book = kappadb_net::peers::AddressBook::load(dir_a.path());
    assert!(
        book.peers().iter().any(|p| p.feed == Some(feed_b)
            && p.addrs.iter().any(|x| x.to_string().contains("10.77.0.2"))),
        "{:?}",
        book.peers()
    );
}
