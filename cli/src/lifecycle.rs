//! The data lifecycle operations: deleting this node's own entries
//! (`kappa delete`, `kappa kv purge`), giving space back (`kappa compact`),
//! forgetting a feed (`kappa forget`), and choosing which feeds to
//! replicate (`kappa follow`, `kappa unfollow`), as [`Local`] runs them.
//!
//! With a node running, the API first tells the node what concerns it
//! (block a feed before forgetting it, follow or unfollow at once) and
//! then runs these.

use std::collections::BTreeSet;

use kappadb_core::{EntryId, FeedId, ForgetError};
use kappadb_net::blocklist::BlockList;
use kappadb_net::policy::FollowFile;
use kappadb_net::protocol::Follow;

use crate::answer::{
    BackupReply, CompactReply, DeleteReply, FollowReply, ForgetReply, HoldReply, OpError, OpResult,
};
use crate::ops::Local;
use crate::params::{BackupBody, DeleteBody, FollowBody};

fn net_err(e: kappadb_net::NetError) -> OpError {
    OpError::new(500, "policy", e.to_string())
}

fn own_feed_forget() -> OpError {
    OpError::bad(
        "own_feed",
        "this is the database's own feed; delete its entries instead",
    )
}

impl Local {
    /// Delete entries of this node's own feed.
    pub fn delete_entries(&self, body: &DeleteBody) -> OpResult<DeleteReply> {
        if body.seqs.is_empty() && body.ids.is_empty() && body.before.is_none() {
            return Err(OpError::bad(
                "bad_request",
                "name the entries to delete: seqs, ids, or before",
            ));
        }
        let up_to = match body.before {
            Some(0 | 1) => {
                return Err(OpError::bad(
                    "bad_request",
                    "--before SEQ deletes the entries below SEQ: give a seq of 2 or more",
                ));
            }
            Some(b) => Some(b - 1),
            None => None,
        };
        let mut seqs = body.seqs.clone();
        if !body.ids.is_empty() {
            let ids = body
                .ids
                .iter()
                .map(|s| {
                    s.parse::<EntryId>()
                        .map_err(|e| OpError::bad("bad_id", e.to_string()))
                })
                .collect::<OpResult<Vec<_>>>()?;
            seqs.extend(self.own_seqs_of(&ids)?);
        }
        let d = self.db().delete(&seqs, up_to)?;
        Ok(DeleteReply {
            feed: self.db().feed_id().to_string(),
            id: d.id.to_string(),
            offset: d.offset,
            seq: d.seq,
            targets: seqs.len(),
            up_to,
        })
    }

    /// The seqs of this node's entries with these ids (an id that is not
    /// one is an error).
    fn own_seqs_of(&self, ids: &[EntryId]) -> OpResult<Vec<u64>> {
        let feed = self.db().feed_id();
        let head = self.db().head(&feed).map_or(0, |h| h.seq);
        let mut left: BTreeSet<EntryId> = ids.iter().copied().collect();
        let mut seqs = Vec::new();
        for e in self.db().feed_range(&feed, 1, head) {
            let e = e?;
            if left.remove(&e.id()) {
                seqs.push(e.header.seq);
            }
            if left.is_empty() {
                break;
            }
        }
        match left.first() {
            None => Ok(seqs),
            Some(id) => Err(OpError::bad(
                "not_own_entry",
                format!("{id} is not an entry of this feed; only an entry's author can delete it"),
            )),
        }
    }

    /// Delete this node's ops on a kv key (its history there, not only
    /// its value: the key then shows what other feeds wrote, if anything).
    pub fn kv_purge(&self, key: &str) -> OpResult<DeleteReply> {
        let seqs = self
            .caught_up("kv")?
            .kv()?
            .ops_of(key, &self.db().feed_id())?;
        if seqs.is_empty() {
            return Err(OpError::not_found(
                "unknown_key",
                format!("this feed never wrote key {key:?}"),
            ));
        }
        self.delete_entries(&DeleteBody {
            seqs,
            ..DeleteBody::default()
        })
    }

    /// Write a backup to `body.dest` (absolute: a relative path would
    /// depend on the node's working directory).
    pub fn backup(&self, body: &BackupBody) -> OpResult<BackupReply> {
        let dest = std::path::Path::new(&body.dest);
        if !dest.is_absolute() {
            return Err(OpError::bad(
                "bad_dest",
                format!(
                    "the backup destination must be an absolute path, not {:?}",
                    body.dest
                ),
            ));
        }
        let r = self.db().backup(dest).map_err(|e| match e {
            kappadb_core::StoreError::AlreadyExists { .. } => OpError::new(
                409,
                "dest_exists",
                format!(
                    "{} exists and is not empty; back up into a new directory",
                    dest.display()
                ),
            ),
            other => other.into(),
        })?;
        Ok(BackupReply {
            dest: r.dest.display().to_string(),
            files: r.files,
            log_bytes: r.log_bytes,
            own_seq: r.own_seq,
        })
    }

    /// Lift the publishing hold.
    pub fn release_hold(&self) -> OpResult<HoldReply> {
        self.db().release_hold()?;
        Ok(HoldReply {
            held: self.db().publish_hold().map(|h| h.to_string()),
        })
    }

    /// Compact the log.
    pub fn compact(&self) -> OpResult<CompactReply> {
        let r = self.db().compact(1, &mut |_, _| {})?;
        Ok(CompactReply {
            bytes_after: r.bytes_after,
            bytes_before: r.bytes_before,
            reclaimed: r.reclaimed(),
            segments: r.segments,
        })
    }

    /// Block a feed and drop everything held of it. `block_here` writes
    /// the block list; with a node running, the node has blocked it first
    /// (it owns the list then).
    pub fn forget(&self, feed: &str, block_here: bool) -> OpResult<ForgetReply> {
        let feed = self.resolve_feed(feed)?;
        if feed == self.db().feed_id() {
            return Err(own_feed_forget());
        }
        if block_here {
            let mut list = BlockList::load(self.db().dir()).map_err(net_err)?;
            list.block(feed).map_err(net_err)?;
        }
        let forgotten = match self.db().forget(&feed) {
            Ok(f) => f,
            Err(ForgetError::OwnFeed) => return Err(own_feed_forget()),
            Err(ForgetError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(OpError::new(500, "store", e.to_string())),
        };
        Ok(ForgetReply {
            blocked: true,
            feed: feed.to_string(),
            forgotten,
        })
    }

    /// The replication policy.
    pub fn following(&self) -> OpResult<FollowReply> {
        let file = FollowFile::load(self.db().dir()).map_err(net_err)?;
        Ok(FollowReply::of(file.policy()))
    }

    /// Change the replication policy. Feeds no longer followed are
    /// forgotten here when `forget` (no node runs; a node forgets them
    /// itself when it sees the change).
    pub fn set_following(&self, body: &FollowBody, forget: bool) -> OpResult<FollowReply> {
        let own = self.db().feed_id();
        let feeds = body
            .feeds
            .iter()
            .map(|f| self.resolve_feed(f))
            .collect::<OpResult<Vec<FeedId>>>()?;
        if !body.follow && feeds.contains(&own) {
            return Err(OpError::bad(
                "own_feed",
                "this node always replicates its own feed",
            ));
        }
        let mut file = FollowFile::load(self.db().dir()).map_err(net_err)?;
        let before = file.policy().clone();
        let mut policy = match (body.all, body.only) {
            (true, true) => {
                return Err(OpError::bad(
                    "bad_request",
                    "give --all or --only, not both",
                ));
            }
            (true, false) => Follow::default(),
            (false, true) => Follow::Only {
                feeds: [own].into_iter().collect(),
            },
            (false, false) => before.clone(),
        };
        for feed in &feeds {
            if body.follow || body.only {
                policy.follow(*feed);
            } else {
                policy.unfollow(*feed);
            }
        }
        file.set(policy).map_err(net_err)?;
        if forget {
            for info in self.db().feeds() {
                if info.feed != own && before.wants(&info.feed) && !file.policy().wants(&info.feed)
                {
                    self.db()
                        .forget(&info.feed)
                        .map_err(|e| OpError::new(500, "store", e.to_string()))?;
                }
            }
        }
        Ok(FollowReply::of(file.policy()))
    }
}
