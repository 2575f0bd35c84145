//! Deletion and compaction benchmark: builds a log of about
//! `KAPPADB_BENCH_MB` MiB (default 1,024) of ~1 KiB kv puts over N/10
//! keys, folds the `kv` and `timeline` views, deletes every other entry
//! (deletions of 2,000 targets each), folds the deletions, compacts the
//! log, and rebuilds both views from the compacted log. It prints the time
//! of each step, the bytes on disk before and after, the bytes given back,
//! and checks that the views' digests after the deletions, after the
//! compaction and after the rebuilds are equal, and that `verify` passes.
//!
//! Run with `cargo bench -p kappadb-views --bench compact`.

use std::path::Path;
use std::time::Instant;

use kappadb_core::{CreateOptions, Db};
use kappadb_views::{Indexer, IndexerConfig, KvView, TimelineView, ViewDigest};

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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn payload(i: usize, keys: usize) -> Vec<u8> {
    let key = format!("key-{:06}", (i * 7919) % keys);
    let value = format!("value {i:>10} {}", "x".repeat(960));
    format!(r#"{{"type":"kv.put","key":"{key}","value":"{value}"}}"#).into_bytes()
}

/// The kv and timeline digests' hashes (a digest also carries the local
/// checkpoint, which a rebuild moves).
fn digests(ix: &Indexer) -> (String, String) {
    let hex = |name: &str| {
        ix.digest(name)
            .map(|d: ViewDigest| d.to_hex())
            .unwrap_or_else(|e| panic!("digest: {e}"))
    };
    (hex("kv"), hex("timeline"))
}

fn open_indexer(db: &Db) -> Indexer {
    let config = IndexerConfig {
        live: false,
        builtins: false,
        ..Default::default()
    };
    let ix = Indexer::open_with(db.clone(), config).unwrap_or_else(|e| panic!("indexer: {e}"));
    ix.register(KvView)
        .unwrap_or_else(|e| panic!("register: {e}"));
    ix.register(TimelineView)
        .unwrap_or_else(|e| panic!("register: {e}"));
    ix
}

fn main() {
    let mb: u64 = std::env::var("KAPPADB_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let n = (mb * 1024 * 1024 / 1100) as usize;
    let keys = (n / 10).max(1);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = Db::create(tmp.path(), CreateOptions::default()).unwrap_or_else(|e| panic!("{e}"));

    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Vec<u8>> = (i..(i + 10_000).min(n)).map(|j| payload(j, keys)).collect();
        i += batch.len();
        db.append_batch(batch).unwrap_or_else(|e| panic!("{e}"));
    }
    let log_dir = tmp.path().join("log");
    let before = dir_size(&log_dir);
    println!(
        "appended {n} entries ({:.0} MiB of log) in {:.1} s",
        mib(db.status().log_bytes),
        t.elapsed().as_secs_f64()
    );

    let ix = open_indexer(&db);
    let t = Instant::now();
    ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
    println!("folded kv + timeline in {:.1} s", t.elapsed().as_secs_f64());

    // Delete every other entry (seqs 1, 3, 5, ...).
    let t = Instant::now();
    let targets: Vec<u64> = (1..=n as u64).step_by(2).collect();
    for chunk in targets.chunks(2_000) {
        db.delete(chunk, None)
            .unwrap_or_else(|e| panic!("delete: {e}"));
    }
    let status = db.status();
    println!(
        "deleted {} entries ({} deletions, {:.0} MiB erased in place) in {:.1} s",
        status.erased_entries,
        targets.len().div_ceil(2_000),
        mib(status.erased_bytes),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "folded the deletions into kv + timeline in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let after_delete = digests(&ix);

    let reclaimable = db.status().reclaimable_bytes;
    let t = Instant::now();
    let report = db
        .compact(0, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("compact: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let after = dir_size(&log_dir);
    println!(
        "compacted {} segments in {secs:.1} s ({:.0} MiB/s of log read): {:.0} MiB -> {:.0} MiB on disk, \
         {:.0} MiB given back ({:.0} MiB were reclaimable)",
        report.segments,
        mib(report.bytes_before) / secs,
        mib(before),
        mib(after),
        mib(report.reclaimed()),
        mib(reclaimable)
    );
    assert_eq!(db.status().reclaimable_bytes, 0, "nothing left to reclaim");
    let after_compact = digests(&ix);
    assert_eq!(after_delete, after_compact, "compaction changed a view");

    let t = Instant::now();
    for name in ["kv", "timeline"] {
        ix.rebuild(name, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("rebuild: {e}"));
    }
    println!(
        "rebuilt kv + timeline from the compacted log in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(after_delete, digests(&ix), "a rebuild changed a view");
    println!(
        "digests equal after deletion, compaction and rebuild: kv {} timeline {}",
        after_delete.0, after_delete.1
    );

    let t = Instant::now();
    let verify = db.verify(&mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    println!(
        "verify of the compacted log: ok, {} erased payloads, {} deletions, {:.1} s",
        verify.erased_payloads,
        verify.deletions,
        t.elapsed().as_secs_f64()
    );
}
