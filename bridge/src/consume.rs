//! Reading a bridged topic back: every record of every partition, for
//! consumers that verify (the example in `examples/`) and for tests.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::BridgeError;
use crate::codec::{H_KIND, H_OFFSET, H_SOURCE};

/// One record read from the topic, as the broker holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The key (the feed id as text), if any.
    pub key: Option<Vec<u8>>,
    /// The value (see [`crate::codec`]).
    pub value: Vec<u8>,
    /// Header `kappa-kind`.
    pub kind: Option<String>,
    /// Header `kappa-source`.
    pub source: Option<String>,
    /// Header `kappa-offset`, parsed.
    pub log_offset: Option<u64>,
}

/// Every record in `topic` now, partition by partition in offset order.
/// Gives up with an error when the broker answers nothing for `stall`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    stall: Duration,
) -> Result<Vec<Fetched>, BridgeError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kappadb-bridge-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("max.partition.fetch.bytes", "262144")
        .set("fetch.max.bytes", "1048576")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), stall)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut open = HashSet::new();
    let mut marks = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, stall)?;
        marks.insert(p, (low, high, None::<i64>));
        if low < high {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            open.insert(p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None if last.elapsed() > stall => {
                let mut at: Vec<_> = open
                    .iter()
                    .map(|p| {
                        let (low, high, seen) = marks.get(p).copied().unwrap_or_default();
                        format!("partition {p} (offsets {low}..{high}, last read {seen:?})")
                    })
                    .collect();
                at.sort();
                return Err(BridgeError::Topic {
                    topic: topic.to_string(),
                    reason: format!(
                        "reading it stalled for {} s at {}",
                        stall.as_secs(),
                        at.join(", ")
                    ),
                });
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                last = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = Instant::now();
                if let Some(mark) = marks.get_mut(&m.partition()) {
                    mark.2 = Some(m.offset());
                }
                let mut f = Fetched {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    kind: None,
                    source: None,
                    log_offset: None,
                };
                if let Some(headers) = m.headers() {
                    for h in headers.iter() {
                        let text = h
                            .value
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .map(str::to_string);
                        match h.key {
                            H_KIND => f.kind = text,
                            H_SOURCE => f.source = text,
                            H_OFFSET => f.log_offset = text.and_then(|t| t.parse().ok()),
                            _ => {}
                        }
                    }
                }
                out.push(f);
            }
        }
    }
    out.sort_by_key(|f| (f.partition, f.offset));
    Ok(out)
}
