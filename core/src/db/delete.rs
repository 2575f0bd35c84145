//! Deletion and forgetting: what this peer's author may delete
//! ([`Db::delete`]), the feeds this node may forget ([`Db::forget`]), and
//! how the deletion entries and forget markers written to the log become
//! in-place edits of the records they name (`plan_edits`).
//!
//! Every record takes one path into the log (`write_records`, in
//! `write.rs`): the records are written and fsynced, then the deletions
//! and forget markers among them are planned into edits, the edits are
//! applied (journaled, fsynced), and only then is the new end published
//! and the index told. Opening a database runs the same planning over the
//! records the index has not folded yet, so a crash between the write and
//! the edits is finished on open (edits are idempotent).

use std::collections::HashMap;

use crate::entry::{EntryId, Payload};
use crate::error::{AppendError, StoreError};
use crate::index::IndexState;
use crate::keys::FeedId;
use crate::log::{Edit, LogRecord, RecordBody};
use crate::system::{DeleteTarget, Deletion, DeletionError, SystemPayload};
use crate::validate::EntryError;

use super::{Appended, Db};

/// Why [`Db::forget`] did not forget a feed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForgetError {
    /// This peer's own feed cannot be forgotten (delete its entries
    /// instead).
    #[error("this is the database's own feed; it cannot be forgotten (delete its entries instead)")]
    OwnFeed,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A deletion's part that had no effect, with why: reported by ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionIssue {
    /// The deleting feed.
    pub feed: FeedId,
    /// The deletion's seq.
    pub seq: u64,
    /// What was wrong.
    pub error: DeletionError,
}

/// The edits a batch of records calls for, and what they change.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) edits: Vec<Edit>,
    /// Per erase edit's offset: the entry's feed and payload length.
    pub(super) erasing: HashMap<u64, (FeedId, u64)>,
    /// Feeds whose prune point moved, and to where.
    pub(super) pruned: Vec<(FeedId, u64)>,
    pub(super) issues: Vec<DeletionIssue>,
}

/// An entry as planning sees it: where it is and what it holds.
struct Found {
    offset: u64,
    id: EntryId,
    payload_len: u64,
    /// Already erased, absent, or a system entry: nothing to erase.
    keep: bool,
}

impl Db {
    /// Delete entries of this peer's own feed: those at `seqs`, and every
    /// entry up to `up_to` when given. Appends one signed deletion entry,
    /// which erases the payloads here at once and on every peer that
    /// receives it (the headers and signatures stay, so the chain still
    /// verifies). Refused (nothing written) when a seq is not an earlier
    /// entry of this feed or names another deletion.
    pub fn delete(&self, seqs: &[u64], up_to: Option<u64>) -> Result<Appended, AppendError> {
        let feed = self.feed_id();
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        let mut targets = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let entry =
                self.get(&feed, seq)?
                    .ok_or(EntryError::Deletion(DeletionError::NotEarlier {
                        seq,
                        at: self.head(&feed).map_or(0, |h| h.seq) + 1,
                    }))?;
            targets.push(DeleteTarget {
                seq,
                id: entry.id(),
            });
        }
        let deletion = Deletion { targets, up_to };
        let mut out = self.append_batch(vec![deletion.encode()])?;
        out.pop().ok_or(AppendError::Store(StoreError::Poisoned))
    }

    /// [`Db::delete`] by entry id: each id must be an entry of this peer's
    /// own feed (found by scanning it).
    pub fn delete_ids(&self, ids: &[EntryId]) -> Result<Appended, AppendError> {
        let feed = self.feed_id();
        let head = self.head(&feed).map_or(0, |h| h.seq);
        let mut seqs = Vec::with_capacity(ids.len());
        let mut left: Vec<EntryId> = ids.to_vec();
        for entry in self.feed_range(&feed, 1, head) {
            let entry = entry?;
            let id = entry.id();
            if let Some(i) = left.iter().position(|x| *x == id) {
                left.swap_remove(i);
                seqs.push(entry.header.seq);
            }
            if left.is_empty() {
                break;
            }
        }
        if let Some(id) = left.first() {
            return Err(
                EntryError::Deletion(DeletionError::NotOwnEntry { seq: 0, id: *id }).into(),
            );
        }
        self.delete(&seqs, None)
    }

    /// Forget a feed: drop every record of it from the log (they become
    /// padding, which compaction gives back), remove it from the index,
    /// and write a forget marker so that views drop what they folded of
    /// it. The feed may be synced again later, from its first entry.
    /// Returns false if the feed was not known.
    pub fn forget(&self, feed: &FeedId) -> Result<bool, ForgetError> {
        if *feed == self.feed_id() {
            return Err(ForgetError::OwnFeed);
        }
        let writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned.into());
        }
        let known = {
            let state = self.state();
            state.heads.contains_key(feed) || state.forks.contains_key(feed)
        };
        if !known {
            return Ok(false);
        }
        self.write_records(writer, vec![RecordBody::Forget(*feed)])?;
        Ok(true)
    }

    /// Check the system payload at `seq` of this peer's feed before it is
    /// appended: a deletion must have its shape, and name entries of this
    /// feed that are not deletions themselves. `batch` holds the ids and
    /// payloads of the entries appended before it in the same batch (from
    /// `first_seq` on).
    pub(super) fn check_own_system_payload(
        &self,
        payload: &[u8],
        seq: u64,
        first_seq: u64,
        batch: &[(EntryId, &[u8])],
    ) -> Result<(), EntryError> {
        let deletion = match SystemPayload::parse(payload) {
            None => return Ok(()),
            Some(Err(e)) => return Err(EntryError::Deletion(e)),
            Some(Ok(SystemPayload::Deletion(d))) => d,
            // An identity op in this database's own feed (its key used as
            // an identity): the stateless rules, as at ingest.
            Some(Ok(_)) => {
                return crate::identity::check_payload(&self.feed_id(), payload)
                    .map_err(EntryError::Identity);
            }
        };
        deletion.check_shape(seq).map_err(EntryError::Deletion)?;
        let feed = self.feed_id();
        for t in &deletion.targets {
            let (id, system) = if t.seq >= first_seq {
                let (id, p) =
                    batch
                        .get((t.seq - first_seq) as usize)
                        .ok_or(EntryError::Deletion(DeletionError::NotEarlier {
                            seq: t.seq,
                            at: seq,
                        }))?;
                (*id, SystemPayload::is_system(p))
            } else {
                let entry = self
                    .get(&feed, t.seq)
                    .map_err(|_| EntryError::Malformed("cannot read the entry to delete"))?
                    .ok_or(EntryError::Deletion(DeletionError::NotEarlier {
                        seq: t.seq,
                        at: seq,
                    }))?;
                let system = entry.payload.bytes().is_some_and(SystemPayload::is_system);
                (entry.id(), system)
            };
            if id != t.id {
                return Err(EntryError::Deletion(DeletionError::NotOwnEntry {
                    seq: t.seq,
                    id: t.id,
                }));
            }
            if system {
                return Err(EntryError::Deletion(DeletionError::NotDeletable(t.seq)));
            }
        }
        Ok(())
    }

    /// The edits `records` (just written, or not yet folded by the index)
    /// call for: erasures for the deletions among them, drops for the
    /// forget markers. Must not be called with the state lock held.
    pub(super) fn plan_edits(&self, records: &[LogRecord]) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        // Entries of this batch, by (feed, seq): the index does not know
        // them yet.
        let mut here: HashMap<(FeedId, u64), &LogRecord> = HashMap::new();
        for rec in records {
            match &rec.body {
                RecordBody::Entry(e) => {
                    here.insert((e.header.author, e.header.seq), rec);
                    let Some(bytes) = e.payload.bytes() else {
                        continue;
                    };
                    let Some(parsed) = SystemPayload::parse(bytes) else {
                        continue;
                    };
                    let at = e.header.seq;
                    let issue = |error| DeletionIssue {
                        feed: e.header.author,
                        seq: at,
                        error,
                    };
                    match parsed {
                        Ok(SystemPayload::Deletion(d)) => match d.check_shape(at) {
                            Ok(()) => self.plan_deletion(e.header.author, &d, &here, &mut plan)?,
                            Err(err) => plan.issues.push(issue(err)),
                        },
                        Ok(_) => {}
                        Err(err) => plan.issues.push(issue(err)),
                    }
                }
                RecordBody::Forget(feed) => self.plan_forget(feed, &mut plan)?,
                RecordBody::Fork(_) => {}
            }
        }
        Ok(plan)
    }

    fn plan_deletion(
        &self,
        feed: FeedId,
        d: &Deletion,
        here: &HashMap<(FeedId, u64), &LogRecord>,
        plan: &mut Plan,
    ) -> Result<(), StoreError> {
        let erase = |found: Found, plan: &mut Plan| {
            if !found.keep {
                plan.edits.push(Edit::Erase(found.offset));
                plan.erasing.insert(found.offset, (feed, found.payload_len));
            }
        };
        for t in &d.targets {
            let Some(found) = self.find(feed, t.seq, here)? else {
                continue;
            };
            if found.id != t.id {
                plan.issues.push(DeletionIssue {
                    feed,
                    seq: t.seq,
                    error: DeletionError::NotOwnEntry {
                        seq: t.seq,
                        id: t.id,
                    },
                });
                continue;
            }
            erase(found, plan);
        }
        if let Some(up_to) = d.up_to {
            let done = {
                let state = self.state();
                let from_plan = plan.pruned.iter().rev().find(|(f, _)| *f == feed);
                from_plan
                    .map(|(_, s)| *s)
                    .or_else(|| state.erased.get(&feed).map(|e| e.pruned_to))
                    .unwrap_or(0)
            };
            if up_to > done {
                for seq in done + 1..=up_to {
                    if let Some(found) = self.find(feed, seq, here)? {
                        erase(found, plan);
                    }
                }
                plan.pruned.push((feed, up_to));
            }
        }
        Ok(())
    }

    fn plan_forget(&self, feed: &FeedId, plan: &mut Plan) -> Result<(), StoreError> {
        let (head, proof) = {
            let state = self.state();
            (
                state.heads.get(feed).map_or(0, |h| h.seq),
                state.forks.get(feed).map(|f| f.proof_offset),
            )
        };
        for seq in 1..=head {
            if let Some(offset) = self.offset_of(feed, seq)? {
                plan.edits.push(Edit::Drop(offset));
            }
        }
        if let Some(offset) = proof {
            plan.edits.push(Edit::Drop(offset));
        }
        Ok(())
    }

    /// The entry of `feed` at `seq`, from this batch or the log.
    fn find(
        &self,
        feed: FeedId,
        seq: u64,
        here: &HashMap<(FeedId, u64), &LogRecord>,
    ) -> Result<Option<Found>, StoreError> {
        let found = |offset: u64, e: &crate::entry::Entry| Found {
            offset,
            id: e.id(),
            payload_len: u64::from(e.header.payload_len),
            keep: match &e.payload {
                Payload::Held(b) => SystemPayload::is_system(b),
                Payload::Absent | Payload::Erased => true,
            },
        };
        if let Some(rec) = here.get(&(feed, seq)) {
            return Ok(rec.entry().map(|e| found(rec.offset, e)));
        }
        let Some(offset) = self.offset_of(&feed, seq)? else {
            return Ok(None);
        };
        Ok(self.entry_at(offset).ok().map(|e| found(offset, &e)))
    }
}

/// Apply to the index state what the applied edits changed: erased
/// entries counted, live bytes of their segments reduced, prune points
/// moved.
pub(super) fn account(
    state: &mut IndexState,
    plan: &Plan,
    applied: &[crate::log::Edited],
    segment_of: impl Fn(u64) -> u64,
    batch: &mut crate::index::IndexBatch,
) {
    for done in applied {
        match done.edit {
            Edit::Erase(offset) => {
                if let Some((feed, bytes)) = plan.erasing.get(&offset) {
                    state.note_erased(*feed, *bytes, batch);
                }
                let room = crate::log::payload_bytes_in(&done.before);
                state.add_live(segment_of(offset), -(room as i64), batch);
            }
            Edit::Drop(offset) => {
                let live = crate::log::live_len_of_body(&done.before);
                state.add_live(segment_of(offset), -(live as i64), batch);
            }
        }
    }
    for (feed, up_to) in &plan.pruned {
        state.set_pruned(*feed, *up_to, batch);
    }
}
