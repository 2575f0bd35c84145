//! The sled feed index: derived state that finds entries in the log.
//!
//! One sled tree, `feeds`, so that every change commits in one atomic
//! `apply_batch` together with the checkpoint that says how far the index
//! has read the log:
//!
//! ```text
//! "c"                      -> Checkpoint { next_offset, records, entries }
//! "s" | feed (32) | seq BE -> offset (u64 BE)
//! "h" | feed (32)          -> Head { seq, id, offset, timestamp }
//! "f" | feed (32)          -> ForkInfo { seq, proof_offset }
//! ```
//!
//! All of it can be deleted and rebuilt by folding the log from offset 0;
//! on open it catches up from its checkpoint to the log's end.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::entry::EntryId;
use crate::error::StoreError;
use crate::keys::FeedId;
use crate::log::{LogRecord, RecordBody};

/// Name of the sled tree holding the feed index.
pub const TREE: &str = "feeds";

/// The newest entry of a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq (the feed's length).
    pub seq: u64,
    /// Its id.
    pub id: EntryId,
    /// Its log offset.
    pub offset: u64,
    /// Its claimed timestamp.
    pub timestamp: u64,
}

/// Where a feed forked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkInfo {
    /// The seq at which two entries conflict.
    pub seq: u64,
    /// Offset of the fork proof record in the log.
    pub proof_offset: u64,
}

/// How far the index has folded the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Offset of the first record not yet indexed.
    pub next_offset: u64,
    /// Records indexed.
    pub records: u64,
    /// Entry records indexed.
    pub entries: u64,
}

/// In-memory mirror of the index's small parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexState {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) heads: HashMap<FeedId, Head>,
    pub(crate) forks: HashMap<FeedId, ForkInfo>,
}

/// Pending index changes, committed in one batch.
#[derive(Default)]
pub(crate) struct IndexBatch {
    seqs: Vec<(FeedId, u64, u64)>,
    heads: HashMap<FeedId, Head>,
    forks: HashMap<FeedId, ForkInfo>,
}

impl IndexState {
    /// Fold one log record into the state, recording the changes in `batch`.
    pub(crate) fn apply(&mut self, record: &LogRecord, batch: &mut IndexBatch) {
        match &record.body {
            RecordBody::Entry(entry) => {
                let h = &entry.header;
                let head = self.heads.get(&h.author);
                let (expected, prev) = match head {
                    None => (1, None),
                    Some(head) => (head.seq + 1, Some(head.id)),
                };
                let forked = self.forks.get(&h.author).is_some_and(|f| h.seq >= f.seq);
                if h.seq == expected && h.prev == prev && !forked {
                    let new_head = Head {
                        seq: h.seq,
                        id: h.id(),
                        offset: record.offset,
                        timestamp: h.timestamp,
                    };
                    self.heads.insert(h.author, new_head);
                    batch.heads.insert(h.author, new_head);
                    batch.seqs.push((h.author, h.seq, record.offset));
                    self.checkpoint.entries += 1;
                } else {
                    // Never written by this crate; `verify` names it.
                    tracing::warn!(
                        offset = record.offset,
                        feed = %h.author.fmt_short(),
                        seq = h.seq,
                        "log record does not extend its feed; not indexed"
                    );
                }
            }
            RecordBody::Fork(proof) => {
                let author = proof.author();
                let keep_old = self
                    .forks
                    .get(&author)
                    .is_some_and(|f| f.seq <= proof.seq());
                if !keep_old {
                    let info = ForkInfo {
                        seq: proof.seq(),
                        proof_offset: record.offset,
                    };
                    self.forks.insert(author, info);
                    batch.forks.insert(author, info);
                }
            }
        }
        self.checkpoint.records += 1;
        self.checkpoint.next_offset = record.next_offset;
    }
}

fn seq_key(feed: &FeedId, seq: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = b's';
    key[1..33].copy_from_slice(&feed.0);
    key[33..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn feed_key(prefix: u8, feed: &FeedId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = prefix;
    key[1..].copy_from_slice(&feed.0);
    key
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::IndexDamaged(what))
}

fn feed_from_key(key: &[u8]) -> Result<FeedId, StoreError> {
    let bytes: [u8; 32] = key
        .get(1..33)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::IndexDamaged("short key"))?;
    Ok(FeedId(bytes))
}

/// The sled tree and its codec.
#[derive(Clone, Debug)]
pub(crate) struct Index {
    tree: sled::Tree,
}

impl Index {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Load the checkpoint, heads and forks.
    pub(crate) fn load(&self) -> Result<IndexState, StoreError> {
        let mut state = IndexState::default();
        if let Some(c) = self.tree.get(b"c")? {
            state.checkpoint = decode(&c, "checkpoint")?;
        }
        for item in self.tree.scan_prefix(b"h") {
            let (k, v) = item?;
            state.heads.insert(feed_from_key(&k)?, decode(&v, "head")?);
        }
        for item in self.tree.scan_prefix(b"f") {
            let (k, v) = item?;
            state.forks.insert(feed_from_key(&k)?, decode(&v, "fork")?);
        }
        Ok(state)
    }

    /// Commit a batch of changes together with the new checkpoint.
    pub(crate) fn commit(
        &self,
        batch: IndexBatch,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (feed, seq, offset) in batch.seqs {
            b.insert(&seq_key(&feed, seq)[..], &offset.to_be_bytes()[..]);
        }
        for (feed, head) in batch.heads {
            b.insert(
                &feed_key(b'h', &feed)[..],
                postcard::to_stdvec(&head).unwrap_or_default(),
            );
        }
        for (feed, fork) in batch.forks {
            b.insert(
                &feed_key(b'f', &feed)[..],
                postcard::to_stdvec(&fork).unwrap_or_default(),
            );
        }
        b.insert(b"c", postcard::to_stdvec(checkpoint).unwrap_or_default());
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// The log offset of `feed`'s entry at `seq`.
    pub(crate) fn offset_of(&self, feed: &FeedId, seq: u64) -> Result<Option<u64>, StoreError> {
        match self.tree.get(seq_key(feed, seq))? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::IndexDamaged("offset"))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }

    /// Offsets of `feed`'s entries with `from <= seq <= to`, in seq order.
    pub(crate) fn range(
        &self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, u64), StoreError>> + use<> {
        let lo = seq_key(feed, from);
        let hi = seq_key(feed, to);
        self.tree.range(lo..=hi).map(|item| {
            let (k, v) = item?;
            let seq_bytes: [u8; 8] = k
                .get(33..41)
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::IndexDamaged("seq key"))?;
            let off: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::IndexDamaged("offset"))?;
            Ok((u64::from_be_bytes(seq_bytes), u64::from_be_bytes(off)))
        })
    }

    /// Remove everything (before a rebuild).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        Ok(())
    }
}
