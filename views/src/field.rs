//! Field indexes: views declared at run time that index entries by the
//! JSON scalar found at a JSON pointer in their payload.
//!
//! ```text
//! scalar(value at pointer)                               -> up to 16 entries, or ""
//! scalar(value at pointer) | timestamp BE | author | seq / 64 BE -> bitmap
//! 'u' | author | seq / 64 BE                             -> undo: each entry's scalar and timestamp
//! ```
//!
//! (Scalars start with a tag byte from 0x10 to 0x40, so no scalar key
//! starts with `u`.) A deletion or a forget marker takes the deleted
//! entries out through their undo records; a value whose entries drop to
//! 16 or fewer goes back to its list form, so the form still depends only
//! on the set of entries.
//!
//! A value held by at most 16 entries keeps them all in one key, as a list
//! of `timestamp BE | author | seq BE` in that order; a value held by more
//! keeps an empty list and its entries in buckets (module `bucket`: an
//! author's entries of one millisecond with that value, up to 64 per key).
//! Which form a value takes depends only on how many entries hold it, so
//! two peers with the same entries store the same bytes. The list form
//! makes a field that takes many values (an id, a key) cost one sled key
//! per value rather than one per entry.
//!
//! Scalars use an order-preserving encoding (module `encoding`): null <
//! false < true < numbers (numerically) < strings (bytewise). Entries whose
//! payload is not JSON, lacks the field, or holds an array or object there
//! are skipped. The version is derived from the pointer, so re-declaring an
//! index with another pointer rebuilds it.
//!
//! Declarations live in the sled tree `views/declared` (name -> JSON) and
//! are registered again by every [`crate::Indexer::open`].
//!
//! ```
//! use kappadb_views::field::FieldIndex;
//! let index = FieldIndex::new("by-user", "/user/name").unwrap();
//! assert_eq!(index.pointer(), "/user/name");
//! assert!(FieldIndex::new("bad", "user").is_err());
//! assert!(FieldIndex::new("kv", "/user").is_err());
//! ```

use std::collections::BTreeMap;

use kappadb_core::{Db, EntryId, FeedId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bucket::{self, BUCKET_KEY_LEN, BucketWriter};
use crate::encoding::{
    ENTRY_KEY_LEN, prefix_end, put_entry_key, put_scalar, read_entry_key, take_scalar,
};
use crate::error::ViewError;
use crate::timeline::Order;
use crate::undo::UndoBatch;
use crate::view::{View, ViewReader, ViewRecord, ViewTx};
use crate::{BUILTIN_NAMES, validate_view_name};

/// Name of the tree holding field index declarations.
pub const DECLARED_TREE: &str = "views/declared";
/// Domain prefix of the version hash (v1 stored one key per entry, v2
/// stores lists and buckets, v3 keeps undo records and honours deletions).
const VERSION_DOMAIN: &[u8] = b"kappadb/field-index/v3\0";

/// Prefix of the undo records (no scalar starts with it).
const UNDO: &[u8] = b"u";

/// The smallest key of the scalar space and the end of it.
const SCALARS: (&[u8], &[u8]) = (&[0x10], &[0x41]);

/// What a field index keeps to undo an entry. Field order is part of the
/// view's format.
#[derive(Serialize, Deserialize)]
struct Undo {
    scalar: Vec<u8>,
    timestamp: u64,
}

/// Most entries a value keeps in its list form.
const LIST_MAX: usize = 16;

/// An entry as the list form stores it.
type EntryKey = (u64, FeedId, u64);

/// Decode a list-form value: `None` if it does not decode (an empty list
/// decodes: it is the mark of a value kept in buckets).
fn decode_list(bytes: &[u8]) -> Option<Vec<EntryKey>> {
    if !bytes.len().is_multiple_of(ENTRY_KEY_LEN) {
        return None;
    }
    bytes.chunks(ENTRY_KEY_LEN).map(read_entry_key).collect()
}

fn encode_list(entries: &[EntryKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_KEY_LEN);
    for (timestamp, author, seq) in entries {
        put_entry_key(&mut out, *timestamp, author, *seq);
    }
    out
}

/// A field index: entries ordered by the value at a JSON pointer, then by
/// `(timestamp, author, seq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldIndex {
    name: String,
    pointer: String,
    version: u32,
}

/// A stored declaration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Declaration {
    /// A field index.
    Field {
        /// Its JSON pointer.
        pointer: String,
    },
}

/// Check a JSON pointer: empty, or starting with `/`.
pub fn validate_pointer(pointer: &str) -> Result<(), ViewError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(ViewError::BadPointer(pointer.to_string()))
    }
}

impl FieldIndex {
    /// A field index named `name` on the value at `pointer` (RFC 6901, e.g.
    /// `/user/name`). Fails on a bad name, a name of a built-in view, or a
    /// pointer that is not empty and does not start with `/`.
    pub fn new(name: &str, pointer: &str) -> Result<Self, ViewError> {
        validate_view_name(name)?;
        if BUILTIN_NAMES.contains(&name) {
            return Err(ViewError::ViewExists(name.to_string()));
        }
        validate_pointer(pointer)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(VERSION_DOMAIN);
        hasher.update(pointer.as_bytes());
        let hash = hasher.finalize();
        let mut version = [0u8; 4];
        version.copy_from_slice(&hash.as_bytes()[..4]);
        Ok(Self {
            name: name.to_string(),
            pointer: pointer.to_string(),
            version: u32::from_le_bytes(version),
        })
    }

    /// The JSON pointer indexed.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }
}

impl View for FieldIndex {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn describe(&self) -> String {
        format!("field index on {:?}", self.pointer)
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        let mut undo = UndoBatch::new(UNDO);
        // Runs of records between deletions: entries added in order, then
        // the deletion's removals, so an entry deleted in the batch that
        // added it is added first.
        let mut adds: BTreeMap<Vec<u8>, Vec<EntryKey>> = BTreeMap::new();
        for r in batch {
            let undone = if let Some(d) = r.deleted() {
                let mut undone = Vec::new();
                for &seq in d.seqs() {
                    if let Some(data) = undo.take(tx, &r.author, seq)? {
                        undone.push((seq, data));
                    }
                }
                if let Some(up_to) = d.up_to() {
                    undone.extend(undo.take_up_to(tx, &r.author, Some(up_to))?);
                }
                undone
            } else if r.forgets() {
                undo.take_up_to(tx, &r.author, None)?
            } else {
                let Some(value) = r.json().and_then(|j| j.pointer(&self.pointer)) else {
                    tx.skip();
                    continue;
                };
                let mut scalar = Vec::new();
                if !put_scalar(&mut scalar, value) {
                    tx.skip();
                    continue;
                }
                let data = Undo {
                    scalar: scalar.clone(),
                    timestamp: r.timestamp,
                };
                let bytes = postcard::to_stdvec(&data)
                    .map_err(|e| ViewError::fold(&self.name, e.to_string()))?;
                undo.put(tx, &r.author, r.seq, bytes)?;
                adds.entry(scalar)
                    .or_default()
                    .push((r.timestamp, r.author, r.seq));
                continue;
            };
            if undone.is_empty() {
                continue;
            }
            self.add_entries(tx, std::mem::take(&mut adds))?;
            let mut removes: BTreeMap<Vec<u8>, Vec<EntryKey>> = BTreeMap::new();
            for (seq, data) in undone {
                let data: Undo = postcard::from_bytes(&data).map_err(|_| {
                    ViewError::damaged(&self.name, "an undo record does not decode")
                })?;
                removes
                    .entry(data.scalar)
                    .or_default()
                    .push((data.timestamp, r.author, seq));
            }
            self.remove_entries(tx, removes)?;
        }
        self.add_entries(tx, adds)?;
        undo.write(tx)
    }
}

impl FieldIndex {
    fn damaged(&self) -> ViewError {
        ViewError::damaged(&self.name, "a field index list does not decode")
    }

    /// Add entries, by encoded value.
    fn add_entries(
        &self,
        tx: &mut ViewTx<'_>,
        by_value: BTreeMap<Vec<u8>, Vec<EntryKey>>,
    ) -> Result<(), ViewError> {
        let mut buckets = BucketWriter::default();
        for (scalar, new) in by_value {
            let mut all = match tx.get(&scalar)? {
                Some(bytes) if bytes.is_empty() => {
                    // Kept in buckets already.
                    for (timestamp, author, seq) in new {
                        buckets.add(&scalar, timestamp, &author, seq);
                    }
                    continue;
                }
                Some(bytes) => decode_list(&bytes).ok_or_else(|| self.damaged())?,
                None => Vec::new(),
            };
            all.extend(new);
            all.sort_unstable();
            all.dedup();
            if all.len() <= LIST_MAX {
                tx.insert(&scalar, encode_list(&all));
            } else {
                // The value outgrows its list: move it to buckets (none
                // exists yet for it).
                tx.insert(&scalar, Vec::new());
                bucket::put_new(tx, &scalar, all);
            }
        }
        buckets.write(tx, &self.name)
    }

    /// Remove entries, by encoded value; a value whose entries drop to
    /// [`LIST_MAX`] or fewer goes back to its list form.
    fn remove_entries(
        &self,
        tx: &mut ViewTx<'_>,
        by_value: BTreeMap<Vec<u8>, Vec<EntryKey>>,
    ) -> Result<(), ViewError> {
        for (scalar, gone) in by_value {
            match tx.get(&scalar)? {
                None => {}
                Some(bytes) if bytes.is_empty() => {
                    let mut buckets = BucketWriter::default();
                    for (timestamp, author, seq) in gone {
                        buckets.remove(&scalar, timestamp, &author, seq);
                    }
                    buckets.write(tx, &self.name)?;
                    let mut left = Vec::new();
                    for (k, v) in tx.scan_prefix(&scalar)? {
                        let Some(rest) = k.get(scalar.len()..).filter(|r| !r.is_empty()) else {
                            continue;
                        };
                        left.extend(
                            bucket::entries(rest, &v, false).ok_or_else(|| self.damaged())?,
                        );
                        if left.len() > LIST_MAX {
                            break;
                        }
                    }
                    if left.len() <= LIST_MAX {
                        for (k, _) in tx.scan_prefix(&scalar)? {
                            if k.len() > scalar.len() {
                                tx.remove(&k);
                            }
                        }
                        left.sort_unstable();
                        Self::put_list(tx, &scalar, &left);
                    }
                }
                Some(bytes) => {
                    let mut list = decode_list(&bytes).ok_or_else(|| self.damaged())?;
                    list.retain(|e| !gone.contains(e));
                    Self::put_list(tx, &scalar, &list);
                }
            }
        }
        Ok(())
    }

    fn put_list(tx: &mut ViewTx<'_>, scalar: &[u8], list: &[EntryKey]) {
        if list.is_empty() {
            tx.remove(scalar);
        } else {
            tx.insert(scalar, encode_list(list));
        }
    }
}

/// A field index query: `eq`, or a range `from..=to` (either end open),
/// at most `limit` results.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldQuery {
    /// Only entries whose field equals this scalar.
    pub eq: Option<Value>,
    /// Only entries whose field is `>=` this scalar.
    pub from: Option<Value>,
    /// Only entries whose field is `<=` this scalar.
    pub to: Option<Value>,
    /// At most this many results.
    pub limit: usize,
    /// Smallest value first ([`Order::Ascending`], the default) or greatest.
    pub order: Order,
}

impl Default for FieldQuery {
    fn default() -> Self {
        Self {
            eq: None,
            from: None,
            to: None,
            limit: 100,
            order: Order::Ascending,
        }
    }
}

impl FieldQuery {
    /// Entries whose field equals `value`.
    pub fn eq(value: Value) -> Self {
        Self {
            eq: Some(value),
            ..Self::default()
        }
    }

    /// Entries whose field lies in `from..=to`.
    pub fn range(from: Option<Value>, to: Option<Value>) -> Self {
        Self {
            from,
            to,
            ..Self::default()
        }
    }

    /// Set the limit.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One field index result.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldHit {
    /// The field's value.
    pub value: Value,
    /// The entry's timestamp.
    pub timestamp: u64,
    /// Its feed.
    pub author: FeedId,
    /// Its seq.
    pub seq: u64,
    /// Its id.
    pub id: EntryId,
    /// Its payload (`None` if it has been dropped since).
    pub payload: Option<Vec<u8>>,
}

/// Read a query value as typed on a command line: JSON if it parses as a
/// JSON scalar (`42`, `true`, `null`, `"quoted"`), else the text itself as
/// a string.
pub fn parse_query_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if !v.is_array() && !v.is_object() => v,
        _ => Value::String(text.to_string()),
    }
}

fn encode_bound(what: &str, value: &Value) -> Result<Vec<u8>, ViewError> {
    let mut out = Vec::new();
    if put_scalar(&mut out, value) {
        Ok(out)
    } else {
        Err(ViewError::BadQuery(format!(
            "{what} must be a JSON scalar (null, bool, number or string), not {value}"
        )))
    }
}

/// Queries on a field index.
#[derive(Clone, Debug)]
pub struct FieldReader {
    reader: ViewReader,
    db: Db,
}

impl FieldReader {
    /// Queries over a reader of a field index; entries are read back from
    /// `db`.
    pub fn new(reader: ViewReader, db: Db) -> Self {
        Self { reader, db }
    }

    /// The underlying reader (checkpoint, generation).
    pub fn reader(&self) -> &ViewReader {
        &self.reader
    }

    /// Run a query.
    pub fn query(&self, q: &FieldQuery) -> Result<Vec<FieldHit>, ViewError> {
        self.query_inner(q, None)
    }

    /// Run a query with authors resolved to identities: entries cut off by
    /// a revocation are left out and, with `filter.identity`, only that
    /// identity's feeds are kept.
    pub fn query_resolved(
        &self,
        q: &FieldQuery,
        filter: &crate::identity::IdentityFilter<'_>,
    ) -> Result<Vec<FieldHit>, ViewError> {
        self.query_inner(q, Some(filter))
    }

    fn query_inner(
        &self,
        q: &FieldQuery,
        filter: Option<&crate::identity::IdentityFilter<'_>>,
    ) -> Result<Vec<FieldHit>, ViewError> {
        let (lo, hi) = match (&q.eq, &q.from, &q.to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ViewError::BadQuery(
                    "give either an exact value or a range, not both".into(),
                ));
            }
            (Some(eq), None, None) => {
                let p = encode_bound("--eq", eq)?;
                let hi = prefix_end(&p);
                (p, hi)
            }
            (None, from, to) => {
                // Open ends stop at the scalar space: the undo records
                // are not values.
                let lo = match from {
                    Some(v) => encode_bound("--from", v)?,
                    None => SCALARS.0.to_vec(),
                };
                let hi = match to {
                    Some(v) => prefix_end(&encode_bound("--to", v)?),
                    None => Some(SCALARS.1.to_vec()),
                };
                (lo, hi)
            }
        };
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let scan = self.reader.range(&lo, hi.as_deref());
        let scan: Box<dyn Iterator<Item = _>> = match q.order {
            Order::Ascending => Box::new(scan),
            Order::Descending => Box::new(scan.rev()),
        };
        let damaged =
            || ViewError::damaged(self.reader.name(), "a field index key does not decode");
        let mut out = Vec::new();
        'scan: for item in scan {
            let (k, v) = item?;
            let (value, rest) = take_scalar(&k).ok_or_else(damaged)?;
            let descending = q.order == Order::Descending;
            let entries: Vec<EntryKey> = if rest.is_empty() {
                let mut list = decode_list(&v).ok_or_else(damaged)?;
                if descending {
                    list.reverse();
                }
                list
            } else if rest.len() == BUCKET_KEY_LEN {
                bucket::entries(rest, &v, descending)
                    .ok_or_else(damaged)?
                    .collect()
            } else {
                return Err(damaged());
            };
            for (timestamp, author, seq) in entries {
                if filter.is_some_and(|f| !f.admits(&author, seq)) {
                    continue;
                }
                let Some(entry) = self.db.get(&author, seq)? else {
                    tracing::warn!(author = %author.fmt_short(), seq, "field index names an entry the feed index does not hold");
                    continue;
                };
                out.push(FieldHit {
                    value: value.clone(),
                    timestamp,
                    author,
                    seq,
                    id: entry.id(),
                    payload: entry.payload.into_bytes(),
                });
                if out.len() >= q.limit {
                    break 'scan;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_and_name_are_validated() {
        assert!(FieldIndex::new("ok_name-1", "").is_ok());
        assert!(matches!(
            FieldIndex::new("x", "a/b"),
            Err(ViewError::BadPointer(p)) if p == "a/b"
        ));
        assert!(matches!(
            FieldIndex::new("Bad", "/a"),
            Err(ViewError::BadName { .. })
        ));
        assert!(matches!(
            FieldIndex::new("timeline", "/a"),
            Err(ViewError::ViewExists(_))
        ));
    }

    #[test]
    fn version_follows_the_pointer() {
        let a = FieldIndex::new("x", "/a").unwrap();
        let b = FieldIndex::new("x", "/b").unwrap();
        assert_ne!(a.version(), b.version());
        assert_eq!(a.version(), FieldIndex::new("y", "/a").unwrap().version());
    }

    #[test]
    fn query_values_parse_like_a_shell_user_means() {
        assert_eq!(parse_query_value("42"), serde_json::json!(42));
        assert_eq!(parse_query_value("alice"), serde_json::json!("alice"));
        assert_eq!(parse_query_value("\"42\""), serde_json::json!("42"));
        assert_eq!(parse_query_value("[1]"), serde_json::json!("[1]"));
    }
}
