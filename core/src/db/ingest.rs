//! Ingesting entries from peers: the chain rules against the feed's head,
//! fork detection, and all-or-nothing pages.
//!
//! Entries arrive checked ([`CheckedEntries`]: header shape, signature,
//! payload, all the rules that need no other entry); what is left needs the
//! database: does the entry extend its feed's head, is it a duplicate, or
//! does it conflict with an entry held (a fork, stored as a proof).

use std::collections::HashMap;

use crate::entry::{Entry, EntryId, ForkProof};
use crate::error::StoreError;
use crate::keys::FeedId;
use crate::log::RecordBody;
use crate::validate::{CheckedEntries, EntryError, validate_link};

use super::Db;

/// What [`Db::ingest`] did with each entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Entries stored.
    pub accepted: usize,
    /// Entries already held.
    pub duplicates: usize,
    /// Entries refused: index in the input and why.
    pub rejected: Vec<(usize, EntryError)>,
    /// Forks found (each stored as a proof).
    pub forks: Vec<ForkProof>,
    /// Feeds whose head moved, with their new seq.
    pub new_heads: Vec<(FeedId, u64)>,
    /// True when nothing was stored because the page was invalid
    /// ([`Db::ingest_page`] only).
    pub dropped: bool,
    /// Deletions stored whose rules they break, in whole or in part: they
    /// were stored (the chain goes on) but erase nothing, or less than
    /// they name.
    pub deletion_issues: Vec<super::DeletionIssue>,
}

/// A record `ingest` will write: an input entry (by index) or a fork proof.
enum Pending {
    Entry(usize),
    Fork(Box<ForkProof>),
}

impl Db {
    /// Validate and store entries from other feeds (or this one, from a
    /// backup). Each entry is checked against every rule in
    /// [`crate::validate`] and against the feed's head; entries may come in
    /// any order and are stored in `(feed, seq)` order. A conflicting entry
    /// at a seq already held is a fork: the proof is stored and the feed is
    /// not extended past it. Returns what was stored and why the rest was
    /// not.
    pub fn ingest(&self, entries: Vec<Entry>) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        self.ingest_inner(CheckedEntries::new(entries, limit), false)
    }

    /// Like [`Db::ingest`], but all or nothing for sync pages: if any entry
    /// breaks a validation rule (bad signature, broken chain, bad payload,
    /// ...), nothing of the page is stored and `dropped` is set. Duplicates,
    /// forks and entries of forked feeds do not drop the page.
    pub fn ingest_page(&self, entries: Vec<Entry>) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        self.ingest_inner(CheckedEntries::new(entries, limit), true)
    }

    /// [`Db::ingest_page`] for entries checked beforehand, perhaps on
    /// another thread while this database stored the previous page. Entries
    /// checked against another payload limit than this database's are
    /// checked again.
    pub fn ingest_checked(&self, page: CheckedEntries) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        let page = if page.max_payload() == limit {
            page
        } else {
            CheckedEntries::new(page.into_entries(), limit)
        };
        self.ingest_inner(page, true)
    }

    fn ingest_inner(&self, page: CheckedEntries, strict: bool) -> Result<IngestReport, StoreError> {
        let started = std::time::Instant::now();
        let report = self.ingest_untimed(page, strict)?;
        self.observe(|o| {
            if report.accepted > 0 {
                o.ingested(report.accepted, started.elapsed());
            }
            for (_, e) in &report.rejected {
                o.rejected(e.reason());
            }
        });
        Ok(report)
    }

    fn ingest_untimed(
        &self,
        page: CheckedEntries,
        strict: bool,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let (entries, ids, verdicts) = page.into_parts();
        let mut valid = Vec::with_capacity(entries.len());
        for (i, r) in verdicts.into_iter().enumerate() {
            match r {
                Ok(()) => valid.push(i),
                Err(e) => report.rejected.push((i, e)),
            }
        }
        if strict && report.rejected.iter().any(|(_, e)| !e.is_policy()) {
            report.dropped = true;
            return Ok(report);
        }
        valid.sort_by_key(|&i| (entries[i].header.author, entries[i].header.seq));

        let writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut records = Vec::new();
        let mut accepted_idx = Vec::new();
        {
            let state = self.state();
            // Heads and forks as they will be after this batch.
            let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
            let mut forks: HashMap<FeedId, u64> = HashMap::new();
            let mut pending: HashMap<(FeedId, u64), usize> = HashMap::new();
            for &i in &valid {
                let h = &entries[i].header;
                let head = heads
                    .get(&h.author)
                    .copied()
                    .or_else(|| state.heads.get(&h.author).map(|x| (x.seq, x.id)));
                let fork_seq = forks
                    .get(&h.author)
                    .copied()
                    .or_else(|| state.forks.get(&h.author).map(|f| f.seq));
                if let Some(fs) = fork_seq.filter(|&fs| h.seq >= fs) {
                    report.rejected.push((
                        i,
                        EntryError::FeedForked {
                            author: h.author,
                            fork_seq: fs,
                            seq: h.seq,
                        },
                    ));
                    continue;
                }
                let head_seq = head.map_or(0, |x| x.0);
                if h.seq <= head_seq {
                    // Already have an entry at this seq: same or a fork?
                    let existing = match pending.get(&(h.author, h.seq)) {
                        Some(&j) => entries[j].signed_header(),
                        // `state` is held: look up with it, never through
                        // a second read lock.
                        None => match self.offset_in(&state, &h.author, h.seq)? {
                            Some(off) => self.entry_at(off)?.signed_header(),
                            None => {
                                report.rejected.push((
                                    i,
                                    EntryError::SeqGap {
                                        expected: head_seq + 1,
                                        found: h.seq,
                                    },
                                ));
                                continue;
                            }
                        },
                    };
                    if existing.header.id() == ids[i] {
                        report.duplicates += 1;
                    } else {
                        // Both headers passed every check: the held one
                        // when it was stored, this one in `page`.
                        let proof = ForkProof::from_checked(existing, entries[i].signed_header());
                        forks.insert(h.author, h.seq);
                        report.forks.push(proof.clone());
                        records.push(Pending::Fork(Box::new(proof)));
                    }
                    continue;
                }
                if let Err(e) = validate_link(head, h) {
                    report.rejected.push((i, e));
                    continue;
                }
                heads.insert(h.author, (h.seq, ids[i]));
                pending.insert((h.author, h.seq), i);
                accepted_idx.push(i);
                records.push(Pending::Entry(i));
            }
        }
        if strict && report.rejected.iter().any(|(_, e)| !e.is_policy()) {
            report.dropped = true;
            report.forks.clear();
            return Ok(report);
        }
        if records.is_empty() {
            return Ok(report);
        }
        report.accepted = accepted_idx.len();
        // Move the accepted entries (and their payloads) into the records.
        let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
        let records: Vec<RecordBody> = records
            .into_iter()
            .filter_map(|p| match p {
                Pending::Entry(i) => slots
                    .get_mut(i)
                    .and_then(Option::take)
                    .map(RecordBody::Entry),
                Pending::Fork(proof) => Some(RecordBody::Fork(*proof)),
            })
            .collect();
        let (stored, issues) = self.write_records_reporting(writer, records)?;
        report.deletion_issues = issues;
        let mut new_heads: HashMap<FeedId, u64> = HashMap::new();
        for rec in &stored {
            if let Some(e) = rec.entry() {
                new_heads.insert(e.header.author, e.header.seq);
            }
        }
        report.new_heads = new_heads.into_iter().collect();
        report.new_heads.sort();
        report.rejected.sort_by_key(|(i, _)| *i);
        Ok(report)
    }

    /// Store a fork proof learned from a peer (checked when it was built:
    /// [`ForkProof::new`]). Returns `true` if it was news (the feed was not
    /// known to be forked at or before that seq).
    pub fn ingest_fork_proof(&self, proof: ForkProof) -> Result<bool, StoreError> {
        Ok(self.ingest_fork_proofs(vec![proof])?.first() == Some(&true))
    }

    /// Store fork proofs learned from peers, with one fsync for all the
    /// news among them. Returns, for each, whether it was news.
    pub fn ingest_fork_proofs(&self, proofs: Vec<ForkProof>) -> Result<Vec<bool>, StoreError> {
        let writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut news = Vec::with_capacity(proofs.len());
        let mut records = Vec::new();
        {
            let state = self.state();
            let mut forks: HashMap<FeedId, u64> = HashMap::new();
            for proof in proofs {
                let known = forks
                    .get(&proof.author())
                    .copied()
                    .or_else(|| state.forks.get(&proof.author()).map(|f| f.seq))
                    .is_some_and(|seq| seq <= proof.seq());
                news.push(!known);
                if !known {
                    forks.insert(proof.author(), proof.seq());
                    records.push(RecordBody::Fork(proof));
                }
            }
        }
        if !records.is_empty() {
            self.write_records(writer, records)?;
        }
        Ok(news)
    }
}
