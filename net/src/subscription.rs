//! Following the log from async code: [`Subscription`], the tokio
//! counterpart of [`kappadb_core::Tail`].
//!
//! A subscription registers a [`kappadb_core::Watch`] callback that pokes a
//! [`tokio::sync::Notify`] after every durable write, and awaits that
//! instead of blocking a thread. Records are read with a core [`Tail`] on
//! tokio's blocking pool (`spawn_blocking`), up to [`BATCH_RECORDS`] records
//! or [`BATCH_BYTES`] bytes at a time, and handed out from a buffer. The
//! reads are local file reads and usually quick, but catching up from an
//! old offset can mean many megabytes, and starting inside a record scans a
//! segment: on the blocking pool neither can stall the runtime's worker
//! threads, and batching keeps the hand-offs few. The crate documentation
//! has an example.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use kappadb_core::{Db, ListenerId, LogRecord, StoreError, Tail};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most records read per trip to the blocking pool.
pub const BATCH_RECORDS: usize = 256;
/// Most bytes of records read per trip to the blocking pool (a batch stops
/// after the record that reaches it).
pub const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Subscriptions of this process reading the log at once, at most.
pub const READERS: usize = 8;
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(READERS);

type Item = Result<LogRecord, StoreError>;

/// The log's records from an offset on, then each new record as it becomes
/// durable, for async code: [`Subscription::next`] waits without blocking
/// the runtime. The async counterpart of [`kappadb_core::Tail`]; it needs a
/// tokio runtime (it uses `spawn_blocking`).
///
/// `next` is cancel-safe: in `tokio::select!`, a branch that loses the race
/// loses no record. A read error is yielded as an item, and the
/// subscription ends after it (`None`). Dropping the subscription removes
/// its watch callback. It holds a [`Db`] clone, so the database stays open
/// while it lives.
pub struct Subscription {
    db: Db,
    /// Pokes `notify` after every durable write.
    listener: ListenerId,
    notify: Arc<Notify>,
    /// The reader; `None` while it is out on the blocking pool.
    tail: Option<Tail>,
    /// The read in flight, which returns the tail.
    pending: Option<JoinHandle<(Tail, Vec<Item>)>>,
    /// Records read and not yet returned.
    buffer: VecDeque<Item>,
    /// Where the buffer ends: the tail's offset when it last came back.
    read_to: u64,
    /// An error was returned, or the runtime is shutting down.
    done: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("offset", &self.offset())
            .field("buffered", &self.buffer.len())
            .field("done", &self.done)
            .finish()
    }
}

impl Subscription {
    /// Follow `db`'s log from the first record boundary at or after
    /// `offset` (as [`Db::tail`] does).
    pub fn new(db: Db, offset: u64) -> Self {
        let notify = Arc::new(Notify::new());
        let poke = notify.clone();
        // Runs on the writing thread: only wake the subscriber. A wake-up
        // with nobody waiting is kept until the next wait.
        let listener = db.watch().subscribe(move |_end| poke.notify_one());
        Self {
            tail: Some(db.tail(offset)),
            db,
            listener,
            notify,
            pending: None,
            buffer: VecDeque::new(),
            read_to: offset,
            done: false,
        }
    }

    /// Where the next record will be read: just past the last record
    /// returned. Store it and pass it to [`Subscription::new`] (or
    /// [`Db::tail`]) to resume without repeats or gaps.
    pub fn offset(&self) -> u64 {
        match self.buffer.front() {
            Some(Ok(rec)) => rec.offset,
            _ => self.read_to,
        }
    }

    /// The next record, waiting until one is durable. `None` only after an
    /// error was returned, or when the runtime is shutting down.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                if item.is_err() {
                    self.done = true;
                    self.buffer.clear();
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            if let Some(read) = &mut self.pending {
                // Awaiting a `&mut JoinHandle` is cancel-safe: if this
                // future is dropped, the read stays pending for the next
                // call.
                let res = read.await;
                self.pending = None;
                match res {
                    Ok((tail, batch)) => {
                        self.read_to = tail.offset();
                        self.tail = Some(tail);
                        self.buffer.extend(batch);
                    }
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => {
                        // Cancelled: the runtime is shutting down.
                        self.done = true;
                    }
                }
                continue;
            }
            let Some(offset) = self.tail.as_ref().map(Tail::offset) else {
                // Neither here nor in flight: cannot happen, but end
                // rather than wait forever.
                self.done = true;
                continue;
            };
            if self.db.log_end() > offset {
                // At most READERS subscriptions read at once, so a hundred
                // subscribers woken by one append do not become a hundred
                // blocking threads. Waiting here is cancel-safe: the tail
                // is taken only once the permit is held.
                let Ok(permit) = READS.acquire().await else {
                    self.done = true;
                    continue;
                };
                let Some(tail) = self.tail.take() else {
                    self.done = true;
                    continue;
                };
                self.pending = Some(tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    read_batch(tail)
                }));
                continue;
            }
            // A write between the check above and this wait left a permit
            // (`notify_one`), so the wake-up is not lost.
            self.notify.notified().await;
        }
    }

    /// This subscription as a [`Stream`] (for `StreamExt` combinators).
    pub fn into_stream(self) -> impl Stream<Item = Item> + Send + 'static {
        futures::stream::unfold(self, |mut sub| async move {
            sub.next().await.map(|item| (item, sub))
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.db.watch().unsubscribe(self.listener);
    }
}

/// Read what is durable from `tail`, up to a batch, on a blocking thread.
fn read_batch(mut tail: Tail) -> (Tail, Vec<Item>) {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while batch.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
        match tail.try_next() {
            Some(Ok(rec)) => {
                bytes += rec.next_offset - rec.offset;
                batch.push(Ok(rec));
            }
            Some(Err(e)) => {
                batch.push(Err(e));
                break;
            }
            None => break,
        }
    }
    (tail, batch)
}

/// Follow `db`'s log from `offset` as a [`Stream`]: a
/// [`Subscription`] in stream form.
pub fn tail_stream(db: Db, offset: u64) -> impl Stream<Item = Item> + Send + 'static {
    Subscription::new(db, offset).into_stream()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use kappadb_core::CreateOptions;

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    fn payload(item: Option<Item>) -> Vec<u8> {
        item.unwrap()
            .unwrap()
            .entry()
            .unwrap()
            .payload
            .bytes()
            .unwrap()
            .to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn existing_records_then_a_new_append_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
        db.append_batch(vec![b"a".to_vec(), b"b".to_vec()]).unwrap();

        let mut sub = Subscription::new(db.clone(), 0);
        assert_eq!(payload(sub.next().await), b"a");
        assert_eq!(payload(sub.next().await), b"b");
        assert_eq!(sub.offset(), db.log_end());

        // Nothing new: `next` waits, and losing a race (here, to a timer)
        // loses nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sub.next())
                .await
                .is_err()
        );
        let writer = db.clone();
        let appended = tokio::task::spawn_blocking(move || writer.append(b"live".to_vec()))
            .await
            .unwrap()
            .unwrap();
        let rec = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rec.offset, appended.offset);
        assert_eq!(rec.entry().unwrap().payload.bytes(), Some(&b"live"[..]));
        assert_eq!(sub.offset(), db.log_end());

        // Resuming from the offset, as a stream: only what is new.
        let resume = sub.offset();
        let writer = db.clone();
        tokio::task::spawn_blocking(move || writer.append(b"later".to_vec()))
            .await
            .unwrap()
            .unwrap();
        let mut stream = Box::pin(tail_stream(db.clone(), resume));
        let next = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
        assert_eq!(payload(next), b"later");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_offsets_and_unsubscribe_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
        let many: Vec<Vec<u8>> = (0..BATCH_RECORDS + 10)
            .map(|i| format!("p{i}").into_bytes())
            .collect();
        let appended = db.append_batch(many).unwrap();

        // From inside the first record: the second one comes first, and
        // more records than one batch holds all arrive, in order.
        assert_eq!(appended[0].offset, 0);
        let mut sub = Subscription::new(db.clone(), 1);
        assert_eq!(sub.offset(), 1);
        for a in &appended[1..] {
            let rec = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(rec.offset, a.offset);
            assert_eq!(sub.offset(), rec.next_offset);
        }
        assert_eq!(sub.offset(), db.log_end());

        // The watch callback holds one reference to the Notify; dropping
        // the subscription removes the callback.
        let notify = sub.notify.clone();
        assert_eq!(Arc::strong_count(&notify), 3);
        drop(sub);
        assert_eq!(Arc::strong_count(&notify), 1);
    }
}
