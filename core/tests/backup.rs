//! Backup and restore, and the publishing hold that keeps a restored copy
//! from forking its own feed.

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{AppendError, CreateOptions, Db, DbConfig, PublishHold, StoreError};

fn small_segments() -> CreateOptions {
    CreateOptions {
        config: DbConfig {
            segment_bytes: 4096,
            ..DbConfig::default()
        },
        ..CreateOptions::default()
    }
}

fn own_seq(db: &Db) -> u64 {
    db.head(&db.feed_id()).map_or(0, |h| h.seq)
}

fn verify_clean(db: &Db) {
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A database with entries over several segments, a peer's feed, a
/// deletion and a compaction.
fn populated(dir: &std::path::Path) -> Db {
    let db = Db::create(dir, small_segments()).unwrap();
    for i in 0..60 {
        db.append(format!("entry {i} {}", "x".repeat(100)).into_bytes())
            .unwrap();
    }
    let mut peer = TestPeer::new(5);
    let entries = (0..10).map(|i| peer.make(i, format!("peer {i}"))).collect();
    db.ingest(entries).unwrap();
    db.delete(&[30, 31], Some(20)).unwrap();
    let compacted = db.compact(1, &mut |_, _| {}).unwrap();
    assert!(
        compacted.segments > 0,
        "the backup must copy a compacted segment too"
    );
    db
}

#[test]
fn a_restored_backup_holds_the_same_log_and_waits_before_appending() {
    let root = tempfile::tempdir().unwrap();
    let a = populated(&root.path().join("a"));
    let report = a.backup(&root.path().join("backup")).unwrap();
    assert_eq!(report.own_seq, own_seq(&a));
    assert_eq!(report.log_bytes, a.log_end());

    let c = Db::restore(&root.path().join("backup"), &root.path().join("c")).unwrap();
    verify_clean(&c);
    assert_eq!(c.feed_id(), a.feed_id());
    assert_eq!(c.feeds(), a.feeds());
    for seq in 1..=own_seq(&a) {
        assert_eq!(
            c.get(&a.feed_id(), seq).unwrap(),
            a.get(&a.feed_id(), seq).unwrap()
        );
    }
    // The hold: nothing is written, and the error says why.
    let err = c.append(b"too early".to_vec()).unwrap_err();
    assert!(
        matches!(&err, AppendError::Held(PublishHold::Restored { seq_at_backup }) if *seq_at_backup == report.own_seq),
        "{err:?}"
    );
    assert!(err.to_string().contains("restored from a backup"), "{err}");
    let end = c.log_end();
    assert!(c.delete(&[1], None).is_err(), "deletions are held too");
    assert_eq!(c.log_end(), end, "nothing was written");

    // It survives a restart, until a sync lifts it.
    drop(c);
    let c = Db::open(&root.path().join("c")).unwrap();
    assert!(c.publish_hold().is_some());
    assert!(c.note_synced().unwrap());
    assert!(c.publish_hold().is_none());
    assert!(!root.path().join("c").join("restored.json").exists());
    c.append(b"now".to_vec()).unwrap();
    drop(c);
    let c = Db::open(&root.path().join("c")).unwrap();
    assert!(c.publish_hold().is_none());
    verify_clean(&c);
}

#[test]
fn a_restored_copy_catches_up_its_own_feed_and_continues_it_without_a_fork() {
    let root = tempfile::tempdir().unwrap();
    let a = Db::create(&root.path().join("a"), CreateOptions::default()).unwrap();
    for i in 0..5 {
        a.append(format!("before {i}").into_bytes()).unwrap();
    }
    a.backup(&root.path().join("backup")).unwrap();
    // The original goes on after the backup.
    for i in 0..3 {
        a.append(format!("after {i}").into_bytes()).unwrap();
    }
    let c = Db::restore(&root.path().join("backup"), &root.path().join("c")).unwrap();
    assert_eq!(own_seq(&c), 5);
    // The user vouches wrongly? No: a peer reports the feed at 8 first.
    c.release_hold().unwrap();
    c.note_remote_head(&c.feed_id(), 8);
    let err = c.append(b"would fork".to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::Held(PublishHold::Behind {
                local: 5,
                remote: 8
            })
        ),
        "{err:?}"
    );
    // Heads of other feeds, or not longer than ours, change nothing.
    c.note_remote_head(&TestPeer::new(1).key.feed_id(), 100);
    c.note_remote_head(&c.feed_id(), 2);
    // Fetching the three entries lifts the hold by itself.
    let missing: Vec<_> = (6..=8)
        .map(|s| a.get(&a.feed_id(), s).unwrap().unwrap())
        .collect();
    c.ingest(missing).unwrap();
    assert_eq!(c.publish_hold(), None);
    let next = c.append(b"continued".to_vec()).unwrap();
    assert_eq!(next.seq, 9);
    // The original takes it as the next entry of its feed: no fork.
    a.ingest(vec![c.get(&c.feed_id(), 9).unwrap().unwrap()])
        .unwrap();
    assert_eq!(own_seq(&a), 9);
    assert!(a.fork(&a.feed_id()).is_none());
}

#[test]
fn a_backup_taken_during_appends_is_consistent() {
    let root = tempfile::tempdir().unwrap();
    let a = Db::create(&root.path().join("a"), small_segments()).unwrap();
    let writer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..2_000 {
                a.append(format!("entry {i}").into_bytes()).unwrap();
            }
        })
    };
    let mut reports = Vec::new();
    for i in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        reports.push(a.backup(&root.path().join(format!("b{i}"))).unwrap());
    }
    writer.join().unwrap();
    for (i, r) in reports.iter().enumerate() {
        let c = Db::restore(&r.dest, &root.path().join(format!("c{i}"))).unwrap();
        verify_clean(&c);
        assert_eq!(own_seq(&c), r.own_seq);
        assert_eq!(c.log_end(), r.log_bytes);
    }
}

#[test]
fn backup_and_restore_refuse_what_would_overwrite_or_is_not_a_database() {
    let root = tempfile::tempdir().unwrap();
    let a = Db::create(&root.path().join("a"), CreateOptions::default()).unwrap();
    a.append(b"x".to_vec()).unwrap();
    let full = root.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("something"), b"keep me").unwrap();
    assert!(matches!(
        a.backup(&full),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(std::fs::read(full.join("something")).unwrap(), b"keep me");
    // An empty directory is fine.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    a.backup(&empty).unwrap();
    drop(a);
    // Not onto a database, not from something that is not one.
    assert!(matches!(
        Db::restore(&empty, &root.path().join("a")),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        Db::restore(&full, &root.path().join("new")),
        Err(StoreError::NotADatabase { .. })
    ));
    assert!(!root.path().join("new").exists());
}
