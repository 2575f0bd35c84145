//! Indexing benchmark: builds a database of N kv puts (~100 bytes each,
//! over N/10 keys, appended in batches of 10,000), then measures folding
//! the `kv` view, the `timeline` view and a field index on `/key`, each
//! alone, their full rebuilds, all of them rebuilt at once, and the bytes
//! each view takes.
//!
//! `KAPPADB_BENCH_N` sets N (default 1,000,000); `KAPPADB_BENCH_ONLY` a
//! comma-separated subset of `kv`, `timeline` and `field` (for profiling);
//! `KAPPADB_BENCH_BATCH` the indexer's `batch_records`;
//! `KAPPADB_BENCH_AUTHORS=A` makes the entries those of A other feeds,
//! round robin, one millisecond apart (ingested, not appended): the case
//! where no two entries share an author and a millisecond.
//! Run with `cargo bench -p kappadb-views --bench index`.

use std::path::Path;
use std::time::Instant;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry};
use kappadb_views::timeline::{Order, TimelineQuery};
use kappadb_views::{Indexer, IndexerConfig, KvView, TimelineView};

// sled allocates on every operation; glibc's malloc halves its speed under
// two threads. The `kappa` binary should use the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(items) = std::fs::read_dir(path) {
        for item in items.flatten() {
            match item.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&item.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// CPU seconds this process has used (user + system), from /proc; 0 where
/// there is no /proc.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn payload(i: usize, keys: usize) -> Vec<u8> {
    let key = format!("key-{:06}", (i * 7919) % keys);
    // Pad the value so the payload is about 100 bytes.
    let value = format!("value {i:>10} {}", "x".repeat(36));
    format!(r#"{{"type":"kv.put","key":"{key}","value":"{value}"}}"#).into_bytes()
}

fn config() -> IndexerConfig {
    let mut config = IndexerConfig {
        live: false,
        builtins: false,
        ..Default::default()
    };
    if let Some(n) = std::env::var("KAPPADB_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_records = n;
    }
    config
}

fn open(db: &Db) -> Indexer {
    Indexer::open_with(db.clone(), config()).unwrap_or_else(|e| panic!("open indexer: {e}"))
}

/// The field index the bench declares: on the kv key (a string on every
/// entry, 1/10 as many distinct values as entries).
const FIELD: &str = "by-key";

fn register(ix: &Indexer, name: &str) {
    let res = match name {
        "kv" => ix.register(KvView),
        "timeline" => ix.register(TimelineView),
        FIELD => ix.declare_field_index(FIELD, "/key"),
        other => panic!("unknown view {other} (kv, timeline, {FIELD})"),
    };
    res.unwrap_or_else(|e| panic!("register {name}: {e}"));
}

fn main() {
    let n: usize = std::env::var("KAPPADB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("KAPPADB_BENCH_ONLY").unwrap_or_default();
    let views: Vec<&str> = if only.is_empty() {
        vec!["kv", "timeline", FIELD]
    } else {
        only.split(',')
            .map(|v| if v == "field" { FIELD } else { v })
            .collect()
    };
    let authors: usize = std::env::var("KAPPADB_BENCH_AUTHORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let keys = (n / 10).max(1);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::create(tmp.path(), CreateOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("kappadb-views index bench: {n} entries, {keys} keys, views {views:?}");
    println!(
        "payload example: {}",
        String::from_utf8_lossy(&payload(0, keys))
    );

    let t = Instant::now();
    let mut i = 0;
    if authors <= 1 {
        while i < n {
            let m = 10_000.min(n - i);
            let batch: Vec<Vec<u8>> = (i..i + m).map(|j| payload(j, keys)).collect();
            db.append_batch(batch)
                .unwrap_or_else(|e| panic!("append: {e}"));
            i += m;
        }
    } else {
        // Round robin over the feeds, one millisecond apart: no two
        // entries share a timestamp.
        let mut peers: Vec<TestPeer> = (0..authors).map(|a| TestPeer::new(a as u64)).collect();
        while i < n {
            let m = 10_000.min(n - i);
            let batch: Vec<Entry> = (i..i + m)
                .map(|j| {
                    let peer = &mut peers[j % authors];
                    let entry = peer.make(1_700_000_000_000 + j as u64, payload(j, keys));
                    // Only the last entry is needed, to sign the next.
                    peer.entries.drain(..peer.entries.len() - 1);
                    entry
                })
                .collect();
            db.ingest(batch).unwrap_or_else(|e| panic!("ingest: {e}"));
            i += m;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "append:            {n} entries of {authors} feed(s) in {secs:.2} s ({:.0} entries/s), log {:.1} MiB",
        n as f64 / secs,
        mib(db.log_end())
    );
    let sled_dir = tmp.path().join("sled");
    db.flush_index().unwrap_or_else(|e| panic!("{e}"));
    let mut size = dir_size(&sled_dir);
    println!("sled dir (feed index only): {:.1} MiB", mib(size));

    // Each view alone, from an empty tree.
    let ix = open(&db);
    for &name in &views {
        register(&ix, name);
        let t = Instant::now();
        let cpu = cpu_secs();
        ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu;
        db.flush_index().unwrap_or_else(|e| panic!("{e}"));
        let after = dir_size(&sled_dir);
        println!(
            "{name} index:{}{secs:.2} s, {:.0} entries/s ({cpu:.2} CPU s); sled dir +{:.1} MiB",
            " ".repeat(10 - name.len()),
            n as f64 / secs,
            mib(after.saturating_sub(size))
        );
        size = after;
    }

    // Full rebuilds, one view at a time, while the old data stays.
    for &name in &views {
        let t = Instant::now();
        ix.rebuild(name, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name} rebuild:{}{secs:.2} s, {:.0} entries/s",
            " ".repeat(8 - name.len().min(8)),
            n as f64 / secs
        );
    }

    // Every view from scratch at once: one log read per batch, the folds
    // in parallel.
    if views.len() > 1 {
        for &name in &views {
            ix.start_rebuild(name).unwrap_or_else(|e| panic!("{e}"));
        }
        let t = Instant::now();
        ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{} rebuild together: {secs:.2} s, {:.0} entries/s",
            views.join("+"),
            n as f64 / secs
        );
    }

    if views.contains(&"timeline") {
        timeline_queries(&ix);
    }

    for &name in &views {
        let d = ix.digest(name).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{name} data:{}{} keys, {:.1} MiB of keys+values, digest {}",
            " ".repeat(13 - name.len().min(13)),
            d.keys,
            mib(d.bytes),
            &d.to_hex()[..16]
        );
    }
    db.flush_index().unwrap_or_else(|e| panic!("{e}"));
    println!("sled dir at the end: {:.1} MiB", mib(dir_size(&sled_dir)));
}

/// Timeline query latency: the newest 20 entries, the newest 20 of a
/// type, and 20 oldest-first from a point in the middle (each the mean of
/// 200 runs, entries read back from the log included).
fn timeline_queries(ix: &Indexer) {
    let tl = ix.timeline().unwrap_or_else(|e| panic!("{e}"));
    let end = |order| {
        let q = TimelineQuery {
            limit: 1,
            order,
            ..Default::default()
        };
        let got = tl.query(&q).unwrap_or_else(|e| panic!("{e}"));
        got.first().map(|i| i.timestamp)
    };
    let (Some(oldest), Some(newest)) = (end(Order::Ascending), end(Order::Descending)) else {
        return;
    };
    let middle = oldest + (newest - oldest) / 2;
    let queries = [
        (
            "newest 20",
            TimelineQuery {
                limit: 20,
                ..Default::default()
            },
        ),
        (
            "newest 20 of a type",
            TimelineQuery {
                kind: Some("kv.put".into()),
                limit: 20,
                ..Default::default()
            },
        ),
        (
            "20 from the middle",
            TimelineQuery {
                from: Some(middle),
                limit: 20,
                order: Order::Ascending,
                ..Default::default()
            },
        ),
    ];
    for (what, q) in &queries {
        let runs = 200;
        let t = Instant::now();
        for _ in 0..runs {
            let got = tl.query(q).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.len(), 20, "{what}");
        }
        println!(
            "timeline query, {what}: {:.2} ms",
            t.elapsed().as_secs_f64() * 1000.0 / runs as f64
        );
    }
}
