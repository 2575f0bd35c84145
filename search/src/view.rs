//! [`SearchView`]: the fold. Documents go to a tantivy index per view
//! generation, `DIR/search/<view>/<generation>/`; what the view holds goes
//! to its sled tree as undo records (see the crate docs for both and for
//! the checkpoint rule).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kappadb_core::{Db, FeedId};
use kappadb_views::undo::UndoBatch;
use kappadb_views::{Bytes, View, ViewError, ViewRecord, ViewTx, read_records};
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::SearchError;
use crate::spec::{SearchSpec, field_name};

/// Prefix of the undo records in the view's sled key space.
pub(crate) const UNDO: &[u8] = b"d";
/// Domain prefix of a document's hash (what the undo record holds).
const DOC_DOMAIN: &[u8] = b"kappadb/search-doc/v1\0";
/// Name of the tokenizer the text fields use.
const TOKENIZER: &str = "kappa";
/// Bytes of a document's blake3 kept in its undo record (128 bits: the
/// digest compares documents of the same signed entries, so this guards
/// against accidents, not against forgeries, which signatures do).
const DOC_HASH: usize = 16;
/// The commit payload's format.
const PAYLOAD_FORMAT: u32 = 1;
/// A batch that does not reach the log's end commits the index only if
/// the last commit is this old (one that reaches it always commits).
const COMMIT_EVERY: Duration = Duration::from_millis(1000);
/// The writer's memory budget (tantivy splits it between its threads).
const WRITER_MEMORY: usize = 192 * 1024 * 1024;
/// The writer of an index with little to fold: one thread, a small budget
/// (tantivy's smallest is 15 MB per thread).
const SMALL_WRITER_MEMORY: usize = 20 * 1024 * 1024;
/// Bytes of log left to fold above which an index gets the big writer.
const BIG_LAG: u64 = 32 * 1024 * 1024;
/// Records per read while replaying the log into an index that lags.
const REPLAY_RECORDS: usize = 5_000;

/// What a tantivy commit carries: the checkpoint of the documents it holds.
#[derive(Serialize, Deserialize)]
struct Payload {
    format: u32,
    /// Offset of the first log record the committed documents do not
    /// reflect.
    next_offset: u64,
}

/// Reads a generation's sled key space (a transaction's or a reader's).
pub(crate) type SledGet<'a> = dyn Fn(&[u8]) -> Result<Option<Bytes>, ViewError> + 'a;

/// The fields of the schema.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    pub(crate) feed: Field,
    pub(crate) seq: Field,
    pub(crate) offset: Field,
    pub(crate) timestamp: Field,
    pub(crate) kind: Field,
    /// One per declared pointer, in declaration order.
    pub(crate) texts: Vec<Field>,
}

/// A full-text search view. See the crate docs.
pub struct SearchView {
    name: String,
    spec: SearchSpec,
    version: u32,
    db: Db,
    /// `DIR/search/<name>`.
    root: PathBuf,
    schema: Schema,
    fields: Fields,
    analyzer: TextAnalyzer,
    /// Open indexes by generation number.
    gens: Mutex<BTreeMap<u64, Arc<GenIndex>>>,
    /// Generations below this were swapped out and their indexes removed:
    /// never opened again (a fold still under way in one is refused).
    retired_below: AtomicU64,
}

impl std::fmt::Debug for SearchView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchView")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish()
    }
}

/// The index of one generation.
pub(crate) struct GenIndex {
    pub(crate) index: Index,
    pub(crate) reader: IndexReader,
    writer: Mutex<Writer>,
}

struct Writer {
    writer: IndexWriter<TantivyDocument>,
    /// The checkpoint of the last commit.
    committed: u64,
    /// The checkpoint of what was last added (committed or not).
    applied: u64,
    /// The writer may hold documents of records below this offset (the
    /// index was ahead of sled on open, or a batch is folded again after a
    /// failed commit): their keys are deleted before they are added.
    /// Above it, a document is new unless sled holds its undo record.
    high_water: u64,
    /// Documents added or deleted since the last commit.
    dirty: bool,
    last_commit: Instant,
}

/// The directory of the indexes of `view` in the database at `db_dir`.
pub(crate) fn view_root(db_dir: &Path, view: &str) -> PathBuf {
    db_dir.join("search").join(view)
}

impl SearchView {
    /// A search view named `name` on `db`, as `spec` declares.
    pub fn new(db: &Db, name: &str, spec: SearchSpec) -> Result<Self, SearchError> {
        kappadb_views::validate_view_name(name)?;
        if kappadb_views::BUILTIN_NAMES.contains(&name) {
            return Err(ViewError::ViewExists(name.to_string()).into());
        }
        spec.check()?;
        let mut builder = Schema::builder();
        let feed = builder.add_text_field("feed", STRING | STORED);
        // Fast fields (columns), not indexed: a term per document would
        // cost more than the text itself; filters and deletions scan them.
        let seq = builder.add_u64_field("seq", STORED | FAST);
        let offset = builder.add_u64_field("offset", STORED);
        let timestamp = builder.add_u64_field("timestamp", STORED | FAST);
        let kind = builder.add_text_field("type", STRING | STORED);
        let text_options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        // Text is not stored: snippets read it from the entry in the log.
        let mut texts = Vec::new();
        for p in &spec.fields {
            texts.push(builder.add_text_field(&field_name(p)?, text_options.clone()));
        }
        let analyzer = match spec.language()? {
            Some(lang) => TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(40))
                .filter(LowerCaser)
                .filter(Stemmer::new(lang))
                .build(),
            None => TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(40))
                .filter(LowerCaser)
                .build(),
        };
        Ok(Self {
            name: name.to_string(),
            version: spec.version(),
            spec,
            db: db.clone(),
            root: view_root(db.dir(), name),
            schema: builder.build(),
            fields: Fields {
                feed,
                seq,
                offset,
                timestamp,
                kind,
                texts,
            },
            analyzer,
            gens: Mutex::new(BTreeMap::new()),
            retired_below: AtomicU64::new(0),
        })
    }

    /// Its declaration.
    pub fn spec(&self) -> &SearchSpec {
        &self.spec
    }

    pub(crate) fn fields(&self) -> &Fields {
        &self.fields
    }

    fn gens(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<GenIndex>>> {
        self.gens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, e: impl std::fmt::Display) -> SearchError {
        SearchError::index(&self.name, e)
    }

    /// The index of generation `number`, opened (and brought up to the
    /// sled checkpoint `sled_next`, replaying the log if it lags) if it is
    /// not open yet. `get` reads the generation's sled key space.
    pub(crate) fn gen_index(
        &self,
        number: u64,
        sled_next: u64,
        get: &SledGet<'_>,
    ) -> Result<Arc<GenIndex>, SearchError> {
        let mut gens = self.gens();
        if let Some(g) = gens.get(&number) {
            return Ok(g.clone());
        }
        if number < self.retired_below.load(Ordering::Acquire) {
            return Err(self.err(format!("generation {number} was replaced by a rebuild")));
        }
        let g = Arc::new(self.open_gen(number, sled_next, get)?);
        gens.insert(number, g.clone());
        Ok(g)
    }

    fn open_gen(
        &self,
        number: u64,
        sled_next: u64,
        get: &SledGet<'_>,
    ) -> Result<GenIndex, SearchError> {
        let dir = self.root.join(number.to_string());
        // A generation sled holds nothing of starts from an empty index,
        // whatever is on disk.
        let opened = if sled_next == 0 {
            None
        } else {
            match self.open_existing(&dir) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::warn!(view = %self.name, generation = number, error = %e,
                        "search index does not open; rebuilding it from the log");
                    None
                }
            }
        };
        let (index, committed) = match opened {
            Some(x) => x,
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| self.err(e))?;
                }
                std::fs::create_dir_all(&dir).map_err(|e| self.err(e))?;
                let index =
                    Index::create_in_dir(&dir, self.schema.clone()).map_err(|e| self.err(e))?;
                (index, 0)
            }
        };
        index
            .tokenizers()
            .register(TOKENIZER, self.analyzer.clone());
        // A big fold (a rebuild, a first fold of a long log) indexes on two
        // threads with a big budget; live folding of a few entries at a
        // time needs neither.
        let (threads, memory) = if self.db.log_end().saturating_sub(committed) > BIG_LAG {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores.clamp(1, 2), WRITER_MEMORY)
        } else {
            (1, SMALL_WRITER_MEMORY)
        };
        let writer = index
            .writer_with_num_threads(threads, memory)
            .map_err(|e| self.err(e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| self.err(e))?;
        let g = GenIndex {
            index,
            reader,
            writer: Mutex::new(Writer {
                writer,
                committed,
                applied: committed,
                high_water: committed,
                dirty: false,
                last_commit: Instant::now(),
            }),
        };
        if committed < sled_next {
            tracing::info!(view = %self.name, generation = number, from = committed, to = sled_next,
                "search index lags its view; replaying the log");
            self.replay(&g, committed, sled_next, get)?;
        }
        Ok(g)
    }

    /// Open an index on disk and read its checkpoint.
    fn open_existing(&self, dir: &Path) -> Result<(Index, u64), SearchError> {
        let index = Index::open_in_dir(dir).map_err(|e| self.err(e))?;
        if index.schema() != self.schema {
            return Err(self.err("the index has another schema"));
        }
        let metas = index.load_metas().map_err(|e| self.err(e))?;
        let next = match metas.payload {
            None => 0,
            Some(p) => match serde_json::from_str::<Payload>(&p) {
                Ok(p) if p.format == PAYLOAD_FORMAT => p.next_offset,
                _ => return Err(self.err("the commit payload does not decode")),
            },
        };
        Ok((index, next))
    }

    /// Bring `g` from `from` to `to` with the log: an entry is indexed
    /// again if sled holds it (sled is the truth below `to`), deletions
    /// and forget markers delete what they name.
    fn replay(
        &self,
        g: &GenIndex,
        from: u64,
        to: u64,
        get: &SledGet<'_>,
    ) -> Result<(), SearchError> {
        let mut w = g.lock_writer();
        let mut offset = from;
        let mut holds = Holds::default();
        while offset < to {
            let read = read_records(&self.db, offset, REPLAY_RECORDS, 16 * 1024 * 1024)?;
            if read.next_offset == offset {
                break;
            }
            for r in &read.records {
                if r.offset >= to {
                    break;
                }
                if let Some(d) = r.deleted() {
                    self.delete_seqs(&w.writer, &r.author, d.seqs())?;
                    if let Some(up_to) = d.up_to() {
                        self.delete_range(&w.writer, &r.author, 0, up_to)?;
                    }
                } else if r.forgets() {
                    w.writer.delete_term(Term::from_field_text(
                        self.fields.feed,
                        &r.author.to_string(),
                    ));
                } else if holds.holds(get, &r.author, r.seq)?
                    && let Some((doc, _)) = self.document(r)
                {
                    // The index holds nothing from `from` on: no document
                    // to replace.
                    w.writer.add_document(doc).map_err(|e| self.err(e))?;
                }
            }
            offset = read.next_offset.min(to);
        }
        w.applied = to;
        w.high_water = w.high_water.max(to);
        self.commit(g, &mut w)
    }

    /// Delete the documents of `author` with a seq in `seqs` (sorted), one
    /// delete query per run of consecutive seqs.
    fn delete_seqs(
        &self,
        writer: &IndexWriter<TantivyDocument>,
        author: &FeedId,
        seqs: &[u64],
    ) -> Result<(), SearchError> {
        let mut i = 0;
        while i < seqs.len() {
            let lo = seqs[i];
            let mut hi = lo;
            while i + 1 < seqs.len() && seqs[i + 1] == hi + 1 {
                i += 1;
                hi = seqs[i];
            }
            self.delete_range(writer, author, lo, hi)?;
            i += 1;
        }
        Ok(())
    }

    /// Delete the documents of `author` with `lo <= seq <= hi`.
    fn delete_range(
        &self,
        writer: &IndexWriter<TantivyDocument>,
        author: &FeedId,
        lo: u64,
        hi: u64,
    ) -> Result<(), SearchError> {
        use std::ops::Bound;
        use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
        let feed: Box<dyn Query> = Box::new(TermQuery::new(
            Term::from_field_text(self.fields.feed, &author.to_string()),
            IndexRecordOption::Basic,
        ));
        let seqs: Box<dyn Query> = Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_u64(self.fields.seq, lo)),
            Bound::Included(Term::from_field_u64(self.fields.seq, hi)),
        ));
        let q = BooleanQuery::new(vec![(Occur::Must, feed), (Occur::Must, seqs)]);
        writer.delete_query(Box::new(q)).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The document of `r` and its hash, or `None` if it is not of the
    /// view's shape (not JSON, another type, no declared field a string).
    fn document(&self, r: &ViewRecord) -> Option<(TantivyDocument, [u8; DOC_HASH])> {
        let json = r.json()?;
        let kind = json.get("type").and_then(|t| t.as_str());
        if let Some(want) = &self.spec.kind
            && kind != Some(want.as_str())
        {
            return None;
        }
        let texts: Vec<Option<&str>> = self
            .spec
            .fields
            .iter()
            .map(|p| json.pointer(p).and_then(|v| v.as_str()))
            .collect();
        if texts.iter().all(Option::is_none) {
            return None;
        }
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.feed, r.author.to_string());
        doc.add_u64(f.seq, r.seq);
        doc.add_u64(f.offset, r.offset);
        doc.add_u64(f.timestamp, r.timestamp);
        if let Some(k) = kind {
            doc.add_text(f.kind, k);
        }
        let mut h = blake3::Hasher::new();
        h.update(DOC_DOMAIN);
        h.update(&r.timestamp.to_le_bytes());
        put_opt(&mut h, kind);
        for (field, text) in f.texts.iter().zip(&texts) {
            put_opt(&mut h, *text);
            if let Some(t) = text {
                doc.add_text(*field, t);
            }
        }
        let mut hash = [0u8; DOC_HASH];
        hash.copy_from_slice(&h.finalize().as_bytes()[..DOC_HASH]);
        Some((doc, hash))
    }

    /// Commit what `w` holds, with its checkpoint, and show it to readers.
    fn commit(&self, g: &GenIndex, w: &mut Writer) -> Result<(), SearchError> {
        let payload = serde_json::to_string(&Payload {
            format: PAYLOAD_FORMAT,
            next_offset: w.applied,
        })
        .map_err(|e| self.err(e))?;
        let mut prepared = w.writer.prepare_commit().map_err(|e| self.err(e))?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(|e| self.err(e))?;
        w.committed = w.applied;
        w.dirty = false;
        w.last_commit = Instant::now();
        g.reader.reload().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drop the indexes of generations other than `keep` and their
    /// directories (a rebuild swapped, or a building one was given up).
    pub(crate) fn retain(&self, keep: &[u64]) {
        self.gens().retain(|n, _| keep.contains(n));
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let keep_it = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| keep.contains(&n));
            if !keep_it && let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(view = %self.name, error = %err, "cannot remove an old search index");
            }
        }
    }

    /// Drop the indexes of generations older than `active` (a rebuild
    /// swapped them out) and their directories. Generations being built are
    /// always newer than the active one.
    pub(crate) fn retire_below(&self, active: u64) {
        let old: Vec<u64> = {
            let mut gens = self.gens();
            self.retired_below.fetch_max(active, Ordering::AcqRel);
            let old = gens.range(..active).map(|(n, _)| *n).collect();
            gens.retain(|n, _| *n >= active);
            old
        };
        for n in old {
            let dir = self.root.join(n.to_string());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(view = %self.name, error = %e, "cannot remove an old search index");
            }
        }
    }

    /// Commit what the writers hold (on shutdown; a crash instead replays
    /// it from the log on open).
    pub fn flush(&self) -> Result<(), SearchError> {
        let gens: Vec<Arc<GenIndex>> = self.gens().values().cloned().collect();
        for g in gens {
            let mut w = g.lock_writer();
            if w.applied != w.committed {
                self.commit(&g, &mut w)?;
            }
        }
        Ok(())
    }
}

impl GenIndex {
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn put_opt(h: &mut blake3::Hasher, s: Option<&str>) {
    match s {
        Some(s) => {
            h.update(&[1]);
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
}

/// Whether sled holds an undo record for an entry, reading each undo
/// bucket once (`prefix | author | seq / 64 BE -> postcard(Vec<(seq % 64,
/// data)>)`, see `kappadb_views::undo`).
#[derive(Default)]
struct Holds {
    bucket: Option<(FeedId, u64, Vec<u8>)>,
}

impl Holds {
    fn holds(&mut self, get: &SledGet<'_>, author: &FeedId, seq: u64) -> Result<bool, ViewError> {
        let block = seq / 64;
        let fresh = !matches!(&self.bucket, Some((a, b, _)) if a == author && *b == block);
        if fresh {
            let mut key = UNDO.to_vec();
            key.extend_from_slice(author.as_bytes());
            key.extend_from_slice(&block.to_be_bytes());
            let present = match get(&key)? {
                None => Vec::new(),
                Some(bytes) => postcard::from_bytes::<Vec<(u8, Vec<u8>)>>(&bytes)
                    .map_err(|_| ViewError::fold("search", "an undo record does not decode"))?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
            };
            self.bucket = Some((*author, block, present));
        }
        Ok(self
            .bucket
            .as_ref()
            .is_some_and(|(_, _, p)| p.contains(&((seq % 64) as u8))))
    }
}

impl View for SearchView {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        let g = {
            let t: &ViewTx<'_> = tx;
            self.gen_index(t.generation(), t.checkpoint().next_offset, &|k| t.get(k))?
        };
        let mut w = g.lock_writer();
        let high_water = w.high_water;
        // Set first: if this batch fails half way, what it added stays in
        // the writer, and folding it again must not add it twice.
        w.high_water = high_water.max(tx.batch_end());
        // Records folded again (the index was ahead of sled, or a batch is
        // retried) replace their documents: delete those first, so each
        // entry has one document. Sled holds an entry only below its
        // checkpoint, and the index holds what sled holds there (replayed
        // on open), so nothing else can be held already.
        let mut again: BTreeMap<FeedId, Vec<u64>> = BTreeMap::new();
        for r in batch
            .iter()
            .filter(|r| r.is_entry() && r.offset < high_water)
        {
            again.entry(r.author).or_default().push(r.seq);
        }
        let mut changed = false;
        for (author, mut seqs) in again {
            changed = true;
            seqs.sort_unstable();
            seqs.dedup();
            self.delete_seqs(&w.writer, &author, &seqs)?;
        }
        let mut undo = UndoBatch::new(UNDO);
        for r in batch {
            if let Some(d) = r.deleted() {
                let mut gone = Vec::new();
                for &seq in d.seqs() {
                    if undo.take(tx, &r.author, seq)?.is_some() {
                        gone.push(seq);
                    }
                }
                if let Some(up_to) = d.up_to() {
                    gone.extend(
                        undo.take_up_to(tx, &r.author, Some(up_to))?
                            .into_iter()
                            .map(|(seq, _)| seq),
                    );
                }
                gone.sort_unstable();
                gone.dedup();
                changed |= !gone.is_empty();
                self.delete_seqs(&w.writer, &r.author, &gone)?;
            } else if r.forgets() {
                changed = true;
                undo.take_up_to(tx, &r.author, None)?;
                w.writer.delete_term(Term::from_field_text(
                    self.fields.feed,
                    &r.author.to_string(),
                ));
            } else {
                let Some((doc, hash)) = self.document(r) else {
                    tx.skip();
                    continue;
                };
                undo.put(tx, &r.author, r.seq, hash.to_vec())?;
                changed = true;
                w.writer
                    .add_document(doc)
                    .map_err(|e| ViewError::from(self.err(e)))?;
            }
        }
        undo.write(tx)?;
        w.applied = tx.batch_end();
        w.dirty |= changed;
        // Searchable as soon as folded; a batch that changed nothing (no
        // entry of this view's shape) moves the checkpoint at the next
        // commit, at most a second later, rather than costing one now.
        let reached_end = tx.batch_end() >= self.db.log_end();
        if (w.dirty && reached_end) || w.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit(&g, &mut w)?;
        }
        Ok(())
    }
}

impl Drop for SearchView {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(view = %self.name, error = %e, "cannot commit the search index");
        }
    }
}
