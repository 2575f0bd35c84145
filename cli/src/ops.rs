//! The operations the CLI and the local node API share.
//!
//! Every command that can run against a live node is an operation here,
//! with its parameters as a serde struct and its answer as JSON. The
//! [`Local`] backend runs an operation on an open database; the HTTP server
//! ([`crate::api`]) runs the same `Local` code behind each endpoint, and the
//! [`crate::client::Remote`] backend sends the same parameters to it. The
//! CLI renders the JSON either way, so its output cannot depend on whether
//! a node is running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kappadb_core::{AppendError, Db, EntryError, EntryId, FeedId, RecordBody, StoreError};
use kappadb_net::peers::PeerRecord;
use kappadb_views::field::{FieldQuery, parse_query_value};
use kappadb_views::timeline::{Order, TimelineQuery};
use kappadb_views::{Indexer, ViewError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::out;

/// Records per page of `log` at most.
pub const MAX_PAGE: usize = 1000;
/// Records a `log` page scans at most while filtering by feed.
const MAX_SCAN: usize = 10_000;
/// How long a query waits for a view to fold what the log holds.
const CATCH_UP: Duration = Duration::from_secs(30);

/// An operation that failed, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// HTTP status: 400, 404, 409, 413, 500, 503.
    pub status: u16,
    /// A short machine-readable code, e.g. `unknown_feed`.
    pub code: String,
    /// What went wrong and what to do, for humans.
    pub message: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

impl OpError {
    /// A new error.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 404: what the request names does not exist.
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    /// The JSON body of an error response.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::Locked { .. } => Self::new(409, "locked", msg),
            _ => Self::new(500, "store", msg),
        }
    }
}

impl From<EntryError> for OpError {
    fn from(e: EntryError) -> Self {
        let msg = e.to_string();
        match e {
            EntryError::PayloadTooLarge { .. } => Self::new(413, "payload_too_large", msg),
            EntryError::FeedForked { .. } => Self::new(409, "feed_forked", msg),
            _ => Self::bad("bad_entry", msg),
        }
    }
}

impl From<AppendError> for OpError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Rejected(e) => e.into(),
            AppendError::Store(e) => e.into(),
            other => Self::new(500, "store", other.to_string()),
        }
    }
}

impl From<ViewError> for OpError {
    fn from(e: ViewError) -> Self {
        let msg = e.to_string();
        match e {
            ViewError::UnknownView(_) => Self::not_found("unknown_view", msg),
            ViewError::ViewExists(_) => Self::new(409, "view_exists", msg),
            ViewError::BadName { .. } => Self::bad("bad_view_name", msg),
            ViewError::BadPointer(_) => Self::bad("bad_pointer", msg),
            ViewError::BadQuery(_) => Self::bad("bad_query", msg),
            ViewError::Timeout { .. } => Self::new(503, "view_behind", msg),
            ViewError::Store(s) => s.into(),
            _ => Self::new(500, "view", msg),
        }
    }
}

/// Result of an operation.
pub type OpResult<T = Value> = Result<T, OpError>;

/// Parameters of `log`: records from an offset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogParams {
    /// Start at the first record at or after this byte offset.
    pub since: u64,
    /// At most this many records (at most [`MAX_PAGE`] per page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only records of this feed (id, unique prefix, or `self`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

/// Parameters of a feed range read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangeParams {
    /// First seq (1-based).
    pub from: u64,
    /// At most this many entries (at most [`MAX_PAGE`]).
    pub limit: usize,
}

impl Default for RangeParams {
    fn default() -> Self {
        Self {
            from: 1,
            limit: 100,
        }
    }
}

/// Parameters of `timeline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineParams {
    /// Only entries whose payload "type" is this.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only entries of this feed (id, unique prefix, or `self`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Only entries at or after this timestamp (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Only entries at or before this timestamp (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// At most this many entries.
    pub limit: usize,
    /// `desc` (newest first, the default) or `asc`.
    pub order: String,
}

impl Default for TimelineParams {
    fn default() -> Self {
        Self {
            kind: None,
            author: None,
            from: None,
            to: None,
            limit: 20,
            order: "desc".into(),
        }
    }
}

/// Parameters of a field index query. Values are as typed on a command
/// line: a JSON scalar, or a bare word taken as a string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldParams {
    /// Entries whose field equals this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eq: Option<String>,
    /// Entries whose field is >= this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Entries whose field is <= this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// At most this many results.
    pub limit: usize,
}

impl Default for FieldParams {
    fn default() -> Self {
        Self {
            eq: None,
            from: None,
            to: None,
            limit: FieldQuery::default().limit,
        }
    }
}

/// Parameters of `kv list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvListParams {
    /// Only keys starting with this.
    pub prefix: String,
    /// At most this many keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Body of a kv put or delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvWrite {
    /// The key.
    pub key: String,
    /// The value (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Entry ids this write supersedes.
    #[serde(default)]
    pub links: Vec<String>,
}

/// Body of an append: one payload or many.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// One JSON payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Many JSON payloads, appended in order with one fsync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payloads: Option<Vec<Value>>,
}

/// Body of `view add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewAddBody {
    /// Name of the new field index.
    pub name: String,
    /// The JSON pointer it indexes.
    pub field: String,
}

/// One page of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    /// The records, each as [`out::record_json`] renders it.
    pub records: Vec<Value>,
    /// Where the next page starts.
    pub next: u64,
    /// The log's end when the page was read.
    pub end: u64,
}

/// What the CLI can do to a database, directly or through a node.
pub trait Backend {
    /// `{"feed": ID}` of this database.
    fn id(&self) -> OpResult;
    /// Append payloads; `{"feed", "appended": [{seq, offset, id, timestamp}]}`.
    fn append(&self, body: AppendBody) -> OpResult;
    /// A page of log records.
    fn log(&self, p: &LogParams) -> OpResult<LogPage>;
    /// One entry.
    fn get(&self, feed: &str, seq: u64) -> OpResult;
    /// Every known feed and its head.
    fn feeds(&self) -> OpResult;
    /// The database's state.
    fn status(&self) -> OpResult;
    /// The address book.
    fn peers(&self) -> OpResult;
    /// A key's winning value.
    fn kv_get(&self, key: &str) -> OpResult;
    /// A key's concurrent heads.
    fn kv_heads(&self, key: &str) -> OpResult;
    /// Live keys.
    fn kv_list(&self, p: &KvListParams) -> OpResult;
    /// Put (value given) or delete (no value) a key.
    fn kv_write(&self, w: KvWrite) -> OpResult;
    /// Timeline query.
    fn timeline(&self, p: &TimelineParams) -> OpResult;
    /// Views and their lag.
    fn views(&self) -> OpResult;
    /// A view's digest.
    fn view_digest(&self, name: &str) -> OpResult;
    /// Declare a field index.
    fn view_add(&self, body: ViewAddBody) -> OpResult;
    /// Remove a field index.
    fn view_remove(&self, name: &str) -> OpResult;
    /// Rebuild a view; `progress(offset, end)` when it runs here.
    fn view_rebuild(&self, name: &str, progress: &mut dyn FnMut(u64, u64)) -> OpResult;
    /// Query a field index.
    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult;
    /// Call `f` with every record from `since` on, waiting for new ones,
    /// until `f` returns false.
    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()>;
}

/// Runs operations on a database opened in this process. Clones share
/// the database, the views and the interrupt flag.
#[derive(Clone)]
pub struct Local {
    db: Db,
    indexer: Arc<std::sync::OnceLock<Arc<Indexer>>>,
    interrupted: Arc<AtomicBool>,
}

impl Local {
    /// Operations on `db`; views are opened on first use, folded on the
    /// calling thread.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            indexer: Arc::default(),
            interrupted: Arc::default(),
        }
    }

    /// Operations on `db` with a live indexer (a node's).
    pub fn with_indexer(db: Db, indexer: Arc<Indexer>) -> Self {
        let local = Self::new(db);
        let _ = local.indexer.set(indexer);
        local
    }

    /// Make [`Backend::follow`] return (on Ctrl-C).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn indexer(&self) -> OpResult<&Indexer> {
        if let Some(i) = self.indexer.get() {
            return Ok(i);
        }
        let i = crate::views_cmd::open_indexer(&self.db)
            .map_err(|e| OpError::new(500, "view", format!("{e:#}")))?;
        Ok(self.indexer.get_or_init(|| Arc::new(i)))
    }

    /// The indexer, caught up with the log as it is now for `view`.
    fn caught_up(&self, view: &str) -> OpResult<&Indexer> {
        let i = self.indexer()?;
        i.wait_until_caught_up(view, CATCH_UP)?;
        Ok(i)
    }

    /// Resolve a feed argument: a full id, `self`, or a unique prefix of a
    /// known feed.
    pub fn resolve_feed(&self, text: &str) -> OpResult<FeedId> {
        let text = text.trim();
        if text == "self" || text == "me" {
            return Ok(self.db.feed_id());
        }
        if let Ok(id) = text.parse::<FeedId>() {
            return Ok(id);
        }
        let lower = text.to_ascii_lowercase();
        if lower.len() < 4 || !lower.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(OpError::bad(
                "bad_feed",
                format!(
                    "'{text}' is not a feed id: give the 64 hex digits from `kappa feeds`, a unique prefix of at least 4, or \"self\""
                ),
            ));
        }
        let matches: Vec<FeedId> = self
            .db
            .feeds()
            .into_iter()
            .map(|f| f.feed)
            .filter(|f| f.to_string().starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(OpError::not_found(
                "unknown_feed",
                format!("no known feed starts with '{text}'; `kappa feeds` lists them"),
            )),
            _ => Err(OpError::bad(
                "ambiguous_feed",
                format!("'{text}' matches {} feeds; give more digits", matches.len()),
            )),
        }
    }
}

impl Local {
    /// Entries of one feed from a seq on.
    pub fn feed_range(&self, feed: &str, p: &RangeParams) -> OpResult {
        let feed = self.resolve_feed(feed)?;
        let Some(head) = self.db.head(&feed) else {
            return Err(OpError::not_found(
                "unknown_feed",
                format!("no entries of feed {} are held here", feed.fmt_short()),
            ));
        };
        let limit = p.limit.clamp(1, MAX_PAGE) as u64;
        let from = p.from.max(1);
        let to = from.saturating_add(limit - 1).min(head.seq);
        let mut entries = Vec::new();
        let mut next = from;
        for e in self.db.feed_range(&feed, from, to) {
            let e = e?;
            next = e.header.seq + 1;
            entries.push(out::entry_json(None, &e));
        }
        Ok(json!({
            "feed": feed.to_string(),
            "head_seq": head.seq,
            "entries": entries,
            "next": (next <= head.seq).then_some(next),
        }))
    }
}

/// The address book as JSON.
pub fn peers_json(peers: &[PeerRecord]) -> Value {
    Value::Array(
        peers
            .iter()
            .map(|p| {
                json!({
                    "peer": p.peer_id.to_string(),
                    "feed": p.feed.map(|f| f.to_string()),
                    "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "last_seen": p.last_seen,
                    "last_sync": p.last_sync,
                })
            })
            .collect(),
    )
}

/// Parse entry ids named as links.
fn parse_links(links: &[String]) -> OpResult<Vec<EntryId>> {
    links
        .iter()
        .map(|l| {
            l.parse::<EntryId>().map_err(|_| {
                OpError::bad(
                    "bad_link",
                    format!(
                        "'{l}' is not an entry id (64 hex digits, from `kappa kv get KEY --heads`)"
                    ),
                )
            })
        })
        .collect()
}

fn check_name(name: &str) -> OpResult<()> {
    kappadb_views::validate_view_name(name).map_err(OpError::from)
}

/// The feed a log record belongs to.
pub fn record_author(body: &RecordBody) -> FeedId {
    match body {
        RecordBody::Entry(e) => e.header.author,
        RecordBody::Fork(p) => p.author(),
    }
}

impl Backend for Local {
    fn id(&self) -> OpResult {
        Ok(json!({"feed": self.db.feed_id().to_string()}))
    }

    fn append(&self, body: AppendBody) -> OpResult {
        let values = match (body.payload, body.payloads) {
            (Some(p), None) => vec![p],
            (None, Some(ps)) => ps,
            _ => {
                return Err(OpError::bad(
                    "bad_request",
                    "give exactly one of \"payload\" (a JSON value) or \"payloads\" (an array)",
                ));
            }
        };
        let payloads: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
        let res = self.db.append_batch(payloads)?;
        let appended: Vec<Value> = res
            .iter()
            .map(|a| {
                json!({"seq": a.seq, "offset": a.offset, "id": a.id.to_string(), "timestamp": a.timestamp})
            })
            .collect();
        Ok(json!({"feed": self.db.feed_id().to_string(), "appended": appended}))
    }

    fn log(&self, p: &LogParams) -> OpResult<LogPage> {
        let feed = p
            .feed
            .as_deref()
            .map(|f| self.resolve_feed(f))
            .transpose()?;
        let limit = p.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let end = self.db.log_end();
        let mut next = self.db.record_boundary(p.since.min(end))?;
        let mut records = Vec::new();
        for rec in self.db.log_iter(next).take(MAX_SCAN) {
            if records.len() >= limit {
                break;
            }
            let rec = rec?;
            next = rec.next_offset;
            if feed.is_some_and(|f| f != record_author(&rec.body)) {
                continue;
            }
            records.push(out::record_json(&rec));
        }
        Ok(LogPage { records, next, end })
    }

    fn get(&self, feed: &str, seq: u64) -> OpResult {
        let feed = self.resolve_feed(feed)?;
        match self.db.get(&feed, seq)? {
            Some(entry) => Ok(out::entry_json(None, &entry)),
            None => Err(match self.db.head(&feed) {
                None => OpError::not_found(
                    "unknown_feed",
                    format!("no entries of feed {} are held here", feed.fmt_short()),
                ),
                Some(h) => OpError::not_found(
                    "no_such_entry",
                    format!(
                        "feed {} has no entry at seq {seq} (this database holds seq 1..={})",
                        feed.fmt_short(),
                        h.seq
                    ),
                ),
            }),
        }
    }

    fn feeds(&self) -> OpResult {
        let me = self.db.feed_id();
        let arr: Vec<Value> = self
            .db
            .feeds()
            .iter()
            .map(|f| {
                json!({
                    "feed": f.feed.to_string(),
                    "seq": f.head.seq,
                    "head": f.head.id.to_string(),
                    "timestamp": f.head.timestamp,
                    "forked": f.fork.is_some(),
                    "fork_seq": f.fork.map(|x| x.seq),
                    "local": f.feed == me,
                })
            })
            .collect();
        Ok(Value::Array(arr))
    }

    fn status(&self) -> OpResult {
        let s = self.db.status();
        Ok(json!({
            "dir": s.dir.display().to_string(),
            "feed": s.feed_id.to_string(),
            "log_bytes": s.log_bytes,
            "records": s.records,
            "entries": s.entries,
            "feeds": s.feeds,
            "forked_feeds": s.forked_feeds,
            "own_seq": self.db.head(&s.feed_id).map_or(0, |h| h.seq),
        }))
    }

    fn peers(&self) -> OpResult {
        Ok(peers_json(
            &kappadb_net::peers::AddressBook::load(self.db.dir()).peers(),
        ))
    }

    fn kv_get(&self, key: &str) -> OpResult {
        match self.caught_up("kv")?.kv()?.get(key)? {
            Some(v) => Ok(v),
            None => Err(OpError::not_found(
                "no_such_key",
                format!("key '{key}' is not set"),
            )),
        }
    }

    fn kv_heads(&self, key: &str) -> OpResult {
        let heads = self.caught_up("kv")?.kv()?.heads(key)?;
        if heads.is_empty() {
            return Err(OpError::not_found(
                "no_such_key",
                format!("key '{key}' is not set"),
            ));
        }
        Ok(Value::Array(
            heads
                .iter()
                .map(|h| {
                    json!({
                        "id": h.id.to_string(), "feed": h.author.to_string(), "seq": h.seq,
                        "timestamp": h.timestamp, "deleted": h.is_deleted(), "value": h.value,
                    })
                })
                .collect(),
        ))
    }

    fn kv_list(&self, p: &KvListParams) -> OpResult {
        let kv = self.caught_up("kv")?.kv()?;
        let mut arr = Vec::new();
        for item in kv.list(&p.prefix) {
            if p.limit.is_some_and(|l| arr.len() >= l) {
                break;
            }
            let item = item?;
            arr.push(json!({"key": item.key, "value": item.value, "heads": item.heads}));
        }
        Ok(Value::Array(arr))
    }

    fn kv_write(&self, w: KvWrite) -> OpResult {
        let links = parse_links(&w.links)?;
        let payload = match &w.value {
            Some(v) => kappadb_views::kv::put_payload(&w.key, v, &links),
            None => kappadb_views::kv::del_payload(&w.key, &links),
        };
        let a = self.db.append(payload)?;
        Ok(json!({"key": w.key, "seq": a.seq, "id": a.id.to_string()}))
    }

    fn timeline(&self, p: &TimelineParams) -> OpResult {
        let author = p
            .author
            .as_deref()
            .map(|a| self.resolve_feed(a))
            .transpose()?;
        let order = match p.order.as_str() {
            "desc" => Order::Descending,
            "asc" => Order::Ascending,
            other => {
                return Err(OpError::bad(
                    "bad_query",
                    format!("order must be \"asc\" or \"desc\", not {other:?}"),
                ));
            }
        };
        let items = self
            .caught_up("timeline")?
            .timeline()?
            .query(&TimelineQuery {
                kind: p.kind.clone(),
                author,
                from: p.from,
                to: p.to,
                limit: p.limit,
                order,
            })?;
        Ok(Value::Array(
            items
                .iter()
                .map(|it| {
                    out::with_payload(
                        json!({
                            "timestamp": it.timestamp, "feed": it.author.to_string(), "seq": it.seq,
                            "id": it.id.to_string(), "type": it.kind,
                        }),
                        it.payload.as_deref(),
                    )
                })
                .collect(),
        ))
    }

    fn views(&self) -> OpResult {
        let mut list = self.indexer()?.status();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Value::Array(
            list.iter()
                .map(|s| {
                    json!({
                        "name": s.name, "description": s.description, "version": s.version,
                        "checkpoint": s.checkpoint, "lag": s.lag, "entries": s.folded,
                        "skipped": s.skipped, "rebuilding": s.rebuild.is_some(),
                    })
                })
                .collect(),
        ))
    }

    fn view_digest(&self, name: &str) -> OpResult {
        check_name(name)?;
        let d = self.caught_up(name)?.digest(name)?;
        Ok(json!({"name": name, "digest": d.to_string()}))
    }

    fn view_add(&self, body: ViewAddBody) -> OpResult {
        let i = self.indexer()?;
        i.declare_field_index(&body.name, &body.field)?;
        i.wait_until_caught_up(&body.name, CATCH_UP)?;
        let s = i.view_status(&body.name)?;
        Ok(json!({"name": body.name, "field": body.field, "entries": s.folded}))
    }

    fn view_remove(&self, name: &str) -> OpResult {
        check_name(name)?;
        self.indexer()?.remove_field_index(name)?;
        Ok(json!({"name": name, "removed": true}))
    }

    fn view_rebuild(&self, name: &str, progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        check_name(name)?;
        let s = self.indexer()?.rebuild(name, progress)?;
        Ok(json!({"name": s.name, "entries": s.folded, "skipped": s.skipped}))
    }

    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult {
        check_name(name)?;
        let q = match &p.eq {
            Some(v) => {
                if p.from.is_some() || p.to.is_some() {
                    return Err(OpError::bad(
                        "bad_query",
                        "give either eq, or from and/or to, not both",
                    ));
                }
                FieldQuery::eq(parse_query_value(v))
            }
            None => {
                if p.from.is_none() && p.to.is_none() {
                    return Err(OpError::bad(
                        "bad_query",
                        "give --eq VALUE, or --from and/or --to",
                    ));
                }
                FieldQuery::range(
                    p.from.as_deref().map(parse_query_value),
                    p.to.as_deref().map(parse_query_value),
                )
            }
        }
        .limit(p.limit);
        let hits = self.caught_up(name)?.field_index(name)?.query(&q)?;
        Ok(Value::Array(
            hits.iter()
                .map(|hit| {
                    out::with_payload(
                        json!({
                            "value": hit.value, "timestamp": hit.timestamp, "feed": hit.author.to_string(),
                            "seq": hit.seq, "id": hit.id.to_string(),
                        }),
                        hit.payload.as_deref(),
                    )
                })
                .collect(),
        ))
    }

    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let feed = feed.map(|x| self.resolve_feed(x)).transpose()?;
        let mut tail = self.db.tail(since.min(self.db.log_end()));
        while !self.interrupted.load(Ordering::SeqCst) {
            // Wake up now and then even without writes, to notice an
            // interrupt.
            let Some(rec) = tail.next_timeout(Duration::from_millis(500)) else {
                continue;
            };
            let rec = rec?;
            if feed.is_some_and(|x| x != record_author(&rec.body)) {
                continue;
            }
            if !f(out::record_json(&rec))? {
                break;
            }
        }
        Ok(())
    }
}
