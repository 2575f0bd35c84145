//! kappadb-search: full-text search views on [tantivy](https://docs.rs/tantivy).
//!
//! A search view is declared at run time on one or more JSON text fields
//! (`kappa view add notes --text /title --text /body --type note`) and
//! folds the log like every other view, through the
//! [`kappadb_views::Indexer`]: same batches, same checkpoints, same
//! blue/green rebuilds, same digests. Each entry whose payload is JSON and
//! holds a string at one of the fields (and has the declared `"type"`, if
//! one was given) becomes one document: its text fields (tokenized,
//! lowercased and stemmed, English unless declared otherwise) and its
//! feed, seq, log offset, timestamp and type. Other entries are skipped
//! and counted.
//!
//! Where things live:
//!
//! ```text
//! sled "search/declared"            name -> SearchSpec (JSON)
//! sled "view/<name>/<gen>/data"     'd' | author | seq / 64 -> undo records: blake3 (16 bytes) of each document
//! DIR/search/<name>/<gen>/          the tantivy index of that generation
//! ```
//!
//! **The checkpoint rule.** Every tantivy commit carries, as its payload,
//! the checkpoint of the documents it holds (the offset of the first log
//! record they do not reflect), so the index knows exactly what it holds
//! whatever sled holds. A batch that reaches the log's end and changed
//! documents commits at once (an entry is searchable as soon as the view
//! has folded it); otherwise the index commits about once a second (a
//! long fold, or batches with nothing of the view's shape). On open, an index
//! behind its view's sled checkpoint (a crash between the two commits, a
//! lost or damaged index directory) replays the log from its own
//! checkpoint: an entry is indexed again if sled holds it, deletions and
//! forget markers delete what they name. An index ahead of sled (sled lost
//! its last commits) needs nothing: sled folds those batches again, and a
//! batch's documents of records below what the index may already hold
//! are deleted before they are added again, so each is held once.
//! Either way each entry is found exactly once.
//!
//! **Deletions.** A deleted entry's document is deleted, through its undo
//! record (so a deletion of an entry the view never indexed does nothing).
//!
//! **Digest.** The view's sled tree holds one undo record per document,
//! keyed by `(author, seq)`, whose data is `blake3` (128 bits) of the document's
//! timestamp, type and text fields. The view digest
//! ([`kappadb_views::Indexer::digest`]) covers exactly that set, so it
//! depends only on the set of entries and never on tantivy's files (which
//! are not byte-stable) or on log offsets.
//!
//! ```
//! use kappadb_core::Db;
//! use kappadb_search::{SearchExt, SearchQuery, SearchSpec};
//! use kappadb_views::Indexer;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::create(dir.path(), Default::default()).unwrap();
//! let indexer = Indexer::open(db.clone()).unwrap();
//! kappadb_search::install_declared(&indexer).unwrap();
//! indexer.declare_search("notes", SearchSpec::new(&["/title", "/body"])).unwrap();
//! db.append(br#"{"type":"note","title":"Groceries","body":"buy apples and pears"}"#.to_vec()).unwrap();
//! indexer.catch_up().unwrap();
//! let hits = indexer.search("notes", &SearchQuery::new("apple")).unwrap();
//! assert_eq!(hits[0].seq, 1);
//! assert_eq!(hits[0].snippet, "buy [apples] and pears");
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

use std::sync::Arc;

use kappadb_views::{Indexer, View, ViewError};

pub mod error;
mod query;
mod spec;
mod view;

pub use error::SearchError;
pub use query::{MAX_LIMIT, MAX_QUERY, SearchHit, SearchQuery};
pub use spec::{LANGUAGES, MAX_FIELDS, SearchSpec};
pub use view::SearchView;

/// Name of the sled tree holding search view declarations.
pub const DECLARED_TREE: &str = "search/declared";

fn declared_tree(indexer: &Indexer) -> Result<sled::Tree, SearchError> {
    Ok(indexer
        .db()
        .sled()
        .open_tree(DECLARED_TREE)
        .map_err(ViewError::from)?)
}

/// Register every declared search view with `indexer` (call once, after
/// [`Indexer::open`]). One that cannot be registered is logged and left
/// out. Index directories of generations no longer in use are removed.
pub fn install_declared(indexer: &Indexer) -> Result<(), SearchError> {
    let tree = declared_tree(indexer)?;
    for item in tree.iter() {
        let (name, value) = item.map_err(ViewError::from)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let res = serde_json::from_slice::<SearchSpec>(&value)
            .map_err(|e| SearchError::BadDeclaration(e.to_string()))
            .and_then(|spec| SearchView::new(indexer.db(), &name, spec))
            .and_then(|v| Ok(indexer.register(v)?));
        match res {
            Ok(()) => tidy(indexer, &name),
            Err(e) => tracing::warn!(view = %name, error = %e, "search view not registered"),
        }
    }
    Ok(())
}

/// Remove index directories of `name`'s generations that are neither
/// active nor being built.
fn tidy(indexer: &Indexer, name: &str) {
    let (Ok(view), Ok(status)) = (search_view(indexer, name), indexer.view_status(name)) else {
        return;
    };
    if let Some(v) = view.as_any().and_then(|a| a.downcast_ref::<SearchView>()) {
        let mut keep = vec![status.generation];
        keep.extend(status.rebuild.map(|r| r.generation));
        v.retain(&keep);
    }
}

fn search_view(indexer: &Indexer, name: &str) -> Result<Arc<dyn View>, SearchError> {
    let view = indexer.view(name).map_err(|e| match e {
        ViewError::UnknownView(n) => SearchError::UnknownSearchView(n),
        e => e.into(),
    })?;
    if view
        .as_any()
        .and_then(|a| a.downcast_ref::<SearchView>())
        .is_none()
    {
        return Err(SearchError::UnknownSearchView(name.to_string()));
    }
    Ok(view)
}

/// Search views on an [`Indexer`]: declare, remove, query. Implemented for
/// [`Indexer`], so an embedding application writes
/// `indexer.search("notes", &SearchQuery::new("apple"))`.
pub trait SearchExt {
    /// Declare a search view and register it; the declaration is stored
    /// and [`install_declared`] registers it again on every open. The same
    /// declaration again does nothing; another one for the name replaces
    /// the view (rebuilt from the log).
    fn declare_search(&self, name: &str, spec: SearchSpec) -> Result<(), SearchError>;
    /// Remove a search view: its declaration, its data and its indexes.
    fn remove_search(&self, name: &str) -> Result<(), SearchError>;
    /// The declared search views, by name.
    fn search_views(&self) -> Result<Vec<(String, SearchSpec)>, SearchError>;
    /// Run `query` on the search view `name`, as far as it has folded.
    fn search(&self, name: &str, query: &SearchQuery) -> Result<Vec<SearchHit>, SearchError>;
    /// Documents in the index answering queries for `name`.
    fn search_doc_count(&self, name: &str) -> Result<u64, SearchError>;
}

impl SearchExt for Indexer {
    fn declare_search(&self, name: &str, spec: SearchSpec) -> Result<(), SearchError> {
        let view = SearchView::new(self.db(), name, spec.clone())?;
        let tree = declared_tree(self)?;
        let bytes =
            serde_json::to_vec(&spec).map_err(|e| SearchError::BadDeclaration(e.to_string()))?;
        if let Some(old) = tree.get(name.as_bytes()).map_err(ViewError::from)? {
            if serde_json::from_slice::<SearchSpec>(&old).ok().as_ref() == Some(&spec)
                && search_view(self, name).is_ok()
            {
                return Ok(());
            }
            if search_view(self, name).is_ok() {
                self.remove_search(name)?;
            }
        }
        self.register(view)?;
        tree.insert(name.as_bytes(), bytes)
            .map_err(ViewError::from)?;
        Ok(())
    }

    fn remove_search(&self, name: &str) -> Result<(), SearchError> {
        let view = search_view(self, name)?;
        self.unregister(name)?;
        declared_tree(self)?
            .remove(name.as_bytes())
            .map_err(ViewError::from)?;
        if let Some(v) = view.as_any().and_then(|a| a.downcast_ref::<SearchView>()) {
            v.retain(&[]);
        }
        Ok(())
    }

    fn search_views(&self) -> Result<Vec<(String, SearchSpec)>, SearchError> {
        let mut out = Vec::new();
        for item in declared_tree(self)?.iter() {
            let (name, value) = item.map_err(ViewError::from)?;
            if let Ok(spec) = serde_json::from_slice(&value) {
                out.push((String::from_utf8_lossy(&name).into_owned(), spec));
            }
        }
        Ok(out)
    }

    fn search(&self, name: &str, query: &SearchQuery) -> Result<Vec<SearchHit>, SearchError> {
        let view = search_view(self, name)?;
        let v = view
            .as_any()
            .and_then(|a| a.downcast_ref::<SearchView>())
            .ok_or_else(|| SearchError::UnknownSearchView(name.to_string()))?;
        let g = active_index(self, name, v)?;
        query::run(self.db(), &g, v.fields(), &v.spec().fields, query)
    }

    fn search_doc_count(&self, name: &str) -> Result<u64, SearchError> {
        let view = search_view(self, name)?;
        let v = view
            .as_any()
            .and_then(|a| a.downcast_ref::<SearchView>())
            .ok_or_else(|| SearchError::UnknownSearchView(name.to_string()))?;
        let g = active_index(self, name, v)?;
        Ok(g.reader.searcher().num_docs())
    }
}

/// The index of the generation answering queries for `name`; indexes of
/// older generations (a rebuild swapped) are dropped.
fn active_index(
    indexer: &Indexer,
    name: &str,
    v: &SearchView,
) -> Result<Arc<view::GenIndex>, SearchError> {
    let reader = indexer.reader(name)?;
    let number = reader.generation();
    let g = v.gen_index(number, reader.checkpoint().next_offset, &|k| reader.get(k))?;
    v.retire_below(number);
    Ok(g)
}
