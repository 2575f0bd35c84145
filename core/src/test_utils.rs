//! Helpers for tests in this crate and others (feature `test_utils`).

use crate::entry::Entry;
use crate::keys::{FeedId, SigningKey};
use crate::sig::{Message, Refusal};

/// A peer with a deterministic key that signs entries without a database.
#[derive(Debug, Clone)]
pub struct TestPeer {
    /// The peer's key.
    pub key: SigningKey,
    /// Entries made so far, in seq order.
    pub entries: Vec<Entry>,
}

impl TestPeer {
    /// A peer whose key is derived from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8] = 0x5e;
        Self {
            key: SigningKey::from_seed(bytes),
            entries: Vec::new(),
        }
    }

    /// Sign the next entry with `payload` at `timestamp`.
    pub fn make(&mut self, timestamp: u64, payload: impl Into<Vec<u8>>) -> Entry {
        let e = Entry::sign(&self.key, self.entries.last(), timestamp, payload.into());
        self.entries.push(e.clone());
        e
    }
}

/// Check a signature over any byte string `msg` with exactly the rule
/// entries are checked with (`core/src/sig.rs`; entries sign their 32-byte
/// id), for external test vectors. Keys and signatures of the wrong length
/// are refused as such.
pub fn verify_message(key: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), Refusal> {
    let (key, signature) = sized(key, signature)?;
    crate::sig::verify_one(&Message {
        key: &key,
        msg,
        signature: &signature,
    })
}

/// [`verify_message`] for many `(key, msg, signature)` at once, through the
/// batch verifier: one result per input, in order.
pub fn verify_messages(batch: &[(&[u8], &[u8], &[u8])]) -> Vec<Result<(), Refusal>> {
    let sized: Vec<Result<(FeedId, ed25519_dalek::Signature), Refusal>> =
        batch.iter().map(|(k, _, s)| sized(k, s)).collect();
    let claims: Vec<Message<'_>> = sized
        .iter()
        .zip(batch)
        .filter_map(|(s, (_, msg, _))| {
            s.as_ref().ok().map(|(key, signature)| Message {
                key,
                msg,
                signature,
            })
        })
        .collect();
    // The length refusals, then the batch's verdicts in the other slots.
    let mut results: Vec<Result<(), Refusal>> = sized
        .iter()
        .map(|s| s.as_ref().map(|_| ()).map_err(|why| *why))
        .collect();
    let open = results.iter_mut().filter(|r| r.is_ok());
    for (slot, verdict) in open.zip(crate::sig::verify_batch(&claims)) {
        *slot = verdict;
    }
    results
}

fn sized(key: &[u8], signature: &[u8]) -> Result<(FeedId, ed25519_dalek::Signature), Refusal> {
    let key: [u8; 32] = key.try_into().map_err(|_| Refusal::KeyLength)?;
    let signature: [u8; 64] = signature.try_into().map_err(|_| Refusal::SignatureLength)?;
    Ok((
        FeedId(key),
        ed25519_dalek::Signature::from_bytes(&signature),
    ))
}
