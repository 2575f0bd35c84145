//! kv semantics: last writer wins on (timestamp, author, seq), concurrent
//! heads, deletes, links (also to ops that arrive later), skips.

mod common;

use common::{create_db, del, indexer, ingest_each, note, put};
use kappadb_core::test_utils::TestPeer;
use serde_json::json;

#[test]
fn kv_concurrent_puts_keep_both_heads_and_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let mut a = TestPeer::new(1);
    let mut b = TestPeer::new(2);
    let a1 = a.make(100, put("k", json!(1), &[]));
    let b1 = b.make(200, put("k", json!({"v": 2}), &[]));
    ingest_each(&db, &[a1.clone(), b1.clone()]);
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    assert_eq!(kv.get("k").unwrap(), Some(json!({"v": 2})));
    let heads = kv.heads("k").unwrap();
    assert_eq!(heads.len(), 2);
    assert_eq!(heads[0].id, a1.id());
    assert_eq!(heads[1].id, b1.id());
    assert_eq!(heads[1].author, b.key.feed_id());

    // A put linking both heads resolves the conflict, even with an older
    // timestamp.
    let a2 = a.make(150, put("k", json!("merged"), &[&a1, &b1]));
    ingest_each(&db, &[a2]);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    assert_eq!(kv.get("k").unwrap(), Some(json!("merged")));
    assert_eq!(kv.heads("k").unwrap().len(), 1);
}

#[test]
fn kv_timestamp_ties_break_on_author_then_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let mut a = TestPeer::new(3);
    let mut b = TestPeer::new(4);
    let a1 = a.make(500, put("k", json!("a"), &[]));
    let b1 = b.make(500, put("k", json!("b"), &[]));
    ingest_each(&db, &[b1, a1]);
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let winner = if a.key.feed_id() > b.key.feed_id() {
        "a"
    } else {
        "b"
    };
    assert_eq!(ix.kv().unwrap().get("k").unwrap(), Some(json!(winner)));
}

#[test]
fn kv_own_later_op_supersedes_own_earlier_op() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let mut a = TestPeer::new(5);
    // Even with a clock that went backwards, the later op of a feed wins
    // over the same feed's earlier op: it saw it.
    let a1 = a.make(900, put("k", json!(1), &[]));
    let a2 = a.make(100, put("k", json!(2), &[]));
    ingest_each(&db, &[a1, a2]);
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    assert_eq!(kv.get("k").unwrap(), Some(json!(2)));
    assert_eq!(kv.heads("k").unwrap().len(), 1);
}

#[test]
fn kv_deletes_are_heads_and_can_win() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let mut a = TestPeer::new(6);
    let mut b = TestPeer::new(7);
    let a1 = a.make(100, put("k", json!(1), &[]));
    let a2 = a.make(300, del("k", &[]));
    let b1 = b.make(250, put("k", json!(2), &[&a1]));
    ingest_each(&db, &[a1.clone(), b1.clone(), a2.clone()]);
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    // The delete (300) beats the concurrent put (250).
    assert_eq!(kv.get("k").unwrap(), None);
    let heads = kv.heads("k").unwrap();
    assert_eq!(heads.len(), 2);
    assert!(heads[1].is_deleted());
    assert_eq!(heads[1].id, a2.id());
    assert_eq!(kv.list("").count(), 0);

    // A delete that links every head leaves one delete head.
    let b2 = b.make(400, del("k", &[&b1, &a2]));
    ingest_each(&db, &[b2]);
    ix.catch_up().unwrap();
    let heads = ix.kv().unwrap().heads("k").unwrap();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].is_deleted());
}

#[test]
fn kv_link_to_an_op_that_arrives_later_supersedes_it() {
    let mut a = TestPeer::new(8);
    let mut b = TestPeer::new(9);
    let a1 = a.make(100, put("k", json!("old"), &[]));
    let b1 = b.make(50, put("k", json!("new"), &[&a1]));
    let mut digests = Vec::new();
    for order in [vec![a1.clone(), b1.clone()], vec![b1.clone(), a1.clone()]] {
        let dir = tempfile::tempdir().unwrap();
        let db = create_db(dir.path(), 1);
        ingest_each(&db, &order);
        let ix = indexer(&db, 1);
        ix.catch_up().unwrap();
        let kv = ix.kv().unwrap();
        assert_eq!(kv.get("k").unwrap(), Some(json!("new")));
        assert_eq!(kv.heads("k").unwrap().len(), 1);
        digests.push(ix.digest("kv").unwrap());
    }
    assert_eq!(digests[0].hash, digests[1].hash);
}

#[test]
fn kv_links_only_act_within_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let mut a = TestPeer::new(10);
    let mut b = TestPeer::new(11);
    let a1 = a.make(100, put("x", json!(1), &[]));
    let b1 = b.make(200, put("y", json!(2), &[&a1]));
    ingest_each(&db, &[a1, b1]);
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    assert_eq!(kv.get("x").unwrap(), Some(json!(1)));
    assert_eq!(kv.get("y").unwrap(), Some(json!(2)));
}

#[test]
fn kv_list_by_prefix_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    for p in [
        put("user/2", json!("bo"), &[]),
        put("user/1", json!("al"), &[]),
        put("usr", json!("no"), &[]),
        put("user/3", json!("cy"), &[]),
        del("user/3", &[]),
        put("user\u{0}", json!("nul"), &[]),
    ] {
        db.append(p).unwrap();
    }
    let ix = indexer(&db, 2);
    ix.catch_up().unwrap();
    let items: Vec<_> = ix
        .kv()
        .unwrap()
        .list("user/")
        .map(|i| i.unwrap())
        .map(|i| (i.key, i.value))
        .collect();
    assert_eq!(
        items,
        vec![
            ("user/1".to_string(), json!("al")),
            ("user/2".to_string(), json!("bo"))
        ]
    );
    assert_eq!(ix.kv().unwrap().list("").count(), 4);
    assert_eq!(
        ix.kv().unwrap().get("user\u{0}").unwrap(),
        Some(json!("nul"))
    );
}

#[test]
fn kv_skips_payloads_of_other_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    for p in [
        b"not json".to_vec(),
        note("hello"),
        br#"{"type":"kv.put","key":"k"}"#.to_vec(),
        br#"{"type":"kv.put","key":7,"value":1}"#.to_vec(),
        br#"{"type":"kv.put","key":"k","value":1,"links":["zz"]}"#.to_vec(),
        br#"[1,2]"#.to_vec(),
        put("k", json!(1), &[]),
    ] {
        db.append(p).unwrap();
    }
    let ix = indexer(&db, 3);
    ix.catch_up().unwrap();
    let status = ix.view_status("kv").unwrap();
    assert_eq!(status.folded, 1);
    assert_eq!(status.skipped, 6);
    assert_eq!(status.lag, 0);
    assert_eq!(status.checkpoint, db.log_end());
    let timeline = ix.view_status("timeline").unwrap();
    assert_eq!((timeline.folded, timeline.skipped), (7, 0));
    assert_eq!(ix.kv().unwrap().get("k").unwrap(), Some(json!(1)));
}
