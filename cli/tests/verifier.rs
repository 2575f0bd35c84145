//! The format is enough: `examples/verify.py`, a verifier written in
//! Python from `docs/FORMAT.md` alone, checks a database this build made
//! (entries of several feeds, a binary and a multi-chunk payload, a fork
//! proof, deletions, compacted segments, a forgotten feed) and the
//! entries `kappa --json get --raw` exports, and notices a flipped byte.

mod common;

use std::path::Path;
use std::process::Command;

use common::ok;
use kappadb_core::{CreateOptions, Db, DbConfig, Entry, SigningKey};

fn python(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/verify.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("python3 runs (the verifier is part of the test)");
    if let Some(bytes) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A database with every kind of record, made with the library.
fn make_db(dir: &Path) -> Db {
    let config = DbConfig {
        segment_bytes: 4096,
        ..DbConfig::default()
    };
    let db = Db::create(
        dir,
        CreateOptions {
            config,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..20 {
        db.append(format!(r#"{{"type":"note","n":{i}}}"#).into_bytes())
            .unwrap();
    }
    // Not UTF-8, and more than one BLAKE3 chunk.
    db.append(vec![0xff, 0xfe, 0x00, 0x80]).unwrap();
    db.append((0..3000u32).map(|i| (i % 256) as u8).collect())
        .unwrap();
    // The multi-chunk payload goes too, so compaction has room to give back.
    db.delete(&[2, 5, 22], Some(1)).unwrap();
    // Another feed, which forks at seq 2.
    let other = SigningKey::from_seed([9; 32]);
    let o1 = Entry::sign(&other, None, 1, b"one".to_vec());
    let o2 = Entry::sign(&other, Some(&o1), 2, b"two".to_vec());
    let o2b = Entry::sign(&other, Some(&o1), 2, b"TWO".to_vec());
    db.ingest(vec![o1, o2]).unwrap();
    db.ingest(vec![o2b]).unwrap();
    // A third feed, forgotten.
    let gone = SigningKey::from_seed([10; 32]);
    let g1 = Entry::sign(&gone, None, 1, b"gone".to_vec());
    db.ingest(vec![g1]).unwrap();
    db.forget(&gone.feed_id()).unwrap();
    for i in 20..40 {
        db.append(format!(r#"{{"type":"note","n":{i}}}"#).into_bytes())
            .unwrap();
    }
    let report = db.compact(0, &mut |_, _| {}).unwrap();
    assert!(report.segments > 0, "something was compacted");
    db
}

#[test]
fn python_verifier_agrees_with_this_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = make_db(&dir);
    let report = db.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty());
    drop(db);

    let (good, stdout, stderr) = python(&[dir.to_str().unwrap()], None);
    assert!(good, "{stdout}{stderr}");
    // 43 entries of our feed (40 notes, 2 binary, 1 deletion), 2 of the
    // forked one, the forgotten one's dropped.
    assert!(
        stdout.contains("45 entries in 2 feeds, 1 fork proofs"),
        "{stdout}"
    );
    assert!(stdout.contains("4 erased, 1 deletions"), "{stdout}");
    let rust = ok(&dir, &["--json", "verify"]);
    assert!(rust.contains(r#""erased_payloads":4"#), "{rust}");

    // The API's raw export of every entry of this feed.
    let mut lines = Vec::new();
    for seq in 1..=43 {
        lines.extend(ok(&dir, &["--json", "get", "--raw", "self", &seq.to_string()]).into_bytes());
    }
    let (good, stdout, stderr) = python(&["--entries"], Some(&lines));
    assert!(good, "{stdout}{stderr}");
    assert!(
        stdout.contains("43 entries checked, 0 problems"),
        "{stdout}"
    );
    let binary = ok(&dir, &["--json", "get", "--raw", "self", "21"]);
    assert!(
        binary.contains(r#""payload_encoding":"base64""#),
        "{binary}"
    );

    // `get --raw` prints the payload's bytes exactly.
    let out = common::kappa(&dir, &["get", "--raw", "self", "21"]);
    assert_eq!(out.stdout, vec![0xff, 0xfe, 0x00, 0x80]);

    // A changed timestamp in an export is caught.
    let tampered = String::from_utf8(lines.clone()).unwrap().replacen(
        r#""timestamp":"#,
        r#""timestamp":1"#,
        1,
    );
    let (good, _, stderr) = python(&["--entries"], Some(tampered.as_bytes()));
    assert!(!good && stderr.contains("timestamp"), "{stderr}");

    // One flipped payload byte in the log is caught.
    let mut newest = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect::<Vec<_>>();
    newest.sort();
    let seg = newest.last().unwrap();
    let mut bytes = std::fs::read(seg).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"\"n\":")
        .expect("a note in the newest segment");
    bytes[at + 4] ^= 1;
    // Keep the checksum right, so only the hash can tell.
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert!(at < 8 + len, "the note is in the first record");
    let crc = crc32(&bytes[8..8 + len]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg, &bytes).unwrap();
    let (good, _, stderr) = python(&[dir.to_str().unwrap()], None);
    assert!(
        !good && stderr.contains("payload does not match"),
        "{stderr}"
    );

    // And the document's vectors.
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md");
    let (good, stdout, stderr) = python(&["--vectors", doc], None);
    assert!(good, "{stdout}{stderr}");
}

/// CRC-32/ISO-HDLC, bit by bit (the test's own, not the crate's).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
