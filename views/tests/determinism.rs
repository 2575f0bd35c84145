//! Determinism: views depend only on the set of entries folded, never on
//! the order feeds were interleaved in, nor on batch boundaries.
//!
//! Several feeds make random kv puts and deletes (with links to earlier
//! ops, of any feed, sometimes to ops a peer receives later), other
//! payloads, and deletions of their own earlier entries (by seq and by
//! prune point); two fresh databases receive them in two random
//! interleavings (each feed in seq order, one folding as it goes), a third
//! feed by feed, and a fourth with every deleted entry already erased (as a
//! peer that joins after the deletions receives them). Every view's digest
//! must be equal, also after a rebuild, and kv answers must match a model
//! computed from the set of entries that are not deleted. The views
//! include a full-text search view (kappadb-search), whose digest covers
//! its documents and whose index must hold one document per entry that
//! is neither deleted nor skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{create_db, digests};
use kappadb_core::system::{DeleteTarget, Deletion};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{Db, Entry, EntryId, FeedId, Payload};
use kappadb_search::{SearchExt, SearchSpec};
use kappadb_views::{Indexer, IndexerConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A tiny deterministic generator for interleavings.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Debug)]
struct OpSpec {
    feed: usize,
    kind: u8,
    key: u8,
    timestamp: u64,
    links: Vec<usize>,
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    (
        0usize..4,
        0u8..10,
        0u8..4,
        0u64..12,
        prop::collection::vec(0usize..1000, 0..3),
    )
        .prop_map(|(feed, kind, key, timestamp, links)| OpSpec {
            feed,
            kind,
            key,
            // Few distinct timestamps (ties), spread over several of the
            // timeline's 65.536 s slots.
            timestamp: timestamp * 30_011,
            links,
        })
}

/// What the model needs of a kv op.
#[derive(Clone, Debug)]
struct ModelOp {
    key: String,
    value: Option<Value>,
    links: Vec<EntryId>,
    order: (u64, FeedId, u64),
    id: EntryId,
}

/// Entries deleted, by (feed, seq).
type Deleted = BTreeSet<(FeedId, u64)>;

/// The feeds and the model's ops (deleted ones left out).
fn build(n_feeds: usize, specs: &[OpSpec]) -> (Vec<Vec<Entry>>, Vec<ModelOp>) {
    let (feeds, model, _) = build_with_deleted(n_feeds, specs);
    (feeds, model)
}

/// [`build`], and the entries that are deleted.
fn build_with_deleted(
    n_feeds: usize,
    specs: &[OpSpec],
) -> (Vec<Vec<Entry>>, Vec<ModelOp>, Deleted) {
    let mut peers: Vec<TestPeer> = (0..n_feeds)
        .map(|i| TestPeer::new(100 + i as u64))
        .collect();
    let mut made: Vec<Entry> = Vec::new();
    let mut model = Vec::new();
    let mut deleted: BTreeSet<(FeedId, u64)> = BTreeSet::new();
    let mut deletions: BTreeSet<(FeedId, u64)> = BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        if spec.kind >= 8 {
            // A deletion of some of this feed's earlier entries.
            let peer = &mut peers[spec.feed % n_feeds];
            let n = peer.entries.len() as u64;
            if n == 0 {
                continue;
            }
            let author = peer.key.feed_id();
            let mut seqs: Vec<u64> = spec.links.iter().map(|l| 1 + (*l as u64 % n)).collect();
            seqs.sort_unstable();
            seqs.dedup();
            seqs.retain(|s| !deletions.contains(&(author, *s)));
            let up_to = (spec.kind == 9).then(|| 1 + u64::from(spec.key) % n);
            if seqs.is_empty() && up_to.is_none() {
                continue;
            }
            let targets = seqs
                .iter()
                .map(|&seq| DeleteTarget {
                    seq,
                    id: peer.entries[(seq - 1) as usize].id(),
                })
                .collect();
            let d = Deletion { targets, up_to };
            for s in seqs.iter().copied().chain(1..=up_to.unwrap_or(0)) {
                if !deletions.contains(&(author, s)) {
                    deleted.insert((author, s));
                }
            }
            let entry = peer.make(spec.timestamp, d.encode());
            deletions.insert((author, entry.header.seq));
            made.push(entry);
            continue;
        }
        let key = format!("k{}", spec.key);
        let links: Vec<EntryId> = if made.is_empty() {
            Vec::new()
        } else {
            spec.links
                .iter()
                .map(|&l| made[l % made.len()].id())
                .collect()
        };
        let (payload, op) = match spec.kind {
            0..=2 => {
                let value = json!({"n": i, "feed": spec.feed});
                (
                    kappadb_views::kv::put_payload(&key, &value, &links),
                    Some(Some(value)),
                )
            }
            3 | 4 => (kappadb_views::kv::del_payload(&key, &links), Some(None)),
            5 => (
                serde_json::to_vec(&json!({
                    "type": "note",
                    "value": spec.key,
                    "text": format!("note {i} about w{} and w{}", spec.key, spec.timestamp % 3),
                }))
                .unwrap(),
                None,
            ),
            6 => (b"\x00not json".to_vec(), None),
            _ => (
                // A link to an op nobody has.
                kappadb_views::kv::put_payload(&key, &json!(i), &[EntryId([spec.key; 32])]),
                Some(Some(json!(i))),
            ),
        };
        let peer = &mut peers[spec.feed % n_feeds];
        let entry = peer.make(spec.timestamp, payload);
        if let Some(value) = op {
            let links = if spec.kind == 7 {
                vec![EntryId([spec.key; 32])]
            } else {
                links
            };
            model.push(ModelOp {
                key,
                value,
                links,
                order: (
                    entry.header.timestamp,
                    entry.header.author,
                    entry.header.seq,
                ),
                id: entry.id(),
            });
        }
        made.push(entry);
    }
    model.retain(|o| !deleted.contains(&(o.order.1, o.order.2)));
    (
        peers.into_iter().map(|p| p.entries).collect(),
        model,
        deleted,
    )
}

/// The feeds as a peer that joins after the deletions receives them: the
/// deleted entries come erased.
fn erased(feeds: &[Vec<Entry>], deleted: &BTreeSet<(FeedId, u64)>) -> Vec<Vec<Entry>> {
    feeds
        .iter()
        .map(|f| {
            f.iter()
                .map(|e| {
                    let mut e = e.clone();
                    if deleted.contains(&(e.header.author, e.header.seq)) {
                        e.payload = Payload::Erased;
                    }
                    e
                })
                .collect()
        })
        .collect()
}

/// Merge the feeds in a random order, each feed in seq order.
fn interleave(feeds: &[Vec<Entry>], rng: &mut XorShift) -> Vec<Entry> {
    let mut next = vec![0usize; feeds.len()];
    let mut out = Vec::new();
    loop {
        let open: Vec<usize> = (0..feeds.len())
            .filter(|&f| next[f] < feeds[f].len())
            .collect();
        if open.is_empty() {
            return out;
        }
        let f = open[rng.below(open.len())];
        out.push(feeds[f][next[f]].clone());
        next[f] += 1;
    }
}

fn deliver(db: &Db, entries: &[Entry], rng: &mut XorShift) {
    let mut i = 0;
    while i < entries.len() {
        let n = 1 + rng.below(4);
        let chunk: Vec<Entry> = entries[i..(i + n).min(entries.len())].to_vec();
        let report = db.ingest(chunk).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        i += n;
    }
}

fn fold(db: &Db, batch_records: usize) -> Indexer {
    let ix = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            batch_records,
            ..Default::default()
        },
    )
    .unwrap();
    ix.declare_field_index("by-value", "/value").unwrap();
    ix.declare_field_index("by-n", "/value/n").unwrap();
    kappadb_search::install_declared(&ix).unwrap();
    ix.declare_search("text", SearchSpec::new(&["/text"]))
        .unwrap();
    ix.catch_up().unwrap();
    ix
}

/// The kv answer computed from the set of ops.
fn model_get(ops: &[ModelOp], key: &str) -> Option<Value> {
    let ops: Vec<&ModelOp> = ops.iter().filter(|o| o.key == key).collect();
    let linked: BTreeSet<EntryId> = ops.iter().flat_map(|o| o.links.iter().copied()).collect();
    ops.iter()
        .filter(|o| !linked.contains(&o.id))
        .filter(|o| {
            !ops.iter()
                .any(|p| p.order.1 == o.order.1 && p.order.2 > o.order.2)
        })
        .max_by_key(|o| o.order)
        .and_then(|o| o.value.clone())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn views_are_independent_of_arrival_order(
        n_feeds in 2usize..5,
        specs in prop::collection::vec(op_spec(), 1..50),
        seed in 1u64..u64::MAX,
    ) {
        let (feeds, model, deleted) = build_with_deleted(n_feeds, &specs);
        let mut rng = XorShift(seed);

        let dir1 = tempfile::tempdir().unwrap();
        let db1 = create_db(dir1.path(), 1);
        deliver(&db1, &interleave(&feeds, &mut rng), &mut rng);
        let ix1 = fold(&db1, 1);

        // Folding as entries arrive: deletions reach views that folded
        // their targets long before.
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = create_db(dir2.path(), 2);
        let ix2 = fold(&db2, 7);
        let mixed = interleave(&feeds, &mut rng);
        for part in mixed.chunks(1 + rng.below(6)) {
            deliver(&db2, part, &mut rng);
            ix2.catch_up().unwrap();
        }

        // Canonical order: feed by feed, sorted by feed id.
        let mut sorted = feeds.clone();
        sorted.sort_by_key(|f| f.first().map(|e| e.header.author));
        let canonical: Vec<Entry> = sorted.into_iter().flatten().collect();
        let dir3 = tempfile::tempdir().unwrap();
        let db3 = create_db(dir3.path(), 3);
        db3.ingest(canonical).unwrap();
        let ix3 = fold(&db3, 5000);

        // A late joiner: deleted entries arrive erased, never folded.
        let dir4 = tempfile::tempdir().unwrap();
        let db4 = create_db(dir4.path(), 4);
        deliver(&db4, &interleave(&erased(&feeds, &deleted), &mut rng), &mut rng);
        let ix4 = fold(&db4, 3);

        let d1 = digests(&ix1);
        prop_assert_eq!(d1.len(), 5);
        let notes = ix1.search_doc_count("text").unwrap();
        for ix in [&ix2, &ix3, &ix4] {
            prop_assert_eq!(notes, ix.search_doc_count("text").unwrap());
        }
        prop_assert_eq!(&d1, &digests(&ix2));
        prop_assert_eq!(&d1, &digests(&ix3));
        prop_assert_eq!(&d1, &digests(&ix4));
        // A rebuild reads the log with the deleted payloads erased.
        for name in ix2.view_names() {
            ix2.rebuild(&name, &mut |_, _| {}).unwrap();
        }
        prop_assert_eq!(&d1, &digests(&ix2));
        prop_assert_eq!(notes, ix2.search_doc_count("text").unwrap());

        let keys: BTreeMap<String, ()> = model.iter().map(|o| (o.key.clone(), ())).collect();
        for ix in [&ix1, &ix2] {
            let kv = ix.kv().unwrap();
            for key in keys.keys() {
                prop_assert_eq!(kv.get(key).unwrap(), model_get(&model, key), "key {}", key);
            }
        }
    }
}

/// Batches of thousands of ops take the kv view's two-thread path; batches
/// of one do not. Both must give the same state, and the model's answers.
#[test]
fn kv_parallel_fold_matches_sequential_fold() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let specs: Vec<OpSpec> = (0..1500)
        .map(|_| OpSpec {
            feed: rng.below(3),
            kind: rng.below(8) as u8,
            key: rng.below(40) as u8,
            timestamp: rng.below(200) as u64,
            links: (0..rng.below(3)).map(|_| rng.below(1500)).collect(),
        })
        .collect();
    let (feeds, model) = build(3, &specs);

    let dir1 = tempfile::tempdir().unwrap();
    let db1 = create_db(dir1.path(), 1);
    deliver(&db1, &interleave(&feeds, &mut rng), &mut rng);
    let ix1 = fold(&db1, 1);

    let dir2 = tempfile::tempdir().unwrap();
    let db2 = create_db(dir2.path(), 2);
    db2.ingest(interleave(&feeds, &mut rng)).unwrap();
    let ix2 = fold(&db2, 5000);

    assert_eq!(digests(&ix1), digests(&ix2));
    let kv = ix2.kv().unwrap();
    for k in 0..40 {
        let key = format!("k{k}");
        assert_eq!(kv.get(&key).unwrap(), model_get(&model, &key), "key {key}");
    }
}
