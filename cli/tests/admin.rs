//! Admin while `kappa serve` runs: invite, sync, peers, block/unblock,
//! verify and status go through the node's API instead of failing on the
//! database lock; and the CLI's error contract (exit code 2 for usage
//! errors, a JSON error object on stderr with --json).

mod common;

use common::{eventually, kappa, ok, serve};
use serde_json::Value;

fn json(dir: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(dir, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

#[test]
fn admin_commands_work_while_the_node_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(&a, &["init"]);
    let invite = json(&a, &["invite"])["invite"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&b, &["init", "--join", &invite]);
    ok(&b, &["append", r#"{"from":"b"}"#]);
    let na = serve(&a);
    let nb = serve(&b);
    let b_feed = ok(&b, &["id"]).trim().to_string();

    // invite names the running node's real address (its port, not 4747).
    let inv = json(&a, &["invite"]);
    let addrs: Vec<&str> = inv["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        addrs.contains(&na.addr.as_str()),
        "{addrs:?} vs {}",
        na.addr
    );

    // sync through the node.
    let s = json(&a, &["sync", &nb.addr, "--timeout", "60"]);
    assert_eq!(s["pulled"], 1, "{s}");
    assert!(ok(&a, &["get", &b_feed, "1"]).contains("\"b\""));

    // peers: b is connected now, and no address of a's own is listed.
    let peers = eventually("b connected in peers", || {
        let p = json(&a, &["peers"]);
        let list = p.as_array().unwrap().clone();
        list.into_iter()
            .find(|p| p["feed"] == b_feed.as_str() && p["connected"] == true)
    });
    let own = na.addr.split("/p2p/").next().unwrap().to_string();
    for p in json(&a, &["peers"]).as_array().unwrap() {
        for addr in p["addrs"].as_array().unwrap() {
            assert_ne!(addr.as_str().unwrap(), own, "own address listed: {p}");
        }
    }
    assert!(!peers["addrs"].as_array().unwrap().is_empty(), "{peers}");
    let human = ok(&a, &["peers"]);
    assert!(human.contains("connected"), "{human}");

    // status shows the running node, its peers and the views' lag.
    let st = json(&a, &["status"]);
    let node = &st["node"];
    assert!(node.is_object(), "{st}");
    assert!(
        node["listen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == na.addr.as_str()),
        "{st}"
    );
    assert!(!node["connected"].as_array().unwrap().is_empty(), "{st}");
    assert!(
        st["views"].as_array().is_some_and(|v| !v.is_empty()),
        "{st}"
    );
    let human = ok(&a, &["status"]);
    assert!(human.contains("node      running"), "{human}");
    assert!(human.contains("CHECKPOINT"), "{human}");

    // block and unblock through the node.
    let r = json(&a, &["block", &b_feed[..12]]);
    assert_eq!(
        (r["blocked"].clone(), r["changed"].clone()),
        (true.into(), true.into())
    );
    let r = json(&a, &["block", &b_feed]);
    assert_eq!(r["changed"], false, "{r}");
    let r = json(&a, &["unblock", &b_feed]);
    assert_eq!(
        (r["blocked"].clone(), r["changed"].clone()),
        (false.into(), true.into())
    );
    let own_feed = ok(&a, &["id"]).trim().to_string();
    assert_eq!(kappa(&a, &["block", &own_feed]).status.code(), Some(1));

    // verify through the node.
    let v = json(&a, &["verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], 1, "{v}");

    assert!(na.stop());
    assert!(nb.stop());

    // Without a node, status says none runs and the same commands work
    // on the database itself.
    let st = json(&a, &["status"]);
    assert!(st["node"].is_null(), "{st}");
    assert!(ok(&a, &["status"]).contains("node      not running"));
    assert_eq!(json(&a, &["verify"])["ok"], true);
    assert_eq!(json(&a, &["block", &b_feed])["changed"], true);
}

#[test]
fn usage_errors_exit_2_and_json_errors_are_one_object_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    ok(&a, &["init"]);
    // A peer address that is not a multiaddr is a usage error.
    let out = kappa(&a, &["sync", "192.168.1.20:4747"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is not a multiaddr"), "{err}");
    // So is an unknown flag, in JSON too.
    let out = kappa(&a, &["--json", "log", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["code"], "usage", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--no-such-flag")
    );
    // A failing operation: exit 1, and its code in the JSON error.
    let out = kappa(&a, &["--json", "get", "ffff", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let v: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        v["error"]["code"].as_str().is_some_and(|c| c != "error"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let out = kappa(&a, &["--json", "sync", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["code"], "usage", "{v}");
}
