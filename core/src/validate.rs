//! Validation: the rules every peer applies to every entry, as free
//! functions, each returning one typed [`EntryError`] per broken rule.
//!
//! An incoming entry is accepted iff
//! 1. its header version is known ([`EntryError::UnsupportedVersion`]);
//! 2. `prev` is `None` exactly when `seq == 1`, and `seq >= 1`
//!    ([`EntryError::BadBacklink`]);
//! 3. the author is an ed25519 key in canonical encoding, of prime order
//!    (no small-order component) ([`EntryError::BadAuthor`]);
//! 4. the signature verifies over the recomputed id: ed25519 with the
//!    cofactored equation, canonical `s`, and `R` canonically encoded and
//!    not of small order (`sig.rs` spells it out; `docs/FORMAT.md` too)
//!    ([`EntryError::BadSignature`]);
//! 5. it extends the feed's head: `seq == head.seq + 1` and
//!    `prev == head.id` ([`EntryError::SeqGap`], [`EntryError::PrevMismatch`]);
//! 6. `payload_len` is within the database's limit
//!    ([`EntryError::PayloadTooLarge`]);
//! 7. a payload, when present, has `payload_len` bytes and hashes to
//!    `payload_hash` ([`EntryError::PayloadLenMismatch`],
//!    [`EntryError::PayloadHashMismatch`]);
//! 8. a payload, when present, that is an identity op (a delegation or a
//!    revocation) keeps the rules that need no other entry: canonical
//!    encoding, and for a delegation a consent signature by the device
//!    over the identity and device ids ([`EntryError::Identity`]; see
//!    [`crate::identity`]). So a forged delegation is never stored.
//!
//! Signatures on ingest paths are checked in batches spread over all cores
//! ([`verify_signatures`]); a batch gives every signature the verdict
//! [`validate_signature`] gives it alone.

use rayon::prelude::*;

use crate::entry::{Entry, EntryId, HEADER_VERSION, Hash, Header, SignedHeader};
use crate::keys::FeedId;
use crate::sig::ToVerify;

/// Why an entry was rejected. Expected during sync; never a crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The header's version is not one this build understands.
    #[error("unsupported header version {0} (this build understands version 1)")]
    UnsupportedVersion(u8),
    /// The bytes do not form a header or record.
    #[error("malformed entry: {0}")]
    Malformed(&'static str),
    /// `prev` and `seq` disagree (a first entry with a backlink, a later one
    /// without, or seq 0).
    #[error("seq {seq} must {} a previous entry id", if *seq == 1 { "not have" } else { "have" })]
    BadBacklink {
        /// The entry's seq.
        seq: u64,
    },
    /// The author is not a usable public key.
    #[error("author {0} is not a valid ed25519 public key")]
    BadAuthor(FeedId),
    /// The signature does not verify over the entry id.
    #[error("bad signature on {} seq {seq}", author.fmt_short())]
    BadSignature {
        /// The feed.
        author: FeedId,
        /// The entry's seq.
        seq: u64,
    },
    /// The entry does not follow the feed's head.
    #[error("expected seq {expected} but found {found}")]
    SeqGap {
        /// `head.seq + 1`.
        expected: u64,
        /// The entry's seq.
        found: u64,
    },
    /// The backlink does not name the feed's head.
    #[error("prev of seq {seq} does not match the id of seq {}", seq - 1)]
    PrevMismatch {
        /// The entry's seq.
        seq: u64,
    },
    /// The payload is larger than this database accepts.
    #[error("payload of {len} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Claimed or actual payload length.
        len: u64,
        /// The database's limit.
        limit: u32,
    },
    /// The stored payload's length differs from `payload_len`.
    #[error("payload is {actual} bytes but the header says {claimed}")]
    PayloadLenMismatch {
        /// `payload_len` from the header.
        claimed: u32,
        /// Bytes present.
        actual: u64,
    },
    /// The payload does not hash to `payload_hash`.
    #[error("payload does not match payload_hash of seq {seq}")]
    PayloadHashMismatch {
        /// The entry's seq.
        seq: u64,
    },
    /// The feed is forked; nothing past the fork point is accepted.
    #[error("feed {} is forked at seq {fork_seq}; seq {seq} is refused", author.fmt_short())]
    FeedForked {
        /// The feed.
        author: FeedId,
        /// Where it forked.
        fork_seq: u64,
        /// The refused entry's seq.
        seq: u64,
    },
    /// A system payload (a deletion) that breaks its rules; refused at
    /// append. (At ingest it has no effect, but the entry is stored.)
    #[error("{0}")]
    Deletion(crate::system::DeletionError),
    /// An identity op (delegation or revocation) that breaks its rules: a
    /// forged consent, a malformed body (rule 8).
    #[error("{0}")]
    Identity(crate::identity::IdentityError),
    /// Two headers offered as a fork proof do not conflict: another
    /// author, another seq, or the same entry twice.
    #[error("not a fork proof: {0}")]
    NotAFork(&'static str),
}

impl EntryError {
    /// True for rejections that are this database's policy (a forked
    /// feed), not proof that whoever sent the entry broke a rule.
    /// [`crate::Db::ingest_page`] drops a page only for the others.
    pub fn is_policy(&self) -> bool {
        matches!(self, EntryError::FeedForked { .. })
    }
}

/// Check everything about a header that needs no other entry: rules 1–3
/// and the size limit (rule 6).
pub fn validate_header(header: &Header, max_payload: u32) -> Result<(), EntryError> {
    validate_header_shape(header, max_payload)?;
    crate::sig::author_point(&header.author)?;
    Ok(())
}

/// Rules 1, 2 and 6: everything [`validate_header`] checks except the
/// author's key, which [`verify_signatures`] checks (once per author per
/// batch) on ingest paths.
pub fn validate_header_shape(header: &Header, max_payload: u32) -> Result<(), EntryError> {
    if header.version != HEADER_VERSION {
        return Err(EntryError::UnsupportedVersion(header.version));
    }
    if header.seq == 0 || (header.seq == 1) != header.prev.is_none() {
        return Err(EntryError::BadBacklink { seq: header.seq });
    }
    if header.payload_len > max_payload {
        return Err(EntryError::PayloadTooLarge {
            len: u64::from(header.payload_len),
            limit: max_payload,
        });
    }
    Ok(())
}

/// Check one signature (rule 4). The exact rule, and why it is the same
/// for single and batched checks, is written out in `core/src/sig.rs`.
pub fn validate_signature(signed: &SignedHeader) -> Result<(), EntryError> {
    crate::sig::verify_one(&ToVerify::of(signed, &signed.header.id()))
}

/// Check that `next` extends a feed whose head is `head` (rule 5): the
/// seq increments from the head's by exactly 1 and `prev` names the head's
/// id; with no head, `next` must be seq 1.
pub fn validate_link(head: Option<(u64, EntryId)>, next: &Header) -> Result<(), EntryError> {
    let (expected, expected_prev) = match head {
        None => (1, None),
        Some((seq, id)) => (seq + 1, Some(id)),
    };
    if next.seq != expected {
        return Err(EntryError::SeqGap {
            expected,
            found: next.seq,
        });
    }
    if next.prev != expected_prev {
        return Err(EntryError::PrevMismatch { seq: next.seq });
    }
    Ok(())
}

/// Check a payload against its header (rules 6, 7 and 8). `None` (payload
/// not held) is valid.
pub fn validate_payload(
    header: &Header,
    payload: Option<&[u8]>,
    max_payload: u32,
) -> Result<(), EntryError> {
    let Some(payload) = payload else {
        return Ok(());
    };
    if payload.len() as u64 > u64::from(max_payload) {
        return Err(EntryError::PayloadTooLarge {
            len: payload.len() as u64,
            limit: max_payload,
        });
    }
    if payload.len() as u64 != u64::from(header.payload_len) {
        return Err(EntryError::PayloadLenMismatch {
            claimed: header.payload_len,
            actual: payload.len() as u64,
        });
    }
    if Hash::of(payload) != header.payload_hash {
        return Err(EntryError::PayloadHashMismatch { seq: header.seq });
    }
    validate_identity_payload(header, payload)
}

/// Rule 8: an identity op in the payload keeps its stateless rules.
pub fn validate_identity_payload(header: &Header, payload: &[u8]) -> Result<(), EntryError> {
    crate::identity::check_payload(&header.author, payload).map_err(EntryError::Identity)
}

/// Check two signed headers offered as proof that their author forked its
/// feed. They are a proof iff
/// 1. they name the same author and the same seq, with different ids
///    ([`EntryError::NotAFork`]);
/// 2. each header has a known version and a backlink that fits its seq
///    (rules 1 and 2; the payload limit is not checked: a proof is about
///    signatures, and a peer with a larger limit may hold such entries);
/// 3. the author is a valid key and both signatures verify (rules 3 and 4).
pub fn validate_fork_proof(a: &SignedHeader, b: &SignedHeader) -> Result<(), EntryError> {
    let (ha, hb) = (&a.header, &b.header);
    if ha.author != hb.author {
        return Err(EntryError::NotAFork("the headers have different authors"));
    }
    if ha.seq != hb.seq {
        return Err(EntryError::NotAFork("the headers have different seqs"));
    }
    if ha.id() == hb.id() {
        return Err(EntryError::NotAFork("the two headers are the same entry"));
    }
    for s in [a, b] {
        validate_header(&s.header, u32::MAX)?;
        validate_signature(s)?;
    }
    Ok(())
}

/// Everything about one entry that needs no other entry: header rules,
/// signature and payload.
pub fn validate_entry(entry: &Entry, max_payload: u32) -> Result<(), EntryError> {
    validate_header(&entry.header, max_payload)?;
    validate_signature(&entry.signed_header())?;
    validate_payload(&entry.header, entry.payload.bytes(), max_payload)
}

/// Verify many signatures, in batches spread over all cores. Returns one
/// result per input, in order, the same results [`validate_signature`]
/// gives one by one; a batch that fails is re-checked one by one so the bad
/// entries are named exactly.
pub fn verify_signatures(headers: &[&SignedHeader]) -> Vec<Result<(), EntryError>> {
    let ids: Vec<EntryId> = headers.par_iter().map(|s| s.header.id()).collect();
    let items: Vec<ToVerify<'_>> = headers
        .iter()
        .zip(&ids)
        .map(|(s, id)| ToVerify::of(s, id))
        .collect();
    verify_items(&items)
}

/// [`verify_signatures`] for signatures whose ids are known.
pub(crate) fn verify_items(items: &[ToVerify<'_>]) -> Vec<Result<(), EntryError>> {
    // Larger batches cost less per signature (Pippenger's method pays off
    // from a few hundred); one batch per core keeps every core busy.
    const MIN_BATCH: usize = 32;
    const MAX_BATCH: usize = 1024;
    let threads = rayon::current_num_threads().max(1);
    let batch = items.len().div_ceil(threads).clamp(MIN_BATCH, MAX_BATCH);
    items
        .par_chunks(batch)
        .flat_map_iter(crate::sig::verify_batch)
        .collect()
}

/// Entries with every rule that needs no other entry already checked
/// (rules 1–4, 6 and 7: header shape, author key, signature, payload), and
/// their ids. This is the costly part of ingesting, and it needs no access
/// to the database, so a node can check the next page on other threads
/// while the database stores the previous one
/// ([`crate::Db::ingest_checked`]).
#[derive(Clone, Debug, Default)]
pub struct CheckedEntries {
    entries: Vec<Entry>,
    ids: Vec<EntryId>,
    verdicts: Vec<Result<(), EntryError>>,
    max_payload: u32,
}

impl CheckedEntries {
    /// Check `entries` against a payload limit of `max_payload` bytes, on
    /// all cores.
    pub fn new(entries: Vec<Entry>, max_payload: u32) -> Self {
        let (ids, mut verdicts): (Vec<EntryId>, Vec<Result<(), EntryError>>) = entries
            .par_iter()
            .map(|e| {
                let shape = validate_header_shape(&e.header, max_payload)
                    .and_then(|()| validate_payload(&e.header, e.payload.bytes(), max_payload));
                (e.header.id(), shape)
            })
            .unzip();
        let to_sign: Vec<usize> = (0..entries.len())
            .filter(|&i| verdicts[i].is_ok())
            .collect();
        let items: Vec<ToVerify<'_>> = to_sign
            .iter()
            .map(|&i| ToVerify {
                author: &entries[i].header.author,
                seq: entries[i].header.seq,
                id: &ids[i],
                signature: &entries[i].signature,
            })
            .collect();
        let results = verify_items(&items);
        for (&i, r) in to_sign.iter().zip(results) {
            verdicts[i] = r;
        }
        CheckedEntries {
            entries,
            ids,
            verdicts,
            max_payload,
        }
    }

    /// The entries, in the order given.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The payload limit the entries were checked against.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Keep the first `len` entries.
    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
        self.ids.truncate(len);
        self.verdicts.truncate(len);
    }

    /// Add `other`'s entries after these (checking them again if they were
    /// checked against another payload limit).
    pub fn append(&mut self, other: CheckedEntries) {
        let other = if other.max_payload == self.max_payload || self.entries.is_empty() {
            other
        } else {
            CheckedEntries::new(other.entries, self.max_payload)
        };
        self.max_payload = other.max_payload;
        self.entries.extend(other.entries);
        self.ids.extend(other.ids);
        self.verdicts.extend(other.verdicts);
    }

    /// Split in two at `at`: these keep `[0, at)`, the returned ones hold
    /// `[at, len)`, with their verdicts.
    pub fn split_off(&mut self, at: usize) -> CheckedEntries {
        let at = at.min(self.entries.len());
        CheckedEntries {
            entries: self.entries.split_off(at),
            ids: self.ids.split_off(at),
            verdicts: self.verdicts.split_off(at),
            max_payload: self.max_payload,
        }
    }

    /// The entries, ids and verdicts, index for index.
    pub fn into_parts(self) -> (Vec<Entry>, Vec<EntryId>, Vec<Result<(), EntryError>>) {
        (self.entries, self.ids, self.verdicts)
    }

    /// The entries back.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    const LIMIT: u32 = 1024;

    fn chain(n: u64) -> Vec<Entry> {
        let key = SigningKey::from_seed([5; 32]);
        let mut out: Vec<Entry> = Vec::new();
        for i in 0..n {
            let e = Entry::sign(&key, out.last(), 1000 + i, format!("p{i}").into_bytes());
            out.push(e);
        }
        out
    }

    #[test]
    fn good_chain_validates() {
        let c = chain(3);
        let mut head = None;
        for e in &c {
            validate_entry(e, LIMIT).unwrap();
            validate_link(head, &e.header).unwrap();
            head = Some((e.header.seq, e.id()));
        }
    }

    #[test]
    fn forged_unsupported_version() {
        let mut e = chain(1).remove(0);
        e.header.version = 9;
        assert_eq!(
            validate_entry(&e, LIMIT),
            Err(EntryError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn forged_signature() {
        let mut e = chain(1).remove(0);
        let other = SigningKey::from_seed([6; 32]);
        e.signature = other.sign(&e.id().0);
        assert!(matches!(
            validate_entry(&e, LIMIT),
            Err(EntryError::BadSignature { .. })
        ));
    }

    #[test]
    fn forged_author_is_not_a_key() {
        let mut e = chain(1).remove(0);
        // Small-order point: a weak key.
        e.header.author = FeedId([0; 32]);
        e.header.author.0[0] = 1;
        assert!(matches!(
            validate_entry(&e, LIMIT),
            Err(EntryError::BadAuthor(_))
        ));
    }

    #[test]
    fn forged_backlink_on_first_entry() {
        let c = chain(2);
        let mut e = c[0].clone();
        e.header.prev = Some(c[1].id());
        assert_eq!(
            validate_header(&e.header, LIMIT),
            Err(EntryError::BadBacklink { seq: 1 })
        );
        let mut e = c[1].clone();
        e.header.prev = None;
        assert_eq!(
            validate_header(&e.header, LIMIT),
            Err(EntryError::BadBacklink { seq: 2 })
        );
    }

    #[test]
    fn forged_seq_gap_and_prev() {
        let c = chain(3);
        let head = Some((1, c[0].id()));
        assert_eq!(
            validate_link(head, &c[2].header),
            Err(EntryError::SeqGap {
                expected: 2,
                found: 3
            })
        );
        let head = Some((1, c[2].id()));
        assert_eq!(
            validate_link(head, &c[1].header),
            Err(EntryError::PrevMismatch { seq: 2 })
        );
        assert_eq!(
            validate_link(None, &c[1].header),
            Err(EntryError::SeqGap {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn forged_payload() {
        let mut e = chain(1).remove(0);
        e.payload = crate::entry::Payload::Held(b"p9".to_vec());
        assert!(matches!(
            validate_entry(&e, LIMIT),
            Err(EntryError::PayloadHashMismatch { seq: 1 })
        ));
        e.payload = crate::entry::Payload::Held(b"longer".to_vec());
        assert!(matches!(
            validate_entry(&e, LIMIT),
            Err(EntryError::PayloadLenMismatch { .. })
        ));
        e.payload = crate::entry::Payload::Absent;
        validate_entry(&e, LIMIT).unwrap();
    }

    #[test]
    fn oversized_payload() {
        let key = SigningKey::from_seed([5; 32]);
        let e = Entry::sign(&key, None, 1, vec![0; 2000]);
        assert!(matches!(
            validate_entry(&e, LIMIT),
            Err(EntryError::PayloadTooLarge { len: 2000, .. })
        ));
    }

    #[test]
    fn batch_verification_names_the_bad_entry() {
        let mut c = chain(200);
        let other = SigningKey::from_seed([6; 32]);
        c[130].signature = other.sign(&c[130].id().0);
        let signed: Vec<SignedHeader> = c.iter().map(Entry::signed_header).collect();
        let refs: Vec<&SignedHeader> = signed.iter().collect();
        let res = verify_signatures(&refs);
        assert_eq!(res.len(), 200);
        for (i, r) in res.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 130, "entry {i}");
        }
    }
}
