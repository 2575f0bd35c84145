//! The entry format, version 1: a signed header plus a payload stored beside
//! it. This module is the wire and disk stability boundary for headers.
//!
//! ```text
//! Header { version: u8, author: FeedId, seq: u64, prev: Option<EntryId>,
//!          timestamp: u64, payload_len: u32, payload_hash: Hash }
//! EntryId   = blake3(ENTRY_ID_DOMAIN || postcard(Header))
//! Signature = ed25519(author, EntryId)
//! ```
//!
//! Headers are encoded with postcard, which is canonical for these types: a
//! given header has exactly one encoding. The id is always recomputed from
//! the decoded header, never taken from the wire. The signature covers the id
//! and the id covers the payload's hash, so a payload can be absent (dropped
//! or not yet fetched) while the chain still verifies.
//!
//! ```
//! use kappadb_core::{Entry, SigningKey};
//! let key = SigningKey::from_seed([7; 32]);
//! let first = Entry::sign(&key, None, 1_700_000_000_000, b"hello".to_vec());
//! let second = Entry::sign(&key, Some(&first), 1_700_000_000_001, b"world".to_vec());
//! assert_eq!(second.header.seq, 2);
//! assert_eq!(second.header.prev, Some(first.id()));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::keys::{FeedId, SigningKey, hex, parse_hex32};
use crate::validate::{EntryError, validate_fork_proof};

/// The only header version this build understands.
pub const HEADER_VERSION: u8 = 1;

/// Domain prefix hashed before the encoded header to form an [`EntryId`].
pub const ENTRY_ID_DOMAIN: &[u8] = b"kappadb/entry-id/v1\0";

/// Upper bound on an encoded header (the real maximum is about 120 bytes).
pub const MAX_HEADER_LEN: usize = 256;

/// A blake3 hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// blake3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &hex(&self.0)[..8])
    }
}

/// The id of an entry: blake3 over the domain prefix and the encoded header.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(pub [u8; 32]);

impl EntryId {
    /// The first 8 hex digits, for log lines.
    pub fn fmt_short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", self.fmt_short())
    }
}

/// Text that is not an entry id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not an entry id: expected 64 hex digits")]
pub struct BadEntryId {
    /// The offending input, shortened.
    pub input: String,
}

impl FromStr for EntryId {
    type Err = BadEntryId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s.trim())
            .map(EntryId)
            .ok_or_else(|| BadEntryId {
                input: s.chars().take(80).collect(),
            })
    }
}

/// The signed part of an entry. Field order is part of the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version; 1.
    pub version: u8,
    /// The feed this entry belongs to.
    pub author: FeedId,
    /// 1-based position in the feed.
    pub seq: u64,
    /// Id of the entry at `seq - 1`; `None` iff `seq == 1`.
    pub prev: Option<EntryId>,
    /// The author's wall clock in ms since the epoch: a claim, not a fact.
    pub timestamp: u64,
    /// Length of the payload in bytes.
    pub payload_len: u32,
    /// blake3 of the payload.
    pub payload_hash: Hash,
}

impl Header {
    /// The canonical encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decode a header, refusing trailing bytes and unknown versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_HEADER_LEN {
            return Err(EntryError::Malformed("header too long"));
        }
        // The version byte comes first, so an unknown version is reported as
        // such even if the rest would not parse.
        match bytes.first() {
            None => return Err(EntryError::Malformed("empty header")),
            Some(&v) if v != HEADER_VERSION => {
                return Err(EntryError::UnsupportedVersion(v));
            }
            Some(_) => {}
        }
        let (header, rest) = postcard::take_from_bytes::<Header>(bytes)
            .map_err(|_| EntryError::Malformed("header does not decode"))?;
        if !rest.is_empty() {
            return Err(EntryError::Malformed("trailing bytes after header"));
        }
        // Reject non-canonical encodings: the id is computed over our own
        // encoding, so two byte strings for one header must not exist.
        if header.encode() != bytes {
            return Err(EntryError::Malformed("non-canonical header encoding"));
        }
        Ok(header)
    }

    /// The entry id: blake3(domain || encode()).
    pub fn id(&self) -> EntryId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(ENTRY_ID_DOMAIN);
        hasher.update(&self.encode());
        EntryId(*hasher.finalize().as_bytes())
    }
}

/// A header with its signature: everything needed to check a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The header.
    pub header: Header,
    /// ed25519 signature of `header.id()` by `header.author`.
    pub signature: ed25519_dalek::Signature,
}

/// What an entry carries besides its signed header.
///
/// Encoded (postcard, on the wire) as an enum tag then, for `Held`, the
/// bytes: tags 0 and 1 are the bytes `Option<Vec<u8>>` used before erasure
/// existed, so an absent or held payload encodes as it always did.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Not held here (never fetched). The chain still verifies.
    Absent,
    /// The payload's bytes (they hash to the header's `payload_hash`).
    Held(Vec<u8>),
    /// Erased: its author deleted the entry, and only the header and the
    /// signature remain. Kept so the chain still verifies.
    Erased,
}

impl Payload {
    /// The bytes, when held.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Payload::Held(b) => Some(b),
            Payload::Absent | Payload::Erased => None,
        }
    }

    /// The bytes, when held, taken.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Payload::Held(b) => Some(b),
            Payload::Absent | Payload::Erased => None,
        }
    }

    /// Whether the payload was erased by a deletion.
    pub fn is_erased(&self) -> bool {
        matches!(self, Payload::Erased)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Held(bytes)
    }
}

impl fmt::Debug for Payload {
    /// A held payload shows as text when it is UTF-8 (shortened), else by
    /// its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Absent => f.write_str("Absent"),
            Payload::Erased => f.write_str("Erased"),
            Payload::Held(b) => match std::str::from_utf8(b) {
                Ok(text) if text.chars().count() <= 200 => write!(f, "Held({text:?})"),
                Ok(text) => {
                    let head: String = text.chars().take(200).collect();
                    write!(f, "Held({head:?}… {} bytes)", b.len())
                }
                Err(_) => write!(f, "Held(<{} bytes>)", b.len()),
            },
        }
    }
}

/// An entry: a signed header and, when held, its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The header.
    pub header: Header,
    /// ed25519 signature of `header.id()` by `header.author`.
    pub signature: ed25519_dalek::Signature,
    /// The payload, absent (never fetched) or erased (deleted by its
    /// author).
    pub payload: Payload,
}

impl Entry {
    /// Build and sign the entry that follows `prev` (or the first entry of a
    /// feed when `prev` is `None`). No limits are checked here.
    pub fn sign(key: &SigningKey, prev: Option<&Entry>, timestamp: u64, payload: Vec<u8>) -> Self {
        let header = Header {
            version: HEADER_VERSION,
            author: key.feed_id(),
            seq: prev.map_or(1, |p| p.header.seq + 1),
            prev: prev.map(Entry::id),
            timestamp,
            payload_len: payload.len() as u32,
            payload_hash: Hash::of(&payload),
        };
        let signature = key.sign(&header.id().0);
        Self {
            header,
            signature,
            payload: Payload::Held(payload),
        }
    }

    /// The entry's id, recomputed from its header.
    pub fn id(&self) -> EntryId {
        self.header.id()
    }

    /// The payload's bytes, when held.
    pub fn payload_bytes(&self) -> Option<&[u8]> {
        self.payload.bytes()
    }

    /// The header and signature without the payload.
    pub fn signed_header(&self) -> SignedHeader {
        SignedHeader {
            header: self.header.clone(),
            signature: self.signature,
        }
    }
}

/// Two valid headers from one author at one seq with different ids: proof
/// that the author forked its feed.
///
/// Only [`ForkProof::new`] builds one from outside this crate, and it
/// checks the proof ([`validate_fork_proof`]), so holding a `ForkProof`
/// means holding a valid one. What arrives from a peer is an
/// [`UncheckedForkProof`] until then. Encoded (postcard, in the log and on
/// the wire) as the two signed headers, smaller id first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkProof {
    // Invariant: `a` and `b` conflict (same author and seq, different ids),
    // both signatures verify, and `a.header.id() < b.header.id()`.
    a: SignedHeader,
    b: SignedHeader,
}

impl ForkProof {
    /// Check two conflicting headers ([`validate_fork_proof`]) and make a
    /// proof of them, in canonical order.
    pub fn new(x: SignedHeader, y: SignedHeader) -> Result<Self, EntryError> {
        validate_fork_proof(&x, &y)?;
        Ok(Self::from_checked(x, y))
    }

    /// A proof of two headers already known to be valid and to conflict
    /// (an entry held and a conflicting one that passed every check).
    pub(crate) fn from_checked(x: SignedHeader, y: SignedHeader) -> Self {
        if x.header.id() <= y.header.id() {
            Self { a: x, b: y }
        } else {
            Self { a: y, b: x }
        }
    }

    /// A proof read back from this database's own log: the record passed
    /// its checksum, so only the shape is checked here; `Db::verify`
    /// re-checks the signatures like every other record's.
    pub(crate) fn from_stored(parts: UncheckedForkProof) -> Result<Self, &'static str> {
        let (a, b) = (&parts.a.header, &parts.b.header);
        if a.author != b.author || a.seq != b.seq || a.id() == b.id() {
            return Err("fork proof whose headers do not conflict");
        }
        Ok(Self::from_checked(parts.a, parts.b))
    }

    /// The header with the smaller id.
    pub fn a(&self) -> &SignedHeader {
        &self.a
    }

    /// The header with the larger id.
    pub fn b(&self) -> &SignedHeader {
        &self.b
    }

    /// The forked feed.
    pub fn author(&self) -> FeedId {
        self.a.header.author
    }

    /// The seq at which the feed forked.
    pub fn seq(&self) -> u64 {
        self.a.header.seq
    }

    /// The proof as it travels to a peer, which checks it again.
    pub fn to_unchecked(&self) -> UncheckedForkProof {
        UncheckedForkProof {
            a: self.a.clone(),
            b: self.b.clone(),
        }
    }
}

/// A fork proof as a peer sent it: two signed headers that have not been
/// checked yet. Same encoding as [`ForkProof`]; [`UncheckedForkProof::check`]
/// turns it into one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncheckedForkProof {
    /// One header.
    pub a: SignedHeader,
    /// The other.
    pub b: SignedHeader,
}

impl UncheckedForkProof {
    /// The feed it claims is forked.
    pub fn author(&self) -> FeedId {
        self.a.header.author
    }

    /// Check it ([`validate_fork_proof`]).
    pub fn check(self) -> Result<ForkProof, EntryError> {
        ForkProof::new(self.a, self.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encoding_known_answer() {
        // Pins the v1 format: if this changes, every stored id changes.
        let key = SigningKey::from_seed([7; 32]);
        let e1 = Entry::sign(&key, None, 1_700_000_000_000, b"hello".to_vec());
        let e2 = Entry::sign(&key, Some(&e1), 1_700_000_000_001, b"world".to_vec());
        assert_eq!(
            key.feed_id().to_string(),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        assert_eq!(
            hex(&e1.header.encode()),
            concat!(
                "01",                                                               // version
                "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c", // author
                "01",                                                               // seq
                "00",                                                               // prev: None
                "80d095ffbc31",                                                     // timestamp
                "05",                                                               // payload_len
                "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f", // blake3("hello")
            )
        );
        assert_eq!(
            e1.id().to_string(),
            "60d5e94da4f9ccff72d8d1865658e1c66d766f9db48298d8e6c88f41cb7bc3eb"
        );
        assert_eq!(
            e2.id().to_string(),
            "7119c79f11be8b301116b85caff5c3fe7fb547c72a745bb09c785328b22e2252"
        );
        // ed25519 is deterministic: the signature is pinned too.
        assert_eq!(
            hex(&e1.signature.to_bytes()),
            concat!(
                "a54229b7df1be59ff1ab1a2dbd503f4b3b86fe7951ddfdd96f8d1a5fb1d843af",
                "6da105b6d2551a4dec76ed606bade6147590d5315a72d5a596319a83fbda0b00"
            )
        );
    }

    #[test]
    fn decode_rejects_unknown_version_and_trailing_bytes() {
        let key = SigningKey::from_seed([1; 32]);
        let e = Entry::sign(&key, None, 5, b"x".to_vec());
        let mut bytes = e.header.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), e.header);
        bytes.push(0);
        assert!(matches!(
            Header::decode(&bytes),
            Err(EntryError::Malformed(_))
        ));
        bytes.pop();
        bytes[0] = 2;
        assert!(matches!(
            Header::decode(&bytes),
            Err(EntryError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn fork_proof_is_canonical() {
        let key = SigningKey::from_seed([1; 32]);
        let a = Entry::sign(&key, None, 5, b"x".to_vec()).signed_header();
        let b = Entry::sign(&key, None, 5, b"y".to_vec()).signed_header();
        assert_eq!(
            ForkProof::new(a.clone(), b.clone()).unwrap(),
            ForkProof::new(b, a).unwrap()
        );
    }

    #[test]
    fn fork_proof_encodes_like_its_unchecked_form() {
        let key = SigningKey::from_seed([1; 32]);
        let a = Entry::sign(&key, None, 5, b"x".to_vec()).signed_header();
        let b = Entry::sign(&key, None, 5, b"y".to_vec()).signed_header();
        let proof = ForkProof::new(a, b).unwrap();
        let bytes = postcard::to_stdvec(&proof).unwrap();
        let back: UncheckedForkProof = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, proof.to_unchecked());
        assert_eq!(back.check().unwrap(), proof);
    }

    #[test]
    fn payload_encodes_like_the_option_it_replaced() {
        // Peers that predate erasure decode `Absent` and `Held` unchanged.
        let held = Payload::Held(b"hi".to_vec());
        let old: Option<Vec<u8>> = Some(b"hi".to_vec());
        assert_eq!(
            postcard::to_stdvec(&held).unwrap(),
            postcard::to_stdvec(&old).unwrap()
        );
        let none: Option<Vec<u8>> = None;
        assert_eq!(
            postcard::to_stdvec(&Payload::Absent).unwrap(),
            postcard::to_stdvec(&none).unwrap()
        );
        assert_eq!(postcard::to_stdvec(&Payload::Erased).unwrap(), vec![2]);
        assert_eq!(format!("{held:?}"), "Held(\"hi\")");
        assert_eq!(
            format!("{:?}", Payload::Held(vec![0xff])),
            "Held(<1 bytes>)"
        );
    }

    #[test]
    fn entry_id_parse_error_names_entry_ids() {
        let err = "xyz".parse::<EntryId>().unwrap_err();
        assert!(err.to_string().contains("not an entry id"), "{err}");
    }
}
