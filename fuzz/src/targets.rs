//! The fuzz targets: each builds a valid structure, damages its encoding
//! and checks what must hold (see the crate docs).

use std::collections::BTreeMap;
use std::path::Path;

use kappadb_core::entry::HEADER_VERSION;
use kappadb_core::system::{DeleteTarget, Deletion, SystemPayload};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::validate::{validate_header, validate_signature};
use kappadb_core::{
    CheckedEntries, CreateOptions, Db, DbConfig, Entry, EntryId, FeedId, ForkProof, Hash, Header,
    Payload, UncheckedForkProof,
};
use kappadb_net::protocol::{
    Announce, HeadInfo, Heads, Limits, Page, Request, Response, SyncConfig, SyncStore, Want,
    decode_announce, decode_request, decode_response, encode_announce, encode_request,
    encode_response, receive, receive_announce,
};
use kappadb_net::test_utils::{Frame, MemStore, Pair, Side};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::mutate::{Mutation, apply, mutations};

/// The payload limit the targets check against.
const LIMIT: u32 = 1 << 20;

fn feed_id() -> impl Strategy<Value = FeedId> {
    any::<[u8; 32]>().prop_map(FeedId)
}

fn entry_id() -> impl Strategy<Value = EntryId> {
    any::<[u8; 32]>().prop_map(EntryId)
}

fn header_value() -> impl Strategy<Value = Header> {
    (
        prop_oneof![4 => Just(HEADER_VERSION), 1 => any::<u8>()],
        feed_id(),
        prop_oneof![Just(1u64), 2u64..1000, any::<u64>()],
        entry_id(),
        any::<u64>(),
        prop_oneof![0u32..1000, any::<u32>()],
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(version, author, seq, prev, timestamp, payload_len, hash)| Header {
                version,
                author,
                seq,
                prev: (seq != 1).then_some(prev),
                timestamp,
                payload_len,
                payload_hash: Hash(hash),
            },
        )
}

/// Headers: a decoded header is the input's canonical reading.
pub fn header(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(cases, seed, (header_value(), mutations(6)), |(h, muts)| {
        let mut bytes = h.encode();
        apply(&mut bytes, &muts);
        if let Ok(d) = Header::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes, "a decoded header is not canonical");
            let _ = validate_header(&d, LIMIT);
            let _ = d.id();
        } else if muts.is_empty() && h.version == HEADER_VERSION {
            return Err(TestCaseError::fail("a valid header does not decode"));
        }
        Ok(())
    })
}

fn deletion_value() -> impl Strategy<Value = Deletion> {
    (
        vec((prop_oneof![1u64..100, any::<u64>()], entry_id()), 0..6),
        proptest::option::of(prop_oneof![1u64..100, any::<u64>()]),
    )
        .prop_map(|(targets, up_to)| Deletion {
            targets: targets
                .into_iter()
                .map(|(seq, id)| DeleteTarget { seq, id })
                .collect(),
            up_to,
        })
}

/// A system payload to damage: a deletion, a delegation (with a genuine
/// consent of a device derived from the seed, to an identity derived from
/// it too) or a revocation.
fn system_payload() -> impl Strategy<Value = (Vec<u8>, kappadb_core::FeedId)> {
    use kappadb_core::identity::{Delegation, Revocation};
    prop_oneof![
        deletion_value().prop_map(|d| (d.encode(), kappadb_core::FeedId([0; 32]))),
        (any::<u64>(), any::<u64>()).prop_map(|(i, dev)| {
            let identity = TestPeer::new(i).key.feed_id();
            let device = TestPeer::new(dev ^ 0x5a5a).key;
            (Delegation::new(identity, &device).encode(), identity)
        }),
        (entry_id(), any::<u64>()).prop_map(|(id, from)| {
            let r = Revocation {
                device: kappadb_core::FeedId(id.0),
                from,
            };
            (r.encode(), kappadb_core::FeedId([1; 32]))
        }),
    ]
}

/// System payloads (deletions, delegations, revocations): a parsed one is
/// the input's canonical reading; its checks never panic; a damaged
/// delegation that still parses and passes the identity rules names the
/// same device with the same consent (the consent signature cannot be
/// altered into another valid one).
pub fn system(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(
        cases,
        seed,
        (system_payload(), mutations(6), any::<u64>()),
        |((original, identity), muts, at)| {
            let mut bytes = original.clone();
            apply(&mut bytes, &muts);
            let checked = kappadb_core::identity::check_payload(&identity, &bytes);
            match SystemPayload::parse(&bytes) {
                Some(Ok(SystemPayload::Deletion(p))) => {
                    prop_assert_eq!(p.encode(), bytes, "a parsed deletion is not canonical");
                    let _ = p.check_shape(at);
                    let _ = p.covers(at);
                }
                Some(Ok(SystemPayload::Delegation(d))) => {
                    prop_assert_eq!(
                        d.encode(),
                        bytes.clone(),
                        "a parsed delegation is not canonical"
                    );
                    if checked.is_ok() {
                        prop_assert_eq!(bytes, original, "a damaged delegation still verifies");
                    }
                }
                Some(Ok(SystemPayload::Revocation(r))) => {
                    prop_assert_eq!(r.encode(), bytes, "a parsed revocation is not canonical");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    prop_assert!(
                        !muts.is_empty(),
                        "a valid system payload does not parse: {}",
                        e
                    );
                    prop_assert!(
                        checked.is_ok()
                            || bytes.starts_with(kappadb_core::system::DELEGATE_V1)
                            || bytes.starts_with(kappadb_core::system::REVOKE_V1),
                        "an identity refusal for a payload that is no identity op"
                    );
                }
                None => prop_assert!(!muts.is_empty(), "a system payload is no longer one"),
            }
            Ok(())
        },
    )
}

/// A feed of `seed`'s key forked at `seq`: the entries before it, and two
/// different entries at that seq.
fn fork(seed: u64, seq: u64, x: &[u8], y: &[u8]) -> (Vec<Entry>, Entry, Entry) {
    let mut peer = TestPeer::new(seed);
    for i in 1..seq {
        peer.make(i, format!("common {i}"));
    }
    let common = peer.entries.clone();
    let mut other = peer.clone();
    let a = peer.make(seq, x.to_vec());
    // Same payload: the two entries differ by their timestamp.
    let ts = if x == y { seq + 1_000 } else { seq };
    let b = other.make(ts, y.to_vec());
    (common, a, b)
}

fn proof_of(a: &Entry, b: &Entry) -> Option<ForkProof> {
    ForkProof::new(a.signed_header(), b.signed_header()).ok()
}

fn fork_proof_value() -> impl Strategy<Value = ForkProof> {
    (
        0u64..1_000,
        1u64..4,
        vec(any::<u8>(), 0..20),
        vec(any::<u8>(), 0..20),
    )
        .prop_filter_map("the two entries must differ", |(seed, seq, x, y)| {
            let (_, a, b) = fork(seed, seq, &x, &y);
            proof_of(&a, &b)
        })
}

/// Fork proofs: one that checks is two validly signed, different headers
/// of one feed and seq.
pub fn fork_proof(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(
        cases,
        seed,
        (fork_proof_value(), mutations(6)),
        |(proof, muts)| {
            let mut bytes =
                postcard::to_stdvec(&proof).map_err(|e| TestCaseError::fail(e.to_string()))?;
            apply(&mut bytes, &muts);
            let Ok(unchecked) = postcard::from_bytes::<UncheckedForkProof>(&bytes) else {
                prop_assert!(!muts.is_empty(), "a valid proof does not decode");
                return Ok(());
            };
            let claimed = unchecked.author();
            match unchecked.check() {
                Ok(p) => {
                    let (a, b) = (p.a(), p.b());
                    prop_assert_eq!(a.header.author, claimed);
                    prop_assert_eq!(b.header.author, claimed);
                    prop_assert_eq!(a.header.seq, b.header.seq);
                    prop_assert_ne!(a.header.id(), b.header.id());
                    prop_assert!(validate_signature(a).is_ok());
                    prop_assert!(validate_signature(b).is_ok());
                }
                Err(e) => prop_assert!(!muts.is_empty(), "a valid proof is refused: {}", e),
            }
            Ok(())
        },
    )
}

fn head_info() -> impl Strategy<Value = HeadInfo> {
    (feed_id(), any::<u64>(), entry_id()).prop_map(|(feed, seq, id)| HeadInfo { feed, seq, id })
}

fn heads_value() -> impl Strategy<Value = Heads> {
    (
        vec(head_info(), 0..5),
        vec((feed_id(), any::<u64>()), 0..3),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(heads, forks, idle, more, serial)| Heads {
            heads,
            forks,
            idle,
            more,
            serial,
        })
}

/// A chain of `n` real entries of `seed`'s feed, some with their payload
/// absent or erased (as pages carry them).
fn page_value() -> impl Strategy<Value = Page> {
    (0u64..1_000, vec((vec(any::<u8>(), 0..40), 0u8..8), 0..6)).prop_map(|(seed, items)| {
        let mut peer = TestPeer::new(seed);
        let entries = items
            .into_iter()
            .enumerate()
            .map(|(i, (payload, state))| {
                let mut e = peer.make(i as u64, payload);
                match state {
                    0 => e.payload = Payload::Absent,
                    1 => e.payload = Payload::Erased,
                    _ => {}
                }
                e
            })
            .collect();
        Page {
            feed: peer.key.feed_id(),
            entries,
        }
    })
}

/// A sync message of any kind.
#[derive(Clone, Debug)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
    /// A gossip announcement.
    Announce(Announce),
}

fn message_value() -> impl Strategy<Value = Message> {
    let proofs = || {
        vec(fork_proof_value(), 0..3).prop_map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let bytes = postcard::to_stdvec(p).ok()?;
                    postcard::from_bytes::<UncheckedForkProof>(&bytes).ok()
                })
                .collect::<Vec<_>>()
        })
    };
    prop_oneof![
        1 => heads_value().prop_map(|h| Message::Request(Request::Heads(h))),
        1 => (feed_id(), any::<u64>(), any::<u64>()).prop_map(|(feed, from_seq, to_seq)| {
            Message::Request(Request::Want(Want {
                feed,
                from_seq,
                to_seq,
            }))
        }),
        1 => vec(feed_id(), 0..4).prop_map(|f| Message::Request(Request::ForkProofs(f))),
        1 => heads_value().prop_map(|h| Message::Response(Response::Heads(h))),
        3 => page_value().prop_map(|p| Message::Response(Response::Page(p))),
        1 => proofs()
            .prop_map(|p| Message::Response(Response::ForkProofs(p))),
        1 => ".{0,40}".prop_map(|r| Message::Response(Response::Refused(r))),
        1 => (vec(head_info(), 0..4), proofs())
            .prop_map(|(heads, forks)| Message::Announce(Announce { heads, forks })),
    ]
}

fn limits_value() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (1u64..8, 64usize..4096, 16usize..2048).prop_map(|(page_entries, page_bytes, max_message_bytes)| Limits {
            page_entries,
            page_bytes,
            max_message_bytes,
        }),
    ]
}

/// Sync messages: whatever decodes encodes and decodes to itself, and
/// becomes an engine input without panicking.
pub fn wire(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(
        cases,
        seed,
        (message_value(), mutations(6), limits_value()),
        |(msg, muts, limits)| {
            match msg {
                Message::Request(r) => {
                    let mut bytes = encode_request(&r);
                    apply(&mut bytes, &muts);
                    if let Ok(d) = decode_request(&bytes, &limits) {
                        let again = decode_request(&encode_request(&d), &limits);
                        prop_assert_eq!(
                            again.as_ref().ok(),
                            Some(&d),
                            "a request does not round-trip"
                        );
                    }
                }
                Message::Response(r) => {
                    let mut bytes = encode_response(&r);
                    apply(&mut bytes, &muts);
                    if let Ok(d) = decode_response(&bytes, &limits) {
                        let again = decode_response(&encode_response(&d), &limits);
                        prop_assert_eq!(
                            again.as_ref().ok(),
                            Some(&d),
                            "a response does not round-trip"
                        );
                        let _ = receive(0u8, 1, d.clone(), LIMIT);
                        let _ = receive(0u8, 1, d.for_v1(), LIMIT);
                    }
                }
                Message::Announce(a) => {
                    let mut bytes = encode_announce(&a);
                    apply(&mut bytes, &muts);
                    if let Ok(d) = decode_announce(&bytes, &limits) {
                        let again = decode_announce(&encode_announce(&d), &limits);
                        prop_assert_eq!(
                            again.as_ref().ok(),
                            Some(&d),
                            "an announcement does not round-trip"
                        );
                        let _ = receive_announce(0u8, d);
                    }
                }
            }
            Ok(())
        },
    )
}

/// What goes into the database of the log target.
#[derive(Clone, Debug)]
pub struct LogCase {
    own: Vec<Vec<u8>>,
    delete: Option<usize>,
    peer: Vec<Vec<u8>>,
    forked: bool,
    /// Which segment file to damage (a fraction of their count).
    file: crate::mutate::Pos,
    muts: Vec<Mutation>,
}

fn log_case() -> impl Strategy<Value = LogCase> {
    (
        vec(vec(any::<u8>(), 0..300), 1..30),
        proptest::option::of(any::<usize>()),
        vec(vec(any::<u8>(), 0..100), 0..6),
        any::<bool>(),
        any::<u64>().prop_map(crate::mutate::Pos),
        mutations(8),
    )
        .prop_map(|(own, delete, peer, forked, file, muts)| LogCase {
            own,
            delete,
            peer,
            forked,
            file,
            muts,
        })
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg" || x == "cseg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn build_log(dir: &Path, case: &LogCase) -> Result<(), TestCaseError> {
    let fail =
        |e: &dyn std::fmt::Display| TestCaseError::fail(format!("building the database: {e}"));
    let db = Db::create(
        dir,
        CreateOptions {
            config: DbConfig {
                segment_bytes: 4096,
                ..DbConfig::default()
            },
            ..CreateOptions::default()
        },
    )
    .map_err(|e| fail(&e))?;
    let mut appended = Vec::new();
    for p in &case.own {
        // A payload that happens to look like a system payload is not one
        // this case means to write.
        if SystemPayload::is_system(p) {
            continue;
        }
        appended.push(db.append(p.clone()).map_err(|e| fail(&e))?);
    }
    if let Some(i) = case.delete
        && !appended.is_empty()
    {
        let t = &appended[i % appended.len()];
        let d = Deletion {
            targets: vec![DeleteTarget {
                seq: t.seq,
                id: t.id,
            }],
            up_to: None,
        };
        db.append(d.encode()).map_err(|e| fail(&e))?;
    }
    let mut peer = TestPeer::new(7);
    let entries: Vec<Entry> = case
        .peer
        .iter()
        .enumerate()
        .map(|(i, p)| peer.make(i as u64, p.clone()))
        .collect();
    if !entries.is_empty() {
        db.ingest(entries).map_err(|e| fail(&e))?;
    }
    if case.forked {
        let (mut common, a, b) = fork(11, 2, b"left", b"right");
        common.push(a);
        db.ingest(common).map_err(|e| fail(&e))?;
        db.ingest(vec![b]).map_err(|e| fail(&e))?;
    }
    Ok(())
}

/// Read everything `db` claims to hold; if `trusted` (verify found no
/// problem), every entry must be validly signed and its payload hashed.
fn read_all(db: &Db, trusted: bool) -> Result<(), TestCaseError> {
    for info in db.feeds() {
        for seq in 1..=info.head.seq.min(200) {
            if let Ok(Some(e)) = db.get(&info.feed, seq)
                && trusted
            {
                prop_assert!(
                    validate_signature(&e.signed_header()).is_ok(),
                    "verify passed, but seq {} of {} is not validly signed",
                    seq,
                    info.feed.fmt_short()
                );
                if let Payload::Held(p) = &e.payload {
                    prop_assert_eq!(Hash::of(p), e.header.payload_hash);
                }
            }
        }
    }
    let _ = db.status();
    let _ = db.fork_proofs();
    Ok(())
}

/// The log: a database whose segment file was damaged opens or fails with
/// an error; once it opens, it opens again; reads never panic, and when
/// verify passes every entry is valid.
pub fn log(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(cases, seed, log_case(), |case| {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("db");
        build_log(&path, &case)?;
        let files = segment_files(&path);
        prop_assert!(!files.is_empty(), "no segment files");
        let file = &files[case.file.of(files.len())];
        let mut bytes = std::fs::read(file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        apply(&mut bytes, &case.muts);
        std::fs::write(file, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let db = match Db::open(&path) {
            Ok(db) => db,
            Err(e) => {
                prop_assert!(
                    !case.muts.is_empty(),
                    "an undamaged database does not open: {}",
                    e
                );
                return Ok(());
            }
        };
        let report = db.verify(&mut |_, _| {});
        let trusted = report.as_ref().is_ok_and(|r| r.problems.is_empty());
        if case.muts.is_empty() {
            prop_assert!(
                trusted,
                "an undamaged database does not verify: {:?}",
                report
            );
        }
        read_all(&db, trusted)?;
        let _ = db.append(b"after".to_vec());
        drop(db);
        match Db::open(&path) {
            Ok(db) => read_all(&db, false)?,
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "the database opened once, then no more: {e}"
                )));
            }
        }
        Ok(())
    })
}

/// What the engine target syncs, and how the network damages it.
#[derive(Clone, Debug)]
pub struct EngineCase {
    a_own: usize,
    b_own: usize,
    third: usize,
    forked: bool,
    page_entries: u64,
    /// Percent of frames damaged.
    damage: u8,
    /// Damage to apply, in turn, to the frames picked.
    plans: Vec<Vec<Mutation>>,
    picks: u64,
}

fn engine_case() -> impl Strategy<Value = EngineCase> {
    (
        0usize..20,
        0usize..40,
        0usize..20,
        any::<bool>(),
        1u64..6,
        0u8..=100,
        vec(mutations(4), 1..6),
        any::<u64>(),
    )
        .prop_map(
            |(a_own, b_own, third, forked, page_entries, damage, plans, picks)| EngineCase {
                a_own,
                b_own,
                third,
                forked,
                page_entries,
                damage,
                plans,
                picks,
            },
        )
}

fn frame_bytes(frame: &mut Frame) -> &mut Vec<u8> {
    match frame {
        Frame::Request { bytes, .. } | Frame::Response { bytes, .. } | Frame::Gossip(bytes) => {
            bytes
        }
    }
}

fn ingest(store: &MemStore, entries: Vec<Entry>) -> Result<(), TestCaseError> {
    store
        .ingest_checked(CheckedEntries::new(entries, LIMIT))
        .map(|_| ())
        .map_err(|e| TestCaseError::fail(format!("setting up: {e}")))
}

fn same_entries(
    x: &BTreeMap<FeedId, Vec<Entry>>,
    y: &BTreeMap<FeedId, Vec<Entry>>,
) -> Result<(), TestCaseError> {
    for (feed, xs) in x {
        let Some(ys) = y.get(feed) else { continue };
        for (a, b) in xs.iter().zip(ys) {
            prop_assert_eq!(a, b, "two stores hold different entries at one seq");
        }
    }
    Ok(())
}

/// The sync engine: two engines sync over a network that damages frames
/// both ways. Neither store fails (the pair panics if one does), neither
/// holds an entry the other did not send it intact, and once the network
/// is honest again they converge.
pub fn engine(cases: u32, seed: u64) -> Result<(), String> {
    crate::run(cases, seed, engine_case(), |case| {
        let a = MemStore::new(1);
        let b = MemStore::new(2);
        for i in 0..case.a_own {
            a.append(i as u64, format!("a{i}").into_bytes());
        }
        for i in 0..case.b_own {
            b.append(i as u64, format!("b{i}").into_bytes());
        }
        let mut third = TestPeer::new(3);
        let entries: Vec<Entry> = (0..case.third)
            .map(|i| third.make(i as u64, format!("c{i}")))
            .collect();
        ingest(&b, entries)?;
        if case.forked {
            let (mut common, x, y) = fork(4, 2, b"x", b"y");
            common.push(x);
            ingest(&b, common)?;
            ingest(&b, vec![y])?;
        }
        // What each side started with, and so what it may pass on.
        let origin_a = a.snapshot();
        let origin_b = b.snapshot();

        let mut config = SyncConfig::default();
        config.limits.page_entries = case.page_entries;
        let mut pair = Pair::with_config(a.clone(), b.clone(), config);
        pair.frame_budget = Some(4_000);
        let (damage, plans) = (case.damage, case.plans.clone());
        let mut state = case.picks | 1;
        let mut turn = 0usize;
        pair.tamper = Some(Box::new(move |_to: Side, frame: &mut Frame| {
            // xorshift: which frames to damage.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (state % 100) < u64::from(damage) {
                apply(frame_bytes(frame), &plans[turn % plans.len()]);
                turn += 1;
            }
        }));
        pair.connect();
        pair.run();
        // Whatever a side holds of a feed came from the other, intact.
        let (sa, sb) = (a.snapshot(), b.snapshot());
        same_entries(&sa, &origin_b)?;
        same_entries(&sb, &origin_a)?;
        for (feed, entries) in &sa {
            let known = origin_a
                .get(feed)
                .map_or(0, Vec::len)
                .max(origin_b.get(feed).map_or(0, Vec::len));
            prop_assert!(entries.len() <= known, "A holds entries nobody wrote");
        }

        // An honest network again: they converge.
        pair.tamper = None;
        pair.frame_budget = Some(100_000);
        pair.disconnect();
        pair.connect();
        pair.run();
        prop_assert!(
            pair.synced(),
            "no convergence after the network turned honest"
        );
        // Both know every fork; every other feed is the same on both. (A
        // feed known to be forked is not pulled further, so how much of it
        // a side holds depends on whether the proof came first.)
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let feeds: std::collections::BTreeSet<&FeedId> = sa.keys().chain(sb.keys()).collect();
        for feed in feeds {
            let (fa, fb) = (a.fork(feed).is_some(), b.fork(feed).is_some());
            prop_assert_eq!(fa, fb, "one side knows a fork the other does not");
            if !fa {
                prop_assert_eq!(
                    sa.get(feed),
                    sb.get(feed),
                    "the two stores differ after sync"
                );
            }
        }
        Ok(())
    })
}
