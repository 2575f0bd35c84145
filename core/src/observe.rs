//! What a database reports to whoever measures it: an [`Observer`] is
//! told of every append and ingest (how many entries, how long it took)
//! and of every refused entry (why). The database keeps no figures of its
//! own; an embedder (the CLI's `/metrics`) counts what it is told. An
//! observer runs on the writing thread, after the write: it must be cheap
//! and must not call back into the database.

use std::time::Duration;

use crate::validate::EntryError;

/// Told of the database's writes. Every method has an empty default.
pub trait Observer: Send + Sync {
    /// `entries` own entries were appended (durable), in `took`.
    fn appended(&self, entries: usize, took: Duration) {
        let _ = (entries, took);
    }
    /// An ingest (a sync page, or a batch from `Db::ingest`) stored
    /// `accepted` entries (durable), in `took`.
    fn ingested(&self, accepted: usize, took: Duration) {
        let _ = (accepted, took);
    }
    /// An entry was refused, at append or at ingest, for `reason`
    /// ([`EntryError::reason`]).
    fn rejected(&self, reason: &'static str) {
        let _ = reason;
    }
}

impl EntryError {
    /// A short stable name for the rule an entry broke (for metrics
    /// labels): `bad_signature`, `seq_gap`, `feed_forked`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            EntryError::UnsupportedVersion(_) => "unsupported_version",
            EntryError::Malformed(_) => "malformed",
            EntryError::BadBacklink { .. } => "bad_backlink",
            EntryError::BadAuthor(_) => "bad_author",
            EntryError::BadSignature { .. } => "bad_signature",
            EntryError::SeqGap { .. } => "seq_gap",
            EntryError::PrevMismatch { .. } => "prev_mismatch",
            EntryError::PayloadTooLarge { .. } => "payload_too_large",
            EntryError::PayloadLenMismatch { .. } => "payload_len_mismatch",
            EntryError::PayloadHashMismatch { .. } => "payload_hash_mismatch",
            EntryError::FeedForked { .. } => "feed_forked",
            EntryError::Deletion(_) => "bad_deletion",
            EntryError::Identity(crate::identity::IdentityError::BadConsent { .. }) => {
                "forged_delegation"
            }
            EntryError::Identity(_) => "bad_identity_op",
            EntryError::NotAFork(_) => "not_a_fork",
        }
    }
}
