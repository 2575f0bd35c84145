//! Waiting for new log records without an async runtime.
//!
//! The database publishes its committed log end here after every write. A
//! thread can block until the end moves past an offset ([`Watch::wait_past`]),
//! and async code registers a callback ([`Watch::subscribe`]) that, for
//! example, wakes a `tokio::sync::Notify`.
//!
//! Callbacks run on the writing thread after the write is durable and
//! after the database has released its writer lock: a callback may read
//! the database and may even append (that append runs the callbacks again
//! when it is done, so a callback that always appends never stops). The
//! writer's caller waits for the callbacks, so they should be quick.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Listener = Arc<dyn Fn(u64) + Send + Sync>;

/// Identifies a registered callback, for [`Watch::unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// The committed end of the log, observable.
pub struct Watch {
    end: Mutex<u64>,
    cond: Condvar,
    listeners: Mutex<(u64, Vec<(ListenerId, Listener)>)>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("end", &self.end()).finish()
    }
}

impl Watch {
    pub(crate) fn new(end: u64) -> Self {
        Self {
            end: Mutex::new(end),
            cond: Condvar::new(),
            listeners: Mutex::new((0, Vec::new())),
        }
    }

    /// The offset just past the last durable record.
    pub fn end(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move the end forward to `end` (never back: writers that finish out
    /// of order leave the largest) and wake the threads waiting for it.
    /// Called with the writer lock held; runs no callback.
    pub(crate) fn advance(&self, end: u64) {
        {
            let mut cur = self.end.lock().unwrap_or_else(|e| e.into_inner());
            *cur = (*cur).max(end);
        }
        self.cond.notify_all();
    }

    /// Run every callback with the current end. Called after the writer
    /// lock is released.
    pub(crate) fn notify(&self) {
        let end = self.end();
        let listeners: Vec<Listener> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for l in listeners {
            l(end);
        }
    }

    /// Block until the log end is greater than `offset`, or `timeout`
    /// passes. Returns the end seen last.
    pub fn wait_past(&self, offset: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut cur = self.end.lock().unwrap_or_else(|e| e.into_inner());
        while *cur <= offset {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            cur = self
                .cond
                .wait_timeout(cur, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *cur
    }

    /// Call `f(new_end)` after every durable write, on the writing thread,
    /// with no database lock held (see the module docs).
    pub fn subscribe(&self, f: impl Fn(u64) + Send + Sync + 'static) -> ListenerId {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.0 += 1;
        let id = ListenerId(l.0);
        l.1.push((id, Arc::new(f)));
        id
    }

    /// Remove a callback.
    pub fn unsubscribe(&self, id: ListenerId) {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.1.retain(|(i, _)| *i != id);
    }
}
