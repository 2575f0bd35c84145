//! A database tells its `Observer` of appends, ingests and refusals, with
//! the counts and the rule names a metrics exporter labels them by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{AppendError, CreateOptions, Db, Observer};

#[derive(Default)]
struct Seen {
    appended: Mutex<Vec<usize>>,
    ingested: Mutex<Vec<usize>>,
    rejected: Mutex<Vec<&'static str>>,
}

impl Observer for Seen {
    fn appended(&self, entries: usize, took: Duration) {
        assert!(took > Duration::ZERO);
        self.appended.lock().unwrap().push(entries);
    }
    fn ingested(&self, accepted: usize, _took: Duration) {
        self.ingested.lock().unwrap().push(accepted);
    }
    fn rejected(&self, reason: &'static str) {
        self.rejected.lock().unwrap().push(reason);
    }
}

#[test]
fn appends_ingests_and_refusals_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
    let seen = Arc::new(Seen::default());
    db.set_observer(seen.clone());

    db.append(b"one".to_vec()).unwrap();
    db.append_batch(vec![b"two".to_vec(), b"three".to_vec()])
        .unwrap();
    let limit = db.config().max_payload_bytes as usize;
    let too_big = db.append(vec![0u8; limit + 1]);
    assert!(matches!(too_big, Err(AppendError::Rejected(_))));
    assert_eq!(*seen.appended.lock().unwrap(), vec![1, 2]);

    // A peer's feed: three entries stored, then one that skips a seq.
    let mut peer = TestPeer::new(7);
    let page: Vec<_> = (0..3)
        .map(|i| peer.make(1_000 + i, vec![i as u8]))
        .collect();
    let report = db.ingest(page).unwrap();
    assert_eq!(report.accepted, 3);
    peer.make(2_000, b"skipped".to_vec());
    let gap = peer.make(2_001, b"after a gap".to_vec());
    let report = db.ingest(vec![gap]).unwrap();
    assert_eq!(report.accepted, 0);
    assert_eq!(
        *seen.ingested.lock().unwrap(),
        vec![3],
        "an ingest that stored nothing is not counted"
    );
    assert_eq!(
        *seen.rejected.lock().unwrap(),
        vec!["payload_too_large", "seq_gap"]
    );
}
