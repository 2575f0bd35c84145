//! Pulling: what to ask each peer for, the answers to our requests, and
//! storing checked pages and fork proofs in the store.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use kappadb_core::{CheckedEntries, EntryError, FeedId, ForkProof, StoreError};

use super::check::{SyncError, check_entries};
use super::session::{Exchange, Pull, Session};
use super::{ENTRY_OVERHEAD, Engine, Output, PeerKey, Pending, SyncEvent};
use crate::protocol::store::SyncStore;
use crate::protocol::wire::{
    HeadInfo, Heads, MAX_FORK_PROOFS_PER_ANNOUNCE, MAX_FORK_PROOFS_PER_MESSAGE,
    MAX_HEADS_PER_MESSAGE, Request, Want,
};

impl<P: PeerKey, S: SyncStore> Engine<P, S> {
    /// The request `tag` was answered: what it asked for, if it is still
    /// awaited from `peer`.
    pub(super) fn answered(&mut self, peer: P, tag: u64) -> Option<Pending> {
        let (owner, pending) = self.tags.remove(&tag)?;
        if owner != peer {
            return None;
        }
        let s = self.sessions.get_mut(&peer)?;
        s.failures = 0;
        Some(pending)
    }

    /// The peer answered with something the request did not ask for.
    pub(super) fn unexpected(&mut self, peer: P, kind: &'static str) {
        self.ban(peer, SyncError::UnexpectedAnswer(kind));
    }

    pub(super) fn on_heads_answer(&mut self, peer: P, tag: u64, heads: Heads) {
        match self.answered(peer, tag) {
            None => {}
            Some(Pending::Heads) => {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.heads_in_flight = false;
                }
                self.apply_heads_message(peer, &heads, false);
            }
            Some(_) => self.unexpected(peer, "heads"),
        }
    }

    pub(super) fn on_proofs_answer(
        &mut self,
        peer: P,
        tag: u64,
        proofs: Vec<(FeedId, Result<ForkProof, EntryError>)>,
    ) {
        let feeds = match self.answered(peer, tag) {
            None => return,
            Some(Pending::ForkProofs(feeds)) => feeds,
            Some(_) => return self.unexpected(peer, "fork proofs"),
        };
        if let Some(s) = self.sessions.get_mut(&peer) {
            s.proofs_in_flight = false;
        }
        let asked: HashSet<FeedId> = feeds.into_iter().collect();
        if proofs.len() > asked.len() || proofs.iter().any(|(feed, _)| !asked.contains(feed)) {
            return self.ban(peer, SyncError::UnaskedForkProofs);
        }
        let mut checked = Vec::with_capacity(proofs.len());
        for (_, proof) in proofs {
            match proof {
                Ok(p) => checked.push(p),
                Err(e) => return self.ban(peer, SyncError::InvalidForkProof(e)),
            }
        }
        self.proof_inbox
            .extend(checked.into_iter().map(|p| (Some(peer), p)));
    }

    pub(super) fn on_refused(&mut self, peer: P, tag: u64, reason: &str) {
        if let Some(pending) = self.answered(peer, tag) {
            tracing::debug!(?peer, %reason, "request refused");
            self.on_failure_pending(peer, pending);
        }
    }

    pub(super) fn on_page_answer(
        &mut self,
        peer: P,
        tag: u64,
        feed: FeedId,
        entries: CheckedEntries,
    ) {
        let want = match self.answered(peer, tag) {
            None => return,
            Some(Pending::Want(want)) => want,
            Some(_) => return self.unexpected(peer, "a page"),
        };
        if want.from_seq == 0 {
            // The pull was cancelled while this page was in flight.
            return;
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        if !s.want_done(&want.feed) {
            return;
        }
        if let Err(reason) = check_entries(&want, feed, entries.entries(), &self.config.limits) {
            return self.ban(peer, reason);
        }
        let n = entries.len() as u64;
        if n == 0 {
            // The peer does not hold what it announced (or blocked it).
            tracing::debug!(?peer, feed = %want.feed.fmt_short(), from = want.from_seq, "peer has no entries for a wanted range");
            if let Some(r) = s.remote.get_mut(&want.feed) {
                r.0 = r.0.min(want.from_seq.saturating_sub(1));
            }
            self.cancel_pull(&peer, &want.feed);
            return;
        }
        if n < want.len()
            && let Some(pull) = s.pulls.get_mut(&want.feed)
        {
            pull.ranges.push_front((want.from_seq + n, want.to_seq));
        }
        s.buffer(want.feed, want.from_seq, entries);
    }

    pub(super) fn on_failure(&mut self, peer: P, tag: u64, error: &str) {
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
                // We do not know what arrived: tell everything again, by
                // a new reconciliation where the peer takes part.
                s.forget_told();
                s.heads_pending = true;
                if matches!(s.exchange, Exchange::Done) {
                    s.exchange = Exchange::Start;
                }
            }
            Pending::Reconcile => {
                // An older peer (its codec refused the request) or a
                // failure: the plain exchange works with every peer.
                if matches!(s.exchange, Exchange::Running(_) | Exchange::Finishing(_)) {
                    tracing::debug!(?peer, "reconciliation failed: plain heads exchange");
                    s.exchange = Exchange::Plain;
                    // A stale baseline or version would skip heads the
                    // plain exchange must send.
                    s.forget_told();
                    s.heads_pending = true;
                }
            }
            Pending::Want(want) => {
                if want.from_seq != 0
                    && s.want_done(&want.feed)
                    && let Some(pull) = s.pulls.get_mut(&want.feed)
                {
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

    /// A gossip announcement. The publisher signed it (gossipsub), so a
    /// bad proof in it is the publisher's fault, session or not.
    pub(super) fn on_announce(
        &mut self,
        peer: P,
        heads: Vec<HeadInfo>,
        proofs: Vec<(FeedId, Result<ForkProof, EntryError>)>,
    ) {
        if proofs.len() > MAX_FORK_PROOFS_PER_ANNOUNCE {
            self.end_session(&peer);
            self.out.push(Output::Ban {
                peer,
                reason: SyncError::AnnounceTooLarge,
            });
            return;
        }
        let mut checked = Vec::new();
        for (feed, proof) in proofs {
            match proof {
                Ok(p) if self.wanted(&feed) => checked.push(p),
                Ok(_) => {}
                Err(e) => {
                    self.end_session(&peer);
                    self.out.push(Output::Ban {
                        peer,
                        reason: SyncError::InvalidForkProof(e),
                    });
                    return;
                }
            }
        }
        let from = self.sessions.contains_key(&peer).then_some(peer);
        self.proof_inbox
            .extend(checked.into_iter().map(|p| (from, p)));
        // An announcement says nothing about completeness or idleness.
        let n = heads.len().min(MAX_HEADS_PER_MESSAGE);
        self.apply_heads(peer, &heads[..n], &[]);
    }

    /// Store the checked fork proofs received since the last step, in one
    /// write.
    pub(super) fn store_proofs(&mut self) -> Result<(), StoreError> {
        if self.proof_inbox.is_empty() {
            return Ok(());
        }
        let (from, proofs): (Vec<Option<P>>, Vec<ForkProof>) =
            std::mem::take(&mut self.proof_inbox).into_iter().unzip();
        let keys: Vec<(FeedId, u64)> = proofs.iter().map(|p| (p.author(), p.seq())).collect();
        let news = self.store.ingest_fork_proofs(proofs)?;
        for ((feed, seq), (peer, new)) in keys.into_iter().zip(from.into_iter().zip(news)) {
            if !new {
                continue;
            }
            tracing::warn!(feed = %feed.fmt_short(), seq, "feed is forked");
            self.out
                .push(Output::Event(SyncEvent::ForkFound { feed, seq, peer }));
            self.local_dirty = true;
            self.cancel_feed_everywhere(&feed);
        }
        Ok(())
    }

    /// Store the pages of `peer` that follow the local heads.
    pub(super) fn ingest_ready(&mut self, peer: P) -> Result<(), StoreError> {
        loop {
            let Some(s) = self.sessions.get_mut(&peer) else {
                return Ok(());
            };
            if s.buffered().is_empty() {
                return Ok(());
            }
            let mut sim: HashMap<FeedId, u64> = HashMap::new();
            let mut before: HashMap<FeedId, u64> = HashMap::new();
            let mut take = Vec::new();
            let mut n_entries = 0;
            for ((feed, from), entries) in s.buffered() {
                let head = *sim.entry(*feed).or_insert_with(|| {
                    let seq = self.store.head(feed).map_or(0, |h| h.seq);
                    before.insert(*feed, seq);
                    seq
                });
                if *from > head.saturating_add(1) {
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
            let max_payload = self.store.max_payload();
            for key in &take {
                let Some(mut entries) = s.unbuffer(key) else {
                    continue;
                };
                if self.blocked.contains(&key.0) || !self.follow.wants(&key.0) {
                    continue;
                }
                // An entry over this database's payload limit is a
                // difference in settings, not a fault of the peer: store
                // up to it and stop pulling the feed there.
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
            for feed in &capped {
                s.unbuffer_feed(feed);
            }
            for feed in &capped {
                self.cancel_feed_everywhere(feed);
            }
            if batch.is_empty() {
                continue;
            }
            // Bytes received per feed and seq (payloads and the signed
            // header), to report what each new head brought.
            let mut sizes: HashMap<FeedId, Vec<(u64, u64)>> = HashMap::new();
            for e in batch.entries() {
                let len = e.payload.bytes().map_or(0, |p| p.len() as u64) + ENTRY_OVERHEAD;
                sizes
                    .entry(e.header.author)
                    .or_default()
                    .push((e.header.seq, len));
            }
            let report = self.store.ingest_checked(batch)?;
            if report.dropped {
                let why = report
                    .rejected
                    .iter()
                    .map(|(_, e)| e)
                    .find(|e| !e.is_policy())
                    .cloned()
                    .unwrap_or(EntryError::Malformed("invalid entries"));
                self.ban(peer, SyncError::InvalidEntry(why));
                return Ok(());
            }
            let Some(s) = self.sessions.get_mut(&peer) else {
                return Ok(());
            };
            s.stats.pulled += report.accepted as u64;
            // What the peer still has for the feeds pulled from it now, as
            // its heads say (a few feeds at a time, so this is cheap).
            let remaining: u64 = s
                .pulls
                .keys()
                .filter_map(|f| {
                    let (theirs, _) = s.remote.get(f)?;
                    let ours = self.store.head(f).map_or(0, |h| h.seq);
                    Some(theirs.saturating_sub(ours))
                })
                .sum();
            for (feed, seq) in &report.new_heads {
                let old = before.get(feed).copied().unwrap_or(0);
                s.touch(*feed);
                let bytes = sizes.get(feed).map_or(0, |v| {
                    v.iter()
                        .filter(|(s, _)| *s > old && *s <= *seq)
                        .map(|(_, n)| n)
                        .sum()
                });
                self.out.push(Output::Event(SyncEvent::Progress {
                    peer,
                    feed: *feed,
                    entries: seq.saturating_sub(old),
                    bytes,
                    remaining,
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
    pub(super) fn finish_pulls(&mut self, peer: P) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        for feed in s.take_finished_pulls() {
            // What we hold now agrees with the peer up to its head (or the
            // page proved a fork); do not probe that seq again.
            let local = self.store.head(&feed).map_or(0, |h| h.seq);
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
    pub(super) fn schedule(&mut self, peer: P) -> Result<bool, StoreError> {
        let mut released = false;
        let Some(mut s) = self.sessions.remove(&peer) else {
            return Ok(false);
        };
        // Consider announced feeds.
        while let Some(feed) = s.todo.pop_first() {
            if s.pulls.contains_key(&feed) {
                continue;
            }
            let range = match self.needed(&mut s, &feed) {
                Ok(Some(range)) => range,
                Ok(None) => continue,
                Err(e) => {
                    self.sessions.insert(peer, s);
                    return Err(e);
                }
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
        for feed in s.take_finished_pulls() {
            if self.claims.get(&feed) == Some(&peer) {
                self.claims.remove(&feed);
                released = true;
            }
        }
        self.send_wants(peer, &mut s);
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
        let start = matches!(s.exchange, Exchange::Start);
        let send_heads = s.heads_pending && !s.heads_in_flight && s.exchange.heads_may_flow();
        self.sessions.insert(peer, s);
        if start {
            self.start_reconcile(peer);
        }
        if send_heads {
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

    /// Send wants, feed by feed, within the per-peer limits.
    fn send_wants(&mut self, peer: P, s: &mut Session) {
        let limits = self.config.limits.clone();
        // `page_entries >= 1` (SyncConfig::check).
        let span = limits.page_entries.saturating_sub(1);
        'wants: while s.wants_in_flight < self.config.max_in_flight
            && s.buffered_bytes()
                .saturating_add((s.wants_in_flight + 1).saturating_mul(limits.page_bytes))
                <= self.config.max_buffered_bytes.max(limits.page_bytes)
        {
            for (feed, pull) in s.pulls.iter_mut() {
                let Some((from, to)) = pull.ranges.pop_front() else {
                    continue;
                };
                let end = to.min(from.saturating_add(span));
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
    }

    /// The range of `feed` to pull from the session's peer, if any.
    fn needed(&self, s: &mut Session, feed: &FeedId) -> Result<Option<(u64, u64)>, StoreError> {
        if !self.wanted(feed) {
            return Ok(None);
        }
        let Some(&(r_seq, r_id)) = s.remote.get(feed) else {
            return Ok(None);
        };
        let local = self.store.head(feed);
        let l_seq = local.map_or(0, |h| h.seq);
        // Nothing at or past a fork point, or past an entry over our
        // payload limit, can be stored.
        let fork = self.store.fork(feed);
        let cap = [fork.map(|f| f.seq), self.too_large.get(feed).copied()]
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
        if fork.is_some() {
            return Ok(None);
        }
        if s.checked.get(feed) == Some(&r_seq) {
            return Ok(None);
        }
        if self.store.entry_id(feed, r_seq)? == Some(r_id) {
            s.checked.insert(*feed, r_seq);
            Ok(None)
        } else {
            // Same seq, another entry: fetch it to prove the fork.
            Ok(Some((r_seq, r_seq)))
        }
    }
}
