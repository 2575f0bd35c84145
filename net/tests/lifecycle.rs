//! Data lifecycle over the network: a deletion reaches a peer that held
//! the payload (it erases it) and a peer that joins later (it never sees
//! the payload), an erased payload is never served, and a node replicates
//! only the feeds it follows.

use std::time::{Duration, Instant};

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry, NetworkKey, Payload};
use kappadb_net::protocol::{Follow, SyncConfig};
use kappadb_net::test_utils::Pair;
use kappadb_net::{Multiaddr, Node, NodeHandle, sync_once};

const WAIT: Duration = Duration::from_secs(25);

fn db(net: &NetworkKey) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            network_key: Some(net.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (dir, db)
}

async fn node(db: &Db) -> NodeHandle {
    Node::builder(db.clone())
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .mdns(false)
        .address_book(false)
        .spawn()
        .await
        .unwrap()
}

fn addr(n: &NodeHandle) -> Multiaddr {
    n.listen_addrs()[0].clone()
}

fn payload_at(db: &Db, feed: &kappadb_core::FeedId, seq: u64) -> Payload {
    db.get(feed, seq).unwrap().unwrap().payload
}

/// Whether any of the database's log files holds `bytes`.
fn log_holds(db: &Db, bytes: &[u8]) -> bool {
    std::fs::read_dir(db.dir().join("log")).unwrap().any(|f| {
        let data = std::fs::read(f.unwrap().path()).unwrap();
        data.windows(bytes.len()).any(|w| w == bytes)
    })
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_a_holder_and_a_late_joiner_never_sees_the_payload() {
    let net = NetworkKey::from_bytes([31; 32]);
    let (_da, a) = db(&net);
    let (_db, b) = db(&net);
    let (_dc, c) = db(&net);
    for i in 1..=5 {
        a.append(format!("secret {i}").into_bytes()).unwrap();
    }
    let feed = a.feed_id();
    let (na, nb) = (node(&a).await, node(&b).await);
    nb.sync_with(addr(&na), WAIT).await.unwrap();
    assert_eq!(
        payload_at(&b, &feed, 3),
        Payload::Held(b"secret 3".to_vec()),
        "B holds the payload"
    );

    // A deletes seq 3; gossip brings the deletion to B, which erases.
    a.delete(&[3], None).unwrap();
    until("B to erase seq 3", || {
        b.head(&feed).is_some_and(|h| h.seq == 6) && payload_at(&b, &feed, 3).is_erased()
    })
    .await;
    let report = b.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.erased_payloads, 1);

    assert!(!log_holds(&b, b"secret 3"), "B erased the bytes in place");
    assert!(log_holds(&b, b"secret 2"));

    // C joins later, syncing from B only: it gets the entry erased.
    let summary = sync_once(c.clone(), addr(&nb), WAIT).await.unwrap();
    assert!(summary.pulled >= 6);
    assert_eq!(payload_at(&c, &feed, 3), Payload::Erased);
    assert_eq!(
        payload_at(&c, &feed, 2),
        Payload::Held(b"secret 2".to_vec())
    );
    assert!(!log_holds(&c, b"secret 3"), "the erased payload reached C");
    let report = c.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    na.shutdown().await;
    nb.shutdown().await;
}

#[test]
fn an_erased_payload_is_never_served() {
    // Protocol level: A erased seq 2 before B ever asked for it.
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::create(dirs.0.path(), CreateOptions::default()).unwrap();
    let b = Db::create(dirs.1.path(), CreateOptions::default()).unwrap();
    for i in 1..=3 {
        a.append(format!("p{i}").into_bytes()).unwrap();
    }
    a.delete(&[2], None).unwrap();
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();
    assert!(pair.synced());
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert_eq!(payload_at(&b, &a.feed_id(), 2), Payload::Erased);
    assert_eq!(
        payload_at(&b, &a.feed_id(), 3),
        Payload::Held(b"p3".to_vec())
    );
}

#[test]
fn a_node_replicates_only_the_feeds_it_follows() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::create(dirs.0.path(), CreateOptions::default()).unwrap();
    let b = Db::create(dirs.1.path(), CreateOptions::default()).unwrap();
    a.append(b"a's own".to_vec()).unwrap();
    let mut other = TestPeer::new(77);
    let theirs: Vec<Entry> = (0..20).map(|i| other.make(i, b"x".to_vec())).collect();
    a.ingest_page(theirs).unwrap();
    let mut pair = Pair::new(a.clone(), b.clone());
    let only = Follow::Only {
        feeds: [b.feed_id(), a.feed_id()].into_iter().collect(),
    };
    pair.b = kappadb_net::protocol::Engine::new(b.clone(), SyncConfig::default())
        .unwrap()
        .with_follow(only);
    pair.connect();
    pair.run();
    assert!(pair.synced(), "idle although some feeds are not followed");
    assert_eq!(b.head(&a.feed_id()).map(|h| h.seq), Some(1));
    assert!(
        b.head(&other.key.feed_id()).is_none(),
        "not followed, not stored"
    );
    // B still serves what it holds.
    assert_eq!(a.head(&b.feed_id()), None);
}
