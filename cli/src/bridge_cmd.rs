//! `kappa bridge kafka`, and the bridge `kappa serve --bridge` runs.
//!
//! The bridge reads the log through a [`kappadb_core::Db`] this process
//! holds, so it runs where the database's lock is: inside the node
//! (`kappa serve --bridge kafka://HOST:PORT/TOPIC`) or, with no node
//! running, as `kappa bridge kafka`, which holds the database and serves
//! the API meanwhile so other commands can still write. Both keep their
//! position in the same checkpoint file, `DIR/bridge/kafka-TOPIC.json`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use kappadb_bridge::{BridgeConfig, KafkaBridge};
use kappadb_core::{Db, StoreError};

use crate::ops::Local;
use crate::out::{Out, note};

/// Bridges to other systems.
#[derive(Subcommand, Debug)]
pub enum BridgeCommand {
    /// Produce every record of the log (entries of every feed, fork
    /// proofs, forgotten feeds) to a Kafka topic, exactly once, and keep
    /// following it until Ctrl-C.
    Kafka(KafkaArgs),
}

/// Where to produce.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap brokers.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub brokers: String,
    /// The topic (created if it does not exist).
    #[arg(long)]
    pub topic: String,
    /// Partitions of a topic the bridge creates.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Replication factor of a topic the bridge creates.
    #[arg(long, default_value_t = 1)]
    pub replication: i32,
    /// A librdkafka setting (repeatable), e.g. `security.protocol=ssl`.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

impl KafkaArgs {
    /// The bridge's configuration for `db`.
    pub fn config(&self, db: &Db) -> anyhow::Result<BridgeConfig> {
        kappadb_bridge::check_topic(&self.topic)?;
        let mut c = BridgeConfig::new(
            &self.brokers,
            &self.topic,
            db.dir()
                .join("bridge")
                .join(format!("kafka-{}.json", self.topic)),
        );
        c.partitions = self.partitions;
        c.replication = self.replication;
        for o in &self.options {
            let Some((k, v)) = o.split_once('=') else {
                bail!("--kafka-option '{o}': expected KEY=VALUE");
            };
            c.extra.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(c)
    }

    /// Parse `kafka://HOST:PORT[,HOST:PORT...]/TOPIC` (`kappa serve --bridge`).
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let usage = || format!("--bridge '{url}': expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC");
        let rest = url.strip_prefix("kafka://").with_context(usage)?;
        let (brokers, topic) = rest.rsplit_once('/').with_context(usage)?;
        if brokers.is_empty() || topic.is_empty() {
            bail!(usage());
        }
        Ok(Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            partitions: 3,
            replication: 1,
            options: Vec::new(),
        })
    }
}

/// Start the bridge on `local`'s database and report it in `status`.
pub fn start(local: &Local, args: &KafkaArgs) -> anyhow::Result<Arc<KafkaBridge>> {
    let db = local.db().clone();
    let config = args.config(&db)?;
    let bridge = Arc::new(KafkaBridge::start(db, config)?);
    local.set_bridge(bridge.clone());
    note(format!(
        "bridging the log to Kafka topic '{}' at {}",
        args.topic, args.brokers
    ));
    Ok(bridge)
}

/// `kappa bridge ...`.
pub fn run(dir: &std::path::Path, cmd: BridgeCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    let BridgeCommand::Kafka(args) = cmd;
    kappadb_bridge::check_topic(&args.topic)?;
    // A node holds the database for good: say where the bridge belongs.
    // Anything else (a command, a process just ending) is waited for.
    let deadline = std::time::Instant::now() + crate::cmd::busy_timeout();
    let db = loop {
        match Db::open(dir) {
            Ok(db) => break db,
            Err(StoreError::Locked { pid, .. }) => {
                let serving = pid
                    .and_then(crate::cmd::command_of)
                    .is_some_and(|c| c.contains(" serve"));
                if serving {
                    bail!(
                        "a node runs on {d} and holds it: run the bridge inside it instead, `kappa --dir {d} serve --bridge kafka://{}/{}`",
                        args.brokers,
                        args.topic,
                        d = dir.display()
                    );
                }
                if std::time::Instant::now() >= deadline {
                    bail!(
                        "database {} is in use by PID {}; try again once it is done",
                        dir.display(),
                        pid.map_or("?".to_string(), |p| p.to_string())
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the database in {}", dir.display()));
            }
        }
    };
    let local = Local::new(db, crate::views_cmd::open_indexer);
    let host = crate::api::FollowHost::start(&local)?;
    let bridge = start(&local, &args)?;
    note("press Ctrl-C to stop");
    let stop = local.interrupted();
    while !*stop.borrow() && !bridge.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    note("stopping…");
    let res = bridge.stop();
    let s = bridge.status();
    drop(host);
    res?;
    out.answer(
        &serde_json::json!({
            "topic": s.topic,
            "delivered_offset": s.delivered_offset,
            "lag_records": s.lag_records,
            "produced": s.produced,
            "skipped": s.skipped,
        }),
        |v| {
            vec![format!(
                "stopped: {} records produced, {} found in the topic already, {} behind",
                v["produced"], v["skipped"], v["lag_records"]
            )]
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
