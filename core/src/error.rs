//! Store errors: what can go wrong opening, writing and reading a database.
//!
//! Expected rejections of entries are [`crate::EntryError`]s and are
//! reported per entry by ingest; the variants here stop the operation.

use std::path::PathBuf;

use crate::keys::KeyError;
use crate::validate::EntryError;

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
    Index(#[from] sled::Error),
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
    /// A local append was refused.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
