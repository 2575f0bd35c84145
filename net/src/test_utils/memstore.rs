//! [`MemStore`]: a [`SyncStore`] in memory, for protocol tests that need
//! no disk. It applies the rules `Db::ingest_checked` applies (chain
//! links against the head, duplicates, forks stored as proofs, pages all
//! or nothing), with core's own validation functions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kappadb_core::validate::validate_link;
use kappadb_core::{
    CheckedEntries, DbConfig, Entry, EntryError, EntryId, FeedId, FeedInfo, ForkInfo, ForkProof,
    Head, IngestReport, SigningKey, StoreError,
};

use crate::protocol::SyncStore;

#[derive(Debug, Default)]
struct Inner {
    feeds: BTreeMap<FeedId, Vec<Entry>>,
    forks: BTreeMap<FeedId, ForkProof>,
}

/// An in-memory store with its own feed key. Cheap to clone; clones share
/// the data (like `Db` handles).
#[derive(Debug, Clone)]
pub struct MemStore {
    key: Arc<SigningKey>,
    max_payload: u32,
    inner: Arc<Mutex<Inner>>,
}

impl MemStore {
    /// A store whose own feed key is derived from `seed`, with the default
    /// payload limit.
    pub fn new(seed: u64) -> Self {
        let peer = kappadb_core::test_utils::TestPeer::new(seed);
        Self {
            key: Arc::new(peer.key),
            max_payload: DbConfig::default().max_payload_bytes,
            inner: Arc::default(),
        }
    }

    /// This store's own feed.
    pub fn feed_id(&self) -> FeedId {
        self.key.feed_id()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `payload` to this store's own feed at `timestamp`.
    pub fn append(&self, timestamp: u64, payload: Vec<u8>) -> Entry {
        let mut inner = self.lock();
        let feed = inner.feeds.entry(self.key.feed_id()).or_default();
        let entry = Entry::sign(&self.key, feed.last(), timestamp, payload);
        feed.push(entry.clone());
        entry
    }

    /// Every feed's entries.
    pub fn snapshot(&self) -> BTreeMap<FeedId, Vec<Entry>> {
        self.lock().feeds.clone()
    }
}

fn head_of(feed: &[Entry]) -> Option<Head> {
    feed.last().map(|e| Head {
        seq: e.header.seq,
        id: e.id(),
        offset: 0,
        timestamp: e.header.timestamp,
    })
}

impl SyncStore for MemStore {
    fn max_payload(&self) -> u32 {
        self.max_payload
    }

    fn feeds(&self) -> Vec<FeedInfo> {
        let inner = self.lock();
        inner
            .feeds
            .iter()
            .filter_map(|(feed, entries)| {
                Some(FeedInfo {
                    feed: *feed,
                    head: head_of(entries)?,
                    fork: inner.forks.get(feed).map(|p| ForkInfo {
                        seq: p.seq(),
                        proof_offset: 0,
                    }),
                })
            })
            .collect()
    }

    fn head(&self, feed: &FeedId) -> Option<Head> {
        self.lock().feeds.get(feed).and_then(|f| head_of(f))
    }

    fn fork(&self, feed: &FeedId) -> Option<ForkInfo> {
        self.lock().forks.get(feed).map(|p| ForkInfo {
            seq: p.seq(),
            proof_offset: 0,
        })
    }

    fn entry_id(&self, feed: &FeedId, seq: u64) -> Result<Option<EntryId>, StoreError> {
        let inner = self.lock();
        let idx = seq.checked_sub(1).and_then(|i| usize::try_from(i).ok());
        Ok(idx
            .and_then(|i| inner.feeds.get(feed)?.get(i))
            .map(Entry::id))
    }

    fn feed_range<'a>(
        &'a self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a> {
        let entries: Vec<Entry> = self
            .lock()
            .feeds
            .get(feed)
            .map(|f| {
                f.iter()
                    .filter(|e| e.header.seq >= from && e.header.seq <= to)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Box::new(entries.into_iter().map(Ok))
    }

    fn ingest_checked(&self, page: CheckedEntries) -> Result<IngestReport, StoreError> {
        let page = if page.max_payload() == self.max_payload {
            page
        } else {
            CheckedEntries::new(page.into_entries(), self.max_payload)
        };
        let (entries, ids, verdicts) = page.into_parts();
        let mut report = IngestReport::default();
        let mut valid = Vec::new();
        for (i, v) in verdicts.into_iter().enumerate() {
            match v {
                Ok(()) => valid.push(i),
                Err(e) => report.rejected.push((i, e)),
            }
        }
        let dropped = |r: &IngestReport| r.rejected.iter().any(|(_, e)| !e.is_policy());
        if dropped(&report) {
            report.dropped = true;
            return Ok(report);
        }
        valid.sort_by_key(|&i| (entries[i].header.author, entries[i].header.seq));
        let mut inner = self.lock();
        let mut next = Inner {
            feeds: inner.feeds.clone(),
            forks: inner.forks.clone(),
        };
        let mut accepted = BTreeMap::new();
        for i in valid {
            let e = &entries[i];
            let h = &e.header;
            if let Some(fork) = next.forks.get(&h.author).filter(|p| h.seq >= p.seq()) {
                report.rejected.push((
                    i,
                    EntryError::FeedForked {
                        author: h.author,
                        fork_seq: fork.seq(),
                        seq: h.seq,
                    },
                ));
                continue;
            }
            let feed = next.feeds.entry(h.author).or_default();
            let head = head_of(feed);
            if h.seq <= head.map_or(0, |x| x.seq) {
                let idx = usize::try_from(h.seq - 1).unwrap_or(usize::MAX);
                let existing = feed.get(idx).map(Entry::signed_header);
                match existing {
                    Some(held) if held.header.id() == ids[i] => report.duplicates += 1,
                    Some(held) => {
                        if let Ok(proof) = ForkProof::new(held, e.signed_header()) {
                            next.forks.insert(h.author, proof.clone());
                            report.forks.push(proof);
                        }
                    }
                    None => report.rejected.push((
                        i,
                        EntryError::SeqGap {
                            expected: 1,
                            found: h.seq,
                        },
                    )),
                }
                continue;
            }
            if let Err(err) = validate_link(head.map(|x| (x.seq, x.id)), h) {
                report.rejected.push((i, err));
                continue;
            }
            feed.push(e.clone());
            report.accepted += 1;
            accepted.insert(h.author, h.seq);
        }
        if dropped(&report) {
            report.dropped = true;
            report.forks.clear();
            report.accepted = 0;
            return Ok(report);
        }
        *inner = next;
        report.new_heads = accepted.into_iter().collect();
        report.rejected.sort_by_key(|(i, _)| *i);
        Ok(report)
    }

    fn fork_proofs(&self, feeds: &[FeedId]) -> Result<Vec<ForkProof>, StoreError> {
        let inner = self.lock();
        Ok(feeds
            .iter()
            .filter_map(|f| inner.forks.get(f).cloned())
            .collect())
    }

    fn ingest_fork_proofs(&self, proofs: Vec<ForkProof>) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        Ok(proofs
            .into_iter()
            .map(|p| {
                let known = inner
                    .forks
                    .get(&p.author())
                    .is_some_and(|f| f.seq() <= p.seq());
                if !known {
                    inner.forks.insert(p.author(), p);
                }
                !known
            })
            .collect())
    }
}
