//! A model-based test of `Db`: random sequences of appends, deletions of
//! this feed's entries, ingests from peers (with gaps, duplicates, their
//! own deletions and forks), restarts, torn tails, reindexing and
//! compaction, each checked against a plain in-memory model of what the
//! database must hold.
//!
//! `PROPTEST_CASES` sets the number of random sequences (48 by default).

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use kappadb_core::system::{DeleteTarget, Deletion};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, DbConfig, Entry, FeedId, Payload};
use proptest::prelude::*;

/// Peers the database hears from.
const PEERS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// Append these payload sizes in one batch (one entry if one size).
    Append(Vec<usize>),
    /// Delete own entries, chosen by these picks among the deletable.
    DeleteOwn(Vec<usize>),
    /// A peer writes `n` entries (not delivered yet).
    PeerWrite { peer: usize, sizes: Vec<usize> },
    /// A peer deletes one of its entries (the pick among its deletable).
    PeerDelete { peer: usize, pick: usize },
    /// Deliver some of a peer's entries: seqs from `from` (relative to
    /// the database's head, may go back to resend) for `len`, dropping
    /// each whose bit in `gaps` is set, then shuffled by `seed`.
    Deliver {
        peer: usize,
        back: u64,
        len: u64,
        gaps: u64,
        seed: u64,
    },
    /// A peer signs a second entry at a seq the database holds.
    Fork { peer: usize, pick: usize },
    /// Drop and reopen.
    Restart,
    /// Drop, leave half a record at the log's end, reopen.
    TornTail(Vec<u8>),
    /// Drop and reopen rebuilding the index from the log.
    Reindex,
    /// Drop, delete the sled directory, reopen.
    LoseSled,
    /// Compact sealed segments.
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let sizes = || proptest::collection::vec(0usize..700, 1..6);
    prop_oneof![
        4 => sizes().prop_map(Op::Append),
        2 => proptest::collection::vec(any::<usize>(), 1..4).prop_map(Op::DeleteOwn),
        3 => (0..PEERS, sizes()).prop_map(|(peer, sizes)| Op::PeerWrite { peer, sizes }),
        1 => (0..PEERS, any::<usize>()).prop_map(|(peer, pick)| Op::PeerDelete { peer, pick }),
        4 => (0..PEERS, 0u64..4, 0u64..12, any::<u64>(), any::<u64>())
            .prop_map(|(peer, back, len, gaps, seed)| {
                // Gaps in about a quarter of the deliveries.
                let gaps = if seed % 4 == 0 { gaps } else { 0 };
                Op::Deliver { peer, back, len, gaps, seed }
            }),
        1 => (0..PEERS, any::<usize>()).prop_map(|(peer, pick)| Op::Fork { peer, pick }),
        1 => Just(Op::Restart),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::TornTail),
        1 => Just(Op::Reindex),
        1 => Just(Op::LoseSled),
        1 => Just(Op::Compact),
    ]
}

/// What one feed must look like in the database.
#[derive(Clone, Debug, Default)]
struct FeedModel {
    /// Entries held, seq 1 first, with whether each payload was erased.
    entries: Vec<(Entry, bool)>,
    /// A fork was proven.
    forked: bool,
}

impl FeedModel {
    fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Erase what a deletion entry names.
    fn apply(&mut self, entry: &Entry) {
        if let Some(Ok(kappadb_core::system::SystemPayload::Deletion(d))) = entry
            .payload
            .bytes()
            .and_then(kappadb_core::system::SystemPayload::parse)
        {
            for t in &d.targets {
                self.entries[(t.seq - 1) as usize].1 = true;
            }
        }
    }
}

fn is_deletion(e: &Entry) -> bool {
    e.payload
        .bytes()
        .is_some_and(kappadb_core::system::SystemPayload::is_system)
}

struct Model {
    own: FeedModel,
    peers: Vec<(TestPeer, FeedModel)>,
    /// Deletions that took effect (own and peers').
    deletions: u64,
    clock: u64,
}

fn payload_of(size: usize, salt: u64) -> Vec<u8> {
    (0..size).map(|i| (i as u64 ^ salt) as u8 | 1).collect()
}

fn open(dir: &Path) -> Db {
    Db::open(dir).expect("reopen")
}

/// Everything the database says must match the model.
fn check(db: &Db, m: &Model) {
    let feeds: Vec<(FeedId, &FeedModel)> = std::iter::once((db.feed_id(), &m.own))
        .chain(m.peers.iter().map(|(p, f)| (p.key.feed_id(), f)))
        .collect();
    let mut entries = 0;
    let mut erased = 0;
    for (id, f) in &feeds {
        let seq = db.head(id).map_or(0, |h| h.seq);
        assert_eq!(seq, f.len(), "head of {}", id.fmt_short());
        assert_eq!(
            db.fork(id).is_some(),
            f.forked,
            "fork of {}",
            id.fmt_short()
        );
        for (e, gone) in &f.entries {
            let got = db
                .get(id, e.header.seq)
                .expect("get")
                .unwrap_or_else(|| panic!("missing {} seq {}", id.fmt_short(), e.header.seq));
            assert_eq!(got.header, e.header);
            let want = if *gone {
                Payload::Erased
            } else {
                e.payload.clone()
            };
            assert_eq!(got.payload, want, "payload of seq {}", e.header.seq);
            erased += u64::from(*gone);
        }
        assert!(db.get(id, f.len() + 1).expect("get").is_none());
        entries += f.len();
    }
    let status = db.status();
    assert_eq!(status.entries, entries);
    assert_eq!(status.erased_entries, erased);
    assert_eq!(
        status.forked_feeds,
        feeds.iter().filter(|f| f.1.forked).count()
    );
}

fn verify(db: &Db, m: &Model) {
    let report = db.verify(&mut |_, _| {}).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.deletions, m.deletions);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = CreateOptions {
        config: DbConfig {
            segment_bytes: 4096,
            ..DbConfig::default()
        },
        ..CreateOptions::default()
    };
    let mut db = Db::create(dir.path(), opts).unwrap();
    let mut m = Model {
        own: FeedModel::default(),
        peers: (0..PEERS)
            .map(|i| (TestPeer::new(100 + i as u64), FeedModel::default()))
            .collect(),
        deletions: 0,
        clock: 1_000,
    };
    for op in ops {
        m.clock += 1;
        match op {
            Op::Append(sizes) => {
                let payloads: Vec<Vec<u8>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| payload_of(*s, m.clock + i as u64))
                    .collect();
                let done = if payloads.len() == 1 {
                    vec![db.append(payloads[0].clone()).expect("append")]
                } else {
                    db.append_batch(payloads.clone()).expect("append batch")
                };
                for (a, p) in done.iter().zip(payloads) {
                    assert_eq!(a.seq, m.own.len() + 1);
                    let e = db.get(&db.feed_id(), a.seq).unwrap().unwrap();
                    assert_eq!(e.payload, Payload::Held(p));
                    m.own.entries.push((e, false));
                }
            }
            Op::DeleteOwn(picks) => {
                let live: Vec<u64> = m
                    .own
                    .entries
                    .iter()
                    .filter(|(e, gone)| !gone && !is_deletion(e))
                    .map(|(e, _)| e.header.seq)
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let seqs: BTreeSet<u64> = picks.iter().map(|p| live[p % live.len()]).collect();
                let seqs: Vec<u64> = seqs.into_iter().collect();
                let d = db.delete(&seqs, None).expect("delete");
                assert_eq!(d.seq, m.own.len() + 1);
                for s in &seqs {
                    m.own.entries[(s - 1) as usize].1 = true;
                }
                let e = db.get(&db.feed_id(), d.seq).unwrap().unwrap();
                m.own.entries.push((e, false));
                m.deletions += 1;
            }
            Op::PeerWrite { peer, sizes } => {
                let p = &mut m.peers[peer].0;
                for (i, s) in sizes.iter().enumerate() {
                    let salt = m.clock * 7 + i as u64;
                    p.make(m.clock, payload_of(*s, salt));
                }
            }
            Op::PeerDelete { peer, pick } => {
                let p = &mut m.peers[peer].0;
                let live: Vec<&Entry> = p.entries.iter().filter(|e| !is_deletion(e)).collect();
                if live.is_empty() {
                    continue;
                }
                let target = live[pick % live.len()];
                let deletion = Deletion {
                    targets: vec![DeleteTarget {
                        seq: target.header.seq,
                        id: target.id(),
                    }],
                    ..Deletion::default()
                };
                p.make(m.clock, deletion.encode());
            }
            Op::Deliver {
                peer,
                back,
                len,
                gaps,
                seed,
            } => {
                let (p, f) = &mut m.peers[peer];
                let from = (f.len() + 1).saturating_sub(back).max(1);
                let mut batch: Vec<Entry> = (from..from + len)
                    .filter(|s| *s <= p.entries.len() as u64)
                    .filter(|s| gaps & (1 << (s % 64)) == 0)
                    .map(|s| p.entries[(s - 1) as usize].clone())
                    .collect();
                let sent: BTreeSet<u64> = batch.iter().map(|e| e.header.seq).collect();
                shuffle(&mut batch, seed);
                let report = db.ingest(batch).expect("ingest");
                let before = f.len();
                if !f.forked {
                    let mut next = f.len() + 1;
                    while sent.contains(&next) {
                        let e = p.entries[(next - 1) as usize].clone();
                        f.entries.push((e.clone(), false));
                        if is_deletion(&e) {
                            f.apply(&e);
                            m.deletions += 1;
                        }
                        next += 1;
                    }
                }
                assert_eq!(report.accepted as u64, f.len() - before, "{report:?}");
                assert!(report.forks.is_empty());
            }
            Op::Fork { peer, pick } => {
                let (p, f) = &mut m.peers[peer];
                if f.entries.is_empty() {
                    continue;
                }
                let seq = (pick as u64 % f.len()) + 1;
                let prev = (seq > 1).then(|| p.entries[(seq - 2) as usize].clone());
                let other = Entry::sign(
                    &p.key,
                    prev.as_ref(),
                    m.clock,
                    format!("the other seq {seq}").into_bytes(),
                );
                let report = db.ingest(vec![other]).expect("ingest fork");
                if f.forked {
                    // Refused or a second proof; either way still forked.
                    assert_eq!(report.accepted, 0);
                } else {
                    assert_eq!(report.forks.len(), 1, "{report:?}");
                    f.forked = true;
                }
            }
            Op::Restart => {
                drop(db);
                db = open(dir.path());
                assert!(db.recovery().is_none(), "{:?}", db.recovery());
                verify(&db, &m);
            }
            Op::TornTail(junk) => {
                let end = db.log_end();
                drop(db);
                tear(&dir.path().join("log"), end, &junk);
                db = open(dir.path());
                let r = db.recovery().expect("the torn tail is repaired");
                assert_eq!(r.cut_at, end);
                verify(&db, &m);
            }
            Op::Reindex => {
                drop(db);
                db = Db::open_reindex(dir.path(), &mut |_, _| {}).expect("reindex");
            }
            Op::LoseSled => {
                drop(db);
                std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
                db = open(dir.path());
            }
            Op::Compact => {
                db.compact(1, &mut |_, _| {}).expect("compact");
            }
        }
        check(&db, &m);
    }
    verify(&db, &m);
    // What is durable survives one more reopen, index rebuilt.
    drop(db);
    let db = Db::open_reindex(dir.path(), &mut |_, _| {}).expect("reindex");
    check(&db, &m);
}

/// Write half a record (a frame header that promises more than follows)
/// at the log's end, as a crash in the middle of a write leaves it.
fn tear(log: &Path, end: u64, junk: &[u8]) {
    let active = std::fs::read_dir(log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let start: u64 = name.strip_suffix(".seg")?.parse().ok()?;
            (start <= end).then_some((start, name))
        })
        .max()
        .unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .open(log.join(active.1))
        .unwrap();
    f.seek(SeekFrom::Start(end - active.0)).unwrap();
    // A length far past what follows, then the junk.
    f.write_all(&[0xff, 0xff, 0x00, 0x01]).unwrap();
    f.write_all(junk).unwrap();
    f.sync_all().unwrap();
}

fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn db_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// One fixed sequence that goes through every kind of step, so a plain
/// run covers them all whatever the random cases draw.
#[test]
fn every_step_in_one_run() {
    let grow = |peer| Op::PeerWrite {
        peer,
        sizes: vec![300, 10, 650, 0],
    };
    let all = |peer| Op::Deliver {
        peer,
        back: 0,
        len: 12,
        gaps: 0,
        seed: 3,
    };
    run(vec![
        Op::Append(vec![500, 600, 10]),
        grow(0),
        Op::Deliver {
            peer: 0,
            back: 0,
            len: 4,
            gaps: 0b100,
            seed: 1,
        },
        all(0),
        Op::DeleteOwn(vec![0, 2]),
        Op::PeerDelete { peer: 0, pick: 1 },
        all(0),
        Op::Append(vec![640; 12]),
        Op::Compact,
        Op::Restart,
        grow(1),
        all(1),
        Op::Fork { peer: 1, pick: 2 },
        grow(1),
        all(1),
        Op::TornTail(vec![1, 2, 3]),
        Op::Append(vec![5]),
        Op::Reindex,
        Op::LoseSled,
        Op::Compact,
        Op::Append(vec![1]),
    ]);
}
