//! The signature rule (validation rule 4), checked one at a time or in
//! batches, with the same verdict either way.
//!
//! A signature `(R, s)` by the key `A` over the message `M` (an entry id;
//! `test_utils::verify_message` applies the same rule to any byte
//! string, for external vectors) is valid iff
//! 1. `A` is the canonical encoding of a curve point ([`canonical_encoding`])
//!    that lies in the prime-order subgroup and is not the identity: no
//!    small order, no small-order component ([`FeedId::verifying_key`];
//!    checked once per key and cached);
//! 2. `s` is a canonical scalar (`s < ℓ`);
//! 3. `R` is the canonical encoding of a curve point that is not of small
//!    order;
//! 4. `[8]([s]B − R − [k]A)` is the identity, where
//!    `k = SHA-512(R ‖ A ‖ M) mod ℓ` and `B` is the base point.
//!
//! This is ed25519 (RFC 8032) with the *cofactored* equation. On keys it is
//! stricter than RFC 8032 and as strict as libsodium: a key with a
//! small-order component (a point of mixed order) is refused, so a
//! signature by such a key, which cofactorless verifiers refuse, is
//! refused here too. Against ed25519-dalek's `verify_strict`: every
//! signature it accepts by a torsion-free key is accepted here (its
//! signatures by mixed-order keys, whose small-order parts happen to
//! cancel, are refused here by rule 1); this rule also accepts the ones
//! whose `R` carries a small-order component, which no honest signer
//! produces (checking `R`'s subgroup would cost a scalar multiplication
//! per signature). `core/tests/vectors.rs` pins the verdict on every
//! external vector, and asserts these relations.
//!
//! The reason for the cofactor: a batch check
//! `Σ zᵢ([sᵢ]B − Rᵢ − [kᵢ]Aᵢ) = 0` with random `zᵢ` cannot tell a
//! small-order error term from none, so with the cofactorless equation a
//! crafted signature would pass or fail depending on the random
//! coefficients, that is, on which page it arrived in. With `[8]` applied on
//! both paths, single and batch checks agree (up to a 2⁻¹²⁸ chance that the
//! batch misses a bad signature), so every peer applies the same rule.
//!
//! Batches gain twice over a generic batch verifier: a key shared by many
//! signatures (a page usually holds one feed) enters the multiscalar
//! multiplication once, with the sum of its coefficients, and large batches
//! use Pippenger's method.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use crate::entry::{EntryId, SignedHeader};
use crate::keys::FeedId;
use crate::validate::EntryError;

/// Domain of the hash that derives a batch's random coefficients.
const BATCH_CONTEXT: &str = "kappadb 2026-11 ed25519 batch coefficients v1";

/// The parts of one signature that passed rules 2 and 3.
struct Parts {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// Which part of the rule a signature breaks, checked in this order. The
/// entry path reports the key classes as [`EntryError::BadAuthor`] and the
/// others as [`EntryError::BadSignature`]; the two length classes only
/// arise for signatures over arbitrary bytes (an entry holds exactly 32
/// and 64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The key is not 32 bytes.
    #[error("key is not 32 bytes")]
    KeyLength,
    /// The signature is not 64 bytes.
    #[error("signature is not 64 bytes")]
    SignatureLength,
    /// Rule 1: the key is not a canonical point encoding.
    #[error("key is not a canonical point encoding")]
    KeyEncoding,
    /// Rule 1: the key's bytes decode to no curve point.
    #[error("key is not a curve point")]
    KeyNotAPoint,
    /// Rule 1: the key is a point of small order (the identity included).
    #[error("key has small order")]
    KeySmallOrder,
    /// Rule 1: the key has a small-order component (mixed order).
    #[error("key has a small-order component")]
    KeyTorsion,
    /// Rule 2: `s` is not below ℓ.
    #[error("s is not a canonical scalar")]
    ScalarNotCanonical,
    /// Rule 3: `R` is not a canonical point encoding.
    #[error("R is not a canonical point encoding")]
    REncoding,
    /// Rule 3: `R`'s bytes decode to no curve point.
    #[error("R is not a curve point")]
    RNotAPoint,
    /// Rule 3: `R` has small order.
    #[error("R has small order")]
    RSmallOrder,
    /// Rule 4: the cofactored equation does not hold.
    #[error("the verification equation does not hold")]
    Equation,
}

impl Refusal {
    /// Whether rule 1 (the key) is what fails.
    pub fn is_key(self) -> bool {
        matches!(
            self,
            Refusal::KeyLength
                | Refusal::KeyEncoding
                | Refusal::KeyNotAPoint
                | Refusal::KeySmallOrder
                | Refusal::KeyTorsion
        )
    }
}

/// One signature as the rule sees it: a key, a message, a signature, and
/// how a refusal is reported. Entries sign their 32-byte id
/// ([`ToVerify`]); any byte string can be checked the same way
/// (`Message`).
pub(crate) trait Claim {
    /// What a refusal becomes.
    type Error;
    fn key(&self) -> &FeedId;
    fn msg(&self) -> &[u8];
    fn signature(&self) -> &ed25519_dalek::Signature;
    fn refused(&self, why: Refusal) -> Self::Error;
}

/// p = 2²⁵⁵ − 19, little-endian.
const P_BYTES: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// Whether 32 bytes are the canonical encoding of a curve point's `y`
/// and sign: `y` (the low 255 bits, little-endian) is below p, and the sign
/// bit is clear when `x` is 0 (`y` = 1 or `y` = p − 1). Other encodings of
/// the same point are refused, for keys and for `R` alike. Whether the
/// point exists at all is the decoder's business.
pub fn canonical_encoding(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    let sign = bytes[31] >> 7;
    // y < p, compared from the most significant byte.
    let below_p = y
        .iter()
        .rev()
        .zip(P_BYTES.iter().rev())
        .find(|(a, b)| a != b)
        .is_some_and(|(a, b)| a < b);
    if !below_p {
        return false;
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p_minus_one = P_BYTES;
    p_minus_one[0] -= 1;
    !(sign == 1 && (y == one || y == p_minus_one))
}

/// Rule 1 for a key's bytes: its point, or the reason it is refused.
pub(crate) fn key_point(bytes: &[u8; 32]) -> Result<EdwardsPoint, Refusal> {
    if !canonical_encoding(bytes) {
        return Err(Refusal::KeyEncoding);
    }
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(Refusal::KeyNotAPoint)?;
    if point.is_small_order() {
        return Err(Refusal::KeySmallOrder);
    }
    if !point.is_torsion_free() {
        return Err(Refusal::KeyTorsion);
    }
    Ok(point)
}

/// Decode `R` and `s` and compute `k`; an error breaks rule 2 or 3.
fn parts(key: &[u8; 32], msg: &[u8], sig: &ed25519_dalek::Signature) -> Result<Parts, Refusal> {
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes()))
        .ok_or(Refusal::ScalarNotCanonical)?;
    if !canonical_encoding(sig.r_bytes()) {
        return Err(Refusal::REncoding);
    }
    let r = CompressedEdwardsY(*sig.r_bytes())
        .decompress()
        .ok_or(Refusal::RNotAPoint)?;
    if r.is_small_order() {
        return Err(Refusal::RSmallOrder);
    }
    let k = challenge(sig.r_bytes(), key, msg);
    Ok(Parts { r, s, k })
}

/// `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
fn challenge(r: &[u8; 32], key: &[u8; 32], msg: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(key);
    h.update(msg);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// Rule 4 for one signature.
fn equation_holds(a: &EdwardsPoint, p: &Parts) -> bool {
    // [k](−A) + [s]B, then subtract R.
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &-a, &p.s);
    (sb_minus_ka - p.r).mul_by_cofactor().is_identity()
}

/// One signature to check: the author's key, the entry id it signs, and the
/// seq for the error message.
#[derive(Clone, Copy)]
pub(crate) struct ToVerify<'a> {
    pub author: &'a FeedId,
    pub seq: u64,
    pub id: &'a EntryId,
    pub signature: &'a ed25519_dalek::Signature,
}

impl<'a> ToVerify<'a> {
    /// A signed header's signature over `id`, its recomputed id.
    pub(crate) fn of(signed: &'a SignedHeader, id: &'a EntryId) -> Self {
        ToVerify {
            author: &signed.header.author,
            seq: signed.header.seq,
            id,
            signature: &signed.signature,
        }
    }
}

impl Claim for ToVerify<'_> {
    type Error = EntryError;

    fn key(&self) -> &FeedId {
        self.author
    }

    fn msg(&self) -> &[u8] {
        &self.id.0
    }

    fn signature(&self) -> &ed25519_dalek::Signature {
        self.signature
    }

    fn refused(&self, why: Refusal) -> EntryError {
        if why.is_key() {
            EntryError::BadAuthor(*self.author)
        } else {
            EntryError::BadSignature {
                author: *self.author,
                seq: self.seq,
            }
        }
    }
}

/// A signature over any byte string: external vectors checked against
/// this rule (`test_utils::verify_message`), and a device's consent in a
/// delegation (`identity.rs`).
#[derive(Clone, Copy)]
pub(crate) struct Message<'a> {
    pub key: &'a FeedId,
    pub msg: &'a [u8],
    pub signature: &'a ed25519_dalek::Signature,
}

impl Claim for Message<'_> {
    type Error = Refusal;

    fn key(&self) -> &FeedId {
        self.key
    }

    fn msg(&self) -> &[u8] {
        self.msg
    }

    fn signature(&self) -> &ed25519_dalek::Signature {
        self.signature
    }

    fn refused(&self, why: Refusal) -> Refusal {
        why
    }
}

/// Author keys that passed rule 1, with their points. Bounded: when full
/// it starts again empty (a key costs one scalar multiplication to check
/// again).
static KEYS: LazyLock<RwLock<HashMap<FeedId, EdwardsPoint>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));
const KEYS_CACHED: usize = 16_384;

/// Rule 1 through the cache: the key as a point, or why it is refused.
fn cached_key_point(author: &FeedId) -> Result<EdwardsPoint, Refusal> {
    if let Some(point) = KEYS.read().ok().and_then(|keys| keys.get(author).copied()) {
        return Ok(point);
    }
    let point = key_point(author.as_bytes())?;
    if let Ok(mut keys) = KEYS.write() {
        if keys.len() >= KEYS_CACHED {
            keys.clear();
        }
        keys.insert(*author, point);
    }
    Ok(point)
}

/// Rule 1: the author's key as a point, or [`EntryError::BadAuthor`].
pub(crate) fn author_point(author: &FeedId) -> Result<EdwardsPoint, EntryError> {
    cached_key_point(author).map_err(|_| EntryError::BadAuthor(*author))
}

/// Check one signature.
pub(crate) fn verify_one<C: Claim>(item: &C) -> Result<(), C::Error> {
    let key = item.key();
    let a = cached_key_point(key).map_err(|why| item.refused(why))?;
    let p = parts(key.as_bytes(), item.msg(), item.signature()).map_err(|why| item.refused(why))?;
    if equation_holds(&a, &p) {
        Ok(())
    } else {
        Err(item.refused(Refusal::Equation))
    }
}

/// Check a batch of signatures with one multiscalar multiplication. Returns
/// one result per input, in order; if the batch equation fails, each
/// signature is re-checked alone so the bad ones are named exactly.
pub(crate) fn verify_batch<C: Claim>(batch: &[C]) -> Vec<Result<(), C::Error>> {
    let mut results: Vec<Result<(), C::Error>> = batch.iter().map(|_| Ok(())).collect();
    // Distinct keys, in first-seen order.
    let mut keys: Vec<(FeedId, EdwardsPoint)> = Vec::new();
    // (input index, key slot, parts) of the signatures that reach rule 4.
    let mut items: Vec<(usize, usize, Parts)> = Vec::with_capacity(batch.len());
    let mut seed = blake3::Hasher::new_derive_key(BATCH_CONTEXT);
    for (i, item) in batch.iter().enumerate() {
        let author = *item.key();
        // Pages usually hold one feed: look at the latest key first.
        let slot = match keys.iter().rposition(|(k, _)| *k == author) {
            Some(slot) => slot,
            None => match cached_key_point(&author) {
                Ok(a) => {
                    keys.push((author, a));
                    keys.len() - 1
                }
                Err(why) => {
                    results[i] = Err(item.refused(why));
                    continue;
                }
            },
        };
        let msg = item.msg();
        match parts(author.as_bytes(), msg, item.signature()) {
            Ok(p) => {
                seed.update(author.as_bytes());
                // The length keeps messages of any length apart.
                seed.update(&(msg.len() as u64).to_le_bytes());
                seed.update(msg);
                seed.update(&item.signature().to_bytes());
                items.push((i, slot, p));
            }
            Err(why) => results[i] = Err(item.refused(why)),
        }
    }
    if items.is_empty() {
        return results;
    }
    // The coefficients depend on every signature in the batch, so none can
    // be chosen to cancel another's error.
    let mut xof = seed.finalize_xof();
    let mut b_coef = Scalar::ZERO;
    let mut key_coefs = vec![Scalar::ZERO; keys.len()];
    let mut z_coefs = Vec::with_capacity(items.len());
    for (_, slot, p) in &items {
        let mut z = [0u8; 16];
        xof.fill(&mut z);
        let z = Scalar::from(u128::from_le_bytes(z));
        b_coef += z * p.s;
        key_coefs[*slot] += z * p.k;
        z_coefs.push(z);
    }
    let scalars = std::iter::once(-b_coef).chain(key_coefs).chain(z_coefs);
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(keys.iter().map(|(_, a)| *a))
        .chain(items.iter().map(|(_, _, p)| p.r));
    let sum = EdwardsPoint::vartime_multiscalar_mul(scalars, points);
    if !sum.mul_by_cofactor().is_identity() {
        for (i, slot, p) in &items {
            if !equation_holds(&keys[*slot].1, p) {
                results[*i] = Err(batch[*i].refused(Refusal::Equation));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    //! Signatures made by hand from scalars, so the tests can build the
    //! edge cases no honest signer makes: small-order and mixed-order `R`,
    //! non-canonical `s`.
    use super::*;
    use crate::entry::{HEADER_VERSION, Hash, Header};
    use curve25519_dalek::constants::EIGHT_TORSION;
    use proptest::prelude::*;

    struct HandKey {
        a: Scalar,
        public: [u8; 32],
    }

    impl HandKey {
        fn new(seed: u8) -> Self {
            let a = Scalar::from_bytes_mod_order_wide(&Sha512::digest([seed; 32]).into());
            let public = EdwardsPoint::mul_base(&a).compress().to_bytes();
            HandKey { a, public }
        }

        fn header(&self, seq: u64) -> Header {
            Header {
                version: HEADER_VERSION,
                author: FeedId(self.public),
                seq,
                prev: None,
                timestamp: seq,
                payload_len: 0,
                payload_hash: Hash::of(b""),
            }
        }

        /// Sign with nonce point `[r]B + extra`, and `s` offset by `s_add`.
        fn sign_with(&self, header: Header, extra: EdwardsPoint, s_add: Scalar) -> SignedHeader {
            let msg = header.id();
            let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(msg.0).into());
            let big_r = (EdwardsPoint::mul_base(&r) + extra).compress();
            let k = challenge(big_r.as_bytes(), &self.public, &msg.0);
            let s = r + k * self.a + s_add;
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(big_r.as_bytes());
            bytes[32..].copy_from_slice(s.as_bytes());
            SignedHeader {
                header,
                signature: ed25519_dalek::Signature::from_bytes(&bytes),
            }
        }

        fn sign(&self, seq: u64) -> SignedHeader {
            self.sign_with(self.header(seq), EdwardsPoint::default(), Scalar::ZERO)
        }
    }

    fn batch_results(items: &[SignedHeader]) -> Vec<Result<(), EntryError>> {
        let ids: Vec<EntryId> = items.iter().map(|s| s.header.id()).collect();
        let batch: Vec<ToVerify<'_>> = items
            .iter()
            .zip(&ids)
            .map(|(s, id)| ToVerify::of(s, id))
            .collect();
        verify_batch(&batch)
    }

    fn batch_of(items: &[SignedHeader]) -> Vec<bool> {
        batch_results(items).iter().map(Result::is_ok).collect()
    }

    fn single(s: &SignedHeader) -> Result<(), EntryError> {
        crate::validate::validate_signature(s)
    }

    fn singles(items: &[SignedHeader]) -> Vec<bool> {
        items.iter().map(|s| single(s).is_ok()).collect()
    }

    #[test]
    fn hand_signatures_match_ed25519_dalek() {
        let key = HandKey::new(1);
        let signed = key.sign(1);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.public).unwrap();
        vk.verify_strict(&signed.header.id().0, &signed.signature)
            .unwrap();
        assert!(single(&signed).is_ok());
        // And signatures from ed25519-dalek's signer verify here.
        let sk = crate::keys::SigningKey::from_seed([3; 32]);
        let e = crate::entry::Entry::sign(&sk, None, 1, b"x".to_vec());
        assert!(single(&e.signed_header()).is_ok());
    }

    #[test]
    fn mixed_order_r_is_accepted_by_both_paths() {
        let key = HandKey::new(2);
        // R = [r]B + T with T of order 8: the cofactorless equation fails,
        // the cofactored one holds.
        let odd = key.sign_with(key.header(7), EIGHT_TORSION[1], Scalar::ZERO);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.public).unwrap();
        assert!(
            vk.verify_strict(&odd.header.id().0, &odd.signature)
                .is_err()
        );
        assert!(single(&odd).is_ok());
        let mut batch: Vec<SignedHeader> = (1..40).map(|s| key.sign(s)).collect();
        batch.insert(17, odd);
        assert_eq!(batch_of(&batch), vec![true; 40]);
    }

    #[test]
    fn small_order_r_and_non_canonical_s_are_rejected_by_both_paths() {
        let key = HandKey::new(3);
        // R = T alone: with s = k·a the cofactored equation holds, rule 3
        // still refuses it.
        let header = key.header(1);
        let msg = header.id();
        let big_r = EIGHT_TORSION[3].compress();
        let k = challenge(big_r.as_bytes(), &key.public, &msg.0);
        let s = k * key.a;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(big_r.as_bytes());
        bytes[32..].copy_from_slice(s.as_bytes());
        let small_r = SignedHeader {
            header,
            signature: ed25519_dalek::Signature::from_bytes(&bytes),
        };
        // s + ℓ: the same point equation, a non-canonical encoding.
        let good = key.sign(2);
        let mut bytes = good.signature.to_bytes();
        // Add ℓ: the bytes of ℓ − 1, plus a carry of 1.
        let mut carry = 1u16;
        let ell = (-Scalar::ONE).to_bytes();
        for i in 0..32 {
            let v = u16::from(bytes[32 + i]) + u16::from(ell[i]) + carry;
            bytes[32 + i] = v as u8;
            carry = v >> 8;
        }
        let big_s = SignedHeader {
            header: good.header.clone(),
            signature: ed25519_dalek::Signature::from_bytes(&bytes),
        };
        let batch = vec![key.sign(3), small_r, big_s, good];
        assert_eq!(singles(&batch), vec![true, false, false, true]);
        assert_eq!(batch_of(&batch), vec![true, false, false, true]);
    }

    #[test]
    fn batches_with_several_authors_name_each_bad_signature() {
        let keys: Vec<HandKey> = (10..14).map(HandKey::new).collect();
        let mut batch: Vec<SignedHeader> = (0..80u64)
            .map(|i| keys[(i % 4) as usize].sign(i + 1))
            .collect();
        // A prime-order error term on two entries of different authors.
        let k = &keys[1];
        batch[5] = k.sign_with(k.header(6), EdwardsPoint::default(), Scalar::ONE);
        batch[42] = keys[2].sign_with(keys[2].header(43), ED25519_BASEPOINT_POINT, Scalar::ZERO);
        // A key of small order (a weak key).
        let mut bad_key = keys[3].sign(70);
        bad_key.header.author = FeedId(EIGHT_TORSION[2].compress().to_bytes());
        batch[69] = bad_key;
        let expect: Vec<bool> = (0..80).map(|i| ![5, 42, 69].contains(&i)).collect();
        assert_eq!(singles(&batch), expect);
        assert_eq!(batch_of(&batch), expect);
        assert!(matches!(
            batch_results(&batch)[69],
            Err(EntryError::BadAuthor(_))
        ));
    }

    /// `y` as 32 little-endian bytes, plus `add` (no carry out of the
    /// top byte), with the sign bit.
    fn y_bytes(y: u8, add_p: bool, sign: bool) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = y;
        if add_p {
            // y + p, for y < 19: p's low byte is 0xed.
            b = P_BYTES;
            b[0] = 0xed + y;
        }
        if sign {
            b[31] |= 0x80;
        }
        b
    }

    #[test]
    fn canonical_encodings() {
        assert!(canonical_encoding(
            &ED25519_BASEPOINT_POINT.compress().to_bytes()
        ));
        assert!(canonical_encoding(&y_bytes(1, false, false)));
        assert!(canonical_encoding(&y_bytes(0, false, true)));
        let mut p_minus_one = P_BYTES;
        p_minus_one[0] -= 1;
        assert!(canonical_encoding(&p_minus_one));
        // y >= p.
        for y in 0..19 {
            assert!(!canonical_encoding(&y_bytes(y, true, false)), "y = p + {y}");
            assert!(
                !canonical_encoding(&y_bytes(y, true, true)),
                "y = p + {y}, signed"
            );
        }
        assert!(!canonical_encoding(&[0xff; 32]));
        // x = 0 with the sign bit set.
        assert!(!canonical_encoding(&y_bytes(1, false, true)));
        p_minus_one[31] |= 0x80;
        assert!(!canonical_encoding(&p_minus_one));
    }

    #[test]
    fn mixed_order_keys_are_refused_by_both_paths() {
        // A key A + T with T of order 8: a signature with s = r + k·a
        // passes the cofactored equation, and cofactorless verifiers
        // refuse it; the key is refused as an author.
        let honest = HandKey::new(30);
        for (t, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
            let public = (EdwardsPoint::mul_base(&honest.a) + torsion)
                .compress()
                .to_bytes();
            let key = HandKey {
                a: honest.a,
                public,
            };
            let signed = key.sign(1);
            assert!(
                matches!(single(&signed), Err(EntryError::BadAuthor(_))),
                "torsion {t}"
            );
            let batch = vec![honest.sign(1), signed, honest.sign(2)];
            let results = batch_results(&batch);
            assert!(
                matches!(results[1], Err(EntryError::BadAuthor(_))),
                "torsion {t}"
            );
            assert_eq!(batch_of(&batch), vec![true, false, true]);
            assert!(FeedId(public).verifying_key().is_err());
            // The header check refuses it too (an append by such a key).
            assert!(matches!(
                crate::validate::validate_header(&key.header(1), 1024),
                Err(EntryError::BadAuthor(_))
            ));
        }
        assert!(FeedId(honest.public).verifying_key().is_ok());
    }

    #[test]
    fn non_canonical_keys_and_r_are_refused() {
        // Every point with a second encoding (y < 19, or x = 0): the other
        // encoding is refused as a key and as R, though ed25519-dalek's
        // decoder takes some of them.
        let key = HandKey::new(31);
        let good = key.sign(1);
        let mut refused = 0;
        for y in 0..19u8 {
            for (add_p, sign) in [(true, false), (true, true), (false, true)] {
                let bytes = y_bytes(y, add_p, sign);
                if canonical_encoding(&bytes) {
                    continue;
                }
                refused += 1;
                assert!(
                    FeedId(bytes).verifying_key().is_err(),
                    "key y={y} {add_p} {sign}"
                );
                let mut sig = good.signature.to_bytes();
                sig[..32].copy_from_slice(&bytes);
                let bad_r = SignedHeader {
                    header: good.header.clone(),
                    signature: ed25519_dalek::Signature::from_bytes(&sig),
                };
                assert!(single(&bad_r).is_err());
                assert_eq!(batch_of(&[good.clone(), bad_r]), vec![true, false]);
            }
        }
        assert!(refused >= 38, "{refused}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever mix of good and broken signatures a batch holds, it
        /// gives each one the verdict a single check gives.
        #[test]
        fn batch_verdicts_equal_single_verdicts(
            kinds in proptest::collection::vec((0u8..6, 0u8..3, 0usize..8), 1..48),
        ) {
            let keys: Vec<HandKey> = (20..23).map(HandKey::new).collect();
            let batch: Vec<SignedHeader> = kinds
                .iter()
                .enumerate()
                .map(|(i, &(kind, who, t))| {
                    let key = &keys[who as usize];
                    let h = key.header(i as u64 + 1);
                    match kind {
                        // Torsion in R: valid under the cofactored rule.
                        1 => key.sign_with(h, EIGHT_TORSION[t], Scalar::ZERO),
                        // Wrong s.
                        2 => key.sign_with(h, EdwardsPoint::default(), Scalar::from(t as u64 + 1)),
                        // Torsion and a prime-order error together.
                        3 => key.sign_with(h, EIGHT_TORSION[t] + ED25519_BASEPOINT_POINT, Scalar::ZERO),
                        // Signed over another header.
                        4 => {
                            let mut s = key.sign(i as u64 + 1);
                            s.header.timestamp += 1;
                            s
                        }
                        _ => key.sign(i as u64 + 1),
                    }
                })
                .collect();
            let single = singles(&batch);
            for (i, &(kind, _, t)) in kinds.iter().enumerate() {
                let expect = match kind {
                    // R = [r]B + T is small order only when r = 0, never.
                    1 => true,
                    2..=4 => false,
                    _ => true,
                };
                prop_assert_eq!(single[i], expect, "entry {} kind {} t {}", i, kind, t);
            }
            prop_assert_eq!(batch_of(&batch), single);
        }
    }
}
