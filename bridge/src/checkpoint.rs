//! The bridge's position, in a small JSON file replaced atomically.
//!
//! ```json
//! {"version":1,"source":"<feed id>","topic":"t","offset":123,"records":4,
//!  "partitions":{"0":17,"1":3}}
//! ```
//!
//! `offset`: every log record before it is in the topic. `partitions`: for
//! each partition, a Kafka offset at or below which nothing the bridge
//! produced for a log record at or after `offset` can sit; recovery reads
//! each partition from there to its end. `records`: how many log records
//! lie before `offset` (for the lag in records).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use kappadb_core::FeedId;
use serde::{Deserialize, Serialize};

use crate::BridgeError;

/// The saved position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version: 1.
    pub version: u32,
    /// The node whose log this is (its feed id).
    pub source: String,
    /// The topic.
    pub topic: String,
    /// Log offset: everything before it is in the topic.
    pub offset: u64,
    /// Log records before `offset`.
    pub records: u64,
    /// Partition -> Kafka offset to resume reading back from.
    pub partitions: BTreeMap<i32, i64>,
}

impl Checkpoint {
    /// The position of a bridge that has produced nothing.
    pub fn start(source: FeedId, topic: &str) -> Self {
        Self {
            version: 1,
            source: source.to_string(),
            topic: topic.to_string(),
            offset: 0,
            records: 0,
            partitions: BTreeMap::new(),
        }
    }

    /// Read `path`; `None` if there is no file. A file of another node or
    /// topic, or one that does not parse, is an error (never silently
    /// restarted from 0).
    pub fn load(path: &Path, source: FeedId, topic: &str) -> Result<Option<Self>, BridgeError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BridgeError::Checkpoint(path.to_path_buf(), e.to_string())),
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|e| BridgeError::Checkpoint(path.to_path_buf(), e.to_string()))?;
        if cp.version != 1 {
            return Err(BridgeError::Checkpoint(
                path.to_path_buf(),
                format!("unknown version {}", cp.version),
            ));
        }
        if cp.source != source.to_string() || cp.topic != topic {
            return Err(BridgeError::Checkpoint(
                path.to_path_buf(),
                format!(
                    "it belongs to node {} and topic '{}', not node {} and topic '{}'",
                    cp.source, cp.topic, source, topic
                ),
            ));
        }
        Ok(Some(cp))
    }

    /// Write to `path` durably: a temporary file, fsync, rename, fsync of
    /// the directory. A crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), BridgeError> {
        let err = |e: std::io::Error| BridgeError::Checkpoint(path.to_path_buf(), e.to_string());
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp: PathBuf = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self)
            .map_err(|e| BridgeError::Checkpoint(path.to_path_buf(), e.to_string()))?;
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_refuses_another_topic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cp.json");
        let me = FeedId([3; 32]);
        assert_eq!(Checkpoint::load(&path, me, "t").unwrap(), None);
        let mut cp = Checkpoint::start(me, "t");
        cp.offset = 42;
        cp.partitions.insert(2, 9);
        cp.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path, me, "t").unwrap(), Some(cp));
        assert!(Checkpoint::load(&path, me, "other").is_err());
        assert!(Checkpoint::load(&path, FeedId([4; 32]), "t").is_err());
        fs::write(&path, b"{not json").unwrap();
        assert!(Checkpoint::load(&path, me, "t").is_err());
    }
}
