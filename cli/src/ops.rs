//! The operations the CLI and the local node API share.
//!
//! Every command that can run against a live node is an operation here:
//! its parameters are in [`crate::params`], its answer is a type of
//! [`crate::answer`]. The [`Local`] backend runs an operation on an open
//! database; the HTTP server ([`crate::api`]) runs the same `Local` code
//! behind each endpoint, and the [`crate::client::Remote`] backend sends
//! the same parameters to it and decodes the same answers. The CLI renders
//! the answers either way, so its output cannot depend on whether a node
//! is running.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kappadb_core::{Db, EntryId, FeedId, RecordBody};
use kappadb_search::{SearchExt, SearchQuery, SearchSpec};
use kappadb_views::field::{FieldQuery, parse_query_value};
use kappadb_views::timeline::{Order, TimelineQuery};
use kappadb_views::{Indexer, ViewError};
use serde_json::Value;
use tokio::sync::watch;

use crate::answer::{
    AppendReply, Appended, BackupReply, BlockReply, CompactReply, DeleteReply, Digest, Entry,
    FeedInfo, FeedRange, FieldHit, FollowReply, ForgetReply, HoldReply, Id, IdentityInfo,
    IdentityOpReply, InviteReply, KvHead, KvItem, KvWritten, LogPage, OpError, OpResult, PeerInfo,
    RawEntry, Record, SearchHit, Status, SyncReply, TimelineItem, VerifyReply, ViewAdded, ViewInfo,
    ViewRebuilt, ViewRemoved,
};
use crate::group_commit::GroupCommit;
use crate::params::{
    AppendBody, BackupBody, DelegateBody, DeleteBody, EntryParams, FieldParams, FollowBody,
    KvListParams, KvWrite, LogParams, RangeParams, RevokeBody, SearchParams, SyncBody,
    TimelineParams, ViewAddBody,
};

/// Records per page of `log` at most.
pub const MAX_PAGE: usize = 1000;
/// Records a `log` page scans at most while filtering by feed.
const MAX_SCAN: usize = 10_000;
/// How long a query waits for a view to fold what the log holds.
const CATCH_UP: Duration = Duration::from_secs(30);

/// What the CLI can do to a database, directly or through a node.
pub trait Backend {
    /// This database's feed.
    fn id(&self) -> OpResult<Id>;
    /// Append payloads.
    fn append(&self, body: AppendBody) -> OpResult<AppendReply>;
    /// A page of log records.
    fn log(&self, p: &LogParams) -> OpResult<LogPage>;
    /// One entry.
    fn get(&self, feed: &str, seq: u64, p: &EntryParams) -> OpResult<Entry>;
    /// Every known feed and its head.
    fn feeds(&self) -> OpResult<Vec<FeedInfo>>;
    /// The database's state.
    fn status(&self) -> OpResult<Status>;
    /// The address book.
    fn peers(&self) -> OpResult<Vec<PeerInfo>>;
    /// A key's winning value.
    fn kv_get(&self, key: &str) -> OpResult<Value>;
    /// A key's concurrent heads.
    fn kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>>;
    /// Live keys.
    fn kv_list(&self, p: &KvListParams) -> OpResult<Vec<KvItem>>;
    /// Put (value given) or delete (no value) a key.
    fn kv_write(&self, w: KvWrite) -> OpResult<KvWritten>;
    /// Timeline query.
    fn timeline(&self, p: &TimelineParams) -> OpResult<Vec<TimelineItem>>;
    /// The identity this database's feed speaks for, and its devices.
    fn identity(&self) -> OpResult<IdentityInfo>;
    /// Delegate a device (with its consent) to the identity held here.
    fn identity_delegate(&self, body: &DelegateBody) -> OpResult<IdentityOpReply>;
    /// Revoke a device of the identity held here.
    fn identity_revoke(&self, body: &RevokeBody) -> OpResult<IdentityOpReply>;
    /// A kv key's heads with authors resolved to identities.
    fn identity_kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>>;
    /// Views and their lag.
    fn views(&self) -> OpResult<Vec<ViewInfo>>;
    /// A view's digest.
    fn view_digest(&self, name: &str) -> OpResult<Digest>;
    /// Declare a field index.
    fn view_add(&self, body: ViewAddBody) -> OpResult<ViewAdded>;
    /// Remove a field index.
    fn view_remove(&self, name: &str) -> OpResult<ViewRemoved>;
    /// Rebuild a view; `progress(offset, end)` when it runs here.
    fn view_rebuild(&self, name: &str, progress: &mut dyn FnMut(u64, u64))
    -> OpResult<ViewRebuilt>;
    /// Query a field index.
    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult<Vec<FieldHit>>;
    /// Query a search view.
    fn search(&self, name: &str, p: &SearchParams) -> OpResult<Vec<SearchHit>>;
    /// Delete entries of this node's own feed.
    fn delete(&self, body: &DeleteBody) -> OpResult<DeleteReply>;
    /// Delete this node's ops on a kv key.
    fn kv_purge(&self, key: &str) -> OpResult<DeleteReply>;
    /// Give back the space of erased payloads and dropped records.
    fn compact(&self) -> OpResult<CompactReply>;
    /// Write a consistent copy of the database to a directory.
    fn backup(&self, body: &BackupBody) -> OpResult<BackupReply>;
    /// Lift the publishing hold (the user vouches no other copy appended).
    fn release_hold(&self) -> OpResult<HoldReply>;
    /// Block a feed and drop everything held of it.
    fn forget(&self, feed: &str) -> OpResult<ForgetReply>;
    /// The replication policy.
    fn following(&self) -> OpResult<FollowReply>;
    /// An invite to this network, with the addresses this node is reached
    /// at (the running node's real ones, when one runs).
    fn invite(&self) -> OpResult<InviteReply>;
    /// Block (`on`) or unblock a feed.
    fn block(&self, feed: &str, on: bool) -> OpResult<BlockReply>;
    /// Sync once with the peer at `body.addr`, both ways.
    fn sync(&self, body: &SyncBody) -> OpResult<SyncReply>;
    /// Re-check every record of the log.
    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> OpResult<VerifyReply>;
    /// Change the replication policy.
    fn set_following(&self, body: &FollowBody) -> OpResult<FollowReply>;
    /// Call `f` with every record from `since` on, waiting for new ones,
    /// until `f` returns false.
    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Record) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()>;
}

/// How a [`Local`] opens the database's views the first time an operation
/// needs them. The command layer's shows progress while it folds.
pub type OpenViews = fn(&Db) -> Result<Indexer, ViewError>;

/// Runs operations on a database opened in this process. Clones share
/// the database, the views and the stop signal of [`Backend::follow`].
#[derive(Clone)]
pub struct Local {
    db: Db,
    indexer: Arc<OnceLock<Arc<Indexer>>>,
    open_views: Option<OpenViews>,
    stop: Arc<watch::Sender<bool>>,
    /// The Kafka bridge this process runs, for `status`.
    bridge: Arc<OnceLock<Arc<kappadb_bridge::KafkaBridge>>>,
    /// Group commit of appends, started on the first one.
    appends: Arc<OnceLock<GroupCommit>>,
}

impl Local {
    /// Operations on `db`; views are opened with `open_views` on first
    /// use.
    pub fn new(db: Db, open_views: OpenViews) -> Self {
        Self {
            db,
            indexer: Arc::default(),
            open_views: Some(open_views),
            stop: Arc::new(watch::channel(false).0),
            bridge: Arc::default(),
            appends: Arc::default(),
        }
    }

    /// Operations on `db` with a live indexer (a node's).
    pub fn with_indexer(db: Db, indexer: Arc<Indexer>) -> Self {
        Self {
            db,
            indexer: Arc::new(OnceLock::from(indexer)),
            open_views: None,
            stop: Arc::new(watch::channel(false).0),
            bridge: Arc::default(),
            appends: Arc::default(),
        }
    }

    /// Operations on `db` without views (`kappa serve --no-views`): the
    /// view operations answer that this node folds none.
    pub fn without_views(db: Db) -> Self {
        Self {
            db,
            indexer: Arc::default(),
            open_views: None,
            stop: Arc::new(watch::channel(false).0),
            bridge: Arc::default(),
            appends: Arc::default(),
        }
    }

    /// Append `payloads` through group commit (module `group_commit`):
    /// concurrent callers share one batch and one fsync; durable on
    /// return.
    fn append_payloads(
        &self,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<kappadb_core::Appended>, OpError> {
        if self.appends.get().is_none() {
            let started = GroupCommit::start(self.db.clone()).map_err(|e| {
                OpError::new(
                    500,
                    "internal",
                    format!("cannot start the append writer: {e}"),
                )
            })?;
            // Another caller may have won the race; its writer is kept.
            let _ = self.appends.set(started);
        }
        match self.appends.get() {
            Some(gc) => Ok(gc.append(payloads)?),
            None => Ok(self.db.append_batch(payloads)?),
        }
    }

    /// Report `bridge` in `status` (on every clone of this).
    pub fn set_bridge(&self, bridge: Arc<kappadb_bridge::KafkaBridge>) {
        let _ = self.bridge.set(bridge);
    }

    /// A receiver that turns true once [`Local::interrupt`] is called.
    pub fn interrupted(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Make [`Backend::follow`] return (on Ctrl-C), now or as soon as it
    /// starts.
    pub fn interrupt(&self) {
        self.stop.send_replace(true);
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn indexer(&self) -> OpResult<&Indexer> {
        if let Some(i) = self.indexer.get() {
            return Ok(i);
        }
        let open = self.open_views.ok_or_else(|| {
            OpError::not_found(
                "no_views",
                "this node folds no views (it runs with --no-views); ask a node that does",
            )
        })?;
        let i = open(&self.db)?;
        Ok(self.indexer.get_or_init(|| Arc::new(i)))
    }

    /// The indexer, caught up with the log as it is now for `view`.
    pub(crate) fn caught_up(&self, view: &str) -> OpResult<&Indexer> {
        let i = self.indexer()?;
        i.wait_until_caught_up(view, CATCH_UP)?;
        Ok(i)
    }

    /// Resolve a feed argument: see [`resolve_feed`].
    pub fn resolve_feed(&self, text: &str) -> OpResult<FeedId> {
        resolve_feed(&self.db, text)
    }

    /// Entries of one feed from a seq on.
    pub fn feed_range(&self, feed: &str, p: &RangeParams) -> OpResult<FeedRange> {
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
            entries.push(Entry::of(None, &e));
        }
        Ok(FeedRange {
            entries,
            feed: feed.to_string(),
            head_seq: head.seq,
            next: (next <= head.seq).then_some(next),
        })
    }
}

/// Resolve a feed argument: a full id, `self`, or a unique prefix of a
/// feed `db` knows.
pub fn resolve_feed(db: &Db, text: &str) -> OpResult<FeedId> {
    let text = text.trim();
    if text == "self" || text == "me" {
        return Ok(db.feed_id());
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
    let matches: Vec<FeedId> = db
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
pub fn record_author(body: &RecordBody) -> Option<FeedId> {
    match body {
        RecordBody::Entry(e) => Some(e.header.author),
        RecordBody::Fork(p) => Some(p.author()),
        RecordBody::Forget(f) => Some(*f),
        _ => None,
    }
}

/// The field index query `p` asks for.
fn field_query_of(p: &FieldParams) -> OpResult<FieldQuery> {
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
    };
    Ok(q.limit(p.limit))
}

impl Backend for Local {
    fn id(&self) -> OpResult<Id> {
        Ok(Id {
            feed: self.db.feed_id().to_string(),
        })
    }

    fn append(&self, body: AppendBody) -> OpResult<AppendReply> {
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
        let res = self.append_payloads(payloads)?;
        Ok(AppendReply {
            appended: res
                .iter()
                .map(|a| Appended {
                    id: a.id.to_string(),
                    offset: a.offset,
                    seq: a.seq,
                    timestamp: a.timestamp,
                })
                .collect(),
            feed: self.db.feed_id().to_string(),
        })
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
            if feed.is_some_and(|f| Some(f) != record_author(&rec.body)) {
                continue;
            }
            records.push(Record::of(&rec));
        }
        Ok(LogPage { records, next, end })
    }

    fn get(&self, feed: &str, seq: u64, p: &EntryParams) -> OpResult<Entry> {
        let feed = self.resolve_feed(feed)?;
        match self.db.get(&feed, seq)? {
            Some(entry) => {
                let mut answer = Entry::of(None, &entry);
                if p.raw {
                    answer.raw = Some(RawEntry::of(&entry));
                }
                Ok(answer)
            }
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

    fn feeds(&self) -> OpResult<Vec<FeedInfo>> {
        let me = self.db.feed_id();
        Ok(self
            .db
            .feeds()
            .iter()
            .map(|f| FeedInfo {
                feed: f.feed.to_string(),
                fork_seq: f.fork.map(|x| x.seq),
                forked: f.fork.is_some(),
                head: f.head.id.to_string(),
                local: f.feed == me,
                seq: f.head.seq,
                timestamp: f.head.timestamp,
            })
            .collect())
    }

    fn status(&self) -> OpResult<Status> {
        let s = self.db.status();
        Ok(Status {
            dir: s.dir.display().to_string(),
            entries: s.entries,
            feed: s.feed_id.to_string(),
            feeds: s.feeds,
            forked_feeds: s.forked_feeds,
            held: self.db.publish_hold().map(|h| h.to_string()),
            log_bytes: s.log_bytes,
            own_forked_at: self.db.fork(&s.feed_id).map(|f| f.seq),
            own_seq: self.db.head(&s.feed_id).map_or(0, |h| h.seq),
            records: s.records,
            disk_bytes: s.disk_bytes,
            erased_bytes: s.erased_bytes,
            erased_entries: s.erased_entries,
            reclaimable_bytes: s.reclaimable_bytes,
            bridge: self.bridge.get().map(|b| {
                let b = b.status();
                crate::answer::BridgeInfo {
                    topic: b.topic,
                    state: b.state,
                    delivered_offset: b.delivered_offset,
                    lag_bytes: b.lag_bytes,
                    lag_records: b.lag_records,
                    in_flight: b.in_flight,
                    produced: b.produced,
                    skipped: b.skipped,
                    last_error: b.last_error,
                }
            }),
            node: None,
            views: None,
        })
    }

    fn delete(&self, body: &DeleteBody) -> OpResult<DeleteReply> {
        self.delete_entries(body)
    }

    fn kv_purge(&self, key: &str) -> OpResult<DeleteReply> {
        Local::kv_purge(self, key)
    }

    fn compact(&self) -> OpResult<CompactReply> {
        Local::compact(self)
    }

    fn backup(&self, body: &BackupBody) -> OpResult<BackupReply> {
        Local::backup(self, body)
    }

    fn release_hold(&self) -> OpResult<HoldReply> {
        Local::release_hold(self)
    }

    fn forget(&self, feed: &str) -> OpResult<ForgetReply> {
        Local::forget(self, feed, true)
    }

    fn following(&self) -> OpResult<FollowReply> {
        Local::following(self)
    }

    fn set_following(&self, body: &FollowBody) -> OpResult<FollowReply> {
        Local::set_following(self, body, true)
    }

    fn invite(&self) -> OpResult<InviteReply> {
        let key = self.db.network_key()?;
        let peer = crate::net_cmd::peer_id_of(&self.db)?;
        Ok(InviteReply::of(key, crate::net_cmd::reachable_addrs(peer)))
    }

    fn block(&self, feed: &str, on: bool) -> OpResult<BlockReply> {
        let feed = self.resolve_feed(feed)?;
        if on && feed == self.db.feed_id() {
            return Err(OpError::bad(
                "own_feed",
                "refusing to block this database's own feed",
            ));
        }
        let mut list =
            kappadb_net::blocklist::BlockList::load(self.db.dir()).map_err(OpError::block_list)?;
        let changed = if on {
            list.block(feed)
        } else {
            list.unblock(&feed)
        }
        .map_err(OpError::block_list)?;
        Ok(BlockReply {
            blocked: on,
            changed,
            feed: feed.to_string(),
        })
    }

    fn sync(&self, body: &SyncBody) -> OpResult<SyncReply> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside the API of a process without a node.
            return Err(OpError::not_found(
                "no_node",
                "this process runs no node to sync with; `kappa serve` runs one",
            ));
        }
        let addr = crate::net_cmd::parse_multiaddr(&body.addr)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| OpError::new(500, "runtime", e.to_string()))?;
        let summary = rt
            .block_on(kappadb_net::sync_once(
                self.db.clone(),
                addr,
                Duration::from_secs(body.timeout),
            ))
            .map_err(OpError::sync_failed)?;
        Ok(SyncReply::of(&summary))
    }

    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> OpResult<VerifyReply> {
        Ok(VerifyReply::of(&self.db.verify(progress)?))
    }

    fn peers(&self) -> OpResult<Vec<PeerInfo>> {
        Ok(PeerInfo::all(
            &kappadb_net::peers::AddressBook::load(self.db.dir()).peers(),
        ))
    }

    fn kv_get(&self, key: &str) -> OpResult<Value> {
        match self.caught_up("kv")?.kv()?.get(key)? {
            Some(v) => Ok(v),
            None => Err(OpError::not_found(
                "no_such_key",
                format!("key '{key}' is not set"),
            )),
        }
    }

    fn kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>> {
        let heads = self.caught_up("kv")?.kv()?.heads(key)?;
        if heads.is_empty() {
            return Err(OpError::not_found(
                "no_such_key",
                format!("key '{key}' is not set"),
            ));
        }
        Ok(heads.iter().map(KvHead::of).collect())
    }

    fn kv_list(&self, p: &KvListParams) -> OpResult<Vec<KvItem>> {
        let kv = self.caught_up("kv")?.kv()?;
        let mut items = Vec::new();
        if p.identity {
            let ids = self.caught_up("identity")?.identities()?;
            for item in kv.resolved_list(self.db(), &ids, &p.prefix)? {
                if p.limit.is_some_and(|l| items.len() >= l) {
                    break;
                }
                items.push(KvItem {
                    heads: item.heads,
                    key: item.key,
                    value: item.value,
                });
            }
            return Ok(items);
        }
        for item in kv.list(&p.prefix) {
            if p.limit.is_some_and(|l| items.len() >= l) {
                break;
            }
            let item = item?;
            items.push(KvItem {
                heads: item.heads,
                key: item.key,
                value: item.value,
            });
        }
        Ok(items)
    }

    fn kv_write(&self, w: KvWrite) -> OpResult<KvWritten> {
        let links = parse_links(&w.links)?;
        let payload = match &w.value {
            Some(v) => kappadb_views::kv::put_payload(&w.key, v, &links),
            None => kappadb_views::kv::del_payload(&w.key, &links),
        };
        let a = self
            .append_payloads(vec![payload])?
            .pop()
            .ok_or_else(|| OpError::new(500, "internal", "an append returned no entry"))?;
        Ok(KvWritten {
            id: a.id.to_string(),
            key: w.key,
            seq: a.seq,
        })
    }

    fn timeline(&self, p: &TimelineParams) -> OpResult<Vec<TimelineItem>> {
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
        let q = TimelineQuery {
            kind: p.kind.clone(),
            author,
            from: p.from,
            to: p.to,
            limit: p.limit,
            order,
        };
        let timeline = self.caught_up("timeline")?.timeline()?;
        let items = match p.identity.as_deref() {
            None => timeline.query(&q)?,
            Some(who) => {
                let ids = self.caught_up("identity")?.identities()?;
                let filter = kappadb_views::IdentityFilter {
                    ids: &ids,
                    identity: Some(self.identity_named(who, &ids)?),
                };
                timeline.query_resolved(&q, &filter)?
            }
        };
        Ok(items.iter().map(TimelineItem::of).collect())
    }

    fn identity(&self) -> OpResult<IdentityInfo> {
        self.show_identity()
    }

    fn identity_delegate(&self, body: &DelegateBody) -> OpResult<IdentityOpReply> {
        self.delegate_identity(body)
    }

    fn identity_revoke(&self, body: &RevokeBody) -> OpResult<IdentityOpReply> {
        self.revoke_identity(body)
    }

    fn identity_kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>> {
        self.resolved_kv_heads(key)
    }

    fn views(&self) -> OpResult<Vec<ViewInfo>> {
        let mut list = self.indexer()?.status();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list.iter().map(ViewInfo::of).collect())
    }

    fn view_digest(&self, name: &str) -> OpResult<Digest> {
        check_name(name)?;
        let d = self.caught_up(name)?.digest(name)?;
        Ok(Digest {
            digest: d.to_string(),
            name: name.to_string(),
        })
    }

    fn view_add(&self, body: ViewAddBody) -> OpResult<ViewAdded> {
        let i = self.indexer()?;
        let search = !body.text.is_empty();
        if search != body.field.is_empty() {
            return Err(OpError::bad(
                "bad_declaration",
                "give either a field (--field /user) or text fields (--text /title ...)",
            ));
        }
        if search {
            i.declare_search(
                &body.name,
                SearchSpec {
                    fields: body.text.clone(),
                    kind: body.kind.clone(),
                    language: body.language.clone(),
                },
            )?;
        } else if body.kind.is_some() || body.language.is_some() {
            return Err(OpError::bad(
                "bad_declaration",
                "--type and --language are for search views (--text)",
            ));
        } else {
            i.declare_field_index(&body.name, &body.field)?;
        }
        i.wait_until_caught_up(&body.name, CATCH_UP)?;
        let s = i.view_status(&body.name)?;
        Ok(ViewAdded {
            entries: s.folded,
            field: body.field,
            name: body.name,
            skipped: s.skipped,
            text: body.text,
        })
    }

    fn view_remove(&self, name: &str) -> OpResult<ViewRemoved> {
        check_name(name)?;
        let i = self.indexer()?;
        if i.search_views()?.iter().any(|(n, _)| n == name) {
            i.remove_search(name)?;
        } else {
            i.remove_field_index(name)?;
        }
        Ok(ViewRemoved {
            name: name.to_string(),
            removed: true,
        })
    }

    fn view_rebuild(
        &self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> OpResult<ViewRebuilt> {
        check_name(name)?;
        let s = self.indexer()?.rebuild(name, progress)?;
        Ok(ViewRebuilt {
            entries: s.folded,
            name: s.name,
            skipped: s.skipped,
        })
    }

    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult<Vec<FieldHit>> {
        check_name(name)?;
        let q = field_query_of(p)?;
        let index = self.caught_up(name)?.field_index(name)?;
        let hits = match p.identity.as_deref() {
            None => index.query(&q)?,
            Some(who) => {
                let ids = self.caught_up("identity")?.identities()?;
                let filter = kappadb_views::IdentityFilter {
                    ids: &ids,
                    identity: Some(self.identity_named(who, &ids)?),
                };
                index.query_resolved(&q, &filter)?
            }
        };
        Ok(hits.iter().map(FieldHit::of).collect())
    }

    fn search(&self, name: &str, p: &SearchParams) -> OpResult<Vec<SearchHit>> {
        check_name(name)?;
        let author = p
            .author
            .as_deref()
            .map(|a| self.resolve_feed(a))
            .transpose()?;
        let q = SearchQuery {
            q: p.q.clone(),
            limit: p.limit,
            author,
            kind: p.kind.clone(),
            since: p.since,
            until: p.until,
        };
        let hits = self.caught_up(name)?.search(name, &q)?;
        Ok(hits.iter().map(SearchHit::of).collect())
    }

    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Record) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let feed = feed.map(|x| self.resolve_feed(x)).transpose()?;
        let since = since.min(self.db.log_end());
        crate::follow::blocking(
            self.db.clone(),
            since,
            feed,
            self.stop.subscribe(),
            &mut |rec| f(Record::of(&rec)),
        )
    }
}
