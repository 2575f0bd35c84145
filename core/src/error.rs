//! Store errors: what can go wrong opening, writing and reading a database.
//!
//! Two kinds of failure never share a type. Expected rejections of entries
//! ([`crate::EntryError`]: a bad signature from a peer, a payload over the
//! limit, a forked feed) are answers, reported per entry by ingest or as
//! [`AppendError::Rejected`]; a [`StoreError`] is a fail-stop failure of
//! the database itself (I/O, a damaged index, a poisoned writer) that stops
//! the operation. `StoreError` never wraps an `EntryError`, so `?` cannot
//! turn a peer's bad entry into a storage failure or the other way round.

use std::path::PathBuf;

use crate::keys::KeyError;
use crate::validate::EntryError;

/// Why [`crate::Db::append`] (or `append_batch`) did not append.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The append breaks a rule (payload over the limit, feed forked);
    /// nothing was written and the database is fine.
    #[error(transparent)]
    Rejected(#[from] EntryError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Appends are held until this copy has synced its own feed (see
    /// [`crate::PublishHold`]); nothing was written.
    #[error(transparent)]
    Held(#[from] crate::PublishHold),
}

impl AppendError {
    /// The rejection, if the append was refused by a rule.
    pub fn rejection(&self) -> Option<&EntryError> {
        match self {
            AppendError::Rejected(e) => Some(e),
            AppendError::Store(_) | AppendError::Held(_) => None,
        }
    }
}

/// An error from the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// There is no database in the directory.
    #[error("no kappadb database in {dir}; run `kappa init` to create one")]
    NotADatabase {
        /// The directory.
        dir: PathBuf,
    },
    /// `create` found a database already there.
    #[error("a kappadb database already exists in {dir}; refusing to overwrite it")]
    AlreadyExists {
        /// The directory.
        dir: PathBuf,
    },
    /// Another process holds the database lock.
    #[error("database {dir} is in use by {}", match pid { Some(p) => format!("PID {p}"), None => "another process".to_string() })]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's PID, when it wrote one.
        pid: Option<u32>,
    },
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The configuration file is invalid.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// sled could not open its files. The index is derived: rebuild it.
    #[error(
        "the index in {path} cannot be opened ({reason}); run `kappa reindex` to rebuild it from the log"
    )]
    IndexUnavailable {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        reason: String,
    },
    /// A sled operation failed.
    #[error("index error: {0}")]
    Index(sled::Error),
    /// The file system is full (or a quota is reached). The write that
    /// met it failed and the database refuses writes until it is opened
    /// again; nothing acknowledged is lost.
    #[error(
        "no space left on the device while writing {what}; free some space, then open the database again (nothing acknowledged was lost)"
    )]
    DiskFull {
        /// The file (or part of the database) being written.
        what: String,
    },
    /// A stored index value does not decode.
    #[error("index entry is damaged ({0}); run `kappa reindex` to rebuild the index")]
    IndexDamaged(&'static str),
    /// A log record failed its checksum or does not decode.
    #[error("log record at offset {offset} is corrupt: {reason}")]
    Corrupt {
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write failed; the database must be reopened.
    #[error("an earlier write to the log failed; reopen the database to recover")]
    Poisoned,
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Whether an I/O error means the file system has no room left.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl StoreError {
    /// An I/O error on `path`; [`StoreError::DiskFull`] when the disk is
    /// full.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        if is_disk_full(&source) {
            StoreError::DiskFull {
                what: path.display().to_string(),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Whether this is [`StoreError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull {
                what: "the index (sled)".into(),
            },
            other => StoreError::Index(other),
        }
    }
}
