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
//!
//! [`Signal`] is the waiting underneath: a value threads change and wait
//! on with a deadline. The watch keeps the log end in one; the views'
//! indexer keeps its wake-ups and progress in others.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Listener = Arc<dyn Fn(u64) + Send + Sync>;

/// Identifies a registered callback, for [`Watch::unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// A value behind a mutex, with a condvar woken on every change: threads
/// change it ([`Signal::update`]) and wait until it says what they wait
/// for, or a deadline passes ([`Signal::wait_until`]). A thread that
/// panicked holding it does not poison it.
#[derive(Debug, Default)]
pub struct Signal<T> {
    value: Mutex<T>,
    changed: Condvar,
}

impl<T> Signal<T> {
    /// A signal holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            value: Mutex::new(value),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the value, then wake every waiter.
    pub fn update(&self, change: impl FnOnce(&mut T)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Read the value.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.lock())
    }

    /// Block until `done(value)` holds or `deadline` passes; returns the
    /// value, still locked, either way.
    pub fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&T) -> bool,
    ) -> MutexGuard<'_, T> {
        let mut value = self.lock();
        while !done(&value) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            value = self
                .changed
                .wait_timeout(value, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        value
    }
}

/// The committed end of the log, observable.
pub struct Watch {
    end: Signal<u64>,
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
            end: Signal::new(end),
            listeners: Mutex::new((0, Vec::new())),
        }
    }

    /// The offset just past the last durable record.
    pub fn end(&self) -> u64 {
        self.end.read(|end| *end)
    }

    /// Move the end forward to `end` (never back: writers that finish out
    /// of order leave the largest) and wake the threads waiting for it.
    /// Called with the writer lock held; runs no callback.
    pub(crate) fn advance(&self, end: u64) {
        self.end.update(|cur| *cur = (*cur).max(end));
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
        *self
            .end
            .wait_until(Instant::now() + timeout, |end| *end > offset)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_wait_ends_on_the_change_waited_for_or_the_deadline() {
        let signal = Arc::new(Signal::new(0u64));
        let start = Instant::now();
        assert_eq!(
            *signal.wait_until(start + Duration::from_millis(20), |v| *v > 0),
            0
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        let s = signal.clone();
        let writer = std::thread::spawn(move || (1..=3).for_each(|_| s.update(|v| *v += 1)));
        let seen = *signal.wait_until(Instant::now() + Duration::from_secs(30), |v| *v == 3);
        assert_eq!(seen, 3);
        writer.join().unwrap();
        assert_eq!(signal.read(|v| *v), 3);
    }
}
