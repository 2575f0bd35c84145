//! The search view end to end on a real database: indexing, queries,
//! filters, snippets, skips, deletions, reopening, a lost index, rebuilds,
//! re-declarations, and arrival order.

use std::path::Path;

use kappadb_core::test_utils::TestPeer;
use kappadb_core::{CreateOptions, Db, Entry, SigningKey};
use kappadb_search::{SearchError, SearchExt, SearchQuery, SearchSpec};
use kappadb_views::{Indexer, IndexerConfig};
use serde_json::json;

fn create_db(dir: &Path, seed: u8) -> Db {
    Db::create(
        dir,
        CreateOptions {
            signing_key: Some(SigningKey::from_seed([seed; 32])),
            ..Default::default()
        },
    )
    .unwrap()
}

fn indexer(db: &Db, batch_records: usize) -> Indexer {
    let ix = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            builtins: false,
            batch_records,
            ..Default::default()
        },
    )
    .unwrap();
    kappadb_search::install_declared(&ix).unwrap();
    ix
}

fn note(title: &str, body: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "note", "title": title, "body": body})).unwrap()
}

fn seqs(ix: &Indexer, q: SearchQuery) -> Vec<u64> {
    let mut s: Vec<u64> = ix
        .search("notes", &q)
        .unwrap()
        .iter()
        .map(|h| h.seq)
        .collect();
    s.sort_unstable();
    s
}

fn q(text: &str) -> SearchQuery {
    SearchQuery::new(text)
}

fn notes_spec() -> SearchSpec {
    SearchSpec::new(&["/title", "/body"])
}

#[test]
fn indexes_queries_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = indexer(&db, 2);
    ix.declare_search("notes", notes_spec()).unwrap();
    db.append(note("Groceries", "buy apples and pears at the market"))
        .unwrap();
    db.append(note(
        "Meeting notes",
        "the quarterly meeting moved to Tuesday",
    ))
    .unwrap();
    db.append(note("Garden", "plant the apple tree before the frost"))
        .unwrap();
    db.append(b"not json at all".to_vec()).unwrap();
    db.append(br#"{"type":"note","title":42}"#.to_vec())
        .unwrap();
    db.append(br#"{"type":"note","body":"only a body about apples"}"#.to_vec())
        .unwrap();
    ix.catch_up().unwrap();

    // Stemming: "apple" finds "apples"; AND by default.
    assert_eq!(seqs(&ix, q("apple")), vec![1, 3, 6]);
    assert_eq!(seqs(&ix, q("apple market")), vec![1]);
    assert_eq!(seqs(&ix, q("apple OR tuesday")), vec![1, 2, 3, 6]);
    assert_eq!(seqs(&ix, q("apple -market")), vec![3, 6]);
    // Phrases, fields, prefixes.
    assert_eq!(seqs(&ix, q("\"quarterly meeting\"")), vec![2]);
    assert!(seqs(&ix, q("\"meeting quarterly\"")).is_empty());
    assert_eq!(seqs(&ix, q("title:garden")), vec![3]);
    assert_eq!(seqs(&ix, q("quart*")), vec![2]);
    assert_eq!(seqs(&ix, q("gro* apple")), vec![1]);
    assert_eq!(seqs(&ix, q("quart* OR frost")), vec![2, 3]);
    assert_eq!(seqs(&ix, q("title:gar*")), vec![3]);
    assert!(seqs(&ix, q("body:gar*")).is_empty());
    assert!(matches!(
        ix.search("notes", &q("title:/gar.*/")),
        Err(SearchError::BadQuery(_))
    ));
    assert_eq!(seqs(&ix, q("\"quarterly meet\"*")), vec![2]);
    // Snippets mark the matched words.
    let hits = ix.search("notes", &q("frost")).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].field, "/body");
    assert!(hits[0].snippet.contains("[frost]"), "{}", hits[0].snippet);
    assert_eq!(hits[0].kind.as_deref(), Some("note"));
    assert!(hits[0].score > 0.0);
    // BM25: the title match on a short field ranks first.
    let hits = ix.search("notes", &q("meeting")).unwrap();
    assert_eq!(hits[0].seq, 2);
    // Limits.
    let mut limited = q("apple");
    limited.limit = Some(2);
    assert_eq!(ix.search("notes", &limited).unwrap().len(), 2);

    // Skipped: the non-JSON entry and the one with a number title only.
    let st = ix.view_status("notes").unwrap();
    assert_eq!((st.folded, st.skipped), (4, 2));
    assert_eq!(ix.search_doc_count("notes").unwrap(), 4);
    assert!(st.description.contains("/title"), "{}", st.description);
}

#[test]
fn bad_queries_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = indexer(&db, 10);
    ix.declare_search("notes", notes_spec()).unwrap();
    db.append(note("a", "b")).unwrap();
    ix.catch_up().unwrap();
    for bad in [
        "",
        "   ",
        "\"unclosed",
        "nosuchfield:x",
        "(a",
        "title:[a TO",
        "-only",
        "\"x\"*",
    ] {
        match ix.search("notes", &q(bad)) {
            Err(SearchError::BadQuery(m)) => assert!(!m.is_empty()),
            // The parser is lenient with some of these: no panic is what
            // matters, and an answer.
            Ok(_) => {}
            Err(e) => panic!("{bad:?}: {e}"),
        }
    }
    assert!(matches!(
        ix.search("notes", &q(&"a ".repeat(5000))),
        Err(SearchError::BadQuery(_))
    ));
    // Deep nesting is refused before the grammar recurses into it; up to
    // the limit it parses.
    let deep = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
    assert!(matches!(
        ix.search("notes", &q(&deep)),
        Err(SearchError::BadQuery(_))
    ));
    let ok_depth = format!("{}a{}", "(".repeat(32), ")".repeat(32));
    ix.search("notes", &q(&ok_depth)).unwrap();
    let unbalanced = format!("{}a", "(-".repeat(2000));
    assert!(ix.search("notes", &q(&unbalanced)).is_err());
    let mut zero = q("a");
    zero.limit = Some(0);
    assert!(matches!(
        ix.search("notes", &zero),
        Err(SearchError::BadQuery(_))
    ));
    assert!(matches!(
        ix.search("nope", &q("a")),
        Err(SearchError::UnknownSearchView(_))
    ));
    assert!(matches!(
        ix.declare_search("bad", SearchSpec::new(&["title"])),
        Err(SearchError::BadDeclaration(_))
    ));
}

fn peers_entries() -> (Vec<Entry>, Vec<Entry>) {
    let mut a = TestPeer::new(7);
    let mut b = TestPeer::new(8);
    let mut ea = Vec::new();
    let mut eb = Vec::new();
    for i in 0..20u64 {
        let kind = if i % 2 == 0 { "note" } else { "chat" };
        let p = |who: &str| {
            serde_json::to_vec(&json!({"type": kind, "title": format!("{who} number {i}"), "body": "shared words here"}))
                .unwrap()
        };
        ea.push(a.make(1_000 + i, p("alpha")));
        eb.push(b.make(1_000 + i, p("beta")));
    }
    (ea, eb)
}

#[test]
fn filters_by_author_type_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let (ea, eb) = peers_entries();
    let alpha = ea[0].header.author;
    db.ingest(ea).unwrap();
    db.ingest(eb).unwrap();
    let ix = indexer(&db, 7);
    ix.declare_search("notes", notes_spec()).unwrap();
    ix.catch_up().unwrap();
    let mut all = q("shared");
    all.limit = Some(100);
    assert_eq!(ix.search("notes", &all).unwrap().len(), 40);
    let mut f = all.clone();
    f.author = Some(alpha);
    let hits = ix.search("notes", &f).unwrap();
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h.feed == alpha));
    f.kind = Some("chat".into());
    assert_eq!(ix.search("notes", &f).unwrap().len(), 10);
    f.since = Some(1_004);
    f.until = Some(1_009);
    let mut s = seqs(&ix, f.clone());
    s.dedup();
    // seq i + 1 has timestamp 1000 + i; chats are the odd i.
    assert_eq!(s, vec![6, 8, 10]);
    f.since = Some(2_000);
    f.until = Some(1_000);
    assert!(matches!(
        ix.search("notes", &f),
        Err(SearchError::BadQuery(_))
    ));
}

#[test]
fn deleted_entries_leave_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = indexer(&db, 3);
    ix.declare_search("notes", notes_spec()).unwrap();
    for i in 1..=10 {
        db.append(note(&format!("secret {i}"), "the launch code"))
            .unwrap();
    }
    ix.catch_up().unwrap();
    assert_eq!(seqs(&ix, q("launch")).len(), 10);
    let before = ix.digest("notes").unwrap().to_hex();
    db.delete(&[7], None).unwrap();
    ix.catch_up().unwrap();
    assert_eq!(seqs(&ix, q("launch")), vec![1, 2, 3, 4, 5, 6, 8, 9, 10]);
    db.delete(&[], Some(3)).unwrap();
    ix.catch_up().unwrap();
    assert_eq!(seqs(&ix, q("launch")), vec![4, 5, 6, 8, 9, 10]);
    assert_eq!(ix.search_doc_count("notes").unwrap(), 6);
    assert_ne!(before, ix.digest("notes").unwrap().to_hex());
    // A rebuild reads the log with those payloads erased: same answers,
    // same digest.
    let digest = ix.digest("notes").unwrap().to_hex();
    ix.rebuild("notes", &mut |_, _| {}).unwrap();
    assert_eq!(seqs(&ix, q("launch")), vec![4, 5, 6, 8, 9, 10]);
    assert_eq!(digest, ix.digest("notes").unwrap().to_hex());
}

#[test]
fn reopening_resumes_and_a_lost_index_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    {
        let ix = indexer(&db, 4);
        ix.declare_search("notes", notes_spec()).unwrap();
        for i in 1..=30 {
            db.append(note(&format!("entry {i}"), "words")).unwrap();
        }
        ix.catch_up().unwrap();
        assert_eq!(ix.search_doc_count("notes").unwrap(), 30);
    }
    // Re-registered on open, resumes at its checkpoint: nothing twice.
    let ix = indexer(&db, 4);
    assert_eq!(ix.search_views().unwrap().len(), 1);
    for i in 31..=40 {
        db.append(note(&format!("entry {i}"), "words")).unwrap();
    }
    ix.catch_up().unwrap();
    assert_eq!(ix.search_doc_count("notes").unwrap(), 40);
    assert_eq!(ix.search("notes", &q("words")).unwrap().len(), 20);
    let digest = ix.digest("notes").unwrap().to_hex();
    db.delete(&[2], None).unwrap();
    ix.catch_up().unwrap();
    drop(ix);

    // The index directory is lost: the view replays the log into a new one
    // and keeps what sled says (the deletion too).
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let ix = indexer(&db, 4);
    ix.catch_up().unwrap();
    assert_eq!(ix.search_doc_count("notes").unwrap(), 39);
    assert!(seqs(&ix, q("entry")).iter().all(|&s| s != 2));
    assert_ne!(digest, ix.digest("notes").unwrap().to_hex());

    // Damaged: the same.
    drop(ix);
    let gen_dir = std::fs::read_dir(dir.path().join("search/notes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(gen_dir.join("meta.json"), b"{garbage").unwrap();
    let ix = indexer(&db, 4);
    ix.catch_up().unwrap();
    assert_eq!(ix.search_doc_count("notes").unwrap(), 39);
}

#[test]
fn rebuild_swaps_generations_and_redeclaring_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = indexer(&db, 5);
    ix.declare_search("notes", notes_spec()).unwrap();
    for i in 1..=25 {
        db.append(note(&format!("item {i}"), "alpha")).unwrap();
    }
    ix.catch_up().unwrap();
    let gen0 = ix.view_status("notes").unwrap().generation;
    let digest = ix.digest("notes").unwrap().to_hex();

    // Mid-rebuild, the old generation answers.
    ix.start_rebuild("notes").unwrap();
    ix.step().unwrap();
    assert_eq!(ix.search_doc_count("notes").unwrap(), 25);
    ix.catch_up().unwrap();
    let st = ix.view_status("notes").unwrap();
    assert!(st.generation > gen0);
    assert!(st.rebuild.is_none());
    assert_eq!(ix.search_doc_count("notes").unwrap(), 25);
    assert_eq!(digest, ix.digest("notes").unwrap().to_hex());
    let dirs: Vec<_> = std::fs::read_dir(dir.path().join("search/notes"))
        .unwrap()
        .collect();
    assert_eq!(dirs.len(), 1, "the old generation's index is removed");

    // Same declaration: nothing. Another one: a new view.
    ix.declare_search("notes", notes_spec()).unwrap();
    assert_eq!(ix.view_status("notes").unwrap().generation, st.generation);
    ix.declare_search("notes", SearchSpec::new(&["/title"]))
        .unwrap();
    ix.catch_up().unwrap();
    assert!(ix.search("notes", &q("alpha")).unwrap().is_empty());
    assert_eq!(ix.search("notes", &q("item")).unwrap().len(), 20);
    ix.remove_search("notes").unwrap();
    assert!(ix.search_views().unwrap().is_empty());
    assert!(
        !dir.path()
            .join("search/notes")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    // A view of another kind keeps its name.
    ix.declare_field_index("by-title", "/title").unwrap();
    assert!(ix.declare_search("by-title", notes_spec()).is_err());
}

#[test]
fn digests_depend_only_on_the_set_of_entries() {
    let (ea, eb) = peers_entries();
    let mut digests = Vec::new();
    for (seed, order) in [(1u8, 0), (2, 1), (3, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let db = create_db(dir.path(), seed);
        match order {
            0 => {
                db.ingest(ea.clone()).unwrap();
                db.ingest(eb.clone()).unwrap();
            }
            1 => {
                db.ingest(eb.clone()).unwrap();
                db.ingest(ea.clone()).unwrap();
            }
            _ => {
                for (a, b) in ea.iter().zip(&eb) {
                    db.ingest(vec![b.clone()]).unwrap();
                    db.ingest(vec![a.clone()]).unwrap();
                }
            }
        }
        let ix = indexer(&db, 3 + seed as usize);
        ix.declare_search("notes", notes_spec()).unwrap();
        ix.catch_up().unwrap();
        digests.push(ix.digest("notes").unwrap().to_hex());
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
}

#[test]
fn live_results_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 1);
    let ix = Indexer::open(db.clone()).unwrap();
    kappadb_search::install_declared(&ix).unwrap();
    ix.declare_search("notes", notes_spec()).unwrap();
    db.append(note("live", "a fresh pineapple")).unwrap();
    let start = std::time::Instant::now();
    loop {
        if !ix.search("notes", &q("pineapple")).unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "not searchable after a second"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn an_index_ahead_of_sled_holds_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    {
        let db = create_db(dir.path(), 1);
        let ix = indexer(&db, 3);
        ix.declare_search("notes", notes_spec()).unwrap();
        for i in 1..=10 {
            db.append(note(&format!("first {i}"), "common")).unwrap();
        }
        ix.catch_up().unwrap();
    }
    // sled as it was then: everything derived from the log lags behind
    // the index once it is put back.
    copy_dir(&dir.path().join("sled"), &backup.path().join("sled"));
    {
        let db = Db::open(dir.path()).unwrap();
        let ix = indexer(&db, 3);
        for i in 11..=25 {
            db.append(note(&format!("second {i}"), "common")).unwrap();
        }
        db.delete(&[4], None).unwrap();
        ix.catch_up().unwrap();
        assert_eq!(ix.search_doc_count("notes").unwrap(), 24);
    }
    std::fs::remove_dir_all(dir.path().join("sled")).unwrap();
    copy_dir(&backup.path().join("sled"), &dir.path().join("sled"));
    let db = Db::open(dir.path()).unwrap();
    let ix = indexer(&db, 3);
    let st = ix.view_status("notes").unwrap();
    assert!(st.checkpoint < db.log_end(), "sled is behind: {st:?}");
    ix.catch_up().unwrap();
    let mut all = q("common");
    all.limit = Some(100);
    let found = seqs(&ix, all);
    let want: Vec<u64> = (1..=25).filter(|s| *s != 4).collect();
    assert_eq!(found, want);
    assert_eq!(ix.search_doc_count("notes").unwrap(), 24);
}
