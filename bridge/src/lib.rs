//! kappadb-bridge: stream every record of a node's local log into a Kafka
//! topic, exactly once across crashes of the bridge or the broker.
//!
//! [`KafkaBridge::start`] runs the bridge on a thread of its own beside a
//! [`Db`]: it follows the log with [`Db::tail`] and produces each record
//! (entries of every feed, fork proofs, forgotten feeds) keyed by feed id,
//! in the encoding of [`codec`], so a consumer re-verifies every entry
//! without trusting the bridge. It only reads the log: a slow or absent
//! broker makes it lag ([`KafkaBridge::status`]), never slows appends,
//! sync or views.
//!
//! # Exactly once
//!
//! The bridge keeps a [`checkpoint::Checkpoint`] beside the database: a
//! log offset before which every record is in the topic, and for each
//! partition a Kafka offset from which anything produced after that log
//! offset can be found. On start (and after any produce error) it reads
//! each partition from its checkpointed offset to the end, collects the
//! log offsets this node already produced (header `kappa-offset`, for
//! records whose `kappa-source` is this node), and produces from the
//! checkpoint on, skipping those. Within one run the producer is
//! idempotent and never gives up on a message (`message.timeout.ms=0`), so
//! the broker holds a partition's records in the order produced with no gap
//! and no duplicate; across runs the read-back removes the duplicates a
//! restart would make. ARCHITECTURE.md has the full argument and its
//! limits.
//!
//! ```no_run
//! use kappadb_bridge::{BridgeConfig, KafkaBridge};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = kappadb_core::Db::open(std::path::Path::new("/path/to/db"))?;
//! let config = BridgeConfig::new("127.0.0.1:9092", "kappa-log", db.dir().join("bridge/kafka-kappa-log.json"));
//! let bridge = KafkaBridge::start(db, config)?;
//! println!("lag: {} records", bridge.status().lag_records);
//! bridge.stop()?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

pub mod checkpoint;
pub mod codec;
pub mod consume;
#[cfg(feature = "test_utils")]
pub mod test_broker;
mod worker;

/// The Kafka client the bridge is built on, for callers that need more of
/// it (the tests forge records with it).
pub use rdkafka;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kappadb_core::Db;
use serde::Serialize;

/// Why the bridge cannot start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The topic name is not one Kafka accepts.
    #[error(
        "'{0}' is not a topic name: use 1 to 249 of the characters a-z A-Z 0-9 . _ -, and not '.' or '..'"
    )]
    BadTopic(String),
    /// No broker address given.
    #[error("no broker address given (expected HOST:PORT[,HOST:PORT...])")]
    NoBrokers,
    /// The checkpoint file cannot be read or written, or is not this
    /// bridge's.
    #[error("bridge checkpoint {0}: {1}")]
    Checkpoint(PathBuf, String),
    /// The Kafka client refused its configuration or failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic cannot be used as asked.
    #[error("topic '{topic}': {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading the local log failed.
    #[error("reading the log: {0}")]
    Store(#[from] kappadb_core::StoreError),
    /// The bridge thread could not be started or panicked.
    #[error("the bridge thread: {0}")]
    Thread(String),
}

/// How to run a bridge.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `HOST:PORT[,HOST:PORT...]`: Kafka's `bootstrap.servers`.
    pub brokers: String,
    /// The topic; created with [`BridgeConfig::partitions`] partitions if
    /// it does not exist.
    pub topic: String,
    /// Where the checkpoint lives (one file per bridge).
    pub checkpoint: PathBuf,
    /// Partitions of a topic the bridge creates.
    pub partitions: i32,
    /// Replication factor of a topic the bridge creates.
    pub replication: i32,
    /// Most records produced and not yet acknowledged; past it the bridge
    /// waits for the broker (and lags) instead of buffering more.
    pub max_in_flight: usize,
    /// Most bytes (values) produced and not yet acknowledged.
    pub max_in_flight_bytes: usize,
    /// How often the checkpoint is written while records flow.
    pub checkpoint_every: Duration,
    /// How long to wait before retrying after a broker error.
    pub retry_after: Duration,
    /// Extra librdkafka settings (`key=value`), applied last.
    pub extra: Vec<(String, String)>,
}

impl BridgeConfig {
    /// Defaults for `brokers`, `topic` and a checkpoint file.
    pub fn new(brokers: &str, topic: &str, checkpoint: PathBuf) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            checkpoint,
            partitions: 3,
            replication: 1,
            max_in_flight: 200_000,
            max_in_flight_bytes: 64 << 20,
            checkpoint_every: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            extra: Vec::new(),
        }
    }

    fn check(&self) -> Result<(), BridgeError> {
        check_topic(&self.topic)?;
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err(BridgeError::NoBrokers);
        }
        Ok(())
    }
}

/// Refuse a topic name Kafka would refuse (and so any that could escape a
/// file name built from it).
pub fn check_topic(topic: &str) -> Result<(), BridgeError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BridgeError::BadTopic(topic.chars().take(300).collect()))
    }
}

/// Where a bridge stands (see [`KafkaBridge::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BridgeStatus {
    /// The topic.
    pub topic: String,
    /// `starting`, `recovering` (reading the topic back), `running`,
    /// `retrying` (after an error, see `last_error`) or `stopped`.
    pub state: String,
    /// Every log record before this offset is in the topic.
    pub delivered_offset: u64,
    /// Log records before `delivered_offset`.
    pub delivered_records: u64,
    /// The log's end now.
    pub log_end: u64,
    /// Log bytes not yet known to be in the topic.
    pub lag_bytes: u64,
    /// Log records not yet known to be in the topic.
    pub lag_records: u64,
    /// Records produced and not yet acknowledged.
    pub in_flight: u64,
    /// Records acknowledged by the broker since the bridge started.
    pub produced: u64,
    /// Records found already in the topic when reading it back (a restart
    /// that did not produce them twice).
    pub skipped: u64,
    /// The last error, until the bridge runs again.
    pub last_error: Option<String>,
}

/// State shared by the bridge thread and its handle.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    status: Mutex<BridgeStatus>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut BridgeStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running bridge. Dropping it stops it (like [`KafkaBridge::stop`],
/// without the result).
#[derive(Debug)]
pub struct KafkaBridge {
    db: Db,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<Result<(), BridgeError>>>>,
}

impl KafkaBridge {
    /// Start bridging `db`'s log to `config.topic`. Returns once the
    /// configuration is checked; connecting, reading back and producing
    /// happen on the bridge's thread, which retries on broker errors until
    /// stopped. Errors of the checkpoint file or the log end it (see
    /// [`KafkaBridge::status`] and [`KafkaBridge::stop`]).
    pub fn start(db: Db, config: BridgeConfig) -> Result<Self, BridgeError> {
        config.check()?;
        let shared = Arc::new(Shared::default());
        shared.update(|s| {
            s.topic = config.topic.clone();
            s.state = "starting".into();
        });
        let (db2, shared2) = (db.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("kafka-bridge".into())
            .spawn(move || worker::run(db2, config, &shared2))
            .map_err(|e| BridgeError::Thread(e.to_string()))?;
        Ok(Self {
            db,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Where the bridge stands, with the lag measured against the log now.
    pub fn status(&self) -> BridgeStatus {
        let mut s = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        s.log_end = self.db.log_end();
        s.lag_bytes = s.log_end.saturating_sub(s.delivered_offset);
        s.lag_records = if s.lag_bytes == 0 {
            0
        } else {
            self.db
                .status()
                .records
                .saturating_sub(s.delivered_records)
                .max(1)
        };
        s
    }

    /// Whether the bridge thread has ended (stopped, or after an error no
    /// retry mends).
    pub fn is_finished(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Stop: wait a moment (at most 5 s) for the records in flight, write
    /// the checkpoint, end the thread. Returns the error that ended it, if
    /// one did. Stopping again does nothing.
    pub fn stop(&self) -> Result<(), BridgeError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            Some(t) => t
                .join()
                .map_err(|_| BridgeError::Thread("it panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for KafkaBridge {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("the Kafka bridge ended with an error: {e}");
        }
    }
}
