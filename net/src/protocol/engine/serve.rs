//! Serving: answering a peer's requests (heads, pages, fork proofs) from
//! the store, and announcing new local heads by gossip.

use std::collections::HashSet;
use std::time::Instant;

use kappadb_core::{FeedId, StoreError};

use super::{Engine, Output, PeerKey};
use crate::protocol::store::SyncStore;
use crate::protocol::wire::{
    Announce, HeadInfo, MAX_FORK_PROOFS_PER_ANNOUNCE, MAX_FORK_PROOFS_PER_MESSAGE,
    MAX_HEADS_PER_ANNOUNCE, Page, Request, Response, Want, entry_wire_size,
};

impl<P: PeerKey, S: SyncStore> Engine<P, S> {
    pub(super) fn serve(&mut self, peer: P, id: u64, request: Request) -> Result<(), StoreError> {
        let response = match request {
            Request::Heads(heads) => {
                self.plain_heads_arrived(&peer);
                self.apply_heads_message(peer, &heads, true);
                // Answer with what we hold and whether we miss anything
                // of theirs, which needs their heads considered first.
                self.schedule(peer)?;
                Response::Heads(self.idle_flag_for(peer))
            }
            Request::Want(want) => Response::Page(self.page_for(peer, want)),
            Request::ForkProofs(feeds) => {
                let wanted: Vec<FeedId> = feeds
                    .into_iter()
                    .take(MAX_FORK_PROOFS_PER_MESSAGE)
                    .filter(|f| !self.blocked.contains(f))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let proofs = self.store.fork_proofs(&wanted)?;
                Response::ForkProofs(proofs.iter().map(|p| p.to_unchecked()).collect())
            }
            Request::Reconcile(req) => match self.serve_reconcile(peer, &req) {
                Some(response) => response,
                None => return Ok(()),
            },
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
        // `page_entries >= 1` (SyncConfig::check).
        let to = want.to_seq.min(
            want.from_seq
                .saturating_add(limits.page_entries.saturating_sub(1)),
        );
        let mut bytes = 0;
        for item in self.store.feed_range(&want.feed, want.from_seq, to) {
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

    /// Announce the heads that moved since the last announcement, at most
    /// every [`super::SyncConfig::announce_interval`] and in at most
    /// [`super::SyncConfig::max_announces_per_round`] messages; what does
    /// not fit waits for the next round.
    pub(super) fn maybe_announce(&mut self, now: Instant) {
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
        let max_heads = MAX_HEADS_PER_ANNOUNCE * self.config.max_announces_per_round;
        let max_forks = MAX_FORK_PROOFS_PER_ANNOUNCE * self.config.max_announces_per_round;
        let mut heads = Vec::new();
        let mut forked = Vec::new();
        for info in self.store.feeds() {
            if self.blocked.contains(&info.feed) {
                continue;
            }
            if info.fork.is_some() && !self.announced_forks.contains(&info.feed) {
                if forked.len() < max_forks {
                    self.announced_forks.insert(info.feed);
                    forked.push(info.feed);
                } else {
                    self.local_dirty = true;
                }
            }
            if self.announced.get(&info.feed) != Some(&info.head.seq) {
                if heads.len() < max_heads {
                    self.announced.insert(info.feed, info.head.seq);
                    heads.push(HeadInfo {
                        feed: info.feed,
                        seq: info.head.seq,
                        id: info.head.id,
                    });
                } else {
                    // Next round.
                    self.local_dirty = true;
                }
            }
        }
        if self.local_dirty {
            self.announce_due = Some(now + self.config.announce_interval);
        }
        let forks = match self.store.fork_proofs(&forked) {
            Ok(proofs) => proofs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read fork proofs to announce");
                Vec::new()
            }
        };
        let mut heads = heads.into_iter().peekable();
        let mut forks = forks.into_iter().peekable();
        while heads.peek().is_some() || forks.peek().is_some() {
            let announce = Announce {
                heads: heads.by_ref().take(MAX_HEADS_PER_ANNOUNCE).collect(),
                forks: forks
                    .by_ref()
                    .take(MAX_FORK_PROOFS_PER_ANNOUNCE)
                    .map(|p| p.to_unchecked())
                    .collect(),
            };
            self.out.push(Output::Announce(announce));
        }
    }
}
