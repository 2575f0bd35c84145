//! Crash safety of compaction: a child process that appends, deletes and
//! compacts in a loop is killed with SIGKILL at random moments; after each
//! kill the database opens, `verify` passes, every entry the child wrote
//! and did not delete still holds its payload, and the deleted ones hold
//! none.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kappadb_core::system::SystemPayload;
use kappadb_core::{CreateOptions, Db, DbConfig, Payload};
use rand::Rng;

fn expected(seq: u64) -> Vec<u8> {
    format!("e{seq} {}", "p".repeat(300)).into_bytes()
}

#[test]
fn compaction_killed_at_any_point_loses_nothing_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        Db::create(
            dir.path(),
            CreateOptions {
                config: DbConfig {
                    segment_bytes: 16 * 1024,
                    ..DbConfig::default()
                },
                ..CreateOptions::default()
            },
        )
        .unwrap(),
    );
    let mut rng = rand::rng();
    let mut compacted_once = false;
    for round in 0..8 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .arg("compact")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let last = Arc::new(AtomicU64::new(0));
        let last2 = last.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line.strip_prefix("ok ").and_then(|s| s.parse().ok()) {
                    last2.store(seq, Ordering::SeqCst);
                }
            }
        });
        let start = Instant::now();
        while last.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(5..250)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = last.load(Ordering::SeqCst);
        assert!(
            reported > 0,
            "round {round}: the child never finished a round"
        );

        let db = Db::open(dir.path()).unwrap();
        let report = db.verify(&mut |_, _| {}).unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
        let feed = db.feed_id();
        let head = db.head(&feed).unwrap().seq;
        assert!(head >= reported, "round {round}: {head} < {reported}");
        for e in db.feed_range(&feed, 1, head) {
            let e = e.unwrap();
            let seq = e.header.seq;
            match &e.payload {
                Payload::Held(p) if SystemPayload::is_system(p) => {}
                Payload::Held(p) => {
                    assert_eq!(p, &expected(seq), "round {round}: seq {seq}");
                }
                Payload::Erased => {
                    assert_eq!(seq % 3, 0, "round {round}: seq {seq} was never deleted")
                }
                Payload::Absent => panic!("round {round}: seq {seq} lost its payload"),
            }
        }
        compacted_once |= std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .any(|f| f.unwrap().file_name().to_string_lossy().ends_with(".cseg"));
    }
    assert!(compacted_once, "no kill left a compacted segment behind");
}
