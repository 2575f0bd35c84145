//! The `timeline` view: every entry with a payload, ordered by
//! `(timestamp, author, seq)`, with an index by payload `"type"` so that
//! type-filtered range queries stay range scans.
//!
//! Keys (in the view's key space), as slot buckets (module `slot`: an
//! author's entries of one 65.536 s slot, up to 64 per key, with their
//! timestamps):
//!
//! ```text
//! 'e' | bucket                    -> block    every entry with a payload
//! 't' | escaped(type) | bucket    -> block    entries whose payload has a string "type"
//! 'u' | author | seq / 64 BE      -> undo     each entry's timestamp and type (module `undo`)
//! bucket = timestamp >> 16 BE | author | seq / 64 BE
//! ```
//!
//! A query scans the slots of its time range in order and sorts each
//! slot's entries before handing them out, so results come in
//! `(timestamp, author, seq)` order (or the reverse) although keys within
//! a slot sort by author.
//!
//! A deletion (or a forget marker) takes the deleted entries' bits out of
//! their buckets, found through their undo records; a deletion naming an
//! entry the timeline never held does nothing. Deletions themselves are
//! not timeline entries.
//!
//! An author filter scans the same ranges and skips other authors' buckets
//! (the author is in the key, so nothing else is read); a per-author index
//! would cost half as many writes again on every batch. Nothing local (such
//! as a log offset) is stored, so two peers holding the same entries hold
//! the same timeline. Query results read each entry back from the log
//! through the feed index.
//!
//! Version 1 stored one key per entry and index; version 2 stores buckets;
//! version 3 keeps undo records and honours deletions; version 4 buckets by
//! slot rather than by millisecond (a feed writing at most once a
//! millisecond cost two sled keys per entry).

use kappadb_core::{Db, EntryId, FeedId};

use serde::{Deserialize, Serialize};

use crate::encoding::{prefix_end, put_escaped};
use crate::error::ViewError;
use crate::slot::{self, SlotMerge, SlotWriter};
use crate::undo::UndoBatch;
use crate::view::{View, ViewReader, ViewRecord, ViewTx};

/// The timeline view's name.
pub const NAME: &str = "timeline";
/// The timeline view's version.
pub const VERSION: u32 = 4;

const BY_TIME: u8 = b'e';
const BY_TYPE: u8 = b't';
const UNDO: &[u8] = b"u";

/// What the timeline keeps to undo an entry. Field order is part of the
/// view's format.
#[derive(Serialize, Deserialize)]
struct Undo {
    timestamp: u64,
    kind: Option<String>,
}

/// The built-in `timeline` view.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimelineView;

/// The payload's `"type"`, if it is a JSON object with a string type.
fn payload_kind(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(value.get("type")?.as_str()?.to_string())
}

impl View for TimelineView {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn describe(&self) -> String {
        "every entry by (timestamp, author, seq), by type and by author".to_string()
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        let mut buckets = SlotWriter::default();
        let mut undo = UndoBatch::new(UNDO);
        let mut prefix = Vec::new();
        let mut type_prefix = |kind: &str| {
            prefix.clear();
            prefix.push(BY_TYPE);
            put_escaped(&mut prefix, kind.as_bytes());
            prefix.clone()
        };
        for r in batch {
            let undone = if let Some(d) = r.deleted() {
                let mut undone = Vec::new();
                for &seq in d.seqs() {
                    if let Some(data) = undo.take(tx, &r.author, seq)? {
                        undone.push((seq, data));
                    }
                }
                if let Some(up_to) = d.up_to() {
                    undone.extend(undo.take_up_to(tx, &r.author, Some(up_to))?);
                }
                undone
            } else if r.forgets() {
                undo.take_up_to(tx, &r.author, None)?
            } else if r.identity_op().is_some() {
                // Identity ops are not application entries.
                tx.skip();
                continue;
            } else {
                let kind = r.kind();
                buckets.add(&[BY_TIME], r.timestamp, &r.author, r.seq);
                if let Some(kind) = kind {
                    buckets.add(&type_prefix(kind), r.timestamp, &r.author, r.seq);
                }
                let data = Undo {
                    timestamp: r.timestamp,
                    kind: kind.map(str::to_string),
                };
                undo.put(tx, &r.author, r.seq, encode_undo(&data)?)?;
                continue;
            };
            for (seq, data) in undone {
                let data: Undo = postcard::from_bytes(&data)
                    .map_err(|_| ViewError::damaged(NAME, "an undo record does not decode"))?;
                buckets.remove(&[BY_TIME], data.timestamp, &r.author, seq);
                if let Some(kind) = &data.kind {
                    buckets.remove(&type_prefix(kind), data.timestamp, &r.author, seq);
                }
            }
        }
        undo.write(tx)?;
        buckets.write(tx, NAME)
    }
}

fn encode_undo(data: &Undo) -> Result<Vec<u8>, ViewError> {
    postcard::to_stdvec(data).map_err(|e| ViewError::fold(NAME, e.to_string()))
}

/// Result order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Smallest first (oldest first for the timeline).
    Ascending,
    /// Greatest first (newest first for the timeline).
    #[default]
    Descending,
}

/// A timeline query. Every filter is optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineQuery {
    /// Only entries whose payload `"type"` is this.
    pub kind: Option<String>,
    /// Only entries of this feed.
    pub author: Option<FeedId>,
    /// Only entries with `timestamp >= from` (ms).
    pub from: Option<u64>,
    /// Only entries with `timestamp <= to` (ms).
    pub to: Option<u64>,
    /// At most this many results.
    pub limit: usize,
    /// Newest first ([`Order::Descending`], the default) or oldest first.
    pub order: Order,
}

impl Default for TimelineQuery {
    fn default() -> Self {
        Self {
            kind: None,
            author: None,
            from: None,
            to: None,
            limit: 100,
            order: Order::Descending,
        }
    }
}

/// One timeline result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineItem {
    /// The entry's timestamp.
    pub timestamp: u64,
    /// Its feed.
    pub author: FeedId,
    /// Its seq.
    pub seq: u64,
    /// Its id.
    pub id: EntryId,
    /// Its payload's `"type"`, if it has one.
    pub kind: Option<String>,
    /// Its payload (`None` if it has been dropped since).
    pub payload: Option<Vec<u8>>,
}

/// Queries on the `timeline` view.
#[derive(Clone, Debug)]
pub struct TimelineReader {
    reader: ViewReader,
    db: Db,
}

impl TimelineReader {
    /// Queries over a reader of the timeline view; entries are read back
    /// from `db`.
    pub fn new(reader: ViewReader, db: Db) -> Self {
        Self { reader, db }
    }

    /// The underlying reader (checkpoint, generation).
    pub fn reader(&self) -> &ViewReader {
        &self.reader
    }

    /// Run a query.
    pub fn query(&self, q: &TimelineQuery) -> Result<Vec<TimelineItem>, ViewError> {
        self.query_inner(q, None)
    }

    /// Run a query with authors resolved to identities: entries cut off by
    /// a revocation are left out and, with `filter.identity`, only that
    /// identity's feeds are kept (`q.author` still applies).
    pub fn query_resolved(
        &self,
        q: &TimelineQuery,
        filter: &crate::identity::IdentityFilter<'_>,
    ) -> Result<Vec<TimelineItem>, ViewError> {
        self.query_inner(q, Some(filter))
    }

    fn query_inner(
        &self,
        q: &TimelineQuery,
        filter: Option<&crate::identity::IdentityFilter<'_>>,
    ) -> Result<Vec<TimelineItem>, ViewError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let from = q.from.unwrap_or(0);
        let to = q.to.unwrap_or(u64::MAX);
        if from > to {
            return Ok(Vec::new());
        }
        let prefix = match &q.kind {
            Some(kind) => {
                let mut p = vec![BY_TYPE];
                put_escaped(&mut p, kind.as_bytes());
                p
            }
            None => vec![BY_TIME],
        };
        let mut lo = prefix.clone();
        lo.extend_from_slice(&slot::slot_of(from).to_be_bytes());
        let hi = match slot::slot_of(to).checked_add(1) {
            Some(s) => {
                let mut hi = prefix.clone();
                hi.extend_from_slice(&s.to_be_bytes());
                Some(hi)
            }
            None => prefix_end(&prefix),
        };
        let scan = self.reader.range(&lo, hi.as_deref());
        let descending = q.order == Order::Descending;
        let mut scan: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(scan.rev())
        } else {
            Box::new(scan)
        };
        let damaged = || ViewError::damaged(NAME, "a timeline bucket does not decode");
        let mut merge = SlotMerge::default();
        let mut out = Vec::new();
        loop {
            let (gathered, last) = match scan.next() {
                Some(item) => {
                    let (k, v) = item?;
                    let key = k.get(prefix.len()..).ok_or_else(damaged)?;
                    let (slot_idx, author) = slot::key_slot_author(key).ok_or_else(damaged)?;
                    if q.author.is_some_and(|a| a != author) {
                        continue;
                    }
                    let block = slot::entries(key, &v).ok_or_else(damaged)?;
                    let block = block.filter(|&(timestamp, author, seq)| {
                        (from..=to).contains(&timestamp)
                            && filter.is_none_or(|f| f.admits(&author, seq))
                    });
                    match merge.push(slot_idx, block) {
                        Some(gathered) => (gathered, false),
                        None => continue,
                    }
                }
                None => (merge.finish(), true),
            };
            // Order only as many as are still wanted; the others only if
            // some of those are missing from the feed index.
            let (first, rest) = slot::best(gathered, q.limit - out.len(), descending);
            if self.push_items(q, first, &mut out)? {
                return Ok(out);
            }
            if !rest.is_empty() {
                let (rest, _) = slot::best(rest, usize::MAX, descending);
                if self.push_items(q, rest, &mut out)? {
                    return Ok(out);
                }
            }
            if last {
                break;
            }
        }
        Ok(out)
    }

    /// Read `entries` back and add them to `out`; whether `out` reached
    /// the query's limit.
    fn push_items(
        &self,
        q: &TimelineQuery,
        entries: Vec<slot::SlotEntry>,
        out: &mut Vec<TimelineItem>,
    ) -> Result<bool, ViewError> {
        for (timestamp, author, seq) in entries {
            let Some(entry) = self.db.get(&author, seq)? else {
                tracing::warn!(author = %author.fmt_short(), seq, "timeline names an entry the feed index does not hold");
                continue;
            };
            let kind = match &q.kind {
                Some(k) => Some(k.clone()),
                None => entry.payload.bytes().and_then(payload_kind),
            };
            out.push(TimelineItem {
                timestamp,
                author,
                seq,
                id: entry.id(),
                kind,
                payload: entry.payload.into_bytes(),
            });
            if out.len() >= q.limit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
