//! kappadb-core: keys, the entry format, validation, the canonical log, the
//! sled feed index and the [`Db`] handle.
//!
//! kappadb keeps one signed, hash-chained, append-only feed per peer. This
//! crate is the storage half: it signs and validates entries
//! ([`entry`], [`validate`]), stores them in an append-only log of segment
//! files ([`log`]) and keeps a derived sled index of feeds and heads
//! ([`index`]). It has no async runtime and no networking; `kappadb-views`
//! folds the log into queryable views and `kappadb-net` syncs it with peers.
//!
//! Embedding it takes a few lines: open (or create) a database, append,
//! and follow the log with [`Db::tail`], which yields what is there and
//! then blocks for each new record (`kappadb_net::Subscription` is the
//! async counterpart):
//!
//! ```
//! use kappadb_core::{CreateOptions, Db};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open_or_create(dir.path(), CreateOptions::default()).unwrap();
//! db.append(br#"{"type":"kv.put","key":"a","value":1}"#.to_vec()).unwrap();
//! db.append_batch(vec![b"two".to_vec(), b"three".to_vec()]).unwrap();
//! assert_eq!(db.head(&db.feed_id()).unwrap().seq, 3);
//!
//! // Another thread appends later; the tail waits for it.
//! let writer = db.clone();
//! let later = std::thread::spawn(move || writer.append(b"four".to_vec()));
//! for rec in db.tail(0).take(4) {
//!     let rec = rec.unwrap();
//!     if let Some(entry) = rec.entry() {
//!         println!("seq {} at offset {}", entry.header.seq, rec.offset);
//!     }
//! }
//! later.join().unwrap().unwrap();
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

pub mod db;
mod dir;
pub mod entry;
pub mod error;
pub mod identity;
pub mod index;
pub mod keys;
pub mod log;
pub mod observe;
mod sig;
pub use sig::{Refusal, canonical_encoding};
pub mod system;
pub mod tail;
pub mod validate;
mod verify;
pub mod watch;

#[cfg(any(test, feature = "test_utils"))]
pub mod test_utils;

pub use db::{
    Appended, BackupReport, CompactReport, CreateOptions, Db, DbConfig, DeletionIssue, FeedInfo,
    ForgetError, IngestReport, Problem, PublishHold, Status, VerifyReport, now_ms,
};
pub use entry::{
    BadEntryId, Entry, EntryId, ForkProof, Hash, Header, Payload, SignedHeader, UncheckedForkProof,
};
pub use error::{AppendError, StoreError};
pub use index::{ForkInfo, Head};
pub use keys::{FeedId, KeyError, NetworkKey, SigningKey};
pub use log::{LogIter, LogRecord, RecordBody, Recovery};
pub use observe::Observer;
pub use tail::Tail;
pub use validate::{CheckedEntries, EntryError};
pub use watch::{ListenerId, Signal, Watch};
