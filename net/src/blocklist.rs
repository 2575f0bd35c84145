//! The block list: feeds this database neither pulls nor serves,
//! persisted as `blocked.json` in the database directory.
//!
//! ```json
//! { "version": 1, "blocked": ["ea4a6c63…"] }
//! ```
//!
//! Blocking stops new entries of a feed from being fetched and stops this
//! node from serving or announcing it; entries already stored stay (the
//! log is append-only). A running node notices changes to the file within
//! a few seconds, so `kappa block` works while `kappa serve` runs. Unlike the address book, a damaged block list is an
//! error: silently serving a blocked feed would be worse than not starting.
//!
//! ```
//! use kappadb_core::FeedId;
//! use kappadb_net::blocklist::BlockList;
//! let dir = tempfile::tempdir().unwrap();
//! let mut list = BlockList::load(dir.path()).unwrap();
//! assert!(list.block(FeedId([7; 32])).unwrap());
//! assert!(BlockList::load(dir.path()).unwrap().contains(&FeedId([7; 32])));
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kappadb_core::FeedId;
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::peers::write_atomic;

/// File name of the block list in the database directory.
pub const BLOCKED_FILE: &str = "blocked.json";

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    blocked: Vec<String>,
}

/// Blocked feeds. See the module docs.
#[derive(Debug, Clone)]
pub struct BlockList {
    path: PathBuf,
    feeds: BTreeSet<FeedId>,
}

impl BlockList {
    /// Load `blocked.json` from a database directory (empty if missing).
    pub fn load(dir: &Path) -> Result<Self, NetError> {
        let path = dir.join(BLOCKED_FILE);
        let bad = |reason: String| NetError::File {
            path: path.clone(),
            reason,
        };
        let feeds = match fs::read_to_string(&path) {
            Ok(text) => {
                let file: File = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                file.blocked
                    .iter()
                    .map(|s| s.parse::<FeedId>().map_err(|e| bad(e.to_string())))
                    .collect::<Result<_, _>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(Self { path, feeds })
    }

    /// The file the list lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the file was last changed (`None` if it does not exist).
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// The blocked feeds, sorted.
    pub fn feeds(&self) -> impl Iterator<Item = &FeedId> {
        self.feeds.iter()
    }

    /// True if `feed` is blocked.
    pub fn contains(&self, feed: &FeedId) -> bool {
        self.feeds.contains(feed)
    }

    /// Block a feed and save. Returns false if it was already blocked.
    pub fn block(&mut self, feed: FeedId) -> Result<bool, NetError> {
        if !self.feeds.insert(feed) {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// Unblock a feed and save. Returns false if it was not blocked.
    pub fn unblock(&mut self, feed: &FeedId) -> Result<bool, NetError> {
        if !self.feeds.remove(feed) {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    fn save(&self) -> Result<(), NetError> {
        let file = File {
            version: 1,
            blocked: self.feeds.iter().map(ToString::to_string).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| NetError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, text.as_bytes())
    }
}
