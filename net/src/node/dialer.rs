//! Dialing: the peers to keep connected to (targets, redialed with
//! exponential back-off), peers found by mDNS (with the tie-break that
//! leaves a pair with one connection), and why each outgoing connection
//! was opened.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::oneshot;

use super::bans::Bans;
use crate::behaviour::{Behaviour, is_not_in_network};
use crate::error::NetError;

/// Shortest wait before redialing a target.
pub(super) const MIN_BACKOFF: Duration = Duration::from_secs(1);

/// How long a peer found by mDNS gets to dial us (it has the smaller peer
/// id) before we dial it anyway, in case only we saw the announcement.
const DISCOVERED_GRACE: Duration = Duration::from_secs(10);

/// Why a connection was dialed.
pub(super) enum Purpose {
    /// `NodeHandle::dial`.
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    /// `NodeHandle::sync_with` (a waiter's id).
    Sync(u64),
    /// A target to keep connected (its id).
    Target(u64),
    /// A peer mDNS found.
    Discovered(PeerId),
}

/// A peer to keep connected to.
struct Target {
    peer: Option<PeerId>,
    addrs: Vec<Multiaddr>,
    next: Option<Instant>,
    backoff: Duration,
    dialing: bool,
}

/// Targets, mDNS discoveries and dials in progress.
pub(super) struct Dialer {
    local: PeerId,
    max_backoff: Duration,
    targets: HashMap<u64, Target>,
    next_id: u64,
    /// Peers found by mDNS that should dial us (tie-break), with the time
    /// after which we dial them anyway.
    discovered: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
    dialing: HashMap<ConnectionId, Purpose>,
}

impl Dialer {
    pub(super) fn new(local: PeerId, max_backoff: Duration) -> Self {
        Self {
            local,
            max_backoff,
            targets: HashMap::new(),
            next_id: 1,
            discovered: HashMap::new(),
            dialing: HashMap::new(),
        }
    }

    /// A fresh id (for targets and sync waiters alike).
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Why the connection `cid` was dialed, forgetting it.
    pub(super) fn take_purpose(&mut self, cid: &ConnectionId) -> Option<Purpose> {
        self.dialing.remove(cid)
    }

    /// Every dial in progress, for answering their callers at shutdown.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Purpose> + '_ {
        self.dialing.drain().map(|(_, p)| p)
    }

    /// Keep `peer` (or whoever answers at `addrs`) connected.
    pub(super) fn add_target(&mut self, peer: Option<PeerId>, addrs: Vec<Multiaddr>) {
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
        let id = self.next_id();
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

    pub(super) fn is_target(&self, peer: &PeerId) -> bool {
        self.targets.values().any(|t| t.peer == Some(*peer))
    }

    /// Dial every target whose wait is over.
    pub(super) fn dial_due_targets(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        bans: &Bans,
        connected: &HashSet<PeerId>,
    ) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.dialing && t.next.is_some_and(|n| n <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.targets.get_mut(&id) else {
                continue;
            };
            if let Some(p) = t.peer
                && (connected.contains(&p) || bans.is_banned(&p))
            {
                t.next = None;
                continue;
            }
            let opts = match t.peer {
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
            match swarm.dial(opts) {
                Ok(()) => {
                    t.dialing = true;
                    t.next = None;
                    self.dialing.insert(cid, Purpose::Target(id));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redial not started");
                    t.next = Some(now + t.backoff);
                    t.backoff = (t.backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// Dial an address a caller gave (it may end in `/p2p/PEER`). The
    /// caller then says what for ([`Dialer::track`]).
    pub(super) fn dial_addr(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        bans: &Bans,
        addr: &Multiaddr,
    ) -> Result<ConnectionId, NetError> {
        let opts = self.dial_opts(bans, addr)?;
        let cid = opts.connection_id();
        swarm.dial(opts).map_err(|e| dial_error(addr, &e))?;
        Ok(cid)
    }

    /// Remember why `cid` was dialed (events for it come later).
    pub(super) fn track(&mut self, cid: ConnectionId, purpose: Purpose) {
        self.dialing.insert(cid, purpose);
    }

    fn dial_opts(&self, bans: &Bans, addr: &Multiaddr) -> Result<DialOpts, NetError> {
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
            && let Some(reason) = bans.reason(&p)
        {
            return Err(NetError::Banned {
                peer: p,
                reason: reason.to_string(),
            });
        }
        Ok(match peer {
            Some(p) => DialOpts::peer_id(p)
                .addresses(vec![base])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(base).build(),
        })
    }

    /// mDNS found peers. Only the smaller peer id dials, so a pair ends up
    /// with one connection; the other waits [`DISCOVERED_GRACE`], then
    /// dials anyway.
    pub(super) fn on_discovered(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        found: HashMap<PeerId, Vec<Multiaddr>>,
    ) {
        for (peer, addrs) in found {
            if self.local < peer {
                self.dial_discovered(swarm, peer, addrs);
            } else {
                self.discovered
                    .entry(peer)
                    .or_insert_with(|| (addrs, Instant::now() + DISCOVERED_GRACE));
            }
        }
    }

    /// Dial the discovered peers that did not dial us in time.
    pub(super) fn dial_overdue(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        bans: &Bans,
        connected: &HashSet<PeerId>,
    ) {
        let now = Instant::now();
        let overdue: Vec<(PeerId, Vec<Multiaddr>)> = self
            .discovered
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(p, (a, _))| (*p, a.clone()))
            .collect();
        for (peer, addrs) in overdue {
            self.discovered.remove(&peer);
            if !connected.contains(&peer) && !bans.is_banned(&peer) {
                self.dial_discovered(swarm, peer, addrs);
            }
        }
    }

    fn dial_discovered(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let cid = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                self.dialing.insert(cid, Purpose::Discovered(peer));
            }
            Err(e) => tracing::debug!(%peer, error = %e, "not dialing a discovered peer"),
        }
    }

    /// A connection to `peer` is up: its targets stop redialing, and the
    /// target a dial was for learns its peer id.
    pub(super) fn on_connected(&mut self, peer: PeerId, purpose: Option<&Purpose>) {
        self.discovered.remove(&peer);
        if let Some(Purpose::Target(id)) = purpose
            && let Some(t) = self.targets.get_mut(id)
        {
            t.peer = Some(peer);
        }
        for t in self.targets.values_mut() {
            if t.peer == Some(peer) {
                t.next = None;
                t.backoff = MIN_BACKOFF;
                t.dialing = false;
            }
        }
    }

    /// The last connection to `peer` closed: redial its targets after
    /// their back-off. A peer of the address book (`book_addrs`) that was
    /// no target becomes one.
    pub(super) fn on_disconnected(&mut self, peer: PeerId, book_addrs: Option<Vec<Multiaddr>>) {
        let now = Instant::now();
        let mut known = false;
        for t in self.targets.values_mut() {
            if t.peer == Some(peer) {
                known = true;
                t.next = Some(now + t.backoff);
                t.backoff = (t.backoff * 2).min(self.max_backoff);
            }
        }
        if let Some(addrs) = book_addrs.filter(|a| !known && !a.is_empty()) {
            self.add_target(Some(peer), addrs);
            for t in self.targets.values_mut() {
                if t.peer == Some(peer) {
                    t.next = Some(now + MIN_BACKOFF * 2);
                }
            }
        }
    }

    /// A dial for a target failed: back off.
    pub(super) fn target_failed(&mut self, id: u64, error: &DialError) {
        let now = Instant::now();
        let max = self.max_backoff;
        if let Some(t) = self.targets.get_mut(&id) {
            t.dialing = false;
            if is_not_in_network(error) {
                tracing::warn!(peer = ?t.peer, addrs = ?t.addrs, "a known peer is not in this network");
                t.backoff = max;
            } else {
                tracing::debug!(peer = ?t.peer, %error, "redial failed");
            }
            t.next = Some(now + t.backoff);
            t.backoff = (t.backoff * 2).min(max);
        }
    }
}

/// The address without a trailing `/p2p/PEER`, and that peer.
pub(super) fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
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

/// The error a caller of `dial` or `sync_with` sees for a failed dial.
pub(super) fn dial_error(addr: &Multiaddr, err: &DialError) -> NetError {
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
