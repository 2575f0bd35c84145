//! `kappa` end to end on temporary directories: every command, its JSON
//! contract, and bad input.

mod common;

use std::process::{Command, Stdio};

use common::{fails, kappa, kappa_stdin, ok, serve};
use serde_json::Value;

#[test]
fn cli_init_append_log_feeds_get_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let id = ok(&dir, &["init"]).trim().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(ok(&dir, &["id"]).trim(), id);

    // Argument and stdin appends.
    let out = ok(
        &dir,
        &["--json", "append", r#"{"type":"note","text":"hi"}"#],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seq"], 1);
    let lines = "{\"type\":\"note\",\"n\":1}\n\n\"just a string\"\n[1,2,3]\n";
    let out = kappa_stdin(&dir, &["append"], Some(lines));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("appended 3 entries"));

    // Machine output contracts.
    let log = ok(&dir, &["--json", "log"]);
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    for (i, r) in records.iter().enumerate() {
        for key in ["offset", "feed", "seq", "timestamp", "payload"] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["feed"], id.as_str());
    }
    assert_eq!(records[0]["payload"]["text"], "hi");
    assert_eq!(records[2]["payload"], "just a string");
    let feeds: Value = serde_json::from_str(&ok(&dir, &["--json", "feeds"])).unwrap();
    let feeds = feeds.as_array().unwrap();
    assert_eq!(feeds.len(), 1);
    assert_eq!(feeds[0]["feed"], id.as_str());
    assert_eq!(feeds[0]["seq"], 4);
    assert_eq!(feeds[0]["forked"], false);
    assert_eq!(feeds[0]["head"].as_str().unwrap().len(), 64);

    // --since, --limit and --feed.
    let second = records[1]["offset"].as_u64().unwrap();
    let since = ok(
        &dir,
        &[
            "--json",
            "log",
            "--since",
            &second.to_string(),
            "--limit",
            "2",
        ],
    );
    assert_eq!(since.lines().count(), 2);
    let first: Value = serde_json::from_str(since.lines().next().unwrap()).unwrap();
    assert_eq!(first["offset"], second);
    assert_eq!(first["seq"], 2);
    // A header row, then the feed's 4 entries.
    let human = ok(&dir, &["log", "--feed", &id[..6]]);
    assert!(human.starts_with("    OFFSET  FEED"), "{human}");
    assert_eq!(human.lines().count(), 5);

    // get, by full id, prefix and "self".
    let g: Value = serde_json::from_str(&ok(&dir, &["--json", "get", &id, "4"])).unwrap();
    assert_eq!(g["payload"], serde_json::json!([1, 2, 3]));
    assert!(ok(&dir, &["get", "self", "1"]).contains("\"hi\""));

    assert!(ok(&dir, &["verify"]).starts_with("ok"));
    assert!(ok(&dir, &["status"]).contains("4 in 1 feeds"));
}

#[test]
fn cli_reindex_after_deleting_sled_gives_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let input: String = (0..2500)
        .map(|i| format!("{{\"type\":\"n\",\"i\":{i}}}\n"))
        .collect();
    assert!(
        kappa_stdin(&dir, &["append"], Some(&input))
            .status
            .success()
    );
    let log_before = ok(&dir, &["--json", "log"]);
    let feeds_before = ok(&dir, &["--json", "feeds"]);
    std::fs::remove_dir_all(dir.join("sled")).unwrap();
    let out = ok(&dir, &["reindex"]);
    assert!(out.contains("2500 entries"), "{out}");
    assert_eq!(ok(&dir, &["--json", "log"]), log_before);
    assert_eq!(ok(&dir, &["--json", "feeds"]), feeds_before);
}

#[test]
fn cli_bad_input_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    // No database yet.
    let err = fails(&dir, &["log"], None);
    assert!(err.contains("kappa init"), "{err}");
    ok(&dir, &["init"]);
    let err = fails(&dir, &["init"], None);
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&dir, &["append", "hello"], None);
    assert!(
        err.contains("not valid JSON") && err.contains("quotes"),
        "{err}"
    );
    // A bad line stops the input; nothing of its batch is written.
    let err = fails(&dir, &["append"], Some("{\"a\":1}\n{\"b\":2}\n{oops\n"));
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(ok(&dir, &["--json", "log"]).lines().count(), 0);
    let err = fails(&dir, &["get", "zzzz", "1"], None);
    assert!(err.contains("not a feed id"), "{err}");
    let err = fails(&dir, &["get", "self", "1"], None);
    assert!(err.contains("no entries"), "{err}");
    ok(&dir, &["append", "1"]);
    let err = fails(&dir, &["get", "self", "7"], None);
    assert!(err.contains("seq 1..=1"), "{err}");
    // Usage errors exit 2.
    let out = kappa(&dir, &["log", "--limit", "many"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cli_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let key = dir.join("secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&dir, &["id"], None);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&dir, &["id"]);
}

#[test]
fn cli_verify_names_a_corrupt_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let input: String = (0..20).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    assert!(
        kappa_stdin(&dir, &["append"], Some(&input))
            .status
            .success()
    );
    // Flip a byte in the middle of the log (not the tail: that is cut on open).
    let seg = dir.join("log").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let status: Value = serde_json::from_str(&ok(&dir, &["--json", "status"])).unwrap();
    let mid = status["log_bytes"].as_u64().unwrap() as usize / 2;
    let len = bytes.len();
    let before_flip = bytes[mid];
    bytes[mid] ^= 0x55;
    std::fs::write(&seg, bytes).unwrap();
    let out = kappa(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("corrupt") && text.contains("offset"),
        "{text}"
    );
    assert!(text.contains("nothing was cut"), "{text}");
    // Nothing was changed on disk.
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(after[mid], before_flip ^ 0x55);
    assert_eq!(after.len(), len);
}

#[test]
fn cli_closed_pipe_is_a_clean_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let input: String = (0..3000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    assert!(
        kappa_stdin(&dir, &["append"], Some(&input))
            .status
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(&dir)
        .arg("log")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_kv_timeline_and_views() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    // Read after write, bare words as strings, JSON values.
    ok(&dir, &["kv", "put", "color", "blue"]);
    assert_eq!(ok(&dir, &["kv", "get", "color"]).trim(), "\"blue\"");
    ok(&dir, &["kv", "put", "color", r#"{"r":255}"#]);
    assert_eq!(ok(&dir, &["kv", "get", "color"]).trim(), r#"{"r":255}"#);
    ok(&dir, &["kv", "put", "n", "42"]);
    let list: Value = serde_json::from_str(&ok(&dir, &["--json", "kv", "list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let heads: Value =
        serde_json::from_str(&ok(&dir, &["--json", "kv", "get", "n", "--heads"])).unwrap();
    assert_eq!(heads[0]["value"], 42);
    let n_id = heads[0]["id"].as_str().unwrap().to_string();
    ok(&dir, &["kv", "put", "n", "43", "--link", &n_id]);
    assert_eq!(ok(&dir, &["kv", "get", "n"]).trim(), "43");
    ok(&dir, &["kv", "del", "color"]);
    let out = kappa(&dir, &["kv", "get", "color"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not set"));
    assert_eq!(
        ok(&dir, &["--json", "kv", "list", "--prefix", "c"]).trim(),
        "[]"
    );

    // Timeline with filters.
    ok(
        &dir,
        &["append", r#"{"type":"chat","user":"ana","text":"hi"}"#],
    );
    ok(
        &dir,
        &["append", r#"{"type":"chat","user":"bo","text":"yo"}"#],
    );
    let chats = ok(&dir, &["--json", "timeline", "--type", "chat"]);
    let chats: Vec<Value> = chats
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(chats.len(), 2);
    assert_eq!(chats[0]["payload"]["user"], "bo", "newest first");
    assert_eq!(ok(&dir, &["timeline", "--limit", "3"]).lines().count(), 3);
    assert_eq!(
        ok(&dir, &["timeline", "--author", "self"]).lines().count(),
        7
    );

    // Field index: declare, query, survives restarts (every command is a restart).
    ok(&dir, &["view", "add", "by-user", "--field", "/user"]);
    let hits = ok(&dir, &["--json", "view", "query", "by-user", "--eq", "ana"]);
    assert_eq!(hits.lines().count(), 1);
    let hits = ok(
        &dir,
        &[
            "--json", "view", "query", "by-user", "--from", "a", "--to", "z",
        ],
    );
    assert_eq!(hits.lines().count(), 2);
    let views: Value = serde_json::from_str(&ok(&dir, &["--json", "view", "list"])).unwrap();
    let names: Vec<&str> = views
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["by-user", "identity", "kv", "timeline"]);

    // Digest is stable across a rebuild.
    let before = ok(&dir, &["view", "digest", "kv"]);
    assert_eq!(before.trim().len(), 64);
    ok(&dir, &["view", "rebuild", "kv"]);
    assert_eq!(ok(&dir, &["view", "digest", "kv"]), before);

    // Bad input.
    let err = fails(&dir, &["view", "add", "bad", "--field", "user"], None);
    assert!(err.contains("pointer"), "{err}");
    let err = fails(&dir, &["view", "query", "nope", "--eq", "1"], None);
    assert!(err.contains("unknown view"), "{err}");
    let err = fails(&dir, &["view", "digest", "nope"], None);
    assert!(err.contains("unknown view"), "{err}");
    let err = fails(&dir, &["kv", "put", "k", "v", "--link", "xyz"], None);
    assert!(err.contains("not an entry id"), "{err}");
}

#[test]
fn cli_two_peers_sync_and_wrong_network_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    ok(&a, &["init"]);
    ok(&a, &["kv", "put", "greeting", "hello"]);
    let invite = ok(&a, &["invite"]).trim().to_string();
    assert!(invite.starts_with("kappa-invite-v1:"), "{invite}");
    ok(&b, &["init", "--join", &invite]);
    ok(&b, &["append", r#"{"type":"note","from":"b"}"#]);
    ok(&c, &["init"]);

    let node = serve(&a);
    let addr = node.addr.clone();
    assert!(addr.contains("/p2p/"), "{addr}");
    let out = ok(&b, &["--json", "sync", &addr]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pulled"], 1);
    assert_eq!(ok(&b, &["kv", "get", "greeting"]).trim(), "\"hello\"");
    // The address without /p2p works too, and a second sync moves nothing.
    let bare = addr.split("/p2p/").next().unwrap();
    let v: Value = serde_json::from_str(&ok(&b, &["--json", "sync", bare])).unwrap();
    assert_eq!(v["pulled"], 0);
    let peers: Value = serde_json::from_str(&ok(&b, &["--json", "peers"])).unwrap();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["last_sync"].is_u64())
    );
    // Another network: a clear error, nothing learned.
    let err = fails(&c, &["sync", &addr], None);
    assert!(err.contains("not in this network"), "{err}");
    assert_eq!(ok(&c, &["--json", "feeds"]).trim(), "[]");
    // Nobody listening: the OS's reason, not an empty one.
    let err = fails(&c, &["sync", "/ip4/127.0.0.1/tcp/1"], None);
    assert!(err.contains("refused"), "{err}");

    // SIGTERM stops the node cleanly; then A holds B's entry.
    assert!(node.stop(), "a clean exit on SIGTERM");
    let feeds: Value = serde_json::from_str(&ok(&a, &["--json", "feeds"])).unwrap();
    assert_eq!(feeds.as_array().unwrap().len(), 2);
    assert!(ok(&a, &["verify"]).starts_with("ok"));
}

#[test]
fn cli_a_second_serve_on_a_port_in_use_fails_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let node = serve(&a);
    // /ip4/127.0.0.1/tcp/PORT/p2p/PEER: the same address without the peer.
    let taken: String = node.addr.split("/p2p/").next().unwrap().to_string();
    let out = kappa(&b, &["serve", "--listen", &taken, "--no-mdns", "--no-api"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert!(node.stop());
}

/// `kappa append` reading lines from a stdin that stays open: it holds
/// the database until its stdin closes.
fn holder(dir: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .arg("append")
        .env_remove("KAPPA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"\"held\"\n")
        .unwrap();
    // Until it holds the lock, a reader sees the database free.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(dir.join("kappa.lock"))
        .map(|pid| pid.trim() != child.id().to_string())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn cli_waits_for_a_short_lived_command_and_names_a_long_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);

    // A command that finds the database held waits for it.
    let mut first = holder(&dir);
    let started = std::time::Instant::now();
    let waiter = {
        let dir = dir.clone();
        std::thread::spawn(move || kappa(&dir, &["append", r#""after""#]))
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
    let out = waiter.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(800));
    let log = ok(&dir, &["--json", "log"]);
    assert_eq!(log.lines().count(), 2, "{log}");

    // One that holds it for longer is named when the wait runs out, and no
    // node is claimed.
    let mut long = holder(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(&dir)
        .arg("status")
        .env("KAPPA_BUSY_TIMEOUT", "0.5")
        .env_remove("KAPPA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("PID {}", long.id())), "{err}");
    assert!(err.contains("append"), "{err}");
    assert!(err.contains("waiting"), "{err}");
    assert!(!err.contains("no API") && !err.contains("node"), "{err}");
    drop(long.stdin.take());
    assert!(long.wait().unwrap().success());
}

#[test]
fn cli_serve_creates_a_database_only_where_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let out = kappa(
        &dir,
        &[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--no-api",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no database") && err.contains("--create"),
        "{err}"
    );
    assert!(!dir.join("config.json").exists() && !dir.join("secret.key").exists());
    // A failed join leaves nothing that serve would take for a database.
    let bad = kappa(&dir, &["init", "--join", "kappa-invite-v1:garbage"]);
    assert!(!bad.status.success());
    assert!(
        !kappa(&dir, &["serve", "--no-mdns", "--no-api"])
            .status
            .success()
    );
    // Asked, it creates one, and says it is a network of its own.
    let node = common::serve_with(&dir, &["--create", "--no-api"]);
    assert!(node.stderr_text().contains("new network of its own"));
    assert!(dir.join("config.json").exists());
    assert!(node.stop());
}

/// Everything `kappa serve` printed on stderr, from start to a clean stop.
fn served(dir: &std::path::Path, extra: &[&str]) -> String {
    let mut node = common::serve_with(dir, extra);
    let status = node.stop_within(std::time::Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    node.stderr_text()
}

#[test]
fn cli_logging_levels_formats_and_no_colour_off_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let text = served(&dir, &["--no-api", "--log-format", "json", "-v"]);
    let logs: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["level"] == "INFO"
            && l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("kappadb"))),
        "{text}"
    );
    let text = served(&dir, &["--no-api", "-v"]);
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes off a terminal: {text:?}"
    );
    assert!(!served(&dir, &["--no-api", "-q"]).contains(" INFO "));
    // -v and -q together are a usage error.
    assert_eq!(kappa(&dir, &["-v", "-q", "status"]).status.code(), Some(2));
}
