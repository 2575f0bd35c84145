//! Compaction: sealed segments rewritten without erased payloads and
//! dropped records, every offset kept, everything readable and verifiable
//! before and after, across reopen and reindex.

use std::path::Path;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, DbConfig, Entry, LogRecord, Payload};

fn small_segments(dir: &Path) -> Db {
    Db::create(
        dir,
        CreateOptions {
            config: DbConfig {
                segment_bytes: 64 * 1024,
                ..DbConfig::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

fn records(db: &Db) -> Vec<LogRecord> {
    db.log_iter(0).map(|r| r.unwrap()).collect()
}

fn clean_verify(db: &Db) {
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn compaction_gives_bytes_back_and_keeps_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let db = small_segments(dir.path());
    let payload = |i: u64| format!("entry {i} {}", "x".repeat(400)).into_bytes();
    for chunk in (1..=1200u64).collect::<Vec<_>>().chunks(100) {
        db.append_batch(chunk.iter().map(|&i| payload(i)).collect())
            .unwrap();
    }
    // Erase every other entry, and everything up to 300.
    let odd: Vec<u64> = (301..=1200).filter(|s| s % 2 == 1).collect();
    db.delete(&odd, Some(300)).unwrap();
    let before = records(&db);
    let status = db.status();
    assert!(status.reclaimable_bytes > 200 * 1024, "{status:?}");
    let disk_before = status.disk_bytes;

    let report = db.compact(1, &mut |_, _| {}).unwrap();
    assert!(report.segments > 3, "{report:?}");
    assert!(report.reclaimed() > 200 * 1024, "{report:?}");
    let status = db.status();
    assert!(status.disk_bytes < disk_before);
    assert!(status.reclaimable_bytes < 64 * 1024, "{status:?}");
    assert_eq!(records(&db), before, "the log reads the same");
    let feed = db.feed_id();
    for seq in [1, 300, 301, 302, 999, 1000, 1200] {
        let e = db.get(&feed, seq).unwrap().unwrap();
        if seq <= 300 || seq % 2 == 1 {
            assert_eq!(e.payload, Payload::Erased, "seq {seq}");
        } else {
            assert_eq!(e.payload, Payload::Held(payload(seq)), "seq {seq}");
        }
    }
    let range: Vec<Entry> = db.feed_range(&feed, 500, 520).map(|e| e.unwrap()).collect();
    assert_eq!(range.len(), 21);
    clean_verify(&db);

    // A deletion after compaction erases in the compacted file.
    db.delete(&[1000], None).unwrap();
    assert!(db.get(&feed, 1000).unwrap().unwrap().payload.is_erased());
    clean_verify(&db);
    // Compacting a compacted segment again works too.
    db.compact(1, &mut |_, _| {}).unwrap();
    assert!(db.get(&feed, 1000).unwrap().unwrap().payload.is_erased());
    assert_eq!(
        db.get(&feed, 998).unwrap().unwrap().payload,
        Payload::Held(payload(998))
    );
    let after = records(&db);
    drop(db);

    let db = Db::open(dir.path()).unwrap();
    assert_eq!(records(&db), after);
    clean_verify(&db);
    drop(db);
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(records(&db), after);
    assert_eq!(db.status().entries, 1202);
    clean_verify(&db);
    // And the log goes on growing.
    db.append(b"after compaction".to_vec()).unwrap();
    assert_eq!(db.head(&feed).unwrap().seq, 1203);
}

#[test]
fn a_forgotten_feed_s_bytes_go_with_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = small_segments(dir.path());
    let mut peer = TestPeer::new(8);
    let theirs: Vec<Entry> = (0..400).map(|i| peer.make(i, vec![b't'; 500])).collect();
    for page in theirs.chunks(50) {
        db.ingest_page(page.to_vec()).unwrap();
        db.append(b"mine".to_vec()).unwrap();
    }
    let mine = records(&db)
        .into_iter()
        .filter(|r| r.entry().is_some_and(|e| e.header.author == db.feed_id()))
        .collect::<Vec<_>>();
    let disk_before = db.status().disk_bytes;
    assert!(db.forget(&peer.key.feed_id()).unwrap());
    let report = db.compact(1, &mut |_, _| {}).unwrap();
    assert!(report.reclaimed() > 150 * 1024, "{report:?}");
    assert!(db.status().disk_bytes < disk_before / 2);
    let left: Vec<LogRecord> = records(&db)
        .into_iter()
        .filter(|r| r.entry().is_some())
        .collect();
    assert_eq!(left, mine);
    clean_verify(&db);
}
