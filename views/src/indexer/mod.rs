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
//!
//! The code sits in four files: this one (the public API), `registry`
//! (generations: install, build, swap, retire; `views/meta` and
//! `views/declared`), `fold` (rounds, and the read/parse → fold → commit
//! pipeline) and `wake` (the signals threads wait on, with deadlines).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kappadb_core::{Db, ListenerId};

use crate::error::ViewError;
use crate::field::{DECLARED_TREE, Declaration, FieldIndex, FieldReader};
use crate::generation::{Generation, META_TREE, ViewDigest};
use crate::kv::{KvReader, KvView};
use crate::timeline::{TimelineReader, TimelineView};
use crate::view::{View, ViewReader};

mod fold;
mod registry;
mod wake;

use fold::BATCHES_PER_ROUND;
use registry::{Slot, Target};
use wake::{Progress, Wake};

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

/// What the indexer's threads share. Its methods sit with what they do:
/// the lock accessors here, the registry's in `registry`, the fold's in
/// `fold`.
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
            shared.install(Arc::new(crate::identity::IdentityView))?;
        }
        shared.install_declared()?;
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
        self.register_arc(Arc::new(view))
    }

    /// Register a shared view.
    pub fn register_arc(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
        self.shared.install(view)?;
        self.shared.wake.notify();
        Ok(())
    }

    /// The registered fold of `view` (see [`View::as_any`] to get a view of
    /// a known type back).
    pub fn view(&self, view: &str) -> Result<Arc<dyn View>, ViewError> {
        Ok(self.shared.slot(view)?.view())
    }

    /// Unregister a view registered with [`Indexer::register`] and drop its
    /// data. Built-in views and declared field indexes are refused (see
    /// [`Indexer::remove_field_index`] for those).
    pub fn unregister(&self, view: &str) -> Result<(), ViewError> {
        let shared = &self.shared;
        let _admin = shared.admin();
        if crate::BUILTIN_NAMES.contains(&view) || shared.read_fields().contains_key(view) {
            return Err(ViewError::fold(
                view,
                "not a registered custom view (built-in or declared field index)",
            ));
        }
        shared.uninstall(view)
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
        shared.uninstall(name)
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
        let slots = self.shared.slots(None);
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

    /// The author-to-identity resolution of what the `identity` view holds
    /// now ([`crate::identity`]). Computed on each call (it reads every
    /// identity op: a few per device).
    pub fn identities(&self) -> Result<crate::identity::Identities, ViewError> {
        crate::identity::Identities::load(&self.reader(crate::identity::NAME)?, &self.shared.db)
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

    fn timeout(&self, slot: &Slot, timeout: Duration, target: u64) -> ViewError {
        ViewError::Timeout {
            view: slot.name.to_string(),
            timeout,
            checkpoint: slot.gens().active.checkpoint().next_offset,
            target,
        }
    }
}
