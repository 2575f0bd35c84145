//! The bridge thread: recover the position, then tail the log into the
//! producer, folding acknowledgements into the checkpoint in log order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use kappadb_core::Db;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::Checkpoint;
use crate::codec::{self, H_JSON, H_KIND, H_OFFSET, H_SOURCE, KafkaRecord};
use crate::{BridgeConfig, BridgeError, Shared};

/// Longest wait for one metadata or watermark answer.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading back gives up when no record or end arrives for this long.
const READ_BACK_STALL: Duration = Duration::from_secs(30);
/// Most records read from the log between two polls of the producer.
const READ_BURST: usize = 10_000;
/// Longest back-off between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One log record produced (or found in the topic) and not yet folded
/// into the checkpoint.
struct Slot {
    offset: u64,
    next_offset: u64,
    /// Where the broker put it, once acknowledged.
    at: Option<(i32, i64)>,
    bytes: usize,
}

/// A delivery report.
struct Ack {
    offset: u64,
    result: Result<(i32, i64), KafkaError>,
}

struct Ctx {
    acks: Sender<Ack>,
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!("kafka: {error}: {reason}");
        self.shared
            .update(|s| s.last_error = Some(format!("{error}: {reason}")));
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, offset: Box<u64>) {
        let result = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        // The receiver is gone only when the session has ended.
        let _ = self.acks.send(Ack {
            offset: *offset,
            result,
        });
    }
}

fn base_config(cfg: &BridgeConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.as_str())
        .set("client.id", "kappadb-bridge")
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

fn apply_extra(c: &mut ClientConfig, cfg: &BridgeConfig) {
    for (k, v) in &cfg.extra {
        c.set(k.as_str(), v.as_str());
    }
}

/// The bridge thread's body: sessions until stopped, with back-off after
/// errors. Ends early only on errors no retry can mend (the checkpoint
/// file, the local log).
pub(crate) fn run(db: Db, cfg: BridgeConfig, shared: &Arc<Shared>) -> Result<(), BridgeError> {
    let result = run_inner(&db, &cfg, shared);
    shared.update(|s| {
        s.state = "stopped".into();
        s.in_flight = 0;
        if let Err(e) = &result {
            s.last_error = Some(e.to_string());
        }
    });
    result
}

fn run_inner(db: &Db, cfg: &BridgeConfig, shared: &Arc<Shared>) -> Result<(), BridgeError> {
    let me = db.feed_id();
    let mut cp = Checkpoint::load(&cfg.checkpoint, me, &cfg.topic)?
        .unwrap_or_else(|| Checkpoint::start(me, &cfg.topic));
    shared.update(|s| {
        s.delivered_offset = cp.offset;
        s.delivered_records = cp.records;
    });
    let mut backoff = cfg.retry_after;
    while !shared.stopping() {
        match session(db, cfg, shared, &mut cp, &mut backoff) {
            Ok(()) => break,
            Err(e @ (BridgeError::Checkpoint(..) | BridgeError::Store(_))) => return Err(e),
            Err(e) => {
                tracing::warn!(
                    "Kafka bridge to '{}': {e}; retrying in {:.1} s",
                    cfg.topic,
                    backoff.as_secs_f64()
                );
                shared.update(|s| {
                    s.state = "retrying".into();
                    s.in_flight = 0;
                    s.last_error = Some(e.to_string());
                });
                let until = Instant::now() + backoff;
                while !shared.stopping() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    cp.save(&cfg.checkpoint)
}

/// The topic's partition count, creating the topic if there is none.
fn ensure_topic(cfg: &BridgeConfig) -> Result<i32, BridgeError> {
    let mut c = base_config(cfg);
    apply_extra(&mut c, cfg);
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let count = |admin: &AdminClient<DefaultClientContext>| -> Result<Option<i32>, BridgeError> {
        let md = admin
            .inner()
            .fetch_metadata(Some(&cfg.topic), BROKER_TIMEOUT)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == cfg.topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|&n| n > 0)
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    };
    if let Some(n) = count(&admin)? {
        return Ok(n);
    }
    tracing::info!(
        "creating topic '{}' with {} partitions",
        cfg.topic,
        cfg.partitions
    );
    let topic = NewTopic::new(
        &cfg.topic,
        cfg.partitions,
        TopicReplication::Fixed(cfg.replication),
    );
    let opts = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics([&topic], &opts))?;
    for r in results {
        if let Err((_, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(BridgeError::Topic {
                topic: cfg.topic.clone(),
                reason: format!("cannot create it: {code}"),
            });
        }
    }
    let deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        if let Some(n) = count(&admin)? {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(BridgeError::Topic {
                topic: cfg.topic.clone(),
                reason: "created, but the broker lists no partitions for it".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(kappa-source, kappa-offset)` of a record in the topic.
fn source_offset<M: Message>(m: &M) -> Option<(&[u8], u64)> {
    let headers = m.headers()?;
    let (mut source, mut offset) = (None, None);
    for h in headers.iter() {
        match h.key {
            H_SOURCE => source = h.value,
            H_OFFSET => {
                offset = h
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok());
            }
            _ => {}
        }
    }
    Some((source?, offset?))
}

/// Read every partition from its checkpointed offset to its end: the log
/// offsets (at or after the checkpoint) this node's records in the topic
/// hold, with where they sit.
fn read_back(
    cfg: &BridgeConfig,
    me: &str,
    cp: &Checkpoint,
    partitions: i32,
    shared: &Shared,
) -> Result<HashMap<u64, (i32, i64)>, BridgeError> {
    let mut c = base_config(cfg);
    c.set("group.id", format!("kappadb-bridge-{}", cfg.topic))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    apply_extra(&mut c, cfg);
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut open = HashSet::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&cfg.topic, p, BROKER_TIMEOUT)?;
        let from = cp.partitions.get(&p).copied().unwrap_or(0).max(low);
        if from < high {
            tpl.add_partition_offset(&cfg.topic, p, Offset::Offset(from))?;
            open.insert(p);
        }
    }
    let mut found = HashMap::new();
    if open.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    while !open.is_empty() && !shared.stopping() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last.elapsed() > READ_BACK_STALL {
                    return Err(BridgeError::Topic {
                        topic: cfg.topic.clone(),
                        reason: format!(
                            "reading it back stalled for {} s",
                            READ_BACK_STALL.as_secs()
                        ),
                    });
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                last = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = Instant::now();
                if let Some((source, offset)) = source_offset(&m)
                    && source == me.as_bytes()
                    && offset >= cp.offset
                {
                    found.insert(offset, (m.partition(), m.offset()));
                }
            }
        }
    }
    Ok(found)
}

fn producer(cfg: &BridgeConfig, ctx: Ctx) -> Result<BaseProducer<Ctx>, BridgeError> {
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give up on a message: a record that timed out could leave a
        // gap before a later one that got through.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("batch.num.messages", "2000")
        // Java's partitioner, so Kafka Streams and friends agree on where
        // a key lives.
        .set("partitioner", "murmur2_random")
        .set(
            "queue.buffering.max.messages",
            (cfg.max_in_flight + READ_BURST).to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            (cfg.max_in_flight_bytes / 1024 * 2 + 1024).to_string(),
        );
    apply_extra(&mut c, cfg);
    Ok(c.create_with_context(ctx)?)
}

/// Everything in `pending` from the front that is settled moves into the
/// checkpoint.
fn fold(pending: &mut VecDeque<Slot>, cp: &mut Checkpoint) {
    while let Some(Slot {
        at: Some((p, k)), ..
    }) = pending.front()
    {
        let (p, k) = (*p, *k);
        if p >= 0 {
            let e = cp.partitions.entry(p).or_insert(0);
            *e = (*e).max(k + 1);
        }
        if let Some(s) = pending.pop_front() {
            cp.offset = s.next_offset;
            cp.records += 1;
        }
    }
}

/// One connection's life: read back, then produce until stopped (`Ok`) or
/// an error (`Err`, after which the caller retries from the checkpoint).
fn session(
    db: &Db,
    cfg: &BridgeConfig,
    shared: &Arc<Shared>,
    cp: &mut Checkpoint,
    backoff: &mut Duration,
) -> Result<(), BridgeError> {
    shared.update(|s| s.state = "recovering".into());
    let me = db.feed_id().to_string();
    let partitions = ensure_topic(cfg)?;
    let present = read_back(cfg, &me, cp, partitions, shared)?;
    if shared.stopping() {
        return Ok(());
    }
    if !present.is_empty() {
        tracing::info!(
            "Kafka bridge to '{}': {} records after the checkpoint are in the topic already",
            cfg.topic,
            present.len()
        );
    }
    let (tx, rx): (Sender<Ack>, Receiver<Ack>) = channel();
    let producer = producer(
        cfg,
        Ctx {
            acks: tx,
            shared: shared.clone(),
        },
    )?;
    shared.update(|s| {
        s.state = "running".into();
        s.last_error = None;
    });
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let (mut in_flight, mut in_flight_bytes) = (0usize, 0usize);
    let mut tail = db.tail(cp.offset);
    let mut saved = (cp.offset, Instant::now());
    let mut stopping_since: Option<Instant> = None;
    loop {
        if shared.stopping() && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
        }
        let mut read = 0usize;
        let (mut skipped, mut acked) = (0u64, 0u64);
        while stopping_since.is_none()
            && in_flight < cfg.max_in_flight
            && in_flight_bytes < cfg.max_in_flight_bytes
            && read < READ_BURST
        {
            let next = if read == 0 && pending.is_empty() {
                tail.next_timeout(Duration::from_millis(100))
            } else {
                tail.try_next()
            };
            let Some(rec) = next else { break };
            let rec = rec?;
            read += 1;
            if let Some(&at) = present.get(&rec.offset) {
                pending.push_back(Slot {
                    offset: rec.offset,
                    next_offset: rec.next_offset,
                    at: Some(at),
                    bytes: 0,
                });
                skipped += 1;
                continue;
            }
            let Some(k) = codec::encode(&rec) else {
                tracing::error!(
                    "Kafka bridge: the log record at offset {} is of a kind this build cannot encode; skipped",
                    rec.offset
                );
                pending.push_back(Slot {
                    offset: rec.offset,
                    next_offset: rec.next_offset,
                    at: Some((-1, -1)),
                    bytes: 0,
                });
                continue;
            };
            let bytes = send(&producer, cfg, &me, rec.offset, &k)?;
            in_flight += 1;
            in_flight_bytes += bytes;
            pending.push_back(Slot {
                offset: rec.offset,
                next_offset: rec.next_offset,
                at: None,
                bytes,
            });
        }
        let wait = if read == 0 && in_flight > 0 { 20 } else { 0 };
        producer.poll(Duration::from_millis(wait));
        for ack in rx.try_iter() {
            let at = ack.result?;
            let Ok(i) = pending.binary_search_by_key(&ack.offset, |s| s.offset) else {
                continue;
            };
            if pending[i].at.is_none() {
                pending[i].at = Some(at);
                in_flight -= 1;
                in_flight_bytes -= pending[i].bytes;
                acked += 1;
            }
        }
        if acked > 0 {
            *backoff = cfg.retry_after;
        }
        fold(&mut pending, cp);
        shared.update(|s| {
            s.delivered_offset = cp.offset;
            s.delivered_records = cp.records;
            s.in_flight = in_flight as u64;
            s.produced += acked;
            s.skipped += skipped;
        });
        if let Some(since) = stopping_since
            && (in_flight == 0 || since.elapsed() > Duration::from_secs(5))
        {
            cp.save(&cfg.checkpoint)?;
            return Ok(());
        }
        if cp.offset != saved.0 && saved.1.elapsed() >= cfg.checkpoint_every {
            cp.save(&cfg.checkpoint)?;
            saved = (cp.offset, Instant::now());
        }
    }
}

/// Produce one record, waiting (and polling) while librdkafka's queue is
/// full. Returns the bytes it holds in flight.
fn send(
    producer: &BaseProducer<Ctx>,
    cfg: &BridgeConfig,
    me: &str,
    log_offset: u64,
    k: &KafkaRecord,
) -> Result<usize, BridgeError> {
    let offset = log_offset.to_string();
    let bytes = k.key.len() + k.value.len() + k.json.len();
    let mut record = BaseRecord::with_opaque_to(&cfg.topic, Box::new(log_offset))
        .key(k.key.as_bytes())
        .payload(&k.value)
        .headers(
            OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: H_KIND,
                    value: Some(k.kind),
                })
                .insert(Header {
                    key: H_SOURCE,
                    value: Some(me),
                })
                .insert(Header {
                    key: H_OFFSET,
                    value: Some(&offset),
                })
                .insert(Header {
                    key: H_JSON,
                    value: Some(&k.json),
                }),
        );
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(bytes),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}
