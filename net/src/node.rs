//! The node: a tokio libp2p swarm that runs the sync [`Engine`] for one
//! database, and the one-shot [`sync_once`].
//!
//! Two halves talk over channels:
//!
//! - the **swarm task** (tokio) owns the libp2p swarm: connections, dials
//!   and redials, bans, mDNS, gossip, the address book;
//! - the **check thread** (`kappadb-check`) sits between them: it passes
//!   the swarm's messages on in order and checks each received page on the
//!   way ([`CheckedEntries`]: signatures, on all cores), so the next page is
//!   checked while the sync thread stores the previous one;
//! - the **sync thread** (a plain thread named `kappadb-sync`) owns the
//!   [`Engine`] and the only handle on the database it writes with. Storing
//!   a page (`ingest_checked`: chain rules, fsync, index) blocks that thread
//!   and never the swarm. It also listens to the database's
//!   [`kappadb_core::Watch`], so a local append or ingest is announced by
//!   gossip.
//!
//! [`NodeHandle::shutdown`] lets the sync thread finish the page it is
//! storing (pages are stored whole and durably or not at all), saves the
//! address book and stops. Dropping the handle aborts the swarm task; the
//! sync thread then stops by itself.
//!
//! ```no_run
//! # async fn demo(db: kappadb_core::Db) -> Result<(), kappadb_net::NetError> {
//! use kappadb_net::Node;
//! let node = Node::builder(db)
//!     .listen("/ip4/0.0.0.0/tcp/4747".parse().unwrap())
//!     .peer("/ip4/192.168.1.20/tcp/4747".parse().unwrap())
//!     .mdns(true)
//!     .spawn()
//!     .await?;
//! let mut events = node.events();
//! while let Ok(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kappadb_core::{CheckedEntries, Db, FeedId, now_ms};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::behaviour::{
    Behaviour, BehaviourConfig, BehaviourEvent, MAX_GOSSIP_BYTES, build_transport, feed_of_peer,
    gossip_topic, identity_keypair, is_not_in_network,
};
use crate::blocklist::BlockList;
use crate::error::NetError;
use crate::peers::{AddressBook, PeerRecord};
use crate::protocol::{
    Engine, Input, Limits, Output, Request, Response, SyncConfig, SyncEvent, SyncStats,
    decode_announce, encode_announce,
};

/// The TCP port a node listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 4747;

/// `/ip4/0.0.0.0/tcp/4747`: every IPv4 interface, [`DEFAULT_PORT`].
pub fn default_listen_addr() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
        .with(Protocol::Tcp(DEFAULT_PORT))
}

/// Tunables of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The sync engine's settings.
    pub sync: SyncConfig,
    /// How long a peer that broke the protocol is kept away.
    pub ban_duration: Duration,
    /// How often mDNS asks the LAN for peers.
    pub mdns_query_interval: Duration,
    /// How long a connection without traffic stays open.
    pub idle_connection_timeout: Duration,
    /// How long a request may take.
    pub request_timeout: Duration,
    /// Longest wait between two redials of a known peer.
    pub max_redial_backoff: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            sync: SyncConfig::default(),
            ban_duration: Duration::from_secs(10 * 60),
            mdns_query_interval: Duration::from_secs(5),
            idle_connection_timeout: Duration::from_secs(24 * 60 * 60),
            request_timeout: Duration::from_secs(60),
            max_redial_backoff: Duration::from_secs(5 * 60),
        }
    }
}

/// Something a node did or saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The node listens on a new address.
    Listening {
        /// The address (without `/p2p`).
        addr: Multiaddr,
    },
    /// mDNS found a peer on the LAN.
    PeerDiscovered {
        /// The peer.
        peer: PeerId,
        /// Where.
        addr: Multiaddr,
    },
    /// A peer connected.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its feed.
        feed: Option<FeedId>,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// Entries of a feed were stored from a peer.
    SyncProgress {
        /// The peer.
        peer: PeerId,
        /// The feed.
        feed: FeedId,
        /// How many entries.
        entries: u64,
    },
    /// Neither side misses anything the other announced.
    SyncIdle {
        /// The peer.
        peer: PeerId,
        /// The session's counters.
        stats: SyncStats,
    },
    /// A peer broke the protocol; it is disconnected and kept away.
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A feed was blocked (by [`NodeHandle::block`] or by another process
    /// editing `blocked.json`).
    FeedBlocked {
        /// The feed.
        feed: FeedId,
    },
    /// A feed was unblocked.
    FeedUnblocked {
        /// The feed.
        feed: FeedId,
    },
    /// A feed was found forked (or a proof of it arrived).
    ForkFound {
        /// The feed.
        feed: FeedId,
        /// Where it forked.
        seq: u64,
        /// The peer the proof came from, if known.
        peer: Option<PeerId>,
    },
    /// The node stopped (with the error that stopped it, if any).
    Stopped {
        /// What went wrong.
        error: Option<String>,
    },
}

/// The result of a one-shot sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncSummary {
    /// The peer synced with.
    pub peer: PeerId,
    /// Entries stored from the peer.
    pub pulled: u64,
    /// Entries sent to the peer (some it may have had already).
    pub pushed_estimate: u64,
    /// Distinct feeds pulled or pushed.
    pub feeds: usize,
}

/// The entry point: `Node::builder(db)…spawn()`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Start configuring a node for `db`.
    pub fn builder(db: Db) -> NodeBuilder {
        NodeBuilder {
            db,
            listen: Vec::new(),
            no_listen: false,
            peers: Vec::new(),
            mdns: true,
            address_book: true,
            redial: true,
            config: NodeConfig::default(),
        }
    }
}

/// Options of a node. Defaults: listen on [`default_listen_addr`], mDNS on,
/// address book loaded, saved and redialed.
#[derive(Debug)]
#[must_use]
pub struct NodeBuilder {
    db: Db,
    listen: Vec<Multiaddr>,
    no_listen: bool,
    peers: Vec<Multiaddr>,
    mdns: bool,
    address_book: bool,
    redial: bool,
    config: NodeConfig,
}

impl NodeBuilder {
    /// Listen on this address (repeatable; `/tcp/0` picks a free port).
    pub fn listen(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Do not listen at all (outgoing connections only).
    pub fn no_listen(mut self) -> Self {
        self.no_listen = true;
        self
    }

    /// Connect to this peer and keep reconnecting (repeatable). The
    /// address may end in `/p2p/PEER` or not.
    pub fn peer(mut self, addr: Multiaddr) -> Self {
        self.peers.push(addr);
        self
    }

    /// Discover peers on the LAN with mDNS.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Load and save the address book (`peers.json`).
    pub fn address_book(mut self, on: bool) -> Self {
        self.address_book = on;
        self
    }

    /// Redial the peers of the address book on start and after they
    /// disconnect.
    pub fn redial(mut self, on: bool) -> Self {
        self.redial = on;
        self
    }

    /// Replace the tunables.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the node: returns once it listens on every address.
    pub async fn spawn(self) -> Result<NodeHandle, NetError> {
        spawn(self).await
    }
}

/// A running node. Cheap methods talk to the swarm task over a channel.
/// Dropping the handle aborts the node; [`NodeHandle::shutdown`] stops it
/// cleanly.
#[derive(Debug)]
pub struct NodeHandle {
    peer_id: PeerId,
    feed_id: FeedId,
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<NodeEvent>,
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    listen_addrs: Vec<Multiaddr>,
    connected: BTreeSet<PeerId>,
}

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    Sync {
        addr: Multiaddr,
        timeout: Duration,
        reply: oneshot::Sender<Result<SyncSummary, NetError>>,
    },
    Block {
        feed: FeedId,
        block: bool,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerRecord>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's feed (the same key as its peer id).
    pub fn feed_id(&self) -> FeedId {
        self.feed_id
    }

    /// The addresses the node listens on, each ending in `/p2p/PEER`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .listen_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)))
            .collect()
    }

    /// The peers connected now.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.connected.iter().copied().collect()
    }

    /// A new receiver of the node's events (from now on).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Connect to a peer (the address may omit `/p2p/PEER`). Returns once
    /// connected; syncing starts by itself.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Connect to a peer (if not connected) and sync both ways until
    /// neither side misses anything. The counters are those of the whole
    /// session with that peer.
    pub async fn sync_with(
        &self,
        addr: Multiaddr,
        timeout: Duration,
    ) -> Result<SyncSummary, NetError> {
        self.ask(|reply| Command::Sync {
            addr,
            timeout,
            reply,
        })
        .await?
    }

    /// Stop pulling and serving a feed, and remember it in `blocked.json`.
    /// Returns false if it was blocked already.
    pub async fn block(&self, feed: FeedId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Block {
            feed,
            block: true,
            reply,
        })
        .await?
    }

    /// Undo [`NodeHandle::block`]. Returns false if it was not blocked.
    pub async fn unblock(&self, feed: FeedId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Block {
            feed,
            block: false,
            reply,
        })
        .await?
    }

    /// The address book as the node knows it now (empty if disabled).
    pub async fn known_peers(&self) -> Result<Vec<PeerRecord>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Stop the node: finish the page being stored, save the address book,
    /// close connections. The database handle the node held is released
    /// when this returns.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown { reply: tx }).is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Connect to `addr` (which may omit `/p2p/PEER`), sync both ways until
/// neither side misses anything, and stop. The peer is remembered in the
/// address book. A peer with another network key gives
/// [`NetError::NotInNetwork`].
pub async fn sync_once(
    db: Db,
    addr: Multiaddr,
    timeout: Duration,
) -> Result<SyncSummary, NetError> {
    let node = Node::builder(db)
        .no_listen()
        .mdns(false)
        .redial(false)
        .spawn()
        .await?;
    let res = node.sync_with(addr, timeout).await;
    node.shutdown().await;
    res
}

// ---------------------------------------------------------------------------
// The sync thread.

enum EngineMsg {
    Input(Input<PeerId>),
    Shutdown,
}

enum EngineOut {
    Output(Output<PeerId>),
    Fatal(String),
    Stopped,
}

fn engine_loop(
    mut engine: Engine<PeerId>,
    rx: std_mpsc::Receiver<EngineMsg>,
    self_tx: std_mpsc::Sender<EngineMsg>,
    out: mpsc::UnboundedSender<EngineOut>,
) {
    let pending = Arc::new(AtomicBool::new(false));
    let listener = {
        let pending = pending.clone();
        engine.db().watch().subscribe(move |_| {
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = self_tx.send(EngineMsg::Input(Input::LocalChanged));
            }
        })
    };
    loop {
        let wait = engine
            .next_deadline()
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(500));
        let first = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut stop = false;
        let more = std::iter::from_fn(|| rx.try_recv().ok()).take(4096);
        for msg in first.into_iter().chain(more) {
            match msg {
                EngineMsg::Input(Input::LocalChanged) => {
                    pending.store(false, Ordering::Release);
                    engine.handle(Input::LocalChanged);
                }
                EngineMsg::Input(input) => engine.handle(input),
                EngineMsg::Shutdown => stop = true,
            }
        }
        if let Err(e) = engine.step(Instant::now()) {
            tracing::error!(error = %e, "the sync engine stopped on a database error");
            let _ = out.send(EngineOut::Fatal(e.to_string()));
            break;
        }
        for o in engine.take_outputs() {
            let _ = out.send(EngineOut::Output(o));
        }
        if stop || out.is_closed() {
            break;
        }
    }
    engine.db().watch().unsubscribe(listener);
    // The database handle goes before the swarm task hears we stopped.
    drop(engine);
    let _ = out.send(EngineOut::Stopped);
}

/// The check thread: passes every message on to the sync thread in the
/// order it came, checking the entries of each page on the way. Pages that
/// are already queued are checked together (up to [`CHECK_BATCH_ENTRIES`]
/// entries), which makes larger and cheaper signature batches.
fn check_loop(
    rx: std_mpsc::Receiver<EngineMsg>,
    tx: std_mpsc::Sender<EngineMsg>,
    max_payload: u32,
) {
    /// A message waiting for its turn; a page's entries wait in `all`.
    enum Held {
        Page {
            peer: PeerId,
            tag: u64,
            feed: FeedId,
            len: usize,
        },
        Other(EngineMsg),
    }
    while let Ok(first) = rx.recv() {
        let mut held = Vec::new();
        let mut all = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                EngineMsg::Input(Input::Response {
                    peer,
                    tag,
                    response: Response::Page(page),
                }) => {
                    held.push(Held::Page {
                        peer,
                        tag,
                        feed: page.feed,
                        len: page.entries.len(),
                    });
                    all.extend(page.entries);
                }
                other => held.push(Held::Other(other)),
            }
            next = if all.len() < CHECK_BATCH_ENTRIES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let mut checked = CheckedEntries::new(all, max_payload);
        for h in held {
            let msg = match h {
                Held::Page {
                    peer,
                    tag,
                    feed,
                    len,
                } => {
                    let rest = checked.split_off(len);
                    EngineMsg::Input(Input::CheckedPage {
                        peer,
                        tag,
                        feed,
                        entries: std::mem::replace(&mut checked, rest),
                    })
                }
                Held::Other(msg) => msg,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
}

/// Most entries the check thread checks in one go.
const CHECK_BATCH_ENTRIES: usize = 4096;

// ---------------------------------------------------------------------------
// The swarm task.

/// Why a connection was dialed.
enum Purpose {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    Sync(u64),
    Target(u64),
    Discovered(PeerId),
}

struct SyncWaiter {
    addr: Multiaddr,
    peer: Option<PeerId>,
    /// False while relying on a connection that existed already (which
    /// may be closing): if it closes, dial once.
    dialed: bool,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Result<SyncSummary, NetError>>,
}

/// A peer to keep connected to.
struct Target {
    peer: Option<PeerId>,
    addrs: Vec<Multiaddr>,
    next: Option<Instant>,
    backoff: Duration,
    dialing: bool,
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);

struct Runner {
    swarm: Swarm<Behaviour>,
    local: PeerId,
    topic: gossipsub::IdentTopic,
    gossip_limits: Limits,
    engine: std_mpsc::Sender<EngineMsg>,
    engine_out: mpsc::UnboundedReceiver<EngineOut>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    shared: Arc<Mutex<Shared>>,
    config: NodeConfig,
    book: Option<AddressBook>,
    redial: bool,
    blocklist: BlockList,
    /// When `blocked.json` was last seen changed, and last checked.
    blocklist_mtime: Option<std::time::SystemTime>,
    blocklist_checked: Instant,
    banned: HashMap<PeerId, (Instant, String)>,
    inbound: HashMap<u64, (PeerId, ResponseChannel<Response>)>,
    next_inbound: u64,
    outbound: HashMap<OutboundRequestId, u64>,
    dialing: HashMap<ConnectionId, Purpose>,
    syncs: HashMap<u64, SyncWaiter>,
    targets: HashMap<u64, Target>,
    next_id: u64,
    /// Peers found by mDNS that should dial us (tie-break), with the time
    /// after which we dial them anyway.
    discovered: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
    connected: HashSet<PeerId>,
    last_save: Instant,
    stopping: bool,
    shutdown_replies: Vec<oneshot::Sender<()>>,
    fatal: Option<String>,
}

async fn spawn(b: NodeBuilder) -> Result<NodeHandle, NetError> {
    let db = b.db;
    let keypair = identity_keypair(db.signing_key());
    let local = keypair.public().to_peer_id();
    let network = db.network_key()?;
    let blocklist = BlockList::load(db.dir())?;
    let book = b.address_book.then(|| AddressBook::load(db.dir()));
    let limits = Limits::for_payload_limit(db.config().max_payload_bytes);
    let mut config = b.config;
    config.sync.limits = limits.clone();

    let transport = build_transport(&keypair, &network)?;
    let behaviour = Behaviour::new(
        &keypair,
        &BehaviourConfig {
            limits: limits.clone(),
            request_timeout: config.request_timeout,
            mdns: b.mdns.then_some(config.mdns_query_interval),
        },
    )?;
    let mut swarm = Swarm::new(
        transport,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.idle_connection_timeout),
    );
    let topic = gossip_topic(&network);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NetError::Setup(e.to_string()))?;

    let mut listeners = HashMap::new();
    let listen = if b.listen.is_empty() && !b.no_listen {
        vec![default_listen_addr()]
    } else if b.no_listen {
        Vec::new()
    } else {
        b.listen
    };
    for addr in listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id, addr);
    }

    let feed_id = db.feed_id();
    let (engine_tx, engine_rx) = std_mpsc::channel();
    let (check_tx, check_rx) = std_mpsc::channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let max_payload = db.config().max_payload_bytes;
    let engine = Engine::new(db, config.sync.clone()).with_blocked(blocklist.feeds().copied());
    let self_tx = engine_tx.clone();
    std::thread::Builder::new()
        .name("kappadb-sync".into())
        .spawn(move || engine_loop(engine, engine_rx, self_tx, out_tx))
        .map_err(|e| NetError::Setup(format!("cannot start the sync thread: {e}")))?;
    std::thread::Builder::new()
        .name("kappadb-check".into())
        .spawn(move || check_loop(check_rx, engine_tx, max_payload))
        .map_err(|e| NetError::Setup(format!("cannot start the check thread: {e}")))?;

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(4096);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut runner = Runner {
        swarm,
        local,
        topic,
        gossip_limits: Limits {
            max_message_bytes: MAX_GOSSIP_BYTES,
            ..Limits::default()
        },
        engine: check_tx,
        engine_out: out_rx,
        commands: cmd_rx,
        events: events.clone(),
        shared: shared.clone(),
        config,
        book,
        redial: b.redial,
        blocklist_mtime: blocklist.modified(),
        blocklist_checked: Instant::now(),
        blocklist,
        banned: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound: 1,
        outbound: HashMap::new(),
        dialing: HashMap::new(),
        syncs: HashMap::new(),
        targets: HashMap::new(),
        next_id: 1,
        discovered: HashMap::new(),
        connected: HashSet::new(),
        last_save: Instant::now(),
        stopping: false,
        shutdown_replies: Vec::new(),
        fatal: None,
    };

    // Wait until every listener has an address, so `listen_addrs` is
    // useful at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut waiting: HashSet<_> = listeners.keys().copied().collect();
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, runner.swarm.select_next_some()).await {
            Ok(ev) => ev,
            Err(_) => {
                let addr = listeners
                    .values()
                    .next()
                    .cloned()
                    .unwrap_or_else(Multiaddr::empty);
                return Err(NetError::Listen {
                    addr,
                    reason: "no address after 10 s".into(),
                });
            }
        };
        match &ev {
            SwarmEvent::NewListenAddr { listener_id, .. } => {
                waiting.remove(listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(addr) = listeners.get(listener_id) {
                    let reason = match reason {
                        Err(e) => e.to_string(),
                        Ok(()) => "listener closed".into(),
                    };
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason,
                    });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(addr) = listeners.get(listener_id) {
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason: error.to_string(),
                    });
                }
            }
            _ => {}
        }
        runner.on_swarm_event(ev);
    }

    for addr in b.peers {
        let (_, peer) = split_peer(&addr);
        if peer == Some(local) {
            continue;
        }
        runner.add_target(peer, vec![addr]);
    }
    if runner.redial {
        let known: Vec<PeerRecord> = runner.book.as_ref().map(|b| b.peers()).unwrap_or_default();
        for rec in known {
            if rec.peer_id != local && !rec.addrs.is_empty() {
                runner.add_target(Some(rec.peer_id), rec.addrs);
            }
        }
    }
    runner.dial_due_targets();

    let task = tokio::spawn(runner.run());
    Ok(NodeHandle {
        peer_id: local,
        feed_id,
        commands: cmd_tx,
        events,
        shared,
        task: Some(task),
    })
}

/// The address without a trailing `/p2p/PEER`, and that peer.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => (base, Some(peer)),
        Some(other) => {
            base.push(other);
            (base, None)
        }
        None => (base, None),
    }
}

/// An error and its sources, skipping empty messages (libp2p's transport
/// errors often display as nothing and keep the cause in `source()`).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.trim().is_empty() && !parts.iter().any(|p| p.contains(text.trim())) {
            parts.push(text.trim().to_string());
        }
        cur = e.source();
    }
    if parts.is_empty() {
        "the connection failed".to_string()
    } else {
        parts.join(": ")
    }
}

fn dial_error(addr: &Multiaddr, err: &DialError) -> NetError {
    if is_not_in_network(err) {
        return NetError::NotInNetwork { addr: addr.clone() };
    }
    let reason = match err {
        DialError::LocalPeerId { .. } => "that address is this node's own".to_string(),
        DialError::Transport(errs) if errs.len() == 1 => error_chain(&errs[0].1),
        DialError::Transport(errs) => errs
            .iter()
            .map(|(a, e)| format!("{a}: {}", error_chain(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => error_chain(other),
    };
    NetError::Dial {
        addr: addr.clone(),
        reason,
    }
}

impl Runner {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                out = self.engine_out.recv() => match out {
                    Some(EngineOut::Output(o)) => self.on_output(o),
                    Some(EngineOut::Fatal(e)) => self.fatal = Some(e),
                    Some(EngineOut::Stopped) | None => break,
                },
                cmd = self.commands.recv(), if !self.stopping => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => self.begin_shutdown(),
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.finish();
    }

    fn emit(&self, ev: NodeEvent) {
        let _ = self.events.send(ev);
    }

    fn to_engine(&self, input: Input<PeerId>) {
        let _ = self.engine.send(EngineMsg::Input(input));
    }

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            let _ = self.engine.send(EngineMsg::Shutdown);
        }
    }

    fn finish(mut self) {
        for (_, w) in self.syncs.drain() {
            let _ = w.reply.send(Err(NetError::Stopped));
        }
        for (_, p) in self.dialing.drain() {
            if let Purpose::Dial { reply, .. } = p {
                let _ = reply.send(Err(NetError::Stopped));
            }
        }
        if let Some(book) = self.book.as_mut()
            && let Err(e) = book.save()
        {
            tracing::warn!(error = %e, "cannot save the address book");
        }
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.connected.clear();
        }
        let _ = self.events.send(NodeEvent::Stopped {
            error: self.fatal.take(),
        });
        for r in self.shutdown_replies.drain(..) {
            let _ = r.send(());
        }
    }

    fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some((until, _)) if *until > Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    fn add_target(&mut self, peer: Option<PeerId>, addrs: Vec<Multiaddr>) {
        if let Some(p) = peer
            && let Some(t) = self.targets.values_mut().find(|t| t.peer == Some(p))
        {
            for a in addrs {
                if !t.addrs.contains(&a) {
                    t.addrs.push(a);
                }
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.targets.insert(
            id,
            Target {
                peer,
                addrs,
                next: Some(Instant::now()),
                backoff: MIN_BACKOFF,
                dialing: false,
            },
        );
    }

    fn dial_due_targets(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.dialing && t.next.is_some_and(|n| n <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.targets.get(&id) else {
                continue;
            };
            let peer = t.peer;
            if let Some(p) = peer
                && (self.connected.contains(&p) || self.is_banned(&p))
            {
                if let Some(t) = self.targets.get_mut(&id) {
                    t.next = None;
                }
                continue;
            }
            let Some(t) = self.targets.get(&id) else {
                continue;
            };
            let opts = match peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(t.addrs.iter().map(|a| split_peer(a).0).collect())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => match t.addrs.first() {
                    Some(a) => DialOpts::unknown_peer_id().address(a.clone()).build(),
                    None => continue,
                },
            };
            let cid = opts.connection_id();
            let res = self.swarm.dial(opts);
            let Some(t) = self.targets.get_mut(&id) else {
                continue;
            };
            match res {
                Ok(()) => {
                    t.dialing = true;
                    t.next = None;
                    self.dialing.insert(cid, Purpose::Target(id));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redial not started");
                    t.next = Some(now + t.backoff);
                    t.backoff = (t.backoff * 2).min(self.config.max_redial_backoff);
                }
            }
        }
    }

    fn dial_addr(&mut self, addr: &Multiaddr) -> Result<ConnectionId, NetError> {
        let (base, peer) = split_peer(addr);
        if peer == Some(self.local) {
            return Err(NetError::BadAddress {
                addr: addr.to_string(),
                reason: "that is this node's own address".into(),
            });
        }
        if base.is_empty() {
            return Err(NetError::BadAddress {
                addr: addr.to_string(),
                reason: "no transport address (expected e.g. /ip4/10.0.0.2/tcp/4747)".into(),
            });
        }
        if let Some(p) = peer
            && self.is_banned(&p)
        {
            let reason = self.banned.get(&p).map(|b| b.1.clone()).unwrap_or_default();
            return Err(NetError::Banned { peer: p, reason });
        }
        let opts = match peer {
            Some(p) => DialOpts::peer_id(p)
                .addresses(vec![base])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(base).build(),
        };
        let cid = opts.connection_id();
        self.swarm.dial(opts).map_err(|e| dial_error(addr, &e))?;
        Ok(cid)
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let (_, peer) = split_peer(&addr);
                if let Some(p) = peer.filter(|p| self.connected.contains(p)) {
                    let _ = reply.send(Ok(p));
                    return;
                }
                match self.dial_addr(&addr) {
                    Ok(cid) => {
                        self.dialing.insert(cid, Purpose::Dial { addr, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Sync {
                addr,
                timeout,
                reply,
            } => {
                let id = self.next_id;
                self.next_id += 1;
                let (_, peer) = split_peer(&addr);
                let mut waiter = SyncWaiter {
                    addr: addr.clone(),
                    peer: None,
                    dialed: true,
                    deadline: Instant::now() + timeout,
                    timeout,
                    reply,
                };
                if let Some(p) = peer.filter(|p| self.connected.contains(p)) {
                    waiter.peer = Some(p);
                    waiter.dialed = false;
                    self.to_engine(Input::Resync(p));
                } else {
                    match self.dial_addr(&addr) {
                        Ok(cid) => {
                            self.dialing.insert(cid, Purpose::Sync(id));
                        }
                        Err(e) => {
                            let _ = waiter.reply.send(Err(e));
                            return;
                        }
                    }
                }
                self.syncs.insert(id, waiter);
            }
            Command::Block { feed, block, reply } => {
                let res = if block {
                    self.blocklist.block(feed)
                } else {
                    self.blocklist.unblock(&feed)
                };
                if let Ok(true) = res {
                    self.blocklist_mtime = self.blocklist.modified();
                    if block {
                        self.to_engine(Input::Block(feed));
                        self.emit(NodeEvent::FeedBlocked { feed });
                    } else {
                        self.to_engine(Input::Unblock(feed));
                        self.emit(NodeEvent::FeedUnblocked { feed });
                    }
                }
                let _ = reply.send(res);
            }
            Command::Peers { reply } => {
                let peers = self.book.as_ref().map(|b| b.peers()).unwrap_or_default();
                let _ = reply.send(peers);
            }
            Command::Shutdown { reply } => {
                self.shutdown_replies.push(reply);
                self.begin_shutdown();
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.banned.retain(|_, (until, _)| *until > now);
        // Sync deadlines.
        let late: Vec<u64> = self
            .syncs
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(w) = self.syncs.remove(&id) {
                let _ = w.reply.send(Err(NetError::Timeout { after: w.timeout }));
            }
        }
        if self.stopping {
            return;
        }
        // mDNS peers that did not dial us although they should have.
        let overdue: Vec<(PeerId, Vec<Multiaddr>)> = self
            .discovered
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, (a, _))| (*p, a.clone()))
            .collect();
        for (peer, addrs) in overdue {
            self.discovered.remove(&peer);
            if !self.connected.contains(&peer) && !self.is_banned(&peer) {
                self.dial_discovered(peer, addrs);
            }
        }
        self.dial_due_targets();
        if now.duration_since(self.blocklist_checked) >= Duration::from_secs(2) {
            self.blocklist_checked = now;
            self.reload_blocklist();
        }
        if now.duration_since(self.last_save) >= Duration::from_secs(10) {
            self.last_save = now;
            if let Some(book) = self.book.as_mut().filter(|b| b.is_dirty())
                && let Err(e) = book.save()
            {
                tracing::warn!(error = %e, "cannot save the address book");
            }
        }
    }

    /// Pick up changes another process (`kappa block`) made to
    /// `blocked.json`.
    fn reload_blocklist(&mut self) {
        let mtime = self.blocklist.modified();
        if mtime == self.blocklist_mtime {
            return;
        }
        self.blocklist_mtime = mtime;
        let dir = self
            .blocklist
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fresh = match BlockList::load(&dir) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "keeping the old block list");
                return;
            }
        };
        for feed in fresh.feeds() {
            if !self.blocklist.contains(feed) {
                tracing::info!(feed = %feed.fmt_short(), "feed blocked");
                self.to_engine(Input::Block(*feed));
                self.emit(NodeEvent::FeedBlocked { feed: *feed });
            }
        }
        for feed in self.blocklist.feeds() {
            if !fresh.contains(feed) {
                tracing::info!(feed = %feed.fmt_short(), "feed unblocked");
                self.to_engine(Input::Unblock(*feed));
                self.emit(NodeEvent::FeedUnblocked { feed: *feed });
            }
        }
        self.blocklist = fresh;
    }

    fn dial_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let cid = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dialing.insert(cid, Purpose::Discovered(peer));
            }
            Err(e) => tracing::debug!(%peer, error = %e, "not dialing a discovered peer"),
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                {
                    let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                    if !shared.listen_addrs.contains(&address) {
                        shared.listen_addrs.push(address.clone());
                    }
                }
                self.emit(NodeEvent::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                shared.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(peer_id, connection_id, &endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.on_disconnected(peer_id),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, &error),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                if is_not_in_network(&error) {
                    tracing::info!(from = %send_back_addr, "refused a connection from a peer not in this network");
                } else {
                    tracing::debug!(from = %send_back_addr, %error, "incoming connection failed");
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_connected(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
        num_established: u32,
    ) {
        let purpose = self.dialing.remove(&connection_id);
        if self.is_banned(&peer) {
            tracing::debug!(%peer, "closing a connection from a banned peer");
            let _ = self.swarm.disconnect_peer_id(peer);
            if let Some(Purpose::Dial { reply, .. }) = purpose {
                let reason = self
                    .banned
                    .get(&peer)
                    .map(|b| b.1.clone())
                    .unwrap_or_default();
                let _ = reply.send(Err(NetError::Banned { peer, reason }));
            }
            return;
        }
        if num_established == 1 || !self.connected.contains(&peer) {
            tracing::info!(%peer, "connected");
            self.connected.insert(peer);
            {
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                shared.connected.insert(peer);
            }
            self.to_engine(Input::Connected(peer));
            self.emit(NodeEvent::PeerConnected {
                peer,
                feed: feed_of_peer(&peer),
            });
        }
        if let Some(book) = self.book.as_mut() {
            book.seen(peer, now_ms());
            if let ConnectedPoint::Dialer { address, .. } = endpoint {
                book.add_addrs(peer, [address.clone()]);
            }
        }
        self.discovered.remove(&peer);
        for t in self.targets.values_mut() {
            if t.peer == Some(peer) {
                t.next = None;
                t.backoff = MIN_BACKOFF;
                t.dialing = false;
            }
        }
        match purpose {
            Some(Purpose::Dial { reply, .. }) => {
                let _ = reply.send(Ok(peer));
            }
            Some(Purpose::Sync(id)) => {
                if let Some(w) = self.syncs.get_mut(&id) {
                    w.peer = Some(peer);
                    self.to_engine(Input::Resync(peer));
                }
            }
            Some(Purpose::Target(id)) => {
                if let Some(t) = self.targets.get_mut(&id) {
                    t.peer = Some(peer);
                    t.dialing = false;
                    t.next = None;
                    t.backoff = MIN_BACKOFF;
                }
            }
            Some(Purpose::Discovered(_)) | None => {}
        }
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        if !self.connected.remove(&peer) {
            return;
        }
        tracing::info!(%peer, "disconnected");
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.connected.remove(&peer);
        }
        self.inbound.retain(|_, (p, _)| *p != peer);
        self.to_engine(Input::Disconnected(peer));
        self.emit(NodeEvent::PeerDisconnected { peer });
        let banned = self.banned.get(&peer).map(|b| b.1.clone());
        let waiting: Vec<u64> = self
            .syncs
            .iter()
            .filter(|(_, w)| w.peer == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(w) = self.syncs.get_mut(&id)
                && !w.dialed
                && banned.is_none()
                && !self.stopping
            {
                // The connection it relied on was closing: dial.
                w.dialed = true;
                w.peer = None;
                let addr = w.addr.clone();
                match self.dial_addr(&addr) {
                    Ok(cid) => {
                        self.dialing.insert(cid, Purpose::Sync(id));
                        continue;
                    }
                    Err(e) => {
                        if let Some(w) = self.syncs.remove(&id) {
                            let _ = w.reply.send(Err(e));
                        }
                        continue;
                    }
                }
            }
            if let Some(w) = self.syncs.remove(&id) {
                let err = match &banned {
                    Some(reason) => NetError::Banned {
                        peer,
                        reason: reason.clone(),
                    },
                    None => NetError::Disconnected { peer },
                };
                let _ = w.reply.send(Err(err));
            }
        }
        if let Some(book) = self.book.as_mut() {
            book.seen(peer, now_ms());
        }
        if self.stopping || banned.is_some() {
            return;
        }
        // Keep known peers connected.
        let now = Instant::now();
        let mut known = false;
        for t in self.targets.values_mut() {
            if t.peer == Some(peer) {
                known = true;
                t.next = Some(now + t.backoff);
                t.backoff = (t.backoff * 2).min(self.config.max_redial_backoff);
            }
        }
        if !known && self.redial {
            let addrs = self
                .book
                .as_ref()
                .and_then(|b| b.get(&peer))
                .map(|r| r.addrs.clone())
                .unwrap_or_default();
            if !addrs.is_empty() {
                self.add_target(Some(peer), addrs);
                for t in self.targets.values_mut() {
                    if t.peer == Some(peer) {
                        t.next = Some(now + MIN_BACKOFF * 2);
                    }
                }
            }
        }
    }

    fn on_dial_failed(&mut self, cid: ConnectionId, peer: Option<PeerId>, error: &DialError) {
        let purpose = self.dialing.remove(&cid);
        match purpose {
            Some(Purpose::Dial { addr, reply }) => {
                let err = dial_error(&addr, error);
                tracing::info!(%addr, error = %err, "dial failed");
                let _ = reply.send(Err(err));
            }
            Some(Purpose::Sync(id)) => {
                if let Some(w) = self.syncs.remove(&id) {
                    let err = dial_error(&w.addr, error);
                    tracing::info!(addr = %w.addr, error = %err, "dial failed");
                    let _ = w.reply.send(Err(err));
                }
            }
            Some(Purpose::Target(id)) => {
                let now = Instant::now();
                let max = self.config.max_redial_backoff;
                if let Some(t) = self.targets.get_mut(&id) {
                    t.dialing = false;
                    let not_in_network = is_not_in_network(error);
                    if not_in_network {
                        tracing::warn!(peer = ?t.peer, addrs = ?t.addrs, "a known peer is not in this network");
                        t.backoff = max;
                    } else {
                        tracing::debug!(peer = ?t.peer, %error, "redial failed");
                    }
                    t.next = Some(now + t.backoff);
                    t.backoff = (t.backoff * 2).min(max);
                }
            }
            Some(Purpose::Discovered(p)) => {
                tracing::debug!(peer = %p, %error, "dialing a discovered peer failed");
            }
            None => {
                tracing::debug!(?peer, %error, "dial failed");
            }
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Sync(ev) => self.on_sync_event(ev),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            }) => {
                let source = message.source.unwrap_or(propagation_source);
                match decode_announce(&message.data, &self.gossip_limits) {
                    Ok(announce) => self.to_engine(Input::Announce {
                        peer: source,
                        announce,
                    }),
                    Err(e) => {
                        tracing::debug!(%source, error = %e, "ignoring a malformed announcement");
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                if topic == self.topic.hash() {
                    self.to_engine(Input::PeerSubscribed(peer_id));
                }
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(book) = self.book.as_mut() {
                    book.add_addrs(peer_id, info.listen_addrs);
                }
            }
            BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if peer == self.local
                        || self.connected.contains(&peer)
                        || self.is_banned(&peer)
                        || self.stopping
                    {
                        continue;
                    }
                    if let Some(addr) = addrs.first() {
                        self.emit(NodeEvent::PeerDiscovered {
                            peer,
                            addr: addr.clone(),
                        });
                    }
                    // Only the smaller peer id dials, so the pair ends up
                    // with one connection; the other waits, then dials
                    // anyway in case only it saw the announcement.
                    if self.local < peer {
                        self.dial_discovered(peer, addrs);
                    } else {
                        self.discovered
                            .entry(peer)
                            .or_insert_with(|| (addrs, Instant::now() + Duration::from_secs(10)));
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
        }
    }

    fn on_sync_event(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let id = self.next_inbound;
                    self.next_inbound += 1;
                    self.inbound.insert(id, (peer, channel));
                    self.to_engine(Input::Request { peer, id, request });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(tag) = self.outbound.remove(&request_id) {
                        self.to_engine(Input::Response {
                            peer,
                            tag,
                            response,
                        });
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(tag) = self.outbound.remove(&request_id) else {
                    return;
                };
                match &error {
                    request_response::OutboundFailure::Io(e)
                        if e.kind() == std::io::ErrorKind::InvalidData =>
                    {
                        self.to_engine(Input::Malformed {
                            peer,
                            error: e.to_string(),
                        });
                    }
                    _ => self.to_engine(Input::RequestFailed {
                        peer,
                        tag,
                        error: error.to_string(),
                    }),
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => match &error {
                request_response::InboundFailure::Io(e)
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    self.to_engine(Input::Malformed {
                        peer,
                        error: e.to_string(),
                    });
                }
                _ => tracing::debug!(%peer, %error, "inbound request failed"),
            },
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_output(&mut self, out: Output<PeerId>) {
        match out {
            Output::Request { peer, tag, request } => {
                if !self.connected.contains(&peer) {
                    self.to_engine(Input::RequestFailed {
                        peer,
                        tag,
                        error: "not connected".into(),
                    });
                    return;
                }
                let rid = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.outbound.insert(rid, tag);
            }
            Output::Respond { id, response, .. } => {
                if let Some((_, channel)) = self.inbound.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
            Output::Announce(announce) => {
                let bytes = encode_announce(&announce);
                let topic = self.topic.clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    tracing::debug!(error = %e, "announcement not published; telling peers directly");
                    if !self.connected.is_empty() {
                        self.to_engine(Input::AnnounceFailed);
                    }
                }
            }
            Output::Ban { peer, reason } => {
                tracing::warn!(%peer, %reason, "banning peer for {:?}", self.config.ban_duration);
                self.banned.insert(
                    peer,
                    (Instant::now() + self.config.ban_duration, reason.clone()),
                );
                let waiting: Vec<u64> = self
                    .syncs
                    .iter()
                    .filter(|(_, w)| w.peer == Some(peer))
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    if let Some(w) = self.syncs.remove(&id) {
                        let _ = w.reply.send(Err(NetError::Banned {
                            peer,
                            reason: reason.clone(),
                        }));
                    }
                }
                let _ = self.swarm.disconnect_peer_id(peer);
                self.emit(NodeEvent::PeerBanned { peer, reason });
            }
            Output::Disconnect { peer, reason } => {
                tracing::info!(%peer, %reason, "disconnecting peer");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Output::Event(ev) => self.on_sync_progress(ev),
        }
    }

    fn on_sync_progress(&mut self, ev: SyncEvent<PeerId>) {
        match ev {
            SyncEvent::Progress {
                peer,
                feed,
                entries,
            } => self.emit(NodeEvent::SyncProgress {
                peer,
                feed,
                entries,
            }),
            SyncEvent::Idle { peer, stats } => {
                tracing::debug!(%peer, ?stats, "in sync");
                if let Some(book) = self.book.as_mut() {
                    book.synced(peer, now_ms());
                }
                let done: Vec<u64> = self
                    .syncs
                    .iter()
                    .filter(|(_, w)| w.peer == Some(peer))
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    if let Some(w) = self.syncs.remove(&id) {
                        let _ = w.reply.send(Ok(SyncSummary {
                            peer,
                            pulled: stats.pulled,
                            pushed_estimate: stats.served,
                            feeds: stats.feeds,
                        }));
                    }
                }
                self.emit(NodeEvent::SyncIdle { peer, stats });
            }
            SyncEvent::ForkFound { feed, seq, peer } => {
                self.emit(NodeEvent::ForkFound { feed, seq, peer });
            }
        }
    }
}
