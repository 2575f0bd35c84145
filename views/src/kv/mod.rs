//! The `kv` view: a last-writer-wins register per key that keeps every
//! concurrent head visible.
//!
//! Payloads:
//!
//! ```text
//! {"type":"kv.put","key":"a","value":<any JSON>,"links":["<entry id hex>", ...]}
//! {"type":"kv.del","key":"a","links":[...]}
//! ```
//!
//! `links` is optional. An op *supersedes* the ops on the same key that it
//! names in `links`, and its author's own earlier ops on that key (a feed is
//! causally ordered). The heads of a key are its ops that no other known op
//! supersedes; [`KvReader::get`] returns the value of the head that is
//! greatest by `(timestamp, author, seq)`, or nothing if that head is a
//! delete. The state depends only on the set of entries folded, never on
//! their arrival order: a link may name an op that arrives later, so every
//! link is remembered (the "superseded" set) and such an op never becomes a
//! head.
//!
//! Deleting an op (its author's deletion entry, or this node forgetting its
//! feed) recomputes the key as if the op had never existed: the ops it
//! superseded may become heads again. So the view keeps, besides the heads,
//! which ops each key holds and what each op linked.
//!
//! Keys (in the view's key space):
//!
//! ```text
//! 'k' | escaped(key)                      -> postcard(KvRecord { heads, linked, history })
//! 's' | escaped(key) | id (32)            -> count (u32 BE): ops on `key` that link `id`
//! 'o' | escaped(key) | author | seq BE    -> postcard(Vec<u64>): older seqs of the author's ops on `key`
//! 'u' | author | seq / 64 BE              -> undo: each op's key and links (module `undo`)
//! ```
//!
//! `heads` is sorted by `(timestamp, author, seq)`; `linked` says whether
//! any op on the key has links (so the `'s'` keys need to be looked at);
//! `history` holds, per author, the seqs of its ops on the key that are
//! not deleted (the newest [`HISTORY_INLINE`] or so inline, older ones in
//! `'o'` chunks named by their first seq). A record exists iff the key has
//! ops or links. Only an author's newest op on a key can be a head, so a
//! recomputation reads (from the log) one op per author.
//!
//! Values are stored as canonical JSON text (object keys sorted).
//!
//! **Identity-resolved queries** ([`KvReader::resolved_heads`],
//! [`KvReader::resolved_get`], [`KvReader::resolved_list`]) read the same
//! records with authors resolved to identities ([`crate::identity`]):
//! the ops of all feeds of one identity order like one author's, by
//! `(timestamp, device, seq)`, and only the greatest can be a head, so two
//! devices of one identity never give concurrent heads against each
//! other; ops a revoked device wrote at or past its cut are left out, and
//! so are their links (as if they had never been written). Concurrent
//! heads remain between identities. This is computed at query time from
//! the stored history (one op per device read back from the log; every
//! op of the key when a cut op is among them), never stored, so the
//! view's state stays the set-only fold above and a delegation or
//! revocation arriving late changes the answer with nothing to refold.
//!
//! ```
//! let payload = kappadb_views::kv::put_payload("color", &serde_json::json!("blue"), &[]);
//! assert_eq!(payload, br#"{"key":"color","type":"kv.put","value":"blue"}"#);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use kappadb_core::{Db, EntryId, FeedId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::encoding::{canonical_json, put_escaped, put_escaped_prefix, take_escaped};
use crate::error::ViewError;
use crate::identity::Identities;
use crate::view::{View, ViewReader, ViewRecord, ViewTx};

mod fold;

/// The kv view's name.
pub const NAME: &str = "kv";
/// The kv view's version (2: history and undo records, deletions).
pub const VERSION: u32 = 2;
/// Payload type of a put.
pub const PUT: &str = "kv.put";
/// Payload type of a delete.
pub const DEL: &str = "kv.del";

const RECORD: u8 = b'k';
const SUPERSEDED: u8 = b's';
const CHUNK: u8 = b'o';
const UNDO: &[u8] = b"u";

/// An author's newest op seqs on a key kept in its record; twice this many
/// move the older half to a chunk.
pub const HISTORY_INLINE: usize = 64;

/// The built-in `kv` view.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvView;

/// A head as stored. Field order is part of the view's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredHead {
    timestamp: u64,
    author: FeedId,
    seq: u64,
    id: EntryId,
    /// Canonical JSON text of the value; `None` for a delete.
    value: Option<String>,
}

/// A key's record. Field order is part of the view's format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KvRecord {
    heads: Vec<StoredHead>,
    /// Some op on this key has links: superseded ids may be stored.
    linked: bool,
    /// Per author (sorted by author), the seqs of its ops on this key.
    history: Vec<History>,
}

/// One author's ops on a key. Field order is part of the view's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct History {
    author: FeedId,
    /// The newest seqs, ascending.
    recent: Vec<u64>,
    /// How many older seqs sit in `'o'` chunks.
    spilled: u64,
}

/// What the kv view keeps to undo an op. Field order is part of the
/// view's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Undo {
    key: String,
    links: Vec<EntryId>,
}

impl StoredHead {
    fn order(&self) -> (u64, FeedId, u64) {
        (self.timestamp, self.author, self.seq)
    }
}

struct Op<'a> {
    key: &'a str,
    value: Option<&'a Value>,
    links: Vec<EntryId>,
}

fn parse_op(record: &ViewRecord) -> Option<Op<'_>> {
    parse_op_json(record.json()?)
}

fn parse_op_json(json: &Value) -> Option<Op<'_>> {
    let obj = json.as_object()?;
    let is_put = match obj.get("type")?.as_str()? {
        PUT => true,
        DEL => false,
        _ => return None,
    };
    let key = obj.get("key")?.as_str()?;
    let value = if is_put {
        Some(obj.get("value")?)
    } else {
        None
    };
    let links = match obj.get("links") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut links = Vec::with_capacity(items.len());
            for item in items {
                links.push(item.as_str()?.parse::<EntryId>().ok()?);
            }
            links
        }
        Some(_) => return None,
    };
    Some(Op { key, value, links })
}

fn record_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3);
    out.push(RECORD);
    put_escaped(&mut out, key.as_bytes());
    out
}

fn superseded_key(key: &str, id: &EntryId) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 35);
    out.push(SUPERSEDED);
    put_escaped(&mut out, key.as_bytes());
    out.extend_from_slice(&id.0);
    out
}

fn chunk_prefix(key: &str, author: &FeedId) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 43);
    out.push(CHUNK);
    put_escaped(&mut out, key.as_bytes());
    out.extend_from_slice(author.as_bytes());
    out
}

fn decode_record(bytes: &[u8]) -> Result<KvRecord, ViewError> {
    postcard::from_bytes(bytes).map_err(|_| ViewError::damaged(NAME, "a kv record does not decode"))
}

impl View for KvView {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn describe(&self) -> String {
        "last-writer-wins registers with concurrent heads (kv.put, kv.del)".to_string()
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        fold::apply(batch, tx)
    }
}

/// One head of a key: an op no other known op supersedes.
#[derive(Clone, Debug, PartialEq)]
pub struct KvHead {
    /// The op's entry id (name it in `links` to supersede it).
    pub id: EntryId,
    /// Its author.
    pub author: FeedId,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: u64,
    /// The value put, or `None` for a delete.
    pub value: Option<Value>,
}

impl KvHead {
    /// Whether this head is a delete.
    pub fn is_deleted(&self) -> bool {
        self.value.is_none()
    }
}

/// A live key from [`KvReader::list`].
#[derive(Clone, Debug, PartialEq)]
pub struct KvItem {
    /// The key.
    pub key: String,
    /// The winning value.
    pub value: Value,
    /// How many concurrent heads the key has (1 when there is no conflict).
    pub heads: usize,
}

/// Queries on the `kv` view.
#[derive(Clone, Debug)]
pub struct KvReader {
    reader: ViewReader,
}

fn to_head(h: StoredHead) -> Result<KvHead, ViewError> {
    let value = match h.value {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|_| ViewError::damaged(NAME, "a stored value is not JSON"))?,
        ),
    };
    Ok(KvHead {
        id: h.id,
        author: h.author,
        seq: h.seq,
        timestamp: h.timestamp,
        value,
    })
}

impl KvReader {
    /// Queries over a reader of the kv view.
    pub fn new(reader: ViewReader) -> Self {
        Self { reader }
    }

    /// The underlying reader (checkpoint, generation).
    pub fn reader(&self) -> &ViewReader {
        &self.reader
    }

    fn stored_heads(&self, key: &str) -> Result<Vec<StoredHead>, ViewError> {
        match self.reader.get(&record_key(key))? {
            Some(bytes) => Ok(decode_record(&bytes)?.heads),
            None => Ok(Vec::new()),
        }
    }

    /// The winning value of `key`: the value of its greatest head by
    /// `(timestamp, author, seq)`; `None` if there is none or it is a delete.
    pub fn get(&self, key: &str) -> Result<Option<Value>, ViewError> {
        let heads = self.stored_heads(key)?;
        match heads.into_iter().max_by_key(StoredHead::order) {
            Some(h) => Ok(to_head(h)?.value),
            None => Ok(None),
        }
    }

    /// The seqs of `author`'s ops on `key` that are not deleted, ascending
    /// (what `kappa kv purge` deletes for this node's own feed).
    pub fn ops_of(&self, key: &str, author: &FeedId) -> Result<Vec<u64>, ViewError> {
        let Some(bytes) = self.reader.get(&record_key(key))? else {
            return Ok(Vec::new());
        };
        let rec = decode_record(&bytes)?;
        let Some(h) = rec.history.iter().find(|h| h.author == *author) else {
            return Ok(Vec::new());
        };
        let mut seqs = Vec::new();
        if h.spilled > 0 {
            for item in self.reader.scan_prefix(&chunk_prefix(key, author)) {
                let (_, v) = item?;
                let chunk: Vec<u64> = postcard::from_bytes(&v)
                    .map_err(|_| ViewError::damaged(NAME, "a history chunk does not decode"))?;
                seqs.extend(chunk);
            }
        }
        seqs.extend(&h.recent);
        Ok(seqs)
    }

    /// Every concurrent head of `key`, oldest first (the last one wins).
    /// Deletes are heads too.
    pub fn heads(&self, key: &str) -> Result<Vec<KvHead>, ViewError> {
        self.stored_heads(key)?.into_iter().map(to_head).collect()
    }

    /// Live keys starting with `prefix` (deleted ones left out), in key
    /// order, with their winning values.
    pub fn list(&self, prefix: &str) -> impl Iterator<Item = Result<KvItem, ViewError>> + use<> {
        let mut scan = vec![RECORD];
        put_escaped_prefix(&mut scan, prefix.as_bytes());
        self.reader.scan_prefix(&scan).filter_map(|item| {
            let res = (|| {
                let (k, v) = item?;
                let (key, _) = take_escaped(&k[1..])
                    .ok_or_else(|| ViewError::damaged(NAME, "a kv key does not decode"))?;
                let key = String::from_utf8(key)
                    .map_err(|_| ViewError::damaged(NAME, "a kv key is not utf-8"))?;
                let heads = decode_record(&v)?.heads;
                let n_heads = heads.len();
                let Some(winner) = heads.into_iter().max_by_key(StoredHead::order) else {
                    return Ok(None);
                };
                Ok(to_head(winner)?.value.map(|value| KvItem {
                    key,
                    value,
                    heads: n_heads,
                }))
            })();
            res.transpose()
        })
    }
}

/// An op read back from the log for an identity-resolved query.
struct ReadOp {
    head: StoredHead,
    links: Vec<EntryId>,
}

/// `author`'s op at `seq` on `key`, if the log still holds it.
fn read_op(db: &Db, key: &str, author: &FeedId, seq: u64) -> Result<Option<ReadOp>, ViewError> {
    let Some(entry) = db.get(author, seq)? else {
        return Ok(None);
    };
    let Some(json) = entry
        .payload
        .bytes()
        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
    else {
        return Ok(None);
    };
    let Some(op) = parse_op_json(&json).filter(|op| op.key == key) else {
        return Ok(None);
    };
    Ok(Some(ReadOp {
        head: StoredHead {
            timestamp: entry.header.timestamp,
            author: *author,
            seq,
            id: entry.id(),
            value: op.value.map(canonical_json),
        },
        links: op.links,
    }))
}

impl KvReader {
    fn linked_count(&self, key: &str, id: &EntryId) -> Result<u32, ViewError> {
        match self.reader.get(&superseded_key(key, id))? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| ViewError::damaged(NAME, "a link count does not decode"))?;
                Ok(u32::from_be_bytes(bytes))
            }
        }
    }

    fn resolved_record(
        &self,
        db: &Db,
        ids: &Identities,
        key: &str,
        rec: KvRecord,
    ) -> Result<Vec<StoredHead>, ViewError> {
        let touched = rec.history.iter().any(|h| ids.link(&h.author).is_some());
        if !touched {
            // No device of any identity wrote here: the stored heads are
            // the answer (each author its own identity, nothing cut).
            return Ok(rec.heads);
        }
        // Visible seqs per author.
        let mut visible: Vec<(FeedId, Vec<u64>)> = Vec::new();
        let mut any_cut = false;
        for h in &rec.history {
            let seqs = self.ops_of(key, &h.author)?;
            let kept: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|&s| ids.visible(&h.author, s))
                .collect();
            any_cut |= kept.len() != seqs.len();
            if !kept.is_empty() {
                visible.push((h.author, kept));
            }
        }
        // Links of visible ops, when a cut op's links must not count.
        let mut links: Option<BTreeSet<EntryId>> = None;
        if any_cut && rec.linked {
            let mut set = BTreeSet::new();
            for (author, seqs) in &visible {
                for &seq in seqs {
                    if let Some(op) = read_op(db, key, author, seq)? {
                        set.extend(op.links);
                    }
                }
            }
            links = Some(set);
        }
        // Each identity's greatest op by (timestamp, device, seq), from
        // each device's newest visible op (a feed is causally ordered).
        let mut winners: BTreeMap<FeedId, StoredHead> = BTreeMap::new();
        for (author, seqs) in &visible {
            let Some(&seq) = seqs.last() else { continue };
            let Some(op) = read_op(db, key, author, seq)? else {
                continue;
            };
            let identity = ids.resolve(author);
            match winners.get(&identity) {
                Some(w) if w.order() >= op.head.order() => {}
                _ => {
                    winners.insert(identity, op.head);
                }
            }
        }
        let mut heads = Vec::new();
        for (_, head) in winners {
            let superseded = match &links {
                Some(set) => set.contains(&head.id),
                None => rec.linked && self.linked_count(key, &head.id)? > 0,
            };
            if !superseded {
                heads.push(head);
            }
        }
        heads.sort_by_key(StoredHead::order);
        Ok(heads)
    }

    /// Every concurrent head of `key` with authors resolved to identities
    /// (module docs), oldest first; `author` is the device that wrote each.
    pub fn resolved_heads(
        &self,
        db: &Db,
        ids: &Identities,
        key: &str,
    ) -> Result<Vec<KvHead>, ViewError> {
        let Some(bytes) = self.reader.get(&record_key(key))? else {
            return Ok(Vec::new());
        };
        let rec = decode_record(&bytes)?;
        self.resolved_record(db, ids, key, rec)?
            .into_iter()
            .map(to_head)
            .collect()
    }

    /// The winning value of `key` with authors resolved to identities.
    pub fn resolved_get(
        &self,
        db: &Db,
        ids: &Identities,
        key: &str,
    ) -> Result<Option<Value>, ViewError> {
        Ok(self
            .resolved_heads(db, ids, key)?
            .pop()
            .and_then(|h| h.value))
    }

    /// [`KvReader::list`] with authors resolved to identities.
    pub fn resolved_list(
        &self,
        db: &Db,
        ids: &Identities,
        prefix: &str,
    ) -> Result<Vec<KvItem>, ViewError> {
        let mut scan = vec![RECORD];
        put_escaped_prefix(&mut scan, prefix.as_bytes());
        let mut out = Vec::new();
        for item in self.reader.scan_prefix(&scan) {
            let (k, v) = item?;
            let (key, _) = take_escaped(&k[1..])
                .ok_or_else(|| ViewError::damaged(NAME, "a kv key does not decode"))?;
            let key = String::from_utf8(key)
                .map_err(|_| ViewError::damaged(NAME, "a kv key is not utf-8"))?;
            let heads = self.resolved_record(db, ids, &key, decode_record(&v)?)?;
            let n_heads = heads.len();
            let Some(winner) = heads.into_iter().max_by_key(StoredHead::order) else {
                continue;
            };
            if let Some(value) = to_head(winner)?.value {
                out.push(KvItem {
                    key,
                    value,
                    heads: n_heads,
                });
            }
        }
        Ok(out)
    }
}

fn payload(kind: &str, key: &str, value: Option<&Value>, links: &[EntryId]) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), Value::from(kind));
    obj.insert("key".into(), Value::from(key));
    if let Some(v) = value {
        obj.insert("value".into(), v.clone());
    }
    if !links.is_empty() {
        let links = links.iter().map(|l| Value::from(l.to_string())).collect();
        obj.insert("links".into(), Value::Array(links));
    }
    canonical_json(&Value::Object(obj)).into_bytes()
}

/// The payload of a put of `value` at `key`, superseding `links` (usually
/// the ids of the key's current heads).
pub fn put_payload(key: &str, value: &Value, links: &[EntryId]) -> Vec<u8> {
    payload(PUT, key, Some(value), links)
}

/// The payload of a delete of `key`, superseding `links`.
pub fn del_payload(key: &str, links: &[EntryId]) -> Vec<u8> {
    payload(DEL, key, None, links)
}
