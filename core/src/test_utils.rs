//! Helpers for tests in this crate and others (feature `test_utils`).

use crate::entry::Entry;
use crate::keys::SigningKey;

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
