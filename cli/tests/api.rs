//! The local node API end to end: a real `kappa serve` on ephemeral
//! loopback ports, a real HTTP client, every endpoint, auth, bad requests,
//! the live event stream; and the CLI going through a running node.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, kappa, ok, serve, serve_with};
use serde_json::{Value, json};

/// A client of one node's API, as an app would write it.
struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn of(dir: &Path) -> Self {
        let (addr, token) = common::api_endpoint(dir);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self {
            base: format!("http://{addr}"),
            token,
            agent,
        }
    }

    fn answer(res: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let status = res.status().as_u16();
        let text = res.into_body().read_to_string().unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        (status, v)
    }

    fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        Self::answer(req.call().unwrap())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, Some(&self.token.clone()))
    }

    fn ok(&self, path: &str) -> Value {
        let (status, v) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let res = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        Self::answer(res)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "POST {path}: {v}");
        v
    }

    fn delete(&self, path: &str) -> (u16, Value) {
        let res = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        Self::answer(res)
    }

    /// Open the event stream; records arrive on the channel as
    /// `(event id, record)`.
    fn events(&self, query: &str, last_id: Option<u64>) -> mpsc::Receiver<(u64, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .get(format!("{}/v1/events{query}", self.base))
            .header("authorization", &format!("Bearer {}", self.token));
        if let Some(id) = last_id {
            req = req.header("last-event-id", &id.to_string());
        }
        let res = req.call().unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let reader = BufReader::new(res.into_body().into_reader());
            let mut id = None;
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).unwrap();
                    if tx.send((id.unwrap(), v)).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

fn next_event(rx: &mpsc::Receiver<(u64, Value)>) -> (u64, Value) {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("an event within 30 s")
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn api_every_endpoint_auth_and_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let feed = ok(&dir, &["init", "--max-payload", "1000"])
        .trim()
        .to_string();
    let node = serve(&dir);
    let api = Api::of(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("api.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Auth: no token, a wrong one, a wrong scheme: 401 and nothing else.
    for token in [None, Some("wrong"), Some("")] {
        let (status, v) = api.get_as("/v1/status", token);
        assert_eq!(status, 401);
        assert_eq!(error_code(&v), "unauthorized");
        assert!(!v.to_string().contains(&feed));
    }
    let res = api
        .agent
        .get(format!("{}/v1/feeds", api.base))
        .header("authorization", &format!("Basic {}", api.token))
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // Even unknown endpoints need the token.
    assert_eq!(api.get_as("/nope", None).0, 401);

    // Status and node.
    let status = api.ok("/v1/status");
    assert_eq!(status["feed"], feed.as_str());
    assert_eq!(status["entries"], 0);
    let node_info = api.ok("/v1/node");
    assert_eq!(node_info["feed"], feed.as_str());
    assert_eq!(node_info["listen"][0], node.addr.as_str());

    // Append one and many.
    let one = api.post_ok(
        "/v1/append",
        &json!({"payload": {"type": "chat", "text": "hi"}}),
    );
    assert_eq!(one["feed"], feed.as_str());
    assert_eq!(one["appended"][0]["seq"], 1);
    let many = api.post_ok(
        "/v1/append",
        &json!({"payloads": [{"type": "chat", "text": "two"}, {"type": "other"}, "a string"]}),
    );
    let seqs: Vec<u64> = many["appended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);

    // The log from an offset, with a limit, by feed.
    let page = api.ok("/v1/log?since=0");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(page["next"], page["end"]);
    assert_eq!(records[3]["payload"], "a string");
    let second = records[1]["offset"].as_u64().unwrap();
    let page = api.ok(&format!("/v1/log?since={second}&limit=1"));
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["records"][0]["seq"], 2);
    // A byte in the middle of a record starts at the next one.
    let page = api.ok(&format!("/v1/log?since={}", second - 1));
    assert_eq!(page["records"][0]["seq"], 2);
    let page = api.ok(&format!("/v1/log?feed={}", &feed[..8]));
    assert_eq!(page["records"].as_array().unwrap().len(), 4);

    // Feeds, a feed range, one entry.
    let feeds = api.ok("/v1/feeds");
    assert_eq!(feeds[0]["feed"], feed.as_str());
    assert_eq!(feeds[0]["seq"], 4);
    let range = api.ok("/v1/feeds/self?from=2&limit=2");
    let got: Vec<u64> = range["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [2, 3]);
    assert_eq!(range["next"], 4);
    let e = api.ok(&format!("/v1/feeds/{feed}/1"));
    assert_eq!(e["payload"]["text"], "hi");
    assert_eq!(e["prev"], Value::Null);

    // kv: put, get, heads, list, del.
    let put = api.post_ok("/v1/kv/put", &json!({"key": "color", "value": "blue"}));
    let blue_id = put["id"].as_str().unwrap().to_string();
    api.post_ok(
        "/v1/kv/put",
        &json!({"key": "size", "value": {"w": 3}, "links": []}),
    );
    assert_eq!(api.ok("/v1/kv/get?key=color"), json!("blue"));
    let heads = api.ok("/v1/kv/heads?key=color");
    assert_eq!(heads[0]["id"], blue_id.as_str());
    let list = api.ok("/v1/kv/list?prefix=s");
    assert_eq!(
        list,
        json!([{"key": "size", "value": {"w": 3}, "heads": 1}])
    );
    api.post_ok("/v1/kv/del", &json!({"key": "color", "links": [blue_id]}));
    let (status, v) = api.get("/v1/kv/get?key=color");
    assert_eq!((status, error_code(&v)), (404, "no_such_key"));
    // A key with characters that need escaping.
    api.post_ok("/v1/kv/put", &json!({"key": "a/b c&d=é", "value": 1}));
    assert_eq!(api.ok("/v1/kv/get?key=a%2Fb%20c%26d%3D%C3%A9"), json!(1));

    // Timeline.
    let chats = api.ok("/v1/timeline?type=chat&order=asc");
    let texts: Vec<&str> = chats
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hi", "two"]);
    let newest = api.ok("/v1/timeline?limit=1");
    assert_eq!(newest.as_array().unwrap().len(), 1);

    // Views: add a field index, list with lag, query, digest, rebuild, remove.
    let added = api.post_ok("/v1/views", &json!({"name": "by-text", "field": "/text"}));
    assert_eq!(added["entries"], 2);
    let views = api.ok("/v1/views");
    let names: Vec<&str> = views
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["by-text", "identity", "kv", "timeline"]);
    assert!(views[0]["lag"].is_u64());
    let hits = api.ok("/v1/views/by-text/query?eq=two");
    assert_eq!(hits[0]["seq"], 2);
    let hits = api.ok("/v1/views/by-text/query?from=a&to=i");
    assert_eq!(hits.as_array().unwrap().len(), 1);
    let digest = api.ok("/v1/views/kv/digest");
    assert_eq!(digest["digest"].as_str().unwrap().len(), 64);
    let rebuilt = api.post_ok("/v1/views/kv/rebuild", &json!({}));
    assert_eq!(rebuilt["name"], "kv");
    assert_eq!(api.ok("/v1/views/kv/digest"), digest);
    let (status, _) = api.delete("/v1/views/by-text");
    assert_eq!(status, 200);

    // Peers (none: no mDNS, no --peer).
    assert_eq!(api.ok("/v1/peers"), json!([]));

    // Bad requests: a 4xx naming the problem, and the node keeps going.
    let bad: Vec<(u16, &str, (u16, Value))> = vec![
        (400, "bad_json", api.post_raw("/v1/append", b"{not json")),
        (
            400,
            "bad_json",
            api.post("/v1/append", &json!({"payload": 1, "extra": 2})),
        ),
        (400, "bad_request", api.post("/v1/append", &json!({}))),
        (
            413,
            "payload_too_large",
            api.post("/v1/append", &json!({"payload": "x".repeat(2000)})),
        ),
        (
            404,
            "unknown_feed",
            api.get(&format!("/v1/feeds/{}/1", "ab".repeat(32))),
        ),
        (404, "unknown_feed", api.get("/v1/feeds/abcd0000")),
        (400, "bad_feed", api.get("/v1/log?feed=zz")),
        (400, "bad_seq", api.get("/v1/feeds/self/one")),
        (404, "no_such_entry", api.get("/v1/feeds/self/99")),
        (404, "unknown_view", api.get("/v1/views/nope/digest")),
        (404, "unknown_view", api.get("/v1/views/nope/query?eq=1")),
        (400, "bad_view_name", api.get("/v1/views/NO%20PE/digest")),
        (
            400,
            "bad_pointer",
            api.post("/v1/views", &json!({"name": "x", "field": "nope"})),
        ),
        (400, "bad_query", api.get("/v1/log?since=minus")),
        (400, "bad_query", api.get("/v1/log?sincee=1")),
        (400, "bad_query", api.get("/v1/kv/get")),
        (400, "bad_query", api.get("/v1/timeline?order=sideways")),
        (
            400,
            "bad_link",
            api.post(
                "/v1/kv/put",
                &json!({"key": "k", "value": 1, "links": ["x"]}),
            ),
        ),
        (
            400,
            "bad_request",
            api.post("/v1/kv/put", &json!({"key": "k"})),
        ),
        (404, "no_such_endpoint", api.get("/v2/status")),
        (
            405,
            "method_not_allowed",
            api.post("/v1/status", &json!({})),
        ),
    ];
    for (want_status, want_code, (status, v)) in bad {
        assert_eq!((status, error_code(&v)), (want_status, want_code), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // Nothing of the bad requests was stored.
    assert_eq!(api.ok("/v1/feeds")[0]["seq"], 8);
    assert_eq!(api.ok("/v1/status")["entries"], 8);

    // A clean stop removes the address and token files.
    assert!(node.stop());
    assert!(!dir.join("api.json").exists());
    assert!(!dir.join("api.token").exists());
    assert!(ok(&dir, &["verify"]).starts_with("ok"));
}

#[test]
fn api_event_stream_is_live_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    for i in 0..3 {
        ok(&dir, &["append", &format!("{{\"n\":{i}}}")]);
    }
    let _node = serve(&dir);
    let api = Api::of(&dir);

    // From offset 0: the three stored records, in order, ids = offsets.
    let rx = api.events("?since=0", None);
    let mut ids = Vec::new();
    for n in 0..3 {
        let (id, rec) = next_event(&rx);
        assert_eq!(rec["payload"]["n"], n);
        assert_eq!(rec["offset"], id);
        ids.push(id);
    }
    // Live: an append lands in the open stream.
    let appended = api.post_ok("/v1/append", &json!({"payload": {"n": 3}}));
    let (id, rec) = next_event(&rx);
    assert_eq!(rec["payload"]["n"], 3);
    assert_eq!(id, appended["appended"][0]["offset"]);
    drop(rx);

    // Resume after the second record with Last-Event-ID: the third, the
    // fourth, and nothing twice.
    let rx = api.events("", Some(ids[1]));
    assert_eq!(next_event(&rx).1["payload"]["n"], 2);
    assert_eq!(next_event(&rx).1["payload"]["n"], 3);
    // With no offset the stream starts at the end: only new records.
    let tail = api.events("", None);
    api.post_ok("/v1/append", &json!({"payload": {"n": 4}}));
    assert_eq!(next_event(&rx).1["payload"]["n"], 4);
    assert_eq!(next_event(&tail).1["payload"]["n"], 4);
    // A filter by feed that matches nothing here yields nothing, and a bad
    // Last-Event-ID is refused.
    let (status, v) = {
        let res = api
            .agent
            .get(format!("{}/v1/events", api.base))
            .header("authorization", &format!("Bearer {}", api.token))
            .header("last-event-id", "yesterday")
            .call()
            .unwrap();
        Api::answer(res)
    };
    assert_eq!((status, error_code(&v)), (400, "bad_last_event_id"));
}

#[test]
fn api_two_nodes_an_append_on_one_reaches_the_others_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let a_feed = ok(&a, &["init"]).trim().to_string();
    let invite = ok(&a, &["invite"]).trim().to_string();
    ok(&b, &["init", "--join", &invite]);
    let node_a = serve(&a);
    let _node_b = serve_with(&b, &["--api", "127.0.0.1:0", "--peer", &node_a.addr]);
    let api_a = Api::of(&a);
    let api_b = Api::of(&b);
    // The app on B listens to A's feed only.
    let rx = api_b.events(&format!("?since=0&feed={a_feed}"), None);
    api_a.post_ok(
        "/v1/append",
        &json!({"payload": {"type": "chat", "text": "from a"}}),
    );
    let (_, rec) = next_event(&rx);
    assert_eq!(rec["feed"], a_feed.as_str());
    assert_eq!(rec["payload"]["text"], "from a");
    // And B's views answer for it.
    api_a.post_ok("/v1/kv/put", &json!({"key": "k", "value": "v"}));
    eventually("the kv put on B", || {
        let (status, v) = api_b.get("/v1/kv/get?key=k");
        (status == 200).then_some(v)
    });
    let peers = api_b.ok("/v1/peers");
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["feed"] == a_feed.as_str())
    );
}

/// Every read command, in text and JSON.
const READS: &[&[&str]] = &[
    &["id"],
    &["log"],
    &["log", "--since", "5", "--limit", "2"],
    &["log", "--feed", "self"],
    &["feeds"],
    &["get", "self", "2"],
    &["status"],
    &["peers"],
    &["kv", "get", "color"],
    &["kv", "get", "color", "--heads"],
    &["kv", "list"],
    &["kv", "list", "--prefix", "c", "--limit", "1"],
    &["timeline"],
    &["timeline", "--type", "chat", "--oldest-first"],
    &["view", "list"],
    &["view", "digest", "kv"],
    &["view", "digest", "timeline"],
    &["view", "query", "by-user", "--eq", "ana"],
    &[
        "view", "query", "by-user", "--from", "a", "--to", "z", "--limit", "5",
    ],
    // Failures fail the same way.
    &["kv", "get", "absent"],
    &["get", "self", "99"],
    &["view", "digest", "nope"],
];

/// `kappa status` without what only a running node adds (the node and
/// the views' lag), which is meant to differ.
fn without_node(stdout: &str, json: bool) -> String {
    if json {
        let mut v: Value = serde_json::from_str(stdout).unwrap();
        v["node"] = Value::Null;
        v["views"] = Value::Null;
        return v.to_string();
    }
    stdout
        .lines()
        .take_while(|l| !l.starts_with("node "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn outputs(dir: &Path) -> Vec<(Vec<String>, i32, String, String)> {
    let mut all = Vec::new();
    for args in READS {
        for json in [false, true] {
            let mut a: Vec<&str> = Vec::new();
            if json {
                a.push("--json");
            }
            a.extend_from_slice(args);
            let out = kappa(dir, &a);
            let mut stdout = String::from_utf8(out.stdout).unwrap();
            if *args == ["status"] {
                stdout = without_node(&stdout, json);
            }
            all.push((
                a.iter().map(|s| s.to_string()).collect(),
                out.status.code().unwrap_or(-1),
                stdout,
                String::from_utf8(out.stderr).unwrap(),
            ));
        }
    }
    all
}

#[test]
fn cli_output_is_the_same_with_and_without_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["kv", "put", "color", "blue"]);
    ok(&dir, &["kv", "put", "count", "3"]);
    ok(
        &dir,
        &["append", r#"{"type":"chat","user":"ana","text":"hi"}"#],
    );
    ok(
        &dir,
        &["append", r#"{"type":"chat","user":"bo","text":"yo"}"#],
    );
    ok(&dir, &["append", "\"plain\""]);
    ok(&dir, &["view", "add", "by-user", "--field", "/user"]);
    let without = outputs(&dir);
    assert!(without.iter().any(|(_, code, _, _)| *code == 1));

    let node = serve(&dir);
    // The node's views fold in the background: wait until they hold what
    // the log holds, as they did for the direct run.
    eventually("the node's views to catch up", || {
        let v: Value = serde_json::from_str(&ok(&dir, &["--json", "view", "list"])).ok()?;
        v.as_array()?.iter().all(|s| s["lag"] == 0).then_some(())
    });
    let with = outputs(&dir);
    for (a, b) in without.iter().zip(&with) {
        assert_eq!(a, b, "`kappa {}` differs through the node", a.0.join(" "));
    }

    // Writes go through the node and print the same shape.
    let out = ok(
        &dir,
        &["append", r#"{"type":"chat","user":"cy","text":"via node"}"#],
    );
    assert!(out.starts_with("appended seq 6 at offset "), "{out}");
    let out = kappa(&dir, &["kv", "put", "color", "red"]);
    assert!(out.status.success());
    assert_eq!(ok(&dir, &["kv", "get", "color"]).trim(), "\"red\"");
    let lines = "{\"n\":1}\n{\"n\":2}\n";
    let out = common::kappa_stdin(&dir, &["append"], Some(lines));
    assert!(String::from_utf8_lossy(&out.stdout).contains("appended 2 entries (seq 8..=9)"));
    // Commands that need the database to themselves say why.
    let err = common::fails(&dir, &["reindex"], None);
    assert!(err.contains("in use"), "{err}");
    assert!(node.stop());
    // Stopped: the same database answers directly with what the node wrote.
    assert_eq!(ok(&dir, &["kv", "get", "color"]).trim(), "\"red\"");
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&dir, &["--json", "status"])).unwrap()["own_seq"],
        9
    );
}

#[test]
fn cli_without_api_says_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let node = serve_with(&dir, &["--no-api"]);
    let err = common::fails(&dir, &["feeds"], None);
    assert!(err.contains("--no-api"), "{err}");
    assert!(node.stop());
}

/// Run `kappa ARGS --follow` until it has printed `lines` lines.
fn follow(
    dir: &Path,
    args: &[&str],
    lines: usize,
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("KAPPA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        for _ in 0..lines {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let _ = tx.send(line);
        }
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
    });
    (child, rx)
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a line within 30 s")
}

#[test]
fn log_and_timeline_follow_with_and_without_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["append", r#"{"type":"chat","text":"first"}"#]);

    // Without a node: the follower holds the database and serves the API,
    // so another command can still append.
    let (mut f, rx) = follow(&dir, &["log", "--follow", "--limit", "3"], 4);
    assert!(next_line(&rx).contains("OFFSET"));
    assert!(next_line(&rx).contains("first"));
    eventually("the follower's API", || {
        dir.join("api.json").exists().then_some(())
    });
    ok(&dir, &["append", r#"{"type":"chat","text":"second"}"#]);
    assert!(next_line(&rx).contains("second"));
    ok(&dir, &["append", r#"{"type":"other"}"#]);
    assert!(next_line(&rx).contains("other"));
    // --limit 3 reached: it stops by itself and cleans up.
    assert!(f.wait().unwrap().success());
    assert!(!dir.join("api.json").exists());

    // Through a node: the timeline follower prints history, then new chats
    // only.
    let _node = serve(&dir);
    let (mut f, rx) = follow(
        &dir,
        &["--json", "timeline", "--follow", "--type", "chat"],
        3,
    );
    let first: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    assert_eq!(first["payload"]["text"], "first");
    let second: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    assert_eq!(second["payload"]["text"], "second");
    ok(&dir, &["append", r#"{"type":"other"}"#]);
    ok(&dir, &["append", r#"{"type":"chat","text":"third"}"#]);
    let third: Value = serde_json::from_str(&next_line(&rx)).unwrap();
    assert_eq!(third["payload"]["text"], "third");
    assert_eq!(third["type"], "chat");
    let _ = f.kill();
    let _ = f.wait();
}
