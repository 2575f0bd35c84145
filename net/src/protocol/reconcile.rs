//! Range-based set reconciliation of feed heads: two peers find the feeds
//! whose heads differ with traffic that grows with the number of
//! differences times the logarithm of the number of feeds, not with the
//! number of feeds (after Meyer, "Range-Based Set Reconciliation", 2023).
//!
//! Each side holds a set of heads `(feed, seq, id)`, at most one per feed,
//! ordered by feed id. A message covers the whole space of feed ids as a
//! list of consecutive ranges, each given by its exclusive upper bound
//! (the last one is open: `None`), and says for each range one of:
//!
//! - `Skip`: nothing to do here (the two sides agree, or it is settled);
//! - `Fingerprint`: the sender's count and 128-bit fingerprint of its heads
//!   in the range (a wrapping sum of a blake3 hash of each head, so any
//!   sub-range's fingerprint comes from prefix sums in O(log n));
//! - `Items`: the sender's heads in the range, in full. Unless it is a
//!   `reply`, the receiver answers with its own heads of that range that
//!   the sender does not hold exactly.
//!
//! A receiver compares each fingerprint with its own for the same range:
//! equal, the range is skipped; different, it answers with its items if it
//! has few there, or splits the range into [`BRANCHES`] parts of equal
//! count and sends their fingerprints. Every round narrows the ranges that
//! differ by a factor of [`BRANCHES`], so two sets of `n` heads that differ
//! in `d` feeds settle in about `log_16(n / ITEMS)` rounds with
//! `O(d · log n)` bytes. A message whose ranges are all skipped ends the
//! exchange; at that point each side has *learned* exactly the other's
//! heads that it does not hold itself ([`Reconciler::learned`]).
//!
//! Everything in a message is checked before it is used: ranges in order
//! and covering the space, items sorted and inside their range, bounded
//! counts, a bounded number of rounds. A peer that breaks a rule gets a
//! [`ReconcileError`] (and the node drops it); a peer that lies in its
//! fingerprints can only make the exchange longer, up to
//! [`MAX_ROUNDS`], or make this side miss what it hides, which a liar could
//! do anyway by not announcing it.

use std::collections::BTreeMap;

use kappadb_core::FeedId;
use serde::{Deserialize, Serialize};

use super::wire::HeadInfo;

/// Parts a differing range is split into.
pub const BRANCHES: usize = 16;

/// At most this many heads in a differing range are sent as items rather
/// than split further.
pub const ITEMS: usize = 32;

/// Most ranges one message may carry.
pub const MAX_PARTS: usize = 8192;

/// Most heads one message may carry, in all its item lists.
pub const MAX_ITEMS: usize = 16_384;

/// Most messages one side may receive in one exchange. Honest peers need
/// about `2 + log_16(n / ITEMS)` (6 for a million feeds), plus one round
/// per [`MAX_ITEMS`] differing heads when a message's budget runs out.
pub const MAX_ROUNDS: u32 = 64;

/// A side that holds more than this many heads in a range the peer listed
/// in full splits the range instead of listing its own, so that one answer
/// stays small when the peer has few heads where this side has many.
const REPLY_ITEMS: usize = ITEMS * BRANCHES;

/// A fingerprint of the heads in a range: their number and the wrapping
/// sum of a hash of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Heads in the range.
    pub count: u64,
    /// Sum, modulo 2^128, of the first 16 bytes (little-endian) of each
    /// head's blake3 hash (see [`item_hash`]).
    pub sum: u128,
}

/// What a message says about one range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Settled, or agreed.
    Skip,
    /// The sender's fingerprint of its heads in the range.
    Fingerprint(Fingerprint),
    /// The sender's heads in the range. `reply`: sent in answer to items,
    /// so the receiver only takes them in.
    Items {
        /// The heads, by feed id, ascending.
        items: Vec<HeadInfo>,
        /// In answer to the other side's items.
        reply: bool,
    },
}

/// One range of a message: from the previous part's upper bound (or the
/// first feed id) up to, not including, `upper` (`None`: to the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The range's exclusive upper bound; `None` for the last range.
    pub upper: Option<FeedId>,
    /// What the sender says about it.
    pub mode: Mode,
}

/// One message of a reconciliation: consecutive ranges covering every
/// feed id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The ranges, in order; the last one's `upper` is `None`.
    pub parts: Vec<Part>,
}

impl Message {
    /// The message that settles every range: sent to end an exchange.
    pub fn done() -> Self {
        Self {
            parts: vec![Part {
                upper: None,
                mode: Mode::Skip,
            }],
        }
    }

    /// Whether every range is settled: the exchange is over.
    pub fn is_done(&self) -> bool {
        self.parts.iter().all(|p| p.mode == Mode::Skip)
    }
}

/// A message that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// No ranges at all.
    #[error("a reconciliation message with no ranges")]
    Empty,
    /// More ranges than [`MAX_PARTS`].
    #[error("a reconciliation message with {0} ranges (at most {MAX_PARTS})")]
    TooManyParts(usize),
    /// More heads than [`MAX_ITEMS`].
    #[error("a reconciliation message with {0} heads (at most {MAX_ITEMS})")]
    TooManyItems(usize),
    /// Range bounds not strictly increasing, or the last one not open.
    #[error("reconciliation ranges out of order or not covering every feed")]
    BadRanges,
    /// Heads not sorted, repeated, or outside their range.
    #[error("reconciliation heads out of order or outside their range")]
    BadItems,
    /// The exchange went on for more than [`MAX_ROUNDS`] messages.
    #[error("the reconciliation took more than {MAX_ROUNDS} rounds")]
    TooManyRounds,
}

/// The hash a head contributes to a fingerprint: blake3 over the feed id,
/// the seq (little-endian) and the head's entry id, first 16 bytes as a
/// little-endian integer.
pub fn item_hash(h: &HeadInfo) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kappadb reconcile v1");
    hasher.update(&h.feed.0);
    hasher.update(&h.seq.to_le_bytes());
    hasher.update(&h.id.0);
    let out = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// One side's heads, sorted, with prefix sums of their hashes.
#[derive(Debug, Clone)]
pub struct HeadSet {
    items: Vec<HeadInfo>,
    /// `prefix[i]`: the wrapping sum of the hashes of `items[..i]`.
    prefix: Vec<u128>,
}

impl HeadSet {
    /// The set of `heads` (one per feed: of several heads for one feed,
    /// the one with the highest seq is kept).
    pub fn new(heads: impl IntoIterator<Item = HeadInfo>) -> Self {
        let mut items: Vec<HeadInfo> = heads.into_iter().collect();
        // By feed, the highest seq first, so that dedup keeps it.
        items.sort_unstable_by(|a, b| a.feed.cmp(&b.feed).then(b.seq.cmp(&a.seq)));
        items.dedup_by(|later, first| later.feed == first.feed);
        let mut prefix = Vec::with_capacity(items.len() + 1);
        let mut sum = 0u128;
        prefix.push(sum);
        for h in &items {
            sum = sum.wrapping_add(item_hash(h));
            prefix.push(sum);
        }
        Self { items, prefix }
    }

    /// Heads held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The heads, by feed id.
    pub fn heads(&self) -> &[HeadInfo] {
        &self.items
    }

    /// The index of the first head at or above `bound` (`None`: the end).
    fn index(&self, bound: Option<&FeedId>) -> usize {
        match bound {
            None => self.items.len(),
            Some(b) => self.items.partition_point(|h| h.feed < *b),
        }
    }

    fn fingerprint(&self, lo: usize, hi: usize) -> Fingerprint {
        Fingerprint {
            count: (hi - lo) as u64,
            sum: self.prefix[hi].wrapping_sub(self.prefix[lo]),
        }
    }

    /// The head held for `feed`.
    fn get(&self, feed: &FeedId) -> Option<&HeadInfo> {
        let i = self.items.partition_point(|h| h.feed < *feed);
        self.items.get(i).filter(|h| h.feed == *feed)
    }
}

/// One side of a reconciliation.
#[derive(Debug)]
pub struct Reconciler {
    set: HeadSet,
    learned: BTreeMap<FeedId, HeadInfo>,
    rounds: u32,
}

impl Reconciler {
    /// A reconciliation of `set` with a peer's.
    pub fn new(set: HeadSet) -> Self {
        Self {
            set,
            learned: BTreeMap::new(),
            rounds: 0,
        }
    }

    /// The first message, from the side that starts.
    pub fn start(&self) -> Message {
        let n = self.set.len();
        let mode = if n <= ITEMS {
            Mode::Items {
                items: self.set.items.clone(),
                reply: false,
            }
        } else {
            Mode::Fingerprint(self.set.fingerprint(0, n))
        };
        Message {
            parts: vec![Part { upper: None, mode }],
        }
    }

    /// The peer's heads learned so far that this side does not hold
    /// exactly (a feed it lacks, or another head of a feed it has).
    pub fn learned(&self) -> impl Iterator<Item = &HeadInfo> {
        self.learned.values()
    }

    /// Take the learned heads out.
    pub fn into_learned(self) -> Vec<HeadInfo> {
        self.learned.into_values().collect()
    }

    /// This side's heads, as they were when the reconciliation started.
    pub fn set(&self) -> &HeadSet {
        &self.set
    }

    /// Messages received so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Answer a message from the peer: `None` when the exchange is over
    /// (the message settled everything and nothing is left to say).
    pub fn receive(&mut self, msg: &Message) -> Result<Option<Message>, ReconcileError> {
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(ReconcileError::TooManyRounds);
        }
        check(msg)?;
        let mut out: Vec<Part> = Vec::new();
        let mut items_out = 0usize;
        let mut lower: Option<&FeedId> = None;
        for part in &msg.parts {
            let lo = match lower {
                None => 0,
                Some(b) => self.set.index(Some(b)),
            };
            // The answer's budget: once one more split or list could
            // overflow it, the rest of the space goes back as one
            // fingerprint, which the peer answers (splits or lists) in the
            // next round. Every round settles what fitted before it.
            if out.len() + BRANCHES >= MAX_PARTS || items_out + REPLY_ITEMS >= MAX_ITEMS {
                let fp = self.set.fingerprint(lo, self.set.len());
                // What the peer listed in full from here on is learned
                // now; the rest is asked again.
                self.learn_rest(msg, lower);
                out.push(Part {
                    upper: None,
                    mode: Mode::Fingerprint(fp),
                });
                return Ok(Some(Message { parts: out }));
            }
            let hi = self.set.index(part.upper.as_ref());
            match &part.mode {
                Mode::Skip => push(&mut out, part.upper, Mode::Skip),
                Mode::Fingerprint(theirs) => {
                    let mine = self.set.fingerprint(lo, hi);
                    if mine == *theirs {
                        push(&mut out, part.upper, Mode::Skip);
                    } else if hi - lo <= ITEMS {
                        let items = self.set.items[lo..hi].to_vec();
                        items_out += items.len();
                        push(
                            &mut out,
                            part.upper,
                            Mode::Items {
                                items,
                                reply: false,
                            },
                        );
                    } else {
                        self.split(lo, hi, part.upper, &mut out);
                    }
                }
                Mode::Items { items, reply } => {
                    self.learn(items);
                    if *reply {
                        push(&mut out, part.upper, Mode::Skip);
                    } else if hi - lo > REPLY_ITEMS {
                        // Many here, few there: narrow it down first.
                        self.split(lo, hi, part.upper, &mut out);
                    } else {
                        // What the peer does not hold exactly, of ours.
                        let missing: Vec<HeadInfo> = self.set.items[lo..hi]
                            .iter()
                            .filter(|mine| {
                                items
                                    .binary_search_by(|t| t.feed.cmp(&mine.feed))
                                    .map_or(true, |i| items[i] != **mine)
                            })
                            .cloned()
                            .collect();
                        items_out += missing.len();
                        let mode = if missing.is_empty() {
                            Mode::Skip
                        } else {
                            Mode::Items {
                                items: missing,
                                reply: true,
                            }
                        };
                        push(&mut out, part.upper, mode);
                    }
                }
            }
            lower = part.upper.as_ref();
        }
        let msg = Message { parts: out };
        Ok((!msg.is_done()).then_some(msg))
    }

    /// Take in the peer's heads that this side does not hold exactly.
    fn learn(&mut self, items: &[HeadInfo]) {
        for h in items {
            if self.set.get(&h.feed) != Some(h) {
                self.learned.insert(h.feed, *h);
            }
        }
    }

    /// Take in every list of the parts of `msg` from `from` on.
    fn learn_rest(&mut self, msg: &Message, from: Option<&FeedId>) {
        for part in &msg.parts {
            let ahead = match (from, part.upper.as_ref()) {
                (None, _) | (Some(_), None) => true,
                (Some(f), Some(u)) => u > f,
            };
            if let (true, Mode::Items { items, .. }) = (ahead, &part.mode) {
                self.learn(items);
            }
        }
    }

    /// Split `items[lo..hi]` into [`BRANCHES`] ranges of equal count, the
    /// last one ending at `upper`, and send their fingerprints.
    fn split(&self, lo: usize, hi: usize, upper: Option<FeedId>, out: &mut Vec<Part>) {
        let n = hi - lo;
        let mut start = lo;
        for k in 1..=BRANCHES {
            let end = lo + n * k / BRANCHES;
            if end == start {
                continue;
            }
            let bound = if k == BRANCHES {
                upper
            } else {
                Some(self.set.items[end].feed)
            };
            let fp = self.set.fingerprint(start, end);
            push(out, bound, Mode::Fingerprint(fp));
            start = end;
        }
    }
}

/// Append a part, merging runs of skipped ranges into one.
fn push(out: &mut Vec<Part>, upper: Option<FeedId>, mode: Mode) {
    if mode == Mode::Skip
        && let Some(last) = out.last_mut()
        && last.mode == Mode::Skip
    {
        last.upper = upper;
        return;
    }
    out.push(Part { upper, mode });
}

/// Check a message's shape before it is used.
fn check(msg: &Message) -> Result<(), ReconcileError> {
    let n = msg.parts.len();
    if n == 0 {
        return Err(ReconcileError::Empty);
    }
    if n > MAX_PARTS {
        return Err(ReconcileError::TooManyParts(n));
    }
    let items: usize = msg
        .parts
        .iter()
        .map(|p| match &p.mode {
            Mode::Items { items, .. } => items.len(),
            _ => 0,
        })
        .sum();
    if items > MAX_ITEMS {
        return Err(ReconcileError::TooManyItems(items));
    }
    let mut lower: Option<FeedId> = None;
    for (i, part) in msg.parts.iter().enumerate() {
        let last = i + 1 == n;
        match (&part.upper, last) {
            (None, true) => {}
            (Some(u), false) => {
                if lower.is_some_and(|l| l >= *u) {
                    return Err(ReconcileError::BadRanges);
                }
            }
            _ => return Err(ReconcileError::BadRanges),
        }
        if let Mode::Items { items, .. } = &part.mode {
            let sorted = items.windows(2).all(|w| w[0].feed < w[1].feed);
            let inside = items.iter().all(|h| {
                lower.is_none_or(|l| h.feed >= l) && part.upper.is_none_or(|u| h.feed < u)
            });
            if !sorted || !inside {
                return Err(ReconcileError::BadItems);
            }
        }
        lower = part.upper;
    }
    Ok(())
}

/// Run a whole exchange between two sets in memory, starting from `a`:
/// each side's learned heads and the messages sent (for tests and the
/// benchmark). Fails if a message breaks a rule.
pub fn reconcile_in_memory(
    a: &mut Reconciler,
    b: &mut Reconciler,
) -> Result<Vec<Message>, ReconcileError> {
    let mut sent = vec![a.start()];
    let mut turn_b = true;
    loop {
        let Some(last) = sent.last() else {
            return Ok(sent);
        };
        let next = if turn_b {
            b.receive(last)?
        } else {
            a.receive(last)?
        };
        match next {
            Some(m) => sent.push(m),
            None => return Ok(sent),
        }
        turn_b = !turn_b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappadb_core::EntryId;
    use std::collections::BTreeSet;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn feed(n: u64) -> FeedId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&blake3::hash(&n.to_le_bytes()).as_bytes()[..8]);
        b[8..16].copy_from_slice(&n.to_le_bytes());
        FeedId(b)
    }

    fn head(f: u64, seq: u64) -> HeadInfo {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&f.to_le_bytes());
        id[8..16].copy_from_slice(&seq.to_le_bytes());
        HeadInfo {
            feed: feed(f),
            seq,
            id: EntryId(id),
        }
    }

    /// The heads of `set` that `other` does not hold exactly.
    fn difference(set: &[HeadInfo], other: &[HeadInfo]) -> BTreeSet<(FeedId, u64)> {
        let other: BTreeSet<(FeedId, u64)> = other.iter().map(|h| (h.feed, h.seq)).collect();
        set.iter()
            .map(|h| (h.feed, h.seq))
            .filter(|k| !other.contains(k))
            .collect()
    }

    fn keys<'a>(it: impl Iterator<Item = &'a HeadInfo>) -> BTreeSet<(FeedId, u64)> {
        it.map(|h| (h.feed, h.seq)).collect()
    }

    /// Any two sets settle to exactly their differences, in a bounded
    /// number of rounds, whichever side starts.
    #[test]
    fn any_two_sets_learn_exactly_their_differences() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let n = match case % 4 {
                0 => rng.below(40),
                1 => rng.below(400),
                2 => rng.below(3000),
                _ => rng.below(12),
            };
            let mut a = Vec::new();
            let mut b = Vec::new();
            for f in 0..n {
                let seq = 1 + rng.below(5);
                match rng.below(10) {
                    0 => a.push(head(f, seq)),
                    1 => b.push(head(f, seq)),
                    2 => {
                        a.push(head(f, seq));
                        b.push(head(f, seq + 1 + rng.below(3)));
                    }
                    _ => {
                        a.push(head(f, seq));
                        b.push(head(f, seq));
                    }
                }
            }
            let mut ra = Reconciler::new(HeadSet::new(a.clone()));
            let mut rb = Reconciler::new(HeadSet::new(b.clone()));
            let (first, second) = if case % 2 == 0 {
                (&mut ra, &mut rb)
            } else {
                (&mut rb, &mut ra)
            };
            let msgs = reconcile_in_memory(first, second).unwrap();
            assert!(
                msgs.len() as u32 <= MAX_ROUNDS,
                "case {case}: {} rounds",
                msgs.len()
            );
            assert_eq!(
                keys(ra.learned()),
                difference(&b, &a),
                "case {case}: a learned"
            );
            assert_eq!(
                keys(rb.learned()),
                difference(&a, &b),
                "case {case}: b learned"
            );
        }
    }

    #[test]
    fn equal_sets_settle_in_one_answer_of_a_few_bytes() {
        let heads: Vec<HeadInfo> = (0..100_000).map(|f| head(f, 10)).collect();
        let mut a = Reconciler::new(HeadSet::new(heads.clone()));
        let mut b = Reconciler::new(HeadSet::new(heads));
        let msgs = reconcile_in_memory(&mut a, &mut b).unwrap();
        assert_eq!(msgs.len(), 1);
        let bytes = postcard::to_stdvec(&msgs[0]).unwrap().len();
        assert!(bytes < 64, "{bytes} bytes");
        assert_eq!(a.learned().count() + b.learned().count(), 0);
    }

    #[test]
    fn a_few_differences_among_many_feeds_cost_little() {
        let mut a: Vec<HeadInfo> = (0..100_000).map(|f| head(f, 10)).collect();
        let b = a.clone();
        for f in (0..100_000).step_by(10_000) {
            a[f as usize] = head(f, 11);
        }
        let mut ra = Reconciler::new(HeadSet::new(a));
        let mut rb = Reconciler::new(HeadSet::new(b));
        let msgs = reconcile_in_memory(&mut ra, &mut rb).unwrap();
        let bytes: usize = msgs
            .iter()
            .map(|m| postcard::to_stdvec(m).unwrap().len())
            .sum();
        assert!(
            bytes < 64 * 1024,
            "{bytes} bytes in {} messages",
            msgs.len()
        );
        assert_eq!(rb.learned().count(), 10);
        assert!(rb.learned().all(|h| h.seq == 11));
        assert_eq!(ra.learned().count(), 10);
    }

    /// Differences too many for one message settle over more rounds,
    /// each message within the limits the receiver checks.
    #[test]
    fn many_differences_stay_within_every_message_budget() {
        let all: Vec<HeadInfo> = (0..100_000).map(|f| head(f, 3)).collect();
        let mut half = all.clone();
        for f in (0..100_000).step_by(7) {
            half[f as usize] = head(f as u64, 4);
        }
        for (a, b) in [(all.clone(), Vec::new()), (all.clone(), half)] {
            let mut ra = Reconciler::new(HeadSet::new(a.clone()));
            let mut rb = Reconciler::new(HeadSet::new(b.clone()));
            let msgs = reconcile_in_memory(&mut ra, &mut rb).unwrap();
            for m in &msgs {
                check(m).unwrap();
            }
            assert_eq!(keys(ra.learned()), difference(&b, &a));
            assert_eq!(keys(rb.learned()), difference(&a, &b));
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let heads: Vec<HeadInfo> = (0..100).map(|f| head(f, 1)).collect();
        let mut r = Reconciler::new(HeadSet::new(heads.clone()));
        assert_eq!(
            r.receive(&Message { parts: vec![] }),
            Err(ReconcileError::Empty)
        );
        // Not closed by an open range.
        let bad = Message {
            parts: vec![Part {
                upper: Some(feed(1)),
                mode: Mode::Skip,
            }],
        };
        assert_eq!(r.receive(&bad), Err(ReconcileError::BadRanges));
        // Bounds going down.
        let (x, y) = if feed(1) < feed(2) {
            (feed(1), feed(2))
        } else {
            (feed(2), feed(1))
        };
        let bad = Message {
            parts: vec![
                Part {
                    upper: Some(y),
                    mode: Mode::Skip,
                },
                Part {
                    upper: Some(x),
                    mode: Mode::Skip,
                },
                Part {
                    upper: None,
                    mode: Mode::Skip,
                },
            ],
        };
        assert_eq!(r.receive(&bad), Err(ReconcileError::BadRanges));
        // Items outside their range.
        let bad = Message {
            parts: vec![
                Part {
                    upper: Some(x),
                    mode: Mode::Items {
                        items: vec![HeadInfo {
                            feed: y,
                            seq: 1,
                            id: EntryId([0; 32]),
                        }],
                        reply: false,
                    },
                },
                Part {
                    upper: None,
                    mode: Mode::Skip,
                },
            ],
        };
        assert_eq!(r.receive(&bad), Err(ReconcileError::BadItems));
        // Too many items.
        let many: Vec<HeadInfo> = (0..MAX_ITEMS as u64 + 1).map(|f| head(f, 1)).collect();
        let mut sorted = many;
        sorted.sort_by_key(|h| h.feed);
        let bad = Message {
            parts: vec![Part {
                upper: None,
                mode: Mode::Items {
                    items: sorted,
                    reply: true,
                },
            }],
        };
        assert!(matches!(
            r.receive(&bad),
            Err(ReconcileError::TooManyItems(_))
        ));
        // A peer that never agrees (random fingerprints) is cut off.
        let mut r = Reconciler::new(HeadSet::new(heads));
        let mut rng = Rng(7);
        let mut result = Ok(None);
        for _ in 0..=MAX_ROUNDS {
            let lying = Message {
                parts: vec![Part {
                    upper: None,
                    mode: Mode::Fingerprint(Fingerprint {
                        count: 100,
                        sum: u128::from(rng.next()),
                    }),
                }],
            };
            result = r.receive(&lying);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReconcileError::TooManyRounds));
    }
}
