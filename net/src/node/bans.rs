//! Keeping misbehaving peers away: the node's one ban table, and the rate
//! limit on gossip announcements per publisher.
//!
//! The engine decides that a peer broke the protocol ([`crate::protocol::Output::Ban`]);
//! the swarm task records it here, disconnects the peer and refuses it
//! (incoming or outgoing) until the ban expires.
//!
//! Announcements cost the receiver a decode and, with fork proofs, two
//! signature checks each, and gossipsub forwards what it accepts. An
//! honest node sends at most `SyncConfig::max_announces_per_round`
//! messages per `announce_interval` (40 a second by default); each
//! publisher gets a bucket of [`GOSSIP_BURST`] messages refilled at
//! [`GOSSIP_RATE`] a second. Messages over it are dropped and not
//! forwarded; a publisher that goes on sending [`GOSSIP_FLOOD`] messages
//! over its budget is banned.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Announcements a publisher may send at once.
pub(super) const GOSSIP_BURST: f64 = 64.0;
/// Announcements a second a publisher may keep sending.
pub(super) const GOSSIP_RATE: f64 = 50.0;
/// Announcements over budget, before the budget recovers, that get the
/// publisher banned.
pub(super) const GOSSIP_FLOOD: u32 = 256;

/// Banned peers, each until a deadline, with the reason.
pub(super) struct Bans {
    duration: Duration,
    table: HashMap<PeerId, (Instant, String)>,
}

impl Bans {
    pub(super) fn new(duration: Duration) -> Self {
        Self {
            duration,
            table: HashMap::new(),
        }
    }

    pub(super) fn duration(&self) -> Duration {
        self.duration
    }

    /// Keep `peer` away for the ban duration (from now, again if it was
    /// banned already).
    pub(super) fn ban(&mut self, peer: PeerId, reason: String) {
        self.table
            .insert(peer, (Instant::now() + self.duration, reason));
    }

    /// Why `peer` is banned, if it is.
    pub(super) fn reason(&self, peer: &PeerId) -> Option<&str> {
        match self.table.get(peer) {
            Some((until, reason)) if *until > Instant::now() => Some(reason),
            _ => None,
        }
    }

    pub(super) fn is_banned(&self, peer: &PeerId) -> bool {
        self.reason(peer).is_some()
    }

    /// Forget expired bans.
    pub(super) fn prune(&mut self, now: Instant) {
        self.table.retain(|_, (until, _)| *until > now);
    }
}

/// What to do with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Take it and let gossipsub forward it.
    Accept,
    /// Drop it, do not forward it.
    Drop,
    /// Drop it and ban the publisher.
    Flood,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    over: u32,
}

/// The per-publisher announcement budget.
#[derive(Default)]
pub(super) struct GossipGate {
    buckets: HashMap<PeerId, Bucket>,
}

impl GossipGate {
    /// Spend one announcement of `source`'s budget.
    pub(super) fn admit(&mut self, source: PeerId, now: Instant) -> Admit {
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: GOSSIP_BURST,
            at: now,
            over: 0,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * GOSSIP_RATE).min(GOSSIP_BURST);
        b.at = now;
        if b.tokens >= GOSSIP_BURST {
            b.over = 0;
        }
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admit::Accept;
        }
        b.over += 1;
        if b.over >= GOSSIP_FLOOD {
            b.over = 0;
            Admit::Flood
        } else {
            Admit::Drop
        }
    }

    /// Forget publishers whose budget is full again.
    pub(super) fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * GOSSIP_RATE < GOSSIP_BURST
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_gate_allows_a_burst_then_the_rate_then_bans_a_flood() {
        let mut gate = GossipGate::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        for _ in 0..GOSSIP_BURST as usize {
            assert_eq!(gate.admit(peer, t0), Admit::Accept);
        }
        assert_eq!(gate.admit(peer, t0), Admit::Drop);
        // A second later, the rate's worth is back.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..GOSSIP_RATE as usize {
            assert_eq!(gate.admit(peer, t1), Admit::Accept);
        }
        // Keep flooding: banned once GOSSIP_FLOOD messages went over budget
        // (one already did, before the refill).
        let mut drops = 1;
        loop {
            match gate.admit(peer, t1) {
                Admit::Drop => drops += 1,
                Admit::Flood => break,
                Admit::Accept => panic!("accepted over budget"),
            }
        }
        assert_eq!(drops + 1, GOSSIP_FLOOD);
        // Another publisher has its own budget.
        assert_eq!(gate.admit(PeerId::random(), t1), Admit::Accept);
    }

    #[test]
    fn bans_expire() {
        let mut bans = Bans::new(Duration::from_millis(20));
        let peer = PeerId::random();
        bans.ban(peer, "bad".into());
        assert_eq!(bans.reason(&peer), Some("bad"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!bans.is_banned(&peer));
        bans.prune(Instant::now());
        assert!(bans.table.is_empty());
    }
}
