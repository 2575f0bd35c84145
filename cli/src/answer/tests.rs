//! The answers' JSON: fields in the order a sorted map had, records told
//! apart by `kind`, payload formats.

use serde_json::json;

use super::*;

/// Every struct writes its fields in sorted order, as the `Value`
/// maps the JSON used to be built from did.
#[test]
fn fields_are_written_in_the_order_a_sorted_map_had() {
    fn sorted<T: Serialize>(v: &T) {
        let text = serde_json::to_string(v).unwrap();
        let as_map: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(text, as_map.to_string(), "not in sorted order: {text}");
    }
    let entry = Entry {
        feed: "f".into(),
        id: "i".into(),
        kind: EntryKind::Entry,
        offset: Some(3),
        payload: json!({"b": 1, "a": [2.5, null]}),
        payload_format: PayloadFormat::Json,
        payload_hash: "h".into(),
        payload_len: 9,
        prev: None,
        raw: None,
        seq: 1,
        signature: "s".into(),
        timestamp: 2,
        version: 1,
    };
    sorted(&entry);
    sorted(&Entry {
        offset: None,
        prev: Some("p".into()),
        raw: Some(RawEntry {
            header: "01".into(),
            payload: Some("x".into()),
            payload_encoding: Some("utf8".into()),
        }),
        ..entry.clone()
    });
    sorted(&Record::Fork(Fork {
        feed: "f".into(),
        ids: ["a".into(), "b".into()],
        kind: ForkKind::Fork,
        offset: 1,
        seq: 2,
    }));
    sorted(&FeedRange {
        entries: vec![entry.clone()],
        feed: "f".into(),
        head_seq: 1,
        next: None,
    });
    sorted(&FeedInfo {
        feed: "f".into(),
        fork_seq: Some(1),
        forked: true,
        head: "h".into(),
        local: false,
        seq: 1,
        timestamp: 2,
    });
    sorted(&AppendReply {
        appended: vec![Appended {
            id: "i".into(),
            offset: 0,
            seq: 1,
            timestamp: 2,
        }],
        feed: "f".into(),
    });
    sorted(&AppendedOne {
        feed: "f".into(),
        id: "i".into(),
        offset: 0,
        seq: 1,
        timestamp: 2,
    });
    sorted(&AppendSummary {
        appended: 2,
        feed: "f".into(),
        first_seq: Some(1),
        last_seq: None,
    });
    sorted(&Status {
        bridge: Some(BridgeInfo {
            delivered_offset: 1,
            in_flight: 2,
            lag_bytes: 3,
            lag_records: 4,
            last_error: None,
            produced: 5,
            skipped: 6,
            state: "running".into(),
            topic: "t".into(),
        }),
        dir: "d".into(),
        disk_bytes: 10,
        entries: 1,
        erased_bytes: 0,
        erased_entries: 0,
        feed: "f".into(),
        feeds: 1,
        forked_feeds: 0,
        held: Some("h".into()),
        log_bytes: 9,
        node: None,
        own_forked_at: None,
        own_seq: 1,
        reclaimable_bytes: 0,
        records: 1,
        views: Some(vec![]),
    });
    sorted(&DeleteReply {
        feed: "f".into(),
        id: "i".into(),
        offset: 3,
        seq: 2,
        targets: 1,
        up_to: None,
    });
    sorted(&BackupReply {
        dest: "/b".into(),
        files: 4,
        log_bytes: 9,
        own_seq: 1,
    });
    sorted(&HoldReply { held: None });
    sorted(&InviteReply {
        addrs: vec![],
        invite: "i".into(),
    });
    sorted(&BlockReply {
        blocked: true,
        changed: false,
        feed: "f".into(),
    });
    sorted(&SyncReply {
        feeds: 1,
        peer: "p".into(),
        pulled: 2,
        pushed: 3,
    });
    sorted(&VerifyReply {
        deletions: 0,
        entries: 1,
        erased_payloads: 0,
        feeds: 1,
        fork_proofs: 0,
        ineffective_deletions: 0,
        missing_payloads: 0,
        ok: true,
        problems: vec![VerifyProblem {
            offset: 0,
            problem: "p".into(),
        }],
        records: 1,
    });
    sorted(&CompactReply {
        bytes_after: 1,
        bytes_before: 2,
        reclaimed: 1,
        segments: 1,
    });
    sorted(&ForgetReply {
        blocked: true,
        feed: "f".into(),
        forgotten: true,
    });
    sorted(&FollowReply {
        feeds: vec![],
        mode: "all".into(),
    });
    sorted(&NodeInfo {
        connected: vec!["c".into()],
        feed: "f".into(),
        listen: vec!["l".into()],
        peer_id: "p".into(),
    });
    sorted(&PeerInfo {
        addrs: vec!["a".into()],
        connected: true,
        feed: None,
        last_seen: 1,
        last_sync: Some(2),
        peer: "p".into(),
    });
    sorted(&KvHead {
        deleted: false,
        feed: "f".into(),
        id: "i".into(),
        seq: 1,
        timestamp: 2,
        value: json!({"z": 1, "y": 2}),
    });
    sorted(&KvItem {
        heads: 1,
        key: "k".into(),
        value: json!(1),
    });
    sorted(&KvWritten {
        id: "i".into(),
        key: "k".into(),
        seq: 1,
    });
    let item = TimelineItem::from_entry(&entry);
    assert_eq!(item.kind, None);
    sorted(&TimelineItem {
        kind: Some("chat".into()),
        ..item
    });
    sorted(&ViewInfo {
        checkpoint: 1,
        description: "d".into(),
        entries: 1,
        lag: 0,
        name: "n".into(),
        rebuild_checkpoint: Some(0),
        rebuilding: false,
        skipped: 0,
        version: 1,
    });
    sorted(&Digest {
        digest: "d".into(),
        name: "n".into(),
    });
    sorted(&ViewAdded {
        entries: 1,
        field: "/f".into(),
        name: "n".into(),
        skipped: 0,
        text: vec!["/t".into()],
    });
    sorted(&SearchHit {
        feed: "f".into(),
        field: "/t".into(),
        offset: 3,
        score: 1.5,
        seq: 1,
        snippet: "s".into(),
        timestamp: 2,
        kind: Some("note".into()),
    });
    sorted(&ViewRemoved {
        name: "n".into(),
        removed: true,
    });
    sorted(&ViewRebuilt {
        entries: 1,
        name: "n".into(),
        skipped: 0,
    });
    sorted(&FieldHit {
        feed: "f".into(),
        id: "i".into(),
        payload: Value::Null,
        payload_format: PayloadFormat::Absent,
        seq: 1,
        timestamp: 2,
        value: json!("v"),
    });
    sorted(&OpError::bad("bad_query", "no").body());
}

#[test]
fn records_round_trip_and_are_told_apart_by_kind() {
    let entry = Record::Entry(Entry {
        feed: "f".into(),
        id: "i".into(),
        kind: EntryKind::Entry,
        offset: Some(7),
        payload: json!({"n": 12345678901234567890u64, "x": 1.5, "s": "t"}),
        payload_format: PayloadFormat::Json,
        payload_hash: "h".into(),
        payload_len: 40,
        prev: Some("p".into()),
        raw: None,
        seq: 2,
        signature: "s".into(),
        timestamp: 3,
        version: 1,
    });
    let fork = Record::Fork(Fork {
        feed: "f".into(),
        ids: ["a".into(), "b".into()],
        kind: ForkKind::Fork,
        offset: 9,
        seq: 2,
    });
    for rec in [entry, fork] {
        let text = serde_json::to_string(&rec).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
    // An entry that calls itself a fork is neither.
    let bad = json!({"feed": "f", "ids": ["a", "b"], "kind": "entry", "offset": 1, "seq": 1});
    assert!(serde_json::from_value::<Record>(bad).is_err());
}

#[test]
fn payloads_are_json_text_binary_or_absent() {
    assert_eq!(payload_of(None), (Value::Null, PayloadFormat::Absent));
    assert_eq!(
        payload_of(Some(br#"{"b":1,"a":2}"#)),
        (json!({"a": 2, "b": 1}), PayloadFormat::Json)
    );
    assert_eq!(
        payload_of(Some(b"not json")),
        (json!("not json"), PayloadFormat::Text)
    );
    assert_eq!(
        payload_of(Some(&[0xff, 0x00])),
        (json!("ff00"), PayloadFormat::Binary)
    );
    assert_eq!(
        serde_json::to_string(&PayloadFormat::Binary).unwrap(),
        "\"binary\""
    );
}

#[test]
fn identity_entries_are_shown_as_what_they_say() {
    let r = kappadb_core::identity::Revocation {
        device: kappadb_core::FeedId([0xab; 32]),
        from: 3,
    };
    assert_eq!(
        payload_of(Some(&r.encode())),
        (
            json!({"kind": "revoke", "device": "ab".repeat(32), "from": 3}),
            PayloadFormat::Identity
        )
    );
    assert_eq!(
        serde_json::to_string(&PayloadFormat::Identity).unwrap(),
        "\"identity\""
    );
}
