//! Writing identity ops: entries of an identity feed, signed by an
//! identity key this process holds (not the database's own feed key).
//!
//! An identity op is built on the identity feed's head as this database
//! holds it, signed, and stored through [`Db::ingest_page`], the path any
//! peer's entry takes, so it passes every rule in [`crate::validate`]. The
//! rules that need the feed's earlier entries ([`crate::identity`]) are
//! checked first, against what this database holds of the identity feed.
//!
//! Holding the identity key on two databases that both write is how an
//! identity feed forks (two entries at one seq); the fork is detected and
//! surfaced like any other, and resolution then ignores the identity feed
//! from the fork seq on.

use std::sync::Mutex;

use crate::entry::{Entry, EntryId};
use crate::error::AppendError;
use crate::identity::{IdentityError, IdentityKey, IdentityOp};
use crate::keys::FeedId;
use crate::validate::EntryError;

use super::Db;

/// Serializes identity appends of this process, so two of them never
/// build on the same head (which would fork the identity feed).
static IDENTITY_WRITES: Mutex<()> = Mutex::new(());

fn refused(e: IdentityError) -> AppendError {
    AppendError::Rejected(EntryError::Identity(e))
}

impl Db {
    /// The identity ops of `identity`'s feed held here, with their seqs,
    /// in seq order, up to the fork seq when the feed is forked (entries
    /// there and beyond are not part of the identity). Entries that are
    /// not identity ops, or break their rules, are left out.
    pub fn identity_ops(
        &self,
        identity: &FeedId,
    ) -> Result<Vec<(u64, IdentityOp)>, crate::StoreError> {
        let Some(head) = self.head(identity) else {
            return Ok(Vec::new());
        };
        let last = match self.fork(identity) {
            Some(f) => head.seq.min(f.seq.saturating_sub(1)),
            None => head.seq,
        };
        let mut out = Vec::new();
        for entry in self.feed_range(identity, 1, last) {
            let entry = entry?;
            let Some(bytes) = entry.payload.bytes() else {
                continue;
            };
            if let Some(Ok(op)) = crate::identity::parse(identity, bytes) {
                out.push((entry.header.seq, op));
            }
        }
        Ok(out)
    }

    /// Append `op` to the feed of the identity `key`, after checking every
    /// rule: the stateless ones, then against the identity feed's earlier
    /// entries (a revoked device is not delegated again; only a delegated
    /// device is revoked; a forked identity feed takes nothing). Refusals
    /// are [`AppendError::Rejected`] with [`EntryError::Identity`]; nothing
    /// is written then. Returns the new entry's seq and id.
    pub fn append_identity(
        &self,
        key: &IdentityKey,
        op: &IdentityOp,
    ) -> Result<(u64, EntryId), AppendError> {
        let identity = key.id();
        let payload = match op {
            IdentityOp::Delegate(d) => d.encode(),
            IdentityOp::Revoke(r) => r.encode(),
        };
        crate::identity::check_payload(&identity, &payload).map_err(refused)?;
        let _guard = IDENTITY_WRITES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = self.fork(&identity) {
            return Err(refused(IdentityError::Forked {
                identity,
                fork_seq: f.seq,
            }));
        }
        let earlier = self.identity_ops(&identity)?;
        let device = op.device();
        let revoked = earlier.iter().find_map(|(_, o)| match o {
            IdentityOp::Revoke(r) if r.device == device => Some(r.from),
            _ => None,
        });
        let delegated = earlier
            .iter()
            .any(|(_, o)| matches!(o, IdentityOp::Delegate(d) if d.device == device));
        match op {
            IdentityOp::Delegate(_) => {
                if let Some(from) = revoked {
                    return Err(refused(IdentityError::Revoked { device, from }));
                }
            }
            IdentityOp::Revoke(_) => {
                if !delegated {
                    return Err(refused(IdentityError::NotADevice(device)));
                }
            }
        }
        self.append_as(key, payload)
    }

    /// Append a pairing offer for `code` to the feed of the identity `key`
    /// (see `kappa identity invite`), void after `expires` (ms since the
    /// epoch). Returns its seq and id.
    pub fn offer_pairing(
        &self,
        key: &IdentityKey,
        code: &crate::identity::PairingCode,
        expires: u64,
    ) -> Result<(u64, EntryId), AppendError> {
        let identity = key.id();
        let _guard = IDENTITY_WRITES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = self.fork(&identity) {
            return Err(refused(IdentityError::Forked {
                identity,
                fork_seq: f.seq,
            }));
        }
        let offer = crate::identity::PairOffer {
            tag: code.offer_tag(&identity),
            expires,
        };
        self.append_as(key, offer.encode())
    }

    /// Sign `payload` as the next entry of `key`'s feed and store it like
    /// a peer's entry. The caller holds `IDENTITY_WRITES`.
    fn append_as(
        &self,
        key: &IdentityKey,
        payload: Vec<u8>,
    ) -> Result<(u64, EntryId), AppendError> {
        let identity = key.id();
        let prev = match self.head(&identity) {
            Some(h) => Some(self.get(&identity, h.seq)?.ok_or(AppendError::Rejected(
                EntryError::Malformed("the identity feed's head is not readable"),
            ))?),
            None => None,
        };
        let ts = crate::now_ms().max(prev.as_ref().map_or(0, |p| p.header.timestamp));
        let entry = Entry::sign(key.signing_key(), prev.as_ref(), ts, payload);
        let (seq, id) = (entry.header.seq, entry.id());
        let report = self.ingest_page(vec![entry])?;
        if let Some((_, e)) = report.rejected.into_iter().next() {
            return Err(AppendError::Rejected(e));
        }
        Ok((seq, id))
    }
}
