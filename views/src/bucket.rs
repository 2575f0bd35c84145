//! Entry buckets: how the timeline and the field indexes store sets of
//! entries ordered by `(timestamp, author, seq)` with one sled key per run
//! of entries rather than one per entry.
//!
//! ```text
//! prefix | timestamp BE (8) | author (32) | seq / 64 BE (8)  ->  bits
//! bits = seq % 64 (1 byte) if the bucket holds one entry, else a bitmap
//!        u64 BE whose bit seq % 64 says whether the entry is in the set
//! ```
//!
//! A bucket holds the entries of one author with one timestamp whose seqs
//! agree but for their low 6 bits. Key order, then bit order, is
//! `(timestamp, author, seq)` order, so a range of keys is a range of
//! entries. A bucket's content depends only on the set of entries (never
//! on arrival order or batching), so two peers with the same entries store
//! the same bytes. An author writing many entries in one millisecond (a
//! bulk import, a busy feed) fills buckets of up to 64 entries, which is
//! what makes folding and rebuilding such logs cheap: sled 0.34 pays
//! several microseconds for every key it adds to a tree.
//!
//! Writing a bucket merges it with what is stored, but most buckets of a
//! batch cannot have been stored before, and are written without a read:
//! core stores each feed's entries in the log in seq order (`seq` = head +
//! 1, never a gap or a repeat), and a generation folds the log in order, so
//! when a batch holds an author's entries from seq `s` on, everything
//! folded before holds only that author's seqs below `s`. Only the buckets
//! of the 64 seqs around `s` (one per timestamp) can hold older bits, and
//! only if `s` is not the first of those 64.

use std::collections::{BTreeMap, HashMap};

use kappadb_core::FeedId;

use crate::encoding::{ENTRY_KEY_LEN, put_entry_key, read_entry_key};
use crate::error::ViewError;
use crate::view::ViewTx;

/// Seqs per bucket.
const SPAN: u64 = 64;

/// Length of a bucket key after its prefix.
pub(crate) const BUCKET_KEY_LEN: usize = ENTRY_KEY_LEN;

/// A bucket's stored value (see the module docs).
fn encode_bits(bits: u64) -> Vec<u8> {
    if bits.is_power_of_two() {
        vec![bits.trailing_zeros() as u8]
    } else {
        bits.to_be_bytes().to_vec()
    }
}

/// A bucket's bits from its stored value, `None` if it does not decode
/// (or is not the one encoding of its bits).
fn decode_bits(value: &[u8]) -> Option<u64> {
    match value {
        [i] if u64::from(*i) < SPAN => Some(1 << i),
        _ => {
            let bits = u64::from_be_bytes(value.try_into().ok()?);
            (!bits.is_power_of_two() && bits != 0).then_some(bits)
        }
    }
}

/// Append the key of the bucket holding `(timestamp, author, seq)`.
pub(crate) fn put_bucket_key(out: &mut Vec<u8>, timestamp: u64, author: &FeedId, seq: u64) {
    put_entry_key(out, timestamp, author, seq / SPAN);
}

/// The entries of a stored bucket (`key` without its prefix), in
/// `(timestamp, author, seq)` order or the reverse. `None` if the key or
/// the value does not decode.
pub(crate) fn entries(
    key: &[u8],
    value: &[u8],
    descending: bool,
) -> Option<impl Iterator<Item = (u64, FeedId, u64)> + use<>> {
    let (timestamp, author, block) = read_entry_key(key)?;
    let bits = decode_bits(value)?;
    let first = block.checked_mul(SPAN)?;
    let mut order: [u64; SPAN as usize] = std::array::from_fn(|i| i as u64);
    if descending {
        order.reverse();
    }
    Some(
        order
            .into_iter()
            .filter(move |i| bits & (1 << i) != 0)
            .map(move |i| (timestamp, author, first + i)),
    )
}

/// Write the buckets of `entries` under `prefix`, where no bucket exists
/// yet (no read).
pub(crate) fn put_new(
    tx: &mut ViewTx<'_>,
    prefix: &[u8],
    entries: impl IntoIterator<Item = (u64, FeedId, u64)>,
) {
    let mut buckets: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for (timestamp, author, seq) in entries {
        let mut key = prefix.to_vec();
        put_bucket_key(&mut key, timestamp, &author, seq);
        *buckets.entry(key).or_default() |= 1 << (seq % SPAN);
    }
    for (key, bits) in buckets {
        tx.insert(key, encode_bits(bits));
    }
}

/// Entries to add and to remove, gathered per bucket over a fold batch,
/// then merged into the stored buckets with at most one read and one
/// write per bucket. Adds and removals of one entry apply in the order
/// they were made.
#[derive(Debug, Default)]
pub(crate) struct BucketWriter {
    /// Key (prefix included) -> (bits to add, bits to remove, the bucket's
    /// author and first seq).
    buckets: BTreeMap<Vec<u8>, (u64, u64, FeedId, u64)>,
    /// Each author's smallest seq added in this batch.
    first: HashMap<FeedId, u64>,
    key: Vec<u8>,
}

impl BucketWriter {
    fn slot(
        &mut self,
        prefix: &[u8],
        timestamp: u64,
        author: &FeedId,
        seq: u64,
    ) -> &mut (u64, u64, FeedId, u64) {
        self.key.clear();
        self.key.extend_from_slice(prefix);
        put_bucket_key(&mut self.key, timestamp, author, seq);
        let start = seq - seq % SPAN;
        self.buckets
            .entry(self.key.clone())
            .or_insert((0, 0, *author, start))
    }

    /// Add `(timestamp, author, seq)` to the set under `prefix`.
    pub(crate) fn add(&mut self, prefix: &[u8], timestamp: u64, author: &FeedId, seq: u64) {
        let bit = 1 << (seq % SPAN);
        let (add, remove, _, _) = self.slot(prefix, timestamp, author, seq);
        *add |= bit;
        *remove &= !bit;
        let first = self.first.entry(*author).or_insert(seq);
        *first = (*first).min(seq);
    }

    /// Remove `(timestamp, author, seq)` from the set under `prefix`.
    pub(crate) fn remove(&mut self, prefix: &[u8], timestamp: u64, author: &FeedId, seq: u64) {
        let bit = 1 << (seq % SPAN);
        let (add, remove, _, _) = self.slot(prefix, timestamp, author, seq);
        *add &= !bit;
        *remove |= bit;
    }

    /// Merge the gathered changes into `tx` (see the module docs for why
    /// most buckets need no read).
    pub(crate) fn write(self, tx: &mut ViewTx<'_>, view: &str) -> Result<(), ViewError> {
        for (key, (add, remove, author, start)) in self.buckets {
            // Everything of this author folded before is older than its
            // first seq added in this batch: a bucket starting there or
            // later is new (and so is empty but for this batch's changes).
            let new = self.first.get(&author).is_some_and(|first| *first <= start);
            let stored = if new {
                0
            } else {
                match tx.get(&key)? {
                    None => 0,
                    Some(v) => decode_bits(&v)
                        .ok_or_else(|| ViewError::damaged(view, "a bucket does not decode"))?,
                }
            };
            let merged = (stored | add) & !remove;
            if merged == stored && !new {
                continue;
            }
            if merged == 0 {
                tx.remove(&key);
            } else {
                tx.insert(&key, encode_bits(merged));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_in_order() {
        let author = FeedId([7; 32]);
        let mut key = Vec::new();
        put_bucket_key(&mut key, 5, &author, 130);
        let bits: u64 = (1 << 2) | (1 << 63);
        let asc: Vec<_> = entries(&key, &encode_bits(bits), false).unwrap().collect();
        assert_eq!(asc, vec![(5, author, 130), (5, author, 191)]);
        let desc: Vec<_> = entries(&key, &encode_bits(bits), true).unwrap().collect();
        assert_eq!(desc, vec![(5, author, 191), (5, author, 130)]);
        assert!(entries(&key, &[1, 2, 3], false).is_none());
        assert!(entries(&key[1..], &encode_bits(bits), false).is_none());
        let one: Vec<_> = entries(&key, &encode_bits(1 << 5), false)
            .unwrap()
            .collect();
        assert_eq!(one, vec![(5, author, 133)]);
    }

    #[test]
    fn bits_have_one_encoding() {
        for bits in [1u64, 1 << 63, 3, u64::MAX, (1 << 7) | 1] {
            assert_eq!(decode_bits(&encode_bits(bits)), Some(bits));
        }
        assert_eq!(encode_bits(1 << 9), vec![9]);
        assert_eq!(encode_bits(6).len(), 8);
        // A single entry as a bitmap, an empty bitmap, a bit out of range.
        assert_eq!(decode_bits(&(1u64 << 9).to_be_bytes()), None);
        assert_eq!(decode_bits(&[0; 8]), None);
        assert_eq!(decode_bits(&[64]), None);
        assert_eq!(decode_bits(&[]), None);
    }

    #[test]
    fn bucket_keys_sort_like_entries() {
        let (a, b) = (FeedId([1; 32]), FeedId([2; 32]));
        let key = |ts, author: &FeedId, seq| {
            let mut k = Vec::new();
            put_bucket_key(&mut k, ts, author, seq);
            k
        };
        assert!(key(1, &b, 1000) < key(2, &a, 0));
        assert!(key(1, &a, 1000) < key(1, &b, 0));
        assert!(key(1, &a, 63) < key(1, &a, 64));
        assert_eq!(key(1, &a, 64), key(1, &a, 127));
    }
}
