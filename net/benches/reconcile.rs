//! Heads reconciliation versus the plain heads exchange: bytes on the
//! wire (both ways), messages, and CPU time to settle, for two sets of
//! 1k, 10k and 100k feeds that are equal, differ in 10 feeds, or in 1%.
//!
//! The plain exchange is what a connection does today: each side sends
//! all its heads, in `Heads` messages of at most `MAX_HEADS_PER_MESSAGE`.
//! The reconciliation is `kappadb_net::protocol::reconcile`, in memory
//! (no transport): the figures are its message sizes as postcard encodes
//! them. Run with `cargo bench -p kappadb-net --bench reconcile`.

use std::time::Instant;

use kappadb_core::{EntryId, FeedId};
use kappadb_net::protocol::reconcile::{HeadSet, Reconciler, reconcile_in_memory};
use kappadb_net::protocol::{HeadInfo, Heads, MAX_HEADS_PER_MESSAGE, Request, encode_request};

fn head(f: u64, seq: u64) -> HeadInfo {
    let h = blake3::hash(&f.to_le_bytes());
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&seq.to_le_bytes());
    id[8..].copy_from_slice(&h.as_bytes()[8..]);
    HeadInfo {
        feed: FeedId(*h.as_bytes()),
        seq,
        id: EntryId(id),
    }
}

/// Bytes one side sends in the plain exchange of `heads`.
fn plain_bytes(heads: &[HeadInfo]) -> usize {
    heads
        .chunks(MAX_HEADS_PER_MESSAGE)
        .enumerate()
        .map(|(i, chunk)| {
            encode_request(&Request::Heads(Heads {
                heads: chunk.to_vec(),
                forks: vec![],
                idle: false,
                more: (i + 1) * MAX_HEADS_PER_MESSAGE < heads.len(),
                serial: i as u64 + 1,
            }))
            .len()
        })
        .sum()
}

fn main() {
    println!(
        "{:>8} {:>9} | {:>12} | {:>12} {:>5} {:>9} {:>9}",
        "feeds", "differ", "plain bytes", "recon bytes", "msgs", "recon ms", "learned"
    );
    for n in [1_000u64, 10_000, 100_000] {
        let mut cases = vec![0, 10, n / 100];
        cases.dedup();
        for differ in cases {
            let a: Vec<HeadInfo> = (0..n).map(|f| head(f, 10)).collect();
            let mut b = a.clone();
            let step = n.checked_div(differ).unwrap_or(0);
            for k in 0..differ {
                let f = k * step;
                b[f as usize] = head(f, 11);
            }
            let plain = plain_bytes(&a) + plain_bytes(&b);
            let start = Instant::now();
            let mut ra = Reconciler::new(HeadSet::new(a));
            let mut rb = Reconciler::new(HeadSet::new(b));
            let msgs = match reconcile_in_memory(&mut ra, &mut rb) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("reconciliation failed: {e}");
                    std::process::exit(1);
                }
            };
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let bytes: usize = msgs
                .iter()
                .map(|m| postcard::to_stdvec(m).map_or(0, |v| v.len()))
                .sum();
            println!(
                "{n:>8} {differ:>9} | {plain:>12} | {bytes:>12} {:>5} {ms:>9.1} {:>9}",
                msgs.len(),
                ra.learned().count() + rb.learned().count()
            );
        }
    }
}
