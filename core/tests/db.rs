//! Database behaviour: append, read, ingest, forks, torn tails, reindex.

use std::fs;
use std::path::{Path, PathBuf};

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{
    AppendError, CheckedEntries, CreateOptions, Db, DbConfig, EntryError, Payload, RecordBody,
    StoreError,
};

fn new_db(dir: &Path) -> Db {
    Db::create(dir, CreateOptions::default()).unwrap()
}

fn new_db_with(dir: &Path, config: DbConfig) -> Db {
    Db::create(
        dir,
        CreateOptions {
            config,
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn log_dump(db: &Db) -> Vec<String> {
    db.log_iter(0)
        .map(|r| format!("{:?}", r.unwrap()))
        .collect()
}

#[test]
fn append_get_and_iterate() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let a = db.append(b"one".to_vec()).unwrap();
    let more = db
        .append_batch((0..100).map(|i| format!("p{i}").into_bytes()).collect())
        .unwrap();
    assert_eq!(a.seq, 1);
    assert_eq!(more.last().unwrap().seq, 101);
    let head = db.head(&db.feed_id()).unwrap();
    assert_eq!(head.seq, 101);
    assert_eq!(head.id, more.last().unwrap().id);
    let e = db.get(&db.feed_id(), 50).unwrap().unwrap();
    assert_eq!(e.payload.bytes(), Some(&b"p48"[..]));
    assert!(db.get(&db.feed_id(), 102).unwrap().is_none());
    let range: Vec<_> = db
        .feed_range(&db.feed_id(), 10, 20)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(range.len(), 11);
    assert_eq!(range[0].header.seq, 10);
    // Offsets grow, and every record's next_offset is the next record's offset.
    let recs: Vec<_> = db.log_iter(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(recs.len(), 101);
    for w in recs.windows(2) {
        assert_eq!(w[0].next_offset, w[1].offset);
    }
    assert_eq!(recs.last().unwrap().next_offset, db.log_end());
    // Iteration from a later record, and boundary search from any byte.
    assert_eq!(db.log_iter(recs[5].offset).count(), 96);
    assert_eq!(
        db.record_boundary(recs[5].offset + 1).unwrap(),
        recs[6].offset
    );
}

/// Index changes are committed to sled in groups; reads must see what is
/// only pending, and a run committed in part and extended since must come
/// out once, whole.
#[test]
fn reads_see_index_changes_not_yet_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let me = db.feed_id();
    let check = |db: &Db, n: u64| {
        for seq in [1, n / 2, n] {
            let e = db.get(&me, seq).unwrap().unwrap();
            assert_eq!(e.payload.bytes(), Some(format!("s{seq}").as_bytes()));
        }
        let all: Vec<u64> = db
            .feed_range(&me, 1, u64::MAX)
            .map(|e| e.unwrap().header.seq)
            .collect();
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
        let mid: Vec<u64> = db
            .feed_range(&me, 90, 140)
            .map(|e| e.unwrap().header.seq)
            .collect();
        assert_eq!(mid, (90..=140.min(n)).collect::<Vec<_>>());
    };
    // Fewer than one commit group: everything is pending.
    for seq in 1..=50u64 {
        db.append(format!("s{seq}").into_bytes()).unwrap();
    }
    check(&db, 50);
    for seq in 51..=100u64 {
        db.append(format!("s{seq}").into_bytes()).unwrap();
    }
    check(&db, 100);
    // Commit mid-run (runs hold 64 entries: 65..=100 is part full), then
    // extend that run and start another, pending again.
    db.flush_index().unwrap();
    for seq in 101..=150u64 {
        db.append(format!("s{seq}").into_bytes()).unwrap();
    }
    check(&db, 150);
    // Past the commit threshold, and after a reopen.
    for seq in 151..=700u64 {
        db.append(format!("s{seq}").into_bytes()).unwrap();
    }
    check(&db, 700);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    check(&db, 700);
    assert_eq!(db.head(&me).unwrap().seq, 700);
}

#[test]
fn payload_limit_is_enforced_at_append() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db_with(
        dir.path(),
        DbConfig {
            max_payload_bytes: 100,
            ..DbConfig::default()
        },
    );
    let err = db.append(vec![0; 101]).unwrap_err();
    assert!(matches!(
        err,
        AppendError::Rejected(EntryError::PayloadTooLarge {
            len: 101,
            limit: 100
        })
    ));
    // A batch with one oversized payload writes nothing.
    assert!(db.append_batch(vec![vec![1], vec![0; 101]]).is_err());
    assert!(db.head(&db.feed_id()).is_none());
    db.append(vec![0; 100]).unwrap();
}

#[test]
fn second_open_is_refused_with_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _db = new_db(dir.path());
    let err = Db::open(dir.path()).unwrap_err();
    match err {
        StoreError::Locked { pid, .. } => assert_eq!(pid, Some(std::process::id())),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn create_refuses_existing_and_open_refuses_missing() {
    let dir = tempfile::tempdir().unwrap();
    drop(new_db(dir.path()));
    assert!(matches!(
        Db::create(dir.path(), CreateOptions::default()).unwrap_err(),
        StoreError::AlreadyExists { .. }
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Db::open(empty.path()).unwrap_err(),
        StoreError::NotADatabase { .. }
    ));
}

#[test]
fn segments_roll_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db_with(
        dir.path(),
        DbConfig {
            segment_bytes: 4096,
            ..DbConfig::default()
        },
    );
    for chunk in 0..10 {
        db.append_batch((0..20).map(|i| vec![chunk as u8; 100 + i]).collect())
            .unwrap();
    }
    let before = log_dump(&db);
    drop(db);
    assert!(segment_files(dir.path()).len() > 5);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(log_dump(&db), before);
    assert!(db.verify(&mut |_, _| {}).unwrap().problems.is_empty());
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 200);
    for seq in [1, 57, 200] {
        assert_eq!(db.get(&db.feed_id(), seq).unwrap().unwrap().header.seq, seq);
    }
}

/// Bytes of a record the way a crash leaves an unsynced write: the log gets
/// a copy of the last record's first `keep` bytes (a torn frame) appended.
fn tear_tail(dir: &Path, last_record: std::ops::Range<u64>, keep: usize, flip: Option<usize>) {
    use std::os::unix::fs::FileExt;
    let seg = segment_files(dir).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let mut torn = bytes[last_record.start as usize..last_record.end as usize].to_vec();
    if let Some(i) = flip {
        torn[i] ^= 0xff;
    }
    torn.truncate(keep);
    // Written where the next record would go (over the preallocated zeros).
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&torn, last_record.end).unwrap();
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let stored = db
        .append_batch((0..10).map(|i| format!("entry {i}").into_bytes()).collect())
        .unwrap();
    let last = stored.last().unwrap().offset;
    let end = db.log_end();
    drop(db);
    // A torn write of an 11th record: its frame is cut mid-way.
    tear_tail(dir.path(), last..end, (end - last) as usize - 7, None);
    let db = Db::open(dir.path()).unwrap();
    let rec = db.recovery().expect("the cut is reported").clone();
    assert_eq!(rec.cut_at, end);
    assert_eq!(rec.bytes_removed, end - last - 7);
    assert!(rec.saved_to.exists());
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 10);
    assert_eq!(db.log_iter(0).count(), 10);
    assert!(db.verify(&mut |_, _| {}).unwrap().problems.is_empty());
    // The feed continues from seq 11, and survives another reopen cleanly.
    assert_eq!(db.append(b"again".to_vec()).unwrap().seq, 11);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert!(db.recovery().is_none());
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 11);
}

#[test]
fn torn_tail_cut_even_without_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let stored = db
        .append_batch((0..5).map(|i| vec![i; 50]).collect())
        .unwrap();
    let last = stored.last().unwrap().offset;
    let end = db.log_end();
    drop(db);
    tear_tail(dir.path(), last..end, 5, None);
    fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.recovery().unwrap().cut_at, end);
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 5);
}

#[test]
fn corrupt_tail_record_is_cut_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let stored = db
        .append_batch((0..5).map(|i| vec![i; 50]).collect())
        .unwrap();
    let last = stored.last().unwrap().offset;
    let end = db.log_end();
    drop(db);
    // A whole record whose bytes did not all reach the disk.
    let len = (end - last) as usize;
    tear_tail(dir.path(), last..end, len, Some(len - 3));
    let db = Db::open(dir.path()).unwrap();
    let rec = db.recovery().unwrap();
    assert!(rec.reason.contains("checksum"), "{}", rec.reason);
    assert_eq!(rec.cut_at, end);
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 5);
}

#[test]
fn damage_in_the_middle_is_refused_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let stored = db
        .append_batch((0..20).map(|i| vec![i; 50]).collect())
        .unwrap();
    let mid = stored[10].offset;
    drop(db);
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[mid as usize + 20] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    // With the index (it knows the record was durable) and without it (an
    // intact record follows), the database refuses and touches nothing.
    for drop_index in [false, true] {
        if drop_index {
            fs::remove_dir_all(dir.path().join("sled")).unwrap();
        }
        let err = Db::open(dir.path()).unwrap_err();
        match &err {
            StoreError::Corrupt { offset, reason } => {
                assert_eq!(*offset, mid);
                assert!(reason.contains("nothing was cut"), "{reason}");
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(fs::read(&seg).unwrap(), bytes);
    }
}

#[test]
fn deleting_the_index_rebuilds_identically() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut other = TestPeer::new(3);
    db.append_batch((0..50).map(|i| vec![i; 10]).collect())
        .unwrap();
    let entries: Vec<_> = (0..30).map(|i| other.make(i, vec![i as u8])).collect();
    db.ingest(entries).unwrap();
    let heads = db.heads();
    let dump = log_dump(&db);
    drop(db);
    fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.heads(), heads);
    assert_eq!(log_dump(&db), dump);
    drop(db);
    let db = Db::open_reindex(dir.path(), &mut |_, _| {}).unwrap();
    assert_eq!(db.heads(), heads);
    assert_eq!(
        db.get(&other.key.feed_id(), 30).unwrap().unwrap(),
        other.entries[29]
    );
}

#[test]
fn unreadable_index_points_at_reindex() {
    let dir = tempfile::tempdir().unwrap();
    drop(new_db(dir.path()));
    let sled_dir = dir.path().join("sled");
    fs::remove_dir_all(&sled_dir).unwrap();
    // A file where sled expects a directory.
    fs::write(&sled_dir, b"garbage").unwrap();
    let err = Db::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::IndexUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("kappa reindex"));
    fs::remove_file(&sled_dir).unwrap();
    fs::create_dir(&sled_dir).unwrap();
    fs::write(sled_dir.join("conf"), b"\xff\xfe not a sled config").unwrap();
    let res = Db::open(dir.path());
    if let Err(err) = &res {
        assert!(err.to_string().contains("kappa reindex"), "{err}");
    }
    drop(res);
    let db = Db::open_reindex(dir.path(), &mut |_, _| {}).unwrap();
    db.append(b"x".to_vec()).unwrap();
}

#[test]
fn ingest_accepts_out_of_order_and_reports_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut p = TestPeer::new(1);
    let entries: Vec<_> = (0..10).map(|i| p.make(100 + i, format!("{i}"))).collect();
    let mut shuffled = entries.clone();
    shuffled.reverse();
    let report = db.ingest(shuffled).unwrap();
    assert_eq!(report.accepted, 10);
    assert!(report.rejected.is_empty());
    assert_eq!(report.new_heads, vec![(p.key.feed_id(), 10)]);
    // Duplicates are counted, not stored twice.
    let report = db.ingest(entries[3..6].to_vec()).unwrap();
    assert_eq!((report.accepted, report.duplicates), (0, 3));
    assert_eq!(db.log_iter(0).count(), 10);
    // A gap is rejected.
    let later: Vec<_> = (0..3).map(|i| p.make(200 + i, "x")).collect();
    let report = db.ingest(vec![later[1].clone()]).unwrap();
    assert_eq!(
        report.rejected,
        vec![(
            0,
            EntryError::SeqGap {
                expected: 11,
                found: 12
            }
        )]
    );
    // A bad payload is rejected; its header alone would be fine.
    let mut bad = later[0].clone();
    bad.payload = Payload::Held(b"tampered".to_vec());
    let report = db.ingest(vec![bad.clone()]).unwrap();
    assert!(matches!(
        report.rejected[0].1,
        EntryError::PayloadLenMismatch { .. }
    ));
    bad.payload = Payload::Absent;
    assert_eq!(db.ingest(vec![bad]).unwrap().accepted, 1);
    let e = db.get(&p.key.feed_id(), 11).unwrap().unwrap();
    assert_eq!(e.payload, Payload::Absent);
}

#[test]
fn ingest_page_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut p = TestPeer::new(1);
    let mut entries: Vec<_> = (0..10).map(|i| p.make(i, format!("{i}"))).collect();
    let forger = TestPeer::new(2);
    entries[7].signature = forger.key.sign(&entries[7].id().0);
    let report = db.ingest_page(entries.clone()).unwrap();
    assert!(report.dropped);
    assert_eq!(report.accepted, 0);
    assert!(matches!(
        report.rejected[0],
        (7, EntryError::BadSignature { .. })
    ));
    assert_eq!(db.log_end(), 0);
    assert!(db.head(&p.key.feed_id()).is_none());
    // A broken chain drops the page too.
    let mut q = TestPeer::new(4);
    let mut chain: Vec<_> = (0..5).map(|i| q.make(i, "y")).collect();
    chain.remove(2);
    let report = db.ingest_page(chain).unwrap();
    assert!(report.dropped);
    assert_eq!(db.log_end(), 0);
}

#[test]
fn checked_pages_are_stored_like_pages_and_rechecked_on_another_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db_with(
        dir.path(),
        DbConfig {
            max_payload_bytes: 64,
            ..DbConfig::default()
        },
    );
    let mut p = TestPeer::new(1);
    let entries: Vec<_> = (0..6).map(|i| p.make(i, format!("{i}"))).collect();
    // Checked in two parts, joined, stored: the same as ingest_page.
    let mut first = CheckedEntries::new(entries[..3].to_vec(), 64);
    first.append(CheckedEntries::new(entries[3..].to_vec(), 64));
    assert_eq!(first.len(), 6);
    // Split apart again, each part keeps its own entries and verdicts.
    let second = first.split_off(4);
    assert_eq!((first.len(), second.len()), (4, 2));
    assert_eq!(second.entries()[0], entries[4]);
    let report = db.ingest_checked(first).unwrap();
    assert_eq!((report.accepted, report.dropped), (4, false));
    let report = db.ingest_checked(second).unwrap();
    assert_eq!((report.accepted, report.dropped), (2, false));
    // A bad signature found by the check drops the page at ingest.
    let mut more: Vec<_> = (6..9).map(|i| p.make(i, "x")).collect();
    more[1].signature = TestPeer::new(2).key.sign(&more[1].id().0);
    let report = db.ingest_checked(CheckedEntries::new(more, 64)).unwrap();
    assert!(report.dropped);
    assert!(matches!(
        report.rejected[0],
        (1, EntryError::BadSignature { .. })
    ));
    // Checked against a larger limit than the database's: checked again,
    // and the oversized entry refused.
    let mut q = TestPeer::new(3);
    let big: Vec<_> = vec![q.make(1, vec![b'x'; 100])];
    let checked = CheckedEntries::new(big.clone(), 1 << 20);
    let report = db.ingest_checked(checked).unwrap();
    assert!(report.dropped);
    assert!(matches!(
        report.rejected[0],
        (0, EntryError::PayloadTooLarge { .. })
    ));
    // Appending a part checked against another limit checks it again.
    let mut joined = CheckedEntries::new(Vec::new(), 64);
    joined.append(CheckedEntries::new(vec![p.make(9, "y")], 64));
    joined.append(CheckedEntries::new(big, 1 << 20));
    let report = db.ingest_checked(joined).unwrap();
    assert!(report.dropped);
    assert!(matches!(
        report.rejected[0],
        (1, EntryError::PayloadTooLarge { .. })
    ));
    assert_eq!(db.head(&p.key.feed_id()).unwrap().seq, 6);
    assert!(db.head(&q.key.feed_id()).is_none());
}

#[test]
fn forks_are_detected_stored_and_survive_reindex() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let mut a = TestPeer::new(9);
    let mut b = a.clone();
    let common: Vec<_> = (0..3).map(|i| a.make(i, format!("c{i}"))).collect();
    b.entries = common.clone();
    let a4 = a.make(10, "branch a");
    let b4 = b.make(10, "branch b");
    let b5 = b.make(11, "branch b continues");
    let feed = a.key.feed_id();
    db.ingest(common.clone()).unwrap();
    db.ingest(vec![a4.clone()]).unwrap();
    let report = db.ingest(vec![b4.clone(), b5.clone()]).unwrap();
    assert_eq!(report.forks.len(), 1);
    assert_eq!(report.forks[0].seq(), 4);
    assert!(matches!(
        report.rejected[0].1,
        EntryError::FeedForked {
            fork_seq: 4,
            seq: 5,
            ..
        }
    ));
    assert_eq!(db.fork(&feed).unwrap().seq, 4);
    assert_eq!(db.head(&feed).unwrap().seq, 4);
    let proofs = db.fork_proofs().unwrap();
    assert_eq!(proofs.len(), 1);
    // The proof is in the log, so it survives a rebuild of the index.
    drop(db);
    fs::remove_dir_all(dir.path().join("sled")).unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.fork(&feed).unwrap().seq, 4);
    assert!(db.verify(&mut |_, _| {}).unwrap().problems.is_empty());

    // A second database learns the proof without holding either branch.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = new_db(dir2.path());
    assert!(db2.ingest_fork_proof(proofs[0].clone()).unwrap());
    assert!(!db2.ingest_fork_proof(proofs[0].clone()).unwrap());
    assert_eq!(db2.fork(&feed).unwrap().seq, 4);
    // Entries before the fork are still accepted; at or after it, refused.
    let r = db2.ingest(common).unwrap();
    assert_eq!(r.accepted, 3);
    let r = db2.ingest(vec![a4]).unwrap();
    assert!(matches!(r.rejected[0].1, EntryError::FeedForked { .. }));
    let kinds: Vec<bool> = db2
        .log_iter(0)
        .map(|r| matches!(r.unwrap().body, RecordBody::Fork(_)))
        .collect();
    assert_eq!(kinds, vec![true, false, false, false]);
}

#[test]
fn watchers_see_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = seen.clone();
    let id = db
        .watch()
        .subscribe(move |end| s2.store(end, std::sync::atomic::Ordering::SeqCst));
    let db2 = db.clone();
    let t = std::thread::spawn(move || db2.wait_past(0, std::time::Duration::from_secs(10)));
    db.append(b"x".to_vec()).unwrap();
    let end = t.join().unwrap();
    assert_eq!(end, db.log_end());
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), db.log_end());
    db.watch().unsubscribe(id);
}

/// How long a test waits for something that should happen at once.
const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn payload(rec: &kappadb_core::LogRecord) -> &[u8] {
    rec.entry().unwrap().payload.bytes().unwrap()
}

#[test]
fn tail_yields_existing_records_then_live_ones() {
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    db.append_batch(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .unwrap();

    // The blocking iterator, on its own thread, as an app would use it.
    let mut tail = db.tail(0);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for rec in tail.by_ref().take(4) {
            tx.send(rec.unwrap()).unwrap();
        }
        tail.offset()
    });
    for expected in [&b"a"[..], b"b", b"c"] {
        let rec = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(payload(&rec), expected);
    }
    // The reader is blocked at the end of the log until someone writes.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    let writer = db.clone();
    let appended = std::thread::spawn(move || writer.append(b"live".to_vec()))
        .join()
        .unwrap()
        .unwrap();
    let rec = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(payload(&rec), b"live");
    assert_eq!(rec.offset, appended.offset);
    assert_eq!(reader.join().unwrap(), db.log_end());
}

#[test]
fn tail_times_out_and_resumes_from_its_offset() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    db.append_batch(vec![b"a".to_vec(), b"b".to_vec()]).unwrap();

    let mut tail = db.tail(0);
    let a = tail.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!(payload(&a), b"a");
    let saved = tail.offset();
    assert_eq!(saved, a.next_offset);
    drop(tail);

    // Resuming from the saved offset gives the next record, no repeat.
    let mut tail = db.tail(saved);
    assert_eq!(payload(&tail.next_timeout(WAIT).unwrap().unwrap()), b"b");
    // Nothing new: None after the timeout, and None at once without one.
    let t0 = Instant::now();
    assert!(tail.next_timeout(Duration::from_millis(100)).is_none());
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(tail.try_next().is_none());
    assert!(tail.next_timeout(Duration::ZERO).is_none());
    assert_eq!(tail.offset(), db.log_end());
    // A record already durable comes back even with a zero timeout.
    db.append(b"c".to_vec()).unwrap();
    assert_eq!(
        payload(&tail.next_timeout(Duration::ZERO).unwrap().unwrap()),
        b"c"
    );
    let saved = tail.offset();
    drop(tail);

    // Across a reopen too.
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert!(db.tail(saved).try_next().is_none());
    db.append(b"d".to_vec()).unwrap();
    let rest: Vec<_> = db
        .tail(saved)
        .take(1)
        .map(|r| payload(&r.unwrap()).to_vec())
        .collect();
    assert_eq!(rest, [b"d".to_vec()]);
}

#[test]
fn tail_from_inside_a_record_starts_at_the_next_one() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let [a, b, c] = db
        .append_batch(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .unwrap()
        .try_into()
        .unwrap();
    let mut tail = db.tail(a.offset + 1);
    let rec = tail.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!(rec.offset, b.offset);
    assert_eq!(payload(&rec), b"b");
    // A boundary is its own start.
    let rec = db.tail(c.offset).next_timeout(WAIT).unwrap().unwrap();
    assert_eq!(payload(&rec), b"c");

    // Inside the last record: nothing until the next record lands.
    let mut inside_last = db.tail(c.offset + 3);
    assert!(
        inside_last
            .next_timeout(Duration::from_millis(50))
            .is_none()
    );
    assert_eq!(inside_last.offset(), db.log_end());
    // Past the end: the first record starting at or after the offset.
    let past = db.log_end() + 5;
    let mut beyond = db.tail(past);
    assert!(beyond.try_next().is_none());
    assert_eq!(beyond.offset(), past);

    let d = db.append(b"d".to_vec()).unwrap();
    let rec = inside_last.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!((rec.offset, payload(&rec)), (d.offset, &b"d"[..]));
    // `d` starts before `past`, so `beyond` skips it.
    assert!(beyond.next_timeout(Duration::from_millis(50)).is_none());
    let e = db.append(b"e".to_vec()).unwrap();
    let rec = beyond.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!((rec.offset, payload(&rec)), (e.offset, &b"e"[..]));
}

#[test]
fn tail_yields_a_read_error_then_ends() {
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let [_, b] = db
        .append_batch(vec![b"a".to_vec(), b"b".to_vec()])
        .unwrap()
        .try_into()
        .unwrap();
    // Damage the second record's body behind the database's back.
    let seg = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment_files(dir.path())[0])
        .unwrap();
    let mut byte = [0u8];
    seg.read_exact_at(&mut byte, b.offset + 12).unwrap();
    seg.write_all_at(&[byte[0] ^ 0xff], b.offset + 12).unwrap();

    let mut tail = db.tail(0);
    assert_eq!(payload(&tail.next().unwrap().unwrap()), b"a");
    let err = tail.next().unwrap().unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset, .. } if offset == b.offset),
        "{err}"
    );
    assert!(tail.next().is_none());
    assert!(tail.next_timeout(Duration::from_millis(10)).is_none());
    assert_eq!(tail.offset(), b.offset);
}

#[test]
fn open_or_create_creates_once_then_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("db");
    let network = kappadb_core::NetworkKey::from_bytes([3; 32]);
    let db = Db::open_or_create(
        &dir,
        CreateOptions {
            network_key: Some(network.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    assert!(db.created());
    assert_eq!(db.network_key().unwrap(), network);
    let feed = db.feed_id();
    db.append(b"kept".to_vec()).unwrap();

    // While it is open, a second opener is refused, not handed a new
    // database.
    let err = Db::open_or_create(&dir, CreateOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(db);

    // Opening ignores the options: the stored keys and settings win.
    let db = Db::open_or_create(
        &dir,
        CreateOptions {
            network_key: Some(kappadb_core::NetworkKey::from_bytes([4; 32])),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    assert!(!db.created());
    assert_eq!(db.feed_id(), feed);
    assert_eq!(db.network_key().unwrap(), network);
    assert_eq!(db.head(&feed).unwrap().seq, 1);
    drop(db);
    assert!(!Db::open(&dir).unwrap().created());
}
