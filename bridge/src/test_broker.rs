//! A real Kafka-protocol broker for tests (feature `test_utils`): Tansu,
//! which `.ci/run` builds into `target/ci-tools/bin` (or the binary named
//! by `KAPPADB_TANSU`), run on a free loopback port with its SQLite
//! storage in a directory of the test's, so it survives being killed and
//! started again.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kappadb_core::validate::{validate_entry, validate_link};
use kappadb_core::{Db, EntryId, FeedId};

use crate::codec::{Decoded, decode_value};
use crate::consume::Fetched;

/// The broker binary, if there is one.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KAPPADB_TANSU") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-tools/bin/tansu");
    p.exists().then_some(p)
}

/// The broker, or `None` when none is installed and `KAPPADB_REQUIRE_KAFKA`
/// is unset (a developer's machine without it: the caller skips, saying
/// so). With `KAPPADB_REQUIRE_KAFKA=1` (CI) a missing broker panics.
pub fn tansu_or_skip(test: &str) -> Option<PathBuf> {
    match tansu_binary() {
        Some(p) => Some(p),
        None if std::env::var_os("KAPPADB_REQUIRE_KAFKA").is_some() => {
            panic!(
                "{test}: no Kafka broker (KAPPADB_REQUIRE_KAFKA is set): run .ci/run once, or set KAPPADB_TANSU"
            )
        }
        None => {
            eprintln!(
                "{test}: skipped, no Kafka broker here (.ci/run builds one into target/ci-tools)"
            );
            None
        }
    }
}

/// A broker process on a loopback port.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Broker {
    /// Start `bin` with its storage in `dir` (created), on a free port.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        Self::start_on(bin, dir, free_port())
    }

    /// [`Broker::start`] on a given loopback port.
    pub fn start_on(bin: &Path, dir: &Path, port: u16) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut b = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        b.restart();
        b
    }

    /// `HOST:PORT` for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill -9 the broker (if running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again (killing it first if it runs), on the same port and
    /// storage; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("broker.log")).ok();
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or(Stdio::null(), Stdio::from))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {addr} within 30 s (see {})",
                self.dir.join("broker.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Panic unless `fetched` (the whole topic) holds every record of `db`'s
/// log exactly once, each entry verifying and chained to the one before
/// in its partition, every feed in one partition in seq order.
pub fn assert_mirrors(db: &Db, fetched: &[Fetched]) {
    let me = db.feed_id().to_string();
    let records: Vec<_> = db
        .log_iter(0)
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(
        fetched.len(),
        records.len(),
        "the topic holds {} records, the log {}",
        fetched.len(),
        records.len()
    );
    let mut by_offset: HashMap<u64, &Fetched> = HashMap::new();
    for f in fetched {
        assert_eq!(f.source.as_deref(), Some(me.as_str()));
        let off = f.log_offset.unwrap_or_else(|| panic!("no kappa-offset"));
        assert!(by_offset.insert(off, f).is_none(), "log offset {off} twice");
    }
    for r in &records {
        assert!(
            by_offset.contains_key(&r.offset),
            "offset {} missing",
            r.offset
        );
    }
    // Per feed: seqs 1, 2, 3... in partition order, chained and signed.
    let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    for f in fetched {
        let key = f.key.clone().unwrap_or_else(|| panic!("no key"));
        let p = *partition_of.entry(key.clone()).or_insert(f.partition);
        assert_eq!(p, f.partition, "one feed in two partitions");
        let d = decode_value(&f.value).unwrap_or_else(|e| panic!("{e}"));
        if let Decoded::Entry(e) = d {
            assert_eq!(key, e.header.author.to_string().into_bytes());
            validate_entry(&e, 1 << 20).unwrap_or_else(|err| panic!("{err}"));
            validate_link(heads.get(&e.header.author).copied(), &e.header)
                .unwrap_or_else(|err| panic!("seq {}: {err}", e.header.seq));
            heads.insert(e.header.author, (e.header.seq, e.id()));
        }
    }
    for (feed, (seq, _)) in heads {
        assert_eq!(db.head(&feed).map(|h| h.seq), Some(seq));
    }
}

/// Create `topic` with `partitions` partitions on the broker at `brokers`.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let res = futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    for r in res {
        r.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
    }
}

/// A broker for a test that needs one but not its own: the one `.ci/run`
/// started (`KAPPADB_KAFKA_BROKERS`), else a new one in `dir` (returned, to
/// keep alive for the test).
pub fn shared_or_start(bin: &Path, dir: &Path) -> (Option<Broker>, String) {
    match std::env::var("KAPPADB_KAFKA_BROKERS") {
        Ok(addr) if !addr.trim().is_empty() => (None, addr),
        _ => {
            let b = Broker::start(bin, dir);
            let addr = b.addr();
            (Some(b), addr)
        }
    }
}

/// `base` made unique to this process and moment, for a topic on a broker
/// other tests share.
pub fn unique_topic(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{base}-{}-{nanos}", std::process::id())
}
