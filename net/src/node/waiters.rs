//! One-shot syncs in progress ([`crate::NodeHandle::sync_with`]): who waits
//! for which peer, until when, and the one place that answers them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::error::NetError;
use crate::node::SyncSummary;
use crate::protocol::SyncStats;

/// A caller of `sync_with`, waiting.
pub(super) struct SyncWaiter {
    pub(super) addr: Multiaddr,
    /// The peer, once connected.
    pub(super) peer: Option<PeerId>,
    /// False while relying on a connection that existed already (which
    /// may be closing): if it closes, dial once.
    pub(super) dialed: bool,
    deadline: Instant,
    timeout: Duration,
    reply: oneshot::Sender<Result<SyncSummary, NetError>>,
}

/// Every waiting `sync_with`, by id.
#[derive(Default)]
pub(super) struct Waiters {
    waiting: HashMap<u64, SyncWaiter>,
}

impl Waiters {
    /// Wait for a sync with `addr` (`peer` when already connected).
    pub(super) fn add(
        &mut self,
        id: u64,
        addr: Multiaddr,
        peer: Option<PeerId>,
        timeout: Duration,
        reply: oneshot::Sender<Result<SyncSummary, NetError>>,
    ) {
        let waiter = SyncWaiter {
            addr,
            dialed: peer.is_none(),
            peer,
            deadline: Instant::now() + timeout,
            timeout,
            reply,
        };
        self.waiting.insert(id, waiter);
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut SyncWaiter> {
        self.waiting.get_mut(&id)
    }

    /// The ids of the waiters on `peer`.
    pub(super) fn on_peer(&self, peer: PeerId) -> Vec<u64> {
        self.waiting
            .iter()
            .filter(|(_, w)| w.peer == Some(peer))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Answer one waiter with an error.
    pub(super) fn fail(&mut self, id: u64, err: NetError) {
        if let Some(w) = self.waiting.remove(&id) {
            let _ = w.reply.send(Err(err));
        }
    }

    /// Answer every waiter on `peer` with an error made by `err`.
    pub(super) fn fail_waiters(&mut self, peer: PeerId, err: impl Fn() -> NetError) {
        for id in self.on_peer(peer) {
            self.fail(id, err());
        }
    }

    /// Answer every waiter on `peer`: the sync is done.
    pub(super) fn succeed(&mut self, peer: PeerId, stats: SyncStats) {
        for id in self.on_peer(peer) {
            if let Some(w) = self.waiting.remove(&id) {
                let _ = w.reply.send(Ok(SyncSummary {
                    peer,
                    pulled: stats.pulled,
                    pushed_estimate: stats.served,
                    feeds: stats.feeds,
                }));
            }
        }
    }

    /// Answer the waiters whose time is up.
    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(w) = self.waiting.remove(&id) {
                let _ = w.reply.send(Err(NetError::Timeout { after: w.timeout }));
            }
        }
    }

    /// Answer everyone: the node stopped.
    pub(super) fn stop_all(&mut self) {
        for (_, w) in self.waiting.drain() {
            let _ = w.reply.send(Err(NetError::Stopped));
        }
    }
}
