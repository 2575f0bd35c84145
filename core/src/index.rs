//! The sled feed index: derived state that finds entries in the log.
//!
//! One sled tree, `feeds`, so that every change commits in one atomic
//! `apply_batch` together with the checkpoint that says how far the index
//! has read the log:
//!
//! ```text
//! "c"                            -> Checkpoint { next_offset, records, entries }
//! "s" | feed (32) | first_seq BE -> Run { first_seq, offset, count, bytes }
//! "h" | feed (32)                -> (Head { seq, id, offset, timestamp }, Run)
//! "f" | feed (32)                -> ForkInfo { seq, proof_offset }
//! ```
//!
//! A *run* is a stretch of one feed's consecutive entries that sit back to
//! back in the log (a batch appended or ingested together), at most
//! [`RUN_MAX_COUNT`] entries and [`RUN_MAX_BYTES`] bytes. Indexing runs
//! instead of single entries keeps the index small and its writes few; an
//! entry is found by its run and then by skipping frame headers.
//!
//! All of it can be deleted and rebuilt by folding the log from offset 0;
//! on open it catches up from its checkpoint to the log's end.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::entry::EntryId;
use crate::error::StoreError;
use crate::keys::FeedId;
use crate::log::{LogRecord, RecordBody};

/// Name of the sled tree holding the feed index.
pub const TREE: &str = "feeds";

/// Most entries in one run.
pub const RUN_MAX_COUNT: u32 = 64;
/// Most bytes (framed records) in one run.
pub const RUN_MAX_BYTES: u32 = 256 * 1024;

/// Consecutive entries of one feed stored back to back in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Seq of the first entry.
    pub first_seq: u64,
    /// Log offset of the first entry.
    pub offset: u64,
    /// Entries in the run.
    pub count: u32,
    /// Framed bytes of the run.
    pub bytes: u32,
}

impl Run {
    /// Offset just past the run.
    pub fn end_offset(&self) -> u64 {
        self.offset + u64::from(self.bytes)
    }

    /// Does the run hold `seq`?
    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq - self.first_seq < u64::from(self.count)
    }
}

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
    /// Each feed's newest run, which the next entry may extend.
    pub(crate) runs: HashMap<FeedId, Run>,
    pub(crate) forks: HashMap<FeedId, ForkInfo>,
    /// Changes folded in here but not yet committed to sled, and how many
    /// records they cover. Readers look here before sled.
    pub(crate) pending: IndexBatch,
    pub(crate) pending_records: usize,
}

/// Pending index changes, committed in one batch.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexBatch {
    runs: BTreeMap<(FeedId, u64), Run>,
    heads: HashMap<FeedId, (Head, Run)>,
    forks: HashMap<FeedId, ForkInfo>,
}

impl IndexBatch {
    /// True when there is nothing to commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.heads.is_empty() && self.forks.is_empty()
    }

    /// The pending run of `feed` that holds `seq`, if any.
    pub(crate) fn run_for(&self, feed: &FeedId, seq: u64) -> Option<Run> {
        self.runs
            .range((*feed, 0)..=(*feed, seq))
            .next_back()
            .map(|(_, r)| *r)
            .filter(|r| r.contains(seq))
    }

    /// The pending runs of `feed` whose first seq is in `from..=to`, in seq
    /// order.
    pub(crate) fn runs_between(&self, feed: &FeedId, from: u64, to: u64) -> Vec<Run> {
        if from > to {
            return Vec::new();
        }
        self.runs
            .range((*feed, from)..=(*feed, to))
            .map(|(_, r)| *r)
            .collect()
    }
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
                    let len = (record.next_offset - record.offset) as u32;
                    let run = match self.runs.get(&h.author) {
                        Some(r)
                            if r.end_offset() == record.offset
                                && r.count < RUN_MAX_COUNT
                                && r.bytes.saturating_add(len) <= RUN_MAX_BYTES =>
                        {
                            Run {
                                count: r.count + 1,
                                bytes: r.bytes + len,
                                ..*r
                            }
                        }
                        _ => Run {
                            first_seq: h.seq,
                            offset: record.offset,
                            count: 1,
                            bytes: len,
                        },
                    };
                    self.heads.insert(h.author, new_head);
                    self.runs.insert(h.author, run);
                    batch.heads.insert(h.author, (new_head, run));
                    batch.runs.insert((h.author, run.first_seq), run);
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
            let feed = feed_from_key(&k)?;
            let (head, run): (Head, Run) = decode(&v, "head")?;
            state.heads.insert(feed, head);
            state.runs.insert(feed, run);
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
        for ((feed, first_seq), run) in batch.runs {
            b.insert(
                &seq_key(&feed, first_seq)[..],
                postcard::to_stdvec(&run).unwrap_or_default(),
            );
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

    /// The run of `feed` that holds `seq`, if any.
    pub(crate) fn run_for(&self, feed: &FeedId, seq: u64) -> Result<Option<Run>, StoreError> {
        let lo = seq_key(feed, 0);
        let hi = seq_key(feed, seq);
        match self.tree.range(lo..=hi).next_back() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item?;
                let run: Run = decode(&v, "run")?;
                Ok(run.contains(seq).then_some(run))
            }
        }
    }

    /// Runs of `feed` whose first seq is in `start..=to`, in seq order.
    pub(crate) fn runs_from(
        &self,
        feed: &FeedId,
        start: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Run, StoreError>> + use<> {
        let lo = seq_key(feed, start);
        let hi = seq_key(feed, to.max(start));
        self.tree
            .range(lo..=hi)
            .map(|item| decode::<Run>(&item?.1, "run"))
    }

    /// Remove everything (before a rebuild).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        Ok(())
    }
}
