//! The answers of the operations, as serde types: what the local API
//! sends, what `--json` prints and what the CLI renders for humans.
//!
//! [`crate::ops::Local`] builds them from the libraries' types, the API
//! serializes them, [`crate::client::Remote`] deserializes them, and
//! [`crate::out`] renders them. Errors are answers too: [`OpError`], whose
//! `From` impls are the one place where library errors become API errors
//! (an HTTP status and a code).
//!
//! The bytes are part of the contract (the README names the fields and
//! scripts compare outputs). The JSON used to be built as
//! `serde_json::Value` maps, which sort their keys, so every struct here
//! declares its fields in the alphabetical order of their JSON names, and
//! an `Option` is written as `null` unless noted. [`LogPage`] is the one
//! exception: it was always a struct, in its own order.

use kappadb_core::system::SystemPayload;
use kappadb_core::{AppendError, EntryError, LogRecord, Payload, RecordBody, StoreError};
use kappadb_net::peers::PeerRecord;
use kappadb_net::{NetError, NodeHandle};
use kappadb_views::ViewError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON value of one `kind` only: what an entry says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// `"entry"`.
    #[serde(rename = "entry")]
    Entry,
}

/// The JSON value of one `kind` only: what a fork proof says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkKind {
    /// `"fork"`.
    #[serde(rename = "fork")]
    Fork,
}

/// The JSON value of one `kind` only: what a forget marker says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgetKind {
    /// `"forget"`.
    #[serde(rename = "forget")]
    Forget,
}

/// A forget marker of the log: this node dropped a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forget {
    /// The feed forgotten.
    pub feed: String,
    /// Always `"forget"`.
    pub kind: ForgetKind,
    /// Where the record is in the log.
    pub offset: u64,
}

/// How an answer carries a payload (its `payload_format` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `payload` is the payload's JSON value.
    Json,
    /// A UTF-8 string that is not JSON; `payload` is that string.
    Text,
    /// Anything else; `payload` is its lower-case hex.
    Binary,
    /// Not held here; `payload` is `null`.
    Absent,
    /// Erased by its author's deletion; `payload` is `null`.
    Erased,
    /// A deletion entry: `payload` is `{"targets": [{"seq", "id"}], "up_to"}`.
    Deletion,
    /// An identity entry: `payload` is `{"kind": "delegate", "device"}`,
    /// `{"kind": "revoke", "device", "from"}`, `{"kind": "pair-offer",
    /// "expires"}` or `{"kind": "pair-request", "identity"}`.
    Identity,
}

/// The text forms of ids or addresses.
fn texts<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// Lower-case hex of bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A payload as answers carry it: the `payload` value and its format.
pub fn payload_of(payload: Option<&[u8]>) -> (Value, PayloadFormat) {
    match payload {
        None => (Value::Null, PayloadFormat::Absent),
        Some(p) if SystemPayload::is_system(p) => match SystemPayload::parse(p) {
            Some(Ok(SystemPayload::Deletion(d))) => (
                serde_json::json!({
                    "targets": d.targets.iter().map(|t| serde_json::json!({
                        "seq": t.seq,
                        "id": t.id.to_string(),
                    })).collect::<Vec<_>>(),
                    "up_to": d.up_to,
                }),
                PayloadFormat::Deletion,
            ),
            Some(Ok(SystemPayload::Delegation(d))) => (
                serde_json::json!({"kind": "delegate", "device": d.device.to_string()}),
                PayloadFormat::Identity,
            ),
            Some(Ok(SystemPayload::Revocation(r))) => (
                serde_json::json!({"kind": "revoke", "device": r.device.to_string(), "from": r.from}),
                PayloadFormat::Identity,
            ),
            Some(Ok(SystemPayload::PairOffer(o))) => (
                serde_json::json!({"kind": "pair-offer", "expires": o.expires}),
                PayloadFormat::Identity,
            ),
            Some(Ok(SystemPayload::PairRequest(r))) => (
                serde_json::json!({"kind": "pair-request", "identity": r.identity.to_string()}),
                PayloadFormat::Identity,
            ),
            _ => (Value::String(hex(p)), PayloadFormat::Binary),
        },
        Some(p) => match serde_json::from_slice::<Value>(p) {
            Ok(j) => (j, PayloadFormat::Json),
            Err(_) => match std::str::from_utf8(p) {
                Ok(s) => (Value::String(s.to_string()), PayloadFormat::Text),
                Err(_) => (Value::String(hex(p)), PayloadFormat::Binary),
            },
        },
    }
}

/// [`payload_of`] for an entry's payload, which may be erased.
pub fn entry_payload(payload: &Payload) -> (Value, PayloadFormat) {
    match payload {
        Payload::Erased => (Value::Null, PayloadFormat::Erased),
        other => payload_of(other.bytes()),
    }
}

/// One entry: from `get`, a feed range, or (with its offset) the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The author's feed id.
    pub feed: String,
    /// The entry id.
    pub id: String,
    /// Always `"entry"`.
    pub kind: EntryKind,
    /// Where the record is in the log (only in log records; left out
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The payload, as `payload_format` says.
    pub payload: Value,
    /// How `payload` is given.
    pub payload_format: PayloadFormat,
    /// blake3 of the payload, as the header says (hex).
    pub payload_hash: String,
    /// The payload's length in bytes, as the header says.
    pub payload_len: u32,
    /// The previous entry's id (`null` at seq 1).
    pub prev: Option<String>,
    /// The entry exactly as signed (only when asked for: `get --raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawEntry>,
    /// 1-based position in the feed.
    pub seq: u64,
    /// The author's ed25519 signature of the id (hex, `R || s`).
    pub signature: String,
    /// The author's clock, ms since the epoch.
    pub timestamp: u64,
    /// The header's format version.
    pub version: u8,
}

/// An entry's bytes exactly as signed and stored, so that it can be
/// verified from the API alone (see `docs/FORMAT.md`): the id is
/// blake3("kappadb/entry-id/v1\0" || header), the signature signs the id,
/// and the payload hashes to the header's `payload_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawEntry {
    /// The canonical encoding of the signed header (hex).
    pub header: String,
    /// The stored payload's bytes, as `payload_encoding` says (`null` when
    /// not held or erased).
    pub payload: Option<String>,
    /// `utf8` (the bytes are this text) or `base64` (standard alphabet,
    /// padded); `null` with no payload.
    pub payload_encoding: Option<String>,
}

impl RawEntry {
    /// The raw form of an entry.
    pub fn of(e: &kappadb_core::Entry) -> Self {
        use base64::Engine as _;
        let (payload, payload_encoding) = match e.payload.bytes() {
            None => (None, None),
            Some(b) => match std::str::from_utf8(b) {
                Ok(text) => (Some(text.to_string()), Some("utf8".to_string())),
                Err(_) => (
                    Some(base64::engine::general_purpose::STANDARD.encode(b)),
                    Some("base64".to_string()),
                ),
            },
        };
        Self {
            header: kappadb_core::keys::hex(&e.header.encode()),
            payload,
            payload_encoding,
        }
    }
}

impl Entry {
    /// An entry, with the offset of its log record if it is one.
    pub fn of(offset: Option<u64>, e: &kappadb_core::Entry) -> Self {
        let h = &e.header;
        let (payload, payload_format) = entry_payload(&e.payload);
        Self {
            feed: h.author.to_string(),
            id: e.id().to_string(),
            kind: EntryKind::Entry,
            offset,
            payload,
            payload_format,
            payload_hash: h.payload_hash.to_string(),
            payload_len: h.payload_len,
            prev: h.prev.map(|p| p.to_string()),
            raw: None,
            seq: h.seq,
            signature: kappadb_core::keys::hex(&e.signature.to_bytes()),
            timestamp: h.timestamp,
            version: h.version,
        }
    }
}

/// A fork proof record of the log: two entries of a feed at one seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The forked feed.
    pub feed: String,
    /// The two conflicting entry ids.
    pub ids: [String; 2],
    /// Always `"fork"`.
    pub kind: ForkKind,
    /// Where the record is in the log.
    pub offset: u64,
    /// The seq both entries claim.
    pub seq: u64,
}

/// A log record: an entry or a fork proof (told apart by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    /// An entry, with its offset.
    Entry(Entry),
    /// A fork proof.
    Fork(Fork),
    /// A forget marker.
    Forget(Forget),
}

impl Record {
    /// A log record as an answer.
    pub fn of(rec: &LogRecord) -> Self {
        match &rec.body {
            RecordBody::Entry(e) => Self::Entry(Entry::of(Some(rec.offset), e)),
            RecordBody::Fork(p) => Self::Fork(Fork {
                feed: p.author().to_string(),
                ids: [p.a().header.id().to_string(), p.b().header.id().to_string()],
                kind: ForkKind::Fork,
                offset: rec.offset,
                seq: p.seq(),
            }),
            RecordBody::Forget(feed) => Self::Forget(Forget {
                feed: feed.to_string(),
                kind: ForgetKind::Forget,
                offset: rec.offset,
            }),
            // A record kind this build does not know: shown as what it
            // says of itself, an entry-less marker.
            _ => Self::Forget(Forget {
                feed: String::new(),
                kind: ForgetKind::Forget,
                offset: rec.offset,
            }),
        }
    }
}

/// One page of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    /// The records.
    pub records: Vec<Record>,
    /// Where the next page starts.
    pub next: u64,
    /// The log's end when the page was read.
    pub end: u64,
}

/// A feed's entries from a seq on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRange {
    /// The entries, in seq order.
    pub entries: Vec<Entry>,
    /// The feed.
    pub feed: String,
    /// The feed's head seq here.
    pub head_seq: u64,
    /// The seq to ask for next (`null` at the head).
    pub next: Option<u64>,
}

/// A feed and its head, as `feeds` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedInfo {
    /// The feed id.
    pub feed: String,
    /// Where it forked (`null` if it did not).
    pub fork_seq: Option<u64>,
    /// Whether it is forked.
    pub forked: bool,
    /// The head entry's id.
    pub head: String,
    /// Whether it is this database's own feed.
    pub local: bool,
    /// The head's seq.
    pub seq: u64,
    /// The head's timestamp.
    pub timestamp: u64,
}

/// What `kappa id` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    /// This database's feed id.
    pub feed: String,
}

/// One appended entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Its id.
    pub id: String,
    /// Its record's offset in the log.
    pub offset: u64,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReply {
    /// The entries, in order.
    pub appended: Vec<Appended>,
    /// The feed they were appended to.
    pub feed: String,
}

/// What `kappa --json append VALUE` prints: the one entry and its feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedOne {
    /// The feed.
    pub feed: String,
    /// The entry id.
    pub id: String,
    /// Its record's offset.
    pub offset: u64,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
}

/// What `kappa --json append` prints after appending lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendSummary {
    /// How many entries were appended.
    pub appended: u64,
    /// The feed.
    pub feed: String,
    /// The first one's seq (`null` if none).
    pub first_seq: Option<u64>,
    /// The last one's seq (`null` if none).
    pub last_seq: Option<u64>,
}

/// The database's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The Kafka bridge this process runs (`kappa serve --bridge`, `kappa
    /// bridge kafka`), if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeInfo>,
    /// The database directory.
    pub dir: String,
    /// Bytes the log's files take on disk.
    pub disk_bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// Payload bytes erased by deletions.
    pub erased_bytes: u64,
    /// Entries whose payloads were erased by deletions.
    pub erased_entries: u64,
    /// This database's feed.
    pub feed: String,
    /// Feeds known.
    pub feeds: usize,
    /// Forked feeds.
    pub forked_feeds: usize,
    /// Why appends are held (a restored copy that has not synced yet, or
    /// one whose own feed a peer holds further), if they are.
    #[serde(default)]
    pub held: Option<String>,
    /// Size of the log.
    pub log_bytes: u64,
    /// The node that holds the database, when one runs (`null`: none;
    /// the command opened the database itself).
    #[serde(default)]
    pub node: Option<NodeInfo>,
    /// Where the own feed forked, if it did (two entries at this seq,
    /// both signed with this database's key): it takes no more appends.
    #[serde(default)]
    pub own_forked_at: Option<u64>,
    /// The own feed's head seq (0 before the first append).
    pub own_seq: u64,
    /// Bytes `kappa compact` would give back now.
    pub reclaimable_bytes: u64,
    /// Records in the log.
    pub records: u64,
    /// The views and their lag, when a node runs (`null` otherwise).
    #[serde(default)]
    pub views: Option<Vec<ViewInfo>>,
}

/// Where a Kafka bridge stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Every log record before this offset is in the topic.
    pub delivered_offset: u64,
    /// Records produced and not yet acknowledged.
    pub in_flight: u64,
    /// Log bytes not yet known to be in the topic.
    pub lag_bytes: u64,
    /// Log records not yet known to be in the topic.
    pub lag_records: u64,
    /// The last error, until the bridge runs again.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Records the broker acknowledged since the bridge started.
    pub produced: u64,
    /// Records found in the topic already when the bridge read it back.
    pub skipped: u64,
    /// `starting`, `recovering`, `running`, `retrying` or `stopped`.
    pub state: String,
    /// The topic.
    pub topic: String,
}

/// The running node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer ids connected now.
    pub connected: Vec<String>,
    /// The node's feed.
    pub feed: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Its libp2p peer id.
    pub peer_id: String,
}

impl NodeInfo {
    /// What `node` says about itself now.
    pub fn of(node: &NodeHandle) -> Self {
        Self {
            connected: texts(&node.connected_peers()),
            feed: node.feed_id().to_string(),
            listen: texts(&node.listen_addrs()),
            peer_id: node.peer_id().to_string(),
        }
    }
}

/// A peer of the address book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Addresses it was reached at.
    pub addrs: Vec<String>,
    /// Whether the running node is connected to it now (false when no
    /// node runs).
    #[serde(default)]
    pub connected: bool,
    /// Its feed (`null` if its peer id names none).
    pub feed: Option<String>,
    /// When it was last connected, ms since the epoch (0: never).
    pub last_seen: u64,
    /// When a sync with it last finished (`null`: never).
    pub last_sync: Option<u64>,
    /// Its peer id.
    pub peer: String,
}

impl PeerInfo {
    /// An address book record as an answer.
    pub fn of(p: &PeerRecord) -> Self {
        Self {
            addrs: texts(&p.addrs),
            connected: false,
            feed: p.feed.map(|f| f.to_string()),
            last_seen: p.last_seen,
            last_sync: p.last_sync,
            peer: p.peer_id.to_string(),
        }
    }

    /// The whole address book.
    pub fn all(peers: &[PeerRecord]) -> Vec<Self> {
        peers.iter().map(Self::of).collect()
    }
}

/// One concurrent head of a kv key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvHead {
    /// Whether this head deletes the key.
    pub deleted: bool,
    /// Its author.
    pub feed: String,
    /// Its entry id (name it in `links` to supersede it).
    pub id: String,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The value it sets (`null` for a delete).
    pub value: Value,
}

impl KvHead {
    /// A head from the view.
    pub fn of(h: &kappadb_views::KvHead) -> Self {
        KvHead {
            deleted: h.is_deleted(),
            feed: h.author.to_string(),
            id: h.id.to_string(),
            seq: h.seq,
            timestamp: h.timestamp,
            value: h.value.clone().unwrap_or(Value::Null),
        }
    }
}

/// A device of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityDevice {
    /// Its first entry that no longer speaks for the identity (revoked).
    pub cut: Option<u64>,
    /// The identity feed's seq of the delegation that counts.
    pub delegated_at: u64,
    /// The device's feed.
    pub feed: String,
    /// Whether it is this database's own feed.
    pub this: bool,
}

/// `identity show`: the identity this database's feed speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// The identity's devices, by feed id.
    pub devices: Vec<IdentityDevice>,
    /// This database's own feed.
    pub feed: String,
    /// The seq at which the identity feed forked, if it did.
    pub forked_at: Option<u64>,
    /// The identity (none if this feed belongs to none).
    pub identity: Option<String>,
    /// Whether this database holds the identity key.
    pub key_here: bool,
}

/// A delegation or revocation stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityOpReply {
    /// The device named.
    pub device: String,
    /// A revocation's point.
    pub from: Option<u64>,
    /// The identity.
    pub identity: String,
    /// `delegate` or `revoke`.
    pub op: String,
    /// The entry's seq in the identity feed.
    pub seq: u64,
}

/// A live key of the kv view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvItem {
    /// How many concurrent heads it has.
    pub heads: usize,
    /// The key.
    pub key: String,
    /// Its winning value.
    pub value: Value,
}

/// The answer to a kv put or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWritten {
    /// The entry written.
    pub id: String,
    /// The key.
    pub key: String,
    /// The entry's seq.
    pub seq: u64,
}

/// One entry of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineItem {
    /// Its author.
    pub feed: String,
    /// Its id.
    pub id: String,
    /// The payload, as `payload_format` says.
    pub payload: Value,
    /// How `payload` is given.
    pub payload_format: PayloadFormat,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The payload's `"type"` (`null` if it has none).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl TimelineItem {
    /// A timeline item from the view.
    pub fn of(it: &kappadb_views::timeline::TimelineItem) -> Self {
        let (payload, payload_format) = payload_of(it.payload.as_deref());
        Self {
            feed: it.author.to_string(),
            id: it.id.to_string(),
            payload,
            payload_format,
            seq: it.seq,
            timestamp: it.timestamp,
            kind: it.kind.clone(),
        }
    }

    /// A log entry as the timeline shows it (for `timeline --follow`).
    pub fn from_entry(e: &Entry) -> Self {
        let kind = match e.payload_format {
            PayloadFormat::Json => e.payload["type"].as_str().map(str::to_string),
            _ => None,
        };
        Self {
            feed: e.feed.clone(),
            id: e.id.clone(),
            payload: e.payload.clone(),
            payload_format: e.payload_format,
            seq: e.seq,
            timestamp: e.timestamp,
            kind,
        }
    }
}

/// A one-time login link of the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiLogin {
    /// Seconds it is good for.
    pub expires_in: u64,
    /// The link.
    pub url: String,
}

/// A view and how far it has folded the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewInfo {
    /// The next log offset it folds.
    pub checkpoint: u64,
    /// What it is.
    pub description: String,
    /// Entries folded.
    pub entries: u64,
    /// Bytes of log not yet folded.
    pub lag: u64,
    /// Its name.
    pub name: String,
    /// How far a rebuild in progress has folded (`null`: none runs).
    #[serde(default)]
    pub rebuild_checkpoint: Option<u64>,
    /// Whether a rebuild is in progress.
    pub rebuilding: bool,
    /// Entries skipped (not of its shape).
    pub skipped: u64,
    /// Its version.
    pub version: u32,
}

impl ViewInfo {
    /// A view's status as an answer.
    pub fn of(s: &kappadb_views::ViewStatus) -> Self {
        Self {
            checkpoint: s.checkpoint,
            description: s.description.clone(),
            entries: s.folded,
            lag: s.lag,
            name: s.name.clone(),
            rebuild_checkpoint: s.rebuild.map(|r| r.checkpoint),
            rebuilding: s.rebuild.is_some(),
            skipped: s.skipped,
            version: s.version,
        }
    }
}

/// A view's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The digest, hex.
    pub digest: String,
    /// The view.
    pub name: String,
}

/// The answer to `view add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewAdded {
    /// Entries indexed so far.
    pub entries: u64,
    /// The JSON pointer it indexes (a field index).
    #[serde(default)]
    pub field: String,
    /// The new view.
    pub name: String,
    /// Entries skipped (not of its shape).
    #[serde(default)]
    pub skipped: u64,
    /// The text fields it indexes (a search view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
}

/// A hit of a search view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The entry's author.
    pub feed: String,
    /// The field the snippet comes from.
    pub field: String,
    /// The entry's record offset in this node's log.
    pub offset: u64,
    /// BM25 score.
    pub score: f32,
    /// Its seq.
    pub seq: u64,
    /// A fragment of the field, matched words between `[` and `]`.
    pub snippet: String,
    /// Its timestamp.
    pub timestamp: u64,
    /// Its payload's "type".
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl SearchHit {
    /// A search hit as an answer.
    pub fn of(hit: &kappadb_search::SearchHit) -> Self {
        Self {
            feed: hit.feed.to_string(),
            field: hit.field.clone(),
            offset: hit.offset,
            score: hit.score,
            seq: hit.seq,
            snippet: hit.snippet.clone(),
            timestamp: hit.timestamp,
            kind: hit.kind.clone(),
        }
    }
}

/// The answer to `view remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRemoved {
    /// The view.
    pub name: String,
    /// Always true.
    pub removed: bool,
}

/// The answer to `view rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRebuilt {
    /// Entries folded.
    pub entries: u64,
    /// The view.
    pub name: String,
    /// Entries skipped.
    pub skipped: u64,
}

/// One result of a field index query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldHit {
    /// The entry's author.
    pub feed: String,
    /// Its id.
    pub id: String,
    /// The payload, as `payload_format` says.
    pub payload: Value,
    /// How `payload` is given.
    pub payload_format: PayloadFormat,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The field's value.
    pub value: Value,
}

impl FieldHit {
    /// A hit of the field index as an answer.
    pub fn of(hit: &kappadb_views::field::FieldHit) -> Self {
        let (payload, payload_format) = payload_of(hit.payload.as_deref());
        Self {
            feed: hit.author.to_string(),
            id: hit.id.to_string(),
            payload,
            payload_format,
            seq: hit.seq,
            timestamp: hit.timestamp,
            value: hit.value.clone(),
        }
    }
}

/// The body of an error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What an error answer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A short machine-readable code, e.g. `unknown_feed`.
    pub code: String,
    /// What went wrong and what to do, for humans.
    pub message: String,
}

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

    /// The JSON body of an error answer.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorInfo {
                code: self.code.clone(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<EntryError> for OpError {
    fn from(e: EntryError) -> Self {
        let msg = e.to_string();
        match e {
            EntryError::PayloadTooLarge { .. } => Self::new(413, "payload_too_large", msg),
            EntryError::FeedForked { .. } => Self::new(409, "feed_forked", msg),
            EntryError::Identity(_) => Self::bad(e.reason(), msg),
            _ => Self::bad("bad_entry", msg),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Locked { .. } => Self::new(409, "locked", e.to_string()),
            // 507 Insufficient Storage: the node refuses writes until it
            // is restarted with room on its disk.
            StoreError::DiskFull { .. } => Self::new(507, "disk_full", e.to_string()),
            _ => Self::new(500, "store", e.to_string()),
        }
    }
}

impl From<AppendError> for OpError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Rejected(e) => e.into(),
            AppendError::Store(e) => e.into(),
            AppendError::Held(h) => Self::new(409, "held", h.to_string()),
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

impl From<kappadb_search::SearchError> for OpError {
    fn from(e: kappadb_search::SearchError) -> Self {
        use kappadb_search::SearchError as S;
        let msg = e.to_string();
        match e {
            S::BadDeclaration(_) => Self::bad("bad_declaration", msg),
            S::BadQuery(_) => Self::bad("bad_query", msg),
            S::UnknownSearchView(_) => Self::not_found("unknown_view", msg),
            S::View(v) => v.into(),
            S::Index { .. } => Self::new(500, "search_index", msg),
        }
    }
}

impl From<NetError> for OpError {
    /// What the API's node endpoints answer when asking the node fails.
    fn from(e: NetError) -> Self {
        Self::new(503, "node_stopped", e.to_string())
    }
}

/// Result of an operation.
pub type OpResult<T> = Result<T, OpError>;

#[cfg(test)]
mod tests;

/// What a deletion appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    /// The feed (this node's).
    pub feed: String,
    /// The deletion entry's id.
    pub id: String,
    /// Its log offset.
    pub offset: u64,
    /// Its seq.
    pub seq: u64,
    /// Entries named one by one.
    pub targets: usize,
    /// Every entry up to this seq is deleted too.
    pub up_to: Option<u64>,
}

/// What a compaction gave back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReply {
    /// Bytes of the rewritten segments after.
    pub bytes_after: u64,
    /// Bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// Bytes given back.
    pub reclaimed: u64,
    /// Segments rewritten.
    pub segments: usize,
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReply {
    /// The backup's directory (absolute).
    pub dest: String,
    /// Files written.
    pub files: usize,
    /// Log bytes copied.
    pub log_bytes: u64,
    /// The own feed's length in the backup.
    pub own_seq: u64,
}

/// The publishing hold after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReply {
    /// Why appends are held, if they still are.
    pub held: Option<String>,
}

/// What forgetting a feed did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetReply {
    /// Whether it is blocked now (it is, after a forget).
    pub blocked: bool,
    /// The feed.
    pub feed: String,
    /// Whether anything of it was held.
    pub forgotten: bool,
}

/// The replication policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowReply {
    /// With `all`: the feeds not followed; with `only`: the feeds followed.
    pub feeds: Vec<String>,
    /// `all` (every feed but `feeds`) or `only` (only `feeds`).
    pub mode: String,
}

impl FollowReply {
    /// The reply for a policy.
    pub fn of(follow: &kappadb_net::protocol::Follow) -> Self {
        use kappadb_net::protocol::Follow;
        let (mode, feeds) = match follow {
            Follow::All { except } => ("all", except),
            Follow::Only { feeds } => ("only", feeds),
        };
        Self {
            feeds: feeds.iter().map(ToString::to_string).collect(),
            mode: mode.to_string(),
        }
    }
}

/// An invite to this node's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteReply {
    /// The addresses in it, each ending in `/p2p/PEER`.
    pub addrs: Vec<String>,
    /// The invite, for `kappa init --join`.
    pub invite: String,
}

/// What blocking or unblocking a feed did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReply {
    /// Whether it is blocked now.
    pub blocked: bool,
    /// Whether this changed anything (false: it was so already).
    pub changed: bool,
    /// The feed.
    pub feed: String,
}

/// What one sync with a peer moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    /// Feeds it touched.
    pub feeds: usize,
    /// The peer's id.
    pub peer: String,
    /// Entries stored from it.
    pub pulled: u64,
    /// Entries it was sent (as counted by this side).
    pub pushed: u64,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    /// The log offset of the record.
    pub offset: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// What re-checking the whole log found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReply {
    /// Deletion entries.
    pub deletions: u64,
    /// Entries held.
    pub entries: u64,
    /// Payloads erased by deletions.
    pub erased_payloads: u64,
    /// Feeds.
    pub feeds: u64,
    /// Fork proofs.
    pub fork_proofs: u64,
    /// Deletions that named nothing held.
    pub ineffective_deletions: u64,
    /// Entries whose payload is not held.
    pub missing_payloads: u64,
    /// Whether nothing is wrong.
    pub ok: bool,
    /// What is wrong, record by record.
    pub problems: Vec<VerifyProblem>,
    /// Records read.
    pub records: u64,
}

impl VerifyReply {
    /// A verification report as an answer.
    pub fn of(r: &kappadb_core::VerifyReport) -> Self {
        Self {
            deletions: r.deletions,
            entries: r.entries,
            erased_payloads: r.erased_payloads,
            feeds: r.feeds as u64,
            fork_proofs: r.fork_proofs,
            ineffective_deletions: r.ineffective_deletions,
            missing_payloads: r.missing_payloads,
            ok: r.problems.is_empty(),
            problems: r
                .problems
                .iter()
                .map(|p| VerifyProblem {
                    offset: p.offset,
                    problem: p.what.clone(),
                })
                .collect(),
            records: r.records,
        }
    }
}

impl InviteReply {
    /// The invite of `key` with `addrs`.
    pub fn of(key: kappadb_core::NetworkKey, addrs: Vec<kappadb_net::Multiaddr>) -> Self {
        let invite = kappadb_net::Invite { key, addrs };
        Self {
            addrs: texts(&invite.addrs),
            invite: invite.to_string(),
        }
    }
}

impl SyncReply {
    /// A finished sync as an answer.
    pub fn of(s: &kappadb_net::SyncSummary) -> Self {
        Self {
            feeds: s.feeds,
            peer: s.peer.to_string(),
            pulled: s.pulled,
            pushed: s.pushed_estimate,
        }
    }
}

impl OpError {
    /// A sync that could not be done (the peer unreachable, refused, or
    /// too slow).
    pub fn sync_failed(e: NetError) -> Self {
        Self::new(502, "sync_failed", format!("sync failed: {e}"))
    }

    /// The block list could not be read or written.
    pub fn block_list(e: NetError) -> Self {
        Self::new(500, "block_list", e.to_string())
    }
}
