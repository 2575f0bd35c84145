//! The generation registry: which views are registered and which of
//! their generations answer queries (*active*) or are being rebuilt
//! (*building*), kept in `views/meta` (see [`crate::generation`]).
//!
//! A view's life here: [`Shared::install`] loads (or creates) its
//! generations and plans a rebuild if its version changed or its data
//! is ahead of the log; [`Shared::targets`] hands the fold pipeline the
//! generations to fold; [`Shared::start_building`] begins a rebuild;
//! [`Shared::maybe_swap`] swaps a finished one in with one meta insert;
//! replaced generations are *retired* and their trees dropped once no
//! reader holds them ([`Shared::drop_retired`]). Declared field indexes
//! (`views/declared`) are registered from here on open.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::{RebuildStatus, Shared, ViewStatus};
use crate::error::ViewError;
use crate::field::{Declaration, FieldIndex};
use crate::generation::{GenMeta, Generation, ViewMeta, parse_tree_name};
use crate::validate_view_name;
use crate::view::View;

/// A view's generations.
pub(super) struct Gens {
    /// The generation answering queries.
    pub(super) active: Arc<Generation>,
    /// When set, `active` is not folded any more (its checkpoint no longer
    /// matches the log) and only serves queries until `building` replaces it.
    active_frozen: bool,
    /// A rebuild in progress.
    pub(super) building: Option<Arc<Generation>>,
    /// Rebuild calls folding `building` themselves; the background thread
    /// leaves it to them.
    pub(super) driven: usize,
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

/// A registered view: its fold, its generations, its last error.
pub(super) struct Slot {
    pub(super) name: Arc<str>,
    view: RwLock<Arc<dyn View>>,
    gens: Mutex<Gens>,
    last_error: Mutex<Option<String>>,
}

impl Slot {
    /// The registered fold.
    pub(super) fn view(&self) -> Arc<dyn View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn gens(&self) -> MutexGuard<'_, Gens> {
        self.gens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// One generation to fold, with the fold to use.
pub(super) struct Target {
    pub(super) slot: Arc<Slot>,
    pub(super) generation: Arc<Generation>,
    pub(super) view: Arc<dyn View>,
}

impl Shared {
    /// Register a view (see [`Shared::install_locked`]).
    pub(super) fn install(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
        let _admin = self.admin();
        self.install_locked(view)
    }

    /// Register a view (the caller holds `admin`): load or create its
    /// generations, plan a rebuild if needed, drop orphan trees.
    pub(super) fn install_locked(&self, view: Arc<dyn View>) -> Result<(), ViewError> {
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
        self.settle(&name, &mut gens, version, end)?;
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
    pub(super) fn start_building(
        &self,
        name: &str,
        gens: &mut Gens,
        version: u32,
    ) -> Result<(), ViewError> {
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
    pub(super) fn replace_view(&self, slot: &Slot, view: Arc<dyn View>) -> Result<(), ViewError> {
        let version = view.version();
        *slot.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        let mut gens = slot.gens();
        // The log has not been cut under a registered view: only the
        // version decides.
        self.settle(&slot.name, &mut gens, version, u64::MAX)
    }

    /// Bring a view's generations in line with its fold's `version`: a
    /// building generation of another version, or folded past `end` (the
    /// log's end), is retired; a stale active one with no rebuild under
    /// way gets one; the meta record is stored.
    fn settle(&self, name: &str, gens: &mut Gens, version: u32, end: u64) -> Result<(), ViewError> {
        if gens
            .building
            .as_ref()
            .is_some_and(|b| b.checkpoint().next_offset > end || b.version != version)
            && let Some(b) = gens.building.take()
        {
            self.retired().push(b);
        }
        if (gens.active.version != version || gens.active_frozen) && gens.building.is_none() {
            self.start_building(name, gens, version)?;
        }
        gens.meta().store(&self.meta, name)
    }

    /// Register the declared field indexes (`views/declared`). One that
    /// cannot be registered is logged and left out.
    pub(super) fn install_declared(&self) -> Result<(), ViewError> {
        for item in self.declared.iter() {
            let (name, value) = item?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let res = match serde_json::from_slice::<Declaration>(&value) {
                Ok(Declaration::Field { pointer }) => FieldIndex::new(&name, &pointer)
                    .and_then(|index| self.install(Arc::new(index)).map(|()| pointer)),
                Err(e) => Err(ViewError::damaged(&name, format!("declaration: {e}"))),
            };
            match res {
                Ok(pointer) => {
                    self.write_fields().insert(name, pointer);
                }
                Err(e) => tracing::warn!(view = %name, error = %e, "declared view not registered"),
            }
        }
        Ok(())
    }

    /// Unregister `name` and retire its generations (the caller holds
    /// `admin`). Its meta record keeps only `next_gen`, so a view
    /// registered again under the name never meets an old tree.
    pub(super) fn uninstall(&self, name: &str) -> Result<(), ViewError> {
        let slot = self
            .write_slots()
            .remove(name)
            .ok_or_else(|| ViewError::UnknownView(name.to_string()))?;
        let mut gens = slot.gens();
        let meta = ViewMeta {
            next_gen: gens.next_gen,
            ..ViewMeta::default()
        };
        meta.store(&self.meta, name)?;
        let mut retired = self.retired();
        retired.push(gens.active.clone());
        if let Some(b) = gens.building.take() {
            retired.push(b);
        }
        drop(retired);
        drop(gens);
        drop(slot);
        self.drop_retired();
        Ok(())
    }

    /// `only`, or every registered view.
    pub(super) fn slots(&self, only: Option<&Arc<Slot>>) -> Vec<Arc<Slot>> {
        match only {
            Some(s) => vec![s.clone()],
            None => self.read_slots().values().cloned().collect(),
        }
    }

    /// The generations to fold: active ones of the code's version, and
    /// building ones (unless a rebuild call drives them and
    /// `include_driven` is false).
    pub(super) fn targets(&self, only: Option<&Arc<Slot>>, include_driven: bool) -> Vec<Target> {
        let mut out = Vec::new();
        for slot in self.slots(only) {
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

    /// Swap a finished rebuild in. Returns whether it swapped.
    pub(super) fn maybe_swap(&self, slot: &Slot, end: u64) -> Result<bool, ViewError> {
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

    /// `t` was folded up to an offset that is no longer a record boundary
    /// (the log was cut and grew again): its generation cannot go on.
    /// Freeze it if it is active, and rebuild the view.
    pub(super) fn cut_away(&self, t: &Target) {
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

    /// Drop the trees of retired generations nothing holds any more.
    pub(super) fn drop_retired(&self) {
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

    pub(super) fn caught_up(&self, slot: &Slot, target: u64) -> bool {
        let version = slot.view().version();
        let gens = slot.gens();
        gens.active.version == version
            && !gens.active_frozen
            && gens.active.checkpoint().next_offset >= target
    }

    pub(super) fn status(&self, slot: &Slot) -> ViewStatus {
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
}
