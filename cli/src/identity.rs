//! Identity operations on an open database (`Local`): show, delegate,
//! revoke, and identity-resolved kv heads. The identity key, when this
//! database holds one, is the file `DIR/identity.key` (mode 0600).

use std::path::{Path, PathBuf};

use kappadb_core::identity::{Delegation, IdentityKey, IdentityOp, Revocation};
use kappadb_core::{Db, FeedId};

use crate::answer::{IdentityDevice, IdentityInfo, IdentityOpReply, KvHead, OpError, OpResult};
use crate::ops::Local;
use crate::params::{DelegateBody, RevokeBody};

/// The identity key file of a database directory.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("identity.key")
}

/// The identity key this database holds, if any.
pub fn held_key(dir: &Path) -> OpResult<Option<IdentityKey>> {
    let path = key_path(dir);
    if !path.exists() {
        return Ok(None);
    }
    IdentityKey::load(&path)
        .map(Some)
        .map_err(|e| OpError::new(500, "identity_key", e.to_string()))
}

fn need_key(db: &Db) -> OpResult<IdentityKey> {
    held_key(db.dir())?.ok_or_else(|| {
        OpError::new(
            409,
            "no_identity_key",
            "this database holds no identity key: run `kappa identity new`, or `kappa identity import` on the device that holds it",
        )
    })
}

/// Refuse to write the first entry of an identity feed that may exist
/// elsewhere: an imported key on a database that has not synced the
/// identity feed would start it over, which forks it.
pub fn need_identity_feed(db: &Db, key: &IdentityKey) -> OpResult<()> {
    if db.head(&key.id()).is_none() {
        return Err(OpError::new(
            409,
            "identity_feed_missing",
            "this database holds none of the identity feed yet: sync with a device of the identity first (writing now would fork it)",
        ));
    }
    Ok(())
}

fn parse_feed(l: &Local, text: &str) -> OpResult<FeedId> {
    l.resolve_feed(text)
}

impl Local {
    /// This database's identity and its devices.
    pub fn show_identity(&self) -> OpResult<IdentityInfo> {
        let db = self.db();
        let ids = self.caught_up("identity")?.identities()?;
        let key = held_key(db.dir())?;
        let own = db.feed_id();
        let identity = match &key {
            Some(k) => Some(k.id()),
            None => ids.link(&own).map(|l| l.identity),
        };
        let mut devices = Vec::new();
        if let Some(i) = identity {
            for feed in ids.identities().get(&i).into_iter().flatten() {
                if let Some(link) = ids.link(feed) {
                    devices.push(IdentityDevice {
                        cut: link.cut,
                        delegated_at: link.delegated_at,
                        feed: feed.to_string(),
                        this: *feed == own,
                    });
                }
            }
        }
        Ok(IdentityInfo {
            devices,
            feed: own.to_string(),
            forked_at: identity.and_then(|i| db.fork(&i)).map(|f| f.seq),
            identity: identity.map(|i| i.to_string()),
            key_here: key.is_some(),
        })
    }

    /// Store a delegation of `body.device` (with its consent) to the
    /// identity whose key this database holds.
    pub fn delegate_identity(&self, body: &DelegateBody) -> OpResult<IdentityOpReply> {
        let key = need_key(self.db())?;
        let device = parse_feed(self, &body.device)?;
        let sig = kappadb_core::keys::parse_hex64(&body.device_sig).ok_or_else(|| {
            OpError::bad(
                "bad_signature",
                "device_sig must be 128 hex digits (an ed25519 signature)",
            )
        })?;
        // `identity new` starts the feed by delegating this database's
        // own feed; anything else extends a feed held here.
        if device != self.db().feed_id() {
            need_identity_feed(self.db(), &key)?;
        }
        let d = Delegation::from_consent(device, sig);
        let (seq, _) = self.db().append_identity(&key, &IdentityOp::Delegate(d))?;
        Ok(IdentityOpReply {
            device: device.to_string(),
            from: None,
            identity: key.id().to_string(),
            op: "delegate".into(),
            seq,
        })
    }

    /// Revoke `body.feed` from `body.from` (default: after the last entry
    /// of it held here).
    pub fn revoke_identity(&self, body: &RevokeBody) -> OpResult<IdentityOpReply> {
        let key = need_key(self.db())?;
        need_identity_feed(self.db(), &key)?;
        let device = parse_feed(self, &body.feed)?;
        let from = match body.from {
            Some(f) => f,
            None => self.db().head(&device).map_or(1, |h| h.seq + 1),
        };
        let r = Revocation { device, from };
        let (seq, _) = self.db().append_identity(&key, &IdentityOp::Revoke(r))?;
        Ok(IdentityOpReply {
            device: device.to_string(),
            from: Some(from),
            identity: key.id().to_string(),
            op: "revoke".into(),
            seq,
        })
    }

    /// The identity `who` names: `self` (this database's: the key held
    /// here, else what its feed resolves to), or an id or unique prefix.
    pub fn identity_named(&self, who: &str, ids: &kappadb_views::Identities) -> OpResult<FeedId> {
        if who == "self" {
            return Ok(match held_key(self.db().dir())? {
                Some(k) => k.id(),
                None => ids.resolve(&self.db().feed_id()),
            });
        }
        self.resolve_feed(who)
    }

    /// The identity-resolved heads of a kv key.
    pub fn resolved_kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>> {
        let ix = self.caught_up("kv")?;
        let ids = self.caught_up("identity")?.identities()?;
        let heads = ix.kv()?.resolved_heads(self.db(), &ids, key)?;
        if heads.is_empty() {
            return Err(OpError::not_found(
                "no_such_key",
                format!("key '{key}' is not set"),
            ));
        }
        Ok(heads.iter().map(KvHead::of).collect())
    }
}
