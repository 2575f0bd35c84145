//! `kappa-kafka-fold` end to end: a database bridged into a real broker
//! (Tansu on loopback) folds, from the topic alone, into the key-value
//! state its entries describe; a forged record is rejected.

mod common;

use std::time::{Duration, Instant};

use common::ok;
use kappadb_bridge::rdkafka::config::ClientConfig;
use kappadb_bridge::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use kappadb_bridge::test_broker::{create_topic, shared_or_start, tansu_or_skip, unique_topic};
use kappadb_bridge::{BridgeConfig, KafkaBridge};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, RecordBody};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kappa-kafka-fold");

fn put(key: &str, value: i64) -> Vec<u8> {
    json!({"type": "kv.put", "key": key, "value": value})
        .to_string()
        .into_bytes()
}

#[test]
fn folds_the_bridged_topic_and_rejects_a_forgery() {
    let Some(bin) = tansu_or_skip("folds_the_bridged_topic") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_own, addr) = shared_or_start(&bin, &tmp.path().join("broker"));
    let (topic, forged_topic) = (unique_topic("fold"), unique_topic("forged"));
    let db = Db::create(&tmp.path().join("db"), CreateOptions::default()).unwrap();
    db.append(put("a", 1)).unwrap();
    db.append(put("b", 2)).unwrap();
    db.append(br#"{"type":"kv.del","key":"b"}"#.to_vec())
        .unwrap();
    // Another feed, as if synced: later timestamps, so its writes win.
    let mut peer = TestPeer::new(21);
    let far = u64::MAX / 2;
    db.ingest(vec![
        peer.make(far, put("a", 10)),
        peer.make(far + 1, put("c", 3)),
    ])
    .unwrap();

    let cfg = BridgeConfig::new(&addr, &topic, tmp.path().join("cp.json"));
    let bridge = KafkaBridge::start(db.clone(), cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bridge.status().lag_records > 0 || bridge.status().state != "running" {
        assert!(Instant::now() < deadline, "{:?}", bridge.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    bridge.stop().unwrap();

    let out: Value =
        serde_json::from_str(&ok(BIN, &["--brokers", &addr, "--topic", &topic])).unwrap();
    assert_eq!(out["records"], 5, "{out}");
    assert_eq!(out["verified"], 5, "{out}");
    assert_eq!(out["rejected"], json!([]), "{out}");
    assert_eq!(out["feeds"], 2);
    assert_eq!(out["kv"], json!({"a": 10, "c": 3}));

    // A forged copy of the peer's first entry, its payload changed: the
    // value decodes but does not verify, and the fold leaves it out.
    let e = db
        .log_iter(0)
        .filter_map(Result::ok)
        .find_map(|r| match r.body {
            RecordBody::Entry(e) if e.header.author == peer.key.feed_id() => Some(e),
            _ => None,
        });
    let mut forged = e.unwrap();
    forged.payload = kappadb_core::Payload::Held(put("a", 666));
    let value = kappadb_bridge::codec::encode_value(&RecordBody::Entry(forged)).unwrap();
    create_topic(&addr, &forged_topic, 1);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::<[u8], [u8]>::to(&forged_topic).payload(&value[..]))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let out: Value =
        serde_json::from_str(&ok(BIN, &["--brokers", &addr, "--topic", &forged_topic])).unwrap();
    assert_eq!(out["verified"], 0, "{out}");
    assert_eq!(out["rejected"].as_array().unwrap().len(), 1, "{out}");
    assert!(
        out["rejected"][0].as_str().unwrap().contains("payload"),
        "{out}"
    );
    assert_eq!(out["kv"], json!({}));
}
