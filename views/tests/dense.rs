//! Dense feeds: many entries per author and millisecond, which the
//! timeline and field indexes store in buckets of up to 64 entries. Queries
//! must see every entry in `(timestamp, author, seq)` order (or the
//! reverse), stop mid-bucket at their limit, and the stored bytes must not
//! depend on batch boundaries or arrival order.

mod common;

use std::collections::BTreeSet;

use common::{create_db, digests, indexer};
use kappadb_core::Entry;
use kappadb_core::system::{DeleteTarget, Deletion};
use kappadb_core::test_utils::TestPeer;
use kappadb_views::{FieldQuery, Order, TimelineQuery};
use serde_json::json;

/// Two feeds of 150 entries, 40 per millisecond, so buckets split on
/// timestamps and on seq / 64 boundaries.
fn dense_feeds() -> Vec<Vec<Entry>> {
    (0..2u64)
        .map(|f| {
            let mut peer = TestPeer::new(700 + f);
            for i in 0..150u64 {
                let kind = if i % 3 == 0 { "chat" } else { "note" };
                let payload = json!({"type": kind, "n": i % 7, "feed": f});
                peer.make(5_000 + i / 40, serde_json::to_vec(&payload).unwrap());
            }
            peer.entries
        })
        .collect()
}

fn key(e: &kappadb_views::TimelineItem) -> (u64, kappadb_core::FeedId, u64) {
    (e.timestamp, e.author, e.seq)
}

#[test]
fn dense_buckets_are_deterministic_and_ordered() {
    let feeds = dense_feeds();
    // One peer gets the feeds one after the other, folding 7 records at a
    // time; the other gets them interleaved and folds them in one batch.
    let dir1 = tempfile::tempdir().unwrap();
    let db1 = create_db(dir1.path(), 1);
    for feed in &feeds {
        for chunk in feed.chunks(11) {
            db1.ingest(chunk.to_vec()).unwrap();
        }
    }
    let ix1 = indexer(&db1, 7);
    ix1.declare_field_index("by-n", "/n").unwrap();
    ix1.catch_up().unwrap();

    let dir2 = tempfile::tempdir().unwrap();
    let db2 = create_db(dir2.path(), 2);
    let mut mixed = Vec::new();
    for (a, b) in feeds[1].iter().zip(&feeds[0]) {
        mixed.push(a.clone());
        mixed.push(b.clone());
    }
    db2.ingest(mixed).unwrap();
    let ix2 = indexer(&db2, 5000);
    ix2.declare_field_index("by-n", "/n").unwrap();
    ix2.catch_up().unwrap();
    assert_eq!(digests(&ix1), digests(&ix2));

    let tl = ix2.timeline().unwrap();
    let all = tl
        .query(&TimelineQuery {
            limit: 1000,
            order: Order::Ascending,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.windows(2).all(|w| key(&w[0]) < key(&w[1])));

    // Descending, stopping mid-bucket.
    let newest = tl
        .query(&TimelineQuery {
            limit: 70,
            ..Default::default()
        })
        .unwrap();
    let expected: Vec<_> = all.iter().rev().take(70).cloned().collect();
    assert_eq!(newest, expected);

    // Type, time range and author filters.
    let author = feeds[0][0].header.author;
    let chats = tl
        .query(&TimelineQuery {
            kind: Some("chat".into()),
            author: Some(author),
            from: Some(5_001),
            to: Some(5_002),
            limit: 1000,
            order: Order::Ascending,
        })
        .unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|i| {
            i.kind.as_deref() == Some("chat")
                && i.author == author
                && (5_001..=5_002).contains(&i.timestamp)
        })
        .cloned()
        .collect();
    assert_eq!(expected.len(), 26);
    assert_eq!(chats, expected);

    // Field index: every entry with n = 3, in order; a limit mid-bucket.
    let fi = ix2.field_index("by-n").unwrap();
    let threes = fi.query(&FieldQuery::eq(json!(3)).limit(1000)).unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|i| i.seq % 7 == 4)
        .map(|i| (i.timestamp, i.author, i.seq))
        .collect();
    let got: Vec<_> = threes
        .iter()
        .map(|h| (h.timestamp, h.author, h.seq))
        .collect();
    assert_eq!(got, expected);
    let last = fi
        .query(&FieldQuery {
            order: Order::Descending,
            limit: 5,
            ..FieldQuery::eq(json!(3))
        })
        .unwrap();
    let got: Vec<_> = last
        .iter()
        .map(|h| (h.timestamp, h.author, h.seq))
        .collect();
    let expected: Vec<_> = expected.iter().rev().take(5).copied().collect();
    assert_eq!(got, expected);
}

/// Three feeds whose entries spread over several of the timeline's slots
/// (65.536 s), with timestamps that go backwards now and then (a claim),
/// so that key order within a slot (by author) is not time order; then
/// each feed deletes some of its entries.
fn spread_feeds() -> Vec<Vec<Entry>> {
    (0..3u64)
        .map(|f| {
            let mut peer = TestPeer::new(900 + f);
            for i in 0..160u64 {
                let kind = if i % 4 == 0 { "chat" } else { "note" };
                let payload = json!({"type": kind, "i": i, "feed": f});
                let ts = 60_000 + i * 1_777 + f * 311 - if i % 9 == 0 { 5_000 } else { 0 };
                peer.make(ts, serde_json::to_vec(&payload).unwrap());
            }
            let targets = [3u64, 64, 65, 100 + f]
                .iter()
                .map(|&seq| DeleteTarget {
                    seq,
                    id: peer.entries[(seq - 1) as usize].id(),
                })
                .collect();
            let d = Deletion {
                targets,
                up_to: None,
            };
            peer.make(400_000, d.encode());
            peer.entries
        })
        .collect()
}

#[test]
fn slots_merge_into_time_order() {
    let feeds = spread_feeds();
    let dir1 = tempfile::tempdir().unwrap();
    let db1 = create_db(dir1.path(), 1);
    for feed in &feeds {
        for chunk in feed.chunks(13) {
            db1.ingest(chunk.to_vec()).unwrap();
        }
    }
    let ix1 = indexer(&db1, 9);
    ix1.catch_up().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = create_db(dir2.path(), 2);
    let mut mixed = Vec::new();
    for i in 0..feeds[0].len() {
        for feed in feeds.iter().rev() {
            mixed.push(feed[i].clone());
        }
    }
    db2.ingest(mixed).unwrap();
    let ix2 = indexer(&db2, 5000);
    ix2.catch_up().unwrap();
    assert_eq!(digests(&ix1), digests(&ix2));

    // The reference: every entry but the deletions and the deleted.
    let mut want: Vec<(u64, kappadb_core::FeedId, u64, &str)> = Vec::new();
    for (f, feed) in feeds.iter().enumerate() {
        for e in &feed[..feed.len() - 1] {
            let seq = e.header.seq;
            if [3, 64, 65, 100 + f as u64].contains(&seq) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(e.payload.bytes().unwrap()).unwrap();
            let kind = if v["type"] == "chat" { "chat" } else { "note" };
            want.push((e.header.timestamp, e.header.author, seq, kind));
        }
    }
    want.sort();
    assert_eq!(want.len(), 3 * (160 - 4));
    let slots: BTreeSet<u64> = want.iter().map(|w| w.0 >> 16).collect();
    assert!(slots.len() >= 4, "{slots:?}");

    let author = feeds[1][0].header.author;
    for ix in [&ix1, &ix2] {
        let tl = ix.timeline().unwrap();
        for kind in [None, Some("chat")] {
            for who in [None, Some(author)] {
                for (from, to) in [
                    (None, None),
                    (Some(70_000), Some(200_000)),
                    (Some(131_072), Some(131_072 + 9_000)),
                ] {
                    for limit in [1, 7, 100, 1000] {
                        for order in [Order::Ascending, Order::Descending] {
                            let got: Vec<_> = tl
                                .query(&TimelineQuery {
                                    kind: kind.map(str::to_string),
                                    author: who,
                                    from,
                                    to,
                                    limit,
                                    order,
                                })
                                .unwrap()
                                .iter()
                                .map(key)
                                .collect();
                            let mut expected: Vec<_> = want
                                .iter()
                                .filter(|w| kind.is_none_or(|k| k == w.3))
                                .filter(|w| who.is_none_or(|a| a == w.1))
                                .filter(|w| {
                                    from.is_none_or(|f| w.0 >= f) && to.is_none_or(|t| w.0 <= t)
                                })
                                .map(|w| (w.0, w.1, w.2))
                                .collect();
                            if order == Order::Descending {
                                expected.reverse();
                            }
                            expected.truncate(limit);
                            assert_eq!(
                                got, expected,
                                "{kind:?} {who:?} {from:?}..{to:?} {limit} {order:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
