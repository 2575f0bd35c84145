//! The two signals the indexer's threads wait on, each a
//! [`kappadb_core::Signal`] (a value threads change and wait on with a
//! deadline; the log's [`kappadb_core::Watch`] waits on one too).
//!
//! [`Wake`] is what the background thread sleeps on between rounds (the
//! log's end moved, a view was registered, the indexer stops);
//! [`Progress`] counts commits and swaps, for callers of
//! [`super::Indexer::wait_until_caught_up`] waiting on the background
//! thread.

use std::time::{Duration, Instant};

use kappadb_core::Signal;

/// What the background thread waits for.
#[derive(Default)]
struct WakeState {
    notified: bool,
    stopped: bool,
}

/// Wakes the background thread.
#[derive(Default)]
pub(super) struct Wake(Signal<WakeState>);

impl Wake {
    /// There may be work: run a round.
    pub(super) fn notify(&self) {
        self.0.update(|s| s.notified = true);
    }

    /// Stop the thread.
    pub(super) fn stop(&self) {
        self.0.update(|s| s.stopped = true);
    }

    /// Whether the thread was told to stop.
    pub(super) fn stopped(&self) -> bool {
        self.0.read(|s| s.stopped)
    }

    /// Wait until notified, stopped or `timeout`; returns `true` if stopped.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let mut state = self
            .0
            .wait_until(Instant::now() + timeout, |s| s.notified || s.stopped);
        state.notified = false;
        state.stopped
    }
}

/// Commits and swaps, for waiters.
#[derive(Default)]
pub(super) struct Progress(Signal<u64>);

impl Progress {
    /// Something committed or swapped.
    pub(super) fn notify(&self) {
        self.0.update(|count| *count += 1);
    }

    /// The count now, to wait on.
    pub(super) fn current(&self) -> u64 {
        self.0.read(|count| *count)
    }

    /// Wait until the count is no longer `seen`, or `until`.
    pub(super) fn wait(&self, seen: u64, until: Instant) {
        drop(self.0.wait_until(until, |count| *count != seen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_until_returns_on_change_or_deadline() {
        let progress = Arc::new(Progress::default());
        let start = Instant::now();
        progress.wait(0, start + Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(20));
        let p = progress.clone();
        let t = std::thread::spawn(move || p.notify());
        progress.wait(0, Instant::now() + Duration::from_secs(30));
        assert_eq!(progress.current(), 1);
        t.join().unwrap();

        let wake = Wake::default();
        wake.notify();
        assert!(!wake.wait(Duration::from_secs(30)), "notified, not stopped");
        wake.stop();
        assert!(wake.wait(Duration::from_secs(30)) && wake.stopped());
    }
}
