//! The data lifecycle through the CLI: deleting, purging a kv key,
//! compacting, forgetting, following, and the serve options that go with
//! them (`--no-views`, `--compact-at`).

mod common;

use std::path::Path;

use common::{eventually, fails, ok, serve_with};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).unwrap()
}

/// A database whose log seals a segment every 4 KiB, so that compaction
/// has sealed segments to work on in a small test.
fn small_segments(dir: &Path) {
    ok(dir, &["init"]);
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["segment_bytes"] = 4096.into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

fn append_notes(dir: &Path, n: usize) {
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"type\":\"note\",\"n\":{i},\"text\":\"{}\"}}\n",
                "x".repeat(200)
            )
        })
        .collect();
    let out = common::kappa_stdin(dir, &["append"], Some(&lines));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_delete_erases_and_compact_gives_the_space_back() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    small_segments(&a);
    append_notes(&a, 120);
    ok(&a, &["kv", "put", "color", "blue"]);
    ok(&a, &["kv", "put", "color", "red"]);
    let digest_before = json(&a, &["view", "digest", "timeline"]);

    // By seq, by prune point, by id.
    let third = json(&a, &["get", "self", "3"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = json(&a, &["delete", "self", "100", "101"]);
    assert_eq!(d["targets"], 2);
    let d = json(&a, &["delete", "--before", "80", "--id", &third]);
    assert_eq!(d["up_to"], 79);
    let e = json(&a, &["get", "self", "5"]);
    assert_eq!(e["payload_format"], "erased", "{e}");
    let human = ok(&a, &["log", "--limit", "1"]);
    assert!(human.contains("erased by its author"), "{human}");
    assert_eq!(json(&a, &["get", "self", "80"])["payload_format"], "json");

    // kv purge: the key's history goes, not only its value.
    ok(&a, &["kv", "purge", "color"]);
    let err = fails(&a, &["kv", "get", "color"], None);
    assert!(err.contains("not set"), "{err}");
    let err = fails(&a, &["kv", "purge", "color"], None);
    assert!(err.contains("never wrote"), "{err}");

    let v = json(&a, &["verify"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["erased_payloads"], 79 + 2 + 2);
    assert_eq!(v["deletions"], 3);

    let s = json(&a, &["status"]);
    let reclaimable = s["reclaimable_bytes"].as_u64().unwrap();
    assert!(reclaimable > 10_000, "{s}");
    assert_eq!(s["erased_entries"], 83);
    let digest_deleted = json(&a, &["view", "digest", "timeline"]);
    assert_ne!(
        digest_before, digest_deleted,
        "the timeline forgot the deleted entries"
    );

    let c = json(&a, &["compact"]);
    assert!(c["segments"].as_u64().unwrap() > 0, "{c}");
    assert!(c["reclaimed"].as_u64().unwrap() >= reclaimable / 2, "{c}");
    let after = json(&a, &["status"]);
    assert_eq!(after["reclaimable_bytes"], 0, "{after}");
    assert!(
        after["disk_bytes"].as_u64().unwrap() < s["disk_bytes"].as_u64().unwrap(),
        "{s} {after}"
    );
    assert_eq!(after["entries"], s["entries"]);
    // Compaction changes no view, and everything still reads and verifies.
    assert_eq!(json(&a, &["view", "digest", "timeline"]), digest_deleted);
    assert_eq!(json(&a, &["get", "self", "110"])["payload"]["n"], 109);
    assert_eq!(json(&a, &["verify"])["ok"], true);
    assert!(ok(&a, &["compact"]).contains("nothing to compact"));
    // A rebuilt view equals the one folded as the deletions came.
    ok(&a, &["view", "rebuild", "timeline"]);
    assert_eq!(json(&a, &["view", "digest", "timeline"]), digest_deleted);
}

#[test]
fn cli_delete_refuses_what_it_cannot_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    ok(&a, &["append", r#"{"type":"note"}"#]);
    let b_feed = ok(&b, &["id"]).trim().to_string();
    let err = fails(&a, &["delete", &b_feed, "1"], None);
    assert!(err.contains("only an entry's author"), "{err}");
    let err = fails(&a, &["delete"], None);
    assert!(err.contains("name what to delete"), "{err}");
    let err = fails(&a, &["delete", "7"], None);
    assert!(err.contains("seq 7"), "{err}");
    let err = fails(&a, &["delete", "--before", "1"], None);
    assert!(err.contains("2 or more"), "{err}");
    let err = fails(&a, &["delete", "--id", &"ab".repeat(32)], None);
    assert!(err.contains("not an entry of this feed"), "{err}");
    let err = fails(&a, &["delete", "1", "x"], None);
    assert!(err.contains("not a seq"), "{err}");
    let err = fails(&a, &["forget", "self"], None);
    assert!(err.contains("own feed"), "{err}");
    let err = fails(&a, &["unfollow", "self"], None);
    assert!(err.contains("own feed"), "{err}");
    // Nothing was appended by any of them.
    assert_eq!(json(&a, &["status"])["own_seq"], 1);
}

#[test]
fn cli_peers_delete_forget_and_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    ok(&a, &["init"]);
    let invite = ok(&a, &["invite"]).trim().to_string();
    ok(&b, &["init", "--join", &invite]);
    ok(&c, &["init", "--join", &invite]);
    ok(&a, &["append", r#"{"type":"note","text":"secret"}"#]);
    ok(&a, &["append", r#"{"type":"note","text":"public"}"#]);
    ok(&c, &["append", r#"{"type":"note","from":"c"}"#]);
    let a_feed = ok(&a, &["id"]).trim().to_string();
    let c_feed = ok(&c, &["id"]).trim().to_string();

    // B is a relay: it folds no views, stores and serves every feed.
    let node_a = serve_with(&a, &["--api", "127.0.0.1:0"]);
    let node_b = serve_with(
        &b,
        &["--api", "127.0.0.1:0", "--no-views", "--peer", &node_a.addr],
    );
    ok(&c, &["sync", &node_b.addr]);
    let err = fails(&b, &["kv", "list"], None);
    assert!(err.contains("no views"), "{err}");
    eventually("B holds A's entries", || {
        (json(&b, &["feeds"]).as_array()?.len() == 2).then_some(())
    });

    // A deletes through its node's API; B erases the payload.
    let d = json(&a, &["delete", "1"]);
    assert_eq!(d["seq"], 3);
    eventually("B erased A's first entry", || {
        let e = json(&b, &["get", &a_feed, "1"]);
        (e["payload_format"] == "erased").then_some(())
    });
    assert_eq!(
        json(&b, &["get", &a_feed, "2"])["payload"]["text"],
        "public"
    );

    // B stops following C: C's entries go, C is no longer requested.
    let p = json(&b, &["unfollow", &c_feed]);
    assert_eq!(p["mode"], "all");
    assert_eq!(p["feeds"][0], c_feed);
    eventually("B forgot C", || {
        let feeds = json(&b, &["feeds"]);
        (!feeds.as_array()?.iter().any(|f| f["feed"] == c_feed)).then_some(())
    });
    assert_eq!(json(&b, &["follow"])["feeds"][0], c_feed);
    // Following it again brings it back from C.
    let p = json(&b, &["follow", &c_feed]);
    assert_eq!(p["feeds"].as_array().unwrap().len(), 0);
    ok(&c, &["sync", &node_b.addr]);
    eventually("B holds C again", || {
        let feeds = json(&b, &["feeds"]);
        feeds
            .as_array()?
            .iter()
            .any(|f| f["feed"] == c_feed)
            .then_some(())
    });

    // Forgetting blocks too: B drops A and keeps it out.
    let f = json(&b, &["feeds", "--drop", &a_feed]);
    assert_eq!(f["forgotten"], true);
    ok(&a, &["append", r#"{"type":"note","text":"later"}"#]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let feeds = json(&b, &["feeds"]);
    assert!(
        !feeds
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["feed"] == a_feed),
        "{feeds}"
    );
    assert!(node_b.stop(), "a clean exit");
    assert!(node_a.stop(), "a clean exit");
    assert_eq!(json(&b, &["verify"])["ok"], true);
    let blocked: Value =
        serde_json::from_slice(&std::fs::read(b.join("blocked.json")).unwrap()).unwrap();
    assert!(blocked.to_string().contains(&a_feed), "{blocked}");
}

#[test]
fn cli_serve_compacts_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    small_segments(&a);
    append_notes(&a, 60);
    let node = serve_with(&a, &["--api", "127.0.0.1:0", "--compact-at", "4096"]);
    ok(&a, &["delete", "--before", "50"]);
    eventually("the node compacted", || {
        (json(&a, &["status"])["reclaimable_bytes"] == 0
            && node.stderr_text().contains("compacted"))
        .then_some(())
    });
    assert!(node.stop(), "a clean exit");
    assert_eq!(json(&a, &["verify"])["ok"], true);
}
