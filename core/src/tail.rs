//! Following the log: [`Tail`] reads the records already there, then waits
//! for new ones.
//!
//! A tail is a blocking iterator. At the end of the log it sleeps on the
//! database's [`crate::Watch`] (a condition variable signalled after every
//! durable write) and wakes when a new record is durable: nothing polls.
//! Async code uses `kappadb_net::Subscription` instead, which builds on the
//! same pieces without blocking its runtime.
//!
//! ```
//! use std::time::Duration;
//! use kappadb_core::{CreateOptions, Db};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open_or_create(dir.path(), CreateOptions::default()).unwrap();
//! db.append(b"first".to_vec()).unwrap();
//!
//! let mut tail = db.tail(0);
//! let rec = tail.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
//! assert_eq!(rec.entry().unwrap().payload.bytes(), Some(&b"first"[..]));
//! // Nothing new yet: the timed wait gives up.
//! assert!(tail.next_timeout(Duration::from_millis(10)).is_none());
//! // Save this to resume after a restart with `db.tail(saved)`.
//! let saved = tail.offset();
//! assert_eq!(saved, db.log_end());
//! ```

use std::iter::FusedIterator;
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::error::StoreError;
use crate::log::{LogIter, LogRecord};

/// The longest single sleep on the watch; the tail re-checks the log end
/// after each (a wake-up normally comes much sooner, from the write).
const WAIT_SLICE: Duration = Duration::from_secs(60);

/// An iterator over the log's records from an offset on, that waits for
/// new records at the end of the log instead of stopping. Made by
/// [`Db::tail`].
///
/// - [`Iterator::next`] blocks until a record is durable; `for rec in
///   db.tail(0)` prints everything, then follows live.
/// - [`Tail::next_timeout`] waits at most a given time; [`Tail::try_next`]
///   does not wait.
/// - [`Tail::offset`] is where the next record will be read: store it and
///   pass it to [`Db::tail`] later to resume without repeats or gaps.
///
/// A read error is yielded as an item; the tail then ends (`None` from
/// then on) and [`Tail::offset`] stays at the record that failed. The tail
/// holds a [`Db`] clone, so the database stays open while it lives.
pub struct Tail {
    db: Db,
    /// Where the next record will be read. Until `aligned`, the offset as
    /// given, which may fall inside a record.
    offset: u64,
    aligned: bool,
    /// A reader over the records that were durable when it was made; a new
    /// one is made when it runs out and the log has grown.
    iter: Option<LogIter>,
    failed: bool,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("offset", &self.offset)
            .field("aligned", &self.aligned)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Tail {
    /// A tail of `db` from the first record boundary at or after `offset`
    /// (see [`Db::record_boundary`]). An offset past the log's end starts
    /// at the first record that begins at or after it, once there is one.
    pub fn new(db: Db, offset: u64) -> Self {
        Self {
            db,
            offset,
            aligned: offset == 0,
            iter: None,
            failed: false,
        }
    }

    /// Where the next record will be read: just past the last record
    /// returned. Before the first read this may be the offset given (inside
    /// a record, or past the end); resuming from it is still exact.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record if one is durable already; `None` at the end of the
    /// log (or after an error), without waiting.
    pub fn try_next(&mut self) -> Option<Result<LogRecord, StoreError>> {
        if self.failed {
            return None;
        }
        let end = self.db.log_end();
        if !self.aligned {
            if self.offset > end {
                return None;
            }
            if self.offset < end {
                match self.db.record_boundary(self.offset) {
                    Ok(boundary) => self.offset = boundary,
                    Err(e) => return Some(self.fail(e)),
                }
            }
            self.aligned = true;
        }
        if self.offset >= end {
            return None;
        }
        let reuse = self
            .iter
            .as_ref()
            .is_some_and(|it| it.offset() == self.offset && it.offset() < it.end());
        if !reuse {
            self.iter = Some(self.db.log_iter(self.offset));
        }
        match self.iter.as_mut().and_then(Iterator::next)? {
            Ok(rec) => {
                self.offset = rec.next_offset;
                Some(Ok(rec))
            }
            Err(e) => Some(self.fail(e)),
        }
    }

    /// The next record, waiting at most `timeout` for one to become
    /// durable. `None` when nothing arrived in time (or after an error).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<LogRecord, StoreError>> {
        // No deadline when `timeout` is too long to represent.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(item) = self.try_next() {
                return Some(item);
            }
            if self.failed {
                return None;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => WAIT_SLICE,
            };
            if left.is_zero() {
                return None;
            }
            // Returns once the log end passes `offset` (the next record is
            // durable), or after the slice; either way, check again.
            self.db.wait_past(self.offset, left.min(WAIT_SLICE));
        }
    }

    fn fail(&mut self, e: StoreError) -> Result<LogRecord, StoreError> {
        self.failed = true;
        self.iter = None;
        Err(e)
    }
}

impl Iterator for Tail {
    type Item = Result<LogRecord, StoreError>;

    /// The next record, blocking until one is durable. `None` only after an
    /// error was returned.
    fn next(&mut self) -> Option<Self::Item> {
        self.next_timeout(Duration::MAX)
    }
}

impl FusedIterator for Tail {}
