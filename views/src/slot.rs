//! Slot buckets: how the timeline stores sets of entries ordered by
//! `(timestamp, author, seq)` with one sled key per author, run of 64 seqs
//! and time slot of 65.536 s, rather than one per entry (or per author and
//! millisecond, as module `bucket` does for the field indexes).
//!
//! ```text
//! prefix | slot BE (8) | author (32) | seq / 64 BE (8)  ->  block
//! slot  = timestamp >> 16
//! block = seq % 64 (1) | timestamp % 65536 BE (2)      if it holds one entry
//!       | bits u64 BE (8) | for each set bit, lowest first:
//!         timestamp % 65536 BE (2)                    otherwise
//! ```
//!
//! Bit `i` of `bits` says whether seq `64 * (seq / 64) + i` is in the set;
//! each entry's timestamp is the slot's start plus its two bytes. Key
//! order is `(slot, author, seq)` order, which is *not* `(timestamp,
//! author, seq)` order within a slot: a query reads a slot's keys whole
//! and sorts their entries ([`SlotMerge`]), slot by slot, and a slot's
//! entries are all before the next slot's. A block's content depends only
//! on the set of entries, so two peers with the same entries store the
//! same bytes.
//!
//! Why slots: sled 0.34 pays several microseconds for every key it adds to
//! a tree. With a key per author and millisecond, feeds that never write
//! twice in one millisecond (most feeds) cost a key per entry; with a key
//! per author and slot, an author writing at least one entry a second
//! fills blocks of 64. The cost moves to queries, which read every key of
//! the slots they touch: a slot holds about one key per active author (per
//! 64 of its entries), a few thousand for a thousand busy feeds.
//!
//! Writing a block merges it with what is stored, but most blocks of a
//! fold batch cannot have been stored before, and are written without a
//! read, for the reason module `bucket` gives (each feed is folded in seq
//! order, so a block starting at or after an author's first seq in the
//! batch is new).

use std::collections::{BTreeMap, HashMap};

use kappadb_core::FeedId;

use crate::encoding::{put_entry_key, read_entry_key};
use crate::error::ViewError;
use crate::view::ViewTx;

/// Seqs per block.
const SPAN: u64 = 64;
/// A slot is `1 << SLOT_BITS` milliseconds.
const SLOT_BITS: u32 = 16;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// The slot of `timestamp`.
pub(crate) fn slot_of(timestamp: u64) -> u64 {
    timestamp >> SLOT_BITS
}

/// A block: which of its 64 seqs are in the set, and each one's timestamp
/// within the slot (meaningful only where the bit is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    bits: u64,
    low: [u16; SPAN as usize],
}

impl Block {
    const EMPTY: Block = Block {
        bits: 0,
        low: [0; SPAN as usize],
    };

    fn encode(&self) -> Vec<u8> {
        if self.bits.is_power_of_two() {
            let i = self.bits.trailing_zeros() as usize;
            let mut out = vec![i as u8];
            out.extend_from_slice(&self.low[i].to_be_bytes());
            return out;
        }
        let mut out = Vec::with_capacity(8 + 2 * self.bits.count_ones() as usize);
        out.extend_from_slice(&self.bits.to_be_bytes());
        for i in set_bits(self.bits) {
            out.extend_from_slice(&self.low[i].to_be_bytes());
        }
        out
    }

    /// `None` if `value` does not decode or is not the one encoding of
    /// its block.
    fn decode(value: &[u8]) -> Option<Block> {
        let mut block = Block::EMPTY;
        if let [i, hi, lo] = *value {
            if u64::from(i) >= SPAN {
                return None;
            }
            block.bits = 1 << i;
            block.low[usize::from(i)] = u16::from_be_bytes([hi, lo]);
            return Some(block);
        }
        let bits = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
        if bits.is_power_of_two() || bits == 0 {
            return None;
        }
        let lows = &value[8..];
        if lows.len() != 2 * bits.count_ones() as usize {
            return None;
        }
        for (i, pair) in set_bits(bits).zip(lows.chunks_exact(2)) {
            block.low[i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        block.bits = bits;
        Some(block)
    }
}

/// The indexes of the set bits of `bits`, lowest first.
fn set_bits(bits: u64) -> impl Iterator<Item = usize> {
    (0..SPAN as usize).filter(move |i| bits & (1 << i) != 0)
}

/// Append the key of the block holding `(timestamp, author, seq)`.
pub(crate) fn put_slot_key(out: &mut Vec<u8>, timestamp: u64, author: &FeedId, seq: u64) {
    put_entry_key(out, slot_of(timestamp), author, seq / SPAN);
}

/// The slot and author of a stored block's key (without its prefix),
/// `None` if it does not decode.
pub(crate) fn key_slot_author(key: &[u8]) -> Option<(u64, FeedId)> {
    let (slot, author, _) = read_entry_key(key)?;
    Some((slot, author))
}

/// One entry of a block: `(timestamp, author, seq)`.
pub(crate) type SlotEntry = (u64, FeedId, u64);

/// The entries of a stored block (`key` without its prefix), in seq
/// order. `None` if the key or the value does not decode.
pub(crate) fn entries(key: &[u8], value: &[u8]) -> Option<impl Iterator<Item = SlotEntry> + use<>> {
    let (slot, author, block_idx) = read_entry_key(key)?;
    let block = Block::decode(value)?;
    let first = block_idx.checked_mul(SPAN)?;
    let start = slot.checked_mul(1 << SLOT_BITS)?;
    Some(
        set_bits(block.bits)
            .map(move |i| (start + u64::from(block.low[i]), author, first + i as u64)),
    )
}

/// Entries to add and to remove, gathered per block over a fold batch,
/// then merged into the stored blocks with at most one read and one write
/// per block. Adds and removals of one entry apply in the order they were
/// made.
#[derive(Debug, Default)]
pub(crate) struct SlotWriter {
    /// Key (prefix included) -> changes to its block.
    blocks: BTreeMap<Vec<u8>, Change>,
    /// Each author's smallest seq added in this batch.
    first: HashMap<FeedId, u64>,
    key: Vec<u8>,
}

#[derive(Debug)]
struct Change {
    /// Entries added, with their timestamps.
    add: Block,
    /// Bits removed.
    remove: u64,
    author: FeedId,
    /// The block's first seq.
    start: u64,
}

impl SlotWriter {
    fn slot(&mut self, prefix: &[u8], timestamp: u64, author: &FeedId, seq: u64) -> &mut Change {
        self.key.clear();
        self.key.extend_from_slice(prefix);
        put_slot_key(&mut self.key, timestamp, author, seq);
        let start = seq - seq % SPAN;
        self.blocks
            .entry(self.key.clone())
            .or_insert_with(|| Change {
                add: Block::EMPTY,
                remove: 0,
                author: *author,
                start,
            })
    }

    /// Add `(timestamp, author, seq)` to the set under `prefix`.
    pub(crate) fn add(&mut self, prefix: &[u8], timestamp: u64, author: &FeedId, seq: u64) {
        let i = (seq % SPAN) as usize;
        let change = self.slot(prefix, timestamp, author, seq);
        change.add.bits |= 1 << i;
        change.add.low[i] = (timestamp & SLOT_MASK) as u16;
        change.remove &= !(1 << i);
        let first = self.first.entry(*author).or_insert(seq);
        *first = (*first).min(seq);
    }

    /// Remove `(timestamp, author, seq)` from the set under `prefix`.
    pub(crate) fn remove(&mut self, prefix: &[u8], timestamp: u64, author: &FeedId, seq: u64) {
        let bit = 1 << (seq % SPAN);
        let change = self.slot(prefix, timestamp, author, seq);
        change.add.bits &= !bit;
        change.remove |= bit;
    }

    /// Merge the gathered changes into `tx`.
    pub(crate) fn write(self, tx: &mut ViewTx<'_>, view: &str) -> Result<(), ViewError> {
        for (key, change) in self.blocks {
            // Everything of this author folded before is older than its
            // first seq added in this batch: a block starting there or
            // later is new.
            let new = self
                .first
                .get(&change.author)
                .is_some_and(|first| *first <= change.start);
            let stored = if new {
                Block::EMPTY
            } else {
                match tx.get(&key)? {
                    None => Block::EMPTY,
                    Some(v) => Block::decode(&v).ok_or_else(|| {
                        ViewError::damaged(view, "a timeline block does not decode")
                    })?,
                }
            };
            let mut merged = stored;
            merged.bits = (stored.bits | change.add.bits) & !change.remove;
            for i in set_bits(change.add.bits) {
                merged.low[i] = change.add.low[i];
            }
            if merged.bits == stored.bits && !new {
                // The same entries, so the same timestamps.
                continue;
            }
            if merged.bits == 0 {
                tx.remove(&key);
            } else {
                tx.insert(&key, merged.encode());
            }
        }
        Ok(())
    }
}

/// Gathers a scan over slot bucket keys (in key order or the reverse)
/// slot by slot: a slot's entries are all before the next slot's (after
/// them, descending), but in no order among themselves; [`best`] orders
/// them.
#[derive(Debug, Default)]
pub(crate) struct SlotMerge {
    slot: Option<u64>,
    pending: Vec<SlotEntry>,
}

impl SlotMerge {
    /// Take in the next block's entries. When the block starts a new
    /// slot, the previous slot's entries are returned (unordered).
    pub(crate) fn push(
        &mut self,
        slot: u64,
        entries: impl IntoIterator<Item = SlotEntry>,
    ) -> Option<Vec<SlotEntry>> {
        let done = match self.slot {
            Some(s) if s != slot => Some(self.finish()),
            _ => None,
        };
        self.slot = Some(slot);
        self.pending.extend(entries);
        done
    }

    /// The entries of the slot being gathered (unordered).
    pub(crate) fn finish(&mut self) -> Vec<SlotEntry> {
        std::mem::take(&mut self.pending)
    }
}

/// The first `need` of `entries` in `(timestamp, author, seq)` order (or
/// the reverse), in that order, and the others, unordered: a query that
/// wants 20 entries of a slot of thousands orders only those.
pub(crate) fn best(
    mut entries: Vec<SlotEntry>,
    need: usize,
    descending: bool,
) -> (Vec<SlotEntry>, Vec<SlotEntry>) {
    let cmp = |a: &SlotEntry, b: &SlotEntry| {
        if descending { b.cmp(a) } else { a.cmp(b) }
    };
    let rest = if need == 0 {
        std::mem::take(&mut entries)
    } else if need < entries.len() {
        entries.select_nth_unstable_by(need - 1, cmp);
        entries.split_off(need)
    } else {
        Vec::new()
    };
    entries.sort_unstable_by(cmp);
    (entries, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(entries: &[(u64, u16)]) -> Block {
        let mut b = Block::EMPTY;
        for &(i, low) in entries {
            b.bits |= 1 << i;
            b.low[i as usize] = low;
        }
        b
    }

    #[test]
    fn blocks_have_one_encoding() {
        for b in [
            block(&[(0, 7)]),
            block(&[(63, 65535)]),
            block(&[(1, 2), (5, 9)]),
            block(&(0..64).map(|i| (i, i as u16 * 3)).collect::<Vec<_>>()),
        ] {
            assert_eq!(Block::decode(&b.encode()), Some(b));
        }
        assert_eq!(block(&[(9, 258)]).encode(), vec![9, 1, 2]);
        assert_eq!(block(&[(1, 0), (2, 0)]).encode().len(), 12);
        // A single entry as a bitmap, an empty bitmap, a bit out of range,
        // timestamps missing or extra.
        let mut single = (1u64 << 9).to_be_bytes().to_vec();
        single.extend_from_slice(&[0, 0]);
        assert_eq!(Block::decode(&single), None);
        assert_eq!(Block::decode(&[0; 8]), None);
        assert_eq!(Block::decode(&[64, 0, 0]), None);
        assert_eq!(Block::decode(&[]), None);
        let mut two = 3u64.to_be_bytes().to_vec();
        two.extend_from_slice(&[0, 0]);
        assert_eq!(Block::decode(&two), None);
        two.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Block::decode(&two), None);
    }

    #[test]
    fn entries_come_back_with_their_timestamps() {
        let author = FeedId([7; 32]);
        let ts = (5 << SLOT_BITS) + 1000;
        let mut key = Vec::new();
        put_slot_key(&mut key, ts, &author, 130);
        let b = block(&[(2, 1000), (63, 3)]);
        let got: Vec<_> = entries(&key, &b.encode()).unwrap().collect();
        assert_eq!(
            got,
            vec![(ts, author, 130), ((5 << SLOT_BITS) + 3, author, 191)]
        );
        assert!(entries(&key, &[1, 2, 3, 4]).is_none());
        assert!(entries(&key[1..], &b.encode()).is_none());
    }

    #[test]
    fn keys_sort_by_slot_then_author() {
        let (a, b) = (FeedId([1; 32]), FeedId([2; 32]));
        let key = |ts, author: &FeedId, seq| {
            let mut k = Vec::new();
            put_slot_key(&mut k, ts, author, seq);
            k
        };
        assert_eq!(key(0, &a, 0), key(SLOT_MASK, &a, 63));
        assert!(key(SLOT_MASK, &b, 0) < key(SLOT_MASK + 1, &a, 0));
        assert!(key(5, &a, 1000) < key(1, &b, 0));
    }

    #[test]
    fn merge_gathers_each_slot_and_best_orders_it() {
        let (a, b) = (FeedId([1; 32]), FeedId([2; 32]));
        let mut m = SlotMerge::default();
        assert_eq!(m.push(0, vec![(9, a, 1), (20, a, 2)]), None);
        assert_eq!(m.push(0, vec![(10, b, 1)]), None);
        let first = m.push(1, vec![(70_000, a, 3)]).unwrap();
        assert_eq!(m.finish(), vec![(70_000, a, 3)]);
        let (asc, rest) = best(first.clone(), 10, false);
        assert_eq!(asc, vec![(9, a, 1), (10, b, 1), (20, a, 2)]);
        assert!(rest.is_empty());
        let (two, mut rest) = best(first.clone(), 2, true);
        assert_eq!(two, vec![(20, a, 2), (10, b, 1)]);
        assert_eq!(rest, vec![(9, a, 1)]);
        let (none, mut all) = best(first, 0, false);
        assert!(none.is_empty());
        all.sort();
        rest.extend([(10, b, 1), (20, a, 2)]);
        rest.sort();
        assert_eq!(all, rest);
    }
}
