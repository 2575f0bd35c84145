//! `kappa-kafka-fold`: read a topic that `kappa bridge kafka` fills,
//! re-verify every entry (signature, payload hash, chain) with
//! kappadb-core alone, and fold what verifies into a key-value view,
//! printed as JSON. The bridge is not trusted: a record that does not
//! verify is counted and left out.
//!
//! ```text
//! kappa-kafka-fold --brokers 127.0.0.1:9092 --topic kappa-log
//! ```
//!
//! The fold: `{"type":"kv.put","key":K,"value":V}` sets K, `{"type":
//! "kv.del","key":K}` removes it; the write with the greatest
//! (timestamp, author, seq) wins, so the answer does not depend on how the
//! topic's partitions interleave. A fork proof marks its feed forked (its
//! entries past the fork seq are left out); a forgotten feed's writes are
//! dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kappadb_bridge::codec::{Decoded, decode_value};
use kappadb_bridge::consume::read_topic;
use kappadb_core::validate::{validate_entry, validate_link};
use kappadb_core::{EntryId, FeedId};
use serde_json::{Value, json};

/// Fold a bridged Kafka topic into a verified key-value view.
#[derive(Parser, Debug)]
struct Args {
    /// Bootstrap brokers.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    brokers: String,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// Give up when the broker answers nothing for this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// A write to the view: ((timestamp, author, seq), value or deletion).
type Write = ((u64, FeedId, u64), Option<Value>);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let records = read_topic(
        &args.brokers,
        &args.topic,
        Duration::from_secs(args.timeout),
    )
    .with_context(|| format!("cannot read topic '{}'", args.topic))?;
    let mut heads: HashMap<FeedId, (u64, EntryId)> = HashMap::new();
    let mut forked: HashMap<FeedId, u64> = HashMap::new();
    let mut forgotten: HashSet<FeedId> = HashSet::new();
    let mut writes: HashMap<String, Vec<Write>> = HashMap::new();
    let (mut verified, mut rejected) = (0u64, Vec::new());
    for r in &records {
        let at = format!("partition {} offset {}", r.partition, r.offset);
        let decoded = match decode_value(&r.value) {
            Ok(d) => d,
            Err(e) => {
                rejected.push(format!("{at}: {e}"));
                continue;
            }
        };
        match decoded {
            Decoded::Entry(e) => {
                let author = e.header.author;
                let checked = validate_entry(&e, u32::MAX)
                    .and_then(|()| validate_link(heads.get(&author).copied(), &e.header));
                if let Err(err) = checked {
                    rejected.push(format!("{at}: {err}"));
                    continue;
                }
                heads.insert(author, (e.header.seq, e.id()));
                verified += 1;
                if forked.get(&author).is_some_and(|&s| e.header.seq >= s) {
                    continue;
                }
                let Some(v) = e
                    .payload
                    .bytes()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                else {
                    continue;
                };
                let key = v["key"].as_str().map(str::to_string);
                let order = (e.header.timestamp, author, e.header.seq);
                match (v["type"].as_str(), key) {
                    (Some("kv.put"), Some(k)) => {
                        writes
                            .entry(k)
                            .or_default()
                            .push((order, Some(v["value"].clone())));
                    }
                    (Some("kv.del"), Some(k)) => writes.entry(k).or_default().push((order, None)),
                    _ => {}
                }
            }
            Decoded::Fork(proof) => match proof.check() {
                Ok(p) => {
                    verified += 1;
                    forked.insert(p.author(), p.seq());
                }
                Err(err) => rejected.push(format!("{at}: fork proof: {err}")),
            },
            Decoded::Forget(feed) => {
                forgotten.insert(feed);
                heads.remove(&feed);
            }
        }
    }
    let mut kv = BTreeMap::new();
    for (k, mut ws) in writes {
        ws.retain(|((_, author, seq), _)| {
            !forgotten.contains(author) && forked.get(author).is_none_or(|s| seq < s)
        });
        ws.sort_by_key(|w| w.0);
        if let Some((_, Some(v))) = ws.pop() {
            kv.insert(k, v);
        }
    }
    let out = json!({
        "records": records.len(),
        "verified": verified,
        "rejected": rejected,
        "feeds": heads.len(),
        "forked": forked.keys().map(|f| f.to_string()).collect::<Vec<_>>(),
        "kv": kv,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
