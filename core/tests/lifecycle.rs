//! Data lifecycle in core: deletions erase payloads in place (headers and
//! signatures stay, the chain verifies), deletions from peers do the same,
//! erased entries sync as erased, forgetting a feed drops its records, and
//! a crash in the middle of a rewrite is finished on open.

use std::path::Path;

use kappadb_core::system::{DeleteTarget, Deletion, DeletionError, SystemPayload};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{
    AppendError, CreateOptions, Db, Entry, EntryError, ForgetError, Payload, RecordBody,
};

fn new_db(dir: &Path) -> Db {
    Db::create(dir, CreateOptions::default()).unwrap()
}

fn payload(db: &Db, seq: u64) -> Payload {
    db.get(&db.feed_id(), seq).unwrap().unwrap().payload
}

fn clean_verify(db: &Db) -> kappadb_core::VerifyReport {
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    report
}

#[test]
fn delete_erases_in_place_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    for i in 1..=6 {
        db.append(format!("note {i}").into_bytes()).unwrap();
    }
    let before: Vec<u64> = db.log_iter(0).map(|r| r.unwrap().offset).collect();
    let d = db.delete(&[2, 5], None).unwrap();
    assert_eq!(d.seq, 7);
    assert_eq!(payload(&db, 2), Payload::Erased);
    assert_eq!(payload(&db, 5), Payload::Erased);
    assert_eq!(payload(&db, 3), Payload::Held(b"note 3".to_vec()));
    // Offsets did not move.
    let after: Vec<u64> = db.log_iter(0).map(|r| r.unwrap().offset).collect();
    assert_eq!(&after[..6], &before[..]);
    // The erased entry's header and signature are intact.
    let e = db.get(&db.feed_id(), 2).unwrap().unwrap();
    kappadb_core::validate::validate_signature(&e.signed_header()).unwrap();
    let report = clean_verify(&db);
    assert_eq!(report.erased_payloads, 2);
    assert_eq!(report.deletions, 1);
    let status = db.status();
    assert_eq!(status.erased_entries, 2);
    assert_eq!(status.erased_bytes, 12);
    // And after a reopen, and after rebuilding the index.
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(payload(&db, 5), Payload::Erased);
    assert_eq!(db.status().erased_entries, 2);
    drop(db);
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.status().erased_entries, 2);
    assert_eq!(db.status().entries, 7);
    clean_verify(&db);
}

#[test]
fn prune_points_erase_everything_up_to_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    for i in 1..=100 {
        db.append(format!("m{i}").into_bytes()).unwrap();
    }
    db.delete(&[], Some(40)).unwrap(); // seq 101
    assert!((1..=40).all(|s| payload(&db, s).is_erased()));
    assert!((41..=100).all(|s| !payload(&db, s).is_erased()));
    // A later prune covers the earlier deletion, which stays.
    db.delete(&[], Some(101)).unwrap(); // seq 102
    assert!((1..=100).all(|s| payload(&db, s).is_erased()));
    assert!(matches!(
        payload(&db, 101).bytes().and_then(SystemPayload::parse),
        Some(Ok(SystemPayload::Deletion(_)))
    ));
    assert_eq!(db.status().erased_entries, 100);
    let report = clean_verify(&db);
    assert_eq!((report.erased_payloads, report.deletions), (100, 2));
}

#[test]
fn bad_deletions_are_refused_at_append() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    db.append(b"one".to_vec()).unwrap();
    let d = db.delete(&[1], None).unwrap();
    let rejection = |e: AppendError| match e {
        AppendError::Rejected(EntryError::Deletion(d)) => d,
        other => panic!("{other:?}"),
    };
    // Not an earlier entry.
    assert!(matches!(
        rejection(db.delete(&[9], None).unwrap_err()),
        DeletionError::NotEarlier { seq: 9, .. }
    ));
    // A deletion cannot be deleted.
    assert_eq!(
        rejection(db.delete(&[d.seq], None).unwrap_err()),
        DeletionError::NotDeletable(d.seq)
    );
    // An id that is not this feed's entry at that seq (another author's).
    let other = TestPeer::new(3).make(1, b"theirs".to_vec());
    let forged = Deletion {
        targets: vec![DeleteTarget {
            seq: 1,
            id: other.id(),
        }],
        up_to: None,
    };
    assert!(matches!(
        rejection(db.append(forged.encode()).unwrap_err()),
        DeletionError::NotOwnEntry { seq: 1, .. }
    ));
    assert!(matches!(
        rejection(db.delete_ids(&[other.id()]).unwrap_err()),
        DeletionError::NotOwnEntry { .. }
    ));
    // The reserved prefix with nothing kappadb knows after it.
    assert_eq!(
        rejection(db.append(b"\0kappadb/who-knows/v9\0".to_vec()).unwrap_err()),
        DeletionError::UnknownKind
    );
    assert_eq!(
        db.head(&db.feed_id()).unwrap().seq,
        2,
        "nothing was written"
    );
    // By id, the right way.
    let three = db.append(b"three".to_vec()).unwrap();
    db.delete_ids(&[three.id]).unwrap();
    assert!(payload(&db, 3).is_erased());
}

/// A peer's feed: `n` entries, then a deletion built by hand.
fn peer_with_deletion(n: usize, deletion: Deletion) -> (TestPeer, Vec<Entry>) {
    let mut peer = TestPeer::new(9);
    let mut entries: Vec<Entry> = (0..n)
        .map(|i| peer.make(i as u64, format!("theirs {i}")))
        .collect();
    entries.push(peer.make(n as u64, deletion.encode()));
    (peer, entries)
}

#[test]
fn a_deletion_from_a_peer_erases_what_it_names_and_ignores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut peer = TestPeer::new(9);
    let early: Vec<Entry> = (0..4).map(|i| peer.make(i, format!("t{i}"))).collect();
    let stranger = TestPeer::new(4).make(1, b"x".to_vec());
    let deletion = Deletion {
        targets: vec![
            DeleteTarget {
                seq: 2,
                id: early[1].id(),
            },
            // Not the entry at seq 3: ignored, with a reason.
            DeleteTarget {
                seq: 3,
                id: stranger.id(),
            },
        ],
        up_to: None,
    };
    let d = peer.make(10, deletion.encode());
    let mut page = early.clone();
    page.push(d);
    let report = db.ingest_page(page).unwrap();
    assert_eq!(report.accepted, 5);
    assert_eq!(report.deletion_issues.len(), 1);
    assert!(matches!(
        report.deletion_issues[0].error,
        DeletionError::NotOwnEntry { seq: 3, .. }
    ));
    let feed = peer.key.feed_id();
    assert!(db.get(&feed, 2).unwrap().unwrap().payload.is_erased());
    assert!(!db.get(&feed, 3).unwrap().unwrap().payload.is_erased());
    clean_verify(&db);

    // A malformed deletion is stored (the chain goes on) and has no effect.
    let (_, mut theirs) = peer_with_deletion(2, Deletion::default());
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = new_db(dir2.path());
    let report = db2.ingest_page(std::mem::take(&mut theirs)).unwrap();
    assert_eq!(report.accepted, 3);
    assert_eq!(report.deletion_issues[0].error, DeletionError::Empty);
    let report = clean_verify(&db2);
    assert_eq!(report.ineffective_deletions, 1);
}

#[test]
fn erased_entries_from_a_peer_are_stored_erased() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut peer = TestPeer::new(2);
    let mut entries: Vec<Entry> = (0..3).map(|i| peer.make(i, format!("e{i}"))).collect();
    entries[1].payload = Payload::Erased;
    let report = db.ingest_page(entries).unwrap();
    assert_eq!(report.accepted, 3);
    let feed = peer.key.feed_id();
    assert_eq!(db.get(&feed, 2).unwrap().unwrap().payload, Payload::Erased);
    assert_eq!(db.status().erased_entries, 1);
    let report = clean_verify(&db);
    assert_eq!(report.erased_payloads, 1);
}

#[test]
fn forgetting_a_feed_drops_its_records_and_it_can_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    db.append(b"mine".to_vec()).unwrap();
    let mut peer = TestPeer::new(5);
    let theirs: Vec<Entry> = (0..50).map(|i| peer.make(i, vec![b'z'; 300])).collect();
    db.ingest_page(theirs.clone()).unwrap();
    db.append(b"mine again".to_vec()).unwrap();
    let feed = peer.key.feed_id();
    assert!(matches!(
        db.forget(&db.feed_id()),
        Err(ForgetError::OwnFeed)
    ));
    assert!(db.forget(&feed).unwrap());
    assert!(!db.forget(&feed).unwrap(), "forgotten already");
    assert!(db.head(&feed).is_none());
    assert!(db.get(&feed, 1).unwrap().is_none());
    let bodies: Vec<RecordBody> = db.log_iter(0).map(|r| r.unwrap().body).collect();
    assert_eq!(bodies.len(), 3, "two of mine and the marker: {bodies:?}");
    assert_eq!(bodies[2], RecordBody::Forget(feed));
    assert_eq!(db.status().entries, 2);
    clean_verify(&db);
    // The index rebuilt from the log agrees.
    drop(db);
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert!(db.head(&feed).is_none());
    assert_eq!(db.status().entries, 2);
    // The feed syncs again from its first entry.
    assert_eq!(db.ingest_page(theirs).unwrap().accepted, 50);
    assert_eq!(db.head(&feed).unwrap().seq, 50);
    clean_verify(&db);
}

#[test]
fn a_rewrite_cut_short_by_a_crash_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    for i in 0..5 {
        db.append(vec![b'a' + i; 64]).unwrap();
    }
    let third = db.get(&db.feed_id(), 3).unwrap().unwrap();
    let offset = db
        .log_iter(0)
        .map(|r| r.unwrap())
        .find(|r| r.entry().is_some_and(|e| e.header.seq == 3))
        .unwrap()
        .offset;
    drop(db);
    // What a crash leaves: the journal names the edit, the record is half
    // rewritten (flag set, some payload bytes zeroed, the old checksum).
    let seg = dir.path().join("log").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let header_len = third.header.encode().len();
    let flag_at = offset as usize + 8 + 3 + header_len + 64;
    bytes[flag_at] = 2;
    for b in &mut bytes[flag_at + 1..flag_at + 20] {
        *b = 0;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let mut journal = offset.to_le_bytes().to_vec();
    journal.push(1);
    let crc = crc32fast::hash(&journal);
    journal.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.path().join("log").join("edits.journal"), journal).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert!(db.recovery().is_none(), "nothing was cut");
    assert_eq!(payload(&db, 3), Payload::Erased);
    assert_eq!(payload(&db, 4), Payload::Held(vec![b'd'; 64]));
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.erased_payloads, 1);
}
