//! Fuzzing kappadb on the stable toolchain.
//!
//! Each target builds a *valid* structure first (a header, a deletion, a
//! fork proof, a sync message, a whole database, a sync between two
//! engines), encodes it, then damages the bytes with a list of
//! [`Mutation`]s: bit flips, bytes set to values that sit on encoding
//! boundaries (varint continuation bits, `u32` limits), cuts, inserts,
//! removals and copies of a range. Inputs that start valid reach far deeper
//! into a decoder than random bytes do, and proptest shrinks a failure to
//! a small one.
//!
//! Every target checks more than "no panic":
//!
//! - [`targets::header`]: a decoded header re-encodes to exactly the input
//!   (the decoder is canonical).
//! - [`targets::system`]: a parsed deletion re-encodes to exactly the input.
//! - [`targets::fork_proof`]: a proof that checks holds two validly signed,
//!   different headers of one feed and seq.
//! - [`targets::wire`]: every sync message that decodes encodes and decodes
//!   to itself, and the engine's input made from it builds without panic.
//! - [`targets::log`]: a database whose segment files were damaged opens or
//!   fails with an error; if it opens, it opens again, verify runs, reads
//!   never panic, and when verify finds no problem every entry read back is
//!   validly signed and hashed.
//! - [`targets::engine`]: two engines sync over a network that damages
//!   frames both ways; neither store ever fails or holds an entry the other
//!   did not sign, and once the network is honest again they converge.
//!
//! [`run`] drives one target for a number of cases from a seed;
//! `tests/bounded.rs` runs each for a bounded count in CI and the
//! `kappa-fuzz` binary runs them for as long as asked.

pub mod mutate;
pub mod targets;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

pub use mutate::{Mutation, apply, mutations};

/// A fuzz target: its name, how many cases a CI run gives it, and how to
/// run it.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// Cases per CI run (kept small where a case touches the disk).
    pub ci_cases: u32,
    /// Run `cases` cases from `seed`.
    pub run: fn(cases: u32, seed: u64) -> Result<(), String>,
}

impl Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "header",
        ci_cases: 20_000,
        run: targets::header,
    },
    Target {
        name: "system",
        ci_cases: 20_000,
        run: targets::system,
    },
    Target {
        name: "fork_proof",
        ci_cases: 3_000,
        run: targets::fork_proof,
    },
    Target {
        name: "wire",
        ci_cases: 5_000,
        run: targets::wire,
    },
    Target {
        name: "log",
        ci_cases: 300,
        run: targets::log,
    },
    Target {
        name: "engine",
        ci_cases: 1_000,
        run: targets::engine,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// Run `check` on `cases` values of `strategy`, reproducibly from `seed`.
/// A failure (a failed check or a panic) is shrunk and returned as text
/// that names the smallest failing input.
pub fn run<S>(
    cases: u32,
    seed: u64,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String>
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner
        .run(&strategy, check)
        .map_err(|e| format!("seed {seed}: {e}"))
}

/// Run `target` for `cases` cases from `seed`, timing it.
pub fn run_timed(target: &Target, cases: u32, seed: u64) -> (Result<(), String>, Duration) {
    let start = Instant::now();
    let r = (target.run)(cases, seed);
    (r, start.elapsed())
}
