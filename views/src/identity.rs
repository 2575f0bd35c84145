//! The `identity` view and author-to-identity resolution.
//!
//! The view folds the identity ops (delegations and revocations, see
//! `kappadb_core::identity`) of every identity feed into one key per op:
//!
//! ```text
//! 'o' | identity (32) | seq BE (8)  -> the op's payload (the system payload bytes)
//! ```
//!
//! so its state is the set of identity ops held, whatever their arrival
//! order (the digest proves it). Identity ops are never erased (deletions
//! do not erase system entries); a forget marker of an identity feed takes
//! its ops out (a local choice).
//!
//! [`Identities`] is the resolution, computed from that set (and the fork
//! seqs of identity feeds) when asked, never stored in another view: so a
//! delegation or a revocation arriving after the entries it speaks of
//! changes every identity-resolved answer at once, on every peer, with no
//! view to fold again. The rule:
//!
//! 1. Per identity feed `I`, only its ops below its fork seq count (a
//!    forked identity feed keeps what both branches agree on). They are
//!    read in seq order.
//! 2. A delegation of `F` at seq `d` takes effect unless a revocation of
//!    `F` comes before it in `I`'s feed (a revocation is final).
//! 3. A revocation of `F` counts when a delegation of `F` took effect
//!    before it; `F`'s cut is the smallest `from` of those.
//! 4. A feed delegated by several identities (each with the feed's
//!    consent) belongs to the smallest identity id among them.
//! 5. `resolve(F)` is that identity, or `F` itself when no delegation
//!    names it (one level: an identity's own feed resolves to itself
//!    unless delegated elsewhere). An entry `(F, seq)` is *visible* in
//!    identity-resolved results unless `F` has a cut and `seq >= cut`.
//!
//! What a revocation cannot undo: entries below the cut stay the
//! identity's; the revoked device's entries stay in the log, replicated
//! and shown in author-level (not identity-resolved) results; a device
//! holding the identity key cannot be cut off (revoke the identity by
//! making a new one).
//!
//! Embedding: write identity ops with `Db::append_identity`, resolve with
//! [`crate::Indexer::identities`] and ask the built-in views their
//! identity-resolved questions:
//!
//! ```
//! use kappadb_core::identity::{Delegation, IdentityKey, IdentityOp};
//! use kappadb_core::{CreateOptions, Db};
//! use kappadb_views::{Indexer, IndexerConfig};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
//! let me = IdentityKey::generate().unwrap();
//! // This database's feed speaks for `me` (it signs its own consent).
//! let d = Delegation::new(me.id(), db.signing_key());
//! db.append_identity(&me, &IdentityOp::Delegate(d)).unwrap();
//! db.append(kappadb_views::kv::put_payload("color", &json!("red"), &[])).unwrap();
//!
//! let ix = Indexer::open_with(db.clone(), IndexerConfig { live: false, ..Default::default() }).unwrap();
//! ix.catch_up().unwrap();
//! let ids = ix.identities().unwrap();
//! assert_eq!(ids.resolve(&db.feed_id()), me.id());
//! let kv = ix.kv().unwrap();
//! assert_eq!(kv.resolved_get(&db, &ids, "color").unwrap(), Some(json!("red")));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use kappadb_core::identity::{IdentityOp, Revocation};
use kappadb_core::system::SystemPayload;
use kappadb_core::{Db, FeedId};

use crate::error::ViewError;
use crate::view::{View, ViewReader, ViewRecord, ViewTx};

/// The identity view's name.
pub const NAME: &str = "identity";
/// The identity view's version.
pub const VERSION: u32 = 1;

const OP: u8 = b'o';

/// The built-in `identity` view.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityView;

fn op_key(identity: &FeedId, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    out.push(OP);
    out.extend_from_slice(identity.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

fn encode_op(op: &IdentityOp) -> Vec<u8> {
    match op {
        IdentityOp::Delegate(d) => d.encode(),
        IdentityOp::Revoke(r) => r.encode(),
    }
}

impl View for IdentityView {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn describe(&self) -> String {
        "delegations and revocations of identity feeds".to_string()
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        for r in batch {
            if let Some(op) = r.identity_op() {
                tx.insert(op_key(&r.author, r.seq), encode_op(op));
            } else if r.forgets() {
                let mut prefix = vec![OP];
                prefix.extend_from_slice(r.author.as_bytes());
                for (k, _) in tx.scan_prefix(&prefix)? {
                    tx.remove(k);
                }
            } else {
                tx.skip();
            }
        }
        Ok(())
    }
}

/// How a device feed belongs to an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The identity.
    pub identity: FeedId,
    /// The seq of the identity feed's delegation that took effect.
    pub delegated_at: u64,
    /// The device's first entry that no longer speaks for the identity.
    pub cut: Option<u64>,
}

/// Author-to-identity resolution over a set of identity ops (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    links: BTreeMap<FeedId, Link>,
    members: BTreeMap<FeedId, BTreeSet<FeedId>>,
    /// Revocations that counted, per identity: (device, from).
    revoked: BTreeMap<FeedId, Vec<Revocation>>,
}

impl Identities {
    /// The resolution of `ops`: `(identity, seq, op)` in any order, with
    /// `fork_seq` giving the seq at which an identity feed forked.
    pub fn from_ops(
        ops: impl IntoIterator<Item = (FeedId, u64, IdentityOp)>,
        fork_seq: impl Fn(&FeedId) -> Option<u64>,
    ) -> Self {
        let mut by_identity: BTreeMap<FeedId, BTreeMap<u64, IdentityOp>> = BTreeMap::new();
        for (identity, seq, op) in ops {
            if fork_seq(&identity).is_some_and(|f| seq >= f) {
                continue;
            }
            by_identity.entry(identity).or_default().insert(seq, op);
        }
        let mut candidates: BTreeMap<FeedId, Link> = BTreeMap::new();
        let mut revoked_all: BTreeMap<FeedId, Vec<Revocation>> = BTreeMap::new();
        for (identity, ops) in by_identity {
            let mut delegated: BTreeMap<FeedId, u64> = BTreeMap::new();
            let mut cut: BTreeMap<FeedId, u64> = BTreeMap::new();
            let mut revoked_before: BTreeSet<FeedId> = BTreeSet::new();
            for (seq, op) in ops {
                match op {
                    IdentityOp::Delegate(d) => {
                        if !revoked_before.contains(&d.device) {
                            delegated.entry(d.device).or_insert(seq);
                        }
                    }
                    IdentityOp::Revoke(r) => {
                        revoked_before.insert(r.device);
                        if delegated.contains_key(&r.device) {
                            let c = cut.entry(r.device).or_insert(r.from);
                            *c = (*c).min(r.from);
                            revoked_all.entry(identity).or_default().push(r);
                        }
                    }
                }
            }
            for (device, at) in delegated {
                let link = Link {
                    identity,
                    delegated_at: at,
                    cut: cut.get(&device).copied(),
                };
                // Identities come in increasing order: the first wins.
                candidates.entry(device).or_insert(link);
            }
        }
        let mut members: BTreeMap<FeedId, BTreeSet<FeedId>> = BTreeMap::new();
        for (device, link) in &candidates {
            members.entry(link.identity).or_default().insert(*device);
        }
        Identities {
            links: candidates,
            members,
            revoked: revoked_all,
        }
    }

    /// The resolution of what `reader` (the identity view) holds, with the
    /// fork seqs `db` knows.
    pub fn load(reader: &ViewReader, db: &Db) -> Result<Self, ViewError> {
        let mut ops = Vec::new();
        for item in reader.scan_prefix(&[OP]) {
            let (k, v) = item?;
            let (Some(identity), Some(seq)) = (
                k.get(1..33)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(FeedId),
                k.get(33..41)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes),
            ) else {
                return Err(ViewError::damaged(NAME, "an identity key does not decode"));
            };
            let op = match SystemPayload::parse(&v) {
                Some(Ok(SystemPayload::Delegation(d))) => IdentityOp::Delegate(d),
                Some(Ok(SystemPayload::Revocation(r))) => IdentityOp::Revoke(r),
                _ => return Err(ViewError::damaged(NAME, "an identity op does not decode")),
            };
            ops.push((identity, seq, op));
        }
        Ok(Self::from_ops(ops, |f| db.fork(f).map(|info| info.seq)))
    }

    /// The identity `feed` speaks for: its identity, or itself.
    pub fn resolve(&self, feed: &FeedId) -> FeedId {
        self.links.get(feed).map_or(*feed, |l| l.identity)
    }

    /// How `feed` belongs to an identity, if it does.
    pub fn link(&self, feed: &FeedId) -> Option<&Link> {
        self.links.get(feed)
    }

    /// Whether entry `seq` of `feed` counts in identity-resolved results
    /// (not at or past its device's cut).
    pub fn visible(&self, feed: &FeedId, seq: u64) -> bool {
        self.links
            .get(feed)
            .and_then(|l| l.cut)
            .is_none_or(|cut| seq < cut)
    }

    /// The feeds that resolve to `identity`: its devices, and the identity
    /// feed itself unless it is delegated elsewhere.
    pub fn feeds_of(&self, identity: &FeedId) -> BTreeSet<FeedId> {
        let mut out = self.members.get(identity).cloned().unwrap_or_default();
        if !self.links.contains_key(identity) {
            out.insert(*identity);
        }
        out
    }

    /// Every identity with at least one device, and its devices.
    pub fn identities(&self) -> &BTreeMap<FeedId, BTreeSet<FeedId>> {
        &self.members
    }

    /// The revocations of `identity` that counted, in its feed's order.
    pub fn revocations(&self, identity: &FeedId) -> &[Revocation] {
        self.revoked.get(identity).map_or(&[], Vec::as_slice)
    }

    /// Whether no feed is delegated: resolution is the identity.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// What identity-resolved queries keep: entries not cut off by a
/// revocation and, when `identity` is set, only entries of feeds that
/// resolve to it.
#[derive(Clone, Copy, Debug)]
pub struct IdentityFilter<'a> {
    /// The resolution.
    pub ids: &'a Identities,
    /// Only this identity's entries, if set.
    pub identity: Option<FeedId>,
}

impl IdentityFilter<'_> {
    /// Whether entry `seq` of `author` passes.
    pub fn admits(&self, author: &FeedId, seq: u64) -> bool {
        self.ids.visible(author, seq)
            && self
                .identity
                .is_none_or(|want| self.ids.resolve(author) == want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappadb_core::SigningKey;
    use kappadb_core::identity::{Delegation, IdentityKey};

    fn del(identity: &IdentityKey, device: &SigningKey) -> IdentityOp {
        IdentityOp::Delegate(Delegation::new(identity.id(), device))
    }

    fn rev(device: &SigningKey, from: u64) -> IdentityOp {
        IdentityOp::Revoke(Revocation {
            device: device.feed_id(),
            from,
        })
    }

    #[test]
    fn resolution_follows_the_rule() {
        let i = IdentityKey::from_seed([1; 32]);
        let a = SigningKey::from_seed([2; 32]);
        let b = SigningKey::from_seed([3; 32]);
        let c = SigningKey::from_seed([4; 32]);
        let ops = vec![
            (i.id(), 1, del(&i, &a)),
            (i.id(), 2, del(&i, &b)),
            (i.id(), 3, rev(&b, 5)),
            // A revocation before the delegation makes it final.
            (i.id(), 4, rev(&c, 1)),
            (i.id(), 5, del(&i, &c)),
            // A later revocation with an earlier point moves the cut back.
            (i.id(), 6, rev(&b, 3)),
        ];
        let mut reversed = ops.clone();
        reversed.reverse();
        let r = Identities::from_ops(ops, |_| None);
        assert_eq!(r, Identities::from_ops(reversed, |_| None));
        assert_eq!(r.resolve(&a.feed_id()), i.id());
        assert_eq!(r.resolve(&b.feed_id()), i.id());
        assert_eq!(r.resolve(&c.feed_id()), c.feed_id());
        assert!(r.visible(&b.feed_id(), 2));
        assert!(!r.visible(&b.feed_id(), 3));
        assert!(r.visible(&a.feed_id(), 1_000));
        assert_eq!(
            r.feeds_of(&i.id()),
            [a.feed_id(), b.feed_id(), i.id()].into_iter().collect()
        );
    }

    #[test]
    fn a_forked_identity_feed_counts_below_the_fork() {
        let i = IdentityKey::from_seed([1; 32]);
        let a = SigningKey::from_seed([2; 32]);
        let b = SigningKey::from_seed([3; 32]);
        let ops = vec![(i.id(), 1, del(&i, &a)), (i.id(), 2, del(&i, &b))];
        let r = Identities::from_ops(ops, |_| Some(2));
        assert_eq!(r.resolve(&a.feed_id()), i.id());
        assert_eq!(r.resolve(&b.feed_id()), b.feed_id());
    }

    #[test]
    fn the_smallest_identity_wins_a_device_claimed_twice() {
        let i = IdentityKey::from_seed([1; 32]);
        let j = IdentityKey::from_seed([5; 32]);
        let a = SigningKey::from_seed([2; 32]);
        let ops = vec![(i.id(), 1, del(&i, &a)), (j.id(), 1, del(&j, &a))];
        let r = Identities::from_ops(ops, |_| None);
        assert_eq!(r.resolve(&a.feed_id()), i.id().min(j.id()));
    }
}
