//! The [`Indexer`]: folds the local log into every registered view, in
//! batches, from each view's own checkpoint.
//!
//! Flow of one fold *round*: the views that are behind are grouped by
//! checkpoint; for each group, batches of log records (up to
//! [`IndexerConfig::batch_records`] each) are read once and handed to every
//! view of the group (in parallel when there are several). A round is a
//! pipeline: while batch N folds, batch N+1 is read and parsed on one
//! thread and batch N-1 commits on another, N folding through N-1's
//! writes. Each view's writes and its new checkpoint commit in one sled
//! batch on its generation tree, and the round holds each generation's
//! fold lock throughout: a batch is folded exactly once, even with several
//! threads folding and across crashes. A batch that writes more than about
//! a thousand keys makes the next ones shorter (sled applies big batches
//! slowly); one that writes few makes them longer.
//!
//! A background thread (std only; no async runtime) runs rounds whenever
//! the log end moves ([`kappadb_core::Watch::subscribe`]). Callers can also
//! fold synchronously ([`Indexer::catch_up`]) or wait for a view to reach
//! the log's end ([`Indexer::wait_until_caught_up`]).
//!
//! Rebuilds (a changed version, or [`Indexer::rebuild`]) fold into a fresh
//! generation while the active one keeps answering queries; when the new
//! one reaches the log's end, one meta record swaps them and the old tree is
//! dropped once no reader holds it. A generation whose version is not the
//! code's is never folded.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kappadb_core::{Db, ListenerId, RecordBody, StoreError};

use crate::error::ViewError;
use crate::field::{DECLARED_TREE, Declaration, FieldIndex, FieldReader};
use crate::generation::{GenMeta, Generation, META_TREE, ViewDigest, ViewMeta, parse_tree_name};
use crate::kv::{KvReader, KvView};
use crate::timeline::{TimelineReader, TimelineView};
use crate::validate_view_name;
use crate::view::{Checkpoint, View, ViewReader, ViewRecord, ViewTx, Writes};

/// Batches a group of views folds in one round before others get a turn.
const BATCHES_PER_ROUND: usize = 8;
/// Keys a fold batch should write, about. Measured on the 1M-entry bench
/// (views/benches/index.rs), kv folds a fifth faster in batches of about a
/// thousand writes than of five thousand (less in flight per batch:
/// records, parsed payloads, writes, sled's own batch), and no faster in
/// smaller ones. Batches that write few keys (a timeline's buckets, hot kv
/// keys) grow instead, up to [`IndexerConfig::batch_records`].
const TARGET_WRITES: usize = 1_000;
/// Fewest records a batch is cut to.
const MIN_BATCH: usize = 256;

/// Settings of an [`Indexer`].
#[derive(Clone, Debug)]
pub struct IndexerConfig {
    /// Run a background thread that folds new records as they land.
    pub live: bool,
    /// Register the built-in `kv` and `timeline` views on open.
    pub builtins: bool,
    /// Most log records per fold batch (batches that write many keys are
    /// cut shorter, to about a thousand keys).
    pub batch_records: usize,
    /// A batch also ends once its payloads reach this many bytes.
    pub batch_bytes: usize,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            live: true,
            builtins: true,
            batch_records: 5_000,
            batch_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What a view is doing, for `kappa view list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewStatus {
    /// The view's name.
    pub name: String,
    /// What it indexes.
    pub description: String,
    /// The version of the registered fold.
    pub version: u32,
    /// The version of the data answering queries (differs from `version`
    /// until a rebuild finishes).
    pub active_version: u32,
    /// The generation answering queries.
    pub generation: u64,
    /// Offset of the first log record the active data has not folded.
    pub checkpoint: u64,
    /// The log's end.
    pub log_end: u64,
    /// `log_end - checkpoint`, in bytes of log.
    pub lag: u64,
    /// Entries folded into the active data.
    pub folded: u64,
    /// Entries skipped (no payload, or not of the view's shape).
    pub skipped: u64,
    /// A rebuild in progress.
    pub rebuild: Option<RebuildStatus>,
    /// The last fold error, cleared by the next successful batch.
    pub last_error: Option<String>,
}

/// A rebuild in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildStatus {
    /// The generation being built.
    pub generation: u64,
    /// Its version.
    pub version: u32,
    /// How far it has folded.
    pub checkpoint: u64,
}

/// A declared field index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldIndexInfo {
    /// Its name.
    pub name: String,
    /// Its JSON pointer.
    pub pointer: String,
}

struct Gens {
    active: Arc<Generation>,
    /// When set, `active` is not folded any more (its checkpoint no longer
    /// matches the log) and only serves queries until `building` replaces it.
    active_frozen: bool,
    building: Option<Arc<Generation>>,
    /// Rebuild calls folding `building` themselves; the background thread
    /// leaves it to them.
    driven: usize,
    next_gen: u64,
}

impl Gens {
    fn meta(&self) -> ViewMeta {
        ViewMeta {
            format: 0,
            active: Some(self.active.meta()),
            active_frozen: self.active_frozen,
            building: self.building.as_ref().map(|b| b.meta()),
            next_gen: self.next_gen,
        }
    }
}

struct Slot {
    name: Arc<str>,
    view: RwLock<Arc<dyn View>>,
    gens: Mutex<Gens>,
    last_error: Mutex<Option<String>>,
}

impl Slot {
    fn view(&self) -> Arc<dyn View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn gens(&self) -> MutexGuard<'_, Gens> {
        self.gens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// Wakes the background thread.
#[derive(Default)]
struct Wake {
    state: Mutex<(bool, bool)>,
    cond: Condvar,
}

impl Wake {
    fn notify(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        self.cond.notify_all();
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cond.notify_all();
    }

    fn stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Wait until notified, stopped or `timeout`; returns `true` if stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !state.0 && !state.1 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.0 = false;
        state.1
    }
}

/// Commits and swaps, for waiters.
#[derive(Default)]
struct Progress {
    count: Mutex<u64>,
    cond: Condvar,
}

impl Progress {
    fn notify(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cond.notify_all();
    }

    fn wait(&self, seen: u64, until: Instant) -> u64 {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count == seen {
            let now = Instant::now();
            if now >= until {
                break;
            }
            count = self
                .cond
                .wait_timeout(count, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *count
    }

    fn current(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Shared {
    db: Db,
    config: IndexerConfig,
    meta: sled::Tree,
    declared: sled::Tree,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Declared field indexes: name -> pointer.
    fields: RwLock<BTreeMap<String, String>>,
    /// Replaced generations, dropped once nothing holds them.
    retired: Mutex<Vec<Arc<Generation>>>,
    /// Serializes registrations, declarations and rebuild starts.
    admin: Mutex<()>,
    wake: Arc<Wake>,
    progress: Progress,
}

/// One generation to fold, with the fold to use.
struct Target {
    slot: Arc<Slot>,
    generation: Arc<Generation>,
    view: Arc<dyn View>,
}

/// A generation being folded by [`Shared::fold_group`], under its fold
/// lock.
struct Lane<'t> {
    target: &'t Target,
    _fold: MutexGuard<'t, ()>,
    /// The checkpoint after the last batch folded (maybe not committed).
    checkpoint: Checkpoint,
    /// The writes of the batch being committed, which the next batch reads
    /// through.
    base: Arc<Writes>,
    /// No error so far.
    ok: bool,
}

/// A batch folded into one generation: its writes, checkpoint and the sled
/// batch committing both.
type Staged = Result<(Writes, Checkpoint, sled::Batch), ViewError>;

/// The commits of one batch, on their own thread: per lane index, the
/// result.
type Committing<'s> = std::thread::ScopedJoinHandle<'s, Vec<(usize, Result<(), ViewError>)>>;

/// One batch read from the log.
struct Batch {
    records: Vec<ViewRecord>,
    /// Entries without a payload in the batch (skipped by every view).
    no_payload: u64,
    next_offset: u64,
}

/// Folds the log into views. See the module docs.
///
/// Dropping the indexer stops its background thread (after the batch in
/// progress, which commits or not as a whole).
pub struct Indexer {
    shared: Arc<Shared>,
    listener: Option<ListenerId>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("db", &self.shared.db)
            .field("views", &self.view_names())
            .field("live", &self.thread.is_some())
            .finish()
    }
}

impl Indexer {
    /// Open with the default settings: the built-in views, the declared
    /// field indexes, and a background thread folding new records.
    pub fn open(db: Db) -> Result<Self, ViewError> {
        Self::open_with(db, IndexerConfig::default())
    }

    /// Open with `config`. Declared field indexes are always registered.
    pub fn open_with(db: Db, config: IndexerConfig) -> Result<Self, ViewError> {
        let meta = db.sled().open_tree(META_TREE)?;
        let declared = db.sled().open_tree(DECLARED_TREE)?;
        let config = IndexerConfig {
            batch_records: config.batch_records.max(1),
            batch_bytes: config.batch_bytes.max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            db,
            config,
            meta,
            declared,
            slots: RwLock::new(BTreeMap::new()),
            fields: RwLock::new(BTreeMap::new()),
            retired: Mutex::new(Vec::new()),
            admin: Mutex::new(()),
            wake: Arc::new(Wake::default()),
            progress: Progress::default(),
        });
        if shared.config.builtins {
            shared.install(Arc::new(KvView))?;
            shared.install(Arc::new(TimelineView))?;
        }
        for item in shared.declared.iter() {
            let (name, value) = item?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let res = match serde_json::from_slice::<Declaration>(&value) {
                Ok(Declaration::Field { pointer }) => FieldIndex::new(&name, &pointer)
                    .and_then(|index| shared.install(Arc::new(index)).map(|()| pointer)),
                Err(e) => Err(ViewError::damaged(&name, format!("declaration: {e}"))),
            };
            match res {
                Ok(pointer) => {
                    shared.write_fields().insert(name, pointer);
                }
                Err(e) => tracing::warn!(view = %name, error = %e, "declared view not registered"),
            }
        }
        let mut indexer = Self {
            shared,
            listener: None,
            thread: None,
        };
        if indexer.shared.config.live {
            let wake = indexer.shared.wake.clone();
            indexer.listener = Some(indexer.shared.db.watch().subscribe(move |_| wake.notify()));
            let shared = indexer.shared.clone();
            let thread = std::thread::Builder::new()
                .name("kappadb-indexer".into())
                .spawn(move || shared.run())
                .map_err(|e| {
                    ViewError::fold("*", format!("cannot start the indexer thread: {e}"))
                })?;
            indexer.thread = Some(thread);
        }
        Ok(indexer)
    }

    /// The database folded.
    pub fn db(&self) -> &Db {
        &self.shared.db
    }

    /// Register a view. A view new to this database, or stored with another
    /// version, is (re)built from offset 0; otherwise folding resumes at its
    /// checkpoint.
    pub fn register(&self, view: impl View) -> Result<(), ViewError> {
        self.shared.install(Arc::new(view))?;
        self.shared.wake.notify();
        Ok(())
    }

    /// Register a shared view.
    pub fn register_arc(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
        self.shared.install(view)?;
        self.shared.wake.notify();
        Ok(())
    }

    /// Names of the registered views, sorted.
    pub fn view_names(&self) -> Vec<String> {
        self.shared.read_slots().keys().cloned().collect()
    }

    /// Declare a field index on the value at `pointer` and register it; the
    /// declaration is stored and registered again by every open.
    /// Re-declaring a name with the same pointer does nothing; with another
    /// pointer, the index is rebuilt.
    pub fn declare_field_index(&self, name: &str, pointer: &str) -> Result<(), ViewError> {
        let index = FieldIndex::new(name, pointer)?;
        let shared = &self.shared;
        let _admin = shared.admin();
        let existing = shared.read_fields().get(name).cloned();
        let declaration = serde_json::to_vec(&Declaration::Field {
            pointer: pointer.to_string(),
        })
        .map_err(|e| ViewError::damaged(name, e.to_string()))?;
        match existing {
            Some(p) if p == pointer => return Ok(()),
            Some(_) => {
                let slot = shared.slot(name)?;
                shared.declared.insert(name.as_bytes(), declaration)?;
                shared.replace_view(&slot, Arc::new(index))?;
            }
            None => {
                if shared.read_slots().contains_key(name) {
                    return Err(ViewError::ViewExists(name.to_string()));
                }
                shared.install_locked(Arc::new(index))?;
                shared.declared.insert(name.as_bytes(), declaration)?;
            }
        }
        shared
            .write_fields()
            .insert(name.to_string(), pointer.to_string());
        shared.wake.notify();
        Ok(())
    }

    /// Remove a declared field index: its declaration and its data.
    pub fn remove_field_index(&self, name: &str) -> Result<(), ViewError> {
        let shared = &self.shared;
        let _admin = shared.admin();
        if !shared.read_fields().contains_key(name) {
            return Err(ViewError::UnknownView(name.to_string()));
        }
        shared.declared.remove(name.as_bytes())?;
        shared.write_fields().remove(name);
        let slot = shared
            .write_slots()
            .remove(name)
            .ok_or_else(|| ViewError::UnknownView(name.to_string()))?;
        let mut gens = slot.gens();
        let meta = ViewMeta {
            next_gen: gens.next_gen,
            ..ViewMeta::default()
        };
        meta.store(&shared.meta, name)?;
        let mut retired = shared.retired();
        retired.push(gens.active.clone());
        if let Some(b) = gens.building.take() {
            retired.push(b);
        }
        drop(retired);
        drop(gens);
        drop(slot);
        shared.drop_retired();
        Ok(())
    }

    /// The declared field indexes, sorted by name.
    pub fn field_indexes(&self) -> Vec<FieldIndexInfo> {
        self.shared
            .read_fields()
            .iter()
            .map(|(name, pointer)| FieldIndexInfo {
                name: name.clone(),
                pointer: pointer.clone(),
            })
            .collect()
    }

    /// Fold every view up to the log's end as it is now, on this thread
    /// (finishing rebuilds too). Returns the first fold error, after every
    /// other view has been folded as far as it goes.
    pub fn catch_up(&self) -> Result<(), ViewError> {
        let end = self.shared.db.log_end();
        self.shared.fold_until(None, end, None)
    }

    /// Fold one batch into each group of views (views at the same
    /// checkpoint), on this thread.
    /// Returns whether anything was folded or swapped. For tests and tools
    /// that need to stop between batches.
    pub fn step(&self) -> Result<bool, ViewError> {
        let end = self.shared.db.log_end();
        let targets = self.shared.targets(None, true);
        self.shared.round(targets, end, 1)
    }

    /// Block until `view` answers queries with everything in the log as it
    /// is now, or `timeout` passes. With no background thread, folds on
    /// this thread.
    pub fn wait_until_caught_up(&self, view: &str, timeout: Duration) -> Result<(), ViewError> {
        let shared = &self.shared;
        let slot = shared.slot(view)?;
        let target = shared.db.log_end();
        let deadline = Instant::now() + timeout;
        if self.thread.is_none() {
            return shared.fold_until(Some(&slot), target, Some((deadline, timeout)));
        }
        loop {
            let seen = shared.progress.current();
            if shared.caught_up(&slot, target) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(shared.timeout(&slot, timeout, target));
            }
            shared.wake.notify();
            shared.progress.wait(seen, deadline);
        }
    }

    /// Rebuild `view` from offset 0 into a fresh generation, on this
    /// thread, while the current data keeps answering queries; then swap.
    /// Calls `progress(offset, end)` after every batch. If a rebuild is
    /// already under way (say after a version change), this finishes it.
    pub fn rebuild(
        &self,
        view: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ViewStatus, ViewError> {
        let shared = &self.shared;
        let slot = shared.slot(view)?;
        {
            let _admin = shared.admin();
            let version = slot.view().version();
            let mut gens = slot.gens();
            let reuse = gens.building.as_ref().is_some_and(|b| b.version == version);
            if !reuse {
                shared.start_building(&slot.name, &mut gens, version)?;
            }
            gens.driven += 1;
        }
        struct Driven<'a>(&'a Slot);
        impl Drop for Driven<'_> {
            fn drop(&mut self) {
                let mut gens = self.0.gens();
                gens.driven = gens.driven.saturating_sub(1);
            }
        }
        let _driven = Driven(&slot);
        loop {
            let Some(building) = slot.gens().building.clone() else {
                break;
            };
            let end = shared.db.log_end();
            let at = building.checkpoint().next_offset;
            progress(at.min(end), end);
            let view = slot.view();
            if view.version() != building.version {
                // Replaced by a re-declaration meanwhile: the background
                // thread or `catch_up` finishes the new rebuild.
                break;
            }
            if at >= end {
                shared.maybe_swap(&slot, end)?;
                continue;
            }
            let target = Target {
                slot: slot.clone(),
                generation: building,
                view,
            };
            shared.round(vec![target], end, BATCHES_PER_ROUND)?;
        }
        let status = shared.status(&slot);
        progress(status.checkpoint, status.log_end);
        shared.drop_retired();
        Ok(status)
    }

    /// Start rebuilding `view` into a fresh generation and return at once;
    /// the background thread (or [`Indexer::catch_up`]) folds it and swaps
    /// it in. Starting several rebuilds, then catching up, folds them
    /// together from one read of the log.
    pub fn start_rebuild(&self, view: &str) -> Result<(), ViewError> {
        let shared = &self.shared;
        let slot = shared.slot(view)?;
        {
            let _admin = shared.admin();
            let version = slot.view().version();
            let mut gens = slot.gens();
            shared.start_building(&slot.name, &mut gens, version)?;
        }
        shared.wake.notify();
        Ok(())
    }

    /// The status of every view, sorted by name.
    pub fn status(&self) -> Vec<ViewStatus> {
        let slots: Vec<Arc<Slot>> = self.shared.read_slots().values().cloned().collect();
        slots.iter().map(|s| self.shared.status(s)).collect()
    }

    /// The status of one view.
    pub fn view_status(&self, view: &str) -> Result<ViewStatus, ViewError> {
        let slot = self.shared.slot(view)?;
        Ok(self.shared.status(&slot))
    }

    /// The digest of the data answering queries for `view`.
    pub fn digest(&self, view: &str) -> Result<ViewDigest, ViewError> {
        let slot = self.shared.slot(view)?;
        let active = slot.gens().active.clone();
        active.digest(&slot.name)
    }

    /// Read access to the data answering queries for `view`.
    pub fn reader(&self, view: &str) -> Result<ViewReader, ViewError> {
        let slot = self.shared.slot(view)?;
        let active = slot.gens().active.clone();
        Ok(ViewReader::new(active, slot.name.clone()))
    }

    /// Queries on the `kv` view.
    pub fn kv(&self) -> Result<KvReader, ViewError> {
        Ok(KvReader::new(self.reader(crate::kv::NAME)?))
    }

    /// Queries on the `timeline` view.
    pub fn timeline(&self) -> Result<TimelineReader, ViewError> {
        Ok(TimelineReader::new(
            self.reader(crate::timeline::NAME)?,
            self.shared.db.clone(),
        ))
    }

    /// Queries on the declared field index `name`.
    pub fn field_index(&self, name: &str) -> Result<FieldReader, ViewError> {
        if !self.shared.read_fields().contains_key(name) {
            return Err(ViewError::UnknownView(name.to_string()));
        }
        Ok(FieldReader::new(self.reader(name)?, self.shared.db.clone()))
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        if let Some(id) = self.listener.take() {
            self.shared.db.watch().unsubscribe(id);
        }
        self.shared.wake.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn admin(&self) -> MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_fields(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, String>> {
        self.fields.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_fields(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, String>> {
        self.fields.write().unwrap_or_else(|e| e.into_inner())
    }

    fn retired(&self) -> MutexGuard<'_, Vec<Arc<Generation>>> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, ViewError> {
        self.read_slots()
            .get(name)
            .cloned()
            .ok_or_else(|| ViewError::UnknownView(name.to_string()))
    }

    fn install(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
        let _admin = self.admin();
        self.install_locked(view)
    }

    /// Register a view (the caller holds `admin`): load or create its
    /// generations, plan a rebuild if needed, drop orphan trees.
    fn install_locked(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
        let name = view.name().to_string();
        validate_view_name(&name)?;
        if self.read_slots().contains_key(&name) {
            return Err(ViewError::ViewExists(name));
        }
        let version = view.version();
        let sled = self.db.sled();
        let end = self.db.log_end();
        let meta = ViewMeta::load(&self.meta, &name)?;
        let fresh_meta = meta.is_none();
        let meta = meta.unwrap_or_default();
        let mut next_gen = meta.next_gen;
        if fresh_meta {
            // No record: any tree of this view is left over.
            next_gen = next_gen.max(self.max_tree_gen(&name).map_or(0, |g| g + 1));
        }
        let active = match meta.active {
            Some(a) => Generation::open(sled, &name, a, false)?,
            None => {
                let g = GenMeta {
                    number: next_gen,
                    version,
                };
                next_gen += 1;
                Generation::open(sled, &name, g, true)?
            }
        };
        let mut gens = Gens {
            active: Arc::new(active),
            active_frozen: meta.active_frozen,
            building: None,
            driven: 0,
            next_gen,
        };
        if let Some(b) = meta.building {
            gens.building = Some(Arc::new(Generation::open(sled, &name, b, false)?));
        }
        // Data folded past the log's end names records that are gone (a
        // torn tail was cut): that generation cannot go on.
        if gens.active.checkpoint().next_offset > end {
            tracing::warn!(view = %name, "view is ahead of the log; rebuilding it");
            gens.active_frozen = true;
        }
        if gens
            .building
            .as_ref()
            .is_some_and(|b| b.checkpoint().next_offset > end || b.version != version)
            && let Some(b) = gens.building.take()
        {
            self.retired().push(b);
        }
        if (gens.active.version != version || gens.active_frozen) && gens.building.is_none() {
            self.start_building(&name, &mut gens, version)?;
        }
        gens.meta().store(&self.meta, &name)?;
        // Trees of this view that are neither active nor building are left
        // over from a crash between a swap and a drop.
        let keep: Vec<u64> = std::iter::once(gens.active.number)
            .chain(gens.building.as_ref().map(|b| b.number))
            .collect();
        let retired: Vec<String> = self.retired().iter().map(|g| g.tree_name.clone()).collect();
        for tree in sled.tree_names() {
            if let Some(g) = parse_tree_name(&tree, &name) {
                let tree_name = String::from_utf8_lossy(&tree).into_owned();
                if !keep.contains(&g) && !retired.contains(&tree_name) {
                    tracing::info!(tree = %tree_name, "dropping a left-over view tree");
                    sled.drop_tree(&tree)?;
                }
            }
        }
        let slot = Arc::new(Slot {
            name: Arc::from(name.as_str()),
            view: RwLock::new(view),
            gens: Mutex::new(gens),
            last_error: Mutex::new(None),
        });
        self.write_slots().insert(name, slot);
        self.drop_retired();
        Ok(())
    }

    fn max_tree_gen(&self, name: &str) -> Option<u64> {
        self.db
            .sled()
            .tree_names()
            .iter()
            .filter_map(|t| parse_tree_name(t, name))
            .max()
    }

    /// Start a fresh building generation (replacing any other), persisted.
    fn start_building(&self, name: &str, gens: &mut Gens, version: u32) -> Result<(), ViewError> {
        if let Some(old) = gens.building.take() {
            self.retired().push(old);
        }
        let g = GenMeta {
            number: gens.next_gen,
            version,
        };
        gens.next_gen += 1;
        gens.building = Some(Arc::new(Generation::open(self.db.sled(), name, g, true)?));
        gens.meta().store(&self.meta, name)?;
        tracing::info!(
            view = name,
            generation = g.number,
            version,
            "rebuilding view"
        );
        Ok(())
    }

    /// Swap in a new fold for a registered view (a re-declared field index).
    fn replace_view(&self, slot: &Slot, view: Arc<dyn View>) -> Result<(), ViewError> {
        let version = view.version();
        *slot.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        let mut gens = slot.gens();
        if gens.building.as_ref().is_some_and(|b| b.version != version)
            && let Some(b) = gens.building.take()
        {
            self.retired().push(b);
        }
        if (gens.active.version != version || gens.active_frozen) && gens.building.is_none() {
            self.start_building(&slot.name, &mut gens, version)?;
        }
        gens.meta().store(&self.meta, &slot.name)?;
        Ok(())
    }

    /// The generations to fold: active ones of the code's version, and
    /// building ones (unless a rebuild call drives them and
    /// `include_driven` is false).
    fn targets(&self, only: Option<&Arc<Slot>>, include_driven: bool) -> Vec<Target> {
        let slots: Vec<Arc<Slot>> = match only {
            Some(s) => vec![s.clone()],
            None => self.read_slots().values().cloned().collect(),
        };
        let mut out = Vec::new();
        for slot in slots {
            let view = slot.view();
            let version = view.version();
            let gens = slot.gens();
            if gens.active.version == version && !gens.active_frozen {
                out.push(Target {
                    slot: slot.clone(),
                    generation: gens.active.clone(),
                    view: view.clone(),
                });
            }
            if let Some(b) = &gens.building
                && b.version == version
                && (include_driven || gens.driven == 0)
            {
                out.push(Target {
                    slot: slot.clone(),
                    generation: b.clone(),
                    view: view.clone(),
                });
            }
        }
        out
    }

    /// Fold until every target (of `only`, or all) has reached `end` and
    /// every rebuild has swapped, or `deadline` passes.
    fn fold_until(
        &self,
        only: Option<&Arc<Slot>>,
        end: u64,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<(), ViewError> {
        loop {
            let targets = self.targets(only, true);
            let behind = targets
                .iter()
                .any(|t| t.generation.checkpoint().next_offset < end);
            let slots: Vec<Arc<Slot>> = match only {
                Some(s) => vec![s.clone()],
                None => self.read_slots().values().cloned().collect(),
            };
            let building = slots.iter().any(|s| s.gens().building.is_some());
            if !behind && !building {
                self.drop_retired();
                return Ok(());
            }
            if let Some((deadline, timeout)) = deadline
                && Instant::now() >= deadline
            {
                let slot = only.ok_or_else(|| ViewError::UnknownView("*".into()))?;
                return Err(self.timeout(slot, timeout, end));
            }
            let worked = self.round(targets, end, BATCHES_PER_ROUND)?;
            if worked {
                continue;
            }
            if behind {
                // Another thread folded those batches first: let it finish.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // Nothing behind, but a rebuild not swapped in yet (it reached
            // `end` in another thread's round): swap it here.
            let mut swapped = false;
            for s in &slots {
                swapped |= self.maybe_swap(s, end)?;
            }
            if !swapped {
                return Ok(());
            }
        }
    }

    /// Fold one batch into every target that is behind `end`, then swap
    /// finished rebuilds. Returns whether anything happened.
    fn round(&self, targets: Vec<Target>, end: u64, max_batches: usize) -> Result<bool, ViewError> {
        let mut groups: BTreeMap<u64, Vec<Target>> = BTreeMap::new();
        let mut touched: Vec<Arc<Slot>> = Vec::new();
        for t in targets {
            if !touched.iter().any(|s| Arc::ptr_eq(s, &t.slot)) {
                touched.push(t.slot.clone());
            }
            let at = t.generation.checkpoint().next_offset;
            if at < end {
                groups.entry(at).or_default().push(t);
            }
        }
        let mut worked = false;
        let mut first_error = None;
        for (offset, group) in groups {
            let (did, error) = self.fold_group(&group, offset, end, max_batches);
            worked |= did;
            if let Some(e) = error {
                first_error.get_or_insert(e);
            }
        }
        for slot in &touched {
            match self.maybe_swap(slot, end) {
                Ok(swapped) => worked |= swapped,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if worked {
            self.progress.notify();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(worked),
        }
    }

    /// Fold up to `max_batches` batches from `offset` into every
    /// target of a group (all at `offset`), in a pipeline: the next batch
    /// is read and parsed on one thread, the current one folded (on one
    /// thread per target), and the previous one committed on another; the
    /// fold reads through the writes being committed. Each target's fold
    /// lock is held throughout. Returns whether anything folded, and the
    /// first error.
    fn fold_group(
        &self,
        group: &[Target],
        offset: u64,
        end: u64,
        max_batches: usize,
    ) -> (bool, Option<ViewError>) {
        // Lock in one global order (view, then generation), so that two
        // threads folding overlapping groups cannot deadlock.
        let mut order: Vec<&Target> = group.iter().collect();
        order.sort_by(|a, b| {
            (&*a.slot.name, a.generation.number).cmp(&(&*b.slot.name, b.generation.number))
        });
        let mut lanes: Vec<Lane<'_>> = Vec::new();
        for t in order {
            let fold = t.generation.lock_fold();
            let checkpoint = t.generation.checkpoint();
            // Another thread may have folded it meanwhile.
            if checkpoint.next_offset == offset {
                lanes.push(Lane {
                    target: t,
                    _fold: fold,
                    checkpoint,
                    base: Arc::default(),
                    ok: true,
                });
            }
        }
        if lanes.is_empty() {
            return (false, None);
        }
        let mut worked = false;
        let mut first_error = None;
        std::thread::scope(|s| {
            let mut offset = offset;
            // Batches start small and grow while they write few keys.
            let mut size = lanes
                .iter()
                .map(|l| l.target.generation.batch_size())
                .min()
                .unwrap_or(0);
            if size == 0 {
                size = self.config.batch_records.min(TARGET_WRITES);
            }
            let mut reading = Some(s.spawn(move || self.read_batch(offset, size)));
            let mut committing: Option<Committing<'_>> = None;
            let mut n_batches = 0;
            while let Some(reader) = reading.take() {
                let batch = match reader.join() {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        self.read_failed(group, offset, &e);
                        first_error = Some(e);
                        break;
                    }
                    Err(_) => {
                        first_error = Some(ViewError::fold("*", "the log reader panicked"));
                        break;
                    }
                };
                if batch.next_offset == offset {
                    break;
                }
                n_batches += 1;
                if n_batches < max_batches && batch.next_offset < end {
                    let next = batch.next_offset;
                    reading = Some(s.spawn(move || self.read_batch(next, size)));
                }
                let staged = self.apply_lanes(&lanes, &batch);
                let writes = staged
                    .iter()
                    .filter_map(|r| r.as_ref()?.as_ref().ok())
                    .map(|(w, _, _)| w.len())
                    .max()
                    .unwrap_or(0);
                size = self.next_batch_size(size, batch.records.len(), writes);
                // The previous batch must be committed before this one is.
                if let Some(c) = committing.take() {
                    worked |= self.finish_commit(c, &mut lanes, &mut first_error);
                }
                let mut batches = Vec::new();
                for (i, (lane, res)) in lanes.iter_mut().zip(staged).enumerate() {
                    match res {
                        None => {}
                        Some(Err(e)) => {
                            lane.ok = false;
                            self.fold_failed(lane.target, e, &mut first_error);
                        }
                        // Read through a commit that failed: dropped.
                        Some(Ok(_)) if !lane.ok => {}
                        Some(Ok((writes, checkpoint, sled_batch))) => {
                            lane.base = Arc::new(writes);
                            lane.checkpoint = checkpoint;
                            batches.push((i, lane.target, sled_batch));
                        }
                    }
                }
                if !batches.is_empty() {
                    // Only sled's work on this thread: it holds sled's
                    // global write lock, so it is what the pipeline waits
                    // on.
                    committing = Some(s.spawn(move || {
                        batches
                            .into_iter()
                            .map(|(i, t, b)| {
                                let res =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        t.generation.apply(b)
                                    }))
                                    .unwrap_or_else(|_| {
                                        Err(ViewError::fold(&t.slot.name, "the commit panicked"))
                                    });
                                (i, res)
                            })
                            .collect()
                    }));
                }
                if lanes.iter().any(|l| !l.ok) {
                    // The group split up: regroup in the next round. A
                    // batch read ahead is dropped.
                    break;
                }
                offset = batch.next_offset;
            }
            if let Some(c) = committing.take() {
                worked |= self.finish_commit(c, &mut lanes, &mut first_error);
            }
            for lane in &lanes {
                lane.target.generation.set_batch_size(size);
            }
        });
        (worked, first_error)
    }

    /// The size of the batch after next: about [`TARGET_WRITES`] keys
    /// written, going by the last batch (`records` folded, at most
    /// `writes` keys written by a view); at most double the last size and
    /// never more than the configured size.
    fn next_batch_size(&self, size: usize, records: usize, writes: usize) -> usize {
        let fit = records
            .max(1)
            .saturating_mul(TARGET_WRITES)
            .checked_div(writes)
            .unwrap_or(usize::MAX);
        fit.min(size.saturating_mul(2)).clamp(
            MIN_BATCH.min(self.config.batch_records),
            self.config.batch_records,
        )
    }

    /// Fold `batch` into every lane still folding (in parallel when there
    /// are several): the writes and the checkpoint to commit, per lane.
    fn apply_lanes(&self, lanes: &[Lane<'_>], batch: &Batch) -> Vec<Option<Staged>> {
        let live = lanes.iter().filter(|l| l.ok).count();
        if live <= 1 {
            return lanes
                .iter()
                .map(|l| l.ok.then(|| self.apply_one(l, batch)))
                .collect();
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .iter()
                .map(|l| l.ok.then(|| s.spawn(move || self.apply_one(l, batch))))
                .collect();
            handles
                .into_iter()
                .zip(lanes)
                .map(|(h, l)| {
                    h.map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ViewError::fold(&l.target.slot.name, "the fold panicked"))
                        })
                    })
                })
                .collect()
        })
    }

    /// Fold `batch` into one lane's generation, reading through the writes
    /// still being committed.
    fn apply_one(&self, lane: &Lane<'_>, batch: &Batch) -> Staged {
        let t = lane.target;
        let mut tx = ViewTx::with_base(&t.generation, lane.base.clone());
        // A panicking view must not take the indexer down with it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.view.apply(&batch.records, &mut tx)
        }))
        .unwrap_or_else(|_| Err(ViewError::fold(&t.slot.name, "the fold panicked")))?;
        let (writes, skipped) = tx.into_writes();
        let cp = lane.checkpoint;
        let n = batch.records.len() as u64;
        let skipped = skipped.min(n);
        let next = Checkpoint {
            next_offset: batch.next_offset,
            folded: cp.folded + (n - skipped),
            skipped: cp.skipped + skipped + batch.no_payload,
        };
        let sled_batch = Generation::batch(&t.slot.name, &writes, next)?;
        Ok((writes, next, sled_batch))
    }

    /// Wait for a batch's commits. Returns whether any succeeded; a lane
    /// whose commit failed stops.
    fn finish_commit(
        &self,
        committing: Committing<'_>,
        lanes: &mut [Lane<'_>],
        first_error: &mut Option<ViewError>,
    ) -> bool {
        // Each commit's panic is caught on its thread, so this join fails
        // only if the thread itself did: stop every lane.
        let Ok(results) = committing.join() else {
            for lane in lanes.iter_mut().filter(|l| l.ok) {
                lane.ok = false;
                let e = ViewError::fold(&lane.target.slot.name, "the commit thread panicked");
                self.fold_failed(lane.target, e, first_error);
            }
            return false;
        };
        let mut worked = false;
        for (i, res) in results {
            let Some(lane) = lanes.get_mut(i) else {
                continue;
            };
            match res {
                Ok(()) => {
                    worked = true;
                    lane.target
                        .generation
                        .committed(&lane.base, lane.checkpoint);
                    lane.target.slot.set_error(None);
                }
                Err(e) => {
                    lane.ok = false;
                    self.fold_failed(lane.target, e, first_error);
                }
            }
        }
        worked
    }

    fn fold_failed(&self, t: &Target, e: ViewError, first_error: &mut Option<ViewError>) {
        tracing::warn!(view = %t.slot.name, error = %e, "fold failed");
        t.slot.set_error(Some(e.to_string()));
        first_error.get_or_insert(e);
    }

    /// A log read failed at a view's checkpoint. If the checkpoint is no
    /// longer a record boundary (the log was cut and grew again), the
    /// generations reading there cannot go on: rebuild their views.
    fn read_failed(&self, group: &[Target], offset: u64, error: &ViewError) {
        let corrupt_here = matches!(
            error,
            ViewError::Store(StoreError::Corrupt { offset: o, .. }) if *o == offset
        );
        for t in group {
            t.slot.set_error(Some(error.to_string()));
            if !corrupt_here || offset == 0 {
                continue;
            }
            let _admin = self.admin();
            let version = t.view.version();
            let mut gens = t.slot.gens();
            let res = if Arc::ptr_eq(&gens.active, &t.generation) {
                gens.active_frozen = true;
                if gens.building.is_none() {
                    self.start_building(&t.slot.name, &mut gens, version)
                } else {
                    gens.meta().store(&self.meta, &t.slot.name)
                }
            } else if gens
                .building
                .as_ref()
                .is_some_and(|b| Arc::ptr_eq(b, &t.generation))
            {
                self.start_building(&t.slot.name, &mut gens, version)
            } else {
                Ok(())
            };
            if let Err(e) = res {
                tracing::warn!(view = %t.slot.name, error = %e, "cannot start a rebuild");
            }
        }
    }

    /// Read one batch of records from `offset`.
    fn read_batch(&self, offset: u64, max_records: usize) -> Result<Batch, ViewError> {
        let mut batch = Batch {
            records: Vec::with_capacity(max_records.min(65_536)),
            no_payload: 0,
            next_offset: offset,
        };
        let mut n_records = 0;
        let mut bytes = 0;
        for rec in self.db.log_iter(offset) {
            let rec = rec?;
            n_records += 1;
            batch.next_offset = rec.next_offset;
            if let RecordBody::Entry(entry) = rec.body {
                let id = entry.id();
                match entry.payload {
                    Some(payload) => {
                        bytes += payload.len();
                        let h = entry.header;
                        batch.records.push(ViewRecord::new(
                            rec.offset,
                            h.author,
                            h.seq,
                            h.timestamp,
                            id,
                            payload,
                        ));
                    }
                    None => batch.no_payload += 1,
                }
            }
            if n_records >= max_records || bytes >= self.config.batch_bytes {
                break;
            }
        }
        // Parse payloads here, off the folding thread: every built-in view
        // needs them.
        for r in &batch.records {
            r.json();
        }
        Ok(batch)
    }

    /// Swap a finished rebuild in. Returns whether it swapped.
    fn maybe_swap(&self, slot: &Slot, end: u64) -> Result<bool, ViewError> {
        let version = slot.view().version();
        let mut gens = slot.gens();
        let Some(building) = gens.building.clone() else {
            return Ok(false);
        };
        if building.version != version || building.checkpoint().next_offset < end {
            return Ok(false);
        }
        let meta = ViewMeta {
            format: 0,
            active: Some(building.meta()),
            active_frozen: false,
            building: None,
            next_gen: gens.next_gen,
        };
        meta.store(&self.meta, &slot.name)?;
        let old = std::mem::replace(&mut gens.active, building);
        gens.building = None;
        gens.active_frozen = false;
        tracing::info!(
            view = %slot.name,
            generation = gens.active.number,
            version,
            "rebuilt view swapped in"
        );
        drop(gens);
        self.retired().push(old);
        self.drop_retired();
        self.progress.notify();
        Ok(true)
    }

    /// Drop the trees of retired generations nothing holds any more.
    fn drop_retired(&self) {
        let mut retired = self.retired();
        retired.retain(|g| {
            if Arc::strong_count(g) > 1 {
                return true;
            }
            if let Err(e) = self.db.sled().drop_tree(&g.tree_name) {
                tracing::warn!(tree = %g.tree_name, error = %e, "cannot drop a retired view tree");
            }
            false
        });
    }

    fn caught_up(&self, slot: &Slot, target: u64) -> bool {
        let version = slot.view().version();
        let gens = slot.gens();
        gens.active.version == version
            && !gens.active_frozen
            && gens.active.checkpoint().next_offset >= target
    }

    fn timeout(&self, slot: &Slot, timeout: Duration, target: u64) -> ViewError {
        ViewError::Timeout {
            view: slot.name.to_string(),
            timeout,
            checkpoint: slot.gens().active.checkpoint().next_offset,
            target,
        }
    }

    fn status(&self, slot: &Slot) -> ViewStatus {
        let view = slot.view();
        let log_end = self.db.log_end();
        let gens = slot.gens();
        let cp = gens.active.checkpoint();
        ViewStatus {
            name: slot.name.to_string(),
            description: view.describe(),
            version: view.version(),
            active_version: gens.active.version,
            generation: gens.active.number,
            checkpoint: cp.next_offset,
            log_end,
            lag: log_end.saturating_sub(cp.next_offset),
            folded: cp.folded,
            skipped: cp.skipped,
            rebuild: gens.building.as_ref().map(|b| RebuildStatus {
                generation: b.number,
                version: b.version,
                checkpoint: b.checkpoint().next_offset,
            }),
            last_error: slot
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The background thread.
    fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            if self.wake.stopped() {
                return;
            }
            self.drop_retired();
            let end = self.db.log_end();
            let targets = self.targets(None, false);
            match self.round(targets, end, BATCHES_PER_ROUND) {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "background fold failed; retrying");
                    let backoff = Duration::from_millis(100 << failures.min(6));
                    if self.wake.wait(backoff) {
                        return;
                    }
                    continue;
                }
            }
            if self.wake.wait(Duration::from_secs(1)) {
                return;
            }
        }
    }
}
