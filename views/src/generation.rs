//! View generations: one sled tree per (view, generation), the meta record
//! naming a view's active generation, and the view digest.
//!
//! ```text
//! tree "views/meta"                   name -> ViewMeta { active, building, next_gen } (postcard)
//! tree "view/<name>/<number>/data"       0x00 "checkpoint" -> Checkpoint; 0x01 | key -> value
//! ```
//!
//! A rebuild folds into a fresh generation while the active one keeps
//! answering queries; one insert into `views/meta` swaps them, and the old
//! tree is dropped once no reader holds it. A crash between the swap and
//! the drop leaves an orphan tree that the next registration drops.
//!
//! Each generation keeps its recently folded keys' committed values in
//! memory (`ReadCache`), so that a fold reads the keys it just wrote (a kv
//! record updated again, say) without going to sled. The cache only ever
//! holds what the tree holds: it learns values from reads and from
//! successful commits, both under the fold lock, and is dropped if a
//! commit fails.
//!
//! Digest: `blake3("kappadb/view-digest/v1\0" | len name | name | version
//! u32 LE | for each pair in key order: len key | key | len value | value)`,
//! lengths as u64 LE, over the view's own keys only (no checkpoint).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;
use crate::error::ViewError;
use crate::view::{CHECKPOINT_KEY, Checkpoint, DATA_PREFIX, Writes};

/// Name of the tree holding every view's meta record.
pub const META_TREE: &str = "views/meta";
/// Domain prefix of view digests.
const DIGEST_DOMAIN: &[u8] = b"kappadb/view-digest/v1\0";
/// Format of [`ViewMeta`] records.
const META_FORMAT: u8 = 1;

/// The tree of one generation of a view.
pub(crate) fn tree_name(view: &str, number: u64) -> String {
    format!("view/{view}/{number}/data")
}

/// The generation named by a tree of `view`, if the tree is one of its.
pub(crate) fn parse_tree_name(name: &[u8], view: &str) -> Option<u64> {
    let name = std::str::from_utf8(name).ok()?;
    let rest = name.strip_prefix("view/")?.strip_prefix(view)?;
    let rest = rest.strip_prefix('/')?.strip_suffix("/data")?;
    rest.parse().ok()
}

/// A generation as recorded in the meta tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenMeta {
    pub(crate) number: u64,
    pub(crate) version: u32,
}

/// A view's meta record: which generation answers queries, which one is
/// being built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ViewMeta {
    pub(crate) format: u8,
    pub(crate) active: Option<GenMeta>,
    /// The active generation no longer matches the log (it was cut): it
    /// serves queries but is not folded until a rebuild replaces it.
    pub(crate) active_frozen: bool,
    pub(crate) building: Option<GenMeta>,
    /// Never reused, so a new generation never meets an old tree.
    pub(crate) next_gen: u64,
}

impl ViewMeta {
    pub(crate) fn load(meta: &sled::Tree, view: &str) -> Result<Option<Self>, ViewError> {
        let Some(bytes) = meta.get(view.as_bytes())? else {
            return Ok(None);
        };
        match postcard::from_bytes::<ViewMeta>(&bytes) {
            Ok(m) if m.format == META_FORMAT => Ok(Some(m)),
            _ => {
                tracing::warn!(
                    view,
                    "view meta record does not decode; rebuilding the view"
                );
                Ok(None)
            }
        }
    }

    pub(crate) fn store(&self, meta: &sled::Tree, view: &str) -> Result<(), ViewError> {
        let mut m = self.clone();
        m.format = META_FORMAT;
        let bytes = postcard::to_stdvec(&m).map_err(|e| ViewError::damaged(view, e.to_string()))?;
        meta.insert(view.as_bytes(), bytes)?;
        Ok(())
    }
}

/// One generation of a view: its tree and its checkpoint.
pub(crate) struct Generation {
    pub(crate) number: u64,
    pub(crate) version: u32,
    pub(crate) tree_name: String,
    pub(crate) tree: sled::Tree,
    /// Held while a batch is folded into this generation, or while it is
    /// hashed: one writer at a time, so a batch is never folded twice.
    fold: Mutex<()>,
    /// The committed checkpoint (a copy for readers; changed only by the
    /// holder of `fold`, after its commit).
    checkpoint: Mutex<Checkpoint>,
    /// Committed values of recently folded keys (see the module docs).
    cache: Mutex<ReadCache>,
    /// Records per fold batch the indexer settled on (0: not yet).
    batch_size: AtomicUsize,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("tree", &self.tree_name)
            .field("version", &self.version)
            .field("checkpoint", &self.checkpoint())
            .finish()
    }
}

impl Generation {
    /// Open the generation's tree; `fresh` clears anything left in it.
    pub(crate) fn open(
        sled: &sled::Db,
        view: &str,
        meta: GenMeta,
        fresh: bool,
    ) -> Result<Self, ViewError> {
        let tree_name = tree_name(view, meta.number);
        let tree = sled.open_tree(&tree_name)?;
        if fresh {
            tree.clear()?;
        }
        let checkpoint = match tree.get(CHECKPOINT_KEY)? {
            None => Checkpoint::default(),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|_| ViewError::damaged(view, "checkpoint does not decode"))?,
        };
        Ok(Self {
            number: meta.number,
            version: meta.version,
            tree_name,
            tree,
            fold: Mutex::new(()),
            checkpoint: Mutex::new(checkpoint),
            cache: Mutex::new(ReadCache::new(fresh)),
            batch_size: AtomicUsize::new(0),
        })
    }

    pub(crate) fn meta(&self) -> GenMeta {
        GenMeta {
            number: self.number,
            version: self.version,
        }
    }

    /// The last committed checkpoint.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the fold lock.
    pub(crate) fn lock_fold(&self) -> MutexGuard<'_, ()> {
        self.fold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records per fold batch the indexer last used here (0: none yet).
    pub(crate) fn batch_size(&self) -> usize {
        self.batch_size.load(Ordering::Relaxed)
    }

    /// Remember the records per fold batch to start with next time.
    pub(crate) fn set_batch_size(&self, size: usize) {
        self.batch_size.store(size, Ordering::Relaxed);
    }

    /// The cache of committed values.
    pub(crate) fn cache(&self) -> MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sled batch that commits a fold batch's writes and its
    /// checkpoint together ([`Generation::apply`] applies it).
    pub(crate) fn batch(
        view: &str,
        writes: &Writes,
        checkpoint: Checkpoint,
    ) -> Result<sled::Batch, ViewError> {
        let bytes = postcard::to_stdvec(&checkpoint)
            .map_err(|e| ViewError::damaged(view, e.to_string()))?;
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.store_value()),
                None => batch.remove(k.as_slice()),
            }
        }
        batch.insert(CHECKPOINT_KEY, bytes);
        Ok(batch)
    }

    /// Apply a batch made by [`Generation::batch`]: all of it or, across a
    /// crash, none. Called while the folding thread holds the fold lock,
    /// which then calls [`Generation::committed`] if this succeeded.
    pub(crate) fn apply(&self, batch: sled::Batch) -> Result<(), ViewError> {
        if let Err(e) = self.tree.apply_batch(batch) {
            // Part of the batch may be in the tree's memory: forget what
            // the cache knows rather than trust it.
            *self.cache() = ReadCache::new(false);
            return Err(e.into());
        }
        Ok(())
    }

    /// Record a batch applied: its writes for the cache, its checkpoint
    /// for readers.
    pub(crate) fn committed(&self, writes: &Writes, checkpoint: Checkpoint) {
        let mut cache = self.cache();
        for (k, v) in writes {
            cache.put(k.clone(), v.clone());
        }
        drop(cache);
        *self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = checkpoint;
    }

    /// Hash the generation's data (see the module docs). Holds the fold
    /// lock, so the digest matches the checkpoint it reports.
    pub(crate) fn digest(&self, view: &str) -> Result<ViewDigest, ViewError> {
        let _fold = self.lock_fold();
        let mut hasher = blake3::Hasher::new();
        hasher.update(DIGEST_DOMAIN);
        hasher.update(&(view.len() as u64).to_le_bytes());
        hasher.update(view.as_bytes());
        hasher.update(&self.version.to_le_bytes());
        let (mut keys, mut bytes) = (0u64, 0u64);
        for item in self.tree.scan_prefix([DATA_PREFIX]) {
            let (k, v) = item?;
            let k = &k[1..];
            hasher.update(&(k.len() as u64).to_le_bytes());
            hasher.update(k);
            hasher.update(&(v.len() as u64).to_le_bytes());
            hasher.update(&v);
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok(ViewDigest {
            name: view.to_string(),
            version: self.version,
            checkpoint: self.checkpoint(),
            keys,
            bytes,
            hash: *hasher.finalize().as_bytes(),
        })
    }
}

/// Bytes of keys and values a generation's cache holds before it drops its
/// least recently used half (it holds at most twice this).
const CACHE_BYTES: usize = 32 << 20;
/// What a cached key costs besides its bytes (map slot, allocations).
const CACHE_ENTRY_OVERHEAD: usize = 96;

/// Committed values of a generation's keys (full keys, prefix included;
/// `None` = absent), in two halves: new and used keys go to `hot`; when
/// `hot` is full it becomes `cold` and the old `cold` is dropped, so keys
/// not used for a while leave.
pub(crate) struct ReadCache {
    hot: HashMap<Vec<u8>, Option<Bytes>>,
    cold: HashMap<Vec<u8>, Option<Bytes>>,
    hot_bytes: usize,
    /// Every key of the tree is in the cache: the tree was empty when the
    /// cache started and nothing has been dropped since, so a key the
    /// cache does not hold is absent.
    complete: bool,
}

fn cached_size(key: &[u8], value: &Option<Bytes>) -> usize {
    key.len() + value.as_ref().map_or(0, |v| v.len()) + CACHE_ENTRY_OVERHEAD
}

impl ReadCache {
    /// An empty cache; `complete` if the tree is empty.
    pub(crate) fn new(complete: bool) -> Self {
        Self {
            hot: HashMap::new(),
            cold: HashMap::new(),
            hot_bytes: 0,
            complete,
        }
    }

    /// The committed value of `key` if the cache knows it.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Option<Bytes>> {
        if let Some(v) = self.hot.get(key) {
            return Some(v.clone());
        }
        if let Some((k, v)) = self.cold.remove_entry(key) {
            self.put(k, v.clone());
            return Some(v);
        }
        self.complete.then_some(None)
    }

    /// Record the committed value of `key`.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Option<Bytes>) {
        self.cold.remove(&key);
        let key_len = key.len();
        self.hot_bytes += cached_size(&key, &value);
        if let Some(old) = self.hot.insert(key, value) {
            self.hot_bytes = self
                .hot_bytes
                .saturating_sub(key_len + old.map_or(0, |v| v.len()) + CACHE_ENTRY_OVERHEAD);
        }
        if self.hot_bytes > CACHE_BYTES {
            if !self.cold.is_empty() {
                self.complete = false;
            }
            self.cold = std::mem::take(&mut self.hot);
            self.hot_bytes = 0;
        }
    }
}

/// A view's digest: equal on two peers iff their views hold the same data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewDigest {
    /// The view.
    pub name: String,
    /// The version of the data hashed.
    pub version: u32,
    /// How far that data has folded the log (local; not hashed).
    pub checkpoint: Checkpoint,
    /// Key/value pairs hashed.
    pub keys: u64,
    /// Bytes of keys and values hashed (the view's logical size).
    pub bytes: u64,
    /// The blake3 hash.
    pub hash: [u8; 32],
}

impl ViewDigest {
    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        kappadb_core::keys::hex(&self.hash)
    }
}

impl fmt::Display for ViewDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_names_round_trip() {
        let name = tree_name("kv", 7);
        assert_eq!(name, "view/kv/7/data");
        assert_eq!(parse_tree_name(name.as_bytes(), "kv"), Some(7));
        assert_eq!(parse_tree_name(b"view/kv2/7/data", "kv"), None);
        assert_eq!(parse_tree_name(b"feeds", "kv"), None);
    }
}
