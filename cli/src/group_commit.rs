//! Group commit for appends that arrive at once: concurrent requests
//! (through the local API, each on its own blocking thread) queue to one
//! writer thread, which appends everything queued as one batch with one
//! fsync ([`Db::append_batch`]) and then answers each request with its own
//! entries. A request is acknowledged only once that batch returned, so an
//! acknowledged append is durable exactly as a lone one is.
//!
//! Each request stays all or nothing: if the combined batch fails (one
//! request's payload breaks a rule, a publishing hold, a store error),
//! nothing of it was written (see [`Db::append_batch`]), and the writer
//! appends each request of it alone, so each gets its own answer.
//!
//! The queue is bounded ([`QUEUE_REQUESTS`]): when it is full, callers
//! wait for room. A batch takes at most [`BATCH_PAYLOADS`] payloads and
//! [`BATCH_BYTES`] bytes (a request over those goes alone).

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use kappadb_core::{AppendError, Appended, Db};

/// Requests waiting for the writer, at most.
pub const QUEUE_REQUESTS: usize = 256;
/// Payloads in one combined batch, at most.
pub const BATCH_PAYLOADS: usize = 4096;
/// Payload bytes in one combined batch, at most.
pub const BATCH_BYTES: usize = 8 << 20;

type Answer = Result<Vec<Appended>, AppendError>;

struct Request {
    payloads: Vec<Vec<u8>>,
    answer: SyncSender<Answer>,
}

/// The queue and its writer thread; dropping it lets the writer finish
/// what is queued and joins it.
pub struct GroupCommit {
    /// `None` once dropping.
    queue: Mutex<Option<SyncSender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Start the writer thread for `db`.
    pub fn start(db: Db) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE_REQUESTS);
        let writer = std::thread::Builder::new()
            .name("kappa-append".into())
            .spawn(move || run(&db, &rx))?;
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Append `payloads` (in order, all or nothing) in the next batch;
    /// returns once they are durable, or why they were not appended.
    pub fn append(&self, payloads: Vec<Vec<u8>>) -> Answer {
        let (answer, answered) = sync_channel(1);
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(queue) = queue else {
            return Err(AppendError::Store(kappadb_core::StoreError::Poisoned));
        };
        if queue.send(Request { payloads, answer }).is_err() {
            return Err(AppendError::Store(kappadb_core::StoreError::Poisoned));
        }
        // The writer answers every request it takes, unless it panicked.
        answered
            .recv()
            .unwrap_or(Err(AppendError::Store(kappadb_core::StoreError::Poisoned)))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// The writer: take a request (waiting), then whatever else is queued up
/// to the batch bounds, append them together, answer each.
fn run(db: &Db, rx: &Receiver<Request>) {
    let mut next: Option<Request> = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let mut n_payloads = first.payloads.len();
        let mut n_bytes: usize = first.payloads.iter().map(Vec::len).sum();
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            let bytes: usize = r.payloads.iter().map(Vec::len).sum();
            if n_payloads + r.payloads.len() > BATCH_PAYLOADS || n_bytes + bytes > BATCH_BYTES {
                next = Some(r);
                break;
            }
            n_payloads += r.payloads.len();
            n_bytes += bytes;
            batch.push(r);
        }
        commit(db, batch);
    }
}

fn commit(db: &Db, mut batch: Vec<Request>) {
    if batch.len() == 1 {
        let r = batch.remove(0);
        let _ = r.answer.send(db.append_batch(r.payloads));
        return;
    }
    let lens: Vec<usize> = batch.iter().map(|r| r.payloads.len()).collect();
    let all: Vec<Vec<u8>> = batch
        .iter()
        .flat_map(|r| r.payloads.iter().cloned())
        .collect();
    match db.append_batch(all) {
        Ok(appended) => {
            // In queue order, each request its own entries.
            let mut appended = appended.into_iter();
            for (r, n) in batch.into_iter().zip(lens) {
                let _ = r.answer.send(Ok(appended.by_ref().take(n).collect()));
            }
        }
        Err(_) => {
            // Nothing of the batch was written: each request alone.
            for r in batch {
                let _ = r.answer.send(db.append_batch(r.payloads));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn db(dir: &std::path::Path) -> Db {
        Db::create(dir, kappadb_core::CreateOptions::default()).unwrap()
    }

    #[test]
    fn concurrent_requests_each_get_their_own_entries_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let db = db(tmp.path());
        let gc = Arc::new(GroupCommit::start(db.clone()).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..50u8 {
                        let payloads = vec![vec![t, i, 0], vec![t, i, 1]];
                        let got = gc.append(payloads).unwrap();
                        assert_eq!(got.len(), 2);
                        assert_eq!(got[1].seq, got[0].seq + 1);
                        mine.extend(got.iter().map(|a| (a.seq, vec![t, i])));
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().unwrap());
        }
        drop(gc);
        all.sort();
        assert_eq!(all.len(), 8 * 50 * 2);
        for (k, (seq, tag)) in all.iter().enumerate() {
            assert_eq!(*seq, k as u64 + 1, "no seq lost or repeated");
            let e = db.get(&db.feed_id(), *seq).unwrap().unwrap();
            assert_eq!(&e.payload.bytes().unwrap()[..2], &tag[..]);
        }
    }

    #[test]
    fn a_bad_request_in_a_batch_fails_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let db = db(tmp.path());
        // Three requests in one batch; the middle one is over the payload
        // limit, so the combined append fails and each goes alone.
        let big = vec![0u8; 2 << 20];
        let payloads = [
            vec![b"a".to_vec()],
            vec![b"b".to_vec(), big],
            vec![b"c".to_vec(), b"d".to_vec()],
        ];
        let mut answers = Vec::new();
        let batch = payloads
            .into_iter()
            .map(|payloads| {
                let (answer, answered) = sync_channel(1);
                answers.push(answered);
                Request { payloads, answer }
            })
            .collect();
        commit(&db, batch);
        let got: Vec<Answer> = answers.iter().map(|a| a.recv().unwrap()).collect();
        assert!(
            matches!(got[1], Err(AppendError::Rejected(_))),
            "{:?}",
            got[1]
        );
        let seqs = |a: &Answer| {
            a.as_ref()
                .unwrap()
                .iter()
                .map(|a| a.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&got[0]), [1]);
        assert_eq!(seqs(&got[2]), [2, 3]);
        assert_eq!(db.head(&db.feed_id()).unwrap().seq, 3);
        let e = db.get(&db.feed_id(), 2).unwrap().unwrap();
        assert_eq!(e.payload.bytes().unwrap(), b"c");
    }

    #[test]
    fn a_batch_answers_each_request_with_its_own_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let db = db(tmp.path());
        let mut answers = Vec::new();
        let batch = (0..3u8)
            .map(|i| {
                let (answer, answered) = sync_channel(1);
                answers.push(answered);
                let payloads = (0..=i).map(|j| vec![i, j]).collect();
                Request { payloads, answer }
            })
            .collect();
        commit(&db, batch);
        for (i, a) in answers.iter().enumerate() {
            let got = a.recv().unwrap().unwrap();
            assert_eq!(got.len(), i + 1);
            for (j, appended) in got.iter().enumerate() {
                let e = db.get(&db.feed_id(), appended.seq).unwrap().unwrap();
                assert_eq!(e.payload.bytes().unwrap(), [i as u8, j as u8]);
            }
        }
    }
}
