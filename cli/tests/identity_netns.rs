//! Pairing over a LAN with no internet, for real: two network namespaces
//! joined by a veth pair (10.78.x.0/24 inside the namespaces only), the
//! `kappa` binary in each. `kappa identity invite` on A prints a code,
//! `kappa identity join CODE` on B finds A on the LAN (mDNS, or the
//! addresses of the network invite made inside A's namespace);
//! both end up with the delegation stored.
//!
//! Needs root and `ip netns`: skipped, saying why, when not root; fails
//! when root but namespaces cannot be made.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("identity_netns: test");
        return;
    }
    println!("running 1 test");
    if !is_root() {
        println!(
            "test pairing_across_namespaces ... skipped: not root (creating network namespaces needs root)"
        );
        return;
    }
    let t = Instant::now();
    pairing_across_namespaces();
    println!("test pairing_across_namespaces ... ok ({:?})", t.elapsed());
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Deletes the namespaces (and with them the veth pair) on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip`: {e}; this test needs iproute2"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kappa(ns: Option<&str>, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns])
                .arg(env!("CARGO_BIN_EXE_kappa"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_kappa")),
    };
    cmd.arg("--dir").arg(dir).args(args).env_remove("KAPPA_DIR");
    cmd
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pairing_across_namespaces() {
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("kid-a-{pid}"), format!("kid-b-{pid}"));
    let (veth_a, veth_b) = (format!("kida{pid}"), format!("kidb{pid}"));
    ip(&["netns", "add", &ns_a]);
    let mut guard = Namespaces(vec![ns_a.clone()]);
    ip(&["netns", "add", &ns_b]);
    guard.0.push(ns_b.clone());
    ip(&[
        "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
    ]);
    ip(&["link", "set", &veth_a, "netns", &ns_a]);
    ip(&["link", "set", &veth_b, "netns", &ns_b]);
    for (ns, dev, addr) in [
        (&ns_a, &veth_a, "10.78.0.1/24"),
        (&ns_b, &veth_b, "10.78.0.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    ok(kappa(None, a, &["init"]).output().unwrap(), "init A");
    // The invite is made inside A's namespace: it names 10.78.0.1.
    let invite = ok(
        kappa(Some(&ns_a), a, &["invite"]).output().unwrap(),
        "invite",
    );
    ok(
        kappa(None, b, &["init", "--join", invite.trim()])
            .output()
            .unwrap(),
        "init B",
    );
    ok(
        kappa(None, a, &["identity", "new"]).output().unwrap(),
        "identity new",
    );

    let mut inviter = kappa(Some(&ns_a), a, &["identity", "invite", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(inviter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let code = line
        .trim()
        .strip_prefix("kappa identity join ")
        .unwrap_or_else(|| panic!("invite printed {line:?}"))
        .to_string();
    let joined = kappa(
        Some(&ns_b),
        b,
        &["identity", "join", &code, "--timeout", "60"],
    )
    .output()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(70);
    let status = loop {
        if let Some(s) = inviter.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = inviter.kill();
            let _ = inviter.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    ok(joined, "identity join");
    assert!(status.is_some_and(|s| s.success()), "invite: {status:?}");

    let show = |dir: &Path| -> serde_json::Value {
        let text = ok(
            kappa(None, dir, &["--json", "identity", "show"])
                .output()
                .unwrap(),
            "identity show",
        );
        serde_json::from_str(text.trim()).unwrap()
    };
    let (sa, sb) = (show(a), show(b));
    assert_eq!(sa["identity"], sb["identity"]);
    assert!(sa["identity"].is_string());
    for s in [&sa, &sb] {
        assert_eq!(s["devices"].as_array().unwrap().len(), 2, "{s}");
    }
}
