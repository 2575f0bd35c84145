//! The database directory: its file names, the directory lock, the
//! per-database settings (`config.json`), creating the files of a new
//! database, and opening sled.
//!
//! ```text
//! DIR/kappa.lock     held for the life of the process; holds its PID
//! DIR/config.json    per-database settings (payload limit, segment size)
//! DIR/secret.key     this peer's feed key, mode 0600
//! DIR/network.key    the network key, mode 0600
//! DIR/log/           the canonical log (segment files)
//! DIR/sled/          derived state: the feed index and every view
//! ```
//!
//! `config.json` is written last when a database is created: its presence
//! marks a complete database.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::keys::{NetworkKey, SigningKey};
use crate::log::MAX_PAYLOAD_LIMIT;

/// File names inside a database directory.
pub mod files {
    /// The lock file.
    pub const LOCK: &str = "kappa.lock";
    /// The config file.
    pub const CONFIG: &str = "config.json";
    /// The feed key.
    pub const SECRET_KEY: &str = "secret.key";
    /// The network key.
    pub const NETWORK_KEY: &str = "network.key";
    /// The log directory.
    pub const LOG: &str = "log";
    /// The sled directory.
    pub const SLED: &str = "sled";
}

/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Per-database settings, stored in `config.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// Largest payload accepted at append and ingest, in bytes.
    pub max_payload_bytes: u32,
    /// A log segment is closed once it reaches this size.
    pub segment_bytes: u64,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DbConfig {
    pub(crate) fn check(&self, path: &Path) -> Result<(), StoreError> {
        let bad = |reason: String| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(bad(format!(
                "max_payload_bytes {} is over the largest supported limit {MAX_PAYLOAD_LIMIT}",
                self.max_payload_bytes
            )));
        }
        if self.segment_bytes < 4096 {
            return Err(bad("segment_bytes must be at least 4096".into()));
        }
        Ok(())
    }
}

/// Options for [`crate::Db::create`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Settings to store.
    pub config: DbConfig,
    /// Join this network instead of creating a new one.
    pub network_key: Option<NetworkKey>,
    /// Use this feed key instead of generating one (tests, key import).
    pub signing_key: Option<SigningKey>,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::io(path, source)
}

/// Take the directory lock (and write this process's PID into it), or say
/// who holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(files::LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
    }
    file.set_len(0).map_err(io_err(&path))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err(&path))?;
    Ok(file)
}

pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let unavailable = |reason: String| StoreError::IndexUnavailable {
        path: path.to_path_buf(),
        reason,
    };
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(128 * 1024 * 1024)
        .flush_every_ms(Some(1000));
    // sled 0.34 can panic on damaged files; its state is derived, so a
    // panic here becomes an error that points at `kappa reindex`.
    // We hold the directory lock, so a sled file lock held by someone
    // else can only be this process's previous `Db`, whose sled threads
    // release it a moment after the drop: wait for them, briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open())) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Err(sled::Error::Io(e))) if crate::error::is_disk_full(&e) => {
                return Err(StoreError::io(path, e));
            }
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable("sled panicked while opening its files".into())),
        }
    }
}

/// Write the files of a new database in `dir` (locked by the caller):
/// keys first, `config.json` last. Refuses a directory that holds any of
/// them already.
pub(crate) fn init_files(dir: &Path, opts: CreateOptions) -> Result<(), StoreError> {
    for name in [
        files::CONFIG,
        files::SECRET_KEY,
        files::NETWORK_KEY,
        files::LOG,
    ] {
        if dir.join(name).exists() {
            return Err(StoreError::AlreadyExists {
                dir: dir.to_path_buf(),
            });
        }
    }
    let config_path = dir.join(files::CONFIG);
    opts.config.check(&config_path)?;
    let key = match opts.signing_key {
        Some(k) => k,
        None => SigningKey::generate()?,
    };
    key.save(&dir.join(files::SECRET_KEY))?;
    let network = match opts.network_key {
        Some(k) => k,
        None => NetworkKey::generate()?,
    };
    network.save(&dir.join(files::NETWORK_KEY))?;
    let text = serde_json::to_string_pretty(&opts.config).unwrap_or_default();
    let tmp = dir.join("config.json.tmp");
    fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &config_path).map_err(io_err(&config_path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Read and check `config.json`.
pub(crate) fn read_config(dir: &Path) -> Result<DbConfig, StoreError> {
    let config_path = dir.join(files::CONFIG);
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config: DbConfig = serde_json::from_str(&text).map_err(|e| StoreError::Config {
        path: config_path.clone(),
        reason: e.to_string(),
    })?;
    config.check(&config_path)?;
    Ok(config)
}
