//! The operations' parameters: query strings and request bodies.
//!
//! The CLI fills them in, [`crate::client::Remote`] sends them (GET
//! parameters as the query string, the others as JSON bodies) and the API
//! decodes them; [`crate::ops::Local`] runs them. Unknown fields are
//! refused, so a typo in a query string is an error, not a silent default.

use kappadb_views::field::FieldQuery;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Parameters of `log`: records from an offset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogParams {
    /// Start at the first record at or after this byte offset.
    pub since: u64,
    /// At most this many records (at most [`crate::ops::MAX_PAGE`] per page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only records of this feed (id, unique prefix, or `self`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

/// Parameters of a one-entry read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntryParams {
    /// Add the entry exactly as signed ([`crate::answer::RawEntry`]).
    pub raw: bool,
}

/// Parameters of a feed range read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangeParams {
    /// First seq (1-based).
    pub from: u64,
    /// At most this many entries (at most [`crate::ops::MAX_PAGE`]).
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
    /// Resolve authors to identities: only entries of this identity (id,
    /// unique prefix, or `self` for this database's identity), revoked
    /// entries left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Default for TimelineParams {
    fn default() -> Self {
        Self {
            kind: None,
            author: None,
            from: None,
            to: None,
            limit: 20,
            identity: None,
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
    /// Only entries of this identity (id, prefix, or `self`), authors
    /// resolved through delegations; revoked entries left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Default for FieldParams {
    fn default() -> Self {
        Self {
            eq: None,
            from: None,
            to: None,
            limit: FieldQuery::default().limit,
            identity: None,
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
    /// Resolve authors to identities (devices of one identity write like
    /// one author; revoked writes left out).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub identity: bool,
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
    /// Name of the new view.
    pub name: String,
    /// A field index: the JSON pointer it indexes.
    #[serde(default)]
    pub field: String,
    /// A search view: the JSON pointers of its text fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// A search view: only entries whose payload "type" is this.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A search view: the stemming language (default english; "none").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Parameters of `search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchParams {
    /// The query.
    pub q: String,
    /// At most this many hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only entries of this feed (id, unique prefix, or "self").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Only entries whose payload "type" is this.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only entries at or after this timestamp (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only entries at or before this timestamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// Parameters of the event stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventParams {
    /// Start at the first record at or after this offset [default: the
    /// log's end, i.e. only new records]. A `Last-Event-ID` header wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only records of this feed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

/// The `?key=K` of the kv reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyParam {
    /// The key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Body of a deletion of this node's own entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteBody {
    /// Entries by seq.
    pub seqs: Vec<u64>,
    /// Entries by id.
    pub ids: Vec<String>,
    /// Every entry with a seq below this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// Body of a kv purge: delete this node's ops on a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// The key.
    pub key: String,
}

/// Body of a backup: where to write it (an absolute path on the node's
/// machine; the CLI sends its argument made absolute).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupBody {
    /// The destination directory.
    pub dest: String,
}

/// Body of a change of the replication policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowBody {
    /// Follow (`true`) or stop following (`false`) these feeds.
    pub feeds: Vec<String>,
    /// Whether to follow them (else unfollow); true if not given.
    pub follow: bool,
    /// Switch to following every feed (but those unfollowed since).
    pub all: bool,
    /// Switch to following only `feeds` (and this node's own).
    pub only: bool,
}

impl Default for FollowBody {
    fn default() -> Self {
        Self {
            feeds: Vec::new(),
            follow: true,
            all: false,
            only: false,
        }
    }
}

/// Body of a peer to connect to (`POST /v1/peers`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAddBody {
    /// Its multiaddr, e.g. `/ip4/192.168.1.20/tcp/4747`.
    pub addr: String,
}

/// Query of the dashboard's login (`GET /login?code=CODE`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginParams {
    /// The one-time code `kappa ui` got.
    pub code: Option<String>,
}

/// Body of a one-off sync with a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncBody {
    /// The peer's multiaddr (the `/p2p/PEER` suffix is optional).
    pub addr: String,
    /// Give up after this many seconds.
    pub timeout: u64,
}

impl Default for SyncBody {
    fn default() -> Self {
        Self {
            addr: String::new(),
            timeout: 300,
        }
    }
}

/// Body of `identity revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The device feed (id, unique prefix).
    pub feed: String,
    /// Its first entry that no longer speaks for the identity (default:
    /// the one after the last held here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
}

/// Body of `identity delegate`: a device and its consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateBody {
    /// The device feed (id).
    pub device: String,
    /// Its ed25519 consent signature (128 hex digits) over
    /// `"kappadb/delegation/v1\0" || identity || device`.
    pub device_sig: String,
}
