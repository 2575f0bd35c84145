//! `kappa-chat` end to end: two chats on loopback exchange messages, and a
//! restarted chat shows the history.

mod common;

use common::{Proc, s};

const BIN: &str = env!("CARGO_BIN_EXE_kappa-chat");

fn chat(dir: &std::path::Path, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--dir",
        s(dir),
        "--name",
        name,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(BIN, &args)
}

/// The lines between `* history: …` and `* end of history`.
fn history(p: &mut Proc) -> Vec<String> {
    p.wait_for("* end of history", |l| l == "* end of history");
    let start = p
        .seen
        .iter()
        .position(|l| l.starts_with("* history: "))
        .expect("a history header");
    p.seen[start + 1..p.seen.len() - 1].to_vec()
}

#[test]
fn two_chats_exchange_messages_and_keep_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir_a = tmp.path().join("a");
    let dir_b = tmp.path().join("b");

    let mut a = chat(&dir_a, "ana", &[]);
    assert!(history(&mut a).is_empty());
    let addr = a.wait_for_prefix("* listening on ");
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
    assert!(addr.contains("/p2p/"), "{addr}");
    let invite = a.wait_for_prefix("* invite: ");
    assert!(invite.starts_with("kappa-invite-v1:"), "{invite}");
    assert!(invite.ends_with(&addr), "{invite} lists {addr}");

    // B joins A's network with the invite and dials A.
    let mut b = chat(&dir_b, "bob", &["--join", &invite, "--peer", &addr]);
    assert!(history(&mut b).is_empty());
    b.wait_for_prefix("* listening on ");

    a.send("hello from ana");
    a.wait_for("ana's own message", |l| {
        l.ends_with("] ana: hello from ana")
    });
    b.wait_for("ana's message at bob", |l| {
        l.ends_with("] ana: hello from ana")
    });
    b.send("hi from bob");
    a.wait_for("bob's message at ana", |l| {
        l.ends_with("] bob: hi from bob")
    });

    // End of input stops B cleanly.
    b.close_stdin();
    b.wait_success();
    assert_eq!(b.seen.last().map(String::as_str), Some("* bye"));

    // Restarted (no peers, A not needed), B shows both messages.
    let mut b = chat(&dir_b, "bob", &[]);
    let past = history(&mut b);
    assert_eq!(past.len(), 2, "{past:?}");
    assert!(b.seen.contains(&"* history: 2 message(s)".to_string()));
    assert!(
        past.iter().any(|l| l.ends_with("] ana: hello from ana")),
        "{past:?}"
    );
    assert!(
        past.iter().any(|l| l.ends_with("] bob: hi from bob")),
        "{past:?}"
    );
    assert!(
        past.iter()
            .all(|l| l.starts_with('[') && l.as_bytes()[9] == b']'),
        "{past:?}"
    );
    b.close_stdin();
    b.wait_success();

    // Joining a database of another network is refused.
    let other = format!("kappa-invite-v1:{}:", "ab".repeat(32));
    let mut c = chat(&dir_b, "bob", &["--join", &other]);
    let status = c.wait_exit();
    assert!(!status.success());

    a.close_stdin();
    a.wait_success();
}
