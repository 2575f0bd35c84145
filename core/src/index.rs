//! The sled feed index: derived state that finds entries in the log.
//!
//! One sled tree, `feeds`, so that every change commits in one atomic
//! `apply_batch` together with the checkpoint that says how far the index
//! has read the log:
//!
//! ```text
//! "v"                            -> INDEX_VERSION (u32 BE): another version is rebuilt
//! "c"                            -> Checkpoint { next_offset, records, entries }
//! "s" | feed (32) | first_seq BE -> Run { first_seq, offset, count, bytes }
//! "h" | feed (32)                -> (Head { seq, id, offset, timestamp }, Run)
//! "f" | feed (32)                -> ForkInfo { seq, proof_offset }
//! "e" | feed (32)                -> Erased { entries, bytes }   entries of the feed erased
//! "g" | segment start BE         -> live bytes: what the segment would keep if compacted
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

/// The layout version of the feed index. An index of another version (or
/// none) is rebuilt from the log on open: it is derived state.
pub(crate) const INDEX_VERSION: u32 = 2;

/// Bytes a record keeps after compaction beyond its body: the compacted
/// frame (length, checksum, logical offset, logical length).
pub(crate) const COMPACT_FRAME_LEN: u64 = 20;

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

/// A feed's erased entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    /// How many.
    pub entries: u64,
    /// Their payload bytes (as the headers say).
    pub bytes: u64,
    /// The feed's highest prune point applied so far: every entry up to it
    /// is erased (or a deletion).
    pub pruned_to: u64,
}

/// In-memory mirror of the index's small parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexState {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) heads: HashMap<FeedId, Head>,
    /// Each feed's newest run, which the next entry may extend.
    pub(crate) runs: HashMap<FeedId, Run>,
    pub(crate) forks: HashMap<FeedId, ForkInfo>,
    pub(crate) erased: HashMap<FeedId, Erased>,
    /// Per segment (by start offset): the bytes it would keep if compacted.
    pub(crate) live: BTreeMap<u64, u64>,
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
    erased: HashMap<FeedId, Erased>,
    live: BTreeMap<u64, u64>,
    /// Feeds forgotten: every key of theirs is removed (before this batch's
    /// other changes are written).
    forgotten: Vec<FeedId>,
}

impl IndexBatch {
    /// True when there is nothing to commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.heads.is_empty()
            && self.forks.is_empty()
            && self.erased.is_empty()
            && self.live.is_empty()
            && self.forgotten.is_empty()
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

/// The bytes a record keeps after compaction: its compacted frame and its
/// body without an erased payload's room.
pub(crate) fn live_len(record: &LogRecord) -> u64 {
    let len = record.next_offset - record.offset - crate::log::FRAME_LEN;
    let room = match &record.body {
        RecordBody::Entry(e) if e.payload.is_erased() => {
            // kind, header length, header, signature, payload flag
            let fixed = 1 + 2 + e.header.encode().len() as u64 + 64 + 1;
            len.saturating_sub(fixed)
        }
        _ => 0,
    };
    COMPACT_FRAME_LEN + len - room
}

impl IndexState {
    /// Fold one log record, in segment `segment` (its start offset), into
    /// the state, recording the changes in `batch`.
    pub(crate) fn apply(&mut self, record: &LogRecord, segment: u64, batch: &mut IndexBatch) {
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
                    if entry.payload.is_erased() {
                        self.note_erased(h.author, u64::from(h.payload_len), batch);
                    }
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
            RecordBody::Forget(feed) => self.forget(*feed, batch),
        }
        self.add_live(segment, live_len(record) as i64, batch);
        self.checkpoint.records += 1;
        self.checkpoint.next_offset = record.next_offset;
    }

    /// Count an entry of `feed` (of `bytes` payload bytes) as erased.
    pub(crate) fn note_erased(&mut self, feed: FeedId, bytes: u64, batch: &mut IndexBatch) {
        let e = self.erased.entry(feed).or_default();
        e.entries += 1;
        e.bytes += bytes;
        batch.erased.insert(feed, *e);
    }

    /// Record that `feed` is pruned up to `up_to`.
    pub(crate) fn set_pruned(&mut self, feed: FeedId, up_to: u64, batch: &mut IndexBatch) {
        let e = self.erased.entry(feed).or_default();
        e.pruned_to = e.pruned_to.max(up_to);
        batch.erased.insert(feed, *e);
    }

    /// Change segment `segment`'s live bytes by `delta`.
    pub(crate) fn add_live(&mut self, segment: u64, delta: i64, batch: &mut IndexBatch) {
        let live = self.live.entry(segment).or_default();
        *live = live.saturating_add_signed(delta);
        batch.live.insert(segment, *live);
    }

    /// Drop everything the index knows of `feed`.
    fn forget(&mut self, feed: FeedId, batch: &mut IndexBatch) {
        // A feed is held from seq 1 to its head, and has at most one fork
        // proof: that many records are gone.
        let entries = self.heads.get(&feed).map_or(0, |h| h.seq);
        let proofs = u64::from(self.forks.contains_key(&feed));
        self.checkpoint.entries = self.checkpoint.entries.saturating_sub(entries);
        self.checkpoint.records = self.checkpoint.records.saturating_sub(entries + proofs);
        self.heads.remove(&feed);
        self.runs.remove(&feed);
        self.forks.remove(&feed);
        self.erased.remove(&feed);
        batch.runs.retain(|(f, _), _| *f != feed);
        batch.heads.remove(&feed);
        batch.forks.remove(&feed);
        batch.erased.remove(&feed);
        // Pending changes of readers' copies go too.
        self.pending.runs.retain(|(f, _), _| *f != feed);
        self.pending.heads.remove(&feed);
        self.pending.forks.remove(&feed);
        self.pending.erased.remove(&feed);
        batch.forgotten.push(feed);
    }

    /// Erased entries and their bytes, over every feed.
    pub(crate) fn erased_total(&self) -> Erased {
        self.erased.values().fold(Erased::default(), |a, e| Erased {
            entries: a.entries + e.entries,
            bytes: a.bytes + e.bytes,
            pruned_to: 0,
        })
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

    /// Whether the stored index has this build's layout (an empty one
    /// counts as current).
    pub(crate) fn is_current(&self) -> Result<bool, StoreError> {
        match self.tree.get(b"v")? {
            Some(v) => Ok(v.as_ref() == INDEX_VERSION.to_be_bytes()),
            None => Ok(self.tree.is_empty()),
        }
    }

    /// Load the checkpoint, heads, forks and space counters.
    pub(crate) fn load(&self) -> Result<IndexState, StoreError> {
        let mut state = IndexState::default();
        if let Some(c) = self.tree.get(b"c")? {
            state.checkpoint = decode(&c, "checkpoint")?;
        }
        for item in self.tree.scan_prefix(b"e") {
            let (k, v) = item?;
            state
                .erased
                .insert(feed_from_key(&k)?, decode(&v, "erased")?);
        }
        for item in self.tree.scan_prefix(b"g") {
            let (k, v) = item?;
            let start: [u8; 8] = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::IndexDamaged("short segment key"))?;
            state
                .live
                .insert(u64::from_be_bytes(start), decode(&v, "live bytes")?);
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
        batch: &IndexBatch,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for feed in &batch.forgotten {
            for prefix in [b's', b'h', b'f', b'e'] {
                for item in self.tree.scan_prefix(feed_key(prefix, feed)) {
                    b.remove(item?.0);
                }
            }
        }
        for (feed, erased) in &batch.erased {
            b.insert(
                &feed_key(b'e', feed)[..],
                postcard::to_stdvec(erased).unwrap_or_default(),
            );
        }
        for (start, live) in &batch.live {
            let mut key = vec![b'g'];
            key.extend_from_slice(&start.to_be_bytes());
            b.insert(key, postcard::to_stdvec(live).unwrap_or_default());
        }
        for ((feed, first_seq), run) in &batch.runs {
            b.insert(
                &seq_key(feed, *first_seq)[..],
                postcard::to_stdvec(run).unwrap_or_default(),
            );
        }
        for (feed, head) in &batch.heads {
            b.insert(
                &feed_key(b'h', feed)[..],
                postcard::to_stdvec(head).unwrap_or_default(),
            );
        }
        for (feed, fork) in &batch.forks {
            b.insert(
                &feed_key(b'f', feed)[..],
                postcard::to_stdvec(fork).unwrap_or_default(),
            );
        }
        b.insert(b"c", postcard::to_stdvec(checkpoint).unwrap_or_default());
        b.insert(b"v", &INDEX_VERSION.to_be_bytes()[..]);
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
