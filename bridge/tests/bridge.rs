//! The bridge against a real broker (Tansu on loopback; see
//! `kappadb_bridge::test_broker`).

use std::path::Path;
use std::time::{Duration, Instant};

use kappadb_bridge::consume::read_topic;
use kappadb_bridge::test_broker::{
    Broker, assert_mirrors, shared_or_start, tansu_or_skip, unique_topic,
};
use kappadb_bridge::{BridgeConfig, BridgeStatus, KafkaBridge};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, ForkProof};

fn wait_caught_up(bridge: &KafkaBridge, what: &str) -> BridgeStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = bridge.status();
        if s.state == "running" && s.lag_bytes == 0 && s.in_flight == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not caught up: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(broker: &str, topic: &str, dir: &Path) -> BridgeConfig {
    let mut c = BridgeConfig::new(broker, topic, dir.join("checkpoint.json"));
    c.retry_after = Duration::from_millis(200);
    c
}

#[test]
fn every_record_once_across_restarts_and_a_lost_checkpoint() {
    let Some(bin) = tansu_or_skip("every_record_once") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_own, addr) = shared_or_start(&bin, &tmp.path().join("broker"));
    let topic = unique_topic("log");
    let db = Db::create(&tmp.path().join("db"), CreateOptions::default()).unwrap();
    for i in 0..300 {
        db.append(format!(r#"{{"type":"kv.put","key":"k{i}","value":{i}}}"#).into_bytes())
            .unwrap();
    }
    let mut peer = TestPeer::new(7);
    let entries: Vec<_> = (0..200).map(|i| peer.make(i, vec![b'x'; 100])).collect();
    db.ingest(entries).unwrap();
    // A fork of a third feed: its first entry, then a proof of two.
    let mut q = TestPeer::new(8);
    let mut q2 = q.clone();
    let (a, b) = (q.make(1, b"a".to_vec()), q2.make(2, b"b".to_vec()));
    db.ingest(vec![a.clone()]).unwrap();
    db.ingest_fork_proof(ForkProof::new(a.signed_header(), b.signed_header()).unwrap())
        .unwrap();

    let cfg = config(&addr, &topic, tmp.path());
    let bridge = KafkaBridge::start(db.clone(), cfg.clone()).unwrap();
    let s = wait_caught_up(&bridge, "first run");
    assert_eq!(s.skipped, 0);
    assert_eq!(s.produced, db.status().records);
    bridge.stop().unwrap();
    let fetched = read_topic(&addr, &topic, Duration::from_secs(30)).unwrap();
    assert_mirrors(&db, &fetched);
    let kinds: Vec<_> = fetched.iter().filter_map(|f| f.kind.as_deref()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "fork").count(), 1);

    // Resume from the checkpoint with more to send.
    db.append_batch((0..100).map(|i| format!("{i}").into_bytes()).collect())
        .unwrap();
    let bridge = KafkaBridge::start(db.clone(), cfg.clone()).unwrap();
    let s = wait_caught_up(&bridge, "second run");
    assert_eq!((s.produced, s.skipped), (100, 0));
    bridge.stop().unwrap();

    // Without its checkpoint the bridge reads the whole topic back and
    // sends nothing twice.
    std::fs::remove_file(&cfg.checkpoint).unwrap();
    db.append(b"last".to_vec()).unwrap();
    let bridge = KafkaBridge::start(db.clone(), cfg.clone()).unwrap();
    let s = wait_caught_up(&bridge, "run without a checkpoint");
    assert_eq!(s.produced, 1);
    assert_eq!(s.skipped, db.status().records - 1);
    bridge.stop().unwrap();
    let fetched = read_topic(&addr, &topic, Duration::from_secs(30)).unwrap();
    assert_mirrors(&db, &fetched);
}

#[test]
fn an_unreachable_broker_never_blocks_appends() {
    let Some(bin) = tansu_or_skip("an_unreachable_broker") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let db = Db::create(&tmp.path().join("db"), CreateOptions::default()).unwrap();
    let bridge = KafkaBridge::start(db.clone(), config(&addr, "t", tmp.path())).unwrap();
    for _ in 0..20 {
        db.append_batch((0..50).map(|i| format!("{i}").into_bytes()).collect())
            .unwrap();
    }
    let s = bridge.status();
    assert_eq!(s.lag_records, 1000);
    assert_eq!(s.lag_bytes, db.log_end());
    assert_ne!(s.state, "running");
    // The broker comes up on that port: the bridge catches up by itself.
    let broker = Broker::start_on(&bin, &tmp.path().join("broker"), port);
    let s = wait_caught_up(&bridge, "after the broker came up");
    assert_eq!(s.produced, 1000);
    assert_eq!(s.lag_records, 0);
    bridge.stop().unwrap();
    let fetched = read_topic(&broker.addr(), "t", Duration::from_secs(30)).unwrap();
    assert_mirrors(&db, &fetched);
}
