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

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("none");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&dir, &["completions", shell]);
        assert!(
            script.contains("serve") && script.contains("backup"),
            "{shell}"
        );
    }
    // The bash script is valid bash.
    let file = tmp.path().join("kappa.bash");
    std::fs::write(&file, ok(&dir, &["completions", "bash"])).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .unwrap();
    assert!(check.success());
    let man = ok(&dir, &["man"]);
    assert!(
        man.contains(".TH kappa 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("serve") && man.contains("KAPPA_DIR"));
    // Neither needs a database.
    assert!(!dir.exists());
    assert_eq!(kappa(&dir, &["completions", "tcsh"]).status.code(), Some(2));
}

/// Start `kappa serve` with exactly `args` (no test defaults) and return
/// its stderr lines once it printed "press Ctrl-C", then stop it.
fn serve_plain(dir: &std::path::Path, args: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .arg("serve")
        .args(args)
        .env_remove("KAPPA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.contains("press Ctrl-C") {
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "{text}");
    text
}

#[test]
fn saved_serve_options_start_the_node_the_same_way_and_flags_still_win() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let first = serve_plain(
        &dir,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--no-api",
            "--compact-at",
            "0",
            "--save",
        ],
    );
    assert!(first.contains("saved these options"), "{first}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("serve.json")).unwrap()).unwrap();
    assert_eq!(saved["api"], "off", "{saved}");
    assert_eq!(saved["mdns"], false, "{saved}");
    // A plain serve listens where it was told (not on 0.0.0.0:4747) and
    // serves no API.
    let plain = serve_plain(&dir, &[]);
    assert!(
        plain.contains("listening on /ip4/127.0.0.1/tcp/"),
        "{plain}"
    );
    assert!(
        !plain.contains("0.0.0.0") && !plain.contains("API on"),
        "{plain}"
    );
    // A flag wins over the file.
    let with_api = serve_plain(&dir, &["--api", "127.0.0.1:0"]);
    assert!(with_api.contains("API on http://127.0.0.1:"), "{with_api}");
    // A damaged file is an error that names it; nothing starts.
    std::fs::write(dir.join("serve.json"), "{\"listen\": 7}").unwrap();
    let out = kappa(&dir, &["serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve.json"));
}

#[test]
fn service_definitions_run_this_binary_on_this_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my db");
    let unit = ok(&dir, &["service", "systemd"]);
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap_or_else(|| panic!("{unit}"));
    assert!(exec.contains(env!("CARGO_BIN_EXE_kappa")), "{exec}");
    assert!(
        exec.contains(&format!("--dir \"{}\" serve", dir.display())),
        "{exec}"
    );
    assert!(unit.contains("[Install]") && unit.contains("WantedBy=default.target"));
    // The launchd agent is a property list that parses.
    let plist = ok(&dir, &["service", "launchd"]);
    let mut py = std::process::Command::new("python3")
        .args([
            "-c",
            "import plistlib,sys; p=plistlib.loads(sys.stdin.buffer.read()); print(p['ProgramArguments'][-1], p['RunAtLoad'])",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin
        .take()
        .unwrap()
        .write_all(plist.as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "{plist}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "serve True");
}

#[test]
fn people_read_local_times_and_utc_on_request_and_log_has_a_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    ok(&dir, &["append", r#"{"n":1}"#]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kappa"))
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .env("TZ", "XYZ-3")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let local = run(&["timeline"]);
    assert!(local.contains(" +03:00  "), "{local}");
    let utc = run(&["--utc", "timeline"]);
    assert!(utc.contains("Z  ") && !utc.contains("+03:00"), "{utc}");
    let log = run(&["log"]);
    let mut lines = log.lines();
    let header = lines.next().unwrap();
    assert!(
        header
            .split_whitespace()
            .eq(["OFFSET", "FEED", "SEQ", "TIME", "PAYLOAD"])
    );
    // The columns line up under the header.
    let row = lines.next().unwrap();
    assert_eq!(header.find("PAYLOAD"), row.find("{\"n\":1}"), "{log}");
    // JSON keeps milliseconds since the epoch, whatever the zone.
    let j = run(&["--json", "log"]);
    assert!(
        serde_json::from_str::<Value>(j.lines().next().unwrap()).unwrap()["timestamp"].is_u64()
    );
}
