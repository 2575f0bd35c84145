//! The local API under hostile input: malformed and mistyped JSON, huge
//! bodies, payloads just over the limit, deeply nested JSON, invalid
//! UTF-8, absurd numbers, view names that try to escape. Each gets a 4xx
//! answer with a JSON error body, nothing is half-stored, the node keeps
//! serving, and `kappa verify` passes afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{ok, serve};
use serde_json::Value;

struct Raw {
    addr: String,
    token: String,
}

impl Raw {
    fn of(dir: &Path) -> Self {
        let (addr, token) = common::api_endpoint(dir);
        Raw { addr, token }
    }

    /// Send one request (the body written in a thread, so a server that
    /// answers before reading it all is seen), return status and body.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        declared: Option<usize>,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.token,
            declared.unwrap_or(body.len())
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            for chunk in body.chunks(1 << 20) {
                if writer.write_all(chunk).is_err() {
                    break; // the server stopped reading: fine
                }
            }
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    /// A 4xx answer whose body is a JSON error.
    fn refused(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let (status, text) = self.send(method, path, body, None);
        assert!(
            (400..500).contains(&status),
            "{method} {path}: {status} {text}"
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: {status} not JSON: {text:?}"));
        assert!(v["error"]["code"].is_string(), "{method} {path}: {v}");
        (status, v)
    }

    fn ok_json(&self, method: &str, path: &str, body: &str) -> Value {
        let (status, text) = self.send(method, path, body.as_bytes().to_vec(), None);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

#[test]
fn hostile_api_input_is_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    ok(&dir, &["init"]);
    let node = serve(&dir);
    let api = Raw::of(&dir);
    let good = r#"{"payload":{"type":"note","n":1}}"#;
    api.ok_json("POST", "/v1/append", good);

    // Malformed, mistyped, unknown fields, invalid UTF-8.
    for body in [
        &b"{\"payload\":"[..],
        b"not json",
        b"",
        b"{\"payloads\":\"x\"}",
        b"{\"payload\":1,\"payloads\":[1]}",
        b"{\"payload\":{},\"extra\":1}",
        b"{\"payload\":\"\xff\xfe\"}",
        b"\xff\xfe\xfd",
    ] {
        api.refused("POST", "/v1/append", body.to_vec());
    }
    api.refused("POST", "/v1/kv/put", br#"{"key":5,"value":1}"#.to_vec());
    api.refused("POST", "/v1/delete", br#"{"seqs":[-1]}"#.to_vec());
    api.refused("POST", "/v1/follow", br#"{"feeds":"everything"}"#.to_vec());

    // 100,000 levels of nesting: refused, not a stack overflow.
    let deep = format!(
        r#"{{"payload":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    api.refused("POST", "/v1/append", deep.into_bytes());

    // A payload just over the 1 MiB limit, and one well under it.
    let limit = 1024 * 1024;
    let over = format!(r#"{{"payload":"{}"}}"#, "x".repeat(limit));
    let (_, v) = api.refused("POST", "/v1/append", over.into_bytes());
    assert!(v.to_string().contains("limit"), "{v}");
    let under = format!(r#"{{"payload":"{}"}}"#, "y".repeat(limit - 100));
    api.ok_json("POST", "/v1/append", &under);

    // 10 MB and 100 MB bodies.
    let ten = format!(r#"{{"payload":"{}"}}"#, "z".repeat(10 << 20));
    api.refused("POST", "/v1/append", ten.into_bytes());
    let hundred = vec![b' '; 100 << 20];
    let (status, _) = api.send("POST", "/v1/append", hundred, None);
    assert!((400..500).contains(&status), "100 MB body: {status}");
    // A body announced as huge but never sent.
    let (status, _) = api.send("POST", "/v1/append", b"{".to_vec(), Some(1 << 40));
    assert!(
        (400..500).contains(&status),
        "a 1 TB content-length: {status}"
    );

    // Absurd numbers in paths and queries.
    for path in [
        "/v1/log?since=-1",
        "/v1/log?limit=99999999999999999999999",
        "/v1/log?since=abc",
        "/v1/feeds/self/-1",
        "/v1/feeds/self/0",
        "/v1/feeds/self/18446744073709551615",
        "/v1/feeds/self/99999999999999999999999",
        "/v1/feeds/self?from=-3",
        "/v1/timeline?from=-5",
        "/v1/timeline?limit=1e9",
        "/v1/events?since=-1",
        "/v1/feeds/%ff%fe/1",
    ] {
        api.refused("GET", path, Vec::new());
    }

    // View names that try to escape, or are empty, or absurd.
    let long = "v".repeat(10_000);
    for name in [
        "a/b",
        "..",
        "../../etc",
        "",
        ".",
        "a\\b",
        "\u{0}x",
        "notizen-é",
        long.as_str(),
    ] {
        let body = serde_json::json!({"name": name, "field": "/x"}).to_string();
        api.refused("POST", "/v1/views", body.into_bytes());
    }
    for path in [
        "/v1/views/..%2F..%2Fetc/digest",
        "/v1/views/%2e%2e/digest",
        "/v1/views/nope/query?eq=1",
        "/v1/views/%00/digest",
    ] {
        api.refused("GET", path, Vec::new());
    }
    // A plain name still works.
    let body = serde_json::json!({"name": "notes-2", "field": "/x"}).to_string();
    api.ok_json("POST", "/v1/views", &body);

    // Nothing half-stored: the two good appends, nothing else.
    let status = api.ok_json("GET", "/v1/status", "");
    assert_eq!(status["own_seq"], 2, "{status}");
    assert!(node.stop(), "the node exits cleanly");
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&dir, &["--json", "verify"])).unwrap()["ok"],
        true
    );
    // No stray file from an escaping view name.
    assert!(!tmp.path().join("etc").exists());
}
