//! Identities end to end, with the real binary: three databases; A and B
//! become one identity by pairing (`identity invite` / `identity join` over
//! loopback); C sees their kv writes merged as one author; revoking B from
//! seq N hides B's later writes on A and C alike; a forged delegation is
//! refused and nothing of it is stored.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kappa, ok, serve};
use serde_json::Value;

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(ok(dir, &all).trim()).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pair `joiner` into the identity held by `inviter`, over loopback.
fn pair(inviter: &Path, joiner: &Path) {
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut inv = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(inviter)
        .args(["identity", "invite", "--timeout", "60", "--listen", &listen])
        .env_remove("KAPPA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(inv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let code = line
        .trim()
        .strip_prefix("kappa identity join ")
        .unwrap_or_else(|| panic!("invite printed {line:?}"))
        .to_string();
    assert_eq!(code.len(), 19, "a short code: {code}");
    let joined = kappa(
        joiner,
        &[
            "identity",
            "join",
            &code,
            "--peer",
            &listen,
            "--timeout",
            "60",
        ],
    );
    assert!(
        joined.status.success(),
        "join failed: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = inv.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "invite did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "invite failed");
}

fn heads(dir: &Path, key: &str, identity: bool) -> Vec<Value> {
    let mut args = vec!["kv", "get", key, "--heads"];
    if identity {
        args.push("--identity");
    }
    json(dir, &args).as_array().unwrap().clone()
}

#[test]
fn two_devices_become_one_identity_and_a_revocation_hides_later_writes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, b, c) = (a.path(), b.path(), c.path());
    ok(a, &["init"]);
    let invite = ok(a, &["invite"]);
    ok(b, &["init", "--join", invite.trim()]);
    ok(c, &["init", "--join", invite.trim()]);
    let id_a = ok(a, &["id"]).trim().to_string();
    let id_b = ok(b, &["id"]).trim().to_string();

    ok(a, &["identity", "new"]);
    let shown = json(a, &["identity", "show"]);
    let identity = shown["identity"].as_str().unwrap().to_string();
    assert_eq!(shown["key_here"], true);
    pair(a, b);
    let shown_b = json(b, &["identity", "show"]);
    assert_eq!(shown_b["identity"], identity.as_str());
    assert_eq!(shown_b["key_here"], false);
    assert_eq!(shown_b["devices"].as_array().unwrap().len(), 2);

    // Concurrent writes: neither device has seen the other's.
    ok(a, &["kv", "put", "color", "\"red\""]);
    ok(b, &["kv", "put", "color", "\"blue\""]);

    let node = serve(a);
    for dir in [b, c, b] {
        ok(dir, &["sync", &node.addr]);
    }
    // C: as strangers, two heads; as one identity, one (B's later write).
    assert_eq!(heads(c, "color", false).len(), 2);
    let merged = heads(c, "color", true);
    assert_eq!(merged.len(), 1, "{merged:?}");
    assert_eq!(merged[0]["value"], "blue");
    assert_eq!(merged[0]["feed"], id_b.as_str());
    let listed = json(c, &["kv", "list", "--identity"]);
    assert_eq!(listed[0]["heads"], 1, "{listed}");
    assert_eq!(json(c, &["kv", "list"])[0]["heads"], 2);
    ok(c, &["view", "add", "by-value", "--field", "/value"]);
    let timeline: Vec<Value> = ok(c, &["--json", "timeline", "--identity", &identity])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    assert!(
        timeline
            .iter()
            .all(|t| t["feed"] == id_a.as_str() || t["feed"] == id_b.as_str()),
        "{timeline:?}"
    );

    // B writes on (its seq N), then is revoked from N, on A (through the
    // node's API): B's later write is hidden on A and on C.
    let put = json(b, &["kv", "put", "color", "\"green\""]);
    let n = put["seq"].as_u64().unwrap();
    ok(b, &["sync", &node.addr]);
    assert_eq!(heads(a, "color", true)[0]["value"], "green");
    let revoked = json(a, &["identity", "revoke", &id_b, "--from", &n.to_string()]);
    assert_eq!(revoked["from"], n);
    ok(c, &["sync", &node.addr]);
    for dir in [a, c] {
        let h = heads(dir, "color", true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0]["value"], "blue", "on {}", dir.display());
        // Author-level answers still show the write.
        assert!(
            heads(dir, "color", false)
                .iter()
                .any(|h| h["value"] == "green")
        );
    }
    let query = |identity: Option<&str>| -> usize {
        let mut args = vec!["--json", "view", "query", "by-value", "--eq", "green"];
        if let Some(i) = identity {
            args.extend(["--identity", i]);
        }
        ok(c, &args).lines().count()
    };
    assert_eq!(query(None), 1);
    assert_eq!(query(Some(&identity)), 0);
    let show_c = json(c, &["identity", "show"]);
    assert_eq!(show_c["identity"], Value::Null);
    assert!(node.stop());

    // A forged delegation: C claims B's feed for an identity of its own
    // with a consent signature it made itself. Refused with a typed
    // reason, nothing stored.
    ok(c, &["identity", "new"]);
    let c_identity = json(c, &["identity", "show"])["identity"]
        .as_str()
        .unwrap()
        .to_string();
    let before = kappadb_core::Db::open(c)
        .unwrap()
        .head(&c_identity.parse().unwrap())
        .unwrap()
        .seq;
    let c_node = serve(c);
    let api = common::ApiClient::of(c);
    let (status, body) = api.post(
        "/v1/identity/delegate",
        &serde_json::json!({"device": id_b, "device_sig": "ab".repeat(64)}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "forged_delegation");
    assert!(c_node.stop());
    let db = kappadb_core::Db::open(c).unwrap();
    assert_eq!(db.head(&c_identity.parse().unwrap()).unwrap().seq, before);
    assert!(
        db.identity_ops(&c_identity.parse().unwrap())
            .unwrap()
            .iter()
            .all(|(_, op)| op.device().to_string() != id_b)
    );
}
