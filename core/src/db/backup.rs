//! Backups, restores, and the publishing hold that keeps a restored copy
//! from forking its own feed.
//!
//! A feed is a chain: if a database is copied, the original appends on,
//! and the copy comes back later and appends too, the two appends share a
//! seq and every peer marks the feed forked, for good. So a database made
//! by [`Db::restore`] (or opened from a [`Db::backup`] directory) holds its
//! appends until it has synced with a peer, which brings its own feed up
//! to whatever the network holds ([`PublishHold::Restored`]); and any
//! database that hears from a peer that its own feed is longer elsewhere
//! holds appends until it has caught up ([`PublishHold::Behind`]).
//!
//! The hold of a restored database is the file `restored.json` in its
//! directory, so it survives restarts until a sync (or the user, with
//! [`Db::release_hold`]) lifts it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Db, now_ms};
use crate::dir::{files, io_err};
use crate::error::StoreError;
use crate::log::sync_dir;

/// The file that marks a restored database's hold.
pub const RESTORED: &str = "restored.json";

/// Why this database does not append yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishHold {
    /// Restored from a backup: its own feed may have gone on elsewhere.
    #[error(
        "this database was restored from a backup (own feed at seq {seq_at_backup} then), and its own feed may have gone on elsewhere since: appending now could fork it; sync with a peer first (`kappa sync ADDR`, or `kappa serve`), or, if no copy of this database appended after the backup, lift the hold with `kappa restore --release --i-know-this-is-the-newest`"
    )]
    Restored {
        /// The own feed's length when the backup was made.
        seq_at_backup: u64,
    },
    /// A peer holds this database's own feed further than it does.
    #[error(
        "a peer holds this database's own feed up to seq {remote}, this copy only up to {local}: appending now would fork it; wait for the sync to fetch it (or lift the hold with `kappa restore --release --i-know-this-is-the-newest`)"
    )]
    Behind {
        /// The own feed's length here.
        local: u64,
        /// The length a peer reported.
        remote: u64,
    },
}

/// The hold's state (in [`super::Inner`]).
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Restored and not synced since: the own feed's length at the backup.
    pub(super) restored: Option<u64>,
    /// The longest own-feed length a peer reported.
    pub(super) remote_seq: u64,
}

/// What `restored.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The own feed's length when the backup was made.
    seq: u64,
    /// The log's end in the backup.
    log_end: u64,
    /// When the backup was made (ms since the epoch).
    made_ms: u64,
}

/// What [`Db::backup`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup's directory.
    pub dest: PathBuf,
    /// Log bytes copied (the log's end when the backup was taken).
    pub log_bytes: u64,
    /// The own feed's length in the backup.
    pub own_seq: u64,
    /// Files written.
    pub files: usize,
}

/// The restored hold recorded in `dir`, if any. A marker that does not
/// decode still holds (with seq 0): the hold errs on the safe side.
pub(super) fn load_restored(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(RESTORED);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice::<Marker>(&bytes).map_or(0, |m| m.seq),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// Copy the first `len` bytes of `from` (all of it if `None`) to `to`,
/// keeping its permissions, and fsync it.
fn copy_synced(from: &Path, to: &Path, len: Option<u64>) -> Result<(), StoreError> {
    let src = File::open(from).map_err(io_err(from))?;
    let perms = src.metadata().map_err(io_err(from))?.permissions();
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err(to))?;
    let mut reader: Box<dyn Read> = match len {
        Some(n) => Box::new(src.take(n)),
        None => Box::new(src),
    };
    let copied = std::io::copy(&mut reader, &mut dst).map_err(io_err(to))?;
    if let Some(n) = len
        && copied != n
    {
        return Err(StoreError::Io {
            path: from.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes where {n} were expected"),
            ),
        });
    }
    dst.set_permissions(perms)
        .and_then(|()| dst.sync_all())
        .map_err(io_err(to))
}

/// A sibling of `dest` to build into, renamed onto `dest` when complete.
fn staging_for(dest: &Path) -> Result<PathBuf, StoreError> {
    let name = dest
        .file_name()
        .ok_or_else(|| StoreError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the destination has no file name",
            ),
        })?
        .to_string_lossy()
        .into_owned();
    Ok(dest.with_file_name(format!(".{name}.partial")))
}

/// Refuse a destination that exists and is not an empty directory.
fn check_dest(dest: &Path) -> Result<(), StoreError> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::AlreadyExists {
                    dir: dest.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(dest, e)),
    }
}

/// Check `dest`, then make an empty staging directory beside it (a
/// leftover of an interrupted attempt is removed) with its `log/`.
/// Returns both paths.
fn start_staging(dest: &Path) -> Result<(PathBuf, PathBuf), StoreError> {
    check_dest(dest)?;
    let staging = staging_for(dest)?;
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let log_dir = staging.join(files::LOG);
    fs::create_dir_all(&log_dir).map_err(io_err(&log_dir))?;
    Ok((staging, log_dir))
}

/// Move the finished staging directory onto `dest` and make it durable.
fn publish(staging: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        // An empty directory (checked before): rename replaces it.
        fs::remove_dir(dest).map_err(io_err(dest))?;
    }
    fs::rename(staging, dest).map_err(io_err(dest))?;
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The segment files of a log directory (plain and compacted), sorted.
fn log_files(log: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(log).map_err(io_err(log))? {
        let path = entry.map_err(io_err(log))?.path();
        if path.extension().is_some_and(|x| x == "seg" || x == "cseg") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Db {
    /// Write a consistent copy of this database to `dest` (which must not
    /// exist, or be empty): its log up to the last durable record, its
    /// keys and config, and a `restored.json` hold, so that a database
    /// opened from the copy does not append before it has synced. The
    /// index and views are derived and not copied; opening the copy
    /// rebuilds them. Appends wait while the copy is made.
    pub fn backup(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        let (staging, log_dir) = start_staging(dest)?;
        let mut count = 0;
        // The writer lock: no record, rewrite or compaction moves under us.
        let writer = self.writer();
        let end = writer.log.end();
        let own_seq = self.head(&self.feed_id()).map_or(0, |h| h.seq);
        let starts = self.inner.segments.starts();
        for (i, start) in starts.iter().enumerate() {
            let seg = self.inner.segments.segment(*start)?;
            let Some(name) = seg.path.file_name() else {
                continue;
            };
            // The active segment: its records, not its preallocated zeros.
            let len = (i + 1 == starts.len() && seg.compact.is_none())
                .then(|| end.saturating_sub(*start));
            copy_synced(&seg.path, &log_dir.join(name), len)?;
            count += 1;
        }
        drop(writer);
        for name in [files::CONFIG, files::SECRET_KEY, files::NETWORK_KEY] {
            copy_synced(&self.inner.dir.join(name), &staging.join(name), None)?;
            count += 1;
        }
        let marker = Marker {
            seq: own_seq,
            log_end: end,
            made_ms: now_ms(),
        };
        write_synced(
            &staging.join(RESTORED),
            &serde_json::to_vec_pretty(&marker).unwrap_or_default(),
        )?;
        count += 1;
        sync_dir(&log_dir)?;
        sync_dir(&staging)?;
        publish(&staging, dest)?;
        Ok(BackupReport {
            dest: dest.to_path_buf(),
            log_bytes: end,
            own_seq,
            files: count,
        })
    }

    /// Restore the backup in `src` (from [`Db::backup`], or any copy of a
    /// stopped database) into `dest`, which must not hold a database, and
    /// open it. The restored database holds its appends until it has
    /// synced with a peer ([`PublishHold::Restored`]).
    pub fn restore(src: &Path, dest: &Path) -> Result<Db, StoreError> {
        for name in [
            files::CONFIG,
            files::SECRET_KEY,
            files::NETWORK_KEY,
            files::LOG,
        ] {
            if !src.join(name).exists() {
                return Err(StoreError::NotADatabase {
                    dir: src.to_path_buf(),
                });
            }
        }
        let (staging, log_dir) = start_staging(dest)?;
        for path in log_files(&src.join(files::LOG))? {
            if let Some(name) = path.file_name() {
                copy_synced(&path, &log_dir.join(name), None)?;
            }
        }
        for name in [files::CONFIG, files::SECRET_KEY, files::NETWORK_KEY] {
            copy_synced(&src.join(name), &staging.join(name), None)?;
        }
        // Always hold, even for a copy that did not come with a marker.
        let marker = match fs::read(src.join(RESTORED)) {
            Ok(bytes) => bytes,
            Err(_) => serde_json::to_vec_pretty(&Marker {
                seq: 0,
                log_end: 0,
                made_ms: now_ms(),
            })
            .unwrap_or_default(),
        };
        write_synced(&staging.join(RESTORED), &marker)?;
        sync_dir(&log_dir)?;
        sync_dir(&staging)?;
        publish(&staging, dest)?;
        Db::open(dest)
    }

    /// Why appends are held, if they are.
    pub fn publish_hold(&self) -> Option<PublishHold> {
        let holds = self.holds();
        if let Some(seq_at_backup) = holds.restored {
            return Some(PublishHold::Restored { seq_at_backup });
        }
        let local = self.head(&self.feed_id()).map_or(0, |h| h.seq);
        (holds.remote_seq > local).then_some(PublishHold::Behind {
            local,
            remote: holds.remote_seq,
        })
    }

    /// A peer reported `feed` at length `seq`. If `feed` is this
    /// database's own and longer there, appends hold until it is caught
    /// up here (or a sync completes: a peer that claims more than it
    /// holds cannot hold appends for longer than that).
    pub fn note_remote_head(&self, feed: &crate::FeedId, seq: u64) {
        if *feed != self.feed_id() {
            return;
        }
        let local = self.head(feed).map_or(0, |h| h.seq);
        let mut holds = self.holds();
        if seq > local && seq > holds.remote_seq {
            tracing::info!(
                local,
                remote = seq,
                "a peer holds this database's own feed further; appends wait until it is fetched"
            );
            holds.remote_seq = seq;
        }
    }

    /// A sync with a peer completed: this database holds everything that
    /// peer had of its own feed, so the hold of a restore is lifted.
    /// Returns whether a hold was lifted.
    pub fn note_synced(&self) -> Result<bool, StoreError> {
        let was_held = self.publish_hold().is_some();
        self.clear_holds()?;
        if was_held {
            tracing::info!("synced with a peer: appends are no longer held");
        }
        Ok(was_held)
    }

    /// Lift any hold: the user vouches that no other copy of this
    /// database appended to its feed.
    pub fn release_hold(&self) -> Result<(), StoreError> {
        self.clear_holds()
    }

    fn clear_holds(&self) -> Result<(), StoreError> {
        let mut holds = self.holds();
        holds.remote_seq = 0;
        if holds.restored.is_some() {
            let path = self.inner.dir.join(RESTORED);
            match fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.inner.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
            holds.restored = None;
        }
        Ok(())
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.inner.holds.lock().unwrap_or_else(|e| e.into_inner())
    }
}
