//! Checkpoints, crashes, rebuilds, version changes, field indexes and the
//! live indexer.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{CountingView, create_db, digests, indexer, mixed_entries, put, stored_count};
use kappadb_core::Db;
use kappadb_views::field::FieldQuery;
use kappadb_views::timeline::{Order, TimelineQuery};
use kappadb_views::{Indexer, IndexerConfig, View, ViewError, ViewRecord, ViewTx};
use serde_json::json;

/// Digests of a fresh database holding `entries`, folded in one go.
fn reference_digests(entries: &[kappadb_core::Entry]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 99);
    db.ingest(entries.to_vec()).unwrap();
    let ix = indexer(&db, 5000);
    ix.declare_field_index("by-user", "/user").unwrap();
    ix.register(CountingView::new(1).0).unwrap();
    ix.catch_up().unwrap();
    digests(&ix)
}

fn open_all(db: &Db, batch: usize) -> (Indexer, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let ix = indexer(db, batch);
    let (view, applied) = CountingView::new(1);
    ix.register(view).unwrap();
    (ix, applied)
}

#[test]
fn crash_between_batches_resumes_exactly_once() {
    let entries = mixed_entries(3, 60);
    let with_payload = entries.len() as u64;
    let reference = reference_digests(&entries);
    // Stop after 0, 1, 2, ... rounds: every batch boundary is a crash point.
    for rounds in [0usize, 1, 3, 7, 12] {
        let dir = tempfile::tempdir().unwrap();
        let db = create_db(dir.path(), 1);
        db.ingest(entries.clone()).unwrap();
        {
            let (ix, _) = open_all(&db, 16);
            ix.declare_field_index("by-user", "/user").unwrap();
            for _ in 0..rounds {
                ix.step().unwrap();
            }
        }
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        let (ix, applied) = open_all(&db, 16);
        ix.catch_up().unwrap();
        assert_eq!(stored_count(&ix), with_payload, "after {rounds} rounds");
        let status = ix.view_status("counting").unwrap();
        assert_eq!(status.folded, with_payload);
        assert!(applied.load(Ordering::SeqCst) <= with_payload);
        assert_eq!(digests(&ix), reference, "after {rounds} rounds");
    }
}

/// A view that writes, then fails (or panics) on a poisoned payload.
struct Failing {
    panic: bool,
}

impl View for Failing {
    fn name(&self) -> &str {
        if self.panic { "panicky" } else { "failing" }
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        for r in batch {
            tx.insert(r.seq.to_be_bytes(), r.payload.clone());
            if r.payload == b"boom" {
                if self.panic {
                    panic!("boom");
                }
                return Err(ViewError::fold(self.name(), "boom"));
            }
        }
        Ok(())
    }
}

#[test]
fn failed_batch_commits_nothing_of_its_writes_or_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    for i in 0..10 {
        db.append(format!("ok {i}").into_bytes()).unwrap();
    }
    db.append(b"boom".to_vec()).unwrap();
    let ix = indexer(&db, 4);
    ix.register(Failing { panic: false }).unwrap();
    ix.register(Failing { panic: true }).unwrap();
    let err = ix.catch_up().unwrap_err();
    assert!(matches!(err, ViewError::Fold { .. }), "{err}");
    for name in ["failing", "panicky"] {
        let status = ix.view_status(name).unwrap();
        // Two full batches of 4 committed; the third (with "boom") did not.
        assert_eq!(status.folded, 8, "{name}");
        assert!(status.last_error.is_some());
        let keys: Vec<_> = ix
            .reader(name)
            .unwrap()
            .scan_prefix(b"")
            .map(|kv| kv.unwrap().0)
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "{name}: no write of the failed batch is visible"
        );
        assert_eq!(
            status.checkpoint,
            ix.reader(name).unwrap().checkpoint().next_offset
        );
    }
    // The other views are not held back.
    assert_eq!(ix.view_status("timeline").unwrap().folded, 11);
    assert_eq!(ix.view_status("kv").unwrap().lag, 0);
}

#[test]
fn rebuild_keeps_digest_and_answers_queries_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    db.ingest(mixed_entries(2, 400)).unwrap();
    let ix = indexer(&db, 10);
    ix.declare_field_index("by-user", "/user").unwrap();
    ix.catch_up().unwrap();
    let before = digests(&ix);
    let expected = ix.kv().unwrap().get("k1").unwrap();
    assert!(expected.is_some());
    let old_gen = ix.reader("kv").unwrap().generation();
    let held = ix.reader("kv").unwrap();

    let mut calls = Vec::new();
    let status = ix
        .rebuild("kv", &mut |at, end| {
            // Until the swap, queries keep answering from the old
            // generation.
            let kv = ix.kv().unwrap();
            if ix.view_status("kv").unwrap().rebuild.is_some() {
                assert_eq!(kv.reader().generation(), old_gen);
            }
            assert_eq!(kv.get("k1").unwrap(), expected);
            calls.push((at, end));
        })
        .unwrap();
    assert!(calls.len() > 5, "progress after every batch: {calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(calls.last().unwrap().0, db.log_end());
    assert!(status.rebuild.is_none());
    assert!(status.generation > old_gen);
    assert_eq!(ix.kv().unwrap().get("k1").unwrap(), expected);

    for name in ["timeline", "by-user"] {
        ix.rebuild(name, &mut |_, _| {}).unwrap();
    }
    assert_eq!(digests(&ix), before);

    // The old tree outlives the rebuild while a reader holds it, then goes.
    let old_tree = format!("view/kv/{old_gen}/data");
    let has_tree = |name: &str| {
        db.sled()
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == name.as_bytes())
    };
    assert!(has_tree(&old_tree));
    assert_eq!(held.get(b"nothing").unwrap(), None);
    drop(held);
    ix.catch_up().unwrap();
    assert!(!has_tree(&old_tree));
}

#[test]
fn rebuild_serves_queries_from_other_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let payloads: Vec<Vec<u8>> = (0..3000)
        .map(|i| put(&format!("key{}", i % 300), json!(i), &[]))
        .collect();
    db.append_batch(payloads).unwrap();
    let ix = indexer(&db, 100);
    ix.catch_up().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let querier = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let kv = ix.kv().unwrap();
                assert_eq!(kv.get("key7").unwrap(), Some(json!(2707)));
                assert_eq!(kv.list("key").count(), 300);
                n += 1;
            }
            n
        });
        ix.rebuild("kv", &mut |_, _| {}).unwrap();
        stop.store(true, Ordering::SeqCst);
        assert!(querier.join().unwrap() > 0);
    });
}

#[test]
fn version_bump_rebuilds_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    db.ingest(mixed_entries(2, 50)).unwrap();
    let n = 100;
    let open = |version: u32| {
        let ix = indexer(&db, 7);
        let (view, applied) = CountingView::new(version);
        ix.register(view).unwrap();
        (ix, applied)
    };
    {
        let (ix, applied) = open(1);
        ix.catch_up().unwrap();
        assert_eq!(applied.load(Ordering::SeqCst), n);
    }
    {
        let (ix, applied) = open(1);
        ix.catch_up().unwrap();
        assert_eq!(
            applied.load(Ordering::SeqCst),
            0,
            "same version: nothing to do"
        );
    }
    {
        let (ix, applied) = open(2);
        let status = ix.view_status("counting").unwrap();
        assert_eq!((status.version, status.active_version), (2, 1));
        assert!(status.rebuild.is_some());
        // The old data answers until the new generation is ready.
        assert_eq!(stored_count(&ix), n);
        ix.step().unwrap();
        assert_eq!(stored_count(&ix), n);
        ix.catch_up().unwrap();
        assert_eq!(applied.load(Ordering::SeqCst), n, "one rebuild from 0");
        let status = ix.view_status("counting").unwrap();
        assert_eq!(status.active_version, 2);
        assert!(status.rebuild.is_none());
        assert_eq!(stored_count(&ix), n);
    }
    let (ix, applied) = open(2);
    ix.catch_up().unwrap();
    assert_eq!(applied.load(Ordering::SeqCst), 0);
    let trees = db
        .sled()
        .tree_names()
        .iter()
        .filter(|t| t.starts_with(b"view/counting/"))
        .count();
    assert_eq!(trees, 1, "the old generation was dropped");
}

#[test]
fn field_index_declare_query_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries = mixed_entries(2, 40);
    {
        let db = create_db(dir.path(), 1);
        db.ingest(entries.clone()).unwrap();
        db.append(br#"{"type":"score","user":7}"#.to_vec()).unwrap();
        db.append(br#"{"type":"score","user":null}"#.to_vec())
            .unwrap();
        db.append(br#"{"type":"score","user":["not","scalar"]}"#.to_vec())
            .unwrap();
        let ix = indexer(&db, 16);
        assert!(matches!(
            ix.declare_field_index("by-user", "user"),
            Err(ViewError::BadPointer(_))
        ));
        assert!(matches!(
            ix.declare_field_index("kv", "/user"),
            Err(ViewError::ViewExists(_))
        ));
        assert!(matches!(
            ix.declare_field_index("By User", "/user"),
            Err(ViewError::BadName { .. })
        ));
        ix.declare_field_index("by-user", "/user").unwrap();
        ix.declare_field_index("by-user", "/user").unwrap();
        ix.catch_up().unwrap();
        let fi = ix.field_index("by-user").unwrap();
        let u1 = fi.query(&FieldQuery::eq(json!("u1"))).unwrap();
        assert_eq!(
            u1.len(),
            4,
            "chat entries i % 5 == 3 with i % 4 == 1, in 2 feeds"
        );
        assert!(u1.iter().all(|h| h.value == json!("u1")));
        assert!(
            u1.windows(2)
                .all(|w| (w[0].timestamp, w[0].author, w[0].seq)
                    < (w[1].timestamp, w[1].author, w[1].seq))
        );
        let range = fi
            .query(&FieldQuery::range(Some(json!("u1")), Some(json!("u2"))))
            .unwrap();
        assert_eq!(range.len(), 8);
        assert_eq!(range[7].value, json!("u2"));
        // null < numbers < strings.
        let all = fi
            .query(&FieldQuery::range(None, None).limit(1000))
            .unwrap();
        assert_eq!(all[0].value, json!(null));
        assert_eq!(all[1].value, json!(7));
        let desc = fi
            .query(&FieldQuery {
                order: Order::Descending,
                limit: 2,
                ..FieldQuery::default()
            })
            .unwrap();
        assert_eq!(desc.len(), 2);
        assert_eq!(desc[0].value, json!("u3"));
        let numbers = fi
            .query(&FieldQuery::range(Some(json!(0)), Some(json!(100))))
            .unwrap();
        assert_eq!(numbers.len(), 1);
        assert_eq!(
            numbers[0].payload.as_deref(),
            Some(&br#"{"type":"score","user":7}"#[..])
        );
        assert!(matches!(
            fi.query(&FieldQuery::eq(json!([1]))),
            Err(ViewError::BadQuery(_))
        ));
        let status = ix.view_status("by-user").unwrap();
        assert_eq!(status.folded, 16 + 2);
    }
    let db = Db::open(dir.path()).unwrap();
    let ix = indexer(&db, 16);
    assert_eq!(ix.field_indexes().len(), 1);
    assert_eq!(ix.field_indexes()[0].pointer, "/user");
    let status = ix.view_status("by-user").unwrap();
    assert_eq!(status.lag, 0, "survives a reopen without refolding");
    let fi = ix.field_index("by-user").unwrap();
    assert_eq!(fi.query(&FieldQuery::eq(json!("u1"))).unwrap().len(), 4);

    // Another pointer: a new version, rebuilt while the old data answers.
    ix.declare_field_index("by-user", "/n").unwrap();
    let status = ix.view_status("by-user").unwrap();
    assert!(status.rebuild.is_some());
    assert_eq!(fi.query(&FieldQuery::eq(json!("u1"))).unwrap().len(), 4);
    ix.catch_up().unwrap();
    drop(fi);
    let fi = ix.field_index("by-user").unwrap();
    assert!(fi.query(&FieldQuery::eq(json!("u1"))).unwrap().is_empty());
    assert_eq!(fi.query(&FieldQuery::eq(json!(3))).unwrap().len(), 2);
    drop(fi);

    ix.remove_field_index("by-user").unwrap();
    assert!(matches!(
        ix.field_index("by-user"),
        Err(ViewError::UnknownView(_))
    ));
    ix.catch_up().unwrap();
    assert!(
        !db.sled()
            .tree_names()
            .iter()
            .any(|t| t.starts_with(b"view/by-user/"))
    );
    drop(ix);
    let ix = indexer(&db, 16);
    assert!(ix.field_indexes().is_empty());
}

#[test]
fn timeline_filters_ranges_and_orders() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let entries = mixed_entries(3, 30);
    let author = entries[0].header.author;
    db.ingest(entries.clone()).unwrap();
    let ix = indexer(&db, 1000);
    ix.catch_up().unwrap();
    let tl = ix.timeline().unwrap();
    let all = tl
        .query(&TimelineQuery {
            limit: 1000,
            order: Order::Ascending,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 90);
    assert!(
        all.windows(2)
            .all(|w| (w[0].timestamp, w[0].author, w[0].seq)
                < (w[1].timestamp, w[1].author, w[1].seq))
    );
    let newest = tl
        .query(&TimelineQuery {
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest[0], all[89]);
    assert_eq!(newest.len(), 5);

    let chats = tl
        .query(&TimelineQuery {
            kind: Some("chat".into()),
            from: Some(1010),
            to: Some(1030),
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|i| i.kind.as_deref() == Some("chat") && (1010..=1030).contains(&i.timestamp))
        .rev()
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(chats, expected);

    let mine = tl
        .query(&TimelineQuery {
            author: Some(author),
            kind: Some("kv.put".into()),
            limit: 1000,
            order: Order::Ascending,
            ..Default::default()
        })
        .unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|i| i.author == author && i.kind.as_deref() == Some("kv.put"))
        .cloned()
        .collect();
    assert_eq!(mine, expected);
    assert_eq!(mine.len(), 12);
    let raw = all.iter().find(|i| i.kind.is_none()).unwrap();
    assert!(raw.payload.as_ref().unwrap().starts_with(b"raw "));
}

#[test]
fn live_indexer_follows_appends_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = Indexer::open(db.clone()).unwrap();
    ix.declare_field_index("by-n", "/n").unwrap();
    for i in 0..20 {
        db.append(put("k", json!(i), &[])).unwrap();
        ix.wait_until_caught_up("kv", Duration::from_secs(10))
            .unwrap();
        assert_eq!(ix.kv().unwrap().get("k").unwrap(), Some(json!(i)));
    }
    db.append(br#"{"type":"x","n":5}"#.to_vec()).unwrap();
    ix.wait_until_caught_up("by-n", Duration::from_secs(10))
        .unwrap();
    let hits = ix
        .field_index("by-n")
        .unwrap()
        .query(&FieldQuery::eq(json!(5)))
        .unwrap();
    assert_eq!(hits.len(), 1);
    // Without waiting, the background thread still gets there.
    db.append(put("k", json!("last"), &[])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ix.view_status("kv").unwrap().lag > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background fold stalled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ix.kv().unwrap().get("k").unwrap(), Some(json!("last")));
    assert!(matches!(
        ix.wait_until_caught_up("nope", Duration::from_millis(1)),
        Err(ViewError::UnknownView(_))
    ));
}

#[test]
fn status_reports_lag_until_folded() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    db.append_batch((0..10).map(|i| put("a", json!(i), &[])).collect())
        .unwrap();
    let ix = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<String> = ix.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["identity", "kv", "timeline"]);
    let s = ix.view_status("kv").unwrap();
    assert_eq!(
        (s.checkpoint, s.lag, s.log_end),
        (0, db.log_end(), db.log_end())
    );
    ix.wait_until_caught_up("kv", Duration::from_secs(10))
        .unwrap();
    let s = ix.view_status("kv").unwrap();
    assert_eq!((s.lag, s.folded, s.skipped), (0, 10, 0));
    let d = ix.digest("kv").unwrap();
    // The key's record and the undo bucket of its ten ops.
    assert_eq!(d.keys, 2);
    assert_eq!(d.to_hex().len(), 64);
}
