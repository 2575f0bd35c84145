//! Search benchmark: N short documents (~100 bytes of English-like text
//! from a fixed-seed generator) appended to a database, then a search view
//! folds them (documents/s), 1,000 queries of 1 to 3 words run through the
//! embedding API with snippets (p50/p99 latency), the index's bytes on
//! disk are counted, and the view is rebuilt (blue/green). The same
//! documents and queries then go to SQLite FTS5 through `fts5.py` (Python's
//! standard `sqlite3`), printed side by side.
//!
//! `KAPPADB_BENCH_N` sets N (default 1,000,000); `KAPPADB_BENCH_NO_FTS5=1`
//! skips SQLite. Run with `cargo bench -p kappadb-search --bench search`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kappadb_core::{CreateOptions, Db};
use kappadb_search::{SearchExt, SearchQuery, SearchSpec};
use kappadb_views::{Indexer, IndexerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// xorshift64*, fixed seed: the same documents on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Skewed towards small values (roughly Zipf-like): a word's rank.
    fn rank(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

/// A vocabulary of `n` distinct English-like words built from syllables.
fn vocabulary(rng: &mut Rng, n: usize) -> Vec<String> {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
        "pl", "gr", "ch", "sh", "br", "cl", "fr",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ea", "ai", "ou", "y"];
    const CODAS: &[&str] = &["", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m"];
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let syllables = 1 + rng.below(3);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len())]);
            w.push_str(VOWELS[rng.below(VOWELS.len())]);
            w.push_str(CODAS[rng.below(CODAS.len())]);
        }
        if seen.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// A document of about 100 bytes.
fn document(rng: &mut Rng, words: &[String]) -> String {
    let mut s = String::with_capacity(120);
    while s.len() < 90 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&words[rng.rank(words.len())]);
    }
    s
}

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let n: usize = std::env::var("KAPPADB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(0x6b61_7070_6164_6221);
    let words = vocabulary(&mut rng, 20_000);
    let docs: Vec<String> = (0..n).map(|_| document(&mut rng, &words)).collect();
    // Queries: 1 to 3 words, from the 2,000 most common (rarer words
    // mostly match nothing).
    let queries: Vec<String> = (0..1000)
        .map(|_| {
            let k = 1 + rng.below(3);
            (0..k)
                .map(|_| words[rng.rank(2_000)].clone())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let avg = docs.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    println!("search bench: {n} documents of {avg:.0} bytes on average, 1000 queries of 1-3 words");

    let dir = tmp.path().join("db");
    let db = Db::create(&dir, CreateOptions::default()).expect("create");
    let t = Instant::now();
    for chunk in docs.chunks(10_000) {
        let payloads = chunk
            .iter()
            .map(|d| {
                serde_json::to_vec(&serde_json::json!({"type": "note", "body": d})).expect("json")
            })
            .collect();
        db.append_batch(payloads).expect("append");
    }
    println!(
        "append (not part of indexing): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let sled_before = dir_size(&dir.join("sled"));

    let indexer = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            builtins: false,
            ..Default::default()
        },
    )
    .expect("indexer");
    kappadb_search::install_declared(&indexer).expect("install");
    let t = Instant::now();
    indexer
        .declare_search("notes", SearchSpec::new(&["/body"]))
        .expect("declare");
    indexer.catch_up().expect("fold");
    let index_s = t.elapsed().as_secs_f64();
    assert_eq!(indexer.search_doc_count("notes").expect("count"), n as u64);
    let index_bytes = dir_size(&dir.join("search"));
    let sled_bytes = dir_size(&dir.join("sled")).saturating_sub(sled_before);

    let mut lat = Vec::with_capacity(queries.len());
    let mut total_hits = 0;
    for q in &queries {
        let mut sq = SearchQuery::new(q.as_str());
        sq.limit = Some(10);
        let t = Instant::now();
        let hits = indexer.search("notes", &sq).expect("query");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        total_hits += hits.len();
    }
    lat.sort_by(f64::total_cmp);

    let t = Instant::now();
    indexer.rebuild("notes", &mut |_, _| {}).expect("rebuild");
    let rebuild_s = t.elapsed().as_secs_f64();

    println!();
    println!("kappadb search view (tantivy):");
    println!(
        "  index     {:.1} s, {:.0} documents/s",
        index_s,
        n as f64 / index_s
    );
    println!(
        "  queries   p50 {:.2} ms, p99 {:.2} ms (limit 10, with snippets; {total_hits} hits)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "  on disk   {} bytes of index ({:.0} per document), sled grew {} bytes (undo records, digest)",
        index_bytes,
        index_bytes as f64 / n as f64,
        sled_bytes
    );
    println!("  rebuild   {rebuild_s:.1} s");

    if std::env::var("KAPPADB_BENCH_NO_FTS5").is_ok() {
        return;
    }
    let docs_path = tmp.path().join("docs.txt");
    let queries_path = tmp.path().join("queries.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&docs_path).expect("docs"));
    for d in &docs {
        writeln!(f, "{d}").expect("write");
    }
    drop(f);
    std::fs::write(&queries_path, queries.join("\n")).expect("queries");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fts5.py");
    println!();
    println!("SQLite FTS5 (python3 {}):", script.display());
    let status = Command::new("python3")
        .arg(&script)
        .arg(&docs_path)
        .arg(&queries_path)
        .arg(tmp.path().join("fts5.sqlite"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => println!("  fts5.py did not run: {other:?}"),
    }
}
