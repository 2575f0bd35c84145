//! kappadb-views: the [`View`] trait, the [`Indexer`] that folds the local
//! log into views, and the built-in views.
//!
//! A view is a deterministic fold of the log with a name, a version and its
//! own sled tree. The indexer feeds every registered view batches of log
//! records from the view's checkpoint; a batch's writes and the new
//! checkpoint commit in one sled batch, so each entry is folded exactly
//! once, across crashes too. A new version (or `kappa view rebuild`)
//! rebuilds a view from offset 0 into a fresh tree while the old one keeps
//! answering queries, then swaps. Two peers holding the same entries hold
//! byte-identical built-in views, which a [`ViewDigest`] lets them prove.
//!
//! Built-in views (payloads are JSON objects with a `"type"`):
//!
//! - [`kv`]: last-writer-wins registers with concurrent heads and deletes;
//! - [`timeline`]: every entry by `(timestamp, author, seq)`, by type, by
//!   author;
//! - [`field`]: indexes declared at run time on the value at a JSON pointer.
//!
//! This crate uses std threads only; it knows nothing of any async runtime
//! or of the network.
//!
//! ```
//! use std::time::Duration;
//! use kappadb_core::Db;
//! use kappadb_views::{Bytes, Indexer, IndexerConfig, View, ViewError, ViewRecord, ViewTx};
//! use kappadb_views::field::FieldQuery;
//! use kappadb_views::timeline::TimelineQuery;
//! use serde_json::json;
//!
//! /// A custom view: how many entries each feed wrote.
//! struct PerAuthor;
//! impl View for PerAuthor {
//!     fn name(&self) -> &str { "per-author" }
//!     fn version(&self) -> u32 { 1 }
//!     fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
//!         for r in batch {
//!             // Values are `Bytes`: they read as `&[u8]`.
//!             let n = tx.get(r.author.as_bytes())?.map_or(0, |v| v.len());
//!             tx.insert(r.author.as_bytes(), vec![0u8; n + 1]);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::create(dir.path(), Default::default()).unwrap();
//! let indexer = Indexer::open(db.clone()).unwrap(); // kv + timeline, live
//! indexer.register(PerAuthor).unwrap();
//! indexer.declare_field_index("by-user", "/user").unwrap();
//!
//! db.append(kappadb_views::kv::put_payload("color", &json!("blue"), &[])).unwrap();
//! db.append(br#"{"type":"chat","user":"ana","text":"hi"}"#.to_vec()).unwrap();
//! indexer.catch_up().unwrap();
//!
//! assert_eq!(indexer.kv().unwrap().get("color").unwrap(), Some(json!("blue")));
//! let chats = indexer.timeline().unwrap().query(&TimelineQuery {
//!     kind: Some("chat".into()),
//!     ..Default::default()
//! }).unwrap();
//! assert_eq!(chats.len(), 1);
//! let hits = indexer.field_index("by-user").unwrap().query(&FieldQuery::eq(json!("ana"))).unwrap();
//! assert_eq!(hits[0].seq, 2);
//! let mine: Option<Bytes> = indexer.reader("per-author").unwrap().get(db.feed_id().as_bytes()).unwrap();
//! assert_eq!(mine.map(|v| v.len()), Some(2));
//!
//! // Queries can wait for the live indexer instead of folding themselves.
//! db.append(kappadb_views::kv::del_payload("color", &[])).unwrap();
//! indexer.wait_until_caught_up("kv", Duration::from_secs(10)).unwrap();
//! assert_eq!(indexer.kv().unwrap().get("color").unwrap(), None);
//! println!("kv digest {}", indexer.digest("kv").unwrap());
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

mod bucket;
mod bytes;
mod encoding;
pub mod error;
pub mod field;
pub mod generation;
pub mod identity;
pub mod indexer;
pub mod kv;
mod slot;
pub mod timeline;
pub mod undo;
pub mod view;

pub use bytes::Bytes;
pub use error::ViewError;
pub use field::{FieldHit, FieldIndex, FieldQuery, FieldReader};
pub use generation::ViewDigest;
pub use identity::{Identities, IdentityFilter, IdentityView};
pub use indexer::{FieldIndexInfo, Indexer, IndexerConfig, RebuildStatus, ViewStatus};
pub use kv::{KvHead, KvItem, KvReader, KvView};
pub use timeline::{Order, TimelineItem, TimelineQuery, TimelineReader, TimelineView};
pub use view::{
    Checkpoint, Deleted, KeyValue, ReadRecords, View, ViewReader, ViewRecord, ViewTx, read_records,
};

/// Names of the built-in views; declared views cannot take them.
pub const BUILTIN_NAMES: &[&str] = &[kv::NAME, timeline::NAME, identity::NAME];

/// Check a view name: 1 to 64 characters of `[a-z0-9_-]`.
pub fn validate_view_name(name: &str) -> Result<(), ViewError> {
    let bad = |reason| {
        Err(ViewError::BadName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return bad("use only lowercase letters, digits, '_' and '-'");
    }
    Ok(())
}
