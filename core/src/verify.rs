//! `Db::verify`: re-check every record of the log against every rule, as
//! a peer would, and compare what the log says with the feed index.
//!
//! Signatures are checked in batches on all cores; a record that fails its
//! checksum ends the check of the records after it in that segment.

use std::collections::HashMap;

use crate::db::Db;
use crate::entry::{EntryId, SignedHeader};
use crate::error::StoreError;
use crate::keys::FeedId;
use crate::log::{LogRecord, RecordBody};
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
        let mut chunk: Vec<LogRecord> = Vec::new();
        let mut it = self.segments().iter(0, end);
        let check = |chunk: &mut Vec<LogRecord>,
                     report: &mut VerifyReport,
                     heads: &mut HashMap<FeedId, (u64, EntryId)>| {
            let mut signed: Vec<(u64, SignedHeader)> = Vec::new();
            for rec in chunk.iter() {
                match &rec.body {
                    RecordBody::Entry(e) => signed.push((rec.offset, e.signed_header())),
                    // Checked whole below, by the rule ingest applies.
                    RecordBody::Fork(_) => {}
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
                            None => report.missing_payloads += 1,
                            Some(p) => {
                                if let Err(err) = validate_payload(h, Some(p), u32::MAX) {
                                    problem(err.to_string());
                                }
                            }
                        }
                        heads.insert(h.author, (h.seq, h.id()));
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
                        check(&mut chunk, &mut report, &mut heads);
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
        check(&mut chunk, &mut report, &mut heads);
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
