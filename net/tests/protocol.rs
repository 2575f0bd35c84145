//! Protocol-level tests: engines joined by channels (every message goes
//! through the real encoding), and engines facing a scripted, malicious
//! peer. No libp2p, no sockets.

use std::collections::HashMap;
use std::time::Instant;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry, FeedId, Head, NetworkKey, SigningKey};
use kappadb_net::protocol::{
    Engine, HeadInfo, Heads, Input, Output, Page, Request, Response, SyncConfig, SyncEvent, Want,
    receive,
};
use kappadb_net::test_utils::{Frame, Pair, Side};

fn new_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
    (dir, db)
}

fn db_with_key(key: SigningKey, network: &NetworkKey) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            signing_key: Some(key),
            network_key: Some(network.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (dir, db)
}

fn append_n(db: &Db, n: usize, tag: &str) {
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect();
    for chunk in payloads.chunks(1000) {
        db.append_batch(chunk.to_vec()).unwrap();
    }
}

fn heads(db: &Db) -> HashMap<FeedId, (u64, kappadb_core::EntryId)> {
    db.heads()
        .into_iter()
        .map(|(f, h): (FeedId, Head)| (f, (h.seq, h.id)))
        .collect()
}

#[test]
fn sync_bidirectional_exchange() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    append_n(&a, 1300, "a");
    append_n(&b, 40, "b");
    // A feed both hold, B further along.
    let mut third = TestPeer::new(3);
    let shared: Vec<Entry> = (0..700).map(|i| third.make(i, format!("t{i}"))).collect();
    a.ingest(shared[..200].to_vec()).unwrap();
    b.ingest(shared.clone()).unwrap();

    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();

    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert_eq!(heads(&a), heads(&b));
    assert_eq!(a.heads().len(), 3);
    assert_eq!(b.head(&a.feed_id()).unwrap().seq, 1300);
    assert_eq!(a.head(&third.key.feed_id()).unwrap().seq, 700);
    assert!(pair.synced(), "both sides must report idle");
    let idle: Vec<_> = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SyncEvent::Idle { .. }))
        .collect();
    assert_eq!(idle.len(), 2, "{idle:?}");
    // The counters add up: B pulled A's feed, A pulled the rest.
    assert_eq!(pair.b.stats(&Side::A).unwrap().pulled, 1300);
    assert_eq!(pair.a.stats(&Side::B).unwrap().pulled, 40 + 500);
}

#[test]
fn sync_with_nothing_to_do_goes_idle() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    let mut pair = Pair::new(a, b);
    pair.connect();
    pair.run();
    assert!(pair.synced());
    assert!(pair.frames < 12, "took {} frames", pair.frames);
}

#[test]
fn sync_resumes_after_a_dropped_connection() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    append_n(&a, 5000, "a");
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    // Deliver frames a few at a time until some, not all, is stored.
    let mut budget = 0;
    let mut partial = 0;
    while partial == 0 {
        budget += 2;
        pair.frame_budget = Some(budget);
        pair.run();
        partial = b.head(&a.feed_id()).map_or(0, |h| h.seq);
    }
    assert!(partial > 0 && partial < 5000, "partial = {partial}");
    pair.disconnect();

    // A restart: fresh engines, state only from what is stored.
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();
    assert_eq!(b.head(&a.feed_id()).unwrap().seq, 5000);
    assert!(pair.synced());
    // Only the missing part was pulled (plus the one entry of overlap).
    let pulled = pair.b.stats(&Side::A).unwrap().pulled;
    assert_eq!(pulled, 5000 - partial);
}

#[test]
fn sync_live_announcement_is_pulled() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    pair.run();
    // A feed B has never seen, created while connected.
    let mut fresh = TestPeer::new(77);
    a.ingest(vec![fresh.make(1, "hi")]).unwrap();
    a.append(b"new".to_vec()).unwrap();
    pair.a.handle(Input::LocalChanged);
    pair.run();
    assert_eq!(b.head(&fresh.key.feed_id()).unwrap().seq, 1);
    assert_eq!(b.head(&a.feed_id()).unwrap().seq, 1);
}

#[test]
fn sync_finds_and_spreads_forks() {
    let network = NetworkKey::from_bytes([9; 32]);
    let author = SigningKey::from_seed([42; 32]);
    let (_d1, one) = db_with_key(author.clone(), &network);
    let (_d2, two) = db_with_key(author.clone(), &network);
    let (_d3, third) = db_with_key(SigningKey::from_seed([3; 32]), &network);
    let (_d4, fourth) = db_with_key(SigningKey::from_seed([4; 32]), &network);
    append_n(&one, 5, "one");
    append_n(&two, 3, "two");
    let feed = author.feed_id();

    let mut pair = Pair::new(third.clone(), one.clone());
    pair.connect();
    pair.run();
    assert_eq!(third.head(&feed).unwrap().seq, 5);

    let mut pair = Pair::new(third.clone(), two.clone());
    pair.connect();
    pair.run();
    assert!(
        pair.bans.is_empty(),
        "a fork is news, not a fault: {:?}",
        pair.bans
    );
    let fork = third.fork(&feed).expect("third must know the feed forked");
    assert!(fork.seq <= 3);
    assert!(pair.events.iter().any(|(side, e)| *side == Side::A
        && matches!(e, SyncEvent::ForkFound { feed: f, .. } if *f == feed)));
    assert_eq!(third.fork_proofs().unwrap().len(), 1);

    // The proof reaches a fourth peer that never saw the second branch.
    let mut pair = Pair::new(fourth.clone(), third.clone());
    pair.connect();
    pair.run();
    assert!(fourth.fork(&feed).is_some(), "the proof must spread");
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
}

#[test]
fn sync_skips_blocked_feeds_both_ways() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    append_n(&a, 10, "a");
    append_n(&b, 10, "b");
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.a = Engine::new(a.clone(), SyncConfig::default())
        .unwrap()
        .with_blocked([b.feed_id(), a.feed_id()]);
    pair.connect();
    pair.run();
    assert!(
        a.head(&b.feed_id()).is_none(),
        "A must not pull a blocked feed"
    );
    assert!(
        b.head(&a.feed_id()).is_none(),
        "A must not serve a blocked feed"
    );
    assert!(pair.synced());
}

// ---------------------------------------------------------------------------
// A scripted peer.

const EVIL: u8 = 66;

struct Victim {
    _dir: tempfile::TempDir,
    db: Db,
    engine: Engine<u8>,
    outputs: Vec<Output<u8>>,
}

impl Victim {
    fn new() -> Self {
        Self::with_db(new_db())
    }

    fn with_db((dir, db): (tempfile::TempDir, Db)) -> Self {
        // The evil peer speaks the plain heads exchange (version 2); its
        // reconciliation messages have tests of their own.
        let config = SyncConfig {
            reconcile: false,
            ..SyncConfig::default()
        };
        let engine = Engine::new(db.clone(), config).unwrap();
        Self {
            _dir: dir,
            db,
            engine,
            outputs: Vec::new(),
        }
    }

    fn step(&mut self) {
        self.engine.step(Instant::now()).unwrap();
        self.outputs.extend(self.engine.take_outputs());
    }

    /// Connect the evil peer and claim `feed` has `seq` entries.
    fn connect_claiming(&mut self, feed: FeedId, seq: u64) {
        self.engine.handle(Input::Connected(EVIL));
        self.step();
        let tag = self.take_request(|r| matches!(r, Request::Heads(_))).0;
        self.engine.handle(Input::Heads {
            peer: EVIL,
            tag,
            heads: Heads {
                heads: vec![HeadInfo {
                    feed,
                    seq,
                    id: kappadb_core::EntryId([7; 32]),
                }],
                forks: vec![],
                idle: true,
                more: false,
                serial: 1,
            },
        });
        self.step();
    }

    fn take_request(&mut self, pick: impl Fn(&Request) -> bool) -> (u64, Request) {
        let idx = self
            .outputs
            .iter()
            .position(|o| matches!(o, Output::Request { request, .. } if pick(request)))
            .unwrap_or_else(|| panic!("no such request in {:?}", self.outputs));
        match self.outputs.remove(idx) {
            Output::Request { tag, request, .. } => (tag, request),
            _ => unreachable!(),
        }
    }

    fn wants(&mut self) -> Vec<(u64, Want)> {
        let mut out = Vec::new();
        while self.outputs.iter().any(|o| {
            matches!(
                o,
                Output::Request {
                    request: Request::Want(_),
                    ..
                }
            )
        }) {
            if let (tag, Request::Want(w)) = self.take_request(|r| matches!(r, Request::Want(_))) {
                out.push((tag, w));
            }
        }
        out
    }

    fn answer(&mut self, tag: u64, page: Page) {
        let limit = self.db.config().max_payload_bytes;
        self.engine
            .handle(receive(EVIL, tag, Response::Page(page), limit));
        self.step();
    }

    fn banned(&self) -> Option<String> {
        self.outputs.iter().find_map(|o| match o {
            Output::Ban { peer: EVIL, reason } => Some(reason.to_string()),
            _ => None,
        })
    }
}

fn chain(seed: u64, n: usize) -> (FeedId, Vec<Entry>) {
    let mut peer = TestPeer::new(seed);
    let entries = (0..n)
        .map(|i| peer.make(i as u64, format!("e{i}")))
        .collect();
    (peer.key.feed_id(), entries)
}

/// Run the victim against a page built from a good chain by `tamper`.
fn check_malicious(name: &str, tamper: impl Fn(FeedId, Vec<Entry>) -> Page) {
    let mut v = Victim::new();
    let (feed, entries) = chain(5, 600);
    v.connect_claiming(feed, 600);
    let wants = v.wants();
    assert!(!wants.is_empty(), "{name}: no wants");
    let (tag, want) = wants[0];
    assert_eq!((want.from_seq, want.to_seq), (1, 512), "{name}");
    let page = tamper(feed, entries[..512].to_vec());
    v.answer(tag, page);
    let reason = v
        .banned()
        .unwrap_or_else(|| panic!("{name}: peer not banned"));
    assert!(!reason.is_empty());
    assert!(v.db.head(&feed).is_none(), "{name}: something was stored");
    assert_eq!(v.db.status().entries, 0, "{name}");
    // Nothing more is asked of a banned peer.
    v.outputs.clear();
    v.step();
    assert!(v.wants().is_empty(), "{name}");
}

#[test]
fn malicious_forged_signature_is_dropped_and_banned() {
    check_malicious("forged signature", |feed, mut entries| {
        // Signed by another key, claiming the victim's author.
        let other = SigningKey::from_seed([99; 32]);
        entries[300].signature = other.sign(&entries[300].id().0);
        Page { feed, entries }
    });
}

#[test]
fn malicious_broken_chain_is_dropped_and_banned() {
    check_malicious("broken chain", |feed, mut entries| {
        // Same author, a second branch from seq 200 on: prev links break.
        let mut fork = TestPeer::new(5);
        let alt: Vec<Entry> = (0..300)
            .map(|i| fork.make(1000 + i, format!("x{i}")))
            .collect();
        entries[250] = alt[250].clone();
        Page { feed, entries }
    });
}

#[test]
fn malicious_out_of_order_seqs_are_refused() {
    check_malicious("out of order", |feed, mut entries| {
        entries.swap(10, 11);
        Page { feed, entries }
    });
}

#[test]
fn malicious_gap_in_seqs_is_refused() {
    check_malicious("gap", |feed, mut entries| {
        entries.remove(100);
        Page { feed, entries }
    });
}

#[test]
fn malicious_oversized_page_is_refused() {
    check_malicious("more entries than asked", |_feed, _| {
        let (feed, entries) = chain(5, 600);
        Page {
            feed,
            entries: entries[..513].to_vec(),
        }
    });
    check_malicious("too many bytes", |feed, _| {
        let key = TestPeer::new(5).key;
        let mut prev: Option<Entry> = None;
        let entries = (0..8)
            .map(|i| {
                let e = Entry::sign(&key, prev.as_ref(), i, vec![b'x'; 900 * 1024]);
                prev = Some(e.clone());
                e
            })
            .collect();
        Page { feed, entries }
    });
}

#[test]
fn malicious_payload_tampering_is_dropped() {
    check_malicious("tampered payload", |feed, mut entries| {
        if let kappadb_core::Payload::Held(p) = &mut entries[42].payload {
            p[0] ^= 1;
        }
        Page { feed, entries }
    });
}

#[test]
fn malicious_wrong_feed_is_refused() {
    check_malicious("another feed's entries", |feed, _| {
        let (_, other) = chain(6, 512);
        Page {
            feed,
            entries: other,
        }
    });
}

#[test]
fn malicious_garbage_bytes_ban_the_peer() {
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    append_n(&a, 10, "a");
    let mut pair = Pair::new(a.clone(), b.clone());
    pair.connect();
    for garbage in [
        vec![],
        vec![0xff; 64],
        vec![
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ] {
        pair.deliver(
            Side::B,
            Frame::Response {
                tag: 1,
                bytes: garbage,
            },
        );
    }
    pair.run();
    assert!(
        pair.bans
            .iter()
            .any(|(side, r)| *side == Side::B && r.contains("malformed")),
        "{:?}",
        pair.bans
    );
    assert!(b.head(&a.feed_id()).is_none());
}

#[test]
fn good_pages_before_a_bad_one_are_kept() {
    let mut v = Victim::new();
    let (feed, entries) = chain(5, 1500);
    v.connect_claiming(feed, 1500);
    let wants = v.wants();
    assert_eq!(wants.len(), 3);
    // The first page is good; the second is forged.
    v.answer(
        wants[0].0,
        Page {
            feed,
            entries: entries[..512].to_vec(),
        },
    );
    assert_eq!(v.db.head(&feed).unwrap().seq, 512);
    let mut bad = entries[512..1024].to_vec();
    bad[5].signature = SigningKey::from_seed([1; 32]).sign(&bad[5].id().0);
    v.answer(wants[1].0, Page { feed, entries: bad });
    assert!(v.banned().is_some());
    assert_eq!(
        v.db.head(&feed).unwrap().seq,
        512,
        "the bad page stored nothing"
    );
}

#[test]
fn wants_respect_the_in_flight_limit_and_page_size() {
    let mut v = Victim::new();
    let (feed, entries) = chain(8, 3000);
    v.connect_claiming(feed, 3000);
    let wants = v.wants();
    assert_eq!(wants.len(), 4, "at most 4 pages in flight");
    for (_, w) in &wants {
        assert!(w.len() <= 512);
    }
    // Answering out of order still stores everything in order.
    for &(tag, w) in wants.iter().rev() {
        let page = entries[(w.from_seq - 1) as usize..w.to_seq as usize].to_vec();
        v.answer(
            tag,
            Page {
                feed,
                entries: page,
            },
        );
    }
    assert_eq!(v.db.head(&feed).unwrap().seq, 2048);
    assert!(v.banned().is_none());
    // A short page (the peer's byte budget) is followed up.
    let wants = v.wants();
    assert!(!wants.is_empty());
    let (tag, w) = wants[0];
    assert_eq!(w.from_seq, 2049);
    let page = entries[(w.from_seq - 1) as usize..(w.from_seq + 9) as usize].to_vec();
    v.answer(
        tag,
        Page {
            feed,
            entries: page,
        },
    );
    assert_eq!(v.db.head(&feed).unwrap().seq, 2058);
    let again = v.wants();
    assert!(
        again.iter().any(|(_, w)| w.from_seq == 2059),
        "the rest of a short page is asked again: {again:?}"
    );
}

#[test]
fn empty_page_stops_pulling_without_a_ban() {
    let mut v = Victim::new();
    let (feed, _) = chain(9, 100);
    v.connect_claiming(feed, 100);
    let wants = v.wants();
    v.answer(
        wants[0].0,
        Page {
            feed,
            entries: vec![],
        },
    );
    assert!(v.banned().is_none());
    v.outputs.clear();
    v.step();
    assert!(v.wants().is_empty());
}

#[test]
fn entry_over_the_payload_limit_stops_the_feed_without_a_ban() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CreateOptions::default();
    opts.config.max_payload_bytes = 1000;
    let db = Db::create(dir.path(), opts).unwrap();
    let mut v = Victim::with_db((dir, db));
    let mut author = TestPeer::new(12);
    let mut entries: Vec<Entry> = (0..3).map(|i| author.make(i, "small")).collect();
    entries.push(author.make(3, vec![0u8; 2000]));
    entries.extend((4..8).map(|i| author.make(i, "small")));
    let feed = author.key.feed_id();
    v.connect_claiming(feed, 8);
    let (tag, want) = v.wants()[0];
    assert_eq!((want.from_seq, want.to_seq), (1, 8));
    v.answer(tag, Page { feed, entries });
    assert!(v.banned().is_none(), "a settings difference is not a fault");
    assert_eq!(v.db.head(&feed).unwrap().seq, 3);
    v.outputs.clear();
    v.step();
    assert!(
        v.wants().is_empty(),
        "the feed is not pulled past the big entry"
    );
}

#[test]
fn a_stale_idle_flag_arriving_late_is_ignored() {
    let mut v = Victim::new();
    v.engine.handle(Input::Connected(EVIL));
    v.step();
    let heads = |idle, serial| Heads {
        heads: vec![],
        forks: vec![],
        idle,
        more: false,
        serial,
    };
    // The peer's heads (serial 1), then answers to the victim (busy).
    v.engine.handle(Input::Request {
        peer: EVIL,
        id: 1,
        request: Request::Heads(heads(false, 1)),
    });
    v.step();
    let mut serial = 2;
    let answer = |v: &mut Victim, serial: &mut u64, idle: bool| {
        while v.outputs.iter().any(|o| {
            matches!(
                o,
                Output::Request {
                    request: Request::Heads(_),
                    ..
                }
            )
        }) {
            let tag = v.take_request(|r| matches!(r, Request::Heads(_))).0;
            *serial += 1;
            v.engine.handle(Input::Heads {
                peer: EVIL,
                tag,
                heads: heads(idle, *serial),
            });
            v.step();
        }
    };
    answer(&mut v, &mut serial, false);
    assert!(!v.engine.is_synced(&EVIL));
    // A message from before those answers (idle, serial 2) arrives last.
    v.engine.handle(Input::Request {
        peer: EVIL,
        id: 2,
        request: Request::Heads(heads(true, 2)),
    });
    v.step();
    assert!(
        !v.engine.is_synced(&EVIL),
        "a stale idle flag must not count"
    );
    serial += 1;
    v.engine.handle(Input::Request {
        peer: EVIL,
        id: 3,
        request: Request::Heads(heads(true, serial)),
    });
    v.step();
    answer(&mut v, &mut serial, true);
    assert!(v.engine.is_synced(&EVIL));
}

#[test]
fn sync_pages_heads_of_many_feeds() {
    // More feeds than fit in one heads message.
    let n_feeds = kappadb_net::protocol::MAX_HEADS_PER_MESSAGE + 700;
    let (_da, a) = new_db();
    let (_db, b) = new_db();
    let entries: Vec<Entry> = (0..n_feeds as u64)
        .map(|i| TestPeer::new(10_000 + i).make(1, "one"))
        .collect();
    for chunk in entries.chunks(2000) {
        a.ingest(chunk.to_vec()).unwrap();
    }
    // Many one-entry pages: allow more in flight to keep the test short.
    let config = SyncConfig {
        max_in_flight: 2048,
        max_buffered_bytes: usize::MAX / 2,
        ..SyncConfig::default()
    };
    let mut pair = Pair::with_config(a.clone(), b.clone(), config);
    pair.connect();
    pair.run();
    assert!(pair.bans.is_empty(), "{:?}", pair.bans);
    assert_eq!(b.heads().len(), n_feeds);
    assert_eq!(heads(&a), heads(&b));
    assert!(pair.synced());
}
