//! Following the log: one implementation for `kappa log --follow` and
//! `timeline --follow` on a database this process holds, and for the
//! API's event stream.
//!
//! Both read [`records`]: a [`kappadb_net::Subscription`], which waits for
//! the database's watch to announce a durable write (no polling) and reads
//! on tokio's blocking pool, filtered by feed and ended by a stop signal.
//! The API serves it on its own runtime; [`blocking`] drives it on the
//! calling thread for a command.

use anyhow::Context;
use futures::{Stream, StreamExt};
use kappadb_core::{Db, FeedId, LogRecord, StoreError};
use kappadb_net::Subscription;
use tokio::sync::watch;

use crate::ops::record_author;

/// Wait until `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The log's records from the first record boundary at or after `since`,
/// then each new one as it becomes durable; only `feed`'s if one is
/// given. The stream ends once `stop` is true (or its sender is dropped),
/// and after a read error, which is its last item.
pub fn records(
    db: Db,
    since: u64,
    feed: Option<FeedId>,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = Result<LogRecord, StoreError>> + Send + 'static {
    let sub = Subscription::new(db, since);
    futures::stream::unfold((sub, stop), move |(mut sub, mut stop)| async move {
        loop {
            let item = tokio::select! {
                biased;
                () = stopped(&mut stop) => return None,
                item = sub.next() => item?,
            };
            if let Ok(rec) = &item
                && feed.is_some_and(|f| Some(f) != record_author(&rec.body))
            {
                continue;
            }
            return Some((item, (sub, stop)));
        }
    })
}

/// Follow on the calling thread: call `f` with each of [`records`] until
/// `f` returns false, `stop` is set, or a read fails. The subscription runs
/// on a small runtime of its own for as long as this takes.
pub fn blocking(
    db: Db,
    since: u64,
    feed: Option<FeedId>,
    stop: watch::Receiver<bool>,
    f: &mut dyn FnMut(LogRecord) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let mut records = std::pin::pin!(records(db, since, feed, stop));
        while let Some(rec) = records.next().await {
            if !f(rec?)? {
                break;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kappadb_core::CreateOptions;

    use super::*;

    #[test]
    fn follows_filters_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
        db.append(b"1".to_vec()).unwrap();
        let (stop_tx, stop) = watch::channel(false);
        // A writer appends while the follower waits; the follower stops
        // itself after the third record, then a stop ends a second follow.
        let writer = db.clone();
        let appends = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            writer.append(b"2".to_vec()).unwrap();
            writer.append(b"3".to_vec()).unwrap();
        });
        let mut seen = Vec::new();
        blocking(db.clone(), 0, None, stop.clone(), &mut |rec| {
            seen.push(rec.entry().unwrap().payload.bytes().unwrap().to_vec());
            Ok(seen.len() < 3)
        })
        .unwrap();
        appends.join().unwrap();
        assert_eq!(seen, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);

        // Another feed's records only: none here, so it waits until the
        // stop.
        let other = kappadb_core::SigningKey::generate().unwrap().feed_id();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            stop_tx.send_replace(true);
        });
        blocking(db, 0, Some(other), stop, &mut |_| {
            panic!("no record of that feed")
        })
        .unwrap();
        stopper.join().unwrap();
    }
}
