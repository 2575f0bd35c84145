//! The store seam under the sync engine: everything the [`Engine`]
//! reads from or writes to the database, as one trait.
//!
//! The engine owns no disk I/O of its own: heads and forks come from the
//! store, pages are read from it and stored through it (all or nothing,
//! with the chain rules the store applies), fork proofs likewise. [`Db`]
//! implements it for the node; protocol tests can use an in-memory store
//! (`test_utils::MemStore`, feature `test_utils`) that applies the same
//! rules.
//!
//! [`Engine`]: super::Engine

use kappadb_core::{
    CheckedEntries, Db, Entry, EntryId, FeedId, FeedInfo, ForkInfo, ForkProof, Head, IngestReport,
    StoreError,
};

/// What the sync engine needs from a database.
///
/// Errors are the store's own failures and stop the engine; a peer's bad
/// entries are rejections inside an [`IngestReport`], never an error.
pub trait SyncStore {
    /// The largest payload this store accepts (its pages are checked
    /// against it).
    fn max_payload(&self) -> u32;

    /// Every known feed with its head and fork state, sorted by feed.
    fn feeds(&self) -> Vec<FeedInfo>;

    /// A number that changes whenever [`SyncStore::feeds`] may answer
    /// differently (`None`: not known, scan every time). The engine skips
    /// scanning every head for a peer that was told everything at this
    /// number.
    fn heads_version(&self) -> Option<u64> {
        None
    }

    /// A feed's head, if any entry of it is held.
    fn head(&self, feed: &FeedId) -> Option<Head>;

    /// Where a feed forked, if it did.
    fn fork(&self, feed: &FeedId) -> Option<ForkInfo>;

    /// The id of a feed's entry at `seq`, if held.
    fn entry_id(&self, feed: &FeedId, seq: u64) -> Result<Option<EntryId>, StoreError>;

    /// Entries of `feed` with `from <= seq <= to`, in seq order, read
    /// lazily (a page stops reading once it is full).
    fn feed_range<'a>(
        &'a self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

    /// Store checked entries all or nothing (see [`Db::ingest_checked`]).
    fn ingest_checked(&self, page: CheckedEntries) -> Result<IngestReport, StoreError>;

    /// The stored fork proofs of these feeds.
    fn fork_proofs(&self, feeds: &[FeedId]) -> Result<Vec<ForkProof>, StoreError>;

    /// Store fork proofs; for each, whether it was news.
    fn ingest_fork_proofs(&self, proofs: Vec<ForkProof>) -> Result<Vec<bool>, StoreError>;

    /// A peer reported `feed` at length `seq`. A database holds its own
    /// appends while its own feed is longer elsewhere
    /// ([`Db::note_remote_head`]).
    fn note_remote_head(&self, _feed: &FeedId, _seq: u64) {}

    /// A sync with a peer completed: both hold what the other has
    /// ([`Db::note_synced`] lifts a restored database's hold).
    fn note_synced(&self) {}
}

impl SyncStore for Db {
    fn max_payload(&self) -> u32 {
        self.config().max_payload_bytes
    }

    fn feeds(&self) -> Vec<FeedInfo> {
        Db::feeds(self)
    }

    fn heads_version(&self) -> Option<u64> {
        Some(Db::heads_version(self))
    }

    fn head(&self, feed: &FeedId) -> Option<Head> {
        Db::head(self, feed)
    }

    fn fork(&self, feed: &FeedId) -> Option<ForkInfo> {
        Db::fork(self, feed)
    }

    fn entry_id(&self, feed: &FeedId, seq: u64) -> Result<Option<EntryId>, StoreError> {
        if let Some(h) = Db::head(self, feed).filter(|h| h.seq == seq) {
            return Ok(Some(h.id));
        }
        Ok(self.get(feed, seq)?.map(|e| e.id()))
    }

    fn feed_range<'a>(
        &'a self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a> {
        Box::new(Db::feed_range(self, feed, from, to))
    }

    fn ingest_checked(&self, page: CheckedEntries) -> Result<IngestReport, StoreError> {
        Db::ingest_checked(self, page)
    }

    fn fork_proofs(&self, feeds: &[FeedId]) -> Result<Vec<ForkProof>, StoreError> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        Ok(Db::fork_proofs(self)?
            .into_iter()
            .filter(|p| feeds.contains(&p.author()))
            .collect())
    }

    fn ingest_fork_proofs(&self, proofs: Vec<ForkProof>) -> Result<Vec<bool>, StoreError> {
        Db::ingest_fork_proofs(self, proofs)
    }

    fn note_remote_head(&self, feed: &FeedId, seq: u64) {
        Db::note_remote_head(self, feed, seq);
    }

    fn note_synced(&self) {
        if let Err(e) = Db::note_synced(self) {
            tracing::warn!(error = %e, "could not lift the hold of a restored database");
        }
    }
}
