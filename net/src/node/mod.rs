//! The node: a tokio libp2p swarm that runs the sync [`Engine`] for one
//! database, and the one-shot [`sync_once`].
//!
//! Three parts talk over bounded queues (see `pipeline.rs`):
//!
//! - the **swarm task** (tokio, `swarm.rs`) owns the libp2p swarm:
//!   connections, dials and redials (`dialer.rs`), bans and the gossip
//!   rate limit (`bans.rs`), one-shot sync waiters (`waiters.rs`), mDNS,
//!   gossip, the address book;
//! - the **check thread** (`kappadb-check`) sits between them: it passes
//!   the swarm's messages on in order and checks each received page and
//!   fork proof on the way ([`CheckedEntries`]: signatures, on all cores),
//!   so the next page is checked while the sync thread stores the previous
//!   one;
//! - the **sync thread** (`kappadb-sync`) owns the [`Engine`], the only
//!   handle on the database it writes with, and the block list. Storing a
//!   page (`ingest_checked`: chain rules, fsync, index) blocks that thread
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
//!
//! [`CheckedEntries`]: kappadb_core::CheckedEntries

mod bans;
mod dialer;
mod pipeline;
mod swarm;
mod waiters;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kappadb_core::{Db, FeedId};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use self::bans::{Bans, GossipGate};
use self::dialer::{Dialer, split_peer};
use self::swarm::{Runner, Shared};
use self::waiters::Waiters;
use crate::behaviour::{
    Behaviour, BehaviourConfig, ConnectionLimitsConfig, MAX_GOSSIP_BYTES, build_transport,
    gossip_topic, identity_keypair,
};
use crate::blocklist::BlockList;
use crate::error::NetError;
use crate::peers::{AddressBook, PeerRecord};
use crate::policy::FollowFile;
use crate::protocol::{Engine, Limits, SyncConfig, SyncStats};

/// Commands a handle may have waiting for the swarm task.
const COMMAND_DEPTH: usize = 64;

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
    /// Caps on inbound and established connections.
    pub connections: ConnectionLimitsConfig,
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
            connections: ConnectionLimitsConfig::default(),
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
        /// Their size as received (see [`crate::protocol::ENTRY_OVERHEAD`]).
        bytes: u64,
        /// Entries the peer still holds of the feeds being pulled from it
        /// now, as far as its heads say.
        remaining: u64,
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
    /// A feed is followed again.
    FeedFollowed {
        /// The feed.
        feed: FeedId,
    },
    /// A feed is no longer followed, and what was held of it is forgotten.
    FeedUnfollowed {
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
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
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
    Follow {
        feed: FeedId,
        follow: bool,
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
            .await
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
        self.set_blocked(feed, true).await
    }

    /// Undo [`NodeHandle::block`]. Returns false if it was not blocked.
    pub async fn unblock(&self, feed: FeedId) -> Result<bool, NetError> {
        self.set_blocked(feed, false).await
    }

    /// Follow a feed again (see [`crate::policy`]). Returns false if it was
    /// followed already.
    pub async fn follow(&self, feed: FeedId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Follow {
            feed,
            follow: true,
            reply,
        })
        .await?
    }

    /// Stop following a feed: it is neither requested nor stored any more,
    /// and what was held of it is forgotten (its space comes back with
    /// compaction). Returns false if it was not followed.
    pub async fn unfollow(&self, feed: FeedId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Follow {
            feed,
            follow: false,
            reply,
        })
        .await?
    }

    async fn set_blocked(&self, feed: FeedId, block: bool) -> Result<bool, NetError> {
        self.ask(|reply| Command::Block { feed, block, reply })
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
        if self
            .commands
            .send(Command::Shutdown { reply: tx })
            .await
            .is_ok()
        {
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

/// Fail if another process listens on `addr`'s TCP port already.
///
/// libp2p's TCP transport sets `SO_REUSEPORT` on its listeners, so a
/// second node on the same port would bind it too and the kernel would
/// share incoming connections between the two, silently. A plain bind
/// (`SO_REUSEADDR` only, as the standard library does) is refused while
/// any socket listens there, with or without `SO_REUSEPORT`, so trying one
/// first turns that into an error. Port 0 and non-TCP addresses pass.
fn refuse_port_in_use(addr: &Multiaddr) -> Result<(), NetError> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(n) => port = Some(n),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NetError::Listen {
            addr: addr.clone(),
            reason: format!(
                "TCP port {port} is already in use (another `kappa serve`, or another program); pick another with --listen"
            ),
        }),
        // Anything else (no such address here, ...) is libp2p's to report.
        Err(_) => Ok(()),
    }
}

async fn spawn(b: NodeBuilder) -> Result<NodeHandle, NetError> {
    let db = b.db;
    let keypair = identity_keypair(db.signing_key());
    let local = keypair.public().to_peer_id();
    let network = db.network_key()?;
    let blocklist = BlockList::load(db.dir())?;
    let follow = FollowFile::load(db.dir())?;
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
            connections: config.connections.clone(),
            reconcile: config.sync.reconcile,
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
        refuse_port_in_use(&addr)?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id, addr);
    }

    let feed_id = db.feed_id();
    let engine = Engine::new(db, config.sync.clone())
        .map_err(|e| NetError::Setup(e.to_string()))?
        .with_local(local)
        .with_blocked(blocklist.feeds().copied())
        .with_follow(follow.policy().clone());
    let (to_check, from_sync) = pipeline::start(engine, blocklist, follow)?;

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_DEPTH);
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
        to_check,
        backlog: VecDeque::new(),
        from_sync,
        commands: cmd_rx,
        events: events.clone(),
        shared: shared.clone(),
        book,
        redial: b.redial,
        bans: Bans::new(config.ban_duration),
        gossip: GossipGate::default(),
        dialer: Dialer::new(local, config.max_redial_backoff),
        waiters: Waiters::default(),
        inbound: HashMap::new(),
        next_inbound: 1,
        outbound: HashMap::new(),
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
        runner.dialer.add_target(peer, vec![addr]);
    }
    if runner.redial {
        let known: Vec<PeerRecord> = runner.book.as_ref().map(|b| b.peers()).unwrap_or_default();
        for rec in known {
            if rec.peer_id != local && !rec.addrs.is_empty() {
                runner.dialer.add_target(Some(rec.peer_id), rec.addrs);
            }
        }
    }
    runner
        .dialer
        .dial_due_targets(&mut runner.swarm, &runner.bans, &runner.connected);

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
