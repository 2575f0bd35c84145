//! The swarm task's event loop ([`Runner`]): libp2p events in, engine
//! outputs out, commands from the [`NodeHandle`](super::NodeHandle).
//!
//! It never blocks on the database. What it hands the engine goes into a
//! bounded queue (`pipeline`); while that queue is full the loop stops
//! reading the swarm, so back-pressure reaches the peers, and keeps
//! serving commands and engine outputs. Gossip never waits: an
//! announcement that finds the queue full is dropped (and not forwarded).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kappadb_core::now_ms;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::bans::{Admit, Bans, GossipGate};
use super::dialer::{Dialer, Purpose, split_peer};
use super::pipeline::{FromSync, ToCheck};
use super::waiters::Waiters;
use super::{Command, NodeEvent};
use crate::behaviour::{Behaviour, BehaviourEvent, feed_of_peer, is_not_in_network};
use crate::error::NetError;
use crate::peers::AddressBook;
use crate::protocol::{
    Input, Limits, Output, Request, Response, SyncError, SyncEvent, decode_announce,
    encode_announce,
};

/// The node's listen addresses and connected peers, read by the handle.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) listen_addrs: Vec<Multiaddr>,
    pub(super) connected: BTreeSet<PeerId>,
}

/// The swarm task's state.
pub(super) struct Runner {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) local: PeerId,
    pub(super) topic: gossipsub::IdentTopic,
    pub(super) gossip_limits: Limits,
    pub(super) to_check: mpsc::Sender<ToCheck>,
    /// What waits for room in `to_check`. Holds at most what one event,
    /// command or output produced while the queue was full, because the
    /// swarm is not polled while it is not empty.
    pub(super) backlog: VecDeque<ToCheck>,
    pub(super) from_sync: mpsc::Receiver<FromSync>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: broadcast::Sender<NodeEvent>,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) book: Option<AddressBook>,
    pub(super) redial: bool,
    pub(super) bans: Bans,
    pub(super) gossip: GossipGate,
    pub(super) dialer: Dialer,
    pub(super) waiters: Waiters,
    pub(super) inbound: HashMap<u64, (PeerId, ResponseChannel<Response>)>,
    pub(super) next_inbound: u64,
    pub(super) outbound: HashMap<OutboundRequestId, u64>,
    pub(super) connected: HashSet<PeerId>,
    pub(super) last_save: Instant,
    pub(super) stopping: bool,
    pub(super) shutdown_replies: Vec<oneshot::Sender<()>>,
    pub(super) fatal: Option<String>,
}

impl Runner {
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let blocked = !self.backlog.is_empty();
            let to_check = self.to_check.clone();
            tokio::select! {
                ev = self.swarm.select_next_some(), if !blocked => self.on_swarm_event(ev),
                permit = to_check.reserve(), if blocked => match permit {
                    Ok(permit) => {
                        if let Some(msg) = self.backlog.pop_front() {
                            permit.send(msg);
                        }
                    }
                    // The threads are gone; their `Stopped` follows.
                    Err(_) => self.backlog.clear(),
                },
                out = self.from_sync.recv() => match out {
                    Some(FromSync::Output(o)) => self.on_output(o),
                    Some(FromSync::Event(ev)) => self.emit(ev),
                    Some(FromSync::Fatal(e)) => self.fatal = Some(e),
                    Some(FromSync::Stopped) | None => break,
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

    /// Queue a message for the check thread, in order.
    fn send(&mut self, msg: ToCheck) {
        if self.backlog.is_empty() {
            match self.to_check.try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => self.backlog.push_back(msg),
            }
        } else {
            self.backlog.push_back(msg);
        }
    }

    fn input(&mut self, input: Input<PeerId>) {
        self.send(ToCheck::Input(input));
    }

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.send(ToCheck::Shutdown);
        }
    }

    fn finish(mut self) {
        self.waiters.stop_all();
        for p in self.dialer.drain() {
            if let Purpose::Dial { reply, .. } = p {
                let _ = reply.send(Err(NetError::Stopped));
            }
        }
        if let Some(book) = self.book.as_mut()
            && let Err(e) = book.save()
        {
            tracing::warn!(error = %e, "cannot save the address book");
        }
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
            .clear();
        let _ = self.events.send(NodeEvent::Stopped {
            error: self.fatal.take(),
        });
        for r in self.shutdown_replies.drain(..) {
            let _ = r.send(());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let (_, peer) = split_peer(&addr);
                if let Some(p) = peer.filter(|p| self.connected.contains(p)) {
                    let _ = reply.send(Ok(p));
                    return;
                }
                match self.dialer.dial_addr(&mut self.swarm, &self.bans, &addr) {
                    Ok(cid) => self.dialer.track(cid, Purpose::Dial { addr, reply }),
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
                let id = self.dialer.next_id();
                let (_, peer) = split_peer(&addr);
                let connected = peer.filter(|p| self.connected.contains(p));
                self.waiters
                    .add(id, addr.clone(), connected, timeout, reply);
                match connected {
                    Some(p) => self.input(Input::Resync(p)),
                    None => match self.dialer.dial_addr(&mut self.swarm, &self.bans, &addr) {
                        Ok(cid) => self.dialer.track(cid, Purpose::Sync(id)),
                        Err(e) => self.waiters.fail(id, e),
                    },
                }
            }
            Command::Block { feed, block, reply } => {
                self.send(ToCheck::Block { feed, block, reply });
            }
            Command::Follow {
                feed,
                follow,
                reply,
            } => {
                self.send(ToCheck::Follow {
                    feed,
                    follow,
                    reply,
                });
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
        self.bans.prune(now);
        self.gossip.prune(now);
        self.waiters.expire(now);
        if self.stopping {
            return;
        }
        self.dialer
            .dial_overdue(&mut self.swarm, &self.bans, &self.connected);
        self.dialer
            .dial_due_targets(&mut self.swarm, &self.bans, &self.connected);
        if now.duration_since(self.last_save) >= Duration::from_secs(10) {
            self.last_save = now;
            if let Some(book) = self.book.as_mut().filter(|b| b.is_dirty())
                && let Err(e) = book.save()
            {
                tracing::warn!(error = %e, "cannot save the address book");
            }
        }
    }

    pub(super) fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
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
        let purpose = self.dialer.take_purpose(&connection_id);
        if let Some(reason) = self.bans.reason(&peer).map(str::to_string) {
            tracing::debug!(%peer, "closing a connection from a banned peer");
            let _ = self.swarm.disconnect_peer_id(peer);
            if let Some(Purpose::Dial { reply, .. }) = purpose {
                let _ = reply.send(Err(NetError::Banned { peer, reason }));
            }
            return;
        }
        if num_established == 1 || !self.connected.contains(&peer) {
            tracing::info!(%peer, "connected");
            self.connected.insert(peer);
            self.shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .connected
                .insert(peer);
            self.input(Input::Connected(peer));
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
        self.dialer.on_connected(peer, purpose.as_ref());
        match purpose {
            Some(Purpose::Dial { reply, .. }) => {
                let _ = reply.send(Ok(peer));
            }
            Some(Purpose::Sync(id)) => {
                if let Some(w) = self.waiters.get_mut(id) {
                    w.peer = Some(peer);
                    self.input(Input::Resync(peer));
                }
            }
            Some(Purpose::Target(_)) | Some(Purpose::Discovered(_)) | None => {}
        }
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        if !self.connected.remove(&peer) {
            return;
        }
        tracing::info!(%peer, "disconnected");
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
            .remove(&peer);
        self.inbound.retain(|_, (p, _)| *p != peer);
        self.input(Input::Disconnected(peer));
        self.emit(NodeEvent::PeerDisconnected { peer });
        let banned = self.bans.reason(&peer).map(str::to_string);
        if banned.is_none() && !self.stopping {
            // A sync that relied on a connection that was closing: dial.
            for id in self.waiters.on_peer(peer) {
                let Some(w) = self.waiters.get_mut(id) else {
                    continue;
                };
                if w.dialed {
                    continue;
                }
                w.dialed = true;
                w.peer = None;
                let addr = w.addr.clone();
                match self.dialer.dial_addr(&mut self.swarm, &self.bans, &addr) {
                    Ok(cid) => self.dialer.track(cid, Purpose::Sync(id)),
                    Err(e) => self.waiters.fail(id, e),
                }
            }
        }
        self.waiters.fail_waiters(peer, || match &banned {
            Some(reason) => NetError::Banned {
                peer,
                reason: reason.clone(),
            },
            None => NetError::Disconnected { peer },
        });
        if let Some(book) = self.book.as_mut() {
            book.seen(peer, now_ms());
        }
        if self.stopping || banned.is_some() {
            return;
        }
        // Keep known peers connected.
        let book_addrs = (self.redial && !self.dialer.is_target(&peer))
            .then(|| self.book.as_ref().and_then(|b| b.get(&peer)))
            .flatten()
            .map(|r| r.addrs.clone());
        self.dialer.on_disconnected(peer, book_addrs);
    }

    fn on_dial_failed(&mut self, cid: ConnectionId, peer: Option<PeerId>, error: &DialError) {
        match self.dialer.take_purpose(&cid) {
            Some(Purpose::Dial { addr, reply }) => {
                let err = super::dialer::dial_error(&addr, error);
                tracing::info!(%addr, error = %err, "dial failed");
                let _ = reply.send(Err(err));
            }
            Some(Purpose::Sync(id)) => {
                if let Some(w) = self.waiters.get_mut(id) {
                    let err = super::dialer::dial_error(&w.addr, error);
                    tracing::info!(addr = %w.addr, error = %err, "dial failed");
                    self.waiters.fail(id, err);
                }
            }
            Some(Purpose::Target(id)) => self.dialer.target_failed(id, error),
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
            BehaviourEvent::Limits(never) | BehaviourEvent::PendingPerIp(never) => match never {},
            BehaviourEvent::Sync(ev) => self.on_sync_event(ev),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                if topic == self.topic.hash() {
                    self.input(Input::PeerSubscribed(peer_id));
                }
            }
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(book) = self.book.as_mut() {
                    let own = self
                        .shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .listen_addrs
                        .clone();
                    let addrs = crate::peers::useful_listen_addrs(
                        info.listen_addrs,
                        &info.observed_addr,
                        &own,
                    );
                    book.add_addrs(peer_id, addrs);
                }
            }
            BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                if self.stopping {
                    return;
                }
                let mut found: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    if peer != self.local
                        && !self.connected.contains(&peer)
                        && !self.bans.is_banned(&peer)
                    {
                        found.entry(peer).or_default().push(addr);
                    }
                }
                for (peer, addrs) in &found {
                    if let Some(addr) = addrs.first() {
                        self.emit(NodeEvent::PeerDiscovered {
                            peer: *peer,
                            addr: addr.clone(),
                        });
                    }
                }
                self.dialer.on_discovered(&mut self.swarm, found);
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
        }
    }

    /// An announcement: decode it, spend its publisher's budget, and tell
    /// gossipsub whether to forward it. Its fork proofs are checked on the
    /// check thread; a bad one gets the publisher banned there.
    fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let source = message.source.unwrap_or(via);
        let verdict = match decode_announce(&message.data, &self.gossip_limits) {
            Err(e) => {
                tracing::debug!(%source, error = %e, "rejecting a malformed announcement");
                gossipsub::MessageAcceptance::Reject
            }
            Ok(announce) => match self.gossip.admit(source, Instant::now()) {
                Admit::Accept => match self.to_check.try_send(ToCheck::Announce {
                    peer: source,
                    announce,
                }) {
                    Ok(()) => gossipsub::MessageAcceptance::Accept,
                    // Busy: the heads come again with the next exchange.
                    Err(_) => gossipsub::MessageAcceptance::Ignore,
                },
                Admit::Drop => gossipsub::MessageAcceptance::Ignore,
                Admit::Flood => {
                    self.on_output(Output::Ban {
                        peer: source,
                        reason: SyncError::AnnounceFlood,
                    });
                    gossipsub::MessageAcceptance::Reject
                }
            },
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &via, verdict);
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
                    self.input(Input::Request { peer, id, request });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(tag) = self.outbound.remove(&request_id) {
                        self.send(ToCheck::Response {
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
                        self.input(Input::Malformed {
                            peer,
                            error: e.to_string(),
                        });
                    }
                    _ => self.input(Input::RequestFailed {
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
                    self.input(Input::Malformed {
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
                    self.input(Input::RequestFailed {
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
                        self.input(Input::AnnounceFailed);
                    }
                }
            }
            Output::Ban { peer, reason } => {
                let reason = reason.to_string();
                tracing::warn!(%peer, %reason, "banning peer for {:?}", self.bans.duration());
                self.bans.ban(peer, reason.clone());
                self.waiters.fail_waiters(peer, || NetError::Banned {
                    peer,
                    reason: reason.clone(),
                });
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
                bytes,
                remaining,
            } => self.emit(NodeEvent::SyncProgress {
                peer,
                feed,
                entries,
                bytes,
                remaining,
            }),
            SyncEvent::Idle { peer, stats } => {
                tracing::debug!(%peer, ?stats, "in sync");
                if let Some(book) = self.book.as_mut() {
                    book.synced(peer, now_ms());
                }
                self.waiters.succeed(peer, stats);
                self.emit(NodeEvent::SyncIdle { peer, stats });
            }
            SyncEvent::ForkFound { feed, seq, peer } => {
                self.emit(NodeEvent::ForkFound { feed, seq, peer });
            }
        }
    }
}
