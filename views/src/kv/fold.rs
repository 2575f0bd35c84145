//! Folding into the kv view: ops (puts and deletes of keys), and the
//! deletion of ops (deletion entries, forget markers), which recomputes
//! each key they touch as if the deleted ops had never been folded.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kappadb_core::{EntryId, FeedId};

use super::{
    HISTORY_INLINE, History, KvRecord, NAME, Op, SUPERSEDED, StoredHead, UNDO, Undo, chunk_prefix,
    decode_record, parse_op, parse_op_json, record_key, superseded_key,
};
use crate::encoding::{canonical_json, put_escaped};
use crate::error::ViewError;
use crate::undo::UndoBatch;
use crate::view::{ViewRecord, ViewTx};

/// Below this many ops a batch is folded on one thread.
const PARALLEL_MIN: usize = 512;

fn parallelism() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// FNV-1a: which half of the key space a key falls in.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn damaged(what: &'static str) -> ViewError {
    ViewError::damaged(NAME, what)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ViewError> {
    postcard::to_stdvec(value).map_err(|e| ViewError::fold(NAME, e.to_string()))
}

/// The kv view's fold (see the module docs of [`super`]).
pub(super) fn apply(batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
    let mut undo = UndoBatch::new(UNDO);
    let mut run: Vec<(&ViewRecord, Op<'_>)> = Vec::new();
    for record in batch {
        let undone = if let Some(d) = record.deleted() {
            let mut undone = Vec::new();
            for &seq in d.seqs() {
                if let Some(data) = undo.take(tx, &record.author, seq)? {
                    undone.push((seq, data));
                }
            }
            if let Some(up_to) = d.up_to() {
                undone.extend(undo.take_up_to(tx, &record.author, Some(up_to))?);
            }
            undone
        } else if record.forgets() {
            undo.take_up_to(tx, &record.author, None)?
        } else {
            match parse_op(record) {
                Some(op) => {
                    let data = Undo {
                        key: op.key.to_string(),
                        links: op.links.clone(),
                    };
                    undo.put(tx, &record.author, record.seq, encode(&data)?)?;
                    run.push((record, op));
                }
                None => tx.skip(),
            }
            continue;
        };
        // Ops before a deletion are folded before it.
        fold_run(std::mem::take(&mut run), tx)?;
        if !undone.is_empty() {
            remove_ops(record.author, undone, tx)?;
        }
    }
    fold_run(run, tx)?;
    undo.write(tx)
}

/// Fold ops (in log order), on two threads when there are many.
fn fold_run(ops: Vec<(&ViewRecord, Op<'_>)>, tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
    if ops.len() < PARALLEL_MIN || parallelism() < 2 {
        return fold_ops(ops.iter(), tx);
    }
    // Ops on different keys commute and touch disjoint keys: fold two
    // halves of the key space on two threads (sled reads run in
    // parallel), then commit them together.
    let mut fork = tx.fork();
    let in_fork = |op: &Op<'_>| key_hash(op.key) & 1 == 1;
    std::thread::scope(|s| {
        let forked = s.spawn(|| fold_ops(ops.iter().filter(|(_, op)| in_fork(op)), &mut fork));
        let here = fold_ops(ops.iter().filter(|(_, op)| !in_fork(op)), tx);
        let there = forked
            .join()
            .unwrap_or_else(|_| Err(ViewError::fold(NAME, "the fold panicked")));
        here.and(there)
    })?;
    tx.absorb(fork);
    Ok(())
}

/// A key's record as loaded for a batch, and whether it was stored.
type Loaded = (KvRecord, bool);

fn load(tx: &ViewTx<'_>, key: &str) -> Result<Loaded, ViewError> {
    Ok(match tx.get(&record_key(key))? {
        Some(bytes) => (decode_record(&bytes)?, true),
        None => (KvRecord::default(), false),
    })
}

fn store(tx: &mut ViewTx<'_>, key: &str, (rec, existed): Loaded) -> Result<(), ViewError> {
    let rkey = record_key(key);
    if rec.heads.is_empty() && !rec.linked && rec.history.is_empty() {
        if existed {
            tx.remove(&rkey);
        }
    } else {
        tx.insert(&rkey, encode(&rec)?);
    }
    Ok(())
}

fn count(tx: &ViewTx<'_>, key: &str, id: &EntryId) -> Result<u32, ViewError> {
    match tx.get(&superseded_key(key, id))? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| damaged("a link count does not decode"))?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

fn set_count(tx: &mut ViewTx<'_>, key: &str, id: &EntryId, n: u32) {
    if n == 0 {
        tx.remove(superseded_key(key, id));
    } else {
        tx.insert(superseded_key(key, id), n.to_be_bytes().to_vec());
    }
}

/// Fold ops (in log order) into `tx`. Each key's record is read once, in
/// key order (neighbouring keys share sled pages), changed in memory by
/// every op on it, and written once.
fn fold_ops<'r>(
    ops: impl Iterator<Item = &'r (&'r ViewRecord, Op<'r>)>,
    tx: &mut ViewTx<'_>,
) -> Result<(), ViewError> {
    let ops: Vec<&(&ViewRecord, Op<'_>)> = ops.collect();
    let mut keys: Vec<&str> = ops.iter().map(|(_, op)| op.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut records: HashMap<&str, Loaded> = HashMap::with_capacity(keys.len());
    for key in keys {
        records.insert(key, load(tx, key)?);
    }
    for (record, op) in ops {
        let Some((rec, _)) = records.get_mut(op.key) else {
            continue;
        };
        // The author's earlier ops on this key: a feed arrives in seq
        // order, so every head of this author is older.
        rec.heads.retain(|h| h.author != record.author);
        push_history(tx, op.key, rec, record.author, record.seq)?;
        // Whether an op folded earlier links this one.
        let superseded = rec.linked && count(tx, op.key, &record.id)? > 0;
        for link in &op.links {
            let n = count(tx, op.key, link)?;
            set_count(tx, op.key, link, n.saturating_add(1));
            rec.heads.retain(|h| h.id != *link);
            rec.linked = true;
        }
        if !superseded {
            insert_head(
                rec,
                StoredHead {
                    timestamp: record.timestamp,
                    author: record.author,
                    seq: record.seq,
                    id: record.id,
                    value: op.value.map(canonical_json),
                },
            );
        }
    }
    for (key, loaded) in records {
        store(tx, key, loaded)?;
    }
    Ok(())
}

fn insert_head(rec: &mut KvRecord, head: StoredHead) {
    let at = rec.heads.partition_point(|h| h.order() < head.order());
    rec.heads.insert(at, head);
}

/// Record that `author`'s op at `seq` is on this key.
fn push_history(
    tx: &mut ViewTx<'_>,
    key: &str,
    rec: &mut KvRecord,
    author: FeedId,
    seq: u64,
) -> Result<(), ViewError> {
    let at = rec.history.partition_point(|h| h.author < author);
    if rec.history.get(at).is_none_or(|h| h.author != author) {
        rec.history.insert(
            at,
            History {
                author,
                recent: Vec::new(),
                spilled: 0,
            },
        );
    }
    let h = &mut rec.history[at];
    h.recent.push(seq);
    if h.recent.len() >= 2 * HISTORY_INLINE {
        // Move the older half to a chunk named by its first seq.
        let older: Vec<u64> = h.recent.drain(..HISTORY_INLINE).collect();
        let mut ckey = chunk_prefix(key, &author);
        ckey.extend_from_slice(&older[0].to_be_bytes());
        h.spilled += older.len() as u64;
        tx.insert(ckey, encode(&older)?);
    }
    Ok(())
}

/// Forget that `author`'s op at `seq` is on this key; false if it was not.
fn pull_history(
    tx: &mut ViewTx<'_>,
    key: &str,
    rec: &mut KvRecord,
    author: FeedId,
    seq: u64,
) -> Result<bool, ViewError> {
    let Ok(at) = rec.history.binary_search_by(|h| h.author.cmp(&author)) else {
        return Ok(false);
    };
    let prefix = chunk_prefix(key, &author);
    let h = &mut rec.history[at];
    let found = if let Ok(i) = h.recent.binary_search(&seq) {
        h.recent.remove(i);
        true
    } else if h.spilled > 0 {
        // In the chunk with the greatest first seq not above it.
        let chunks = tx.scan_prefix(&prefix)?;
        let mut found = false;
        for (ckey, value) in chunks.into_iter().rev() {
            let first: [u8; 8] = ckey
                .get(prefix.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| damaged("a history chunk key does not decode"))?;
            if u64::from_be_bytes(first) > seq {
                continue;
            }
            let mut seqs: Vec<u64> = postcard::from_bytes(&value)
                .map_err(|_| damaged("a history chunk does not decode"))?;
            if let Ok(i) = seqs.binary_search(&seq) {
                seqs.remove(i);
                h.spilled -= 1;
                tx.remove(&ckey);
                if let Some(first) = seqs.first() {
                    let mut nkey = prefix.clone();
                    nkey.extend_from_slice(&first.to_be_bytes());
                    tx.insert(nkey, encode(&seqs)?);
                }
                found = true;
            }
            break;
        }
        found
    } else {
        false
    };
    // Keep the newest seqs inline: bring the newest chunk back when the
    // inline part runs empty.
    if h.recent.is_empty() && h.spilled > 0 {
        if let Some((ckey, value)) = tx.scan_prefix(&prefix)?.pop() {
            let seqs: Vec<u64> = postcard::from_bytes(&value)
                .map_err(|_| damaged("a history chunk does not decode"))?;
            tx.remove(&ckey);
            h.spilled = h.spilled.saturating_sub(seqs.len() as u64);
            h.recent = seqs;
        } else {
            h.spilled = 0;
        }
    }
    if h.recent.is_empty() && h.spilled == 0 {
        rec.history.remove(at);
    }
    Ok(found)
}

/// Remove ops of `author` (seq and undo record each) and recompute the
/// keys they were on.
fn remove_ops(
    author: FeedId,
    undone: Vec<(u64, Vec<u8>)>,
    tx: &mut ViewTx<'_>,
) -> Result<(), ViewError> {
    let mut by_key: BTreeMap<String, Vec<(u64, Vec<EntryId>)>> = BTreeMap::new();
    for (seq, data) in undone {
        let u: Undo =
            postcard::from_bytes(&data).map_err(|_| damaged("an undo record does not decode"))?;
        by_key.entry(u.key).or_default().push((seq, u.links));
    }
    for (key, gone) in by_key {
        let mut loaded = load(tx, &key)?;
        let rec = &mut loaded.0;
        for (seq, links) in gone {
            pull_history(tx, &key, rec, author, seq)?;
            rec.heads.retain(|h| !(h.author == author && h.seq == seq));
            for link in &links {
                let n = count(tx, &key, link)?;
                set_count(tx, &key, link, n.saturating_sub(1));
            }
        }
        // Whether any op left links anything, as a fresh fold would say.
        let mut links = vec![SUPERSEDED];
        put_escaped(&mut links, key.as_bytes());
        rec.linked = !tx.scan_prefix(&links)?.is_empty();
        recompute_heads(tx, &key, rec)?;
        store(tx, &key, loaded)?;
    }
    Ok(())
}

/// Make every author's newest op on the key a head unless a link of an op
/// on the key supersedes it. Ops already heads stay; the others are read
/// back from the log (an op whose payload is gone is about to be deleted:
/// it is left out).
fn recompute_heads(tx: &ViewTx<'_>, key: &str, rec: &mut KvRecord) -> Result<(), ViewError> {
    let heads: BTreeSet<(FeedId, u64)> = rec.heads.iter().map(|h| (h.author, h.seq)).collect();
    let newest: Vec<(FeedId, u64)> = rec
        .history
        .iter()
        .filter_map(|h| h.recent.last().map(|s| (h.author, *s)))
        .collect();
    for (author, seq) in newest {
        if heads.contains(&(author, seq)) {
            continue;
        }
        let Some(entry) = tx.entry(&author, seq)? else {
            continue;
        };
        let id = entry.id();
        if rec.linked && count(tx, key, &id)? > 0 {
            continue;
        }
        let Some(json) = entry
            .payload
            .bytes()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        let Some(op) = parse_op_json(&json).filter(|op| op.key == key) else {
            continue;
        };
        insert_head(
            rec,
            StoredHead {
                timestamp: entry.header.timestamp,
                author,
                seq,
                id,
                value: op.value.map(canonical_json),
            },
        );
    }
    Ok(())
}
