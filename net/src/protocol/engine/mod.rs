//! The sync engine: every peer session of one node, as a state machine
//! driven by [`Input`]s and answering with [`Output`]s. It knows nothing of
//! libp2p; the node feeds it swarm events, tests feed it channels. It does
//! no disk I/O of its own: everything it reads and stores goes through a
//! [`SyncStore`].
//!
//! Flow with one peer:
//!
//! 1. On [`Input::Connected`] the side with the smaller peer key starts a
//!    heads reconciliation ([`Request::Reconcile`], see
//!    [`super::reconcile`]): a few rounds after which each side knows the
//!    other's heads that differ from its own, at a cost that follows the
//!    difference. A side that does not reconcile (an older peer, or
//!    [`SyncConfig::reconcile`] off) sends [`Request::Heads`] with
//!    everything it holds instead, and the other side answers in kind.
//!    From then on heads travel as [`Request::Heads`] with what changed;
//!    the answer to a heads request is the responder's idle flag (an empty
//!    [`Heads`]).
//! 2. Each side works out what it misses and pulls it with
//!    [`Request::Want`], at most [`SyncConfig::max_in_flight`] pages in
//!    flight and [`SyncConfig::max_buffered_bytes`] buffered per peer. A
//!    feed is pulled from one peer at a time (a claim), so pages of a feed
//!    arrive in order and nothing is fetched twice.
//! 3. The driver checks each page's entries ([`receive`]: signatures and
//!    payloads, the costly part, perhaps on other threads) and hands it
//!    over as [`Input::Page`]. The engine checks it against its request
//!    ([`check_page`]: feed, consecutive seqs, counts and bytes) and stores
//!    it with [`SyncStore::ingest_checked`], all or nothing. A page that
//!    breaks a rule gets the peer banned ([`Output::Ban`], with a
//!    [`SyncError`]) and nothing of it is stored.
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
//!
//! The engine keeps no ban list: after [`Output::Ban`] it ends the
//! session and ignores the peer until the driver reports it connected
//! again; keeping it away meanwhile is the driver's job.
//!
//! Code map: `session.rs` (session bookkeeping and heads), `exchange.rs`
//! (a connection's first heads exchange: reconciliation or plain), `serve.rs`
//! (answering requests, announcing), `pull.rs` (pulling, scheduling,
//! storing), `check.rs` (page checks and what a driver checks before
//! handing answers over).

mod check;
mod exchange;
mod pull;
mod serve;
mod session;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use kappadb_core::{CheckedEntries, Db, EntryError, FeedId, ForkProof, StoreError};

pub use self::check::{SyncError, check_page, check_proofs, receive, receive_announce};
use self::session::{Exchange, Session};
use super::follow::Follow;
use super::store::SyncStore;
use super::wire::{HeadInfo, Heads, Limits, Request, Response, Want};

/// What names a peer: a libp2p `PeerId` in the node, anything small in
/// tests.
pub trait PeerKey: Copy + Ord + Hash + Debug + Send + 'static {}

impl<T: Copy + Ord + Hash + Debug + Send + 'static> PeerKey for T {}

/// Tunables of the sync engine. [`SyncConfig::check`] (run by
/// [`Engine::new`]) refuses settings the engine cannot work with.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Message and page size limits.
    pub limits: Limits,
    /// Pages requested from one peer and not yet answered.
    pub max_in_flight: usize,
    /// Bytes of pages one peer may have buffered or in flight.
    pub max_buffered_bytes: usize,
    /// Most entries stored by one `ingest_checked` call.
    pub max_ingest_entries: usize,
    /// Shortest time between two gossip announcements.
    pub announce_interval: Duration,
    /// Most announcement messages sent in one round; heads left over wait
    /// for the next round, so a node never floods its peers.
    pub max_announces_per_round: usize,
    /// Failed requests in a row before a peer is disconnected.
    pub max_failures: u32,
    /// Start each connection with a heads reconciliation (protocol version
    /// 3), whose cost follows what differs. Off, the engine does the plain
    /// heads exchange of version 2 (and a node speaks only version 2 and
    /// 1): what an older peer does.
    pub reconcile: bool,
    /// How long the side that waits for the peer to start a
    /// reconciliation waits before it starts one itself (a peer that
    /// never starts anything, or an older one that never speaks first).
    pub reconcile_wait: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_in_flight: 4,
            max_buffered_bytes: 32 * 1024 * 1024,
            max_ingest_entries: 4096,
            announce_interval: Duration::from_millis(100),
            max_announces_per_round: 4,
            max_failures: 5,
            reconcile: true,
            reconcile_wait: Duration::from_secs(2),
        }
    }
}

/// A [`SyncConfig`] the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync config: {0}")]
pub struct ConfigError(pub &'static str);

impl SyncConfig {
    /// Check that every setting leaves the engine able to make progress.
    pub fn check(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.page_entries == 0 {
            return Err(ConfigError("limits.page_entries must be at least 1"));
        }
        if l.page_bytes == 0 {
            return Err(ConfigError("limits.page_bytes must be at least 1"));
        }
        if l.max_message_bytes < l.page_bytes {
            return Err(ConfigError(
                "limits.max_message_bytes must be at least limits.page_bytes",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError("max_in_flight must be at least 1"));
        }
        if self.max_buffered_bytes == 0 {
            return Err(ConfigError("max_buffered_bytes must be at least 1"));
        }
        if self.max_ingest_entries == 0 {
            return Err(ConfigError("max_ingest_entries must be at least 1"));
        }
        if self.max_announces_per_round == 0 {
            return Err(ConfigError("max_announces_per_round must be at least 1"));
        }
        if self.max_failures == 0 {
            return Err(ConfigError("max_failures must be at least 1"));
        }
        Ok(())
    }
}

/// Something that happened to the engine. Answers to the engine's own
/// requests come as [`Input::Heads`], [`Input::Page`], [`Input::ForkProofs`]
/// or [`Input::Refused`]; [`receive`] turns a decoded [`Response`] into the
/// right one, checking pages and proofs on the way.
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
    /// A [`Response::Heads`] to the request with this `tag`.
    Heads {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The answer.
        heads: Heads,
    },
    /// A [`Response::Page`] to the request with this `tag`, its entries
    /// checked against this store's payload limit ([`CheckedEntries`]).
    Page {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The feed the page claims to hold.
        feed: FeedId,
        /// The entries, checked.
        entries: CheckedEntries,
    },
    /// A [`Response::ForkProofs`] to the request with this `tag`: each
    /// proof checked ([`check_proofs`]), with the feed it claimed.
    ForkProofs {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The proofs.
        proofs: Vec<(FeedId, Result<ForkProof, EntryError>)>,
    },
    /// A [`Response::Refused`] to the request with this `tag`.
    Refused {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The peer's reason.
        reason: String,
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
    /// A gossip announcement published by `peer` ([`receive_announce`]).
    Announce {
        /// The publisher.
        peer: P,
        /// Heads that moved at the publisher.
        heads: Vec<HeadInfo>,
        /// Fork proofs it carried, checked.
        proofs: Vec<(FeedId, Result<ForkProof, EntryError>)>,
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
    /// Replicate these feeds from now on.
    Follow(Follow),
    /// Exchange heads with a peer again and report [`SyncEvent::Idle`]
    /// when done, even if it was already in sync.
    Resync(P),
    /// A [`Response::Reconcile`] to the request with this `tag`.
    Reconciled {
        /// The peer.
        peer: P,
        /// The tag of the request.
        tag: u64,
        /// The peer's next message.
        message: super::reconcile::Message,
    },
}

/// Something the driver must do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<P> {
    /// Send a request; report its answer with the same `tag`.
    Request {
        /// The peer.
        peer: P,
        /// Tag for the answer or [`Input::RequestFailed`].
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
    Announce(super::wire::Announce),
    /// The peer broke the protocol: disconnect it and keep it away.
    Ban {
        /// The peer.
        peer: P,
        /// What it did.
        reason: SyncError,
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

/// What a received entry costs besides its payload, in
/// [`SyncEvent::Progress`]'s byte counts: the header and its signature
/// (about their encoded size).
pub const ENTRY_OVERHEAD: u64 = 160;

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
        /// Their size as received: payloads, plus [`ENTRY_OVERHEAD`] per
        /// entry for the signed header.
        bytes: u64,
        /// Entries the peer still holds of the feeds being pulled from it,
        /// as far as its heads say (an estimate of what is left).
        remaining: u64,
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
    Reconcile,
    Want(Want),
    ForkProofs(Vec<FeedId>),
}

/// The sync state machine of one node. See the module docs for the flow.
///
/// Call [`Engine::handle`] for each input, then [`Engine::step`] (which
/// does the storing and scheduling), then send what
/// [`Engine::take_outputs`] returns. Call `step` again by
/// [`Engine::next_deadline`].
pub struct Engine<P: PeerKey, S: SyncStore = Db> {
    store: S,
    config: SyncConfig,
    /// This node's own key: of two peers the smaller starts the heads
    /// reconciliation. Unknown, this side starts it with every peer.
    local: Option<P>,
    blocked: HashSet<FeedId>,
    follow: Follow,
    sessions: BTreeMap<P, Session>,
    /// Which session pulls which feed.
    claims: HashMap<FeedId, P>,
    tags: HashMap<u64, (P, Pending)>,
    next_tag: u64,
    /// Requests to serve, in arrival order.
    inbox: VecDeque<(P, u64, Request)>,
    /// Checked fork proofs to store, with the peer they came from (`None`
    /// when they came by gossip from a peer without a session).
    proof_inbox: Vec<(Option<P>, ForkProof)>,
    announced: HashMap<FeedId, u64>,
    announced_forks: HashSet<FeedId>,
    /// Feeds with an entry over the payload limit: the first such seq.
    too_large: HashMap<FeedId, u64>,
    local_dirty: bool,
    announce_due: Option<Instant>,
    last_announce: Option<Instant>,
    out: Vec<Output<P>>,
}

impl<P: PeerKey, S: SyncStore> Debug for Engine<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("sessions", &self.sessions.len())
            .field("claims", &self.claims.len())
            .finish()
    }
}

impl<P: PeerKey, S: SyncStore> Engine<P, S> {
    /// An engine syncing `store`, or an error if `config` cannot work.
    pub fn new(store: S, config: SyncConfig) -> Result<Self, ConfigError> {
        config.check()?;
        let feeds = store.feeds();
        let announced = feeds.iter().map(|f| (f.feed, f.head.seq)).collect();
        let announced_forks = feeds
            .iter()
            .filter(|f| f.fork.is_some())
            .map(|f| f.feed)
            .collect();
        Ok(Self {
            store,
            config,
            local: None,
            blocked: HashSet::new(),
            follow: Follow::default(),
            sessions: BTreeMap::new(),
            claims: HashMap::new(),
            tags: HashMap::new(),
            next_tag: 1,
            inbox: VecDeque::new(),
            proof_inbox: Vec::new(),
            announced,
            announced_forks,
            too_large: HashMap::new(),
            local_dirty: false,
            announce_due: None,
            last_announce: None,
            out: Vec::new(),
        })
    }

    /// This node's own peer key, which decides which side of a connection
    /// starts the heads reconciliation (the smaller key). Without it, this
    /// side starts one with every peer, which costs twice the bytes when
    /// the peer does too.
    pub fn with_local(mut self, local: P) -> Self {
        self.local = Some(local);
        self
    }

    /// Feeds neither pulled nor served, from the start.
    pub fn with_blocked(mut self, feeds: impl IntoIterator<Item = FeedId>) -> Self {
        self.blocked.extend(feeds);
        self
    }

    /// The feeds to replicate, from the start.
    pub fn with_follow(mut self, follow: Follow) -> Self {
        self.follow = follow;
        self
    }

    /// Whether `feed` is to be pulled and stored: followed, not blocked.
    fn wanted(&self, feed: &FeedId) -> bool {
        !self.blocked.contains(feed) && self.follow.wants(feed)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The config.
    pub fn config(&self) -> &SyncConfig {
        &self.config
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
        let waits = self
            .sessions
            .values()
            .filter_map(|s| s.waiting_since)
            .map(|since| since + self.config.reconcile_wait);
        self.announce_due.into_iter().chain(waits).min()
    }

    /// Take one input. Cheap; the work happens in [`Engine::step`].
    /// Inputs about a peer without a session (one just banned, say) are
    /// ignored, except [`Input::Connected`].
    pub fn handle(&mut self, input: Input<P>) {
        match input {
            Input::Connected(peer) => {
                let exchange = self.first_exchange(&peer);
                self.sessions
                    .entry(peer)
                    .or_insert_with(|| Session::opened(exchange));
            }
            Input::Disconnected(peer) => self.end_session(&peer),
            Input::Request { peer, id, request } => {
                if self.sessions.contains_key(&peer) {
                    self.inbox.push_back((peer, id, request));
                }
            }
            Input::Heads { peer, tag, heads } => self.on_heads_answer(peer, tag, heads),
            Input::Page {
                peer,
                tag,
                feed,
                entries,
            } => self.on_page_answer(peer, tag, feed, entries),
            Input::ForkProofs { peer, tag, proofs } => self.on_proofs_answer(peer, tag, proofs),
            Input::Refused { peer, tag, reason } => self.on_refused(peer, tag, &reason),
            Input::RequestFailed { peer, tag, error } => self.on_failure(peer, tag, &error),
            Input::Malformed { peer, error } => {
                if self.sessions.contains_key(&peer) {
                    self.ban(peer, SyncError::Malformed(error));
                }
            }
            Input::Announce {
                peer,
                heads,
                proofs,
            } => self.on_announce(peer, heads, proofs),
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
            Input::Block(feed) => self.block(feed),
            Input::Unblock(feed) => self.unblock(feed),
            Input::Follow(follow) => self.set_follow(follow),
            Input::Resync(peer) => {
                self.abandon_reconcile(&peer);
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.restart();
                    // Whoever asks for a resync reconciles, if the peer can.
                    if s.exchange.reconciles() {
                        s.exchange = Exchange::Start;
                    }
                }
            }
            Input::Reconciled { peer, tag, message } => {
                self.on_reconcile_answer(peer, tag, &message);
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
        self.stop_waiting(now);
        self.store_proofs()?;
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

    fn tag(&mut self, peer: P, pending: Pending) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.tags.insert(tag, (peer, pending));
        tag
    }

    /// End the peer's session and tell the driver to keep it away. Later
    /// inputs about it are ignored until it connects again.
    fn ban(&mut self, peer: P, reason: SyncError) {
        if !self.sessions.contains_key(&peer) {
            return;
        }
        self.end_session(&peer);
        self.out.push(Output::Ban { peer, reason });
    }

    fn block(&mut self, feed: FeedId) {
        self.blocked.insert(feed);
        self.cancel_feed_everywhere(&feed);
        for s in self.sessions.values_mut() {
            s.todo.remove(&feed);
            s.waiting.remove(&feed);
            s.proofs_wanted.remove(&feed);
        }
    }

    /// Change the replication policy: stop pulling what is no longer
    /// followed, reconsider what now is.
    fn set_follow(&mut self, follow: Follow) {
        let old = std::mem::replace(&mut self.follow, follow);
        let known: Vec<FeedId> = self
            .sessions
            .values()
            .flat_map(|s| s.remote.keys().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for feed in known {
            match (old.wants(&feed), self.follow.wants(&feed)) {
                (true, false) => {
                    self.cancel_feed_everywhere(&feed);
                    for s in self.sessions.values_mut() {
                        s.todo.remove(&feed);
                        s.waiting.remove(&feed);
                        s.proofs_wanted.remove(&feed);
                    }
                }
                (false, true) => {
                    for s in self.sessions.values_mut() {
                        if s.remote.contains_key(&feed) {
                            s.todo.insert(feed);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn unblock(&mut self, feed: FeedId) {
        self.blocked.remove(&feed);
        for s in self.sessions.values_mut() {
            if s.remote.contains_key(&feed) {
                s.todo.insert(feed);
            }
            s.told.remove(&feed);
            s.told_all = None;
        }
        self.announced.remove(&feed);
        self.local_dirty = true;
    }
}
