//! `Db::verify`: re-check every record of the log against every rule, as
//! a peer would, and compare what the log says with the feed index.
//!
//! Signatures are checked in batches on all cores; a record that fails its
//! checksum ends the check of the records after it in that segment.

use std::collections::HashMap;

use crate::db::Db;
use crate::entry::{EntryId, Payload, SignedHeader};
use crate::error::StoreError;
use crate::keys::FeedId;
use crate::log::{LogRecord, RecordBody};
use crate::system::{Deletion, SystemPayload};
use crate::validate::{
    validate_fork_proof, validate_header, validate_link, validate_payload, verify_signatures,
};

/// A problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Log offset of the record concerned (or the log's end).
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

/// The result of [`Db::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Entries checked.
    pub entries: u64,
    /// Feeds seen.
    pub feeds: usize,
    /// Fork proofs checked.
    pub fork_proofs: u64,
    /// Payloads not held (valid, reported for information).
    pub missing_payloads: u64,
    /// Payloads erased by their authors' deletions (valid).
    pub erased_payloads: u64,
    /// Deletion entries.
    pub deletions: u64,
    /// Deletions (or parts of them) that have no effect because they break
    /// a deletion rule (the author's mistake, not damage).
    pub ineffective_deletions: u64,
    /// Everything that does not hold.
    pub problems: Vec<Problem>,
}

impl Db {
    /// Re-check every record of the log: framing and checksums, header
    /// rules, signatures (batched), chains and payload hashes; then compare
    /// the heads with the index. Reports `(offset, end)` progress.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        let limit = self.config().max_payload_bytes;
        let end = self.log_end();
        let mut report = VerifyReport::default();
        let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
        let mut held = Held::default();
        let mut chunk: Vec<LogRecord> = Vec::new();
        let mut it = self.segments().iter(0, end);
        let check = |chunk: &mut Vec<LogRecord>,
                     report: &mut VerifyReport,
                     heads: &mut HashMap<FeedId, (u64, EntryId)>,
                     held: &mut Held| {
            let mut signed: Vec<(u64, SignedHeader)> = Vec::new();
            for rec in chunk.iter() {
                // Fork proofs are checked whole below, by the rule ingest
                // applies; a forget marker carries no signature.
                if let RecordBody::Entry(e) = &rec.body {
                    signed.push((rec.offset, e.signed_header()));
                }
            }
            let refs: Vec<&SignedHeader> = signed.iter().map(|(_, s)| s).collect();
            for ((offset, s), r) in signed.iter().zip(verify_signatures(&refs)) {
                if let Err(e) = r {
                    report.problems.push(Problem {
                        offset: *offset,
                        what: format!("{} seq {}: {e}", s.header.author, s.header.seq),
                    });
                }
            }
            for rec in chunk.drain(..) {
                report.records += 1;
                match rec.body {
                    RecordBody::Entry(e) => {
                        report.entries += 1;
                        let h = &e.header;
                        let mut problem = |what: String| {
                            report.problems.push(Problem {
                                offset: rec.offset,
                                what: format!("{} seq {}: {what}", h.author, h.seq),
                            })
                        };
                        if let Err(err) = validate_header(h, limit) {
                            problem(err.to_string());
                        }
                        if let Err(err) = validate_link(heads.get(&h.author).copied(), h) {
                            problem(err.to_string());
                        }
                        match &e.payload {
                            Payload::Absent => report.missing_payloads += 1,
                            Payload::Erased => report.erased_payloads += 1,
                            Payload::Held(p) => {
                                if let Err(err) = validate_payload(h, Some(p), u32::MAX) {
                                    problem(err.to_string());
                                }
                            }
                        }
                        held.record(h.author, h.seq, &h.id(), &e.payload);
                        match e.payload.bytes().and_then(SystemPayload::parse) {
                            Some(Ok(SystemPayload::Deletion(d))) => {
                                report.deletions += 1;
                                if d.check_shape(h.seq).is_err() {
                                    report.ineffective_deletions += 1;
                                } else if let Some(seq) = held.first_kept(h.author, &d) {
                                    problem(format!(
                                        "deletes seq {seq}, whose payload is still here"
                                    ));
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) => {
                                report.deletions += 1;
                                report.ineffective_deletions += 1;
                            }
                            None => {}
                        }
                        heads.insert(h.author, (h.seq, h.id()));
                    }
                    RecordBody::Forget(feed) => {
                        // The feed's records before this are dropped; if it
                        // is synced again, its chain starts over.
                        heads.remove(&feed);
                        held.forget(&feed);
                    }
                    RecordBody::Fork(p) => {
                        report.fork_proofs += 1;
                        if let Err(err) = validate_fork_proof(p.a(), p.b()) {
                            report.problems.push(Problem {
                                offset: rec.offset,
                                what: format!("fork proof of {}: {err}", p.author()),
                            });
                        }
                    }
                }
            }
        };
        while let Some(rec) = it.next() {
            match rec {
                Ok(rec) => {
                    chunk.push(rec);
                    if chunk.len() >= 4096 {
                        check(&mut chunk, &mut report, &mut heads, &mut held);
                        progress(it.offset(), end);
                    }
                }
                Err(e) => {
                    let offset = match &e {
                        StoreError::Corrupt { offset, .. } => *offset,
                        _ => it.offset(),
                    };
                    report.problems.push(Problem {
                        offset,
                        what: format!("{e}; the records after it were not checked"),
                    });
                }
            }
        }
        check(&mut chunk, &mut report, &mut heads, &mut held);
        progress(end, end);
        report.feeds = heads.len();
        let indexed = self.heads();
        let mut mismatched = 0;
        for (feed, (seq, id)) in &heads {
            match indexed.get(feed) {
                Some(h) if h.seq == *seq && h.id == *id => {}
                _ => mismatched += 1,
            }
        }
        mismatched += indexed.keys().filter(|f| !heads.contains_key(f)).count();
        if mismatched > 0 {
            report.problems.push(Problem {
                offset: end,
                what: format!(
                    "the index disagrees with the log on {mismatched} feed(s); run `kappa reindex`"
                ),
            });
        }
        Ok(report)
    }
}

/// Which entries of each feed still hold an application payload (not
/// erased, not a deletion), one bit per seq, with the first bytes of each
/// entry's id, so that a deletion can be checked against what came before
/// it without keeping the entries.
#[derive(Default)]
struct Held {
    feeds: HashMap<FeedId, FeedBits>,
}

#[derive(Default)]
struct FeedBits {
    held: Vec<u64>,
    ids: Vec<[u8; 8]>,
    /// Prune points up to here were checked already.
    pruned_to: u64,
}

impl FeedBits {
    fn is_held(&self, seq: u64) -> bool {
        let i = (seq - 1) as usize;
        self.held
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl Held {
    fn record(&mut self, feed: FeedId, seq: u64, id: &EntryId, payload: &Payload) {
        let keeps = payload
            .bytes()
            .is_some_and(|b| !SystemPayload::is_system(b));
        let f = self.feeds.entry(feed).or_default();
        let i = (seq - 1) as usize;
        if f.held.len() <= i / 64 {
            f.held.resize(i / 64 + 1, 0);
        }
        if keeps {
            f.held[i / 64] |= 1 << (i % 64);
        } else {
            f.held[i / 64] &= !(1 << (i % 64));
        }
        if f.ids.len() < i + 1 {
            f.ids.resize(i + 1, [0; 8]);
        }
        f.ids[i].copy_from_slice(&id.0[..8]);
    }

    fn forget(&mut self, feed: &FeedId) {
        self.feeds.remove(feed);
    }

    /// The first seq `d` (a deletion of `feed` with a valid shape) covers
    /// whose payload is still held: a deletion that was not applied.
    fn first_kept(&mut self, feed: FeedId, d: &Deletion) -> Option<u64> {
        let f = self.feeds.get_mut(&feed)?;
        if let Some(up_to) = d.up_to
            && up_to > f.pruned_to
        {
            let from = f.pruned_to + 1;
            f.pruned_to = up_to;
            if let Some(seq) = (from..=up_to).find(|&s| f.is_held(s)) {
                return Some(seq);
            }
        }
        d.targets
            .iter()
            .filter(|t| {
                f.ids.get((t.seq - 1) as usize) == Some(&t.id.0[..8].try_into().unwrap_or([0; 8]))
            })
            .map(|t| t.seq)
            .find(|&s| f.is_held(s))
    }
}
