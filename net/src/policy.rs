//! The replication policy on disk: `follow.json` in the database
//! directory, which feeds this node replicates ([`Follow`]).
//!
//! ```json
//! { "version": 1, "mode": "all", "feeds": ["ea4a6c63…"] }          every feed but these
//! { "version": 1, "mode": "only", "feeds": ["ea4a6c63…", "…"] }   these feeds only
//! ```
//!
//! No file means every feed. A running node notices changes to the file
//! within a few seconds (like `blocked.json`). Like the block list, a
//! damaged file is an error: replicating what the user chose not to would
//! be worse than not starting.
//!
//! ```
//! use kappadb_core::FeedId;
//! use kappadb_net::policy::FollowFile;
//! let dir = tempfile::tempdir().unwrap();
//! let mut file = FollowFile::load(dir.path()).unwrap();
//! assert!(file.policy().wants(&FeedId([7; 32])));
//! assert!(file.unfollow(FeedId([7; 32])).unwrap());
//! assert!(!FollowFile::load(dir.path()).unwrap().policy().wants(&FeedId([7; 32])));
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use kappadb_core::FeedId;
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::peers::write_atomic;
use crate::protocol::Follow;

/// File name of the replication policy in the database directory.
pub const FOLLOW_FILE: &str = "follow.json";

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    mode: Mode,
    #[serde(default)]
    feeds: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    All,
    Only,
}

/// The replication policy and the file it lives in.
#[derive(Debug, Clone)]
pub struct FollowFile {
    path: PathBuf,
    follow: Follow,
}

impl FollowFile {
    /// Load `follow.json` from a database directory (every feed if it is
    /// missing).
    pub fn load(dir: &Path) -> Result<Self, NetError> {
        let path = dir.join(FOLLOW_FILE);
        let follow = match fs::read_to_string(&path) {
            Ok(text) => {
                let file: File = serde_json::from_str(&text).map_err(|e| NetError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if file.version != 1 {
                    return Err(NetError::File {
                        path,
                        reason: format!("unknown version {}", file.version),
                    });
                }
                let feeds = file
                    .feeds
                    .iter()
                    .map(|s| {
                        s.parse::<FeedId>().map_err(|e| NetError::File {
                            path: path.clone(),
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                match file.mode {
                    Mode::All => Follow::All { except: feeds },
                    Mode::Only => Follow::Only { feeds },
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Follow::default(),
            Err(e) => {
                return Err(NetError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        Ok(Self { path, follow })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the file was last changed (`None` if it does not exist).
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// The policy.
    pub fn policy(&self) -> &Follow {
        &self.follow
    }

    /// Follow `feed` and save; false if it was followed already.
    pub fn follow(&mut self, feed: FeedId) -> Result<bool, NetError> {
        let changed = self.follow.follow(feed);
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    /// Stop following `feed` and save; false if it was not followed.
    pub fn unfollow(&mut self, feed: FeedId) -> Result<bool, NetError> {
        let changed = self.follow.unfollow(feed);
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    /// Replace the policy and save.
    pub fn set(&mut self, follow: Follow) -> Result<(), NetError> {
        self.follow = follow;
        self.save()
    }

    fn save(&self) -> Result<(), NetError> {
        let (mode, feeds) = match &self.follow {
            Follow::All { except } => (Mode::All, except),
            Follow::Only { feeds } => (Mode::Only, feeds),
        };
        let file = File {
            version: 1,
            mode,
            feeds: feeds.iter().map(ToString::to_string).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| NetError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, text.as_bytes())
    }
}
