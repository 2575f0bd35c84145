//! `kappa-todo` end to end: two lists of one network change items while
//! apart, sync both ways, and print the same list.

mod common;

use std::path::Path;

use common::{Proc, fails, ok, s};

const BIN: &str = env!("CARGO_BIN_EXE_kappa-todo");

fn todo(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["--dir", s(dir)];
    all.extend_from_slice(args);
    ok(BIN, &all)
}

fn add(dir: &Path, text: &str) -> String {
    let id = todo(dir, &["add", text]).trim().to_string();
    assert!(!id.is_empty() && !id.contains(' '), "{id:?}");
    id
}

/// Run `serve` on `server` until `client` has synced with it, then stop it.
fn sync(server: &Path, client: &Path) {
    let mut node = Proc::spawn(
        BIN,
        &[
            "--dir",
            s(server),
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
    );
    let addr = node.wait_for_prefix("listening on ");
    let out = todo(client, &["sync", &addr]);
    assert!(out.starts_with("synced with "), "{out}");
    node.terminate();
    node.wait_success();
}

#[test]
fn offline_edits_converge_after_syncing_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    todo(&a, &["init"]);
    let invite = todo(&a, &["invite"]).trim().to_string();
    assert!(invite.starts_with("kappa-invite-v1:"), "{invite}");
    todo(&b, &["init", "--join", &invite]);
    assert!(fails(BIN, &["--dir", s(&b), "init"]).contains("already holds a database"));

    let milk = add(&a, "buy milk");
    let bob = add(&a, "call bob");
    let plants = add(&a, "water plants");
    let temp = add(&a, "temporary");
    sync(&a, &b);
    assert_eq!(todo(&a, &["list"]), todo(&b, &["list"]));

    // Apart: both change things, and both edit the plants item.
    todo(&a, &["done", &milk]);
    todo(&a, &["edit", &plants, "water the plants (a)"]);
    let from_a = add(&a, "from a");
    todo(&b, &["edit", &plants, "water the plants (b)"]);
    todo(&b, &["done", &bob]);
    todo(&b, &["rm", &temp]);
    let from_b = add(&b, "from b");
    assert!(fails(BIN, &["--dir", s(&b), "done", "nope-1"]).contains("no item nope-1"));

    // One sync, b serving this time, moves everything both ways.
    sync(&b, &a);
    let list_a = todo(&a, &["list"]);
    let list_b = todo(&b, &["list"]);
    assert_eq!(list_a, list_b);
    let lines: Vec<&str> = list_a.lines().collect();
    assert_eq!(lines.len(), 5, "{list_a}");
    // Oldest first: a's four items were created before the others.
    assert_eq!(lines[0], format!("[x] {milk}  buy milk"));
    assert_eq!(lines[1], format!("[x] {bob}  call bob"));
    assert!(
        lines[2].starts_with(&format!("[ ] {plants}  water the plants (")),
        "{list_a}"
    );
    assert!(
        lines[2].ends_with("(2 concurrent versions; the newest is shown, an edit settles it)"),
        "{list_a}"
    );
    assert!(!list_a.contains("temporary"), "{list_a}");
    assert!(
        lines[3..].contains(&format!("[ ] {from_a}  from a").as_str()),
        "{list_a}"
    );
    assert!(
        lines[3..].contains(&format!("[ ] {from_b}  from b").as_str()),
        "{list_a}"
    );

    // An edit that has seen both versions settles the conflict.
    todo(&a, &["edit", &plants, "water the plants"]);
    let settled = todo(&a, &["list"]);
    assert!(
        settled.contains(&format!("[ ] {plants}  water the plants\n")),
        "{settled}"
    );
    assert!(!settled.contains("concurrent"), "{settled}");
    sync(&a, &b);
    assert_eq!(todo(&b, &["list"]), settled);
}

#[test]
fn the_list_can_be_edited_while_its_own_node_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    todo(&a, &["init"]);
    let invite = todo(&a, &["invite"]).trim().to_string();
    todo(&b, &["init", "--join", &invite]);
    let milk = add(&a, "buy milk");
    let mut node = Proc::spawn(
        BIN,
        &[
            "--dir",
            s(&a),
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
    );
    let addr = node.wait_for_prefix("listening on ");
    // (The command socket is bound before the node starts listening.)
    // Every editing command works while `serve` holds the database.
    let bread = add(&a, "buy bread");
    todo(&a, &["done", &milk]);
    todo(&a, &["edit", &bread, "buy rye bread"]);
    let list = todo(&a, &["list"]);
    assert_eq!(
        list,
        format!("[x] {milk}  buy milk\n[ ] {bread}  buy rye bread\n")
    );
    // Errors come back as errors, and the server keeps going.
    assert!(fails(BIN, &["--dir", s(&a), "done", "nope-1"]).contains("no item nope-1"));
    assert!(fails(BIN, &["--dir", s(&a), "sync", &addr]).contains("being served"));
    // A peer that syncs with the running node gets the edits; its own
    // edit, synced back, shows in the served list at once.
    let out = todo(&b, &["sync", &addr]);
    assert!(out.starts_with("synced with "), "{out}");
    assert_eq!(todo(&b, &["list"]), list);
    todo(&b, &["rm", &milk]);
    let out = todo(&b, &["sync", &addr]);
    assert!(out.starts_with("synced with "), "{out}");
    assert_eq!(todo(&a, &["list"]), format!("[ ] {bread}  buy rye bread\n"));
    node.terminate();
    node.wait_success();
    // Stopped: the socket is gone and commands open the database again.
    assert!(!a.join("todo.sock").exists());
    assert_eq!(todo(&a, &["list"]), format!("[ ] {bread}  buy rye bread\n"));
}
