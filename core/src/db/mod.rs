//! The [`Db`] handle: one database directory, its key, its log and its
//! index.
//!
//! ```text
//! DIR/kappa.lock     held for the life of the process; holds its PID
//! DIR/config.json    per-database settings (payload limit, segment size)
//! DIR/secret.key     this peer's feed key, mode 0600
//! DIR/network.key    the network key, mode 0600
//! DIR/log/           the canonical log (segment files)
//! DIR/sled/          derived state: the feed index and every view
//! ```
//!
//! Write path (`write.rs`): validate → sign (all cores) → frame → write +
//! fsync the log → publish the new end → fold into the index (committed to
//! sled in groups, with its checkpoint) → release the writer → run the
//! watch callbacks. A write that returned `Ok` survives a crash; the index
//! may lag after a crash and catches up on the next open. Reads are in
//! `read.rs`, ingest from peers in `ingest.rs`, the directory and its files
//! in `crate::dir`, `verify` in `crate::verify`.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let db = kappadb_core::Db::create(dir.path(), Default::default()).unwrap();
//! let appended = db.append(br#"{"type":"note","text":"hi"}"#.to_vec()).unwrap();
//! assert_eq!(appended.seq, 1);
//! let entry = db.get(&db.feed_id(), 1).unwrap().unwrap();
//! assert_eq!(entry.id(), appended.id);
//! ```

mod backup;
mod compact;
mod delete;
mod identity;
mod ingest;
mod read;
mod write;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::backup::{BackupReport, PublishHold, RESTORED};
pub use self::compact::CompactReport;
pub use self::delete::{DeletionIssue, ForgetError};
pub use self::ingest::IngestReport;
pub use self::write::Appended;
pub use crate::dir::{CreateOptions, DEFAULT_MAX_PAYLOAD, DbConfig, files};
pub use crate::verify::{Problem, VerifyReport};

use self::write::Writer;
use crate::dir::{self, io_err, lock_dir, open_sled};
use crate::entry::ForkProof;
use crate::error::StoreError;
use crate::index::{ForkInfo, Head, Index, IndexState, TREE};
use crate::keys::{FeedId, NetworkKey, SigningKey};
use crate::log::{LogWriter, RecordBody, Recovery, Segments};
use crate::watch::Watch;

/// One feed as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedInfo {
    /// The feed.
    pub feed: FeedId,
    /// Its head.
    pub head: Head,
    /// Where it forked, if it did.
    pub fork: Option<ForkInfo>,
}

/// Counts for `kappa status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The database directory.
    pub dir: PathBuf,
    /// This peer's feed.
    pub feed_id: FeedId,
    /// Bytes in the log.
    pub log_bytes: u64,
    /// Records in the log.
    pub records: u64,
    /// Entries indexed.
    pub entries: u64,
    /// Feeds known.
    pub feeds: usize,
    /// Feeds forked.
    pub forked_feeds: usize,
    /// Bytes the log's files take on disk (the active segment's
    /// preallocated room included).
    pub disk_bytes: u64,
    /// Entries whose payloads were erased by deletions.
    pub erased_entries: u64,
    /// Payload bytes erased (as the entries' headers say).
    pub erased_bytes: u64,
    /// Bytes `Db::compact` would give back now (erased payloads and
    /// dropped records in sealed segments).
    pub reclaimable_bytes: u64,
    /// What opening the log repaired, if anything.
    pub recovery: Option<Recovery>,
}

/// How `Db::open_locked` came to the directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Just created by this handle.
    Created,
    /// An existing database.
    Existing,
    /// An existing database, rebuilding the index from the log.
    Reindex,
}

struct Inner {
    dir: PathBuf,
    config: DbConfig,
    key: SigningKey,
    sled: sled::Db,
    index: Index,
    writer: Mutex<Writer>,
    segments: Arc<Segments>,
    /// Readers' copy of the index's small parts. Only the holder of
    /// `writer` changes it, after the log write is durable.
    state: RwLock<IndexState>,
    /// Counts the times `state` was taken for writing (see
    /// [`Db::heads_version`]).
    heads_version: std::sync::atomic::AtomicU64,
    watch: Watch,
    recovery: Option<Recovery>,
    /// True when this handle created the database.
    created: bool,
    /// Appends held until this copy has synced (see `backup.rs`).
    holds: Mutex<backup::Holds>,
    /// Told of appends, ingests and refusals (see `observe.rs`).
    observer: RwLock<Option<Arc<dyn crate::observe::Observer>>>,
    /// Held for the life of the handle: the directory lock.
    _lock: File,
}

/// A handle on an open database. Cheap to clone; all clones share one
/// writer. Dropping the last clone releases the directory lock.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .field("feed", &self.inner.key.feed_id())
            .finish()
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Db {
    /// Create a database in `dir` (created if missing) with a fresh feed
    /// key and, unless one is given, a fresh network key. Refuses to touch a
    /// directory that already holds a database or a key.
    pub fn create(dir: &Path, opts: CreateOptions) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        Self::create_locked(dir, lock, opts)
    }

    /// Open the database in `dir` if there is one, else create it there
    /// with `opts` (which are ignored when opening: the stored settings and
    /// keys win). [`Db::created`] tells which happened. The directory is
    /// locked before looking, so two processes racing on a new directory
    /// cannot both create it.
    ///
    /// ```
    /// use kappadb_core::{CreateOptions, Db};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = Db::open_or_create(dir.path(), CreateOptions::default()).unwrap();
    /// assert!(db.created());
    /// let feed = db.feed_id();
    /// drop(db);
    /// let db = Db::open_or_create(dir.path(), CreateOptions::default()).unwrap();
    /// assert!(!db.created());
    /// assert_eq!(db.feed_id(), feed);
    /// ```
    pub fn open_or_create(dir: &Path, opts: CreateOptions) -> Result<Self, StoreError> {
        if dir.join(files::CONFIG).exists() {
            return Self::open(dir);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        if dir.join(files::CONFIG).exists() {
            // Created by another process between the look and the lock.
            return Self::open_locked(dir, lock, Open::Existing, &mut |_, _| {});
        }
        Self::create_locked(dir, lock, opts)
    }

    fn create_locked(dir: &Path, lock: File, opts: CreateOptions) -> Result<Self, StoreError> {
        dir::init_files(dir, opts)?;
        Self::open_locked(dir, lock, Open::Created, &mut |_, _| {})
    }

    /// Open the database in `dir`, repairing a torn log tail and bringing
    /// the index up to the log's end.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join(files::CONFIG).exists() {
            return Err(StoreError::NotADatabase {
                dir: dir.to_path_buf(),
            });
        }
        let lock = lock_dir(dir)?;
        Self::open_locked(dir, lock, Open::Existing, &mut |_, _| {})
    }

    /// Open the database and rebuild the feed index from the log, reporting
    /// `(offset, end)` as it goes. If sled cannot open its files at all, its
    /// directory (index and views, all derived) is deleted first.
    pub fn open_reindex(
        dir: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, StoreError> {
        if !dir.join(files::CONFIG).exists() {
            return Err(StoreError::NotADatabase {
                dir: dir.to_path_buf(),
            });
        }
        let lock = lock_dir(dir)?;
        let sled_path = dir.join(files::SLED);
        if let Err(e) = open_sled(&sled_path) {
            tracing::warn!(error = %e, "deleting the unreadable sled directory");
            fs::remove_dir_all(&sled_path).map_err(io_err(&sled_path))?;
        }
        Self::open_locked(dir, lock, Open::Reindex, progress)
    }

    fn open_locked(
        dir: &Path,
        lock: File,
        how: Open,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, StoreError> {
        let reindex = how == Open::Reindex;
        let config = dir::read_config(dir)?;
        let key = SigningKey::load(&dir.join(files::SECRET_KEY))?;
        let sled = open_sled(&dir.join(files::SLED))?;
        let index = Index::new(sled.open_tree(TREE)?);
        if !reindex && !index.is_current()? {
            tracing::info!("the feed index has another layout; rebuilding it from the log");
            index.clear()?;
        }
        let mut state = if reindex {
            index.clear()?;
            IndexState::default()
        } else {
            index.load()?
        };
        let known_durable =
            (state.checkpoint.next_offset > 0).then_some(state.checkpoint.next_offset);
        let (log, recovery) =
            LogWriter::open(&dir.join(files::LOG), config.segment_bytes, known_durable)?;
        let segments = log.segments().clone();
        let end = log.end();
        if state.checkpoint.next_offset > end {
            tracing::warn!(
                checkpoint = state.checkpoint.next_offset,
                end,
                "the index is ahead of the log; rebuilding it"
            );
            index.clear()?;
            state = IndexState::default();
        }
        let resumed = state.checkpoint.records > 0;
        let db = Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                config,
                key,
                sled,
                index,
                writer: Mutex::new(Writer {
                    log,
                    poisoned: false,
                }),
                segments,
                state: RwLock::new(state),
                heads_version: std::sync::atomic::AtomicU64::new(0),
                watch: Watch::new(end),
                recovery,
                created: how == Open::Created,
                holds: Mutex::new(backup::Holds {
                    restored: backup::load_restored(dir)?,
                    remote_seq: 0,
                }),
                observer: RwLock::new(None),
                _lock: lock,
            }),
        };
        match db.catch_up(progress) {
            Ok(()) => Ok(db),
            Err(e) if resumed && !reindex => {
                // The checkpoint may not sit on a record boundary any
                // more: start over from 0 once.
                tracing::warn!(error = %e, "index checkpoint unusable; rebuilding");
                db.inner.index.clear()?;
                *db.state_mut() = IndexState::default();
                db.catch_up(progress)?;
                Ok(db)
            }
            Err(e) => Err(e),
        }
    }

    /// Fold the records the index has not folded yet (from its checkpoint
    /// to the log's end) into it, finishing the edits their deletions and
    /// forget markers call for, reporting `(offset, end)` as it goes.
    fn catch_up(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let end = writer.log.end();
        let from = self.state().checkpoint.next_offset;
        let mut it = self.inner.segments.iter(from, end);
        loop {
            let mut chunk = Vec::new();
            for rec in it.by_ref() {
                chunk.push(rec?);
                if chunk.len() >= 10_000 {
                    break;
                }
            }
            let Some(last) = chunk.last().map(|r| r.next_offset) else {
                break;
            };
            let (plan, applied) = self.edit_for(&mut writer, &chunk)?;
            let mut state = self.state_mut();
            let mut batch = std::mem::take(&mut state.pending);
            for rec in &chunk {
                let segment = self.inner.segments.segment_start(rec.offset);
                state.apply(rec, segment, &mut batch);
            }
            delete::account(
                &mut state,
                &plan,
                &applied,
                |o| self.inner.segments.segment_start(o),
                &mut batch,
            );
            state.pending = batch;
            write::commit_pending(&self.inner.index, &mut state)?;
            drop(state);
            progress(last, end);
        }
        // Everything up to the end is folded (padding at the very end is
        // stepped over without a record to say so).
        let mut state = self.state_mut();
        state.checkpoint.next_offset = state.checkpoint.next_offset.max(end);
        self.inner.index.commit(&state.pending, &state.checkpoint)?;
        state.pending = Default::default();
        state.pending_records = 0;
        drop(state);
        progress(end, end);
        Ok(())
    }

    /// The log's segments, for readers in this crate.
    pub(crate) fn segments(&self) -> &Arc<Segments> {
        &self.inner.segments
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// This database's settings.
    pub fn config(&self) -> &DbConfig {
        &self.inner.config
    }

    /// This peer's feed id.
    pub fn feed_id(&self) -> FeedId {
        self.inner.key.feed_id()
    }

    /// This peer's signing key (the libp2p identity uses the same secret).
    pub fn signing_key(&self) -> &SigningKey {
        &self.inner.key
    }

    /// The network key stored in the database.
    pub fn network_key(&self) -> Result<NetworkKey, StoreError> {
        Ok(NetworkKey::load(&self.inner.dir.join(files::NETWORK_KEY))?)
    }

    /// The sled database holding all derived state. Views open their own
    /// trees in it; the tree named [`crate::index::TREE`] is the feed index.
    pub fn sled(&self) -> &sled::Db {
        &self.inner.sled
    }

    /// What opening the log had to repair, if anything.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.inner.recovery.as_ref()
    }

    /// True when this handle created the database ([`Db::create`], or
    /// [`Db::open_or_create`] finding none), false when it opened one.
    pub fn created(&self) -> bool {
        self.inner.created
    }

    /// Tell `observer` of every append, ingest and refused entry from now
    /// on (in place of any observer set before).
    pub fn set_observer(&self, observer: Arc<dyn crate::observe::Observer>) {
        if let Ok(mut o) = self.inner.observer.write() {
            *o = Some(observer);
        }
    }

    /// Run `f` with the observer, if one is set.
    pub(crate) fn observe(&self, f: impl FnOnce(&dyn crate::observe::Observer)) {
        if let Ok(o) = self.inner.observer.read()
            && let Some(o) = o.as_ref()
        {
            f(o.as_ref());
        }
    }

    /// The committed end of the log and a way to wait for it to move.
    pub fn watch(&self) -> &Watch {
        &self.inner.watch
    }

    /// The offset just past the last durable record.
    pub fn log_end(&self) -> u64 {
        self.inner.watch.end()
    }

    /// A number that changes whenever heads, forks or anything else of
    /// the index's in-memory state may have changed: equal numbers from
    /// two calls mean [`Db::feeds`] answered the same in between. Lets a
    /// caller that scanned every head skip the next scan.
    pub fn heads_version(&self) -> u64 {
        let _state = self.state();
        self.inner
            .heads_version
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The state, for writing; bumps [`Db::heads_version`] while the lock
    /// is held, so no reader sees the new number with the old state.
    pub(crate) fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        let guard = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        self.inner
            .heads_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        guard
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.inner.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The head of `feed`, if any entry of it is held.
    pub fn head(&self, feed: &FeedId) -> Option<Head> {
        self.state().heads.get(feed).copied()
    }

    /// Every feed's head.
    pub fn heads(&self) -> HashMap<FeedId, Head> {
        self.state().heads.clone()
    }

    /// Where `feed` forked, if it did.
    pub fn fork(&self, feed: &FeedId) -> Option<ForkInfo> {
        self.state().forks.get(feed).copied()
    }

    /// Every known feed, sorted by id.
    pub fn feeds(&self) -> Vec<FeedInfo> {
        let state = self.state();
        let mut out: Vec<FeedInfo> = state
            .heads
            .iter()
            .map(|(feed, head)| FeedInfo {
                feed: *feed,
                head: *head,
                fork: state.forks.get(feed).copied(),
            })
            .collect();
        out.sort_by_key(|f| f.feed);
        out
    }

    /// Stored fork proofs, one per forked feed.
    pub fn fork_proofs(&self) -> Result<Vec<ForkProof>, StoreError> {
        let forks: Vec<ForkInfo> = self.state().forks.values().copied().collect();
        let end = self.log_end();
        let mut out = Vec::new();
        for f in forks {
            if let RecordBody::Fork(p) = self.inner.segments.read_at(f.proof_offset, end)?.body {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Counts for status displays.
    pub fn status(&self) -> Status {
        let files = self.inner.segments.file_sizes();
        let state = self.state();
        let erased = state.erased_total();
        let sealed = files.len().saturating_sub(1);
        let reclaimable_bytes = files[..sealed]
            .iter()
            .map(|(start, size)| {
                crate::log::compact_gain(*size, state.live.get(start).copied().unwrap_or(0))
            })
            .sum();
        Status {
            dir: self.inner.dir.clone(),
            feed_id: self.feed_id(),
            log_bytes: state.checkpoint.next_offset,
            records: state.checkpoint.records,
            entries: state.checkpoint.entries,
            feeds: state.heads.len(),
            forked_feeds: state.forks.len(),
            disk_bytes: files.iter().map(|(_, size)| size).sum(),
            erased_entries: erased.entries,
            erased_bytes: erased.bytes,
            reclaimable_bytes,
            recovery: self.inner.recovery.clone(),
        }
    }
}
