//! Indexing benchmark: builds a database of N kv puts (~100 bytes each,
//! over N/10 keys, appended in batches of 10,000), then measures folding
//! the `kv` view, the `timeline` view, both at once, full rebuilds, and the
//! bytes each view takes.
//!
//! `KAPPADB_BENCH_N` sets N (default 1,000,000); `KAPPADB_BENCH_ONLY=kv`
//! stops after the kv figures (for profiling). Run with
//! `cargo bench -p kappadb-views --bench index`.

use std::path::Path;
use std::time::Instant;

use kappadb_core::{CreateOptions, Db};
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
    IndexerConfig {
        live: false,
        builtins: false,
        ..Default::default()
    }
}

fn open(db: &Db) -> Indexer {
    Indexer::open_with(db.clone(), config()).unwrap_or_else(|e| panic!("open indexer: {e}"))
}

fn main() {
    let n: usize = std::env::var("KAPPADB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys = (n / 10).max(1);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::create(tmp.path(), CreateOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("kappadb-views index bench: {n} entries, {keys} keys");
    println!(
        "payload example: {}",
        String::from_utf8_lossy(&payload(0, keys))
    );

    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let m = 10_000.min(n - i);
        let batch: Vec<Vec<u8>> = (i..i + m).map(|j| payload(j, keys)).collect();
        db.append_batch(batch)
            .unwrap_or_else(|e| panic!("append: {e}"));
        i += m;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "append:            {n} entries in {secs:.2} s ({:.0} entries/s), log {:.1} MiB",
        n as f64 / secs,
        mib(db.log_end())
    );
    let sled_dir = tmp.path().join("sled");
    db.flush_index().unwrap_or_else(|e| panic!("{e}"));
    let base = dir_size(&sled_dir);
    println!("sled dir (feed index only): {:.1} MiB", mib(base));

    // kv alone.
    let ix = open(&db);
    ix.register(KvView).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let cpu = cpu_secs();
    ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    println!(
        "kv index:          {secs:.2} s, {:.0} entries/s ({cpu:.2} CPU s, {:.0} entries per CPU s)",
        n as f64 / secs,
        n as f64 / cpu
    );
    db.flush_index().unwrap_or_else(|e| panic!("{e}"));
    let after_kv = dir_size(&sled_dir);
    println!(
        "sled dir growth:   kv {:.1} MiB",
        mib(after_kv.saturating_sub(base))
    );
    if std::env::var("KAPPADB_BENCH_ONLY").as_deref() == Ok("kv") {
        return;
    }

    // timeline alone.
    ix.register(TimelineView).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "timeline index:    {secs:.2} s, {:.0} entries/s",
        n as f64 / secs
    );
    db.flush_index().unwrap_or_else(|e| panic!("{e}"));
    let after_timeline = dir_size(&sled_dir);

    for name in ["kv", "timeline"] {
        let t = Instant::now();
        ix.rebuild(name, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name} rebuild:{}{secs:.2} s, {:.0} entries/s",
            " ".repeat(10 - name.len()),
            n as f64 / secs
        );
    }

    // Both views from scratch at once: one log read per batch, the two
    // folds in parallel.
    ix.start_rebuild("kv").unwrap_or_else(|e| panic!("{e}"));
    ix.start_rebuild("timeline")
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    ix.catch_up().unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "kv+timeline rebuild together: {secs:.2} s, {:.0} entries/s",
        n as f64 / secs
    );

    for name in ["kv", "timeline"] {
        let d = ix.digest(name).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{name} data:{}{} keys, {:.1} MiB of keys+values, digest {}",
            " ".repeat(13 - name.len()),
            d.keys,
            mib(d.bytes),
            &d.to_hex()[..16]
        );
    }
    println!(
        "sled dir growth:   timeline {:.1} MiB (sled's own overhead included)",
        mib(after_timeline.saturating_sub(after_kv))
    );
}
