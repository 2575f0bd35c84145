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
//! Write path: validate → sign (all cores) → frame → write + fsync the log
//! → fold into the index (one sled batch with its checkpoint) → publish the
//! new end to watchers. A write that returned `Ok` survives a crash; the
//! index may lag after a crash and catches up on the next open.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let db = kappadb_core::Db::create(dir.path(), Default::default()).unwrap();
//! let appended = db.append(br#"{"type":"note","text":"hi"}"#.to_vec()).unwrap();
//! assert_eq!(appended.seq, 1);
//! let entry = db.get(&db.feed_id(), 1).unwrap().unwrap();
//! assert_eq!(entry.id(), appended.id);
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, EntryId, ForkProof, HEADER_VERSION, Hash, Header, SignedHeader};
use crate::error::StoreError;
use crate::index::{ForkInfo, Head, Index, IndexBatch, IndexState, Run, TREE};
use crate::keys::{FeedId, NetworkKey, SigningKey};
use crate::log::{
    LogIter, LogRecord, LogWriter, MAX_PAYLOAD_LIMIT, RecordBody, Recovery, Segments, encode_record,
};
use crate::tail::Tail;
use crate::validate::{
    CheckedEntries, EntryError, validate_header, validate_link, validate_payload,
    validate_signature, verify_signatures,
};
use crate::watch::Watch;

/// File names inside a database directory.
pub mod files {
    /// The lock file.
    pub const LOCK: &str = "kappa.lock";
    /// The config file.
    pub const CONFIG: &str = "config.json";
    /// The feed key.
    pub const SECRET_KEY: &str = "secret.key";
    /// The network key.
    pub const NETWORK_KEY: &str = "network.key";
    /// The log directory.
    pub const LOG: &str = "log";
    /// The sled directory.
    pub const SLED: &str = "sled";
}

/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Index changes are committed to sled once this many records are pending
/// (and on `flush_index` and when the handle is dropped). A sled commit
/// costs about as much as the log's fsync, so committing after every single
/// append would halve their rate; what is pending lives in memory, readers
/// look there first, and after a crash the index catches up from its
/// checkpoint. The number is kept small because the checkpoint is also what
/// tells a torn tail from damage on open: a bad record past it is cut as
/// torn (and saved aside), so the checkpoint should not lag far behind what
/// was acknowledged.
const INDEX_COMMIT_RECORDS: usize = 64;

/// Per-database settings, stored in `config.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// Largest payload accepted at append and ingest, in bytes.
    pub max_payload_bytes: u32,
    /// A log segment is closed once it reaches this size.
    pub segment_bytes: u64,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DbConfig {
    fn check(&self, path: &Path) -> Result<(), StoreError> {
        let bad = |reason: String| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(bad(format!(
                "max_payload_bytes {} is over the largest supported limit {MAX_PAYLOAD_LIMIT}",
                self.max_payload_bytes
            )));
        }
        if self.segment_bytes < 4096 {
            return Err(bad("segment_bytes must be at least 4096".into()));
        }
        Ok(())
    }
}

/// Options for [`Db::create`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Settings to store.
    pub config: DbConfig,
    /// Join this network instead of creating a new one.
    pub network_key: Option<NetworkKey>,
    /// Use this feed key instead of generating one (tests, key import).
    pub signing_key: Option<SigningKey>,
}

/// One of this peer's entries, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its id.
    pub id: EntryId,
    /// Its log offset.
    pub offset: u64,
    /// Its timestamp.
    pub timestamp: u64,
}

/// What [`Db::ingest`] did with each entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Entries stored.
    pub accepted: usize,
    /// Entries already held.
    pub duplicates: usize,
    /// Entries refused: index in the input and why.
    pub rejected: Vec<(usize, EntryError)>,
    /// Forks found (each stored as a proof).
    pub forks: Vec<ForkProof>,
    /// Feeds whose head moved, with their new seq.
    pub new_heads: Vec<(FeedId, u64)>,
    /// True when nothing was stored because the page was invalid
    /// ([`Db::ingest_page`] only).
    pub dropped: bool,
}

/// A record `ingest` will write: an input entry (by index) or a fork proof.
enum Pending {
    Entry(usize),
    Fork(Box<ForkProof>),
}

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
    /// What opening the log repaired, if anything.
    pub recovery: Option<Recovery>,
}

/// A problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Log offset of the record concerned (or the log's end).
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

/// The result of [`Db::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Entries checked.
    pub entries: u64,
    /// Feeds seen.
    pub feeds: usize,
    /// Fork proofs checked.
    pub fork_proofs: u64,
    /// Payloads not held (valid, reported for information).
    pub missing_payloads: u64,
    /// Everything that does not hold.
    pub problems: Vec<Problem>,
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

struct Writer {
    log: LogWriter,
    poisoned: bool,
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
    watch: Watch,
    recovery: Option<Recovery>,
    /// True when this handle created the database.
    created: bool,
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(files::LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
    }
    file.set_len(0).map_err(io_err(&path))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err(&path))?;
    Ok(file)
}

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let unavailable = |reason: String| StoreError::IndexUnavailable {
        path: path.to_path_buf(),
        reason,
    };
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(128 * 1024 * 1024)
        .flush_every_ms(Some(1000));
    // sled 0.34 can panic on damaged files; its state is derived, so a
    // panic here becomes an error that points at `kappa reindex`.
    // We hold the directory lock, so a sled file lock held by someone
    // else can only be this process's previous `Db`, whose sled threads
    // release it a moment after the drop: wait for them, briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open())) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable("sled panicked while opening its files".into())),
        }
    }
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
        for name in [
            files::CONFIG,
            files::SECRET_KEY,
            files::NETWORK_KEY,
            files::LOG,
        ] {
            if dir.join(name).exists() {
                return Err(StoreError::AlreadyExists {
                    dir: dir.to_path_buf(),
                });
            }
        }
        let config_path = dir.join(files::CONFIG);
        opts.config.check(&config_path)?;
        let key = match opts.signing_key {
            Some(k) => k,
            None => SigningKey::generate()?,
        };
        key.save(&dir.join(files::SECRET_KEY))?;
        let network = match opts.network_key {
            Some(k) => k,
            None => NetworkKey::generate()?,
        };
        network.save(&dir.join(files::NETWORK_KEY))?;
        // The config file is written last: its presence marks a complete
        // database.
        let text = serde_json::to_string_pretty(&opts.config).unwrap_or_default();
        let tmp = dir.join("config.json.tmp");
        fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &config_path).map_err(io_err(&config_path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
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
        let config_path = dir.join(files::CONFIG);
        let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
        let config: DbConfig = serde_json::from_str(&text).map_err(|e| StoreError::Config {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        config.check(&config_path)?;
        let key = SigningKey::load(&dir.join(files::SECRET_KEY))?;
        let sled = open_sled(&dir.join(files::SLED))?;
        let index = Index::new(sled.open_tree(TREE)?);
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
        // Catch up from the checkpoint to the log's end.
        let it = segments.iter(state.checkpoint.next_offset, end);
        let mut batch = IndexBatch::default();
        let mut pending = 0usize;
        for rec in it {
            let rec = match rec {
                Ok(r) => r,
                Err(e) if state.checkpoint.records == 0 || reindex => return Err(e),
                Err(e) => {
                    // The checkpoint may not sit on a record boundary any
                    // more: start over from 0 once.
                    tracing::warn!(error = %e, "index checkpoint unusable; rebuilding");
                    return Self::open_locked(dir, lock, Open::Reindex, progress);
                }
            };
            state.apply(&rec, &mut batch);
            pending += 1;
            if pending >= 10_000 {
                index.commit(std::mem::take(&mut batch), &state.checkpoint)?;
                pending = 0;
                progress(rec.next_offset, end);
            }
        }
        index.commit(batch, &state.checkpoint)?;
        progress(end, end);
        let watch = Watch::new(end);
        Ok(Self {
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
                watch,
                recovery,
                created: how == Open::Created,
                _lock: lock,
            }),
        })
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

    /// The committed end of the log and a way to wait for it to move.
    pub fn watch(&self) -> &Watch {
        &self.inner.watch
    }

    /// The offset just past the last durable record.
    pub fn log_end(&self) -> u64 {
        self.inner.watch.end()
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
        let state = self.state();
        Status {
            dir: self.inner.dir.clone(),
            feed_id: self.feed_id(),
            log_bytes: state.checkpoint.next_offset,
            records: state.checkpoint.records,
            entries: state.checkpoint.entries,
            feeds: state.heads.len(),
            forked_feeds: state.forks.len(),
            recovery: self.inner.recovery.clone(),
        }
    }

    /// The entry of `feed` at `seq`.
    pub fn get(&self, feed: &FeedId, seq: u64) -> Result<Option<Entry>, StoreError> {
        let Some(offset) = self.offset_of(feed, seq)? else {
            return Ok(None);
        };
        self.entry_at(offset).map(Some)
    }

    /// The log offset of `feed`'s entry at `seq`: its run, then a skip over
    /// the frame headers before it.
    fn offset_of(&self, feed: &FeedId, seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(run) = self.run_for(feed, seq)? else {
            return Ok(None);
        };
        let end = self.log_end();
        self.inner
            .segments
            .skip(run.offset, seq - run.first_seq, end)
            .map(Some)
    }

    /// The run of `feed` that holds `seq`: pending (not yet committed) runs
    /// first, then sled.
    fn run_for(&self, feed: &FeedId, seq: u64) -> Result<Option<Run>, StoreError> {
        if let Some(run) = self.state().pending.run_for(feed, seq) {
            return Ok(Some(run));
        }
        // Not pending when we looked; if it was committed since, sled has it.
        self.inner.index.run_for(feed, seq)
    }

    /// The record at a log offset (which must be a record boundary).
    pub fn record_at(&self, offset: u64) -> Result<LogRecord, StoreError> {
        self.inner.segments.read_at(offset, self.log_end())
    }

    fn entry_at(&self, offset: u64) -> Result<Entry, StoreError> {
        match self.record_at(offset)?.body {
            RecordBody::Entry(e) => Ok(e),
            RecordBody::Fork(_) => Err(StoreError::IndexDamaged("index points at a fork proof")),
        }
    }

    /// Entries of `feed` with `from <= seq <= to`, in seq order.
    pub fn feed_range(
        &self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        let from = from.max(1);
        let runs = match self.run_for(feed, from) {
            Ok(first) => {
                let start = first.map_or(from, |r| r.first_seq);
                // Pending runs replace sled's runs of the same first seq.
                let pending = self.state().pending.runs_between(feed, start, to);
                let committed = self.inner.index.runs_from(feed, start, to);
                Box::new(MergeRuns {
                    committed: committed.peekable(),
                    pending: pending.into_iter().peekable(),
                }) as Box<dyn Iterator<Item = Result<Run, StoreError>>>
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        let end = self.log_end();
        runs.flat_map(move |run| {
            let run = match run {
                Ok(r) => r,
                Err(e) => return vec![Err(e)],
            };
            let mut out = Vec::new();
            let mut offset = run.offset;
            for k in 0..u64::from(run.count) {
                let seq = run.first_seq + k;
                if seq > to {
                    break;
                }
                match self.inner.segments.read_at(offset, end) {
                    Ok(rec) => {
                        offset = rec.next_offset;
                        if seq < from {
                            continue;
                        }
                        match rec.body {
                            RecordBody::Entry(e) if e.header.seq == seq => out.push(Ok(e)),
                            _ => {
                                out.push(Err(StoreError::IndexDamaged(
                                    "run does not match the log",
                                )));
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                }
            }
            out
        })
    }

    /// Records from `offset` (a record boundary, e.g. a `next_offset`) to
    /// the current end of the log.
    pub fn log_iter(&self, offset: u64) -> LogIter {
        self.inner.segments.iter(offset, self.log_end())
    }

    /// The first record boundary at or after any byte offset.
    pub fn record_boundary(&self, offset: u64) -> Result<u64, StoreError> {
        self.inner
            .segments
            .boundary_at_or_after(offset, self.log_end())
    }

    /// Follow the log from `offset`: every record from the first record
    /// boundary at or after it, then each new record as it becomes
    /// durable (local appends and entries synced from peers alike). The
    /// iterator blocks at the end of the log; see [`Tail`] for a timed
    /// wait and for resuming from [`Tail::offset`].
    ///
    /// The tail holds a clone of this handle, so the database stays open
    /// while it lives.
    pub fn tail(&self, offset: u64) -> Tail {
        Tail::new(self.clone(), offset)
    }

    /// Append one payload to this peer's feed. Durable on return.
    pub fn append(&self, payload: Vec<u8>) -> Result<Appended, StoreError> {
        let mut out = self.append_batch(vec![payload])?;
        out.pop().ok_or(StoreError::Poisoned)
    }

    /// Append many payloads in order, signing on all cores, with one fsync
    /// for the whole batch. All or nothing: a payload over the limit fails
    /// the batch before anything is written.
    pub fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<Appended>, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        for p in &payloads {
            if p.len() as u64 > u64::from(limit) {
                return Err(EntryError::PayloadTooLarge {
                    len: p.len() as u64,
                    limit,
                }
                .into());
            }
        }
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        // Small batches stay on this thread: handing work to the pool costs
        // more than it saves.
        let parallel = payloads.len() >= 16;
        let hashes: Vec<Hash> = if parallel {
            payloads.par_iter().map(|p| Hash::of(p)).collect()
        } else {
            payloads.iter().map(|p| Hash::of(p)).collect()
        };
        let mut writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let author = self.feed_id();
        let (mut seq, mut prev, mut ts) = {
            let state = self.state();
            if let Some(f) = state.forks.get(&author) {
                let head_seq = state.heads.get(&author).map_or(0, |h| h.seq);
                return Err(EntryError::FeedForked {
                    author,
                    fork_seq: f.seq,
                    seq: head_seq + 1,
                }
                .into());
            }
            match state.heads.get(&author) {
                Some(h) => (h.seq, Some(h.id), h.timestamp),
                None => (0, None, 0),
            }
        };
        let now = now_ms();
        let mut headers = Vec::with_capacity(payloads.len());
        let mut ids = Vec::with_capacity(payloads.len());
        for (p, hash) in payloads.iter().zip(hashes) {
            seq += 1;
            // Own timestamps never go backwards, even if the clock does.
            ts = ts.max(now);
            let header = Header {
                version: HEADER_VERSION,
                author,
                seq,
                prev,
                timestamp: ts,
                payload_len: p.len() as u32,
                payload_hash: hash,
            };
            let id = header.id();
            prev = Some(id);
            headers.push(header);
            ids.push(id);
        }
        let key = &self.inner.key;
        let signatures: Vec<_> = if parallel {
            ids.par_iter().map(|id| key.sign(&id.0)).collect()
        } else {
            ids.iter().map(|id| key.sign(&id.0)).collect()
        };
        let entries: Vec<Entry> = headers
            .into_iter()
            .zip(signatures)
            .zip(payloads)
            .map(|((header, signature), payload)| Entry {
                header,
                signature,
                payload: Some(payload),
            })
            .collect();
        let records: Vec<RecordBody> = entries.into_iter().map(RecordBody::Entry).collect();
        let stored = self.write_records(&mut writer, records)?;
        Ok(stored
            .iter()
            .zip(ids)
            .map(|(rec, id)| {
                let (seq, timestamp) = rec
                    .entry()
                    .map_or((0, 0), |e| (e.header.seq, e.header.timestamp));
                Appended {
                    seq,
                    id,
                    offset: rec.offset,
                    timestamp,
                }
            })
            .collect())
    }

    /// Write records durably, fold them into the index, publish the end.
    fn write_records(
        &self,
        writer: &mut MutexGuard<'_, Writer>,
        records: Vec<RecordBody>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let mut buf = Vec::new();
        let mut lens = Vec::with_capacity(records.len());
        for r in &records {
            let before = buf.len();
            encode_record(r, &mut buf);
            lens.push(buf.len() - before);
        }
        let offsets = match writer.log.append(&buf, &lens) {
            Ok(o) => o,
            Err(e) => {
                writer.poisoned = true;
                return Err(e);
            }
        };
        let stored: Vec<LogRecord> = records
            .into_iter()
            .zip(offsets.iter().zip(lens.iter()))
            .map(|(body, (&offset, &len))| LogRecord {
                offset,
                next_offset: offset + len as u64,
                body,
            })
            .collect();
        let end = writer.log.end();
        {
            let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            let mut pending = std::mem::take(&mut state.pending);
            for rec in &stored {
                state.apply(rec, &mut pending);
            }
            state.pending = pending;
            state.pending_records += stored.len();
            if state.pending_records >= INDEX_COMMIT_RECORDS
                && let Err(e) = commit_pending(&self.inner.index, &mut state)
            {
                // The log holds the records; the index catches up on reopen.
                writer.poisoned = true;
                return Err(e);
            }
        }
        self.inner.watch.publish(end);
        Ok(stored)
    }

    /// Validate and store entries from other feeds (or this one, from a
    /// backup). Each entry is checked against every rule in
    /// [`crate::validate`] and against the feed's head; entries may come in
    /// any order and are stored in `(feed, seq)` order. A conflicting entry
    /// at a seq already held is a fork: the proof is stored and the feed is
    /// not extended past it. Returns what was stored and why the rest was
    /// not.
    pub fn ingest(&self, entries: Vec<Entry>) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        self.ingest_inner(CheckedEntries::new(entries, limit), false)
    }

    /// Like [`Db::ingest`], but all or nothing for sync pages: if any entry
    /// breaks a validation rule (bad signature, broken chain, bad payload,
    /// ...), nothing of the page is stored and `dropped` is set. Duplicates,
    /// forks and entries of blocked or forked feeds do not drop the page.
    pub fn ingest_page(&self, entries: Vec<Entry>) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        self.ingest_inner(CheckedEntries::new(entries, limit), true)
    }

    /// [`Db::ingest_page`] for entries checked beforehand, perhaps on
    /// another thread while this database stored the previous page. Entries
    /// checked against another payload limit than this database's are
    /// checked again.
    pub fn ingest_checked(&self, page: CheckedEntries) -> Result<IngestReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        let page = if page.max_payload() == limit {
            page
        } else {
            CheckedEntries::new(page.into_entries(), limit)
        };
        self.ingest_inner(page, true)
    }

    fn ingest_inner(&self, page: CheckedEntries, strict: bool) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let (entries, ids, verdicts) = page.into_parts();
        let mut valid = Vec::with_capacity(entries.len());
        for (i, r) in verdicts.into_iter().enumerate() {
            match r {
                Ok(()) => valid.push(i),
                Err(e) => report.rejected.push((i, e)),
            }
        }
        if strict && report.rejected.iter().any(|(_, e)| !e.is_policy()) {
            report.dropped = true;
            return Ok(report);
        }
        valid.sort_by_key(|&i| (entries[i].header.author, entries[i].header.seq));

        let mut writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut records = Vec::new();
        let mut accepted_idx = Vec::new();
        {
            let state = self.state();
            // Heads and forks as they will be after this batch.
            let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
            let mut forks: HashMap<FeedId, u64> = HashMap::new();
            let mut pending: HashMap<(FeedId, u64), usize> = HashMap::new();
            for &i in &valid {
                let h = &entries[i].header;
                let head = heads
                    .get(&h.author)
                    .copied()
                    .or_else(|| state.heads.get(&h.author).map(|x| (x.seq, x.id)));
                let fork_seq = forks
                    .get(&h.author)
                    .copied()
                    .or_else(|| state.forks.get(&h.author).map(|f| f.seq));
                if let Some(fs) = fork_seq.filter(|&fs| h.seq >= fs) {
                    report.rejected.push((
                        i,
                        EntryError::FeedForked {
                            author: h.author,
                            fork_seq: fs,
                            seq: h.seq,
                        },
                    ));
                    continue;
                }
                let head_seq = head.map_or(0, |x| x.0);
                if h.seq <= head_seq {
                    // Already have an entry at this seq: same or a fork?
                    let existing = match pending.get(&(h.author, h.seq)) {
                        Some(&j) => entries[j].signed_header(),
                        None => match self.offset_of(&h.author, h.seq)? {
                            Some(off) => self.entry_at(off)?.signed_header(),
                            None => {
                                report.rejected.push((
                                    i,
                                    EntryError::SeqGap {
                                        expected: head_seq + 1,
                                        found: h.seq,
                                    },
                                ));
                                continue;
                            }
                        },
                    };
                    if existing.header.id() == ids[i] {
                        report.duplicates += 1;
                    } else {
                        let proof = ForkProof::new(existing, entries[i].signed_header());
                        forks.insert(h.author, h.seq);
                        report.forks.push(proof.clone());
                        records.push(Pending::Fork(Box::new(proof)));
                    }
                    continue;
                }
                if let Err(e) = validate_link(head, h) {
                    report.rejected.push((i, e));
                    continue;
                }
                heads.insert(h.author, (h.seq, ids[i]));
                pending.insert((h.author, h.seq), i);
                accepted_idx.push(i);
                records.push(Pending::Entry(i));
            }
        }
        if strict && report.rejected.iter().any(|(_, e)| !e.is_policy()) {
            report.dropped = true;
            report.forks.clear();
            return Ok(report);
        }
        if records.is_empty() {
            return Ok(report);
        }
        report.accepted = accepted_idx.len();
        // Move the accepted entries (and their payloads) into the records.
        let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
        let records: Vec<RecordBody> = records
            .into_iter()
            .filter_map(|p| match p {
                Pending::Entry(i) => slots
                    .get_mut(i)
                    .and_then(Option::take)
                    .map(RecordBody::Entry),
                Pending::Fork(proof) => Some(RecordBody::Fork(*proof)),
            })
            .collect();
        let stored = self.write_records(&mut writer, records)?;
        let mut new_heads: HashMap<FeedId, u64> = HashMap::new();
        for rec in &stored {
            if let Some(e) = rec.entry() {
                new_heads.insert(e.header.author, e.header.seq);
            }
        }
        report.new_heads = new_heads.into_iter().collect();
        report.new_heads.sort();
        report.rejected.sort_by_key(|(i, _)| *i);
        Ok(report)
    }

    /// Store a fork proof learned from a peer. Returns `true` if it was news
    /// (the feed was not known to be forked at or before that seq).
    pub fn ingest_fork_proof(&self, proof: ForkProof) -> Result<bool, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        let (a, b) = (&proof.a.header, &proof.b.header);
        if a.author != b.author || a.seq != b.seq || a.id() == b.id() {
            return Err(EntryError::Malformed("not a fork proof: headers do not conflict").into());
        }
        for s in [&proof.a, &proof.b] {
            validate_header(&s.header, limit)?;
            validate_signature(s)?;
        }
        let mut writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        if self
            .state()
            .forks
            .get(&a.author)
            .is_some_and(|f| f.seq <= a.seq)
        {
            return Ok(false);
        }
        let proof = ForkProof::new(proof.a, proof.b);
        self.write_records(&mut writer, vec![RecordBody::Fork(proof)])?;
        Ok(true)
    }

    /// Re-check every record of the log: framing and checksums, header
    /// rules, signatures (batched), chains and payload hashes; then compare
    /// the heads with the index. Reports `(offset, end)` progress.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        let limit = self.inner.config.max_payload_bytes;
        let end = self.log_end();
        let mut report = VerifyReport::default();
        let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
        let mut chunk: Vec<LogRecord> = Vec::new();
        let mut it = self.inner.segments.iter(0, end);
        let check = |chunk: &mut Vec<LogRecord>,
                     report: &mut VerifyReport,
                     heads: &mut HashMap<FeedId, (u64, EntryId)>| {
            let mut signed: Vec<(u64, SignedHeader)> = Vec::new();
            for rec in chunk.iter() {
                match &rec.body {
                    RecordBody::Entry(e) => signed.push((rec.offset, e.signed_header())),
                    RecordBody::Fork(p) => {
                        signed.push((rec.offset, p.a.clone()));
                        signed.push((rec.offset, p.b.clone()));
                    }
                }
            }
            let refs: Vec<&SignedHeader> = signed.iter().map(|(_, s)| s).collect();
            for ((offset, s), r) in signed.iter().zip(verify_signatures(&refs)) {
                if let Err(e) = r {
                    report.problems.push(Problem {
                        offset: *offset,
                        what: format!("{} seq {}: {e}", s.header.author, s.header.seq),
                    });
                }
            }
            for rec in chunk.drain(..) {
                report.records += 1;
                match rec.body {
                    RecordBody::Entry(e) => {
                        report.entries += 1;
                        let h = &e.header;
                        let mut problem = |what: String| {
                            report.problems.push(Problem {
                                offset: rec.offset,
                                what: format!("{} seq {}: {what}", h.author, h.seq),
                            })
                        };
                        if let Err(err) = validate_header(h, limit) {
                            problem(err.to_string());
                        }
                        if let Err(err) = validate_link(heads.get(&h.author).copied(), h) {
                            problem(err.to_string());
                        }
                        match &e.payload {
                            None => report.missing_payloads += 1,
                            Some(p) => {
                                if let Err(err) = validate_payload(h, Some(p), u32::MAX) {
                                    problem(err.to_string());
                                }
                            }
                        }
                        heads.insert(h.author, (h.seq, h.id()));
                    }
                    RecordBody::Fork(p) => {
                        report.fork_proofs += 1;
                        let (a, b) = (&p.a.header, &p.b.header);
                        if a.author != b.author || a.seq != b.seq || a.id() == b.id() {
                            report.problems.push(Problem {
                                offset: rec.offset,
                                what: "fork proof whose headers do not conflict".into(),
                            });
                        }
                    }
                }
            }
        };
        while let Some(rec) = it.next() {
            match rec {
                Ok(rec) => {
                    chunk.push(rec);
                    if chunk.len() >= 4096 {
                        check(&mut chunk, &mut report, &mut heads);
                        progress(it.offset(), end);
                    }
                }
                Err(e) => {
                    let offset = match &e {
                        StoreError::Corrupt { offset, .. } => *offset,
                        _ => it.offset(),
                    };
                    report.problems.push(Problem {
                        offset,
                        what: format!("{e}; the records after it were not checked"),
                    });
                }
            }
        }
        check(&mut chunk, &mut report, &mut heads);
        progress(end, end);
        report.feeds = heads.len();
        let indexed = self.heads();
        let mut mismatched = 0;
        for (feed, (seq, id)) in &heads {
            match indexed.get(feed) {
                Some(h) if h.seq == *seq && h.id == *id => {}
                _ => mismatched += 1,
            }
        }
        mismatched += indexed.keys().filter(|f| !heads.contains_key(f)).count();
        if mismatched > 0 {
            report.problems.push(Problem {
                offset: end,
                what: format!(
                    "the index disagrees with the log on {mismatched} feed(s); run `kappa reindex`"
                ),
            });
        }
        Ok(report)
    }

    /// Block until the log end passes `offset` or `timeout` elapses.
    pub fn wait_past(&self, offset: u64, timeout: Duration) -> u64 {
        self.inner.watch.wait_past(offset, timeout)
    }

    /// Flush sled's derived state to disk (it also flushes by itself every
    /// second). Not needed for durability of entries.
    pub fn flush_index(&self) -> Result<(), StoreError> {
        {
            let _writer = self.writer();
            let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            commit_pending(&self.inner.index, &mut state)?;
        }
        self.inner.sled.flush()?;
        Ok(())
    }
}

/// Commit the pending index changes with the current checkpoint.
fn commit_pending(index: &Index, state: &mut IndexState) -> Result<(), StoreError> {
    state.pending_records = 0;
    if state.pending.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(&mut state.pending);
    index.commit(batch, &state.checkpoint)
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = commit_pending(&self.index, state) {
            tracing::warn!(error = %e, "could not commit the index on close; it catches up on the next open");
        }
    }
}

/// Runs of one feed from sled and from the pending batch, in seq order; a
/// pending run replaces sled's run with the same first seq (it is newer).
struct MergeRuns<C: Iterator<Item = Result<Run, StoreError>>> {
    committed: std::iter::Peekable<C>,
    pending: std::iter::Peekable<std::vec::IntoIter<Run>>,
}

impl<C: Iterator<Item = Result<Run, StoreError>>> Iterator for MergeRuns<C> {
    type Item = Result<Run, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let committed = self
            .committed
            .peek()
            .map(|c| c.as_ref().map(|r| r.first_seq).ok());
        let pending = self.pending.peek().map(|p| p.first_seq);
        let take_pending = match (committed, pending) {
            // An error comes out first, as it is.
            (Some(None), _) | (Some(Some(_)), None) => false,
            (None, Some(_)) => true,
            (None, None) => return None,
            (Some(Some(c)), Some(p)) => {
                if c == p {
                    self.committed.next();
                }
                c >= p
            }
        };
        if take_pending {
            self.pending.next().map(Ok)
        } else {
            self.committed.next()
        }
    }
}
