//! Crash safety with a real crash: a child process folds views and is
//! killed (SIGKILL) at a random moment; after reopening, every view
//! resumes from its checkpoint and ends byte-identical to an uninterrupted
//! fold, with nothing counted twice.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CountingView, create_db, digests, indexer, mixed_entries, stored_count};
use kappadb_core::Db;

const CHILD_ENV: &str = "KAPPADB_VIEWS_CRASH_CHILD_DIR";

fn open_views(db: &Db) -> kappadb_views::Indexer {
    let ix = indexer(db, 10);
    ix.register(CountingView::new(1).0).unwrap();
    ix.declare_field_index("by-user", "/user").unwrap();
    ix
}

/// The child's side: fold, slowly, until killed. Does nothing when run as
/// an ordinary test.
#[test]
fn crash_child_folds_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = Db::open(std::path::Path::new(&dir)).unwrap();
    let ix = open_views(&db);
    println!("folding");
    while ix.step().unwrap() {}
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn crash_sigkill_mid_fold_resumes_exactly_once() {
    let entries = mixed_entries(3, 700);
    let n = entries.len() as u64;
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let db = create_db(dir.path(), 9);
        db.ingest(entries.clone()).unwrap();
        let ix = open_views(&db);
        ix.catch_up().unwrap();
        digests(&ix)
    };
    let mut interrupted = 0;
    for delay_ms in [40u64, 90, 160, 260] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = create_db(dir.path(), 1);
            db.ingest(entries.clone()).unwrap();
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_folds_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();

        let db = Db::open(dir.path()).unwrap();
        let ix = open_views(&db);
        let status = ix.view_status("counting").unwrap();
        eprintln!(
            "delay {delay_ms}: checkpoint {} of {}",
            status.checkpoint,
            db.log_end()
        );
        if status.checkpoint < db.log_end() {
            interrupted += 1;
        }
        // What survived is consistent: the counter matches the checkpoint.
        assert_eq!(stored_count(&ix), status.folded, "delay {delay_ms}");
        ix.catch_up().unwrap();
        assert_eq!(stored_count(&ix), n, "delay {delay_ms}");
        assert_eq!(ix.view_status("counting").unwrap().folded, n);
        assert_eq!(digests(&ix), reference, "delay {delay_ms}");
    }
    assert!(interrupted > 0, "no kill landed mid-fold");
}
