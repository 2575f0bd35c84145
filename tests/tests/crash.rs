//! Crash safety: a child process appending in a loop is killed with SIGKILL
//! at random moments; after each kill the database opens, `verify` passes,
//! and every append the child reported as done is there.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kappadb_core::{CreateOptions, Db, DbConfig};
use rand::Rng;

#[test]
fn crash_sigkill_loses_no_reported_append() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so kills also land around segment rolls.
    drop(
        Db::create(
            dir.path(),
            CreateOptions {
                config: DbConfig {
                    segment_bytes: 256 * 1024,
                    ..DbConfig::default()
                },
                ..CreateOptions::default()
            },
        )
        .unwrap(),
    );
    let mut rng = rand::rng();
    let mut reported_total = 0;
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let last = Arc::new(AtomicU64::new(0));
        let seen_any = Arc::new(AtomicU64::new(0));
        let (last2, seen2) = (last.clone(), seen_any.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line.strip_prefix("ok ").and_then(|s| s.parse().ok()) {
                    last2.store(seq, Ordering::SeqCst);
                    seen2.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // Wait until the child is appending, then kill it at a random moment.
        let start = Instant::now();
        while seen_any.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..300)));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = last.load(Ordering::SeqCst);
        assert!(reported > 0, "round {round}: the child never appended");

        let db = Db::open(dir.path()).unwrap();
        let report = db.verify(&mut |_, _| {}).unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
        let head = db.head(&db.feed_id()).unwrap();
        assert!(
            head.seq >= reported,
            "round {round}: child reported seq {reported} but only {} survived",
            head.seq
        );
        let mut n = 0u64;
        for e in db.feed_range(&db.feed_id(), 1, reported) {
            n += 1;
            assert_eq!(e.unwrap().header.seq, n, "round {round}");
        }
        assert_eq!(n, reported, "round {round}");
        assert!(reported >= reported_total);
        reported_total = reported;
    }
}
