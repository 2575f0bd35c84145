//! Helpers shared by the integration tests: databases in temp dirs,
//! indexers without a background thread, payload builders.
#![allow(dead_code)]

use std::path::Path;

use kappadb_core::{CreateOptions, Db, Entry, SigningKey};
use kappadb_views::{Indexer, IndexerConfig};
use serde_json::{Value, json};

/// A fresh database in `dir` with a key derived from `seed`.
pub fn create_db(dir: &Path, seed: u8) -> Db {
    Db::create(
        dir,
        CreateOptions {
            signing_key: Some(SigningKey::from_seed([seed; 32])),
            ..Default::default()
        },
    )
    .unwrap()
}

/// An indexer with the built-in views, no background thread, small batches.
pub fn indexer(db: &Db, batch_records: usize) -> Indexer {
    Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            batch_records,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A kv put payload.
pub fn put(key: &str, value: Value, links: &[&Entry]) -> Vec<u8> {
    let links: Vec<_> = links.iter().map(|e| e.id()).collect();
    kappadb_views::kv::put_payload(key, &value, &links)
}

/// A kv delete payload.
pub fn del(key: &str, links: &[&Entry]) -> Vec<u8> {
    let links: Vec<_> = links.iter().map(|e| e.id()).collect();
    kappadb_views::kv::del_payload(key, &links)
}

/// A payload of some other type.
pub fn note(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "note", "text": text})).unwrap()
}

/// Ingest entries one by one (each its own batch).
pub fn ingest_each(db: &Db, entries: &[Entry]) {
    for e in entries {
        let report = db.ingest(vec![e.clone()]).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
}

/// Digests of every registered view, by name.
pub fn digests(indexer: &Indexer) -> Vec<(String, String)> {
    indexer
        .view_names()
        .into_iter()
        .map(|name| {
            let d = indexer.digest(&name).unwrap();
            (name, d.to_hex())
        })
        .collect()
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kappadb_views::{View, ViewError, ViewRecord, ViewTx};

/// A custom view that counts, read-modify-write, the records it folds (so
/// a batch folded twice would show), and counts its `apply` calls' records
/// in memory.
pub struct CountingView {
    pub version: u32,
    pub applied: Arc<AtomicU64>,
}

impl CountingView {
    pub fn new(version: u32) -> (Self, Arc<AtomicU64>) {
        let applied = Arc::new(AtomicU64::new(0));
        (
            Self {
                version,
                applied: applied.clone(),
            },
            applied,
        )
    }
}

impl View for CountingView {
    fn name(&self) -> &str {
        "counting"
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        self.applied.fetch_add(batch.len() as u64, Ordering::SeqCst);
        for r in batch {
            let n = read_count(tx.get(b"count")?.as_deref());
            tx.insert(b"count", (n + 1).to_be_bytes().to_vec());
            let mut key = b"r".to_vec();
            key.extend_from_slice(r.author.as_bytes());
            key.extend_from_slice(&r.seq.to_be_bytes());
            tx.insert(key, r.payload.len().to_be_bytes().to_vec());
        }
        Ok(())
    }
}

/// Decode the counting view's counter.
pub fn read_count(bytes: Option<&[u8]>) -> u64 {
    bytes.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
}

/// The counting view's stored counter.
pub fn stored_count(indexer: &Indexer) -> u64 {
    read_count(
        indexer
            .reader("counting")
            .unwrap()
            .get(b"count")
            .unwrap()
            .as_deref(),
    )
}

/// Entries of a few feeds with mixed payloads, in seq order per feed.
pub fn mixed_entries(n_feeds: u64, per_feed: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    for f in 0..n_feeds {
        let mut peer = kappadb_core::test_utils::TestPeer::new(1000 + f);
        for i in 0..per_feed {
            let ts = 1_000 + (i as u64 * 7 + f * 3) % 50;
            let payload = match i % 5 {
                0 | 1 => put(&format!("k{}", i % 13), json!({"i": i, "f": f}), &[]),
                2 => del(&format!("k{}", i % 13), &[]),
                3 => serde_json::to_vec(
                    &json!({"type": "chat", "user": format!("u{}", i % 4), "n": i}),
                )
                .unwrap(),
                _ => format!("raw {i}").into_bytes(),
            };
            out.push(peer.make(ts, payload));
        }
    }
    out
}
