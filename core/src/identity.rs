//! Identities: one person (or service) behind several device feeds.
//!
//! An *identity* is its own ed25519 key ([`IdentityKey`]). Its public half
//! names an ordinary feed, the *identity feed*, whose entries are system
//! payloads ([`crate::system`]) signed by the identity key like any entry:
//!
//! ```text
//! "\0kappadb/delegate/v1\0" || postcard(Delegation { device: [32], device_sig: 0x40 [64] })
//! "\0kappadb/revoke/v1\0"   || postcard(Revocation { device: [32], from: u64 })
//! device_sig = ed25519 by `device` over
//!              "kappadb/delegation/v1\0" || identity (32) || device (32)
//! ```
//!
//! - A **delegation** says "feed `device` speaks for this identity". It is
//!   signed twice: by the identity (the entry's signature, since the entry
//!   is in the identity's feed) and by the device ([`Delegation::device_sig`],
//!   its consent, bound to both ids). Nobody can make a feed speak for an
//!   identity without that feed's key, and a delegation copied into another
//!   identity's feed does not verify there (the consent names the identity).
//! - A **revocation** says "feed `device` no longer speaks for this
//!   identity, from its seq `from` on": the device's entries with
//!   `seq >= from` leave identity-resolved results.
//!
//! Rules checked on every peer, at append and at ingest, needing no other
//! entry ([`check_payload`]; a break is [`crate::EntryError::Identity`], so
//! a sync page holding one is refused whole and nothing of it is stored):
//! the body is the canonical encoding of its kind; a delegation's device is
//! a valid key other than the identity, and `device_sig` verifies by the
//! signature rule of entries (`sig.rs`); a revocation names a device other
//! than the identity and `from >= 1`.
//!
//! Rules that need the identity feed's earlier entries, checked when an
//! identity entry is written here ([`crate::Db::append_identity`]) and
//! applied by the resolution on every peer (an entry breaking them has no
//! effect): a device revoked earlier in the identity feed cannot be
//! delegated again (a revocation is final; the device makes a new feed);
//! a revocation names a device delegated earlier in the feed.
//!
//! How views resolve authors to identities is in `kappadb_views::identity`.
//!
//! ```
//! use kappadb_core::identity::{Delegation, IdentityKey, check_payload};
//! use kappadb_core::SigningKey;
//! let identity = IdentityKey::from_seed([1; 32]);
//! let device = SigningKey::from_seed([2; 32]);
//! let d = Delegation::new(identity.id(), &device);
//! assert!(check_payload(&identity.id(), &d.encode()).is_ok());
//! // The same consent is worthless in another identity's feed.
//! let other = IdentityKey::from_seed([3; 32]);
//! assert!(check_payload(&other.id(), &d.encode()).is_err());
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::keys::{FeedId, KeyError, SigningKey, hex, parse_hex32};
use crate::system::{DELEGATE_V1, REVOKE_V1, SystemPayload};

/// What a device signs to consent to a delegation, before the two ids.
pub const CONSENT_DOMAIN: &[u8] = b"kappadb/delegation/v1\0";

/// The printable form of an identity key starts with this.
pub const KEY_TEXT_PREFIX: &str = "kappa-identity-v1:";

/// The message a device signs to consent to speak for `identity`.
pub fn consent_message(identity: &FeedId, device: &FeedId) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CONSENT_DOMAIN.len() + 64);
    msg.extend_from_slice(CONSENT_DOMAIN);
    msg.extend_from_slice(identity.as_bytes());
    msg.extend_from_slice(device.as_bytes());
    msg
}

/// The secret key of an identity: signs the entries of the identity feed.
/// `Debug` prints the public part only.
#[derive(Clone)]
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    /// A fresh identity key.
    pub fn generate() -> Result<Self, KeyError> {
        SigningKey::generate().map(Self)
    }

    /// An identity key from its 32 secret bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_seed(seed))
    }

    /// The identity's id: the public key, which names the identity feed.
    pub fn id(&self) -> FeedId {
        self.0.feed_id()
    }

    /// The signing key of the identity feed.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The printable form, `kappa-identity-v1:` and 64 hex digits. It is
    /// the secret: whoever holds it can delegate and revoke.
    pub fn to_text(&self) -> String {
        format!("{KEY_TEXT_PREFIX}{}", hex(&self.0.to_seed()))
    }

    /// Parse the printable form (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, IdentityError> {
        text.trim()
            .strip_prefix(KEY_TEXT_PREFIX)
            .and_then(parse_hex32)
            .map(Self::from_seed)
            .ok_or(IdentityError::BadKeyText)
    }

    /// Write the key to a new file (mode 0600, the same format as a feed
    /// key file). Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        self.0.save(path)
    }

    /// Load a key file written by [`IdentityKey::save`] (mode 0600 only).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        SigningKey::load(path).map(Self)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.id().fmt_short())
    }
}

/// A delegation's body. Field order is part of the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The feed that speaks for the identity.
    pub device: FeedId,
    /// The device's signature over [`consent_message`]`(identity, device)`.
    pub device_sig: ed25519_dalek::Signature,
}

impl Delegation {
    /// The delegation of `device` (signing its consent) to `identity`.
    pub fn new(identity: FeedId, device: &SigningKey) -> Self {
        let id = device.feed_id();
        Self {
            device: id,
            device_sig: device.sign(&consent_message(&identity, &id)),
        }
    }

    /// A delegation from a consent signature made elsewhere (the device
    /// signed [`consent_message`] on its own machine), as its 64 bytes.
    pub fn from_consent(device: FeedId, device_sig: [u8; 64]) -> Self {
        Self {
            device,
            device_sig: ed25519_dalek::Signature::from_bytes(&device_sig),
        }
    }

    /// The payload of this delegation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DELEGATE_V1.to_vec();
        // Encoding plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// The stateless rules for a delegation in `identity`'s feed.
    pub fn check(&self, identity: &FeedId) -> Result<(), IdentityError> {
        if self.device == *identity {
            return Err(IdentityError::SelfDelegation);
        }
        let msg = consent_message(identity, &self.device);
        crate::sig::verify_one(&crate::sig::Message {
            key: &self.device,
            msg: &msg,
            signature: &self.device_sig,
        })
        .map_err(|_| IdentityError::BadConsent {
            device: self.device,
        })
    }
}

/// A revocation's body. Field order is part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The feed that no longer speaks for the identity.
    pub device: FeedId,
    /// Its first entry that no longer does (at least 1).
    pub from: u64,
}

impl Revocation {
    /// The payload of this revocation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = REVOKE_V1.to_vec();
        // Encoding plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// The stateless rules for a revocation in `identity`'s feed.
    pub fn check(&self, identity: &FeedId) -> Result<(), IdentityError> {
        if self.device == *identity {
            return Err(IdentityError::SelfRevocation);
        }
        if self.from == 0 {
            return Err(IdentityError::BadRevocationPoint);
        }
        Ok(())
    }
}

/// An identity entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityOp {
    /// A delegation.
    Delegate(Delegation),
    /// A revocation.
    Revoke(Revocation),
}

impl IdentityOp {
    /// The device the op names.
    pub fn device(&self) -> FeedId {
        match self {
            IdentityOp::Delegate(d) => d.device,
            IdentityOp::Revoke(r) => r.device,
        }
    }
}

/// Parse `payload` as an identity op: `None` if it is not a delegation or
/// a revocation at all, else the op or why it breaks the stateless rules
/// for a payload of `author`'s feed.
pub fn parse(author: &FeedId, payload: &[u8]) -> Option<Result<IdentityOp, IdentityError>> {
    if !(payload.starts_with(DELEGATE_V1) || payload.starts_with(REVOKE_V1)) {
        return None;
    }
    Some(match SystemPayload::parse(payload)? {
        Ok(SystemPayload::Delegation(d)) => d.check(author).map(|()| IdentityOp::Delegate(d)),
        Ok(SystemPayload::Revocation(r)) => r.check(author).map(|()| IdentityOp::Revoke(r)),
        Ok(_) => Err(IdentityError::Malformed("not an identity op")),
        Err(crate::system::DeletionError::Malformed(why)) => Err(IdentityError::Malformed(why)),
        Err(_) => Err(IdentityError::Malformed("not an identity op")),
    })
}

/// The stateless rules for `payload` in `author`'s feed: `Ok` for anything
/// that is not an identity op, and for a valid one.
pub fn check_payload(author: &FeedId, payload: &[u8]) -> Result<(), IdentityError> {
    match parse(author, payload) {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e),
    }
}

/// The prefix of a pairing offer (kind `pair-offer`, version 1).
pub const PAIR_OFFER_V1: &[u8] = b"\0kappadb/pair-offer/v1\0";

/// The prefix of a pairing request (kind `pair-request`, version 1).
pub const PAIR_REQUEST_V1: &[u8] = b"\0kappadb/pair-request/v1\0";

/// The alphabet of pairing codes: lowercase letters and digits without
/// the look-alikes `l`, `o`, `0` and `1`.
const CODE_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// Bytes of secret in a pairing code (80 bits, 16 characters).
pub const CODE_BYTES: usize = 10;

/// A pairing code: the secret `kappa identity invite` prints and
/// `kappa identity join` takes. Never stored in the log; only keyed
/// hashes of it are (see `ARCHITECTURE.md`, *Pairing*). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; CODE_BYTES]);

impl PairingCode {
    /// A fresh random code.
    pub fn generate() -> Result<Self, KeyError> {
        let mut b = [0u8; CODE_BYTES];
        getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(b))
    }

    /// A code from its bytes (tests).
    pub fn from_bytes(bytes: [u8; CODE_BYTES]) -> Self {
        Self(bytes)
    }

    /// The printed form: 16 characters in groups of 4 (`abcd-efgh-...`).
    pub fn to_text(&self) -> String {
        let mut bits: u128 = 0;
        for b in self.0 {
            bits = (bits << 8) | u128::from(b);
        }
        let mut out = String::new();
        for i in 0..CODE_BYTES * 8 / 5 {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            let shift = CODE_BYTES * 8 - 5 * (i + 1);
            out.push(CODE_ALPHABET[((bits >> shift) & 31) as usize] as char);
        }
        out
    }

    /// Parse the printed form: case, spaces and dashes do not matter.
    pub fn from_text(text: &str) -> Result<Self, IdentityError> {
        let mut bits: u128 = 0;
        let mut n = 0;
        for c in text.chars().filter(|c| !matches!(c, '-' | ' ')) {
            let c = c.to_ascii_lowercase() as u8;
            let v = CODE_ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or(IdentityError::BadCode)?;
            bits = (bits << 5) | v as u128;
            n += 1;
        }
        if n != CODE_BYTES * 8 / 5 {
            return Err(IdentityError::BadCode);
        }
        let mut out = [0u8; CODE_BYTES];
        for (i, b) in out.iter_mut().enumerate() {
            *b = (bits >> (8 * (CODE_BYTES - 1 - i))) as u8;
        }
        Ok(Self(out))
    }

    fn key(&self) -> [u8; 32] {
        blake3::derive_key("kappadb pairing v1", &self.0)
    }

    /// The offer's tag for `identity`:
    /// `blake3_keyed(derive_key("kappadb pairing v1", code), "offer" || identity)`.
    pub fn offer_tag(&self, identity: &FeedId) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key());
        h.update(b"offer");
        h.update(identity.as_bytes());
        *h.finalize().as_bytes()
    }

    /// The request's proof that `device` holds the code:
    /// `blake3_keyed(key, "request" || identity || device)`.
    pub fn request_proof(&self, identity: &FeedId, device: &FeedId) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key());
        h.update(b"request");
        h.update(identity.as_bytes());
        h.update(device.as_bytes());
        *h.finalize().as_bytes()
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(..)")
    }
}

/// A pairing offer's body, an entry of the identity feed. Field order is
/// part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairOffer {
    /// [`PairingCode::offer_tag`] of the identity.
    pub tag: [u8; 32],
    /// Milliseconds since the epoch after which the offer is void.
    pub expires: u64,
}

impl PairOffer {
    /// The payload of this offer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = PAIR_OFFER_V1.to_vec();
        // Encoding plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }
}

/// A pairing request's body, an entry of the joining device's own feed.
/// Field order is part of the format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRequest {
    /// The identity the device asks to join.
    pub identity: FeedId,
    /// [`PairingCode::request_proof`] of the identity and the device.
    pub proof: [u8; 32],
    /// The device's consent ([`consent_message`]), for the delegation.
    pub device_sig: ed25519_dalek::Signature,
}

impl PairRequest {
    /// The request of `device` to join `identity` with `code`.
    pub fn new(identity: FeedId, device: &SigningKey, code: &PairingCode) -> Self {
        let d = Delegation::new(identity, device);
        Self {
            identity,
            proof: code.request_proof(&identity, &device.feed_id()),
            device_sig: d.device_sig,
        }
    }

    /// The payload of this request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = PAIR_REQUEST_V1.to_vec();
        // Encoding plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }
}

/// Why an identity op is refused, or why an identity action cannot be
/// done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The body does not decode, or is not its canonical encoding.
    #[error("malformed identity entry: {0}")]
    Malformed(&'static str),
    /// An identity cannot be its own device.
    #[error("an identity cannot delegate to its own feed")]
    SelfDelegation,
    /// An identity cannot revoke its own feed.
    #[error("an identity cannot revoke its own feed")]
    SelfRevocation,
    /// A revocation from seq 0.
    #[error("a revocation point is a seq, at least 1")]
    BadRevocationPoint,
    /// The device's consent does not verify: a forged delegation.
    #[error(
        "forged delegation: the consent signature of device {} does not verify for this identity",
        device.fmt_short()
    )]
    BadConsent {
        /// The device named.
        device: FeedId,
    },
    /// The device was revoked earlier in this identity feed.
    #[error("device {} was revoked from seq {from}; a revoked feed cannot be delegated again", device.fmt_short())]
    Revoked {
        /// The device.
        device: FeedId,
        /// Its revocation point.
        from: u64,
    },
    /// A revocation of a feed that was never delegated.
    #[error("feed {} is not a device of this identity", .0.fmt_short())]
    NotADevice(FeedId),
    /// The identity feed is forked: entries past the fork are not accepted.
    #[error("identity feed {} is forked at seq {fork_seq}", identity.fmt_short())]
    Forked {
        /// The identity.
        identity: FeedId,
        /// Where it forked.
        fork_seq: u64,
    },
    /// Text that should be a pairing code is not one.
    #[error(
        "not a pairing code: expected 16 letters and digits as printed by `kappa identity invite`"
    )]
    BadCode,
    /// Text that should be an identity key is not one.
    #[error("not an identity key: expected kappa-identity-v1: and 64 hex digits")]
    BadKeyText,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegation_encoding_known_answer() {
        // Pins the delegation format: every peer must read these bytes
        // alike. ed25519 signatures are deterministic, so the consent
        // signature is pinned too.
        let identity = IdentityKey::from_seed([1; 32]);
        let device = SigningKey::from_seed([2; 32]);
        let d = Delegation::new(identity.id(), &device);
        assert_eq!(
            hex(&consent_message(&identity.id(), &device.feed_id())),
            concat!(
                "6b617070616462",                                                   // "kappadb"
                "2f64656c65676174696f6e2f", // "/delegation/"
                "763100",                   // "v1\0"
                "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c", // identity
                "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394", // device
            )
        );
        assert_eq!(
            hex(&d.encode()),
            concat!(
                "006b617070616462",                                                 // "\0kappadb"
                "2f64656c65676174652f",                                             // "/delegate/"
                "763100",                                                           // "v1\0"
                "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394", // device
                "40", // the signature: 64 bytes, length-prefixed by serde
                "8425ee02eebd8269734a68dfcefef195dbfc1602c9540021445a6b3b551ba88e",
                "d0b4b8c33a306a9430013ee923c239d794d9dba0f78d4132a660cd1eb981f809",
            )
        );
        assert_eq!(
            SystemPayload::parse(&d.encode()),
            Some(Ok(SystemPayload::Delegation(d.clone())))
        );
    }

    #[test]
    fn revocation_encoding_known_answer() {
        let r = Revocation {
            device: FeedId([0xab; 32]),
            from: 300,
        };
        assert_eq!(
            hex(&r.encode()),
            concat!(
                "006b617070616462", // "\0kappadb"
                "2f7265766f6b652f", // "/revoke/"
                "763100",           // "v1\0"
                "abababababababababababababababababababababababababababababababab",
                "ac02", // from 300 (varint)
            )
        );
        assert_eq!(
            SystemPayload::parse(&r.encode()),
            Some(Ok(SystemPayload::Revocation(r)))
        );
    }

    #[test]
    fn forged_and_misplaced_delegations_are_refused() {
        let identity = IdentityKey::from_seed([1; 32]);
        let device = SigningKey::from_seed([2; 32]);
        let thief = SigningKey::from_seed([4; 32]);
        // A consent signed by another key than the device's.
        let mut forged = Delegation::new(identity.id(), &device);
        forged.device_sig = thief.sign(&consent_message(&identity.id(), &device.feed_id()));
        assert_eq!(
            check_payload(&identity.id(), &forged.encode()),
            Err(IdentityError::BadConsent {
                device: device.feed_id()
            })
        );
        // A genuine consent replayed into another identity's feed.
        let genuine = Delegation::new(identity.id(), &device);
        assert!(matches!(
            check_payload(&thief.feed_id(), &genuine.encode()),
            Err(IdentityError::BadConsent { .. })
        ));
        // An identity delegating to itself.
        let own = Delegation::new(identity.id(), identity.signing_key());
        assert_eq!(
            check_payload(&identity.id(), &own.encode()),
            Err(IdentityError::SelfDelegation)
        );
        let r = Revocation {
            device: device.feed_id(),
            from: 0,
        };
        assert_eq!(
            check_payload(&identity.id(), &r.encode()),
            Err(IdentityError::BadRevocationPoint)
        );
        let mut long = genuine.encode();
        long.push(0);
        assert!(matches!(
            check_payload(&identity.id(), &long),
            Err(IdentityError::Malformed(_))
        ));
        // Other payloads pass: they are not identity ops.
        assert_eq!(check_payload(&identity.id(), b"{}"), Ok(()));
    }

    #[test]
    fn pairing_known_answer() {
        // Pins the pairing formats: the code's text, the offer tag and the
        // request proof, and both payloads.
        let code = PairingCode::from_bytes([0x42; CODE_BYTES]);
        assert_eq!(code.to_text(), "ijbe-esuc-ijbe-esuc");
        assert_eq!(
            PairingCode::from_text(&code.to_text().to_uppercase()).unwrap(),
            code
        );
        assert_eq!(PairingCode::from_text("abcd"), Err(IdentityError::BadCode));
        let identity = IdentityKey::from_seed([1; 32]);
        let device = SigningKey::from_seed([2; 32]);
        let offer = PairOffer {
            tag: code.offer_tag(&identity.id()),
            expires: 1_000,
        };
        assert_eq!(
            hex(&offer.encode()),
            concat!(
                "006b617070616462",                                                 // "\0kappadb"
                "2f706169722d6f66666572",                                           // "/pair-offer"
                "2f763100",                                                         // "/v1\0"
                "ffea8dd587ea8252b1a26ac4e9815d4b295eb6c354c06ed258732dcc6624e19f", // tag
                "e807", // expires 1000 (varint)
            )
        );
        let req = PairRequest::new(identity.id(), &device, &code);
        assert_eq!(
            hex(&req.proof),
            "6e83d1be395baf6cf128e49e81470f92be83b4896411868b554730410ea0859c"
        );
        // The request body: identity, proof, then the consent (length-prefixed).
        assert!(hex(&req.encode()).starts_with(concat!(
            "006b6170706164622f706169722d726571756573742f763100",
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
            "6e83d1be395baf6cf128e49e81470f92be83b4896411868b554730410ea0859c",
            "40",
        )));
        assert_eq!(
            SystemPayload::parse(&req.encode()),
            Some(Ok(SystemPayload::PairRequest(req.clone())))
        );
        assert_eq!(
            SystemPayload::parse(&offer.encode()),
            Some(Ok(SystemPayload::PairOffer(offer)))
        );
        // Another code gives other tags.
        let other = PairingCode::from_bytes([0x43; CODE_BYTES]);
        assert_ne!(other.offer_tag(&identity.id()), offer.tag);
    }

    #[test]
    fn key_text_round_trips() {
        let k = IdentityKey::from_seed([9; 32]);
        let text = k.to_text();
        assert!(text.starts_with(KEY_TEXT_PREFIX));
        assert_eq!(
            IdentityKey::from_text(&format!(" {text}\n")).unwrap().id(),
            k.id()
        );
        assert_eq!(
            IdentityKey::from_text("kappa-identity-v1:zz").err(),
            Some(IdentityError::BadKeyText)
        );
        assert!(!format!("{k:?}").contains(&text[KEY_TEXT_PREFIX.len()..]));
    }
}
