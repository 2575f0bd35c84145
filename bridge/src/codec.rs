//! The Kafka form of a log record: key, value and headers.
//!
//! Every record of the local log becomes one Kafka record:
//!
//! - **key**: the feed id the record is about, as its 64-hex-digit text
//!   form (what `kappa id` prints), so every record of one feed goes to
//!   one partition and stays in log order there;
//! - **value**: the bytes a consumer re-verifies, version 1:
//!
//! ```text
//! value  = version u8 (= 1) | kind u8 | body
//! kind 1 = entry:  header_len u32 LE | header (postcard, as signed)
//!                  | signature [64] | payload_state u8 | payload bytes (the rest)
//!                  payload_state: 0 absent (never fetched), 1 held, 2 erased
//!                  (absent and erased carry no payload bytes)
//! kind 2 = fork:   (header_len u32 LE | header | signature [64]) twice:
//!                  the two conflicting signed headers, smaller id first
//! kind 3 = forget: feed id [32]: this node forgot the feed (local only)
//! ```
//!
//! - **headers** (all UTF-8 text): `kappa-kind` (`entry`, `fork` or
//!   `forget`), `kappa-source` (the bridging node's feed id),
//!   `kappa-offset` (the record's offset in the bridging node's log,
//!   decimal), and `kappa-json`, a JSON view of the record for readers that
//!   do not verify (see [`json_view`]). The headers are a convenience: a
//!   consumer that verifies reads only the value (and the bridge's
//!   exactly-once bookkeeping reads only `kappa-source` and
//!   `kappa-offset`).
//!
//! The header bytes are the exact byte string the author signed over (its
//! id is `blake3(domain || header)`), so [`decode_value`] followed by
//! `kappadb_core::validate` checks everything without trusting the bridge.

use ed25519_dalek::Signature;
use kappadb_core::{Entry, FeedId, Header, LogRecord, Payload, RecordBody, SignedHeader};
use kappadb_core::{EntryError, UncheckedForkProof};
use serde_json::json;

/// Version byte leading every value.
pub const VALUE_VERSION: u8 = 1;
/// Kind byte of an entry.
pub const KIND_ENTRY: u8 = 1;
/// Kind byte of a fork proof.
pub const KIND_FORK: u8 = 2;
/// Kind byte of a forgotten feed.
pub const KIND_FORGET: u8 = 3;

/// Header naming the record's kind.
pub const H_KIND: &str = "kappa-kind";
/// Header naming the bridging node (its feed id).
pub const H_SOURCE: &str = "kappa-source";
/// Header holding the record's offset in the bridging node's log.
pub const H_OFFSET: &str = "kappa-offset";
/// Header holding the JSON view.
pub const H_JSON: &str = "kappa-json";

/// One log record in its Kafka form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The feed id, as text.
    pub key: String,
    /// The verifiable encoding (see the module docs).
    pub value: Vec<u8>,
    /// `kappa-kind`: `entry`, `fork` or `forget`.
    pub kind: &'static str,
    /// `kappa-json`.
    pub json: String,
}

/// A value decoded, not yet verified: run it through
/// `kappadb_core::validate` (entries) or [`UncheckedForkProof::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// An entry as its author signed it, with what this node held of the
    /// payload.
    Entry(Entry),
    /// Two conflicting signed headers.
    Fork(UncheckedForkProof),
    /// The bridging node forgot this feed.
    Forget(FeedId),
}

/// Why a value does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The value is shorter than its framing says.
    #[error("the value is truncated ({0})")]
    Truncated(&'static str),
    /// An unknown version byte.
    #[error("unknown value version {0} (this build reads version {VALUE_VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// An unknown payload state byte.
    #[error("unknown payload state {0}")]
    PayloadState(u8),
    /// Bytes left over after a fixed-size body.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    /// A header that does not decode.
    #[error("bad header: {0}")]
    Header(#[from] EntryError),
}

/// The feed a record is about (`None` for a kind of record this build
/// does not know).
pub fn record_feed(body: &RecordBody) -> Option<FeedId> {
    match body {
        RecordBody::Entry(e) => Some(e.header.author),
        RecordBody::Fork(p) => Some(p.author()),
        RecordBody::Forget(f) => Some(*f),
        _ => None,
    }
}

fn put_signed(out: &mut Vec<u8>, header: &Header, signature: &Signature) {
    let h = header.encode();
    // A header is at most a few hundred bytes (Header::decode refuses more).
    out.extend_from_slice(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&signature.to_bytes());
}

/// The value of a record (see the module docs); `None` for a kind of
/// record this build does not know.
pub fn encode_value(body: &RecordBody) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(160);
    out.push(VALUE_VERSION);
    match body {
        RecordBody::Entry(e) => {
            out.push(KIND_ENTRY);
            put_signed(&mut out, &e.header, &e.signature);
            match &e.payload {
                Payload::Absent => out.push(0),
                Payload::Held(bytes) => {
                    out.push(1);
                    out.extend_from_slice(bytes);
                }
                Payload::Erased => out.push(2),
            }
        }
        RecordBody::Fork(p) => {
            out.push(KIND_FORK);
            put_signed(&mut out, &p.a().header, &p.a().signature);
            put_signed(&mut out, &p.b().header, &p.b().signature);
        }
        RecordBody::Forget(f) => {
            out.push(KIND_FORGET);
            out.extend_from_slice(f.as_bytes());
        }
        _ => return None,
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn signed(&mut self) -> Result<SignedHeader, CodecError> {
        let len = self.take(4, "header length")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let header = Header::decode(self.take(len, "header")?)?;
        let sig = self.take(64, "signature")?;
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(sig);
        Ok(SignedHeader {
            header,
            signature: Signature::from_bytes(&bytes),
        })
    }

    fn end(&self) -> Result<(), CodecError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// Decode a value (untrusted bytes: every failure is a typed error).
pub fn decode_value(value: &[u8]) -> Result<Decoded, CodecError> {
    let mut r = Reader(value);
    let version = r.byte("version")?;
    if version != VALUE_VERSION {
        return Err(CodecError::Version(version));
    }
    match r.byte("kind")? {
        KIND_ENTRY => {
            let signed = r.signed()?;
            let payload = match r.byte("payload state")? {
                0 => Payload::Absent,
                1 => Payload::Held(std::mem::take(&mut r.0).to_vec()),
                2 => Payload::Erased,
                s => return Err(CodecError::PayloadState(s)),
            };
            r.end()?;
            Ok(Decoded::Entry(Entry {
                header: signed.header,
                signature: signed.signature,
                payload,
            }))
        }
        KIND_FORK => {
            let a = r.signed()?;
            let b = r.signed()?;
            r.end()?;
            Ok(Decoded::Fork(UncheckedForkProof { a, b }))
        }
        KIND_FORGET => {
            let bytes = r.take(32, "feed id")?;
            r.end()?;
            let mut id = [0u8; 32];
            id.copy_from_slice(bytes);
            Ok(Decoded::Forget(FeedId(id)))
        }
        k => Err(CodecError::Kind(k)),
    }
}

fn header_json(h: &Header) -> serde_json::Value {
    json!({
        "id": h.id().to_string(),
        "author": h.author.to_string(),
        "seq": h.seq,
        "prev": h.prev.map(|p| p.to_string()),
        "timestamp": h.timestamp,
        "payload_len": h.payload_len,
        "payload_hash": h.payload_hash.to_string(),
    })
}

/// The `kappa-json` view: `{"kind": ..., "offset": ..., ...}` with the
/// header's fields as text (ids and hashes in hex) for an entry, plus
/// `"payload": "held" | "absent" | "erased"`; the two headers of a fork
/// (`"a"`, `"b"`); the feed of a forget. It is not signed: verify the value.
pub fn json_view(rec: &LogRecord) -> serde_json::Value {
    match &rec.body {
        _ if record_feed(&rec.body).is_none() => json!({"kind": "unknown", "offset": rec.offset}),
        RecordBody::Entry(e) => {
            let mut v = header_json(&e.header);
            v["kind"] = json!("entry");
            v["offset"] = json!(rec.offset);
            v["payload"] = json!(match e.payload {
                Payload::Absent => "absent",
                Payload::Held(_) => "held",
                Payload::Erased => "erased",
            });
            v
        }
        RecordBody::Fork(p) => json!({
            "kind": "fork",
            "offset": rec.offset,
            "author": p.author().to_string(),
            "seq": p.seq(),
            "a": header_json(&p.a().header),
            "b": header_json(&p.b().header),
        }),
        RecordBody::Forget(f) => json!({
            "kind": "forget",
            "offset": rec.offset,
            "author": f.to_string(),
        }),
        _ => json!({"kind": "unknown", "offset": rec.offset}),
    }
}

/// The Kafka form of a log record; `None` for a kind of record this
/// build does not know (a newer core's), which the bridge cannot encode.
pub fn encode(rec: &LogRecord) -> Option<KafkaRecord> {
    let kind = match rec.body {
        RecordBody::Entry(_) => "entry",
        RecordBody::Fork(_) => "fork",
        RecordBody::Forget(_) => "forget",
        _ => return None,
    };
    Some(KafkaRecord {
        key: record_feed(&rec.body)?.to_string(),
        value: encode_value(&rec.body)?,
        kind,
        json: json_view(rec).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappadb_core::ForkProof;
    use kappadb_core::test_utils::TestPeer;
    use kappadb_core::validate::{validate_entry, validate_signature};

    fn rec(body: RecordBody) -> LogRecord {
        LogRecord {
            offset: 7,
            next_offset: 99,
            body,
        }
    }

    #[test]
    fn entries_round_trip_and_verify() {
        let mut peer = TestPeer::new(1);
        let e = peer.make(1000, b"hello".to_vec());
        let v = encode_value(&RecordBody::Entry(e.clone())).unwrap();
        let Decoded::Entry(back) = decode_value(&v).unwrap() else {
            panic!("not an entry")
        };
        assert_eq!(back, e);
        validate_entry(&back, 1 << 20).unwrap();

        for payload in [Payload::Absent, Payload::Erased] {
            let mut e2 = e.clone();
            e2.payload = payload;
            let v = encode_value(&RecordBody::Entry(e2.clone())).unwrap();
            assert_eq!(decode_value(&v).unwrap(), Decoded::Entry(e2));
        }
    }

    #[test]
    fn a_flipped_payload_byte_fails_verification() {
        let mut peer = TestPeer::new(2);
        let e = peer.make(1000, b"hello".to_vec());
        let mut v = encode_value(&RecordBody::Entry(e)).unwrap();
        let last = v.len() - 1;
        v[last] ^= 1;
        let Decoded::Entry(back) = decode_value(&v).unwrap() else {
            panic!("not an entry")
        };
        assert!(validate_entry(&back, 1 << 20).is_err());
    }

    #[test]
    fn forks_and_forgets_round_trip() {
        let mut p = TestPeer::new(3);
        let mut q = p.clone();
        let a = p.make(1, b"a".to_vec());
        let b = q.make(2, b"b".to_vec());
        let proof = ForkProof::new(a.signed_header(), b.signed_header()).unwrap();
        let v = encode_value(&RecordBody::Fork(proof.clone())).unwrap();
        let Decoded::Fork(back) = decode_value(&v).unwrap() else {
            panic!("not a fork")
        };
        validate_signature(&back.a).unwrap();
        assert_eq!(back.check().unwrap(), proof);

        let f = p.key.feed_id();
        let v = encode_value(&RecordBody::Forget(f)).unwrap();
        assert_eq!(decode_value(&v).unwrap(), Decoded::Forget(f));
        let k = encode(&rec(RecordBody::Forget(f))).unwrap();
        assert_eq!(k.key, f.to_string());
        assert_eq!(k.kind, "forget");
    }

    #[test]
    fn garbage_is_a_typed_error_never_a_panic() {
        let mut peer = TestPeer::new(4);
        let e = peer.make(1000, b"x".to_vec());
        let good = encode_value(&RecordBody::Entry(e)).unwrap();
        // Every prefix either decodes or fails with an error.
        for n in 0..good.len() {
            let _ = decode_value(&good[..n]);
        }
        assert_eq!(decode_value(&[]), Err(CodecError::Truncated("version")));
        assert_eq!(decode_value(&[9, 1]), Err(CodecError::Version(9)));
        assert_eq!(decode_value(&[1, 9]), Err(CodecError::Kind(9)));
        let mut bad = good.clone();
        bad[2] = 0xff; // header length far past the end
        assert!(matches!(
            decode_value(&bad),
            Err(CodecError::Truncated("header"))
        ));
        let mut forget = encode_value(&RecordBody::Forget(peer.key.feed_id())).unwrap();
        forget.push(0);
        assert_eq!(decode_value(&forget), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn json_view_names_the_entry() {
        let mut peer = TestPeer::new(5);
        let e = peer.make(1234, b"{}".to_vec());
        let k = encode(&rec(RecordBody::Entry(e.clone()))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&k.json).unwrap();
        assert_eq!(v["kind"], "entry");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["timestamp"], 1234);
        assert_eq!(v["id"], e.id().to_string());
        assert_eq!(v["author"], e.header.author.to_string());
        assert_eq!(v["payload"], "held");
        assert_eq!(k.key, e.header.author.to_string());
    }
}
