//! The heads reconciliation inside the engine: connections whose cost
//! follows what differs, the fallback to the plain exchange with a peer
//! that does not reconcile (an older one), and peers that break the
//! reconciliation's rules. Engines joined by channels, every message
//! encoded; no sockets.

use std::collections::HashMap;
use std::time::Instant;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry, EntryId, FeedId, Head};
use kappadb_net::protocol::reconcile::{Fingerprint, Message, Mode, Part};
use kappadb_net::protocol::{
    Engine, HeadInfo, Input, Output, Reconcile, Request, SyncConfig, SyncError,
};
use kappadb_net::test_utils::{Pair, Side};

fn new_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
    (dir, db)
}

fn heads(db: &Db) -> HashMap<FeedId, (u64, EntryId)> {
    db.heads()
        .into_iter()
        .map(|(f, h): (FeedId, Head)| (f, (h.seq, h.id)))
        .collect()
}

/// `n` feeds of `len` entries each, from seeds `base..base + n`.
fn feeds(base: u64, n: u64, len: u64) -> Vec<Vec<Entry>> {
    (0..n)
        .map(|i| {
            let mut p = TestPeer::new(base + i);
            (0..len).map(|t| p.make(t, format!("e{t}"))).collect()
        })
        .collect()
}

fn ingest_all(db: &Db, feeds: &[Vec<Entry>]) {
    let all: Vec<Entry> = feeds.iter().flatten().cloned().collect();
    for chunk in all.chunks(4000) {
        db.ingest(chunk.to_vec()).unwrap();
    }
}

fn plain() -> SyncConfig {
    SyncConfig {
        reconcile: false,
        ..SyncConfig::default()
    }
}

fn run(a: &Db, b: &Db, config_a: SyncConfig, config_b: SyncConfig) -> Pair {
    let mut pair = Pair::with_configs(a.clone(), b.clone(), config_a, config_b);
    pair.connect();
    pair.run();
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert!(pair.synced(), "not in sync after {} frames", pair.frames);
    pair
}

#[test]
fn converged_peers_exchange_a_small_fraction_of_their_heads() {
    let n = 3000;
    let shared = feeds(10_000, n, 2);
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    ingest_all(&a, &shared);
    ingest_all(&b, &shared);

    let plain_bytes = run(&a, &b, plain(), plain()).bytes;
    let reconciled = run(&a, &b, SyncConfig::default(), SyncConfig::default());
    // Plain: every head both ways (about 80 bytes each). Reconciled: a
    // fingerprint and the idle handshake.
    eprintln!(
        "{n} feeds in agreement: plain {plain_bytes} bytes, reconciled {}",
        reconciled.bytes
    );
    assert!(
        plain_bytes > 2 * 60 * n as usize,
        "plain exchange: {plain_bytes} bytes"
    );
    assert!(
        reconciled.bytes < 2_000,
        "reconciled: {} bytes (plain {plain_bytes})",
        reconciled.bytes
    );
    assert_eq!(reconciled.a.stats(&Side::B).unwrap().pulled, 0);
    assert_eq!(reconciled.b.stats(&Side::A).unwrap().pulled, 0);
}

#[test]
fn a_few_differing_feeds_cost_few_bytes_and_are_pulled() {
    let n = 3000;
    let shared = feeds(20_000, n, 3);
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    // A is one entry ahead on 5 feeds, B on 5 others; B holds 3 feeds A
    // has never seen, and A has its own entries.
    let mut a_part = shared.clone();
    let mut b_part = shared.clone();
    for i in 0..5 {
        b_part[i].pop();
        a_part[100 + i].pop();
    }
    ingest_all(&a, &a_part);
    ingest_all(&b, &b_part);
    ingest_all(&b, &feeds(90_000, 3, 4));
    a.append(b"own".to_vec()).unwrap();

    let pair = run(&a, &b, SyncConfig::default(), SyncConfig::default());
    assert_eq!(heads(&a), heads(&b));
    assert_eq!(heads(&a).len(), n as usize + 4);
    // 14 differing feeds of 3004: a few rounds of fingerprints and items,
    // far from the ~500 KB of every head both ways.
    eprintln!("14 of {} feeds differ: {} bytes", n + 4, pair.bytes);
    assert!(pair.bytes < 40_000, "{} bytes", pair.bytes);
    // B misses the last entry of 5 feeds and A's own one.
    assert_eq!(pair.b.stats(&Side::A).unwrap().pulled, 5 + 1);
    // A misses the last entry of 5 others and 3 feeds of 4.
    assert_eq!(pair.a.stats(&Side::B).unwrap().pulled, 5 + 3 * 4);
}

#[test]
fn an_older_peer_syncs_with_the_plain_exchange_either_way() {
    for old_is_a in [true, false] {
        let (_da, a) = new_db();
        let (_db, b) = new_db();
        ingest_all(&a, &feeds(30_000, 50, 3));
        ingest_all(&b, &feeds(30_040, 50, 2));
        a.append(b"a".to_vec()).unwrap();
        b.append(b"b".to_vec()).unwrap();
        let (ca, cb) = if old_is_a {
            (plain(), SyncConfig::default())
        } else {
            (SyncConfig::default(), plain())
        };
        run(&a, &b, ca, cb);
        let (ha, hb) = (heads(&a), heads(&b));
        // 50 + 50 feeds, 10 of them on both sides (A's three entries
        // long there), and the two own feeds.
        assert_eq!(ha.len(), 92, "old side is A: {old_is_a}");
        assert_eq!(ha, hb, "old side is A: {old_is_a}");
    }
}

#[test]
fn sets_with_every_kind_of_difference_converge_to_the_union() {
    // A small deterministic generator, so failures repeat.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for case in 0..12u64 {
        let n = 1 + next(700);
        let all = feeds(100_000 + case * 1000, n, 3);
        let (_da, a) = new_db();
        let (_db, b) = new_db();
        let mut want: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
        for f in &all {
            let (la, lb) = match next(5) {
                0 => (3, 0),
                1 => (0, 3),
                2 => (1 + next(3), 1 + next(3)),
                _ => (3, 3),
            };
            ingest_all(&a, &[f[..la as usize].to_vec()]);
            ingest_all(&b, &[f[..lb as usize].to_vec()]);
            let top = &f[la.max(lb) as usize - 1];
            want.insert(top.header.author, (top.header.seq, top.id()));
        }
        run(&a, &b, SyncConfig::default(), SyncConfig::default());
        assert_eq!(heads(&a), want, "case {case}, {n} feeds");
        assert_eq!(heads(&b), want, "case {case}, {n} feeds");
    }
}

#[test]
fn entries_appended_during_a_reconciliation_still_arrive() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    ingest_all(&a, &feeds(40_000, 2000, 1));
    ingest_all(&b, &feeds(40_000, 2000, 1));
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    // The first message or two only: the reconciliation is under way.
    pair.frame_budget = Some(1);
    pair.run();
    a.append(b"late".to_vec()).unwrap();
    pair.a.handle(Input::LocalChanged);
    pair.frame_budget = None;
    pair.run();
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert_eq!(b.head(&a.feed_id()).unwrap().seq, 1);
    assert_eq!(heads(&a), heads(&b));
    assert!(pair.synced());
}

#[test]
fn a_resync_reconciles_again_and_reports_idle() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    ingest_all(&a, &feeds(50_000, 500, 2));
    ingest_all(&b, &feeds(50_000, 500, 2));
    let mut pair = run(&a, &b, SyncConfig::default(), SyncConfig::default());
    let idle_before = pair.events.len();
    let bytes_before = pair.bytes;
    // The side that did not start the first one asks for a resync.
    pair.b.handle(Input::Resync(Side::A));
    pair.run();
    assert!(pair.synced());
    assert!(
        pair.events.len() > idle_before,
        "no idle event after resync"
    );
    assert!(
        pair.bytes - bytes_before < 2_000,
        "a converged resync cost {} bytes",
        pair.bytes - bytes_before
    );
}

const EVIL: u8 = 1;
const ME: u8 = 200;

fn head(i: u8) -> HeadInfo {
    HeadInfo {
        feed: FeedId([i; 32]),
        seq: 1,
        id: EntryId([i; 32]),
    }
}

fn banned_for_reconcile(outputs: &[Output<u8>]) -> bool {
    outputs.iter().any(|o| {
        matches!(
            o,
            Output::Ban {
                peer: EVIL,
                reason: SyncError::Reconcile(_)
            }
        )
    })
}

/// An engine that waits for the peer to start (its key is larger).
fn waiting_engine() -> (tempfile::TempDir, Engine<u8>) {
    let (dir, db) = new_db();
    let all = feeds(60_000, 100, 1);
    ingest_all(&db, &all);
    let mut engine = Engine::new(db, SyncConfig::default())
        .unwrap()
        .with_local(ME);
    engine.handle(Input::Connected(EVIL));
    engine.step(Instant::now()).unwrap();
    // It waits: no heads, no reconciliation of its own.
    assert!(
        engine
            .take_outputs()
            .iter()
            .all(|o| !matches!(o, Output::Request { .. })),
        "the larger key sent a request first"
    );
    (dir, engine)
}

#[test]
fn malformed_reconciliation_messages_ban_the_sender() {
    let bad: Vec<Message> = vec![
        // No ranges.
        Message { parts: vec![] },
        // The last range is not open.
        Message {
            parts: vec![Part {
                upper: Some(FeedId([9; 32])),
                mode: Mode::Skip,
            }],
        },
        // Bounds out of order.
        Message {
            parts: vec![
                Part {
                    upper: Some(FeedId([9; 32])),
                    mode: Mode::Skip,
                },
                Part {
                    upper: Some(FeedId([3; 32])),
                    mode: Mode::Skip,
                },
                Part {
                    upper: None,
                    mode: Mode::Skip,
                },
            ],
        },
        // Items out of order.
        Message {
            parts: vec![Part {
                upper: None,
                mode: Mode::Items {
                    items: vec![head(5), head(2)],
                    reply: false,
                },
            }],
        },
        // Items outside their range.
        Message {
            parts: vec![
                Part {
                    upper: Some(FeedId([4; 32])),
                    mode: Mode::Items {
                        items: vec![head(7)],
                        reply: false,
                    },
                },
                Part {
                    upper: None,
                    mode: Mode::Skip,
                },
            ],
        },
    ];
    for (i, message) in bad.into_iter().enumerate() {
        let (_dir, mut engine) = waiting_engine();
        engine.handle(Input::Request {
            peer: EVIL,
            id: 1,
            request: Request::Reconcile(Reconcile {
                first: true,
                message,
            }),
        });
        engine.step(Instant::now()).unwrap();
        let outputs = engine.take_outputs();
        assert!(banned_for_reconcile(&outputs), "case {i}: {outputs:?}");
        assert!(
            !outputs.iter().any(|o| matches!(o, Output::Respond { .. })),
            "case {i}: answered a peer it banned"
        );
        assert!(engine.peers().next().is_none(), "case {i}");
    }
}

#[test]
fn a_peer_whose_fingerprints_never_agree_is_dropped_after_the_round_limit() {
    let (_dir, mut engine) = waiting_engine();
    // A liar answers every message with a fresh, wrong fingerprint of the
    // whole space, so the exchange never settles.
    let mut banned = false;
    for round in 0..200u64 {
        engine.handle(Input::Request {
            peer: EVIL,
            id: round,
            request: Request::Reconcile(Reconcile {
                first: round == 0,
                message: Message {
                    parts: vec![Part {
                        upper: None,
                        mode: Mode::Fingerprint(Fingerprint {
                            count: 1000 + round,
                            sum: u128::from(round),
                        }),
                    }],
                },
            }),
        });
        engine.step(Instant::now()).unwrap();
        if banned_for_reconcile(&engine.take_outputs()) {
            banned = true;
            break;
        }
    }
    assert!(banned, "a peer that never settles was not dropped");
}

#[test]
fn a_continuation_without_a_start_is_refused_not_answered() {
    let (_dir, mut engine) = waiting_engine();
    engine.handle(Input::Request {
        peer: EVIL,
        id: 7,
        request: Request::Reconcile(Reconcile {
            first: false,
            message: Message::done(),
        }),
    });
    engine.step(Instant::now()).unwrap();
    let outputs = engine.take_outputs();
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Respond {
                id: 7,
                response: kappadb_net::protocol::Response::Refused(_),
                ..
            }
        )),
        "{outputs:?}"
    );
}

#[test]
fn a_malformed_answer_to_our_reconciliation_bans_the_peer() {
    let (_dir, db) = new_db();
    ingest_all(&db, &feeds(70_000, 100, 1));
    // The smaller key starts.
    let mut engine = Engine::new(db, SyncConfig::default())
        .unwrap()
        .with_local(0u8);
    engine.handle(Input::Connected(EVIL));
    engine.step(Instant::now()).unwrap();
    let tag = engine
        .take_outputs()
        .into_iter()
        .find_map(|o| match o {
            Output::Request {
                tag,
                request: Request::Reconcile(r),
                ..
            } if r.first => Some(tag),
            _ => None,
        })
        .expect("the smaller key starts a reconciliation");
    engine.handle(Input::Reconciled {
        peer: EVIL,
        tag,
        message: Message { parts: vec![] },
    });
    engine.step(Instant::now()).unwrap();
    assert!(banned_for_reconcile(&engine.take_outputs()));
}

#[test]
fn the_waiting_side_starts_itself_when_the_peer_never_does() {
    let (_dir, mut engine) = waiting_engine();
    let wait = SyncConfig::default().reconcile_wait;
    let due = engine.next_deadline().expect("a deadline while waiting");
    assert!(due <= Instant::now() + wait);
    engine
        .step(due + std::time::Duration::from_millis(1))
        .unwrap();
    let started = engine.take_outputs().into_iter().any(|o| {
        matches!(
            o,
            Output::Request {
                request: Request::Reconcile(Reconcile { first: true, .. }),
                ..
            }
        )
    });
    assert!(started, "no reconciliation after waiting {wait:?}");
}
