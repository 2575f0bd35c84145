//! The sync engine: every peer session of one node, as a state machine
//! driven by [`Input`]s and answering with [`Output`]s. It knows nothing of
//! libp2p; the node feeds it swarm events, tests feed it channels.
//!
//! Flow with one peer:
//!
//! 1. On [`Input::Connected`] both sides send [`Request::Heads`] with
//!    everything they hold. Heads travel in requests only; the answer to a
//!    heads request is the responder's idle flag (an empty [`Heads`]).
//! 2. Each side works out what it misses and pulls it with
//!    [`Request::Want`], at most [`SyncConfig::max_in_flight`] pages in
//!    flight and [`SyncConfig::max_buffered_bytes`] buffered per peer. A
//!    feed is pulled from one peer at a time (a claim), so pages of a feed
//!    arrive in order and nothing is fetched twice.
//! 3. Each page is checked against its request ([`check_page`]: feed,
//!    consecutive seqs, counts and bytes), then stored with
//!    [`Db::ingest_page`], all or nothing. A page that breaks a rule gets
//!    the peer banned ([`Output::Ban`]) and nothing of it is stored.
//! 4. Whenever a side's idleness changes (it misses nothing the other
//!    announced, or it does again) it sends its heads delta with the new
//!    [`Heads::idle`]. Once both sides are idle the engine reports
//!    [`SyncEvent::Idle`].
//!
//! Requests and responses use separate streams and can overtake each
//! other, so every heads message carries a [`Heads::serial`] and only the
//! newest idle flag counts; a side is in sync only when no heads request of
//! its own is unanswered (the answer is newer than anything the peer sent
//! before it saw those heads).
//!
//! A pull starts at the local head's seq, not after it: the one entry of
//! overlap is a duplicate when both sides agree and a fork proof when they
//! do not. Heads requests after the first carry only what changed since
//! the sender last told that peer; gossip ([`Input::Announce`]) carries new
//! heads to everyone. Resuming after a dropped connection needs no state:
//! it starts again from the stored heads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use kappadb_core::{CheckedEntries, Db, Entry, EntryError, EntryId, FeedId, StoreError};

use super::wire::{
    Announce, HeadInfo, Heads, Limits, MAX_FORK_PROOFS_PER_MESSAGE, MAX_HEADS_PER_MESSAGE, Page,
    Request, Response, Want, entry_wire_size,
};

/// What names a peer: a libp2p `PeerId` in the node, anything small in
/// tests.
pub trait PeerKey: Copy + Ord + Hash + Debug + Send + 'static {}

impl<T: Copy + Ord + Hash + Debug + Send + 'static> PeerKey for T {}

/// Tunables of the sync engine.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Message and page size limits.
    pub limits: Limits,
    /// Pages requested from one peer and not yet answered.
    pub max_in_flight: usize,
    /// Bytes of pages one peer may have buffered or in flight.
    pub max_buffered_bytes: usize,
    /// Most entries stored by one `ingest_page` call.
    pub max_ingest_entries: usize,
    /// Shortest time between two gossip announcements.
    pub announce_interval: Duration,
    /// Failed requests in a row before a peer is disconnected.
    pub max_failures: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_in_flight: 4,
            max_buffered_bytes: 32 * 1024 * 1024,
            max_ingest_entries: 4096,
            announce_interval: Duration::from_millis(100),
            max_failures: 5,
        }
    }
}

/// Something that happened to the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<P> {
    /// A peer connected (or a second connection opened; harmless).
    Connected(P),
    /// The last connection to a peer closed.
    Disconnected(P),
    /// A peer sent a request; answer it with [`Output::Respond`] and `id`.
    Request {
        /// The peer.
        peer: P,
        /// The driver's id for the reply.
        id: u64,
        /// The request.
        request: Request,
    },
    /// The answer to an [`Output::Request`] with the same `tag`.
    Response {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The answer.
        response: Response,
    },
    /// The answer to a [`Request::Want`] with the same `tag`: a page whose
    /// entries the driver has already checked ([`CheckedEntries`], against
    /// this database's payload limit), typically on other threads while
    /// the engine stored the previous page. A driver may send pages either
    /// way; the engine checks a [`Response::Page`] itself.
    CheckedPage {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The feed the page claims to hold.
        feed: FeedId,
        /// The entries, checked.
        entries: CheckedEntries,
    },
    /// An [`Output::Request`] failed (timeout, closed stream, ...).
    RequestFailed {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// Why.
        error: String,
    },
    /// A peer sent bytes that are not a valid message.
    Malformed {
        /// The peer.
        peer: P,
        /// What was wrong.
        error: String,
    },
    /// A gossip announcement published by `peer`.
    Announce {
        /// The publisher.
        peer: P,
        /// The announcement.
        announce: Announce,
    },
    /// An [`Output::Announce`] reached nobody: tell connected peers directly.
    AnnounceFailed,
    /// A peer started listening to announcements: tell it what changed
    /// since the heads exchange, in case it missed an announcement.
    PeerSubscribed(P),
    /// The local log grew (append or ingest).
    LocalChanged,
    /// Stop pulling and serving a feed.
    Block(FeedId),
    /// Pull and serve a feed again.
    Unblock(FeedId),
    /// Exchange heads with a peer again and report [`SyncEvent::Idle`]
    /// when done, even if it was already in sync.
    Resync(P),
}

/// Something the driver must do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<P> {
    /// Send a request; report its answer with the same `tag`.
    Request {
        /// The peer.
        peer: P,
        /// Tag for [`Input::Response`] / [`Input::RequestFailed`].
        tag: u64,
        /// The request.
        request: Request,
    },
    /// Answer the request with this `id`.
    Respond {
        /// The peer.
        peer: P,
        /// The id from [`Input::Request`].
        id: u64,
        /// The answer.
        response: Response,
    },
    /// Publish a gossip announcement.
    Announce(Announce),
    /// The peer broke the protocol: disconnect it and keep it away.
    Ban {
        /// The peer.
        peer: P,
        /// Why, for the log.
        reason: String,
    },
    /// Disconnect the peer (too many failures), without a ban.
    Disconnect {
        /// The peer.
        peer: P,
        /// Why, for the log.
        reason: String,
    },
    /// Something to report.
    Event(SyncEvent<P>),
}

/// Counters of one peer session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries stored from this peer.
    pub pulled: u64,
    /// Entries sent to this peer (it may have had some already).
    pub served: u64,
    /// Distinct feeds pulled from or served to this peer.
    pub feeds: usize,
}

/// Progress reports of the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent<P> {
    /// Entries of a feed were stored from a peer.
    Progress {
        /// The peer.
        peer: P,
        /// The feed.
        feed: FeedId,
        /// How many.
        entries: u64,
    },
    /// Neither side misses anything the other announced.
    Idle {
        /// The peer.
        peer: P,
        /// The session's counters so far.
        stats: SyncStats,
    },
    /// A feed was found forked (or a proof of it was learned).
    ForkFound {
        /// The feed.
        feed: FeedId,
        /// The seq at which it forked.
        seq: u64,
        /// The peer it came from, if any.
        peer: Option<P>,
    },
}

/// What an outstanding request was for.
#[derive(Debug)]
enum Pending {
    Heads,
    Want(Want),
    ForkProofs(Vec<FeedId>),
}

/// Ranges of one feed being pulled from one peer.
#[derive(Debug, Default)]
struct Pull {
    /// Ranges not yet requested, in order.
    ranges: VecDeque<(u64, u64)>,
    /// Wants of this feed in flight.
    in_flight: usize,
}

#[derive(Debug, Default)]
struct Session {
    /// What the peer holds, as far as it told us.
    remote: HashMap<FeedId, (u64, EntryId)>,
    /// True once the peer sent heads with `more == false`.
    remote_complete: bool,
    /// The peer's `idle` flag from its newest heads message.
    remote_idle: bool,
    /// `serial` of the newest heads message received.
    recv_serial: u64,
    /// `serial` of the last heads message sent.
    sent_serial: u64,
    /// The seq of each feed as we last told the peer.
    told: HashMap<FeedId, u64>,
    told_forks: HashSet<FeedId>,
    told_idle: Option<bool>,
    heads_in_flight: bool,
    heads_pending: bool,
    /// Feeds to (re)consider pulling.
    todo: BTreeSet<FeedId>,
    /// Feeds we miss but another session is pulling.
    waiting: BTreeSet<FeedId>,
    pulls: BTreeMap<FeedId, Pull>,
    wants_in_flight: usize,
    /// Pages received (and checked) and not yet stored, by (feed, first
    /// seq).
    buffered: BTreeMap<(FeedId, u64), CheckedEntries>,
    buffered_bytes: usize,
    proofs_wanted: BTreeSet<FeedId>,
    proofs_in_flight: bool,
    /// Remote seqs known to agree with our chain.
    checked: HashMap<FeedId, u64>,
    idle: bool,
    synced: bool,
    failures: u32,
    stats: SyncStats,
    touched: HashSet<FeedId>,
}

impl Session {
    /// A pull is finished when nothing of it is left to request, in flight,
    /// or buffered waiting to be stored.
    fn pull_finished(&self, feed: &FeedId, pull: &Pull) -> bool {
        pull.ranges.is_empty()
            && pull.in_flight == 0
            && self
                .buffered
                .range((*feed, 0)..=(*feed, u64::MAX))
                .next()
                .is_none()
    }

    fn is_idle(&self) -> bool {
        self.remote_complete
            && self.todo.is_empty()
            && self.waiting.is_empty()
            && self.pulls.is_empty()
            && self.wants_in_flight == 0
            && self.buffered.is_empty()
            && self.proofs_wanted.is_empty()
            && !self.proofs_in_flight
    }

    fn touch(&mut self, feed: FeedId) {
        if self.touched.insert(feed) {
            self.stats.feeds = self.touched.len();
        }
    }
}

/// The sync state machine of one node. See the module docs for the flow.
///
/// Call [`Engine::handle`] for each input, then [`Engine::step`] (which
/// does the storing and scheduling), then send what
/// [`Engine::take_outputs`] returns. Call `step` again by
/// [`Engine::next_deadline`].
pub struct Engine<P: PeerKey> {
    db: Db,
    config: SyncConfig,
    blocked: HashSet<FeedId>,
    sessions: BTreeMap<P, Session>,
    /// Which session pulls which feed.
    claims: HashMap<FeedId, P>,
    tags: HashMap<u64, (P, Pending)>,
    next_tag: u64,
    /// Requests to serve, in arrival order.
    inbox: VecDeque<(P, u64, Request)>,
    /// Responses carrying fork proofs, to store.
    proof_inbox: VecDeque<(Option<P>, Vec<kappadb_core::ForkProof>)>,
    /// Peers banned since they last connected; their inputs are ignored.
    banned: HashSet<P>,
    announced: HashMap<FeedId, u64>,
    announced_forks: HashSet<FeedId>,
    /// Feeds with an entry over the payload limit: the first such seq.
    too_large: HashMap<FeedId, u64>,
    local_dirty: bool,
    announce_due: Option<Instant>,
    last_announce: Option<Instant>,
    out: Vec<Output<P>>,
}

impl<P: PeerKey> Debug for Engine<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("db", &self.db)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl<P: PeerKey> Engine<P> {
    /// An engine syncing `db`.
    pub fn new(db: Db, config: SyncConfig) -> Self {
        let announced = db.heads().into_iter().map(|(f, h)| (f, h.seq)).collect();
        let announced_forks = db
            .feeds()
            .into_iter()
            .filter(|f| f.fork.is_some())
            .map(|f| f.feed)
            .collect();
        Self {
            db,
            config,
            blocked: HashSet::new(),
            sessions: BTreeMap::new(),
            claims: HashMap::new(),
            tags: HashMap::new(),
            next_tag: 1,
            inbox: VecDeque::new(),
            proof_inbox: VecDeque::new(),
            banned: HashSet::new(),
            announced,
            announced_forks,
            too_large: HashMap::new(),
            local_dirty: false,
            announce_due: None,
            last_announce: None,
            out: Vec::new(),
        }
    }

    /// Feeds neither pulled nor served, from the start.
    pub fn with_blocked(mut self, feeds: impl IntoIterator<Item = FeedId>) -> Self {
        self.blocked.extend(feeds);
        self
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The peers with a session.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.sessions.keys()
    }

    /// True if neither side misses anything the other announced.
    pub fn is_synced(&self, peer: &P) -> bool {
        self.sessions.get(peer).is_some_and(|s| s.synced)
    }

    /// The counters of a peer's session.
    pub fn stats(&self, peer: &P) -> Option<SyncStats> {
        self.sessions.get(peer).map(|s| s.stats)
    }

    /// Everything the driver must do, in order.
    pub fn take_outputs(&mut self) -> Vec<Output<P>> {
        std::mem::take(&mut self.out)
    }

    /// When [`Engine::step`] must run again even without input.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.announce_due
    }

    /// Take one input. Cheap; the work happens in [`Engine::step`].
    pub fn handle(&mut self, input: Input<P>) {
        match input {
            Input::Connected(peer) => {
                self.banned.remove(&peer);
                self.sessions.entry(peer).or_insert_with(|| Session {
                    heads_pending: true,
                    ..Session::default()
                });
            }
            Input::Disconnected(peer) => self.end_session(&peer),
            Input::Request { peer, id, request } => {
                if self.banned.contains(&peer) {
                    return;
                }
                self.session_mut(peer);
                self.inbox.push_back((peer, id, request));
            }
            Input::Response {
                peer,
                tag,
                response,
            } => self.on_response(peer, tag, response),
            Input::CheckedPage {
                peer,
                tag,
                feed,
                entries,
            } => self.on_checked_page(peer, tag, feed, entries),
            Input::RequestFailed { peer, tag, error } => self.on_failure(peer, tag, &error),
            Input::Malformed { peer, error } => {
                self.ban(peer, format!("sent a malformed message: {error}"));
            }
            Input::Announce { peer, announce } => self.on_announce(peer, announce),
            Input::AnnounceFailed => {
                for s in self.sessions.values_mut() {
                    s.heads_pending = true;
                }
            }
            Input::PeerSubscribed(peer) => {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.heads_pending = true;
                }
            }
            Input::LocalChanged => self.local_dirty = true,
            Input::Block(feed) => {
                self.blocked.insert(feed);
                self.cancel_feed_everywhere(&feed);
                for s in self.sessions.values_mut() {
                    s.todo.remove(&feed);
                    s.waiting.remove(&feed);
                    s.proofs_wanted.remove(&feed);
                }
            }
            Input::Unblock(feed) => {
                self.blocked.remove(&feed);
                for s in self.sessions.values_mut() {
                    if s.remote.contains_key(&feed) {
                        s.todo.insert(feed);
                    }
                    s.told.remove(&feed);
                }
                self.announced.remove(&feed);
                self.local_dirty = true;
            }
            Input::Resync(peer) => {
                let s = self.session_mut(peer);
                s.told.clear();
                s.told_forks.clear();
                s.told_idle = None;
                s.heads_pending = true;
                s.remote_idle = false;
                s.synced = false;
                s.checked.clear();
            }
        }
    }

    /// Serve requests, store received pages and proofs, schedule new
    /// requests, report idleness and announce. Errors are the store's and
    /// stop the engine; a peer's faults become [`Output::Ban`].
    pub fn step(&mut self, now: Instant) -> Result<(), StoreError> {
        while let Some((peer, id, request)) = self.inbox.pop_front() {
            self.serve(peer, id, request)?;
        }
        while let Some((peer, proofs)) = self.proof_inbox.pop_front() {
            self.store_proofs(peer, proofs)?;
        }
        let peers: Vec<P> = self.sessions.keys().copied().collect();
        for peer in &peers {
            self.ingest_ready(*peer)?;
        }
        for peer in &peers {
            self.finish_pulls(*peer);
        }
        // Scheduling can free claims other sessions wait for, so it runs
        // until nothing changes (bounded by the number of sessions).
        for _ in 0..=peers.len() {
            let mut released = false;
            for peer in &peers {
                released |= self.schedule(*peer)?;
            }
            if !released {
                break;
            }
        }
        for peer in &peers {
            self.report_idle(*peer);
        }
        self.maybe_announce(now);
        Ok(())
    }

    fn session_mut(&mut self, peer: P) -> &mut Session {
        self.sessions.entry(peer).or_insert_with(|| Session {
            heads_pending: true,
            ..Session::default()
        })
    }

    fn tag(&mut self, peer: P, pending: Pending) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.tags.insert(tag, (peer, pending));
        tag
    }

    fn ban(&mut self, peer: P, reason: String) {
        if self.banned.contains(&peer) {
            return;
        }
        self.end_session(&peer);
        self.banned.insert(peer);
        self.out.push(Output::Ban { peer, reason });
    }

    fn end_session(&mut self, peer: &P) {
        let Some(session) = self.sessions.remove(peer) else {
            return;
        };
        self.tags.retain(|_, (p, _)| p != peer);
        self.inbox.retain(|(p, _, _)| p != peer);
        for feed in session.pulls.keys() {
            self.release(feed, peer);
        }
    }

    /// Give up a claim and let waiting sessions reconsider the feed.
    fn release(&mut self, feed: &FeedId, owner: &P) {
        if self.claims.get(feed) == Some(owner) {
            self.claims.remove(feed);
            for s in self.sessions.values_mut() {
                if s.waiting.remove(feed) {
                    s.todo.insert(*feed);
                }
            }
        }
    }

    fn cancel_pull(&mut self, peer: &P, feed: &FeedId) {
        if let Some(s) = self.sessions.get_mut(peer) {
            if let Some(pull) = s.pulls.remove(feed) {
                s.wants_in_flight -= pull.in_flight;
                // The tags stay; their pages are dropped on arrival.
                for tag in self
                    .tags
                    .iter()
                    .filter(|(_, (p, pend))| {
                        p == peer && matches!(pend, Pending::Want(w) if w.feed == *feed)
                    })
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                {
                    self.tags.insert(
                        tag,
                        (
                            *peer,
                            Pending::Want(Want {
                                feed: *feed,
                                from_seq: 0,
                                to_seq: 0,
                            }),
                        ),
                    );
                }
            }
            let keys: Vec<(FeedId, u64)> = s
                .buffered
                .range((*feed, 0)..=(*feed, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(entries) = s.buffered.remove(&k) {
                    s.buffered_bytes -= wire_size(&entries);
                }
            }
        }
        self.release(feed, peer);
    }

    fn cancel_feed_everywhere(&mut self, feed: &FeedId) {
        let peers: Vec<P> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.cancel_pull(&peer, feed);
        }
    }

    /// Take in heads a peer told us (in a heads message or an
    /// announcement).
    fn apply_heads(&mut self, peer: P, heads: &[HeadInfo], forks: &[(FeedId, u64)]) {
        let blocked = &self.blocked;
        let db = &self.db;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        for h in heads.iter().take(MAX_HEADS_PER_MESSAGE) {
            if h.seq == 0 || blocked.contains(&h.feed) {
                continue;
            }
            let changed = match s.remote.get(&h.feed) {
                Some((seq, id)) => h.seq > *seq || (h.seq == *seq && h.id != *id),
                None => true,
            };
            if changed {
                s.remote.insert(h.feed, (h.seq, h.id));
                s.todo.insert(h.feed);
            }
        }
        for (feed, seq) in forks.iter().take(MAX_FORK_PROOFS_PER_MESSAGE) {
            if blocked.contains(feed) {
                continue;
            }
            if db.fork(feed).is_none_or(|f| f.seq > *seq) {
                s.proofs_wanted.insert(*feed);
            }
        }
    }

    /// Take in a heads message. Heads travel in requests only; a
    /// response carries the responder's idle flag.
    fn apply_heads_message(&mut self, peer: P, heads: &Heads, is_request: bool) {
        self.apply_heads(peer, &heads.heads, &heads.forks);
        tracing::trace!(
            ?peer,
            n_heads = heads.heads.len(),
            idle = heads.idle,
            more = heads.more,
            serial = heads.serial,
            "heads received"
        );
        if let Some(s) = self.sessions.get_mut(&peer) {
            if is_request && !heads.more {
                s.remote_complete = true;
            }
            // Only the newest message says whether the peer is idle.
            if heads.serial > s.recv_serial {
                s.recv_serial = heads.serial;
                s.remote_idle = heads.idle && !heads.more;
            }
        }
    }

    /// The answer to a heads request: our idle flag, no heads. Heads we
    /// have not told yet follow in a request of our own, so that every
    /// heads message is answered and an idle flag is only trusted once
    /// it is newer than the answer to our last heads.
    fn idle_flag_for(&mut self, peer: P) -> Heads {
        let untold = {
            let Some(s) = self.sessions.get(&peer) else {
                return Heads::default();
            };
            self.db.feeds().into_iter().any(|info| {
                !self.blocked.contains(&info.feed)
                    && (s.told.get(&info.feed) != Some(&info.head.seq)
                        || (info.fork.is_some() && !s.told_forks.contains(&info.feed)))
            })
        };
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Heads::default();
        };
        s.idle = s.is_idle();
        s.sent_serial += 1;
        s.told_idle = Some(s.idle);
        if untold {
            s.heads_pending = true;
        }
        tracing::trace!(
            ?peer,
            idle = s.idle,
            serial = s.sent_serial,
            "idle flag sent"
        );
        Heads {
            heads: Vec::new(),
            forks: Vec::new(),
            idle: s.idle,
            more: false,
            serial: s.sent_serial,
        }
    }

    /// Our heads that changed since we last told `peer`, as a request.
    fn heads_for(&mut self, peer: P) -> Heads {
        let feeds = self.db.feeds();
        let blocked = &self.blocked;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Heads::default();
        };
        let mut msg = Heads::default();
        for info in feeds {
            if blocked.contains(&info.feed) {
                continue;
            }
            if let Some(fork) = info.fork
                && !s.told_forks.contains(&info.feed)
            {
                if msg.forks.len() < MAX_FORK_PROOFS_PER_MESSAGE {
                    s.told_forks.insert(info.feed);
                    msg.forks.push((info.feed, fork.seq));
                } else {
                    msg.more = true;
                }
            }
            if s.told.get(&info.feed) == Some(&info.head.seq) {
                continue;
            }
            if msg.heads.len() >= MAX_HEADS_PER_MESSAGE {
                msg.more = true;
                continue;
            }
            s.told.insert(info.feed, info.head.seq);
            msg.heads.push(HeadInfo {
                feed: info.feed,
                seq: info.head.seq,
                id: info.head.id,
            });
        }
        s.idle = s.is_idle();
        msg.idle = s.idle && !msg.more;
        s.sent_serial += 1;
        msg.serial = s.sent_serial;
        tracing::trace!(
            ?peer,
            n_heads = msg.heads.len(),
            idle = msg.idle,
            more = msg.more,
            serial = msg.serial,
            "heads sent"
        );
        s.told_idle = Some(msg.idle);
        s.heads_pending = msg.more;
        msg
    }

    fn serve(&mut self, peer: P, id: u64, request: Request) -> Result<(), StoreError> {
        let response = match request {
            Request::Heads(heads) => {
                self.apply_heads_message(peer, &heads, true);
                // Answer with what we hold and whether we miss anything
                // of theirs, which needs their heads considered first.
                self.schedule(peer)?;
                Response::Heads(self.idle_flag_for(peer))
            }
            Request::Want(want) => Response::Page(self.page_for(peer, want)),
            Request::ForkProofs(feeds) => {
                let wanted: HashSet<FeedId> = feeds
                    .into_iter()
                    .take(MAX_FORK_PROOFS_PER_MESSAGE)
                    .filter(|f| !self.blocked.contains(f))
                    .collect();
                let proofs = if wanted.is_empty() {
                    Vec::new()
                } else {
                    self.db
                        .fork_proofs()?
                        .into_iter()
                        .filter(|p| wanted.contains(&p.author()))
                        .collect()
                };
                Response::ForkProofs(proofs)
            }
        };
        self.out.push(Output::Respond { peer, id, response });
        Ok(())
    }

    fn page_for(&mut self, peer: P, want: Want) -> Page {
        let mut page = Page {
            feed: want.feed,
            entries: Vec::new(),
        };
        if want.is_empty() || self.blocked.contains(&want.feed) {
            return page;
        }
        let limits = &self.config.limits;
        let to = want.to_seq.min(
            want.from_seq
                .saturating_add(limits.page_entries.saturating_sub(1)),
        );
        let mut bytes = 0;
        for item in self.db.feed_range(&want.feed, want.from_seq, to) {
            match item {
                Ok(entry) => {
                    let size = entry_wire_size(&entry);
                    let fits = page.entries.is_empty()
                        || (bytes + size <= limits.page_bytes
                            && bytes + size + 64 * 1024 <= limits.max_message_bytes);
                    if !fits {
                        break;
                    }
                    bytes += size;
                    page.entries.push(entry);
                }
                Err(e) => {
                    tracing::warn!(feed = %want.feed.fmt_short(), error = %e, "cannot read entries to serve");
                    break;
                }
            }
        }
        if let Some(s) = self.sessions.get_mut(&peer)
            && !page.entries.is_empty()
        {
            s.stats.served += page.entries.len() as u64;
            s.touch(want.feed);
        }
        page
    }

    /// The request `tag` was answered: what it asked for, if it is still
    /// awaited from `peer`.
    fn answered(&mut self, peer: P, tag: u64) -> Option<Pending> {
        let (owner, pending) = self.tags.remove(&tag)?;
        if owner != peer || self.banned.contains(&peer) {
            return None;
        }
        if let Some(s) = self.sessions.get_mut(&peer) {
            s.failures = 0;
        }
        Some(pending)
    }

    fn on_checked_page(&mut self, peer: P, tag: u64, feed: FeedId, entries: CheckedEntries) {
        let Some(pending) = self.answered(peer, tag) else {
            return;
        };
        match pending {
            Pending::Want(want) => self.on_page(peer, want, feed, PageEntries::Checked(entries)),
            other => {
                let page = Page {
                    feed,
                    entries: entries.into_entries(),
                };
                self.on_answer(peer, other, Response::Page(page));
            }
        }
    }

    fn on_response(&mut self, peer: P, tag: u64, response: Response) {
        let Some(pending) = self.answered(peer, tag) else {
            return;
        };
        self.on_answer(peer, pending, response);
    }

    fn on_answer(&mut self, peer: P, pending: Pending, response: Response) {
        match (pending, response) {
            (Pending::Heads, Response::Heads(heads)) => {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.heads_in_flight = false;
                }
                self.apply_heads_message(peer, &heads, false);
            }
            (Pending::Want(want), Response::Page(page)) => {
                self.on_page(peer, want, page.feed, PageEntries::Unchecked(page.entries));
            }
            (Pending::ForkProofs(feeds), Response::ForkProofs(proofs)) => {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.proofs_in_flight = false;
                }
                let asked: HashSet<FeedId> = feeds.into_iter().collect();
                if proofs.len() > asked.len() || proofs.iter().any(|p| !asked.contains(&p.author()))
                {
                    self.ban(peer, "sent fork proofs that were not asked for".into());
                    return;
                }
                self.proof_inbox.push_back((Some(peer), proofs));
            }
            (pending, Response::Refused(reason)) => {
                tracing::debug!(?peer, %reason, "request refused");
                self.on_failure_pending(peer, pending);
            }
            (_, other) => {
                let kind = match other {
                    Response::Heads(_) => "heads",
                    Response::Page(_) => "a page",
                    Response::ForkProofs(_) => "fork proofs",
                    Response::Refused(_) => "a refusal",
                };
                self.ban(
                    peer,
                    format!("answered a request with {kind} it did not ask for"),
                );
            }
        }
    }

    fn on_page(&mut self, peer: P, want: Want, feed: FeedId, entries: PageEntries) {
        if want.from_seq == 0 {
            // The pull was cancelled while this page was in flight.
            return;
        }
        {
            let Some(s) = self.sessions.get_mut(&peer) else {
                return;
            };
            let Some(pull) = s.pulls.get_mut(&want.feed) else {
                return;
            };
            pull.in_flight -= 1;
            s.wants_in_flight -= 1;
        }
        let list = match &entries {
            PageEntries::Checked(c) => c.entries(),
            PageEntries::Unchecked(v) => v.as_slice(),
        };
        if let Err(reason) = check_entries(&want, feed, list, &self.config.limits) {
            self.ban(peer, reason);
            return;
        }
        let n = list.len() as u64;
        if n == 0 {
            // The peer does not hold what it announced (or blocked it).
            tracing::debug!(?peer, feed = %want.feed.fmt_short(), from = want.from_seq, "peer has no entries for a wanted range");
            if let Some(r) = self
                .sessions
                .get_mut(&peer)
                .and_then(|s| s.remote.get_mut(&want.feed))
            {
                r.0 = r.0.min(want.from_seq.saturating_sub(1));
            }
            self.cancel_pull(&peer, &want.feed);
            return;
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        if n < want.len()
            && let Some(pull) = s.pulls.get_mut(&want.feed)
        {
            pull.ranges.push_front((want.from_seq + n, want.to_seq));
        }
        s.buffered_bytes += list.iter().map(entry_wire_size).sum::<usize>();
        let checked = match entries {
            PageEntries::Checked(c) => c,
            PageEntries::Unchecked(v) => CheckedEntries::new(v, self.db.config().max_payload_bytes),
        };
        s.buffered.insert((want.feed, want.from_seq), checked);
    }

    fn on_failure(&mut self, peer: P, tag: u64, error: &str) {
        let Some((owner, pending)) = self.tags.remove(&tag) else {
            return;
        };
        if owner != peer {
            return;
        }
        tracing::debug!(?peer, %error, "request failed");
        self.on_failure_pending(peer, pending);
    }

    fn on_failure_pending(&mut self, peer: P, pending: Pending) {
        let max_failures = self.config.max_failures;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        s.failures += 1;
        match pending {
            Pending::Heads => {
                s.heads_in_flight = false;
                // We do not know what arrived: tell everything again.
                s.told.clear();
                s.told_forks.clear();
                s.heads_pending = true;
            }
            Pending::Want(want) => {
                if want.from_seq != 0
                    && let Some(pull) = s.pulls.get_mut(&want.feed)
                {
                    pull.in_flight -= 1;
                    s.wants_in_flight -= 1;
                    pull.ranges.push_front((want.from_seq, want.to_seq));
                }
            }
            Pending::ForkProofs(feeds) => {
                s.proofs_in_flight = false;
                s.proofs_wanted.extend(feeds);
            }
        }
        if s.failures >= max_failures {
            let reason = format!("{} requests failed in a row", s.failures);
            self.end_session(&peer);
            self.out.push(Output::Disconnect { peer, reason });
        }
    }

    fn on_announce(&mut self, peer: P, announce: Announce) {
        if self.banned.contains(&peer) {
            return;
        }
        if !announce.forks.is_empty() {
            let proofs = announce
                .forks
                .into_iter()
                .take(MAX_FORK_PROOFS_PER_MESSAGE)
                .filter(|p| !self.blocked.contains(&p.author()))
                .collect();
            self.proof_inbox.push_back((None, proofs));
        }
        // An announcement says nothing about completeness or idleness.
        self.apply_heads(peer, &announce.heads, &[]);
    }

    fn store_proofs(
        &mut self,
        from: Option<P>,
        proofs: Vec<kappadb_core::ForkProof>,
    ) -> Result<(), StoreError> {
        for proof in proofs {
            let (feed, seq) = (proof.author(), proof.seq());
            match self.db.ingest_fork_proof(proof) {
                Ok(true) => {
                    tracing::warn!(feed = %feed.fmt_short(), seq, "feed is forked");
                    self.out.push(Output::Event(SyncEvent::ForkFound {
                        feed,
                        seq,
                        peer: from,
                    }));
                    self.local_dirty = true;
                    self.cancel_feed_everywhere(&feed);
                }
                Ok(false) => {}
                Err(StoreError::Entry(e)) => match from {
                    Some(peer) => {
                        self.ban(peer, format!("sent an invalid fork proof: {e}"));
                        return Ok(());
                    }
                    None => {
                        tracing::warn!(error = %e, "ignoring an invalid fork proof from gossip")
                    }
                },
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Store the pages of `peer` that follow the local heads.
    fn ingest_ready(&mut self, peer: P) -> Result<(), StoreError> {
        loop {
            let Some(s) = self.sessions.get_mut(&peer) else {
                return Ok(());
            };
            if s.buffered.is_empty() {
                return Ok(());
            }
            let mut sim: HashMap<FeedId, u64> = HashMap::new();
            let mut before: HashMap<FeedId, u64> = HashMap::new();
            let mut take = Vec::new();
            let mut n_entries = 0;
            for ((feed, from), entries) in &s.buffered {
                let head = *sim.entry(*feed).or_insert_with(|| {
                    let seq = self.db.head(feed).map_or(0, |h| h.seq);
                    before.insert(*feed, seq);
                    seq
                });
                if *from > head + 1 {
                    continue;
                }
                let last = entries.entries().last().map_or(head, |e| e.header.seq);
                sim.insert(*feed, head.max(last));
                take.push((*feed, *from));
                n_entries += entries.len();
                if n_entries >= self.config.max_ingest_entries {
                    break;
                }
            }
            if take.is_empty() {
                return Ok(());
            }
            let mut batch = CheckedEntries::default();
            let mut capped: Vec<FeedId> = Vec::new();
            let max_payload = self.db.config().max_payload_bytes;
            for key in &take {
                if let Some(mut entries) = s.buffered.remove(key) {
                    s.buffered_bytes -= wire_size(&entries);
                    if self.blocked.contains(&key.0) {
                        continue;
                    }
                    // An entry over this database's payload limit is a
                    // difference in settings, not a fault of the peer:
                    // store up to it and stop pulling the feed there.
                    if let Some(i) = entries
                        .entries()
                        .iter()
                        .position(|e| e.header.payload_len > max_payload)
                    {
                        let seq = entries.entries()[i].header.seq;
                        tracing::warn!(
                            feed = %key.0.fmt_short(),
                            seq,
                            limit = max_payload,
                            "not syncing a feed past an entry over this database's payload limit"
                        );
                        let at = self.too_large.entry(key.0).or_insert(seq);
                        *at = (*at).min(seq);
                        entries.truncate(i);
                        capped.push(key.0);
                    }
                    batch.append(entries);
                }
            }
            for feed in &capped {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    let keys: Vec<(FeedId, u64)> = s
                        .buffered
                        .range((*feed, 0)..=(*feed, u64::MAX))
                        .map(|(k, _)| *k)
                        .collect();
                    for k in keys {
                        if let Some(entries) = s.buffered.remove(&k) {
                            s.buffered_bytes -= wire_size(&entries);
                        }
                    }
                }
            }
            for feed in &capped {
                self.cancel_feed_everywhere(feed);
            }
            if batch.is_empty() {
                continue;
            }
            let report = self.db.ingest_checked(batch)?;
            if report.dropped {
                let why = report
                    .rejected
                    .iter()
                    .map(|(_, e)| e)
                    .find(|e| !e.is_policy())
                    .map_or_else(|| "invalid entries".to_string(), ToString::to_string);
                self.ban(peer, format!("sent a page that failed validation: {why}"));
                return Ok(());
            }
            let Some(s) = self.sessions.get_mut(&peer) else {
                return Ok(());
            };
            s.stats.pulled += report.accepted as u64;
            for (feed, seq) in &report.new_heads {
                let old = before.get(feed).copied().unwrap_or(0);
                s.touch(*feed);
                self.out.push(Output::Event(SyncEvent::Progress {
                    peer,
                    feed: *feed,
                    entries: seq.saturating_sub(old),
                }));
            }
            if report.accepted > 0 {
                self.local_dirty = true;
            }
            let mut refused: BTreeSet<FeedId> = BTreeSet::new();
            for (_, e) in &report.rejected {
                if let EntryError::FeedForked { author, .. } = e {
                    refused.insert(*author);
                }
            }
            for proof in &report.forks {
                tracing::warn!(feed = %proof.author().fmt_short(), seq = proof.seq(), ?peer, "feed is forked");
                self.out.push(Output::Event(SyncEvent::ForkFound {
                    feed: proof.author(),
                    seq: proof.seq(),
                    peer: Some(peer),
                }));
                self.local_dirty = true;
                refused.insert(proof.author());
            }
            for feed in refused {
                self.cancel_feed_everywhere(&feed);
            }
        }
    }

    /// Drop finished pulls and release their claims.
    fn finish_pulls(&mut self, peer: P) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let done: Vec<FeedId> = s
            .pulls
            .iter()
            .filter(|(feed, pull)| s.pull_finished(feed, pull))
            .map(|(feed, _)| *feed)
            .collect();
        for feed in done {
            s.pulls.remove(&feed);
            // What we hold now agrees with the peer up to its head (or the
            // page proved a fork); do not probe that seq again.
            let local = self.db.head(&feed).map_or(0, |h| h.seq);
            if let Some((r_seq, _)) = s.remote.get(&feed)
                && local >= *r_seq
            {
                s.checked.insert(feed, *r_seq);
            }
            // The peer may have announced more meanwhile.
            s.todo.insert(feed);
        }
        let claimed: Vec<FeedId> = self
            .claims
            .iter()
            .filter(|(f, p)| **p == peer && !s.pulls.contains_key(*f))
            .map(|(f, _)| *f)
            .collect();
        for feed in claimed {
            self.release(&feed, &peer);
        }
    }

    /// Decide what to pull from `peer` and send requests. Returns true if
    /// a claim was released (other sessions may want it).
    fn schedule(&mut self, peer: P) -> Result<bool, StoreError> {
        let mut released = false;
        let Some(mut s) = self.sessions.remove(&peer) else {
            return Ok(false);
        };
        // Consider announced feeds.
        while let Some(feed) = s.todo.pop_first() {
            if s.pulls.contains_key(&feed) {
                continue;
            }
            let Some(range) = self.needed(&mut s, &feed)? else {
                continue;
            };
            match self.claims.get(&feed) {
                Some(owner) if *owner != peer => {
                    s.waiting.insert(feed);
                }
                _ => {
                    self.claims.insert(feed, peer);
                    s.pulls.insert(
                        feed,
                        Pull {
                            ranges: VecDeque::from([range]),
                            in_flight: 0,
                        },
                    );
                }
            }
        }
        // Drop pulls of feeds that became blocked or were emptied.
        let empty: Vec<FeedId> = s
            .pulls
            .iter()
            .filter(|(feed, pull)| s.pull_finished(feed, pull))
            .map(|(f, _)| *f)
            .collect();
        for feed in empty {
            s.pulls.remove(&feed);
            if self.claims.get(&feed) == Some(&peer) {
                self.claims.remove(&feed);
                released = true;
            }
        }
        // Send wants, feed by feed, within the per-peer limits.
        let limits = self.config.limits.clone();
        'wants: while s.wants_in_flight < self.config.max_in_flight
            && s.buffered_bytes
                .saturating_add((s.wants_in_flight + 1).saturating_mul(limits.page_bytes))
                <= self.config.max_buffered_bytes.max(limits.page_bytes)
        {
            for (feed, pull) in s.pulls.iter_mut() {
                let Some((from, to)) = pull.ranges.pop_front() else {
                    continue;
                };
                let end = to.min(from.saturating_add(limits.page_entries - 1));
                if end < to {
                    pull.ranges.push_front((end + 1, to));
                }
                let want = Want {
                    feed: *feed,
                    from_seq: from,
                    to_seq: end,
                };
                pull.in_flight += 1;
                s.wants_in_flight += 1;
                let tag = self.next_tag;
                self.next_tag += 1;
                self.tags.insert(tag, (peer, Pending::Want(want)));
                self.out.push(Output::Request {
                    peer,
                    tag,
                    request: Request::Want(want),
                });
                continue 'wants;
            }
            break;
        }
        if !s.proofs_in_flight && !s.proofs_wanted.is_empty() {
            let feeds: Vec<FeedId> = std::iter::from_fn(|| s.proofs_wanted.pop_first())
                .take(MAX_FORK_PROOFS_PER_MESSAGE)
                .collect();
            s.proofs_in_flight = true;
            let tag = self.tag(peer, Pending::ForkProofs(feeds.clone()));
            self.out.push(Output::Request {
                peer,
                tag,
                request: Request::ForkProofs(feeds),
            });
        }
        let idle = s.is_idle();
        s.idle = idle;
        if s.told_idle != Some(idle) {
            s.heads_pending = true;
        }
        self.sessions.insert(peer, s);
        if self
            .sessions
            .get(&peer)
            .is_some_and(|s| s.heads_pending && !s.heads_in_flight)
        {
            let heads = self.heads_for(peer);
            let tag = self.tag(peer, Pending::Heads);
            if let Some(s) = self.sessions.get_mut(&peer) {
                s.heads_in_flight = true;
            }
            self.out.push(Output::Request {
                peer,
                tag,
                request: Request::Heads(heads),
            });
        }
        Ok(released)
    }

    /// The range of `feed` to pull from the session's peer, if any.
    fn needed(&self, s: &mut Session, feed: &FeedId) -> Result<Option<(u64, u64)>, StoreError> {
        if self.blocked.contains(feed) {
            return Ok(None);
        }
        let Some(&(r_seq, r_id)) = s.remote.get(feed) else {
            return Ok(None);
        };
        let local = self.db.head(feed);
        let l_seq = local.map_or(0, |h| h.seq);
        // Nothing at or past a fork point, or past an entry over our
        // payload limit, can be stored.
        let forked = self.db.fork(feed).is_some();
        let cap = [
            self.db.fork(feed).map(|f| f.seq),
            self.too_large.get(feed).copied(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(u64::MAX, |seq| seq.saturating_sub(1));
        if r_seq > l_seq {
            if l_seq < cap {
                // Start at our head: one entry of overlap finds a fork.
                return Ok(Some((l_seq.max(1), r_seq.min(cap))));
            }
            return Ok(None);
        }
        if forked {
            return Ok(None);
        }
        if s.checked.get(feed) == Some(&r_seq) {
            return Ok(None);
        }
        let ours = match local {
            Some(h) if h.seq == r_seq => Some(h.id),
            _ => self.db.get(feed, r_seq)?.map(|e| e.id()),
        };
        if ours == Some(r_id) {
            s.checked.insert(*feed, r_seq);
            Ok(None)
        } else {
            // Same seq, another entry: fetch it to prove the fork.
            Ok(Some((r_seq, r_seq)))
        }
    }

    fn report_idle(&mut self, peer: P) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        s.idle = s.is_idle();
        let synced = s.idle && s.remote_idle && !s.heads_in_flight && !s.heads_pending;
        if synced && !s.synced {
            tracing::debug!(?peer, stats = ?s.stats, "in sync");
            self.out.push(Output::Event(SyncEvent::Idle {
                peer,
                stats: s.stats,
            }));
        }
        s.synced = synced;
    }

    fn maybe_announce(&mut self, now: Instant) {
        if !self.local_dirty {
            return;
        }
        if let Some(last) = self.last_announce {
            let due = last + self.config.announce_interval;
            if now < due {
                self.announce_due = Some(due);
                return;
            }
        }
        self.local_dirty = false;
        self.announce_due = None;
        self.last_announce = Some(now);
        let mut heads = Vec::new();
        let mut forked = Vec::new();
        for info in self.db.feeds() {
            if self.blocked.contains(&info.feed) {
                continue;
            }
            if info.fork.is_some() && self.announced_forks.insert(info.feed) {
                forked.push(info.feed);
            }
            if self.announced.get(&info.feed) != Some(&info.head.seq) {
                self.announced.insert(info.feed, info.head.seq);
                heads.push(HeadInfo {
                    feed: info.feed,
                    seq: info.head.seq,
                    id: info.head.id,
                });
            }
        }
        let mut forks = Vec::new();
        if !forked.is_empty() {
            match self.db.fork_proofs() {
                Ok(proofs) => {
                    forks = proofs
                        .into_iter()
                        .filter(|p| forked.contains(&p.author()))
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "cannot read fork proofs to announce"),
            }
        }
        let mut heads = heads.into_iter().peekable();
        let mut forks = forks.into_iter().peekable();
        while heads.peek().is_some() || forks.peek().is_some() {
            let announce = Announce {
                heads: heads.by_ref().take(MAX_HEADS_PER_MESSAGE / 4).collect(),
                forks: forks.by_ref().take(16).collect(),
            };
            self.out.push(Output::Announce(announce));
        }
    }
}

/// Check a page against the want it answers: the rules a page must meet
/// before it is offered to [`Db::ingest_page`].
///
/// - it names the wanted feed, and every entry's author is that feed;
/// - seqs are consecutive from `from_seq` and end at or before `to_seq`;
/// - at most [`Limits::page_entries`] entries;
/// - more than one entry only within [`Limits::page_bytes`] (by
///   [`entry_wire_size`]).
pub fn check_page(want: &Want, page: &Page, limits: &Limits) -> Result<(), String> {
    check_entries(want, page.feed, &page.entries, limits)
}

/// [`check_page`] for a page taken apart.
fn check_entries(
    want: &Want,
    feed: FeedId,
    entries: &[Entry],
    limits: &Limits,
) -> Result<(), String> {
    if feed != want.feed {
        return Err(format!(
            "sent a page of feed {} for feed {}",
            feed.fmt_short(),
            want.feed.fmt_short()
        ));
    }
    let n = entries.len() as u64;
    if n > want.len() || n > limits.page_entries {
        return Err(format!(
            "sent a page of {n} entries for a want of {}",
            want.len().min(limits.page_entries)
        ));
    }
    if n > 1 {
        let bytes: usize = entries.iter().map(entry_wire_size).sum();
        if bytes > limits.page_bytes {
            return Err(format!(
                "sent a page of {bytes} bytes (limit {})",
                limits.page_bytes
            ));
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if e.header.author != want.feed {
            return Err(format!(
                "sent an entry of feed {} in a page of feed {}",
                e.header.author.fmt_short(),
                want.feed.fmt_short()
            ));
        }
        let expected = want.from_seq + i as u64;
        if e.header.seq != expected {
            return Err(format!(
                "sent seq {} where seq {expected} was expected",
                e.header.seq
            ));
        }
    }
    Ok(())
}

/// A received page's entries, checked by the driver or not yet.
enum PageEntries {
    Checked(CheckedEntries),
    Unchecked(Vec<Entry>),
}

/// Bytes a buffered page counts for.
fn wire_size(entries: &CheckedEntries) -> usize {
    entries.entries().iter().map(entry_wire_size).sum()
}
