//! The fold pipeline: how log records get into views.
//!
//! The background thread ([`Shared::run`], woken by [`super::wake::Wake`])
//! and the callers that fold on their own thread ([`Shared::fold_until`])
//! run *rounds*. A round ([`Shared::round`]) groups the generations that
//! are behind by checkpoint and folds each group ([`Shared::fold_group`])
//! as a pipeline over three threads: batch N+1 is read and parsed
//! ([`Shared::read_batch`]), batch N folds into every generation of the
//! group through N-1's writes ([`Shared::apply_lanes`]), and N-1 commits
//! its writes and checkpoint in one sled batch per generation. Then the
//! round swaps finished rebuilds in ([`Shared::maybe_swap`], in the
//! registry) and tells waiters ([`super::wake::Progress`]).
//!
//! Which generations to fold comes from the registry
//! ([`Shared::targets`]); a read that finds a view's checkpoint cut away
//! hands the view back to it for a rebuild.

use std::collections::BTreeMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use kappadb_core::StoreError;

use super::Shared;
use super::registry::{Slot, Target};
use crate::error::ViewError;
use crate::generation::Generation;
use crate::view::{Checkpoint, ViewRecord, ViewTx, Writes, read_records};

/// Batches a group of views folds in one round before others get a turn.
pub(super) const BATCHES_PER_ROUND: usize = 8;
/// Keys a fold batch should write, about. Measured on the 1M-entry bench
/// (views/benches/index.rs), kv folds a fifth faster in batches of about a
/// thousand writes than of five thousand (less in flight per batch:
/// records, parsed payloads, writes, sled's own batch), and no faster in
/// smaller ones. Batches that write few keys (a timeline's buckets, hot kv
/// keys) grow instead, up to [`super::IndexerConfig::batch_records`].
const TARGET_WRITES: usize = 1_000;
/// Fewest records a batch is cut to.
const MIN_BATCH: usize = 256;

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

impl Shared {
    /// Fold until every target (of `only`, or all) has reached `end` and
    /// every rebuild has swapped, or `deadline` passes.
    pub(super) fn fold_until(
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
            let slots = self.slots(only);
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
    pub(super) fn round(
        &self,
        targets: Vec<Target>,
        end: u64,
        max_batches: usize,
    ) -> Result<bool, ViewError> {
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
        let mut tx = ViewTx::with_base(
            &t.generation,
            &self.db,
            lane.base.clone(),
            batch.next_offset,
        );
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
            self.cut_away(t);
        }
    }

    /// Read one batch of records from `offset`.
    fn read_batch(&self, offset: u64, max_records: usize) -> Result<Batch, ViewError> {
        let read = read_records(&self.db, offset, max_records, self.config.batch_bytes)?;
        // Parse payloads here, off the folding thread: every built-in view
        // needs them.
        for r in &read.records {
            r.json();
        }
        Ok(Batch {
            records: read.records,
            no_payload: read.no_payload,
            next_offset: read.next_offset,
        })
    }

    /// The background thread.
    pub(super) fn run(self: Arc<Self>) {
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
