//! The edges between core and its callers: rejections apart from failures,
//! fork proofs checked once and by one rule, and watch callbacks that may
//! call back into the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{
    AppendError, CreateOptions, Db, DbConfig, EntryError, ForkProof, SignedHeader,
    UncheckedForkProof,
};

fn db_with_limit(dir: &std::path::Path, max_payload_bytes: u32) -> Db {
    Db::create(
        dir,
        CreateOptions {
            config: DbConfig {
                max_payload_bytes,
                ..DbConfig::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap()
}

/// Two conflicting first entries of one feed, the second with a payload
/// of `big` bytes.
fn fork_of(seed: u64, big: usize) -> (SignedHeader, SignedHeader) {
    let mut a = TestPeer::new(seed);
    let mut b = a.clone();
    b.entries.clear();
    a.entries.clear();
    let x = a.make(1, b"small".to_vec()).signed_header();
    let y = b.make(2, vec![7; big]).signed_header();
    (x, y)
}

#[test]
fn fork_proof_over_the_local_payload_limit_is_stored_not_refused() {
    // A peer with a larger limit holds an entry we could not store; its
    // proof that the feed forked is still a valid proof.
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_limit(dir.path(), 100);
    let (x, y) = fork_of(1, 1000);
    let proof = ForkProof::new(x, y).unwrap();
    assert!(db.ingest_fork_proof(proof.clone()).unwrap());
    assert_eq!(db.fork(&proof.author()).unwrap().seq, 1);
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert_eq!(report.fork_proofs, 1);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn fork_proofs_are_checked_when_built() {
    let (x, y) = fork_of(2, 10);
    // The same header twice.
    assert!(matches!(
        ForkProof::new(x.clone(), x.clone()),
        Err(EntryError::NotAFork(_))
    ));
    // Headers of two authors.
    let (other, _) = fork_of(3, 10);
    assert!(matches!(
        ForkProof::new(x.clone(), other),
        Err(EntryError::NotAFork(_))
    ));
    // A forged signature.
    let mut forged = y.clone();
    forged.signature = TestPeer::new(9).key.sign(&forged.header.id().0);
    assert!(matches!(
        ForkProof::new(x.clone(), forged),
        Err(EntryError::BadSignature { .. })
    ));
    // As it arrives from a peer, then checked.
    let unchecked = UncheckedForkProof { a: y, b: x };
    assert!(unchecked.check().is_ok());
}

#[test]
fn append_rejections_and_failures_are_apart() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_limit(dir.path(), 10);
    let err = db.append(vec![0; 11]).unwrap_err();
    assert!(matches!(
        err.rejection(),
        Some(EntryError::PayloadTooLarge { len: 11, limit: 10 })
    ));
    assert!(matches!(err, AppendError::Rejected(_)));
}

#[test]
fn a_watch_callback_may_append_without_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
    let inner = db.clone();
    let once = Arc::new(AtomicBool::new(false));
    let flag = once.clone();
    db.watch().subscribe(move |_| {
        if !flag.swap(true, Ordering::SeqCst) {
            inner.append(b"from the callback".to_vec()).unwrap();
        }
    });
    let (tx, rx) = mpsc::channel();
    let writer = db.clone();
    std::thread::spawn(move || {
        let res = writer.append(b"first".to_vec()).map(|a| a.seq);
        let _ = tx.send(res);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("append from a watch callback deadlocked");
    assert_eq!(first.unwrap(), 1);
    assert_eq!(db.head(&db.feed_id()).unwrap().seq, 2);
}
