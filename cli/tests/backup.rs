//! Backup and restore through the CLI, without forking the own feed: a
//! backup taken while the node runs, restored elsewhere after the original
//! went on, catches up its own feed from a peer before it appends.

mod common;

use std::path::Path;

use common::{fails, kappa, ok, serve};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).unwrap()
}

fn own_seq(dir: &Path) -> u64 {
    json(dir, &["status"])["own_seq"].as_u64().unwrap()
}

#[test]
fn cli_backup_while_serving_and_restore_without_forking() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    let backup = tmp.path().join("backup");
    ok(&a, &["init"]);
    let invite = ok(&a, &["invite"]).trim().to_string();
    ok(&b, &["init", "--join", &invite]);
    for i in 0..3 {
        ok(&a, &["append", &format!(r#"{{"type":"note","n":{i}}}"#)]);
    }
    let feed = ok(&a, &["id"]).trim().to_string();

    // The backup is taken through the running node's API.
    let node_a = serve(&a);
    let r = json(&a, &["backup", backup.to_str().unwrap()]);
    assert_eq!(r["own_seq"], 3);
    assert!(backup.join("log").is_dir() && backup.join("secret.key").is_file());
    assert!(!backup.join("sled").exists(), "derived state is not copied");
    let err = fails(&a, &["backup", backup.to_str().unwrap()], None);
    assert!(err.contains("not empty"), "{err}");
    // The original goes on, and a peer gets it; then the original is lost.
    ok(&a, &["append", r#"{"type":"note","n":3}"#]);
    ok(&a, &["append", r#"{"type":"note","n":4}"#]);
    ok(&b, &["sync", &node_a.addr]);
    assert!(node_a.stop());

    // Restored elsewhere, it refuses to append before it has synced.
    let out = ok(&c, &["restore", backup.to_str().unwrap()]);
    assert!(out.contains("appends wait"), "{out}");
    assert_eq!(ok(&c, &["id"]).trim(), feed);
    assert_eq!(own_seq(&c), 3);
    let err = fails(&c, &["append", r#""too early""#], None);
    assert!(err.contains("restored from a backup"), "{err}");
    let status = json(&c, &["status"]);
    assert!(
        status["held"]
            .as_str()
            .is_some_and(|h| h.contains("restored")),
        "{status}"
    );
    assert!(ok(&c, &["status"]).contains("appends wait"));

    // Syncing with the peer brings the own feed to 5 and lifts the hold.
    let node_b = serve(&b);
    ok(&c, &["sync", &node_b.addr]);
    assert_eq!(own_seq(&c), 5);
    assert!(json(&c, &["status"])["held"].is_null());
    let appended = json(&c, &["append", r#"{"type":"note","n":5}"#]);
    assert_eq!(appended["seq"], 6, "{appended}");
    ok(&c, &["sync", &node_b.addr]);
    // No fork anywhere: B (through its node) holds the feed at 6.
    let feeds = json(&b, &["feeds"]);
    let a_at_b = feeds
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feed"] == feed.as_str())
        .cloned()
        .unwrap();
    assert_eq!(a_at_b["seq"], 6, "{a_at_b}");
    assert_eq!(a_at_b["forked"], false, "{a_at_b}");
    ok(&c, &["verify"]);
    assert!(node_b.stop());
}

#[test]
fn cli_restore_refuses_what_it_cannot_do_and_release_needs_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let backup = tmp.path().join("backup");
    ok(&a, &["init"]);
    ok(&a, &["append", r#""one""#]);
    ok(&a, &["backup", backup.to_str().unwrap()]);

    // Not onto an existing database, not from something else.
    let err = fails(&a, &["restore", backup.to_str().unwrap()], None);
    assert!(err.contains("already holds a database"), "{err}");
    let d = tmp.path().join("d");
    let err = fails(&d, &["restore", a.join("log").to_str().unwrap()], None);
    assert!(err.contains("not a kappadb backup"), "{err}");

    // Lifting the hold by hand takes the explicit flag.
    ok(&d, &["restore", backup.to_str().unwrap()]);
    let out = kappa(&d, &["restore", "--release"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(kappa(&d, &["restore"]).status.code() == Some(2));
    let r = json(&d, &["restore", "--release", "--i-know-this-is-the-newest"]);
    assert!(r["held"].is_null(), "{r}");
    let appended = json(&d, &["append", r#""two""#]);
    assert_eq!(appended["seq"], 2, "{appended}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn cli_status_says_in_plain_words_when_the_own_feed_forked() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let copy = tmp.path().join("copy");
    let b = tmp.path().join("b");
    ok(&a, &["init"]);
    let invite = ok(&a, &["invite"]).trim().to_string();
    ok(&b, &["init", "--join", &invite]);
    ok(&a, &["append", r#""one""#]);
    // What the README warns against: a copied directory, both used.
    copy_dir(&a, &copy);
    ok(&a, &["append", r#""two, here""#]);
    ok(&copy, &["append", r#""two, there""#]);
    assert!(json(&a, &["status"])["own_forked_at"].is_null());
    // Both meet at a peer (a copy cannot dial itself: same key).
    let node = serve(&b);
    ok(&a, &["sync", &node.addr]);
    ok(&copy, &["sync", &node.addr]);
    ok(&a, &["sync", &node.addr]);
    assert!(node.stop());
    for dir in [&a, &copy] {
        let status = json(dir, &["status"]);
        assert_eq!(status["own_forked_at"], 2, "{status}");
        let text = ok(dir, &["status"]);
        assert!(text.contains("your own feed is forked at seq 2"), "{text}");
        assert!(text.contains("kappa backup"), "{text}");
        let err = fails(dir, &["append", r#""three""#], None);
        assert!(err.contains("fork"), "{err}");
    }
}
