//! The known-answer vectors of `docs/FORMAT.md`, computed from the code
//! and compared with the document: every `name = hex` line of the
//! document's vector blocks must be what this test computes, and every
//! vector this test computes must be in the document. A format change
//! shows as a failure here and a diff in the document.

use std::collections::BTreeMap;

use kappadb_core::keys::hex;
use kappadb_core::system::{DeleteTarget, Deletion};
use kappadb_core::{CreateOptions, Db, Entry, RecordBody, SigningKey};
use kappadb_net::protocol::{
    Announce, HeadInfo, Heads, Page, Request, Response, Want, encode_announce, encode_request,
    encode_response,
};

/// The log's bytes `[from, to)` (one segment in these tests).
fn log_bytes(dir: &std::path::Path, from: u64, to: u64) -> Vec<u8> {
    let seg = dir.join("log").join(format!("{:020}.seg", 0));
    let bytes = std::fs::read(seg).unwrap();
    bytes[from as usize..to as usize].to_vec()
}

/// Offsets of the records in the log, and where the log ends.
fn offsets(db: &Db) -> (Vec<(u64, RecordBody)>, u64) {
    let records: Vec<(u64, RecordBody)> = db
        .log_iter(0)
        .map(|r| {
            let r = r.unwrap();
            (r.offset, r.body)
        })
        .collect();
    (records, db.log_end())
}

fn computed() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let mut put = |name: &str, bytes: &[u8]| {
        v.insert(name.to_string(), hex(bytes));
    };

    let key = SigningKey::from_seed([7; 32]);
    put("seed", &[7; 32]);
    // blake3 over more than one 1 KiB chunk: bytes i % 251 for i < 3000.
    let long: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    put("blake3-3000", &kappadb_core::entry::Hash::of(&long).0);
    put("feed-id", key.feed_id().as_bytes());
    let e1 = Entry::sign(&key, None, 1_700_000_000_000, b"hello".to_vec());
    let e2 = Entry::sign(&key, Some(&e1), 1_700_000_000_001, b"world".to_vec());
    put("e1-header", &e1.header.encode());
    put("e1-id", &e1.id().0);
    put("e1-signature", &e1.signature.to_bytes());
    put("e2-header", &e2.header.encode());
    put("e2-id", &e2.id().0);
    put("e2-signature", &e2.signature.to_bytes());
    let deletion = Deletion {
        targets: vec![DeleteTarget {
            seq: 1,
            id: e1.id(),
        }],
        up_to: None,
    };
    let e3 = Entry::sign(&key, Some(&e2), 1_700_000_000_002, deletion.encode());
    put("e3-payload", &deletion.encode());
    put("e3-header", &e3.header.encode());
    put("e3-signature", &e3.signature.to_bytes());

    // The log: e1, e2 ingested into a database whose own feed is another.
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::create(tmp.path(), CreateOptions::default()).unwrap();
    db.ingest(vec![e1.clone(), e2.clone()]).unwrap();
    let (records, end) = offsets(&db);
    assert_eq!(records.len(), 2);
    put(
        "e1-record",
        &log_bytes(tmp.path(), records[0].0, records[1].0),
    );
    put("e2-record", &log_bytes(tmp.path(), records[1].0, end));
    // The deletion erases e1 in place: same length, flag 2, zeros.
    db.ingest(vec![e3.clone()]).unwrap();
    let (records, end) = offsets(&db);
    assert_eq!(records.len(), 3);
    put(
        "e1-record-erased",
        &log_bytes(tmp.path(), records[0].0, records[1].0),
    );
    put("e3-record", &log_bytes(tmp.path(), records[2].0, end));

    // A fork: another feed's second entry, twice.
    let forker = SigningKey::from_seed([8; 32]);
    let f1 = Entry::sign(&forker, None, 1_700_000_000_000, b"one".to_vec());
    let f2a = Entry::sign(&forker, Some(&f1), 1_700_000_000_001, b"two".to_vec());
    let f2b = Entry::sign(&forker, Some(&f1), 1_700_000_000_001, b"TWO".to_vec());
    db.ingest(vec![f1.clone(), f2a.clone()]).unwrap();
    let before = db.log_end();
    db.ingest(vec![f2b.clone()]).unwrap();
    let (records, end) = offsets(&db);
    let fork = records.iter().find(|(o, _)| *o == before).unwrap();
    assert!(matches!(fork.1, RecordBody::Fork(_)), "{:?}", fork.1);
    put("fork-record", &log_bytes(tmp.path(), before, end));

    // Sync messages.
    put(
        "want-request",
        &encode_request(&Request::Want(Want {
            feed: key.feed_id(),
            from_seq: 1,
            to_seq: 512,
        })),
    );
    let head = HeadInfo {
        feed: key.feed_id(),
        seq: 2,
        id: e2.id(),
    };
    put(
        "heads-request",
        &encode_request(&Request::Heads(Heads {
            heads: vec![head],
            forks: vec![],
            idle: false,
            more: false,
            serial: 1,
        })),
    );
    let mut erased = e1.clone();
    erased.payload = kappadb_core::Payload::Erased;
    put(
        "page-response",
        &encode_response(&Response::Page(Page {
            feed: key.feed_id(),
            entries: vec![erased, e2.clone()],
        })),
    );
    put(
        "announce",
        &encode_announce(&Announce {
            heads: vec![head],
            forks: vec![],
        }),
    );
    v
}

/// The `name = hex` lines of the document.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut v = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(" = ") else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let is_hex = !value.is_empty() && value.chars().all(|c| c.is_ascii_hexdigit());
        if is_name && is_hex {
            assert!(
                v.insert(name.to_string(), value.to_string()).is_none(),
                "{name} twice"
            );
        }
    }
    v
}

#[test]
fn format_md_vectors_are_what_the_code_computes() {
    let computed = computed();
    if std::env::var_os("KAPPA_PRINT_VECTORS").is_some() {
        for (name, value) in &computed {
            println!("{name} = {value}");
        }
    }
    let documented = documented();
    for (name, value) in &computed {
        assert_eq!(
            documented.get(name),
            Some(value),
            "docs/FORMAT.md vector {name}"
        );
    }
    for name in documented.keys() {
        assert!(
            computed.contains_key(name),
            "docs/FORMAT.md has {name}, the test does not"
        );
    }
}
