//! System payloads: entries that mean something to kappadb itself, not
//! only to the application. They are ordinary signed entries of their
//! author's feed (they chain, sync and verify like any other); their
//! payload starts with a reserved prefix that no JSON or text payload can
//! start with (a NUL byte), followed by a kind and a version:
//!
//! ```text
//! payload = "\0kappadb/" kind "/v" version "\0" || postcard(body)
//! kind "delete", version 1: body = Deletion { targets: [(seq u64, id [32])], up_to: Option<u64> }
//! kind "delegate", version 1: body = Delegation { device: [32], device_sig: 0x40 [64] }
//! kind "revoke", version 1: body = Revocation { device: [32], from: u64 }
//! kind "pair-offer", version 1: body = PairOffer { tag: [32], expires: u64 }
//! kind "pair-request", version 1: body = PairRequest { identity: [32], proof: [32], device_sig: 0x40 [64] }
//! ```
//!
//! Delegations and revocations are the entries of an *identity feed* (a
//! feed whose key is an identity key); their rules and meaning are in
//! [`crate::identity`].
//!
//! The body must be the one canonical postcard encoding of its value (it is
//! re-encoded and compared). An application payload may not start with
//! `"\0kappadb/"`: `Db::append` refuses it unless it is a valid system
//! payload. An ingested entry whose system payload does not parse, or
//! breaks a rule, is stored like any entry (the chain must go on) and has
//! no effect; `Db::verify` names it.
//!
//! ## Deletion
//!
//! An author deletes entries of their own feed by appending a deletion.
//! It names targets by `(seq, id)` (the id proves which entry is meant)
//! and/or a prune point `up_to`: every entry of the feed with
//! `seq <= up_to`. Rules, checked when the deletion is appended and again
//! by every peer that ingests it:
//!
//! 1. target seqs are strictly increasing, at least 1 and below the
//!    deletion's own seq; `up_to`, when present, is at least 1 and below
//!    the deletion's own seq; a deletion names at least one target or a
//!    prune point ([`DeletionError`]);
//! 2. each target's id is the id of the author's entry at that seq (an id
//!    that is not is refused at append and ignored at ingest:
//!    [`DeletionError::NotOwnEntry`]);
//! 3. a target that is itself a system entry (another deletion) is not
//!    erased: deletions are kept so that every peer can apply them.
//!
//! Folding a deletion erases the targets' payloads in place
//! ([`crate::Payload::Erased`]); the headers and signatures stay.
//!
//! ```
//! use kappadb_core::system::{Deletion, SystemPayload};
//! let d = Deletion { targets: vec![], up_to: Some(10) };
//! let payload = d.encode();
//! assert!(payload.starts_with(b"\0kappadb/delete/v1\0"));
//! assert_eq!(SystemPayload::parse(&payload), Some(Ok(SystemPayload::Deletion(d))));
//! assert_eq!(SystemPayload::parse(br#"{"type":"note"}"#), None);
//! ```

use serde::{Deserialize, Serialize};

use crate::entry::EntryId;

/// Every system payload starts with this.
pub const SYSTEM_PREFIX: &[u8] = b"\0kappadb/";

/// The prefix of a deletion (kind `delete`, version 1).
pub const DELETE_V1: &[u8] = b"\0kappadb/delete/v1\0";

/// The prefix of a delegation (kind `delegate`, version 1).
pub const DELEGATE_V1: &[u8] = b"\0kappadb/delegate/v1\0";

/// The prefix of a revocation (kind `revoke`, version 1).
pub const REVOKE_V1: &[u8] = b"\0kappadb/revoke/v1\0";

/// An entry a deletion names: its seq in the author's feed and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeleteTarget {
    /// The entry's seq.
    pub seq: u64,
    /// The entry's id.
    pub id: EntryId,
}

/// A deletion's body. Field order is part of the format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Entries deleted by seq and id, seqs strictly increasing.
    pub targets: Vec<DeleteTarget>,
    /// Every entry of the feed with `seq <= up_to` is deleted too.
    pub up_to: Option<u64>,
}

/// A parsed system payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SystemPayload {
    /// A deletion.
    Deletion(Deletion),
    /// A delegation: the author (an identity) says `device` speaks for it.
    Delegation(crate::identity::Delegation),
    /// A revocation: the author (an identity) says `device` no longer
    /// speaks for it from seq `from` on.
    Revocation(crate::identity::Revocation),
    /// A pairing offer (an identity feed waits for a device with a code).
    PairOffer(crate::identity::PairOffer),
    /// A pairing request (a device that holds the code asks to join).
    PairRequest(crate::identity::PairRequest),
}

/// Why a system payload has no effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeletionError {
    /// The reserved prefix names no kind this build knows.
    #[error("unknown system payload kind")]
    UnknownKind,
    /// The body does not decode, or is not its canonical encoding.
    #[error("malformed system payload: {0}")]
    Malformed(&'static str),
    /// Neither targets nor a prune point.
    #[error("a deletion must name at least one entry or a prune point")]
    Empty,
    /// Targets out of order, repeated, or not before the deletion.
    #[error("target seq {seq} is not an earlier entry of the feed (deletion at seq {at})")]
    NotEarlier {
        /// The target's seq.
        seq: u64,
        /// The deletion's own seq.
        at: u64,
    },
    /// Target seqs must be strictly increasing.
    #[error("target seqs must be strictly increasing (seq {0} repeats or goes back)")]
    Unordered(u64),
    /// The entry at this seq is a system entry (another deletion), which
    /// is never erased.
    #[error("the entry at seq {0} is a deletion; deletions cannot be deleted")]
    NotDeletable(u64),
    /// The id named is not the author's entry at that seq: only an entry's
    /// author can delete it.
    #[error(
        "entry {id} is not this feed's entry at seq {seq}; only its author can delete an entry"
    )]
    NotOwnEntry {
        /// The seq named.
        seq: u64,
        /// The id named.
        id: EntryId,
    },
}

impl Deletion {
    /// The payload of this deletion.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DELETE_V1.to_vec();
        // Encoding plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Rule 1 for a deletion at seq `at` of its feed (rule 2 needs the
    /// feed: see `Db`).
    pub fn check_shape(&self, at: u64) -> Result<(), DeletionError> {
        if self.targets.is_empty() && self.up_to.is_none() {
            return Err(DeletionError::Empty);
        }
        let mut last = 0;
        for t in &self.targets {
            if t.seq == 0 || t.seq >= at {
                return Err(DeletionError::NotEarlier { seq: t.seq, at });
            }
            if t.seq <= last {
                return Err(DeletionError::Unordered(t.seq));
            }
            last = t.seq;
        }
        if let Some(up_to) = self.up_to
            && (up_to == 0 || up_to >= at)
        {
            return Err(DeletionError::NotEarlier { seq: up_to, at });
        }
        Ok(())
    }

    /// Whether the deletion covers `seq` (as a target or under the prune
    /// point).
    pub fn covers(&self, seq: u64) -> bool {
        self.up_to.is_some_and(|u| seq <= u)
            || self.targets.binary_search_by_key(&seq, |t| t.seq).is_ok()
    }
}

impl SystemPayload {
    /// Parse `payload`: `None` if it is not a system payload at all, else
    /// the payload or why it is not a valid one.
    pub fn parse(payload: &[u8]) -> Option<Result<SystemPayload, DeletionError>> {
        if !payload.starts_with(SYSTEM_PREFIX) {
            return None;
        }
        if let Some(body) = payload.strip_prefix(DELEGATE_V1) {
            return Some(
                canonical::<crate::identity::Delegation>(body, payload, |d| d.encode())
                    .map(SystemPayload::Delegation),
            );
        }
        if let Some(body) = payload.strip_prefix(REVOKE_V1) {
            return Some(
                canonical::<crate::identity::Revocation>(body, payload, |r| r.encode())
                    .map(SystemPayload::Revocation),
            );
        }
        if let Some(body) = payload.strip_prefix(crate::identity::PAIR_OFFER_V1) {
            return Some(
                canonical::<crate::identity::PairOffer>(body, payload, |o| o.encode())
                    .map(SystemPayload::PairOffer),
            );
        }
        if let Some(body) = payload.strip_prefix(crate::identity::PAIR_REQUEST_V1) {
            return Some(
                canonical::<crate::identity::PairRequest>(body, payload, |r| r.encode())
                    .map(SystemPayload::PairRequest),
            );
        }
        let Some(body) = payload.strip_prefix(DELETE_V1) else {
            return Some(Err(DeletionError::UnknownKind));
        };
        Some(canonical::<Deletion>(body, payload, Deletion::encode).map(SystemPayload::Deletion))
    }

    /// Whether `payload` starts with the reserved prefix.
    pub fn is_system(payload: &[u8]) -> bool {
        payload.starts_with(SYSTEM_PREFIX)
    }
}

/// Decode `body` as the one canonical encoding of a `T` whose whole
/// payload is `payload`.
fn canonical<T: serde::de::DeserializeOwned>(
    body: &[u8],
    payload: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<T, DeletionError> {
    let parsed = match postcard::take_from_bytes::<T>(body) {
        Ok((d, [])) => d,
        Ok(_) => return Err(DeletionError::Malformed("trailing bytes")),
        Err(_) => return Err(DeletionError::Malformed("the body does not decode")),
    };
    if encode(&parsed) != payload {
        return Err(DeletionError::Malformed("non-canonical encoding"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hex;

    #[test]
    fn deletion_encoding_known_answer() {
        // Pins the deletion format: every peer must read these bytes alike.
        let d = Deletion {
            targets: vec![
                DeleteTarget {
                    seq: 2,
                    id: EntryId([0xab; 32]),
                },
                DeleteTarget {
                    seq: 300,
                    id: EntryId([0x01; 32]),
                },
            ],
            up_to: Some(1),
        };
        assert_eq!(
            hex(&d.encode()),
            concat!(
                "006b617070616462", // "\0kappadb"
                "2f64656c6574652f", // "/delete/"
                "763100",           // "v1\0"
                "02",               // two targets
                "02",               // seq 2
                "abababababababababababababababababababababababababababababababab",
                "ac02", // seq 300 (varint)
                "0101010101010101010101010101010101010101010101010101010101010101",
                "0101", // up_to: Some(1)
            )
        );
    }

    #[test]
    fn shapes_that_are_refused() {
        let t = |seq| DeleteTarget {
            seq,
            id: EntryId([0; 32]),
        };
        let d = |targets, up_to| Deletion { targets, up_to };
        assert_eq!(d(vec![], None).check_shape(5), Err(DeletionError::Empty));
        assert!(matches!(
            d(vec![t(5)], None).check_shape(5),
            Err(DeletionError::NotEarlier { seq: 5, at: 5 })
        ));
        assert!(matches!(
            d(vec![t(0)], None).check_shape(5),
            Err(DeletionError::NotEarlier { .. })
        ));
        assert_eq!(
            d(vec![t(3), t(3)], None).check_shape(5),
            Err(DeletionError::Unordered(3))
        );
        assert!(matches!(
            d(vec![], Some(9)).check_shape(5),
            Err(DeletionError::NotEarlier { seq: 9, .. })
        ));
        assert!(d(vec![t(1), t(4)], Some(2)).check_shape(5).is_ok());
        let ok = d(vec![t(1), t(4)], Some(2));
        assert!(ok.covers(1) && ok.covers(2) && ok.covers(4) && !ok.covers(3));
    }

    #[test]
    fn parse_refuses_what_is_not_canonical() {
        let d = Deletion {
            targets: vec![],
            up_to: Some(7),
        };
        let mut bytes = d.encode();
        bytes.push(0);
        assert_eq!(
            SystemPayload::parse(&bytes),
            Some(Err(DeletionError::Malformed("trailing bytes")))
        );
        assert_eq!(
            SystemPayload::parse(b"\0kappadb/other/v1\0"),
            Some(Err(DeletionError::UnknownKind))
        );
        // An over-long varint for up_to decodes to the same value but is
        // not the canonical encoding.
        let mut long = DELETE_V1.to_vec();
        long.extend_from_slice(&[0x00, 0x01, 0x87, 0x00]);
        assert!(matches!(
            SystemPayload::parse(&long),
            Some(Err(DeletionError::Malformed(_)))
        ));
        assert_eq!(SystemPayload::parse(b"hello"), None);
    }
}
