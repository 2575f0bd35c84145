//! Undo records: what a view keeps about each entry it folded so that it
//! can undo the entry when its author deletes it (or this node forgets its
//! feed), and end up exactly as if it had never folded it.
//!
//! Kept in the view's own key space under a prefix the view chooses, 64
//! seqs of one author per key (a sled key per entry would cost several
//! microseconds each):
//!
//! ```text
//! prefix | author (32) | seq / 64 BE (8)  ->  postcard(Vec<(seq % 64: u8, data: bytes)>)
//! ```
//!
//! sorted by `seq % 64`, so the bytes depend only on the set of entries
//! the view holds undo data for. A view reads and changes them through an
//! [`UndoBatch`] per fold batch (each bucket read once, written once):
//!
//! ```
//! use kappadb_views::undo::UndoBatch;
//! # use kappadb_views::{ViewError, ViewTx};
//! # fn fold(tx: &mut ViewTx<'_>, author: kappadb_core::FeedId) -> Result<(), ViewError> {
//! let mut undo = UndoBatch::new(b"u");
//! undo.put(tx, &author, 7, b"what seq 7 changed".to_vec())?;
//! // ... later, a deletion of seq 7 arrives:
//! if let Some(data) = undo.take(tx, &author, 7)? {
//!     // undo what `data` says
//! #   let _ = data;
//! }
//! undo.write(tx)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use kappadb_core::FeedId;

use crate::error::ViewError;
use crate::view::ViewTx;

/// Seqs per undo bucket.
const SPAN: u64 = 64;

type Bucket = BTreeMap<u8, Vec<u8>>;

/// The undo records a fold batch reads and changes, under one prefix.
#[derive(Debug)]
pub struct UndoBatch {
    prefix: Vec<u8>,
    /// Buckets touched in this batch: (author, seq / 64) -> content (empty
    /// = remove), and whether it changed.
    buckets: BTreeMap<(FeedId, u64), (Bucket, bool)>,
}

fn bucket_key(prefix: &[u8], author: &FeedId, block: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 40);
    key.extend_from_slice(prefix);
    key.extend_from_slice(author.as_bytes());
    key.extend_from_slice(&block.to_be_bytes());
    key
}

fn decode(value: &[u8]) -> Result<Bucket, ViewError> {
    let items: Vec<(u8, Vec<u8>)> = postcard::from_bytes(value)
        .map_err(|_| ViewError::damaged("undo", "an undo bucket does not decode"))?;
    Ok(items.into_iter().collect())
}

impl UndoBatch {
    /// Undo records under `prefix` (a prefix of the view's choosing that
    /// nothing else of the view uses).
    pub fn new(prefix: &[u8]) -> Self {
        Self {
            prefix: prefix.to_vec(),
            buckets: BTreeMap::new(),
        }
    }

    fn bucket(
        &mut self,
        tx: &ViewTx<'_>,
        author: &FeedId,
        block: u64,
    ) -> Result<&mut (Bucket, bool), ViewError> {
        if !self.buckets.contains_key(&(*author, block)) {
            let stored = match tx.get(&bucket_key(&self.prefix, author, block))? {
                Some(v) => decode(&v)?,
                None => Bucket::new(),
            };
            self.buckets.insert((*author, block), (stored, false));
        }
        self.buckets
            .get_mut(&(*author, block))
            .ok_or_else(|| ViewError::fold("undo", "an undo bucket went missing"))
    }

    /// Keep `data` for the entry of `author` at `seq` (replacing what was
    /// kept).
    pub fn put(
        &mut self,
        tx: &ViewTx<'_>,
        author: &FeedId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), ViewError> {
        let (bucket, changed) = self.bucket(tx, author, seq / SPAN)?;
        bucket.insert((seq % SPAN) as u8, data);
        *changed = true;
        Ok(())
    }

    /// Take what was kept for the entry of `author` at `seq`, if anything.
    pub fn take(
        &mut self,
        tx: &ViewTx<'_>,
        author: &FeedId,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, ViewError> {
        let (bucket, changed) = self.bucket(tx, author, seq / SPAN)?;
        let data = bucket.remove(&((seq % SPAN) as u8));
        *changed |= data.is_some();
        Ok(data)
    }

    /// Take everything kept for `author`'s entries with `seq <= up_to`
    /// (every entry when `up_to` is `None`), in seq order.
    pub fn take_up_to(
        &mut self,
        tx: &ViewTx<'_>,
        author: &FeedId,
        up_to: Option<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, ViewError> {
        let mut prefix = self.prefix.clone();
        prefix.extend_from_slice(author.as_bytes());
        let mut blocks: Vec<u64> = Vec::new();
        for (key, _) in tx.scan_prefix(&prefix)? {
            let block: [u8; 8] = key
                .get(prefix.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ViewError::damaged("undo", "an undo key does not decode"))?;
            blocks.push(u64::from_be_bytes(block));
        }
        // Buckets filled in this batch and not written yet.
        blocks.extend(
            self.buckets
                .keys()
                .filter(|(a, _)| a == author)
                .map(|(_, b)| *b),
        );
        blocks.sort_unstable();
        blocks.dedup();
        let mut out = Vec::new();
        for block in blocks {
            if up_to.is_some_and(|u| block * SPAN > u) {
                break;
            }
            let (bucket, changed) = self.bucket(tx, author, block)?;
            let low: Vec<u8> = bucket
                .keys()
                .copied()
                .filter(|l| up_to.is_none_or(|u| block * SPAN + u64::from(*l) <= u))
                .collect();
            for l in low {
                if let Some(data) = bucket.remove(&l) {
                    *changed = true;
                    out.push((block * SPAN + u64::from(l), data));
                }
            }
        }
        Ok(out)
    }

    /// Write the buckets that changed.
    pub fn write(self, tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        for ((author, block), (bucket, changed)) in self.buckets {
            if !changed {
                continue;
            }
            let key = bucket_key(&self.prefix, &author, block);
            if bucket.is_empty() {
                tx.remove(&key);
            } else {
                let items: Vec<(u8, Vec<u8>)> = bucket.into_iter().collect();
                let bytes = postcard::to_stdvec(&items)
                    .map_err(|e| ViewError::fold("undo", e.to_string()))?;
                tx.insert(&key, bytes);
            }
        }
        Ok(())
    }
}
