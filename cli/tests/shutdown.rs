//! `kappa serve` stops in order on SIGTERM while API clients hold
//! connections open: the API stops accepting, event streams end, requests
//! in flight get a bounded time to finish, and then the node itself is shut
//! down (never aborted), so it saves its address book.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{ok, serve};
use serde_json::Value;

/// The node's API address and token, from the files it wrote.
fn api_of(dir: &std::path::Path) -> (String, String) {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("api.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(dir.join("api.token")).unwrap();
    (
        file["addr"].as_str().unwrap().to_string(),
        token.trim().to_string(),
    )
}

/// Send a request head (and `body`) to the API and return the
/// connection, to read the answer from.
fn send(addr: &str, head: &str, body: &[u8]) -> BufReader<TcpStream> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(format!("{head}Host: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    conn.write_all(body).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    BufReader::new(conn)
}

/// Read lines until one starts with `prefix`.
fn read_until(reader: &mut impl BufRead, prefix: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the connection closed before a line starting with {prefix:?}"
        );
        if line.starts_with(prefix) {
            return;
        }
    }
}

#[test]
fn serve_shuts_the_node_down_cleanly_while_clients_hold_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["append", r#"{"type":"note","text":"before"}"#]);
    let mut node = serve(&dir);
    let (addr, token) = api_of(&dir);
    assert!(!dir.join("peers.json").exists());

    // A client reading the live event stream.
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut events = send(
        &addr,
        &format!("GET /v1/events?since=0 HTTP/1.1\r\n{auth}"),
        b"",
    );
    read_until(&mut events, "event: record");

    // A client whose upload stalls: the handler is waiting for the body
    // (the server asked for it with 100 Continue) when the stop comes.
    let mut upload = send(
        &addr,
        &format!(
            "POST /v1/append HTTP/1.1\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 100\r\nExpect: 100-continue\r\n"
        ),
        b"",
    );
    read_until(&mut upload, "HTTP/1.1 100 Continue");
    upload.get_mut().write_all(br#"{"payload":"#).unwrap();

    let status = node.stop_within(Duration::from_secs(30));
    let stderr = node.stderr_text();
    assert!(
        status.is_some(),
        "kappa serve did not exit within 30 s of SIGTERM: {stderr}"
    );
    assert!(status.unwrap().success(), "{stderr}");
    assert!(!stderr.contains("abort"), "{stderr}");
    assert!(
        stderr.contains("stopped; everything stored is on disk"),
        "{stderr}"
    );
    // The node shut down (it saves its address book then), and the API
    // removed its files.
    assert!(dir.join("peers.json").exists(), "{stderr}");
    assert!(!dir.join("api.json").exists());
    assert!(!dir.join("api.token").exists());
    // The event stream was ended, and the stalled upload stored nothing.
    let mut rest = Vec::new();
    let _ = events.read_to_end(&mut rest);
    let status: Value = serde_json::from_str(&ok(&dir, &["--json", "status"])).unwrap();
    assert_eq!(status["entries"], 1);
}
