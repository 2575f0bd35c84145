//! The [`View`] trait and what a fold sees and writes: [`ViewRecord`]s in,
//! a [`ViewTx`] out; and [`ViewReader`], read access for queries.
//!
//! A view is a deterministic fold of the log. The indexer hands it batches
//! of records (entries that hold a payload, in log order) and a
//! transaction over the view's own sled tree. Everything the view writes in
//! one call to [`View::apply`] is buffered in memory (reads see it) and
//! committed in one sled batch together with the view's checkpoint, so a
//! batch is folded exactly once even across crashes.
//!
//! Each view *generation* has one sled tree, `view/<name>/<generation>/data`:
//!
//! ```text
//! 0x00 "checkpoint"  -> Checkpoint { next_offset, folded, skipped } (postcard)
//! 0x01 | key         -> value   (the view's own key space)
//! ```
//!
//! Views see and write only their own key space: [`ViewTx`] and
//! [`ViewReader`] add and strip the `0x01` prefix. Values come and go as
//! [`Bytes`] (the store's buffers, shared rather than copied).
//!
//! ```
//! use kappadb_views::{View, ViewError, ViewRecord, ViewTx};
//!
//! /// Counts entries per payload `"type"`.
//! struct TypeCount;
//!
//! impl View for TypeCount {
//!     fn name(&self) -> &str { "type-count" }
//!     fn version(&self) -> u32 { 1 }
//!     fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
//!         for record in batch {
//!             let Some(kind) = record.kind() else {
//!                 tx.skip();
//!                 continue;
//!             };
//!             let n = tx.get(kind.as_bytes())?
//!                 .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
//!             tx.insert(kind.as_bytes(), (n + 1).to_be_bytes().to_vec());
//!         }
//!         Ok(())
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use kappadb_core::system::SystemPayload;
use kappadb_core::{Db, Entry, EntryId, FeedId, RecordBody};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bytes::Bytes;
use crate::error::ViewError;
use crate::generation::Generation;

/// Prefix of every view-owned key in a generation tree.
pub(crate) const DATA_PREFIX: u8 = 0x01;
/// The reserved checkpoint key of a generation tree.
pub(crate) const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";

/// A fold: a named, versioned, deterministic function from batches of log
/// records to writes in the view's own key space.
///
/// Determinism is the view's contract: two peers holding the same entries
/// must end up with the same key/value pairs whatever order the entries
/// arrived in (each feed always arrives in seq order). Break ties on
/// `(timestamp, author, seq)`. Bump [`View::version`] whenever the fold
/// changes what it writes: the indexer then rebuilds the view from offset 0.
///
/// A batch holds four kinds of records:
///
/// - **entries** ([`ViewRecord::payload`], the common case);
/// - **deletions** ([`ViewRecord::deleted`]): the record's author deleted
///   some of its earlier entries. Their payloads are erased from the log,
///   and a view must end up exactly as if it had never folded them: the
///   state must not depend on whether the view saw an entry before its
///   deletion or only after (a peer that received the entry already erased
///   never sees it at all). Keep what you need to undo an entry, keyed by
///   `(author, seq)` (the [`crate::undo`] helpers do this in buckets), and
///   treat a deletion naming an entry you never folded as nothing to do;
/// - **forget markers** ([`ViewRecord::forgets`]): this node forgot the
///   record's author's feed; undo every entry of it (a local choice, so
///   here views may differ from peers that did not forget);
/// - **identity ops** ([`ViewRecord::identity_op`]): a delegation or a
///   revocation in an identity feed, already checked against the rules
///   that need no other entry. Only the `identity` view folds them
///   ([`crate::identity`]); other views skip them (their payload is
///   empty and [`ViewRecord::json`] is `None`). A view that resolves
///   authors to identities does it at query time through
///   [`crate::identity::Identities`], so its stored state never depends
///   on which delegations arrived first.
///
/// A view that cannot honour deletions is wrong on every peer that
/// received a deleted entry erased. Erased and absent payloads never reach
/// a view. [`ViewTx::entry`] reads any entry of the log back (for example
/// to recompute a value a deleted entry superseded); read only entries
/// your view folded, and treat an entry whose payload is gone as deleted
/// (its deletion is in the log and is coming).
pub trait View: Send + Sync + 'static {
    /// The view's name: 1 to 64 of `[a-z0-9_-]`.
    fn name(&self) -> &str;

    /// The fold's version. A stored view of another version is rebuilt.
    fn version(&self) -> u32;

    /// Fold `batch` (entries with a payload, in log order) into `tx`. Call
    /// [`ViewTx::skip`] once for every record the view ignores (not JSON,
    /// not of its shape). An error aborts the batch: nothing of it is
    /// written and it is retried later.
    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError>;

    /// A short description for `kappa view list`.
    fn describe(&self) -> String {
        "custom view".to_string()
    }

    /// The view as [`std::any::Any`], for code that registered a view of a
    /// known type and wants it back from [`crate::Indexer::view`] (a view
    /// with its own query methods). `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// What a [`ViewRecord`] is (see [`View`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Entry,
    Deletion(Deleted),
    Forget,
    Identity(kappadb_core::identity::IdentityOp),
}

/// What a deletion removes: entries of the record's author.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    // Invariant: sorted, unique, each the seq of an entry of the author
    // whose id the deletion named correctly.
    seqs: Vec<u64>,
    up_to: Option<u64>,
}

impl Deleted {
    /// A deletion of `seqs` (each checked against the log) and of every
    /// entry up to `up_to`.
    pub fn new(mut seqs: Vec<u64>, up_to: Option<u64>) -> Self {
        seqs.sort_unstable();
        seqs.dedup();
        Self { seqs, up_to }
    }

    /// The entries named one by one.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// Every entry with `seq <= up_to` is deleted too.
    pub fn up_to(&self) -> Option<u64> {
        self.up_to
    }

    /// Whether the entry at `seq` is deleted.
    pub fn covers(&self, seq: u64) -> bool {
        self.up_to.is_some_and(|u| seq <= u) || self.seqs.binary_search(&seq).is_ok()
    }
}

/// One record of the log as a view sees it: an entry with its payload, a
/// deletion, or a forget marker (see [`View`]).
#[derive(Debug)]
pub struct ViewRecord {
    /// Log offset of the entry's record (local to this peer: never store it
    /// in a view that must be comparable across peers).
    pub offset: u64,
    /// The entry's feed.
    pub author: FeedId,
    /// The entry's seq in its feed.
    pub seq: u64,
    /// The author's claimed timestamp, ms since the epoch.
    pub timestamp: u64,
    /// The entry's id.
    pub id: EntryId,
    /// The payload (empty for deletions and forget markers).
    pub payload: Vec<u8>,
    /// The payload parsed as JSON, once, shared by every view of a batch.
    json: OnceLock<Option<Value>>,
    change: Change,
}

impl ViewRecord {
    /// A record (the indexer builds these; tests and benches may too).
    pub fn new(
        offset: u64,
        author: FeedId,
        seq: u64,
        timestamp: u64,
        id: EntryId,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            offset,
            author,
            seq,
            timestamp,
            id,
            payload,
            json: OnceLock::new(),
            change: Change::Entry,
        }
    }

    /// A deletion entry of `author` at `seq`, deleting `deleted`.
    pub fn deletion(
        offset: u64,
        author: FeedId,
        seq: u64,
        timestamp: u64,
        id: EntryId,
        deleted: Deleted,
    ) -> Self {
        Self {
            change: Change::Deletion(deleted),
            ..Self::new(offset, author, seq, timestamp, id, Vec::new())
        }
    }

    /// An identity op of the identity feed `author`, at `seq`.
    pub fn identity(
        offset: u64,
        author: FeedId,
        seq: u64,
        timestamp: u64,
        id: EntryId,
        op: kappadb_core::identity::IdentityOp,
    ) -> Self {
        Self {
            change: Change::Identity(op),
            ..Self::new(offset, author, seq, timestamp, id, Vec::new())
        }
    }

    /// The identity op this record carries, if it is one.
    pub fn identity_op(&self) -> Option<&kappadb_core::identity::IdentityOp> {
        match &self.change {
            Change::Identity(op) => Some(op),
            _ => None,
        }
    }

    /// This node forgot `feed`.
    pub fn forget(offset: u64, feed: FeedId) -> Self {
        Self {
            change: Change::Forget,
            ..Self::new(offset, feed, 0, 0, EntryId([0; 32]), Vec::new())
        }
    }

    /// What this record deletes, if it is a deletion.
    pub fn deleted(&self) -> Option<&Deleted> {
        match &self.change {
            Change::Deletion(d) => Some(d),
            _ => None,
        }
    }

    /// Whether this record says this node forgot the author's feed.
    pub fn forgets(&self) -> bool {
        self.change == Change::Forget
    }

    /// Whether this record is an entry (neither a deletion, a forget
    /// marker nor an identity op).
    pub fn is_entry(&self) -> bool {
        self.change == Change::Entry
    }

    /// The payload parsed as JSON, or `None` if it is not JSON (or this is
    /// not an entry). Parsed at most once per record, whatever the number
    /// of views.
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| {
                self.is_entry()
                    .then(|| serde_json::from_slice(&self.payload).ok())
                    .flatten()
            })
            .as_ref()
    }

    /// The payload's `"type"` when it is a JSON object with a string type.
    pub fn kind(&self) -> Option<&str> {
        self.json()?.get("type")?.as_str()
    }
}

/// How far a view generation has folded the log. Commits atomically with
/// the view's writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Offset of the first log record not yet folded.
    pub next_offset: u64,
    /// Entries folded.
    pub folded: u64,
    /// Entries skipped: no payload, or not of the view's shape.
    pub skipped: u64,
}

/// A batch's writes: full keys (prefix included) -> new value, `None` =
/// removed.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Bytes>>;

/// The writes of one fold batch, buffered in memory and committed with the
/// checkpoint in one sled batch. Reads see the batch's own writes.
pub struct ViewTx<'a> {
    generation: &'a Generation,
    /// The database whose log is folded, for [`ViewTx::entry`].
    db: &'a Db,
    /// Full stored keys (prefix included) -> new value, `None` = removed.
    overlay: Writes,
    /// Writes not committed yet, read only: the previous batch's (being
    /// committed) and, for a fork, the parent's when it forked.
    base: Arc<Writes>,
    skipped: u64,
    /// The checkpoint this batch commits (the offset after its last record).
    batch_end: u64,
}

impl std::fmt::Debug for ViewTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewTx")
            .field("writes", &self.overlay.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(DATA_PREFIX);
    out.extend_from_slice(key);
    out
}

impl<'a> ViewTx<'a> {
    /// A transaction on `generation` that reads through `base` (the
    /// previous batch's writes, maybe not committed yet); the caller holds
    /// the generation's fold lock.
    pub(crate) fn with_base(
        generation: &'a Generation,
        db: &'a Db,
        base: Arc<Writes>,
        batch_end: u64,
    ) -> Self {
        Self {
            generation,
            db,
            overlay: BTreeMap::new(),
            base,
            skipped: 0,
            batch_end,
        }
    }

    /// The generation being folded (see [`ViewReader::generation`]). A view
    /// that keeps state outside sled (a search index, say) keeps it per
    /// generation, since a rebuild folds a fresh one while the old one
    /// answers queries.
    pub fn generation(&self) -> u64 {
        self.generation.number
    }

    /// The checkpoint committed before this batch: the offset of its first
    /// record.
    pub fn checkpoint(&self) -> Checkpoint {
        self.generation.checkpoint()
    }

    /// The checkpoint this batch commits with its writes: the offset of the
    /// first log record after it. A view with state outside sled can store
    /// it beside that state, to know on open what it holds.
    pub fn batch_end(&self) -> u64 {
        self.batch_end
    }

    fn pending(&self, full: &[u8]) -> Option<&Option<Bytes>> {
        self.overlay.get(full).or_else(|| self.base.get(full))
    }

    /// The value of the full key `full`: this batch's, else the committed
    /// one (from the generation's cache, else from sled).
    fn read(&self, full: Vec<u8>) -> Result<Option<Bytes>, ViewError> {
        if let Some(v) = self.pending(&full) {
            return Ok(v.clone());
        }
        if let Some(v) = self.generation.cache().get(&full) {
            return Ok(v);
        }
        // The only commit that can be under way is the previous batch's,
        // whose writes `base` holds: it does not change this key, so the
        // value read is, and stays, the committed one.
        let v = self.generation.tree.get(&full)?.map(Bytes::from_store);
        self.generation.cache().put(full, v.clone());
        Ok(v)
    }

    /// The value of `key`, as this batch left it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ViewError> {
        self.read(data_key(key))
    }

    /// The entry of `author` at `seq`, read back from the log (see
    /// [`View`] for when a view may need it). Its payload is
    /// [`kappadb_core::Payload::Erased`] once a deletion named it, even if
    /// this view has not folded that deletion yet.
    pub fn entry(&self, author: &FeedId, seq: u64) -> Result<Option<Entry>, ViewError> {
        Ok(self.db.get(author, seq)?)
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool, ViewError> {
        Ok(self.read(data_key(key))?.is_some())
    }

    /// A transaction for folding part of the batch on another thread: it
    /// reads the same tree and this transaction's writes so far, and its
    /// own writes and skips come back with [`ViewTx::absorb`]. The view
    /// must give forks disjoint keys to write (for example by partitioning
    /// its records by key); where two forks write one key, the fork
    /// absorbed last wins.
    pub fn fork(&self) -> ViewTx<'a> {
        let base = if self.overlay.is_empty() {
            self.base.clone()
        } else {
            let mut base = (*self.base).clone();
            base.extend(self.overlay.iter().map(|(k, v)| (k.clone(), v.clone())));
            Arc::new(base)
        };
        ViewTx {
            generation: self.generation,
            db: self.db,
            overlay: BTreeMap::new(),
            base,
            skipped: 0,
            batch_end: self.batch_end,
        }
    }

    /// Take back a fork's writes and skips.
    pub fn absorb(&mut self, fork: ViewTx<'a>) {
        self.overlay.extend(fork.overlay);
        self.skipped += fork.skipped;
    }

    /// Set `key` to `value`.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) {
        self.overlay
            .insert(data_key(key.as_ref()), Some(value.into()));
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.overlay.insert(data_key(key.as_ref()), None);
    }

    /// Every key starting with `prefix` and its value, in key order, as
    /// this batch left them.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, ViewError> {
        let full = data_key(prefix);
        let mut merged: Writes = BTreeMap::new();
        for item in self.generation.tree.scan_prefix(&full) {
            let (k, v) = item?;
            merged.insert(k.to_vec(), Some(Bytes::from_store(v)));
        }
        let upper = match crate::encoding::prefix_end(&full) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let range = (Bound::Included(full.clone()), upper);
        for (k, v) in self.base.range::<Vec<u8>, _>(range.clone()) {
            merged.insert(k.clone(), v.clone());
        }
        for (k, v) in self.overlay.range::<Vec<u8>, _>(range) {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k[1..].to_vec(), v)))
            .collect())
    }

    /// Count one record of the batch as skipped (not of this view's shape).
    pub fn skip(&mut self) {
        self.skipped += 1;
    }

    /// Writes buffered so far.
    pub fn len(&self) -> usize {
        self.overlay.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty()
    }

    /// The writes to commit (this transaction's own, not its base's), with
    /// the skip count.
    pub(crate) fn into_writes(self) -> (Writes, u64) {
        (self.overlay, self.skipped)
    }
}

/// Read access to a view's active generation, for queries. Holding a reader
/// keeps that generation's tree alive even if a rebuild swaps in a new one.
#[derive(Clone)]
pub struct ViewReader {
    generation: Arc<Generation>,
    name: Arc<str>,
}

impl std::fmt::Debug for ViewReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewReader")
            .field("view", &self.name)
            .field("generation", &self.generation.number)
            .finish()
    }
}

/// A key/value pair from a scan ([`ViewReader::range`],
/// [`ViewReader::scan_prefix`], [`ViewTx::scan_prefix`]): the key without
/// the reserved prefix, and the value.
pub type KeyValue = (Vec<u8>, Bytes);

/// A pair read from a generation tree, as a [`KeyValue`] (the key without
/// its prefix).
fn stored_pair(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<KeyValue, ViewError> {
    let (k, v) = item?;
    Ok((k[1..].to_vec(), Bytes::from_store(v)))
}

impl ViewReader {
    pub(crate) fn new(generation: Arc<Generation>, name: Arc<str>) -> Self {
        Self { generation, name }
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version of the fold that wrote this data.
    pub fn version(&self) -> u32 {
        self.generation.version
    }

    /// The generation being read.
    pub fn generation(&self) -> u64 {
        self.generation.number
    }

    /// How far the data read here has folded the log.
    pub fn checkpoint(&self) -> Checkpoint {
        self.generation.checkpoint()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ViewError> {
        Ok(self
            .generation
            .tree
            .get(data_key(key))?
            .map(Bytes::from_store))
    }

    /// Keys in `[start, end)` (`end = None`: to the end of the key space),
    /// in key order; reverse the iterator for descending order.
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl DoubleEndedIterator<Item = Result<KeyValue, ViewError>> + use<> {
        let lo = data_key(start);
        let hi = match end {
            Some(end) => data_key(end),
            None => vec![DATA_PREFIX + 1],
        };
        // An empty range rather than a backwards one.
        let hi = if hi < lo { lo.clone() } else { hi };
        self.generation.tree.range(lo..hi).map(stored_pair)
    }

    /// Keys starting with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<KeyValue, ViewError>> + use<> {
        self.generation
            .tree
            .scan_prefix(data_key(prefix))
            .map(stored_pair)
    }
}

/// Records read from the log as views see them ([`read_records`]).
#[derive(Debug, Default)]
pub struct ReadRecords {
    /// Entries with a payload, deletions and forget markers, in log order.
    pub records: Vec<ViewRecord>,
    /// Entries without a payload (absent or erased), which every view skips.
    pub no_payload: u64,
    /// The offset of the first record not read.
    pub next_offset: u64,
}

/// Which of a deletion's targets are deleted, by the rules core applied
/// when it stored it: a deletion that breaks them deletes nothing, and a
/// target whose id is not the author's entry at that seq is left out.
/// `None` if it deletes nothing.
fn deleted(
    db: &Db,
    author: &FeedId,
    seq: u64,
    payload: &[u8],
) -> Result<Option<Deleted>, ViewError> {
    let Some(Ok(SystemPayload::Deletion(d))) = SystemPayload::parse(payload) else {
        return Ok(None);
    };
    if d.check_shape(seq).is_err() {
        return Ok(None);
    }
    let mut seqs = Vec::with_capacity(d.targets.len());
    for t in &d.targets {
        if db.get(author, t.seq)?.is_some_and(|e| e.id() == t.id) {
            seqs.push(t.seq);
        }
    }
    Ok(Some(Deleted::new(seqs, d.up_to)))
}

/// Read log records from `offset` as the indexer hands them to views: at
/// most `max_records` records, ending early once payloads reach
/// `max_bytes`. A view that keeps state outside sled uses it to replay
/// what that state missed.
pub fn read_records(
    db: &Db,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<ReadRecords, ViewError> {
    let mut batch = ReadRecords {
        records: Vec::with_capacity(max_records.min(65_536)),
        no_payload: 0,
        next_offset: offset,
    };
    let mut n_records = 0;
    let mut bytes = 0;
    for rec in db.log_iter(offset) {
        let rec = rec?;
        n_records += 1;
        batch.next_offset = rec.next_offset;
        match rec.body {
            RecordBody::Entry(entry) => {
                let id = entry.id();
                let h = entry.header;
                match entry.payload.into_bytes() {
                    Some(payload) if SystemPayload::is_system(&payload) => {
                        let identity_op = kappadb_core::identity::parse(&h.author, &payload);
                        if let Some(Ok(op)) = identity_op {
                            batch.records.push(ViewRecord::identity(
                                rec.offset,
                                h.author,
                                h.seq,
                                h.timestamp,
                                id,
                                op,
                            ));
                        } else if identity_op.is_some() {
                            batch.no_payload += 1;
                        } else {
                            match deleted(db, &h.author, h.seq, &payload)? {
                                Some(deleted) => batch.records.push(ViewRecord::deletion(
                                    rec.offset,
                                    h.author,
                                    h.seq,
                                    h.timestamp,
                                    id,
                                    deleted,
                                )),
                                None => batch.no_payload += 1,
                            }
                        }
                    }
                    Some(payload) => {
                        bytes += payload.len();
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
            RecordBody::Forget(feed) => {
                batch.records.push(ViewRecord::forget(rec.offset, feed));
            }
            _ => {}
        }
        if n_records >= max_records || bytes >= max_bytes {
            break;
        }
    }
    Ok(batch)
}
