//! A connection's first heads exchange. By default a heads
//! reconciliation ([`crate::protocol::reconcile`]): the side with the
//! smaller peer key starts it with [`Request::Reconcile`], the other
//! answers each message, and once a message settles every range each side
//! knows the other's heads that differ from its own. The starter then
//! sends one last, settled message, so that the answering side knows it
//! is over too, and only then do heads requests (deltas from the
//! reconciled sets, with the idle flags) flow.
//!
//! The plain exchange (every head, in requests of
//! [`crate::protocol::MAX_HEADS_PER_MESSAGE`]) is the fallback: when a
//! reconciliation request fails or is refused (an older peer, which the
//! node's codec never sends it to), or when the peer sends plain heads
//! while this side waits for it to start.

use std::time::Instant;

use super::check::SyncError;
use super::session::Exchange;
use super::{Engine, Output, PeerKey, Pending};
use crate::protocol::reconcile::{HeadSet, Message, Reconciler};
use crate::protocol::store::SyncStore;
use crate::protocol::wire::{HeadInfo, Reconcile, Request, Response};

impl<P: PeerKey, S: SyncStore> Engine<P, S> {
    /// How a new session's first heads exchange runs.
    pub(super) fn first_exchange(&self, peer: &P) -> Exchange {
        if !self.config.reconcile {
            return Exchange::Plain;
        }
        match &self.local {
            Some(local) if local > peer => Exchange::Waiting,
            _ => Exchange::Start,
        }
    }

    /// This side's heads as a reconciliation sees them: every feed held
    /// but the blocked ones (as [`Self::heads_for`] tells them).
    fn head_set(&self) -> HeadSet {
        let blocked = &self.blocked;
        HeadSet::new(
            self.store
                .feeds()
                .into_iter()
                .filter(|info| info.head.seq > 0 && !blocked.contains(&info.feed))
                .map(|info| HeadInfo {
                    feed: info.feed,
                    seq: info.head.seq,
                    id: info.head.id,
                }),
        )
    }

    /// Send the first message of this side's reconciliation with `peer`.
    pub(super) fn start_reconcile(&mut self, peer: P) {
        let rec = Reconciler::new(self.head_set());
        let message = rec.start();
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        tracing::trace!(?peer, heads = rec.set().len(), "reconciliation started");
        s.exchange = Exchange::Running(Box::new(rec));
        self.send_reconcile(peer, true, message);
    }

    fn send_reconcile(&mut self, peer: P, first: bool, message: Message) {
        let tag = self.tag(peer, Pending::Reconcile);
        self.out.push(Output::Request {
            peer,
            tag,
            request: Request::Reconcile(Reconcile { first, message }),
        });
    }

    /// Forget this side's reconciliation with `peer`: an answer still in
    /// flight is ignored.
    pub(super) fn abandon_reconcile(&mut self, peer: &P) {
        self.tags
            .retain(|_, (p, pending)| !(p == peer && matches!(pending, Pending::Reconcile)));
    }

    /// The peer's answer to this side's reconciliation message.
    pub(super) fn on_reconcile_answer(&mut self, peer: P, tag: u64, message: &Message) {
        match self.answered(peer, tag) {
            None => return,
            Some(Pending::Reconcile) => {}
            Some(_) => return self.unexpected(peer, "a reconciliation message"),
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        match std::mem::take(&mut s.exchange) {
            // The answer to the last, settled message: over for both.
            Exchange::Finishing(rec) => self.reconciled(peer, *rec),
            Exchange::Running(mut rec) => match rec.receive(message) {
                Err(e) => self.ban(peer, SyncError::Reconcile(e)),
                // The peer settled everything: it knows it is over.
                Ok(None) if message.is_done() => self.reconciled(peer, *rec),
                // This side settled what was left: tell the peer.
                Ok(None) => {
                    s.exchange = Exchange::Finishing(rec);
                    self.send_reconcile(peer, false, Message::done());
                }
                Ok(Some(next)) => {
                    s.exchange = Exchange::Running(rec);
                    self.send_reconcile(peer, false, next);
                }
            },
            other => s.exchange = other,
        }
    }

    /// Answer a step of the peer's reconciliation; `None` when the peer
    /// was banned for it (no answer is due then).
    pub(super) fn serve_reconcile(&mut self, peer: P, req: &Reconcile) -> Option<Response> {
        if !self.config.reconcile {
            return Some(Response::Refused(
                "this node does not reconcile heads".into(),
            ));
        }
        let fresh = req.first.then(|| self.head_set());
        let s = self.sessions.get_mut(&peer)?;
        if let Some(set) = fresh {
            s.answering = Some(Box::new(Reconciler::new(set)));
        }
        let Some(rec) = s.answering.as_mut() else {
            return Some(Response::Refused("no reconciliation under way".into()));
        };
        match rec.receive(&req.message) {
            Err(e) => {
                self.ban(peer, SyncError::Reconcile(e));
                None
            }
            Ok(Some(next)) => Some(Response::Reconcile(next)),
            Ok(None) => {
                if let Some(rec) = s.answering.take() {
                    self.reconciled(peer, *rec);
                }
                Some(Response::Reconcile(Message::done()))
            }
        }
    }

    /// A reconciliation with `peer` is over: take in the peer's heads
    /// that differ, and count every head of this side's set as told (the
    /// peer learned those that differ; it holds the others). Heads
    /// requests with the idle flags follow.
    fn reconciled(&mut self, peer: P, rec: Reconciler) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        for h in rec.set().heads() {
            s.told.insert(h.feed, h.seq);
        }
        s.told_all = None;
        s.remote_complete = true;
        s.heads_pending = true;
        // Of two reconciliations under way, either settles both.
        if !matches!(s.exchange, Exchange::Running(_) | Exchange::Finishing(_)) {
            s.exchange = Exchange::Done;
        }
        let rounds = rec.rounds();
        let learned = rec.into_learned();
        tracing::debug!(?peer, rounds, differing = learned.len(), "heads reconciled");
        self.apply_heads(peer, &learned, &[]);
    }

    /// Sessions that waited too long for the peer to start: start from
    /// this side (an older peer refuses, and the plain exchange follows).
    pub(super) fn stop_waiting(&mut self, now: Instant) {
        let wait = self.config.reconcile_wait;
        for (peer, s) in self.sessions.iter_mut() {
            if !matches!(s.exchange, Exchange::Waiting) || s.answering.is_some() {
                s.waiting_since = None;
                continue;
            }
            let since = *s.waiting_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= wait {
                tracing::debug!(?peer, "the peer started no reconciliation: starting one");
                s.exchange = Exchange::Start;
                s.waiting_since = None;
            }
        }
    }

    /// A plain heads request arrived: if this side was waiting for the
    /// peer to start a reconciliation, the peer does not reconcile.
    pub(super) fn plain_heads_arrived(&mut self, peer: &P) {
        if let Some(s) = self.sessions.get_mut(peer)
            && matches!(s.exchange, Exchange::Waiting)
            && s.answering.is_none()
        {
            tracing::debug!(?peer, "peer sent plain heads: no reconciliation");
            s.exchange = Exchange::Plain;
        }
    }
}
