//! Damage to a byte string, as data proptest can generate and shrink.

use proptest::collection::vec;
use proptest::prelude::*;

/// Values that sit on the edges of the encodings kappadb uses: varint
/// continuation bits, the ends of `u8`, `u16` and `u32`, sizes near the
/// limits.
const EDGES: &[u32] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x3fff,
    0x4000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// A position as a fraction of a length (`raw / 2^64`), so it scales to
/// whatever length the string has when a change is applied; it shrinks
/// towards the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos(pub u64);

impl Pos {
    /// The position in a string of `len` bytes (`len` > 0), below `len`.
    pub fn of(self, len: usize) -> usize {
        ((u128::from(self.0) * len as u128) >> 64) as usize
    }
}

fn any_pos() -> impl Strategy<Value = Pos> {
    any::<u64>().prop_map(Pos)
}

/// One change to a byte string.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    Flip {
        /// Where.
        at: Pos,
        /// Which bit (0-7).
        bit: u8,
    },
    /// Set one byte.
    Set {
        /// Where.
        at: Pos,
        /// The new byte.
        byte: u8,
    },
    /// Write an edge value, little-endian, in 1, 2 or 4 bytes.
    Edge {
        /// Where.
        at: Pos,
        /// Which value of the edge list.
        value: Pos,
        /// Bytes written (1, 2 or 4).
        width: u8,
    },
    /// Cut the string here.
    Truncate {
        /// Where.
        at: Pos,
    },
    /// Insert bytes.
    Insert {
        /// Where.
        at: Pos,
        /// What.
        bytes: Vec<u8>,
    },
    /// Remove a range.
    Remove {
        /// Start.
        at: Pos,
        /// Length (clamped to the end).
        len: usize,
    },
    /// Copy a range over another place (shifting nothing).
    Copy {
        /// Source start.
        from: Pos,
        /// Length (clamped).
        len: usize,
        /// Destination start.
        to: Pos,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any_pos(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any_pos(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (any_pos(), any_pos(), prop_oneof![Just(1u8), Just(2), Just(4)])
            .prop_map(|(at, value, width)| Mutation::Edge { at, value, width }),
        1 => any_pos().prop_map(|at| Mutation::Truncate { at }),
        1 => (any_pos(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any_pos(), 1usize..32).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any_pos(), 1usize..64, any_pos())
            .prop_map(|(from, len, to)| Mutation::Copy { from, len, to }),
    ]
}

/// Between 0 and `max` mutations (0: the valid input itself, which every
/// target must accept).
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 0..=max)
}

fn pos(at: &Pos, len: usize) -> Option<usize> {
    (len > 0).then(|| at.of(len))
}

/// Apply `muts` to `bytes`, in order.
pub fn apply(bytes: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let len = bytes.len();
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(i) = pos(at, len) {
                    bytes[i] ^= 1 << (bit & 7);
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(i) = pos(at, len) {
                    bytes[i] = *byte;
                }
            }
            Mutation::Edge { at, value, width } => {
                if let Some(i) = pos(at, len) {
                    let v = EDGES[value.of(EDGES.len())].to_le_bytes();
                    let w = usize::from(*width).min(4).min(len - i);
                    bytes[i..i + w].copy_from_slice(&v[..w]);
                }
            }
            Mutation::Truncate { at } => {
                if let Some(i) = pos(at, len) {
                    bytes.truncate(i);
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let i = pos(at, len + 1).unwrap_or(0);
                bytes.splice(i..i, new.iter().copied());
            }
            Mutation::Remove { at, len: n } => {
                if let Some(i) = pos(at, len) {
                    let end = (i + n).min(len);
                    bytes.drain(i..end);
                }
            }
            Mutation::Copy { from, len: n, to } => {
                if let (Some(f), Some(t)) = (pos(from, len), pos(to, len)) {
                    let n = (*n).min(len - f).min(len - t);
                    let src = bytes[f..f + n].to_vec();
                    bytes[t..t + n].copy_from_slice(&src);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestRunner;

    #[test]
    fn mutations_apply_to_any_length_without_panicking() {
        let mut runner = TestRunner::default();
        runner
            .run(
                &(vec(any::<u8>(), 0..40), mutations(12)),
                |(mut bytes, muts)| {
                    apply(&mut bytes, &muts);
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn no_mutation_leaves_the_bytes_alone_and_a_flip_changes_them() {
        let mut b = vec![1, 2, 3];
        apply(&mut b, &[]);
        assert_eq!(b, [1, 2, 3]);
        apply(&mut b, &[Mutation::Flip { at: Pos(0), bit: 0 }]);
        assert_eq!(b, [0, 2, 3]);
    }
}
