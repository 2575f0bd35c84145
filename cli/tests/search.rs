//! Search views through the CLI and the API: declaring, searching with
//! filters, snippets and errors, deletions, rebuilds, the API's answers
//! (400 for a query that does not parse), live results, and kill -9 of a
//! node during appends (every entry found exactly once afterwards).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ApiClient, fails, ok, serve};
use serde_json::{Value, json};

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn search_json(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "search"];
    all.extend_from_slice(args);
    json_lines(&ok(dir, &all))
}

fn seqs(hits: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = hits.iter().map(|h| h["seq"].as_u64().unwrap()).collect();
    s.sort_unstable();
    s
}

#[test]
fn search_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(
        &dir,
        &[
            "append",
            r#"{"type":"note","title":"Groceries","body":"buy apples and pears"}"#,
        ],
    );
    ok(
        &dir,
        &[
            "append",
            r#"{"type":"note","title":"Trip","body":"pack the tent and the stove"}"#,
        ],
    );
    ok(
        &dir,
        &["append", r#"{"type":"chat","title":"apples?","body":"x"}"#],
    );
    ok(&dir, &["append", r#"{"type":"note","title":7}"#]);
    let added = ok(
        &dir,
        &[
            "view", "add", "notes", "--text", "/title", "--text", "/body", "--type", "note",
        ],
    );
    assert!(added.contains("2 entries indexed, 2 skipped"), "{added}");

    let hits = search_json(&dir, &["notes", "apple"]);
    assert_eq!(seqs(&hits), vec![1]);
    let h = &hits[0];
    assert_eq!(h["snippet"], "buy [apples] and pears");
    assert_eq!(h["field"], "/body");
    assert_eq!(h["type"], "note");
    assert!(h["score"].as_f64().unwrap() > 0.0);
    assert!(h["offset"].as_u64().is_some());
    assert_eq!(
        seqs(&search_json(&dir, &["notes", "\"the tent\""])),
        vec![2]
    );
    assert!(search_json(&dir, &["notes", "ste*"]).is_empty());
    assert_eq!(seqs(&search_json(&dir, &["notes", "sto*"])), vec![2]);
    assert_eq!(
        seqs(&search_json(&dir, &["notes", "sto* OR pear"])),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&search_json(
            &dir,
            &["notes", "apple OR tent", "--limit", "1"]
        ))
        .len(),
        1
    );
    assert_eq!(
        seqs(&search_json(&dir, &["notes", "apple", "--author", "self"])),
        vec![1]
    );
    assert!(search_json(&dir, &["notes", "apple", "--since", "4000000000000"]).is_empty());
    assert!(search_json(&dir, &["notes", "apple", "--type", "chat"]).is_empty());
    let human = ok(&dir, &["search", "notes", "tent"]);
    assert!(
        human.contains("/body: pack the [tent] and the stove"),
        "{human}"
    );

    let list = ok(&dir, &["--json", "view", "list"]);
    let notes = json_lines(&list)
        .into_iter()
        .flat_map(|v| match v {
            Value::Array(a) => a,
            v => vec![v],
        })
        .find(|v| v["name"] == "notes")
        .unwrap();
    assert_eq!(notes["entries"], 2);
    assert_eq!(notes["skipped"], 2);
    assert!(
        notes["description"]
            .as_str()
            .unwrap()
            .contains("search on /title, /body (type note)")
    );

    // Errors: one line, no panic.
    let err = fails(&dir, &["search", "notes", "title:(unclosed"], None);
    assert!(err.contains("bad query"), "{err}");
    let err = fails(&dir, &["search", "nope", "x"], None);
    assert!(err.contains("nope"), "{err}");
    fails(&dir, &["view", "add", "bad", "--text", "title"], None);
    // Both kinds at once: a usage error.
    let out = common::kappa(
        &dir,
        &["view", "add", "bad", "--field", "/a", "--text", "/b"],
    );
    assert!(!out.status.success());

    // Deletion, rebuild, removal.
    ok(&dir, &["delete", "1"]);
    assert!(search_json(&dir, &["notes", "apple"]).is_empty());
    let digest = ok(&dir, &["view", "digest", "notes"]);
    ok(&dir, &["view", "rebuild", "notes"]);
    assert_eq!(digest, ok(&dir, &["view", "digest", "notes"]));
    assert_eq!(seqs(&search_json(&dir, &["notes", "tent"])), vec![2]);
    ok(&dir, &["view", "remove", "notes"]);
    fails(&dir, &["search", "notes", "tent"], None);
    assert!(
        std::fs::read_dir(dir.join("search/notes"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    );
}

#[test]
fn search_through_the_api_live() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["view", "add", "notes", "--text", "/title"]);
    let node = serve(&dir);
    let api = ApiClient::of(&dir);
    let start = Instant::now();
    api.append(&json!({"title": "a quiet harbour at dawn"}))
        .unwrap();
    // Live: found within a second through the node's own indexer.
    loop {
        let (status, v) = api.get("/v1/views/notes/search?q=harbour");
        assert_eq!(status, 200, "{v}");
        if v.as_array().is_some_and(|a| a.len() == 1) {
            assert_eq!(v[0]["snippet"], "a quiet [harbour] at dawn");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1), "not live: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A query that does not parse: 400 and what is wrong.
    let (status, v) = api.get("/v1/views/notes/search?q=title%3A%22unclosed");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_query");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad query")
    );
    let (status, v) = api.get("/v1/views/notes/search?q=nosuchfield%3Ax");
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nosuchfield")
    );
    let (status, v) = api.get("/v1/views/notes/search?q=a&limit=0");
    assert_eq!(status, 400, "{v}");
    let (status, v) = api.get("/v1/views/notes/search?q=a&bogus=1");
    assert_eq!(status, 400, "{v}");
    let (status, _) = api.get("/v1/views/nope/search?q=a");
    assert_eq!(status, 404);
    // Hostile queries: each a JSON 400, and the node goes on answering.
    let long = format!("/v1/views/notes/search?q={}", "a%20".repeat(3_000));
    let deep = format!("/v1/views/notes/search?q={}a", "%28".repeat(2_000));
    // Bytes that are not UTF-8 are read as replacement characters.
    let (status, v) = api.get("/v1/views/notes/search?q=%FF%FE");
    assert!(status == 200 && v.as_array().is_some(), "{status} {v}");
    for path in [
        "/v1/views/notes/search?q=a&limit=99999999999999999999999",
        "/v1/views/notes/search?q=a&since=-1",
        "/v1/views/notes/search?q=title%3A%2Fa.%2A%2F",
        "/v1/views/notes/search",
        long.as_str(),
        deep.as_str(),
    ] {
        let (status, v) = api.get(path);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"]["code"].is_string(), "{path}: {v}");
    }
    let (status, _) = api.get("/v1/views/notes/search?q=harbour");
    assert_eq!(status, 200);
    // The CLI through the node answers the same.
    let hits = search_json(&dir, &["notes", "dawn"]);
    assert_eq!(seqs(&hits), vec![1]);
    // Declaring through the node.
    let added = ok(
        &dir,
        &[
            "view",
            "add",
            "all",
            "--text",
            "/title",
            "--language",
            "none",
        ],
    );
    assert!(added.contains("1 entries indexed"), "{added}");
    assert!(node.stop());
}

#[test]
fn kill_9_during_appends_finds_each_entry_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["view", "add", "notes", "--text", "/body"]);
    for round in 0..3 {
        let mut node = serve(&dir);
        let api = Arc::new(ApiClient::of(&dir));
        let acked = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let api = api.clone();
                let acked = acked.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while api
                        .append(
                            &json!({"body": format!("common word round{round} writer{w} n{i}")}),
                        )
                        .is_some()
                    {
                        acked.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        let want = 40 + 30 * round;
        common::eventually("appends acknowledged", || {
            (acked.load(Ordering::Relaxed) >= want).then_some(())
        });
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        drop(node);
        // Every entry of the log once, no more, no less.
        let feeds: Value = serde_json::from_str(&ok(&dir, &["--json", "feeds"])).unwrap();
        let head = feeds
            .as_array()
            .and_then(|a| a.first())
            .and_then(|f| f["seq"].as_u64())
            .unwrap_or_else(|| panic!("head in {feeds}"));
        let hits = search_json(&dir, &["notes", "common", "--limit", "10000"]);
        let found: Vec<u64> = seqs(&hits);
        let unique: BTreeSet<u64> = found.iter().copied().collect();
        assert_eq!(unique.len(), found.len(), "round {round}: an entry twice");
        assert_eq!(
            unique,
            (1..=head).collect::<BTreeSet<u64>>(),
            "round {round}: every entry once"
        );
    }
}
