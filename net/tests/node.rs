//! libp2p-level tests: real nodes on 127.0.0.1 with ephemeral ports.
//! Waits are event-driven (node events, with a deadline); no fixed sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, EntryId, FeedId, NetworkKey, SigningKey};
use kappadb_net::behaviour::{SyncCodec, build_transport, identity_keypair};
use kappadb_net::protocol::{HeadInfo, Heads, Limits, PROTOCOL_V2, Page, Request, Response};
use kappadb_net::{
    Multiaddr, NetError, Node, NodeConfig, NodeEvent, NodeHandle, SyncConfig, sync_once,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, Swarm};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(25);

struct Peer {
    dir: tempfile::TempDir,
    db: Db,
}

fn peer(network: &NetworkKey) -> Peer {
    peer_with_key(network, None)
}

fn peer_with_key(network: &NetworkKey, key: Option<SigningKey>) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            network_key: Some(network.clone()),
            signing_key: key,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Peer { dir, db }
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

/// Logs go to the test output; `RUST_LOG=kappadb_net=debug` shows them.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn node(db: &Db) -> NodeHandle {
    init_tracing();
    Node::builder(db.clone())
        .listen(loopback())
        .mdns(false)
        .spawn()
        .await
        .unwrap()
}

fn addr(node: &NodeHandle) -> Multiaddr {
    node.listen_addrs()[0].clone()
}

fn append_n(db: &Db, n: usize, size: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(2000);
        let payloads: Vec<Vec<u8>> = (0..k).map(|i| vec![b'a' + (i % 26) as u8; size]).collect();
        db.append_batch(payloads).unwrap();
        left -= k;
    }
}

fn heads(db: &Db) -> HashMap<FeedId, (u64, EntryId)> {
    db.heads()
        .into_iter()
        .map(|(f, h)| (f, (h.seq, h.id)))
        .collect()
}

/// Wait until `cond` holds, re-checking whenever a node reports anything
/// (and at least every 100 ms).
async fn wait_until(
    events: &mut [&mut broadcast::Receiver<NodeEvent>],
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let recv = futures::future::select_all(events.iter_mut().map(|rx| Box::pin(rx.recv())));
        let _ = tokio::time::timeout(Duration::from_millis(100), recv).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_of_three_converges() {
    let net = NetworkKey::from_bytes([1; 32]);
    let (a, b, c) = (peer(&net), peer(&net), peer(&net));
    append_n(&a.db, 30, 50);
    append_n(&b.db, 20, 50);
    append_n(&c.db, 10, 50);
    let (na, nb, nc) = (node(&a.db).await, node(&b.db).await, node(&c.db).await);
    let (mut ea, mut ec) = (na.events(), nc.events());
    na.dial(addr(&nb)).await.unwrap();
    nc.dial(addr(&nb)).await.unwrap();
    wait_until(&mut [&mut ea, &mut ec], "three identical logs", || {
        let h = heads(&a.db);
        h.len() == 3 && h == heads(&b.db) && h == heads(&c.db)
    })
    .await;
    assert_eq!(a.db.head(&c.db.feed_id()).unwrap().seq, 10);
    assert!(
        !na.connected_peers().contains(&nc.peer_id()),
        "A and C are not connected"
    );
    for n in [na, nb, nc] {
        n.shutdown().await;
    }
}

/// A node that speaks only version 2 (no heads reconciliation), as the
/// nodes before version 3 did: the protocol list and the engine of one.
async fn old_node(db: &Db) -> NodeHandle {
    init_tracing();
    let config = NodeConfig {
        sync: SyncConfig {
            reconcile: false,
            ..SyncConfig::default()
        },
        ..NodeConfig::default()
    };
    Node::builder(db.clone())
        .listen(loopback())
        .mdns(false)
        .config(config)
        .spawn()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_node_and_a_version_3_node_sync_both_ways() {
    let net = NetworkKey::from_bytes([12; 32]);
    // Keys on both sides of the tie-break, so the new node is once the
    // side that starts the reconciliation and once the side that waits.
    for (seed_old, seed_new) in [([0x11; 32], [0xee; 32]), ([0xee; 32], [0x11; 32])] {
        let old = peer_with_key(&net, Some(SigningKey::from_seed(seed_old)));
        let new = peer_with_key(&net, Some(SigningKey::from_seed(seed_new)));
        append_n(&old.db, 300, 50);
        append_n(&new.db, 200, 50);
        let mut third = TestPeer::new(99);
        let shared: Vec<kappadb_core::Entry> = (0..50).map(|i| third.make(i, "s")).collect();
        old.db.ingest(shared[..20].to_vec()).unwrap();
        new.db.ingest(shared.clone()).unwrap();
        let n_old = old_node(&old.db).await;
        let n_new = node(&new.db).await;
        let (mut eo, mut en) = (n_old.events(), n_new.events());
        n_new.dial(addr(&n_old)).await.unwrap();
        wait_until(&mut [&mut eo, &mut en], "old and new in sync", || {
            let h = heads(&old.db);
            h.len() == 3 && h == heads(&new.db)
        })
        .await;
        assert_eq!(old.db.head(&third.key.feed_id()).unwrap().seq, 50);
        n_old.shutdown().await;
        n_new.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_version_3_nodes_that_agree_on_many_feeds_resync_with_nothing_pulled() {
    let net = NetworkKey::from_bytes([13; 32]);
    let (a, b) = (peer(&net), peer(&net));
    let entries: Vec<kappadb_core::Entry> = (0..3000u64)
        .map(|i| TestPeer::new(50_000 + i).make(1, "one"))
        .collect();
    for chunk in entries.chunks(1000) {
        a.db.ingest(chunk.to_vec()).unwrap();
        b.db.ingest(chunk.to_vec()).unwrap();
    }
    append_n(&a.db, 5, 10);
    let (na, nb) = (node(&a.db).await, node(&b.db).await);
    let mut eb = nb.events();
    nb.dial(addr(&na)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut pulled = None;
    while pulled.is_none() && Instant::now() < deadline {
        if let Ok(Ok(NodeEvent::SyncIdle { peer, stats })) =
            tokio::time::timeout(Duration::from_secs(1), eb.recv()).await
            && peer == na.peer_id()
        {
            pulled = Some(stats.pulled);
        }
    }
    assert_eq!(pulled, Some(5), "only A's own entries are pulled");
    assert_eq!(heads(&a.db), heads(&b.db));
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_catches_up_on_10k_entries() {
    let net = NetworkKey::from_bytes([2; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 10_000, 100);
    let na = node(&a.db).await;
    let nb = node(&b.db).await;
    let mut eb = nb.events();
    let started = Instant::now();
    let remote = nb.dial(addr(&na)).await.unwrap();
    assert_eq!(remote, na.peer_id());
    let mut idle = false;
    wait_until(&mut [&mut eb.resubscribe()], "10,000 entries", || {
        b.db.head(&a.db.feed_id()).is_some_and(|h| h.seq == 10_000)
    })
    .await;
    eprintln!("late joiner: 10,000 entries in {:?}", started.elapsed());
    // The session reports idle once both sides are done.
    let deadline = Instant::now() + WAIT;
    while !idle && Instant::now() < deadline {
        if let Ok(Ok(NodeEvent::SyncIdle { peer, stats })) =
            tokio::time::timeout(Duration::from_secs(1), eb.recv()).await
        {
            idle = peer == na.peer_id() && stats.pulled == 10_000;
        }
    }
    assert!(idle, "no SyncIdle with 10,000 pulled");
    assert_eq!(heads(&a.db), heads(&b.db));
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_appends_arrive_within_two_seconds() {
    let net = NetworkKey::from_bytes([3; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 5, 10);
    let (na, nb) = (node(&a.db).await, node(&b.db).await);
    let (mut ea, mut eb) = (na.events(), nb.events());
    nb.dial(addr(&na)).await.unwrap();
    wait_until(&mut [&mut ea, &mut eb], "the first sync", || {
        heads(&a.db) == heads(&b.db)
    })
    .await;

    // An append on A.
    let t = Instant::now();
    a.db.append(b"live".to_vec()).unwrap();
    wait_until(&mut [&mut eb], "the live append on B", || {
        b.db.head(&a.db.feed_id()).is_some_and(|h| h.seq == 6)
    })
    .await;
    let took = t.elapsed();
    eprintln!("live append reached the peer in {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // An append on B, the other direction.
    let t = Instant::now();
    b.db.append(b"back".to_vec()).unwrap();
    wait_until(&mut [&mut ea], "the live append on A", || {
        a.db.head(&b.db.feed_id()).is_some_and(|h| h.seq == 1)
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // A feed neither has seen, created on A while connected.
    let mut fresh = TestPeer::new(123);
    let t = Instant::now();
    a.db.ingest(vec![fresh.make(1, "new feed")]).unwrap();
    wait_until(&mut [&mut eb], "the new feed on B", || {
        b.db.head(&fresh.key.feed_id()).is_some()
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_network_key_learns_nothing() {
    let (ours, theirs) = (
        NetworkKey::from_bytes([4; 32]),
        NetworkKey::from_bytes([5; 32]),
    );
    let (a, x) = (peer(&ours), peer(&theirs));
    append_n(&a.db, 10, 10);
    append_n(&x.db, 10, 10);
    let na = node(&a.db).await;
    let nx = node(&x.db).await;

    let t = Instant::now();
    let err = sync_once(x.db.clone(), addr(&na), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NotInNetwork { .. }), "{err:?}");
    assert!(
        err.to_string().contains("the peer is not in this network"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );

    // Without the /p2p suffix too, and with a running node.
    let mut bare = addr(&na);
    bare.pop();
    let err = nx.dial(bare).await.unwrap_err();
    assert!(matches!(err, NetError::NotInNetwork { .. }), "{err:?}");

    assert!(na.connected_peers().is_empty());
    assert!(a.db.head(&x.db.feed_id()).is_none(), "no entry crossed");
    assert!(x.db.head(&a.db.feed_id()).is_none(), "no entry crossed");
    assert_eq!(a.db.heads().len(), 1, "no feed id learned");
    assert_eq!(x.db.heads().len(), 1, "no feed id learned");
    na.shutdown().await;
    nx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_syncs_both_ways_without_p2p_suffix() {
    let net = NetworkKey::from_bytes([6; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 700, 30);
    append_n(&b.db, 300, 30);
    let na = node(&a.db).await;
    let mut bare = addr(&na);
    bare.pop();
    let summary = sync_once(b.db.clone(), bare, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(summary.peer, na.peer_id());
    assert_eq!(summary.pulled, 700);
    assert!(summary.pushed_estimate >= 300, "{summary:?}");
    assert_eq!(summary.feeds, 2);
    // Both sides are done when sync_once returns.
    assert_eq!(heads(&a.db), heads(&b.db));
    // A second run has nothing to do.
    let again = sync_once(b.db.clone(), addr(&na), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(again.pulled, 0);
    // The peer is in B's address book.
    let book = kappadb_net::peers::AddressBook::load(b.dir.path());
    assert!(
        book.get(&na.peer_id())
            .is_some_and(|r| r.last_sync.is_some())
    );
    na.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_fetches_its_own_feed_before_it_appends() {
    use kappadb_core::{AppendError, PublishHold};
    let net = NetworkKey::from_bytes([16; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 5, 20);
    let backup = tempfile::tempdir().unwrap();
    let backup_dir = backup.path().join("backup");
    a.db.backup(&backup_dir).unwrap();
    // After the backup, the original appends on and syncs to B; then the
    // original is lost.
    append_n(&a.db, 3, 20);
    let na = node(&a.db).await;
    sync_once(b.db.clone(), addr(&na), WAIT).await.unwrap();
    na.shutdown().await;
    let feed = a.db.feed_id();
    drop(a);

    let restored = tempfile::tempdir().unwrap();
    let c = Db::restore(&backup_dir, &restored.path().join("c")).unwrap();
    assert_eq!(c.feed_id(), feed);
    assert_eq!(c.head(&feed).map(|h| h.seq), Some(5));
    assert!(matches!(
        c.append(b"too early".to_vec()),
        Err(AppendError::Held(PublishHold::Restored { .. }))
    ));
    // Syncing with B brings the own feed to 8 and lifts the hold.
    let nb = node(&b.db).await;
    let summary = sync_once(c.clone(), addr(&nb), WAIT).await.unwrap();
    assert_eq!(summary.pulled, 3);
    assert_eq!(c.head(&feed).map(|h| h.seq), Some(8));
    assert_eq!(c.publish_hold(), None);
    let next = c.append(b"continued".to_vec()).unwrap();
    assert_eq!(next.seq, 9);
    sync_once(c.clone(), addr(&nb), WAIT).await.unwrap();
    assert_eq!(b.db.head(&feed).map(|h| h.seq), Some(9));
    assert!(b.db.fork(&feed).is_none(), "no fork anywhere");
    assert!(c.fork(&feed).is_none());
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_port_in_use_fails_clearly() {
    let net = NetworkKey::from_bytes([17; 32]);
    let (a, b) = (peer(&net), peer(&net));
    let na = node(&a.db).await;
    let taken = addr(&na);
    let mut bare = taken.clone();
    bare.pop();
    let Err(err) = Node::builder(b.db.clone())
        .listen(bare.clone())
        .mdns(false)
        .spawn()
        .await
    else {
        panic!("a second node bound a port in use");
    };
    assert!(
        matches!(&err, NetError::Listen { .. }) && err.to_string().contains("already in use"),
        "{err}"
    );
    // Every interface on that port is refused too; another port is fine.
    let mut any = Multiaddr::empty();
    for p in bare.iter() {
        any.push(match p {
            libp2p::multiaddr::Protocol::Ip4(_) => {
                libp2p::multiaddr::Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED)
            }
            other => other,
        });
    }
    assert!(
        Node::builder(b.db.clone())
            .listen(any)
            .mdns(false)
            .spawn()
            .await
            .is_err()
    );
    let nb = node(&b.db).await;
    sync_once(b.db.clone(), taken, WAIT).await.unwrap();
    nb.shutdown().await;
    na.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_are_found_stored_and_spread() {
    let net = NetworkKey::from_bytes([7; 32]);
    let author = SigningKey::from_seed([77; 32]);
    let feed = author.feed_id();
    let one = peer_with_key(&net, Some(author.clone()));
    let two = peer_with_key(&net, Some(author));
    let third = peer(&net);
    let fourth = peer(&net);
    append_n(&one.db, 6, 10);
    append_n(&two.db, 4, 11);

    let nthird = node(&third.db).await;
    let mut e3 = nthird.events();
    // One branch, then the other (the two share a peer id, so one at a time).
    let n1 = node(&one.db).await;
    nthird.sync_with(addr(&n1), WAIT).await.unwrap();
    assert_eq!(third.db.head(&feed).unwrap().seq, 6);
    n1.shutdown().await;
    let n2 = node(&two.db).await;
    let res = nthird.sync_with(addr(&n2), WAIT).await;
    assert!(res.is_ok(), "a fork is not a fault: {res:?}");
    wait_until(&mut [&mut e3], "the fork on the third node", || {
        third.db.fork(&feed).is_some()
    })
    .await;
    let mut reported = false;
    while let Ok(ev) = e3.try_recv() {
        reported |= matches!(ev, NodeEvent::ForkFound { feed: f, .. } if f == feed);
    }
    assert!(reported, "ForkFound must be reported");
    assert_eq!(third.db.fork_proofs().unwrap().len(), 1);

    // The proof reaches a fourth node that never saw either branch's peer.
    let n4 = node(&fourth.db).await;
    let mut e4 = n4.events();
    n4.dial(addr(&nthird)).await.unwrap();
    wait_until(&mut [&mut e4], "the proof on the fourth node", || {
        fourth.db.fork(&feed).is_some()
    })
    .await;
    for n in [nthird, n2, n4] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_sync_resumes() {
    let net = NetworkKey::from_bytes([8; 32]);
    let (a, b) = (peer(&net), peer(&net));
    const N: u64 = 30_000;
    append_n(&a.db, N as usize, 100);
    let na = node(&a.db).await;
    let slow = NodeConfig {
        sync: SyncConfig {
            max_in_flight: 1,
            ..SyncConfig::default()
        },
        ..NodeConfig::default()
    };
    let nb = Node::builder(b.db.clone())
        .listen(loopback())
        .mdns(false)
        .config(slow)
        .spawn()
        .await
        .unwrap();
    let mut eb = nb.events();
    nb.dial(addr(&na)).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, eb.recv()).await {
            Ok(Ok(NodeEvent::SyncProgress { .. })) => break,
            Ok(_) => continue,
            Err(_) => panic!("no progress"),
        }
    }
    nb.shutdown().await;
    let dir = b.dir;
    drop(b.db);
    let db = Db::open(dir.path()).unwrap();
    let partial = db.head(&a.db.feed_id()).map_or(0, |h| h.seq);
    assert!(partial > 0 && partial < N, "partial = {partial}");

    // The address book brings the peer back by itself.
    let nb = Node::builder(db.clone())
        .listen(loopback())
        .mdns(false)
        .spawn()
        .await
        .unwrap();
    let mut eb = nb.events();
    wait_until(&mut [&mut eb], "the rest of the feed", || {
        db.head(&a.db.feed_id()).is_some_and(|h| h.seq == N)
    })
    .await;
    assert!(db.verify(&mut |_, _| {}).unwrap().problems.is_empty());
    nb.shutdown().await;
    na.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_feeds_are_neither_pulled_nor_served() {
    let net = NetworkKey::from_bytes([9; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 5, 10);
    append_n(&b.db, 5, 10);
    let mut other = TestPeer::new(5);
    a.db.ingest(vec![other.make(1, "x")]).unwrap();
    let na = node(&a.db).await;
    assert!(na.block(other.key.feed_id()).await.unwrap());
    assert!(!na.block(other.key.feed_id()).await.unwrap());
    let nb = node(&b.db).await;
    assert!(nb.block(a.db.feed_id()).await.unwrap());
    let summary = nb.sync_with(addr(&na), WAIT).await.unwrap();
    assert_eq!(summary.pulled, 0);
    assert!(b.db.head(&a.db.feed_id()).is_none(), "B blocked A's feed");
    assert!(
        b.db.head(&other.key.feed_id()).is_none(),
        "A does not serve a blocked feed"
    );
    assert_eq!(a.db.head(&b.db.feed_id()).unwrap().seq, 5);
    let list = kappadb_net::blocklist::BlockList::load(b.dir.path()).unwrap();
    assert!(list.contains(&a.db.feed_id()));
    na.shutdown().await;
    nb.shutdown().await;
}

/// A peer that speaks the protocol but serves a forged page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_bans_a_peer_that_sends_a_forged_page() {
    use futures::StreamExt;
    let net = NetworkKey::from_bytes([10; 32]);
    let a = peer(&net);
    let na = node(&a.db).await;
    let mut ea = na.events();

    let mut author = TestPeer::new(31);
    let mut chain: Vec<kappadb_core::Entry> = (0..10).map(|i| author.make(i, "x")).collect();
    chain[4].signature = SigningKey::from_seed([1; 32]).sign(&chain[4].id().0);
    let feed = author.key.feed_id();

    let kp = identity_keypair(&SigningKey::from_seed([0xee; 32]));
    let evil_id = kp.public().to_peer_id();
    let behaviour = request_response::Behaviour::with_codec(
        SyncCodec::new(Limits::default()),
        [(StreamProtocol::new(PROTOCOL_V2), ProtocolSupport::Full)],
        request_response::Config::default(),
    );
    let mut evil = Swarm::new(
        build_transport(&kp, &net).unwrap(),
        behaviour,
        evil_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    evil.dial(addr(&na)).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut served_page = false;
    loop {
        let ev = tokio::time::timeout_at(deadline, evil.select_next_some())
            .await
            .expect("the node never closed the connection");
        match ev {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => {
                let response = match request {
                    Request::Heads(_) => Response::Heads(Heads {
                        heads: vec![HeadInfo {
                            feed,
                            seq: 10,
                            id: chain[9].id(),
                        }],
                        forks: vec![],
                        idle: true,
                        more: false,
                        serial: 1,
                    }),
                    Request::Want(w) => {
                        served_page = true;
                        let from = (w.from_seq - 1) as usize;
                        let to = (w.to_seq as usize).min(chain.len());
                        Response::Page(Page {
                            feed,
                            entries: chain[from..to].to_vec(),
                        })
                    }
                    Request::ForkProofs(_) => Response::ForkProofs(vec![]),
                    // Not sent on a version 2 stream.
                    Request::Reconcile(_) => Response::Refused("version 2".into()),
                };
                let _ = evil.behaviour_mut().send_response(channel, response);
            }
            SwarmEvent::ConnectionClosed { .. } => break,
            _ => {}
        }
    }
    assert!(served_page);
    let mut banned = None;
    let deadline = Instant::now() + WAIT;
    while banned.is_none() && Instant::now() < deadline {
        if let Ok(Ok(NodeEvent::PeerBanned { peer, reason })) =
            tokio::time::timeout(Duration::from_secs(1), ea.recv()).await
        {
            assert_eq!(peer, evil_id);
            banned = Some(reason);
        }
    }
    let reason = banned.expect("no PeerBanned event");
    assert!(reason.contains("signature"), "{reason}");
    assert!(a.db.head(&feed).is_none(), "nothing of the page is stored");

    // Coming back during the ban: the connection is closed at once.
    evil.dial(addr(&na)).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, evil.select_next_some())
            .await
            .expect("a banned peer must be turned away")
        {
            SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. } => {
                break;
            }
            SwarmEvent::Behaviour(request_response::Event::Message { .. }) => {
                panic!("a banned peer must not be asked anything")
            }
            _ => {}
        }
    }
    let mut ea = na.events();
    wait_until(&mut [&mut ea], "the node to drop the banned peer", || {
        na.connected_peers().is_empty()
    })
    .await;
    na.shutdown().await;
}

/// Sends and answers raw bytes, framed by the caller.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let mut buf = vec![0; u32::from_be_bytes(len) as usize];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.read_request(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        io.write_all(&req).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        self.write_request(p, io, res).await
    }
}

/// Garbage and oversized frames end the stream; answering with them gets
/// the sender banned. The node carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_survives_garbage_and_oversized_frames() {
    use futures::StreamExt;
    let net = NetworkKey::from_bytes([11; 32]);
    let a = peer(&net);
    append_n(&a.db, 3, 10);
    let na = node(&a.db).await;
    let mut ea = na.events();
    let garbage: Vec<u8> = [8u32.to_be_bytes().to_vec(), vec![0xff; 8]].concat();
    let oversized: Vec<u8> = [(256u32 << 20).to_be_bytes().to_vec(), vec![0; 1024]].concat();
    let cases = [
        (0xa1u8, false, garbage),
        (0xa2, false, oversized.clone()),
        (0xa3, true, oversized),
    ];
    for (seed, as_request, bytes) in cases {
        let kp = identity_keypair(&SigningKey::from_seed([seed; 32]));
        let evil_id = kp.public().to_peer_id();
        let mut evil = Swarm::new(
            build_transport(&kp, &net).unwrap(),
            request_response::Behaviour::with_codec(
                RawCodec,
                [(StreamProtocol::new(PROTOCOL_V2), ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
            evil_id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(60)),
        );
        evil.dial(addr(&na)).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, evil.select_next_some())
                .await
                .expect("the node never reacted")
            {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if as_request => {
                    evil.behaviour_mut().send_request(&peer_id, bytes.clone());
                }
                // An oversized request: the node ends the stream unread.
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. })
                    if as_request =>
                {
                    break;
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                }) if !as_request => {
                    let _ = evil.behaviour_mut().send_response(channel, bytes.clone());
                }
                SwarmEvent::ConnectionClosed { .. } if !as_request => break,
                _ => {}
            }
        }
        if as_request {
            continue;
        }
        // An oversized or garbage answer: the node bans the sender.
        let deadline = Instant::now() + WAIT;
        let mut reason = None;
        while reason.is_none() && Instant::now() < deadline {
            if let Ok(Ok(NodeEvent::PeerBanned { peer, reason: r })) =
                tokio::time::timeout(Duration::from_secs(1), ea.recv()).await
            {
                assert_eq!(peer, evil_id);
                reason = Some(r);
            }
        }
        let reason = reason.expect("no PeerBanned event");
        assert!(reason.contains("malformed"), "{reason}");
    }
    // The node still works for honest peers.
    let b = peer(&net);
    let summary = sync_once(b.db.clone(), addr(&na), WAIT).await.unwrap();
    assert_eq!(summary.pulled, 3);
    na.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_node_picks_up_blocks_made_by_another_process() {
    let net = NetworkKey::from_bytes([12; 32]);
    let (a, b) = (peer(&net), peer(&net));
    append_n(&a.db, 2, 10);
    let (na, nb) = (node(&a.db).await, node(&b.db).await);
    let (mut ea, mut eb) = (na.events(), nb.events());
    nb.dial(addr(&na)).await.unwrap();
    wait_until(&mut [&mut eb], "the first sync", || {
        b.db.head(&a.db.feed_id()).is_some_and(|h| h.seq == 2)
    })
    .await;
    // What `kappa block` does while `kappa serve` runs: edit the file.
    let mut list = kappadb_net::blocklist::BlockList::load(b.dir.path()).unwrap();
    list.block(a.db.feed_id()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the node never read blocked.json"
        );
        if let Ok(Ok(NodeEvent::FeedBlocked { feed })) =
            tokio::time::timeout(Duration::from_secs(1), eb.recv()).await
        {
            assert_eq!(feed, a.db.feed_id());
            break;
        }
    }
    // A's feed grows, then a new feed appears on A. Once B is idle again
    // with the new feed, it has seen both announcements: it took the new
    // feed and left A's alone.
    a.db.append(b"after the block".to_vec()).unwrap();
    let mut probe = TestPeer::new(400);
    a.db.ingest(vec![probe.make(1, "probe")]).unwrap();
    wait_until(&mut [&mut ea, &mut eb], "the new feed on B", || {
        b.db.head(&probe.key.feed_id()).is_some()
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "B never went idle");
        if let Ok(Ok(NodeEvent::SyncIdle { .. })) =
            tokio::time::timeout(Duration::from_secs(1), eb.recv()).await
        {
            break;
        }
    }
    assert_eq!(
        b.db.head(&a.db.feed_id()).unwrap().seq,
        2,
        "a blocked feed is not pulled"
    );
    na.shutdown().await;
    nb.shutdown().await;
}
