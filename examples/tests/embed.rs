//! `kappa-embed` end to end: a second run on the same directory sees the
//! first run's entries.

mod common;

use common::{Proc, ok, s};

const BIN: &str = env!("CARGO_BIN_EXE_kappa-embed");

/// The lines after `header`, indented by two spaces.
fn section<'a>(out: &'a str, header: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect()
}

/// The "the log grew …" line and the records listed under it.
fn new_records(out: &str) -> Vec<&str> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with("the log grew from offset "));
    let header = lines.next().into_iter();
    header
        .chain(lines.take_while(|l| l.starts_with("  ")))
        .collect()
}

#[test]
fn second_run_sees_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");

    let first = ok(BIN, &["--dir", s(&dir)]);
    assert!(first.contains("created a new database"), "{first}");
    assert!(first.contains("appended 2 entries"), "{first}");
    let records = new_records(&first);
    assert!(
        records[0].starts_with("the log grew from offset 0 to "),
        "{first}"
    );
    assert_eq!(records.len(), 3, "{first}");
    assert!(records[1].starts_with("  seq 1: "), "{first}");
    assert!(records[2].starts_with("  seq 2: "), "{first}");
    assert!(first.contains("kv: runs = 1\n"), "{first}");
    assert_eq!(
        section(&first, "timeline, notes oldest first:"),
        ["hello from run 1"]
    );
    assert_eq!(section(&first, "type-count:"), ["kv.put = 1", "note = 1"]);

    let second = ok(BIN, &["--dir", s(&dir)]);
    assert!(!second.contains("created"), "{second}");
    let records = new_records(&second);
    assert_eq!(records.len(), 3, "{second}");
    assert!(records[1].starts_with("  seq 3: "), "{second}");
    assert!(records[1].contains(r#""links":["#), "{second}");
    assert!(records[2].starts_with("  seq 4: "), "{second}");
    assert!(second.contains("kv: runs = 2\n"), "{second}");
    assert_eq!(
        section(&second, "timeline, notes oldest first:"),
        ["hello from run 1", "hello from run 2"]
    );
    assert_eq!(section(&second, "type-count:"), ["kv.put = 2", "note = 2"]);

    // With --listen it runs a node until SIGTERM, then exits cleanly.
    let mut node = Proc::spawn(
        BIN,
        &[
            "--dir",
            s(&dir),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
    );
    let addr = node.wait_for_prefix("listening on ");
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
    assert!(addr.contains("/p2p/"), "{addr}");
    assert!(
        node.seen.iter().any(|l| l == "kv: runs = 3"),
        "{:?}",
        node.seen
    );
    node.terminate();
    node.wait_success();
}
