//! Session bookkeeping: what the engine knows of each peer (its heads,
//! what we told it, what we pull from it), claims on feeds, and the heads
//! messages with their idle flags.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use kappadb_core::{CheckedEntries, EntryId, FeedId};

use super::{Engine, Output, PeerKey, SyncEvent, SyncStats};
use crate::protocol::reconcile::{HeadSet, Reconciler};
use crate::protocol::store::SyncStore;
use crate::protocol::wire::{
    HeadInfo, Heads, MAX_FORK_PROOFS_PER_MESSAGE, MAX_HEADS_PER_MESSAGE, entry_wire_size,
};

/// Ranges of one feed being pulled from one peer.
#[derive(Debug, Default)]
pub(super) struct Pull {
    /// Ranges not yet requested, in order.
    pub(super) ranges: VecDeque<(u64, u64)>,
    /// Wants of this feed in flight.
    pub(super) in_flight: usize,
}

/// The store when a reconciliation took its snapshot of the heads.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Snap {
    /// [`SyncStore::heads_version`] just before the snapshot.
    pub(super) version: Option<u64>,
    /// Whether any feed was forked.
    pub(super) forks: bool,
}

/// Where a session's first heads exchange stands.
#[derive(Debug, Default)]
pub(super) enum Exchange {
    /// The peer starts the reconciliation; this side waits for it (and
    /// falls back to [`Exchange::Plain`] if plain heads come instead).
    Waiting,
    /// This side starts a reconciliation at the next step.
    Start,
    /// This side's reconciliation is under way, a message in flight.
    Running(Box<Reconciler>),
    /// Settled; the message that tells the peer so is in flight (heads
    /// requests wait for its answer, so that none overtakes it).
    Finishing(Box<Reconciler>),
    /// Reconciled: heads travel as deltas from here on.
    Done,
    /// The plain exchange: all heads, then deltas (an older peer, or
    /// reconciliation off).
    #[default]
    Plain,
}

impl Exchange {
    /// Whether heads requests may go out: not while a reconciliation is
    /// under way (`told` would be empty, so they would carry everything).
    pub(super) fn heads_may_flow(&self) -> bool {
        matches!(self, Exchange::Done | Exchange::Plain)
    }

    /// Whether the peer takes part in reconciliations.
    pub(super) fn reconciles(&self) -> bool {
        !matches!(self, Exchange::Plain)
    }
}

#[derive(Debug, Default)]
pub(super) struct Session {
    /// The first heads exchange of this connection.
    pub(super) exchange: Exchange,
    /// The reconciliation the peer started, which this side answers.
    pub(super) answering: Option<Box<Reconciler>>,
    /// Since when this side waits for the peer to start (the first step
    /// after connecting in [`Exchange::Waiting`]).
    pub(super) waiting_since: Option<std::time::Instant>,
    /// What the peer holds, as far as it told us.
    pub(super) remote: HashMap<FeedId, (u64, EntryId)>,
    /// True once the peer sent heads with `more == false`.
    pub(super) remote_complete: bool,
    /// The peer's `idle` flag from its newest heads message.
    pub(super) remote_idle: bool,
    /// `serial` of the newest heads message received.
    pub(super) recv_serial: u64,
    /// `serial` of the last heads message sent.
    pub(super) sent_serial: u64,
    /// The seq of each feed as we last told the peer.
    pub(super) told: HashMap<FeedId, u64>,
    pub(super) told_forks: HashSet<FeedId>,
    /// What the last reconciliation settled: the peer knows every head
    /// of this set, unless `told` says otherwise (it is consulted first).
    pub(super) told_base: Option<HeadSet>,
    /// The store as this side's reconciliation and the one it answers
    /// saw it when they took their snapshots.
    pub(super) own_snap: Snap,
    pub(super) answer_snap: Snap,
    /// The store's heads version when the peer was last told every head
    /// and fork (`None`: not since `told` last changed otherwise).
    pub(super) told_all: Option<u64>,
    pub(super) told_idle: Option<bool>,
    pub(super) heads_in_flight: bool,
    pub(super) heads_pending: bool,
    /// Feeds to (re)consider pulling.
    pub(super) todo: BTreeSet<FeedId>,
    /// Feeds we miss but another session is pulling.
    pub(super) waiting: BTreeSet<FeedId>,
    pub(super) pulls: BTreeMap<FeedId, Pull>,
    pub(super) wants_in_flight: usize,
    /// Pages received (and checked) and not yet stored, by (feed, first
    /// seq).
    buffered: BTreeMap<(FeedId, u64), CheckedEntries>,
    // Invariant: the sum of `wire_size` over `buffered`.
    buffered_bytes: usize,
    pub(super) proofs_wanted: BTreeSet<FeedId>,
    pub(super) proofs_in_flight: bool,
    /// Remote seqs known to agree with our chain.
    pub(super) checked: HashMap<FeedId, u64>,
    pub(super) idle: bool,
    pub(super) synced: bool,
    pub(super) failures: u32,
    pub(super) stats: SyncStats,
    touched: HashSet<FeedId>,
}

impl Session {
    pub(super) fn opened(exchange: Exchange) -> Self {
        Session {
            exchange,
            heads_pending: true,
            ..Session::default()
        }
    }

    /// Forget what we told the peer and what it told us about being idle,
    /// so the next exchange starts over (a resync).
    /// The seq of `feed` as last told to the peer.
    pub(super) fn told_seq(&self, feed: &FeedId) -> Option<u64> {
        match self.told.get(feed) {
            Some(seq) => Some(*seq),
            None => self.told_base.as_ref().and_then(|b| b.seq_of(feed)),
        }
    }

    /// Forget everything the peer was told (per feed, the reconciled
    /// baseline, forks), so the next heads exchange tells it all again.
    pub(super) fn forget_told(&mut self) {
        self.told_all = None;
        self.told_base = None;
        self.told.clear();
        self.told_forks.clear();
    }

    pub(super) fn restart(&mut self) {
        self.forget_told();
        self.told_idle = None;
        self.heads_pending = true;
        self.remote_idle = false;
        self.synced = false;
        self.checked.clear();
    }

    /// A pull is finished when nothing of it is left to request, in flight,
    /// or buffered waiting to be stored.
    fn pull_finished(&self, feed: &FeedId, pull: &Pull) -> bool {
        pull.ranges.is_empty() && pull.in_flight == 0 && !self.has_buffered(feed)
    }

    /// Remove the finished pulls; returns their feeds.
    pub(super) fn take_finished_pulls(&mut self) -> Vec<FeedId> {
        let done: Vec<FeedId> = self
            .pulls
            .iter()
            .filter(|(feed, pull)| self.pull_finished(feed, pull))
            .map(|(feed, _)| *feed)
            .collect();
        for feed in &done {
            self.pulls.remove(feed);
        }
        done
    }

    pub(super) fn is_idle(&self) -> bool {
        self.remote_complete
            && self.todo.is_empty()
            && self.waiting.is_empty()
            && self.pulls.is_empty()
            && self.wants_in_flight == 0
            && self.buffered.is_empty()
            && self.proofs_wanted.is_empty()
            && !self.proofs_in_flight
    }

    pub(super) fn touch(&mut self, feed: FeedId) {
        if self.touched.insert(feed) {
            self.stats.feeds = self.touched.len();
        }
    }

    /// One want of `feed` was answered or failed.
    pub(super) fn want_done(&mut self, feed: &FeedId) -> bool {
        let Some(pull) = self.pulls.get_mut(feed) else {
            return false;
        };
        pull.in_flight = pull.in_flight.saturating_sub(1);
        self.wants_in_flight = self.wants_in_flight.saturating_sub(1);
        true
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub(super) fn has_buffered(&self, feed: &FeedId) -> bool {
        self.buffered
            .range((*feed, 0)..=(*feed, u64::MAX))
            .next()
            .is_some()
    }

    pub(super) fn buffered(&self) -> &BTreeMap<(FeedId, u64), CheckedEntries> {
        &self.buffered
    }

    /// Keep a checked page until it can be stored.
    pub(super) fn buffer(&mut self, feed: FeedId, from: u64, entries: CheckedEntries) {
        self.buffered_bytes += wire_size(&entries);
        if let Some(old) = self.buffered.insert((feed, from), entries) {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(wire_size(&old));
        }
    }

    /// Take a buffered page out.
    pub(super) fn unbuffer(&mut self, key: &(FeedId, u64)) -> Option<CheckedEntries> {
        let entries = self.buffered.remove(key)?;
        self.buffered_bytes = self.buffered_bytes.saturating_sub(wire_size(&entries));
        Some(entries)
    }

    /// Drop every buffered page of `feed`.
    pub(super) fn unbuffer_feed(&mut self, feed: &FeedId) {
        let keys: Vec<(FeedId, u64)> = self
            .buffered
            .range((*feed, 0)..=(*feed, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.unbuffer(&k);
        }
    }
}

fn trace_heads<P: std::fmt::Debug>(peer: &P, heads: &Heads, what: &'static str) {
    tracing::trace!(
        ?peer,
        n_heads = heads.heads.len(),
        idle = heads.idle,
        more = heads.more,
        serial = heads.serial,
        "{what}"
    );
}

/// Bytes a buffered page counts for.
fn wire_size(entries: &CheckedEntries) -> usize {
    entries.entries().iter().map(entry_wire_size).sum()
}

impl<P: PeerKey, S: SyncStore> Engine<P, S> {
    pub(super) fn end_session(&mut self, peer: &P) {
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
    pub(super) fn release(&mut self, feed: &FeedId, owner: &P) {
        if self.claims.get(feed) == Some(owner) {
            self.claims.remove(feed);
            for s in self.sessions.values_mut() {
                if s.waiting.remove(feed) {
                    s.todo.insert(*feed);
                }
            }
        }
    }

    /// Stop pulling `feed` from `peer`: its wants in flight are answered
    /// into nothing (their tags stay, marked cancelled), its buffered pages
    /// are dropped, its claim released.
    pub(super) fn cancel_pull(&mut self, peer: &P, feed: &FeedId) {
        if let Some(s) = self.sessions.get_mut(peer) {
            if let Some(pull) = s.pulls.remove(feed) {
                s.wants_in_flight = s.wants_in_flight.saturating_sub(pull.in_flight);
                for (p, pending) in self.tags.values_mut() {
                    if p == peer
                        && let super::Pending::Want(w) = pending
                        && w.feed == *feed
                    {
                        w.from_seq = 0;
                        w.to_seq = 0;
                    }
                }
            }
            s.unbuffer_feed(feed);
        }
        self.release(feed, peer);
    }

    pub(super) fn cancel_feed_everywhere(&mut self, feed: &FeedId) {
        let peers: Vec<P> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.cancel_pull(&peer, feed);
        }
    }

    /// Take in heads a peer told us (in a heads message, an announcement
    /// or a reconciliation; the callers bound how many).
    pub(super) fn apply_heads(&mut self, peer: P, heads: &[HeadInfo], forks: &[(FeedId, u64)]) {
        let blocked = &self.blocked;
        let follow = &self.follow;
        let store = &self.store;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        for h in heads {
            // Our own feed longer there: hold appends until it is here.
            store.note_remote_head(&h.feed, h.seq);
            // Unfollowed heads are kept (a later follow pulls them at once)
            // but not pulled: `needed` says no.
            if h.seq == 0 || blocked.contains(&h.feed) {
                continue;
            }
            let changed = match s.remote.get(&h.feed) {
                Some((seq, id)) => h.seq > *seq || (h.seq == *seq && h.id != *id),
                None => true,
            };
            if changed {
                s.remote.insert(h.feed, (h.seq, h.id));
                if follow.wants(&h.feed) {
                    s.todo.insert(h.feed);
                }
            }
        }
        for (feed, seq) in forks.iter().take(MAX_FORK_PROOFS_PER_MESSAGE) {
            if blocked.contains(feed) || !follow.wants(feed) {
                continue;
            }
            if store.fork(feed).is_none_or(|f| f.seq > *seq) {
                s.proofs_wanted.insert(*feed);
            }
        }
    }

    /// Take in a heads message. Heads travel in requests only; a
    /// response carries the responder's idle flag.
    pub(super) fn apply_heads_message(&mut self, peer: P, heads: &Heads, is_request: bool) {
        let n = heads.heads.len().min(MAX_HEADS_PER_MESSAGE);
        self.apply_heads(peer, &heads.heads[..n], &heads.forks);
        trace_heads(&peer, heads, "heads received");
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
    pub(super) fn idle_flag_for(&mut self, peer: P) -> Heads {
        let version = self.store.heads_version();
        let untold = {
            let Some(s) = self.sessions.get(&peer) else {
                return Heads::default();
            };
            let all_told = version.is_some() && s.told_all == version;
            !all_told
                && self.store.feeds().into_iter().any(|info| {
                    !self.blocked.contains(&info.feed)
                        && (s.told_seq(&info.feed) != Some(info.head.seq)
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
    pub(super) fn heads_for(&mut self, peer: P) -> Heads {
        let version = self.store.heads_version();
        let all_told = version.is_some()
            && self
                .sessions
                .get(&peer)
                .is_some_and(|s| s.told_all == version);
        // Nothing moved since the peer was told everything: no scan.
        let feeds = if all_told {
            Vec::new()
        } else {
            self.store.feeds()
        };
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
            if s.told_seq(&info.feed) == Some(info.head.seq) {
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
        s.told_all = if msg.more { None } else { version };
        s.idle = s.is_idle();
        msg.idle = s.idle && !msg.more;
        s.sent_serial += 1;
        msg.serial = s.sent_serial;
        trace_heads(&peer, &msg, "heads sent");
        s.told_idle = Some(msg.idle);
        s.heads_pending = msg.more;
        msg
    }

    pub(super) fn report_idle(&mut self, peer: P) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        s.idle = s.is_idle();
        let synced = s.idle && s.remote_idle && !s.heads_in_flight && !s.heads_pending;
        if synced && !s.synced {
            tracing::debug!(?peer, stats = ?s.stats, "in sync");
            self.store.note_synced();
            self.out.push(Output::Event(SyncEvent::Idle {
                peer,
                stats: s.stats,
            }));
        }
        s.synced = synced;
    }
}
