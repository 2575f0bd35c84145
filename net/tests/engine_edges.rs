//! The engine at its edges: configs it cannot work with, fork proofs over
//! this node's payload limit, bad proofs in gossip, and syncs over the
//! in-memory store.

use std::time::Instant;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, DbConfig, EntryError, ForkProof};
use kappadb_net::protocol::{ConfigError, Engine, Input, Output, SyncConfig, SyncError, SyncStore};
use kappadb_net::test_utils::{MemStore, Pair};

fn db_with_limit(max_payload_bytes: u32) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            config: DbConfig {
                max_payload_bytes,
                ..DbConfig::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (dir, db)
}

#[test]
fn a_config_that_cannot_work_is_refused() {
    let mut config = SyncConfig::default();
    config.limits.page_entries = 0;
    assert_eq!(
        Engine::<u8, _>::new(MemStore::new(1), config).unwrap_err(),
        ConfigError("limits.page_entries must be at least 1")
    );
    let config = SyncConfig {
        max_in_flight: 0,
        ..SyncConfig::default()
    };
    assert!(Engine::<u8, _>::new(MemStore::new(1), config).is_err());
    assert!(Engine::<u8, _>::new(MemStore::new(1), SyncConfig::default()).is_ok());
}

/// A feed forked at seq 1, one branch with a payload of `big` bytes.
fn forked_feed(seed: u64, big: usize) -> (kappadb_core::Entry, kappadb_core::Entry) {
    let mut x = TestPeer::new(seed);
    let mut y = x.clone();
    (x.make(1, b"small".to_vec()), y.make(2, vec![1; big]))
}

#[test]
fn a_fork_proof_over_this_nodes_payload_limit_is_no_fault_of_the_sender() {
    let (_da, a) = db_with_limit(1024 * 1024);
    let (_db, b) = db_with_limit(100);
    let (x, y) = forked_feed(7, 1000);
    let feed = x.header.author;
    a.ingest(vec![x]).unwrap();
    let report = a.ingest(vec![y]).unwrap();
    assert_eq!(report.forks.len(), 1, "A stores the fork");

    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();
    assert!(pair.bans.is_empty(), "nobody is banned: {:?}", pair.bans);
    assert_eq!(b.fork(&feed).map(|f| f.seq), Some(1), "B learns the fork");
    assert!(pair.synced());
}

#[test]
fn an_invalid_fork_proof_in_gossip_bans_its_publisher() {
    let store = MemStore::new(1);
    let mut engine: Engine<u8, MemStore> = Engine::new(store, SyncConfig::default()).unwrap();
    engine.handle(Input::Connected(9));
    engine.handle(Input::Announce {
        peer: 9,
        heads: vec![],
        proofs: vec![(
            TestPeer::new(3).key.feed_id(),
            Err(EntryError::NotAFork("the two headers are the same entry")),
        )],
    });
    engine.step(Instant::now()).unwrap();
    let bans: Vec<SyncError> = engine
        .take_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Ban { peer: 9, reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(bans.len(), 1);
    assert!(matches!(bans[0], SyncError::InvalidForkProof(_)));
    assert!(engine.peers().next().is_none(), "the session ended");
}

#[test]
fn a_valid_fork_proof_in_gossip_is_stored_once() {
    let store = MemStore::new(1);
    let mut engine: Engine<u8, MemStore> =
        Engine::new(store.clone(), SyncConfig::default()).unwrap();
    let (x, y) = forked_feed(8, 10);
    let feed = x.header.author;
    let proof = ForkProof::new(x.signed_header(), y.signed_header()).unwrap();
    for _ in 0..3 {
        engine.handle(Input::Announce {
            peer: 9,
            heads: vec![],
            proofs: vec![(feed, Ok(proof.clone()))],
        });
    }
    engine.step(Instant::now()).unwrap();
    assert_eq!(store.fork(&feed).map(|f| f.seq), Some(1));
    let found = engine
        .take_outputs()
        .into_iter()
        .filter(|o| {
            matches!(
                o,
                Output::Event(kappadb_net::protocol::SyncEvent::ForkFound { .. })
            )
        })
        .count();
    assert_eq!(found, 1, "news once, then known");
}

#[test]
fn memstore_pairs_sync_both_ways_and_spread_forks() {
    let a = MemStore::new(1);
    let b = MemStore::new(2);
    for i in 0..700 {
        a.append(i, format!("a{i}").into_bytes());
    }
    for i in 0..30 {
        b.append(i, format!("b{i}").into_bytes());
    }
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();
    assert!(pair.synced());
    assert_eq!(a.snapshot(), b.snapshot());
    assert_eq!(b.head(&a.feed_id()).unwrap().seq, 700);

    // C holds A's key and signs another first entry: A's feed forks, and
    // B and C both learn it on their sync.
    let c = MemStore::new(1);
    c.append(0, b"another first entry".to_vec());
    let mut pair = Pair::new(b.clone(), c.clone());
    pair.connect();
    pair.run();
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert_eq!(b.fork(&a.feed_id()).map(|f| f.seq), Some(1));
    assert_eq!(c.fork(&a.feed_id()).map(|f| f.seq), Some(1));
}
