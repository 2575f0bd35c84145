//! Append benchmark: prints figures, asserts nothing.
//!
//! `cargo bench -p kappadb-core --bench append` measures, for 100-byte
//! payloads: bulk append (batches of 1000, durable at return), single
//! durable appends, ingest of another feed's entries (batch signature
//! verification), and bytes on disk per entry. Set `KAPPA_BENCH_N` to change
//! the bulk entry count (default 200,000) and `KAPPA_BENCH_DIR` to put the
//! database on another file system (default: the system temp dir).

use std::path::Path;
use std::time::Instant;

use kappadb_core::{CreateOptions, Db, Entry, SigningKey};

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("{{\"type\":\"bench\",\"i\":{i},\"pad\":\"").into_bytes();
    while p.len() < 98 {
        p.push(b'x');
    }
    p.extend_from_slice(b"\"}");
    p
}

fn main() {
    let n: u64 = std::env::var("KAPPA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let base = std::env::var_os("KAPPA_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let db = Db::create(&tmp.path().join("bulk"), CreateOptions::default()).expect("create");
    println!(
        "append benchmark: {n} entries of {} bytes, {} cores",
        payload(0).len(),
        rayon_threads()
    );

    // Bulk: batches of 1000, one fsync each.
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Vec<u8>> = (i..(i + 1000).min(n)).map(payload).collect();
        i += batch.len() as u64;
        db.append_batch(batch).expect("append_batch");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bulk append (batches of 1000, durable): {:>10.0} entries/s ({n} in {secs:.2} s)",
        n as f64 / secs
    );
    db.flush_index().expect("flush");
    let log_bytes = dir_size(&tmp.path().join("bulk/log"));
    let sled_bytes = dir_size(&tmp.path().join("bulk/sled"));
    println!(
        "bytes on disk per entry: log {:.1}, index {:.1}, total {:.1}",
        log_bytes as f64 / n as f64,
        sled_bytes as f64 / n as f64,
        (log_bytes + sled_bytes) as f64 / n as f64
    );

    // Single durable appends.
    let singles = 5_000u64;
    let start = Instant::now();
    for i in 0..singles {
        db.append(payload(i)).expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "single durable append:                  {:>10.0} entries/s ({singles} in {secs:.2} s)",
        singles as f64 / secs
    );

    // Ingest of a foreign feed in pages of 1000 (batch verification).
    let key = SigningKey::from_seed([42; 32]);
    let m = (n / 2).max(1000);
    let mut entries: Vec<Entry> = Vec::with_capacity(m as usize);
    for i in 0..m {
        let e = Entry::sign(&key, entries.last(), 1_700_000_000_000 + i, payload(i));
        entries.push(e);
    }
    let db2 = Db::create(&tmp.path().join("ingest"), CreateOptions::default()).expect("create");
    let start = Instant::now();
    for page in entries.chunks(1000) {
        let r = db2.ingest_page(page.to_vec()).expect("ingest");
        assert!(!r.dropped);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ingest (pages of 1000, verified, durable): {:>8.0} entries/s ({m} in {secs:.2} s)",
        m as f64 / secs
    );

    // Reindex from the log.
    drop(db);
    let start = Instant::now();
    let db = Db::open_reindex(&tmp.path().join("bulk"), &mut |_, _| {}).expect("reindex");
    let secs = start.elapsed().as_secs_f64();
    let records = db.status().records;
    println!(
        "reindex:                                {:>10.0} records/s ({records} in {secs:.2} s)",
        records as f64 / secs
    );
    let start = Instant::now();
    let report = db.verify(&mut |_, _| {}).expect("verify");
    let secs = start.elapsed().as_secs_f64();
    assert!(report.problems.is_empty());
    println!(
        "verify:                                 {:>10.0} records/s ({records} in {secs:.2} s)",
        records as f64 / secs
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
