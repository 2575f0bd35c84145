//! Queries: [`SearchQuery`] in, [`SearchHit`]s out.
//!
//! The query text goes to tantivy's query parser over the view's text
//! fields, terms joined by AND unless the query says `OR`: words, `"a
//! phrase"`, `title:word` (a field by its name, `/meta/summary` is
//! `meta_summary`), `-word`, `"phrase pre"*` (the last word a prefix),
//! parentheses. A bare word ending in `*` (`meet*`) is a prefix of a word
//! of any text field; such prefixes are taken out of the text and are
//! always required. Author, type and time filters are added as required
//! clauses. Hits are ranked by BM25 and carry a snippet of the first text
//! field that matches, the matched words between `[` and `]`.

use std::ops::Bound;

use kappadb_core::FeedId;
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, InvertedIndexRangeQuery, Occur, Query, QueryParser, RangeQuery, TermQuery,
};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Searcher, TantivyDocument, Term};

use crate::error::SearchError;
use crate::view::{Fields, GenIndex};

/// Most hits a query returns.
pub const MAX_LIMIT: usize = 10_000;
/// Longest query text accepted, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Most words a prefix expands to.
const PREFIX_EXPANSIONS: u64 = 256;
/// Most characters of a snippet.
const SNIPPET_CHARS: usize = 160;

/// A search.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// The query text (see the module docs).
    pub q: String,
    /// At most this many hits (default 20, at most [`MAX_LIMIT`]).
    pub limit: Option<usize>,
    /// Only entries of this feed.
    pub author: Option<FeedId>,
    /// Only entries whose payload `"type"` is this.
    pub kind: Option<String>,
    /// Only entries with a timestamp at or after this (ms since the epoch).
    pub since: Option<u64>,
    /// Only entries with a timestamp at or before this.
    pub until: Option<u64>,
}

impl SearchQuery {
    /// A query for `q` with no filter.
    pub fn new(q: impl Into<String>) -> Self {
        Self {
            q: q.into(),
            ..Self::default()
        }
    }
}

/// One hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The entry's record offset in this node's log.
    pub offset: u64,
    /// The entry's feed.
    pub feed: FeedId,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp (ms since the epoch).
    pub timestamp: u64,
    /// Its payload's `"type"`, if any.
    pub kind: Option<String>,
    /// BM25 score (higher is better).
    pub score: f32,
    /// The pointer of the field the snippet comes from.
    pub field: String,
    /// A fragment of that field, the matched words between `[` and `]`.
    pub snippet: String,
}

/// Split bare `word*` prefixes out of `q`: the rest, and the prefixes
/// (lowercased).
fn split_prefixes(q: &str) -> (String, Vec<String>) {
    let mut rest = String::with_capacity(q.len());
    let mut prefixes = Vec::new();
    let mut in_quotes = false;
    for (i, token) in q.split(' ').enumerate() {
        if i > 0 {
            rest.push(' ');
        }
        let quotes = token.matches('"').count();
        let bare = !in_quotes
            && quotes == 0
            && token.len() > 1
            && token.ends_with('*')
            && token[..token.len() - 1]
                .chars()
                .all(|c| c.is_alphanumeric());
        if bare {
            prefixes.push(token[..token.len() - 1].to_lowercase());
        } else {
            rest.push_str(token);
        }
        if quotes % 2 == 1 {
            in_quotes = !in_quotes;
        }
    }
    (rest.trim().to_string(), prefixes)
}

/// The smallest string greater than every string starting with `p`.
fn prefix_end(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = char::from_u32(c as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Run `query` on generation index `g` of a view with `pointers`.
pub(crate) fn run(
    g: &GenIndex,
    fields: &Fields,
    pointers: &[String],
    query: &SearchQuery,
) -> Result<Vec<SearchHit>, SearchError> {
    let bad = |m: String| Err(SearchError::BadQuery(m));
    if query.q.len() > MAX_QUERY {
        return bad(format!("the query is longer than {MAX_QUERY} bytes"));
    }
    if query.q.trim().is_empty() {
        return bad("the query is empty".into());
    }
    let limit = query.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_LIMIT {
        return bad(format!("limit must be 1 to {MAX_LIMIT}"));
    }
    if let (Some(s), Some(u)) = (query.since, query.until)
        && s > u
    {
        return bad(format!("since ({s}) is after until ({u})"));
    }
    let (text, prefixes) = split_prefixes(&query.q);
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut parser = QueryParser::for_index(&g.index, fields.texts.clone());
    parser.set_conjunction_by_default();
    let text_query = if text.is_empty() {
        None
    } else {
        Some(parser.parse_query(&text).map_err(|e| {
            SearchError::BadQuery(format!(
                "{e} (in {:?})",
                text.chars().take(200).collect::<String>()
            ))
        })?)
    };
    if let Some(q) = &text_query {
        clauses.push((Occur::Must, q.box_clone()));
    }
    for p in &prefixes {
        let mut any: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for f in &fields.texts {
            let upper = match prefix_end(p) {
                Some(end) => Bound::Excluded(Term::from_field_text(*f, &end)),
                None => Bound::Unbounded,
            };
            let mut q =
                InvertedIndexRangeQuery::new(Bound::Included(Term::from_field_text(*f, p)), upper);
            q.limit(PREFIX_EXPANSIONS);
            any.push((Occur::Should, Box::new(q)));
        }
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(any))));
    }
    if let Some(a) = &query.author {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(fields.feed, &a.to_string()),
                IndexRecordOption::Basic,
            )),
        ));
    }
    if let Some(k) = &query.kind {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(fields.kind, k),
                IndexRecordOption::Basic,
            )),
        ));
    }
    if query.since.is_some() || query.until.is_some() {
        let lo = query.since.map_or(Bound::Unbounded, |s| {
            Bound::Included(Term::from_field_u64(fields.timestamp, s))
        });
        let hi = query.until.map_or(Bound::Unbounded, |u| {
            Bound::Included(Term::from_field_u64(fields.timestamp, u))
        });
        clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
    }
    let full = BooleanQuery::new(clauses);
    let searcher = g.reader.searcher();
    let top = searcher
        .search(&full, &TopDocs::with_limit(limit).order_by_score())
        .map_err(|e| SearchError::BadQuery(e.to_string()))?;
    // Snippets from the text part of the query (prefixes have no terms).
    let mut generators = Vec::new();
    if let Some(q) = &text_query {
        for (f, p) in fields.texts.iter().zip(pointers) {
            if let Ok(mut sg) = SnippetGenerator::create(&searcher, q.as_ref(), *f) {
                sg.set_max_num_chars(SNIPPET_CHARS);
                generators.push((*f, p.clone(), sg));
            }
        }
    }
    let mut hits = Vec::with_capacity(top.len());
    for (score, addr) in top {
        hits.push(hit(&searcher, fields, pointers, &generators, score, addr)?);
    }
    Ok(hits)
}

fn hit(
    searcher: &Searcher,
    fields: &Fields,
    pointers: &[String],
    generators: &[(tantivy::schema::Field, String, SnippetGenerator)],
    score: f32,
    addr: DocAddress,
) -> Result<SearchHit, SearchError> {
    let doc: TantivyDocument = searcher
        .doc(addr)
        .map_err(|e| SearchError::index("search", e))?;
    let damaged = || SearchError::index("search", "a stored document lacks a field");
    let u64_of = |f| {
        doc.get_first(f)
            .and_then(|v| v.as_u64())
            .ok_or_else(damaged)
    };
    let feed = doc
        .get_first(fields.feed)
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<FeedId>().ok())
        .ok_or_else(damaged)?;
    let mut field = String::new();
    let mut snippet = String::new();
    for (f, p, sg) in generators {
        let s = sg.snippet_from_doc(&doc);
        if !s.highlighted().is_empty() {
            field = p.clone();
            snippet = mark(s.fragment(), s.highlighted());
            let _ = f;
            break;
        }
    }
    if snippet.is_empty() {
        // No highlighted word (a prefix, a filter): the first text held.
        for (f, p) in fields.texts.iter().zip(pointers) {
            if let Some(t) = doc.get_first(*f).and_then(|v| v.as_str()) {
                field = p.clone();
                snippet = t.chars().take(SNIPPET_CHARS).collect();
                break;
            }
        }
    }
    Ok(SearchHit {
        offset: u64_of(fields.offset)?,
        feed,
        seq: u64_of(fields.seq)?,
        timestamp: u64_of(fields.timestamp)?,
        kind: doc
            .get_first(fields.kind)
            .and_then(|v| v.as_str())
            .map(str::to_string),
        score,
        field,
        snippet,
    })
}

/// `fragment` with each highlighted range between `[` and `]`.
fn mark(fragment: &str, ranges: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(fragment.len() + 2 * ranges.len());
    let mut at = 0;
    for r in ranges {
        let (Some(before), Some(word)) = (fragment.get(at..r.start), fragment.get(r.clone()))
        else {
            continue;
        };
        out.push_str(before);
        out.push('[');
        out.push_str(word);
        out.push(']');
        at = r.end;
    }
    out.push_str(fragment.get(at..).unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_prefixes() {
        assert_eq!(
            split_prefixes("meet* agenda"),
            ("agenda".to_string(), vec!["meet".to_string()])
        );
        assert_eq!(
            split_prefixes("\"big bad wo\"* x"),
            ("\"big bad wo\"* x".to_string(), vec![])
        );
        assert_eq!(
            split_prefixes("\"a b* c\" Dé*"),
            ("\"a b* c\"".to_string(), vec!["dé".to_string()])
        );
        assert_eq!(split_prefixes("*"), ("*".to_string(), vec![]));
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
    }

    #[test]
    fn marks_ranges() {
        let one = std::iter::once(4..7).collect::<Vec<_>>();
        assert_eq!(mark("the old man", &one), "the [old] man");
        assert_eq!(mark("abc", &[0..1, 2..3]), "[a]b[c]");
        let outside = std::iter::once(5..9).collect::<Vec<_>>();
        assert_eq!(mark("abc", &outside), "abc");
    }
}
