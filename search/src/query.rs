//! Queries: [`SearchQuery`] in, [`SearchHit`]s out.
//!
//! The query text goes to tantivy's query parser over the view's text
//! fields, terms joined by AND unless the query says `OR`: words, `"a
//! phrase"`, `title:word` (a field by its name, `/meta/summary` is
//! `meta_summary`), `-word`, `"phrase pre"*` (the last word a prefix),
//! parentheses, `^2` boosts. A bare word ending in `*` (`meet*`, at least
//! two characters) is a prefix of a word of any text field (`title:meet*`:
//! of that field); words are indexed stemmed, so a prefix matches stems
//! (`appl*` finds "apples", `apples*` does not). Regular expressions are
//! refused. Author, type and time filters are added as required
//! clauses. Hits are ranked by BM25 and carry a snippet of the first text
//! field that matches, the matched words between `[` and `]`.

use std::ops::Bound;

use kappadb_core::{Db, FeedId};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputLeaf};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Searcher, TantivyDocument, Term};

use crate::error::SearchError;
use crate::view::{Fields, GenIndex};

/// Most hits a query returns.
pub const MAX_LIMIT: usize = 10_000;
/// Longest query text accepted, in bytes.
pub const MAX_QUERY: usize = 4096;
/// Deepest nesting of groups in a query.
const MAX_DEPTH: usize = 32;
/// Fewest characters of a prefix (`ab*`).
const MIN_PREFIX: usize = 2;
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

/// Turn each bare `word*` (a one-word "phrase prefix", which tantivy's
/// parser refuses) into a prefix of a word of the text fields (or of the
/// field named); refuse regular expressions, which the parser would
/// otherwise accept once prefixes are allowed.
fn rewrite(ast: UserInputAst, fields: &[String]) -> Result<UserInputAst, SearchError> {
    Ok(match ast {
        UserInputAst::Clause(clauses) => UserInputAst::Clause(
            clauses
                .into_iter()
                .map(|(occur, a)| Ok((occur, rewrite(a, fields)?)))
                .collect::<Result<_, SearchError>>()?,
        ),
        UserInputAst::Boost(a, boost) => UserInputAst::Boost(Box::new(rewrite(*a, fields)?), boost),
        UserInputAst::Leaf(leaf) => match *leaf {
            UserInputLeaf::Regex { .. } => {
                return Err(SearchError::BadQuery(
                    "regular expressions (field:/.../) are not supported".into(),
                ));
            }
            // The grammar reads `meet*` as the word "meet*".
            UserInputLeaf::Literal(lit)
                if lit.delimiter == Delimiter::None
                    && lit.slop == 0
                    && lit.phrase.len() > 1
                    && lit.phrase.ends_with('*')
                    && lit.phrase[..lit.phrase.len() - 1]
                        .chars()
                        .all(char::is_alphanumeric) =>
            {
                let word = lit.phrase[..lit.phrase.len() - 1].to_lowercase();
                if word.chars().count() < MIN_PREFIX {
                    return Err(SearchError::BadQuery(format!(
                        "prefix {word:?}* is shorter than {MIN_PREFIX} characters"
                    )));
                }
                let targets = match lit.field_name {
                    Some(f) => vec![f],
                    None => fields.to_vec(),
                };
                UserInputAst::Clause(
                    targets
                        .into_iter()
                        .map(|field| {
                            let leaf = UserInputLeaf::Regex {
                                field: Some(field),
                                // Alphanumeric only: nothing to escape.
                                pattern: format!("{word}.*"),
                            };
                            (Some(Occur::Should), UserInputAst::Leaf(Box::new(leaf)))
                        })
                        .collect(),
                )
            }
            other => UserInputAst::Leaf(Box::new(other)),
        },
    })
}

/// Parse `text` for the view's text fields (`names`, the engine's names).
fn parse(
    g: &GenIndex,
    fields: &Fields,
    names: &[String],
    text: &str,
) -> Result<Box<dyn Query>, SearchError> {
    let shown: String = text.chars().take(200).collect();
    // The grammar recurses per group: bound the depth before it runs.
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' | '[' | '{' if !quoted => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_DEPTH {
        return Err(SearchError::BadQuery(format!(
            "groups nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let ast = match tantivy::query_grammar::parse_query(text) {
        Ok(ast) => ast,
        Err(_) => {
            let (_, errors) = tantivy::query_grammar::parse_query_lenient(text);
            let why = errors.first().map_or_else(
                || "syntax error".to_string(),
                |e| format!("{} at character {}", e.message, e.pos),
            );
            return Err(SearchError::BadQuery(format!("{why} (in {shown:?})")));
        }
    };
    let ast = rewrite(ast, names)?;
    let mut parser = QueryParser::for_index(&g.index, fields.texts.clone());
    parser.set_conjunction_by_default();
    parser.allow_regexes();
    parser
        .build_query_from_user_input_ast(ast)
        .map_err(|e| SearchError::BadQuery(format!("{e} (in {shown:?})")))
}

/// Run `query` on generation index `g` of a view with `pointers`.
pub(crate) fn run(
    db: &Db,
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
    let names: Vec<String> = pointers
        .iter()
        .map(|p| crate::spec::field_name(p))
        .collect::<Result<_, _>>()?;
    let text_query = parse(g, fields, &names, &query.q)?;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query.box_clone())];
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
    // Snippets from the query's terms (prefixes have none).
    let mut generators = Vec::new();
    for (i, f) in fields.texts.iter().enumerate() {
        if let Ok(mut sg) = SnippetGenerator::create(&searcher, text_query.as_ref(), *f) {
            sg.set_max_num_chars(SNIPPET_CHARS);
            generators.push((i, sg));
        }
    }
    let mut hits = Vec::with_capacity(top.len());
    for (score, addr) in top {
        hits.push(hit(
            db,
            &searcher,
            fields,
            pointers,
            &generators,
            score,
            addr,
        )?);
    }
    Ok(hits)
}

fn hit(
    db: &Db,
    searcher: &Searcher,
    fields: &Fields,
    pointers: &[String],
    generators: &[(usize, SnippetGenerator)],
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
    let seq = u64_of(fields.seq)?;
    // The index stores no text: the snippet comes from the entry itself
    // (an entry erased meanwhile has none).
    let json: Option<serde_json::Value> = db
        .get(&feed, seq)
        .map_err(|e| SearchError::View(e.into()))?
        .and_then(|e| e.payload.into_bytes())
        .and_then(|p| serde_json::from_slice(&p).ok());
    let texts: Vec<Option<&str>> = pointers
        .iter()
        .map(|p| {
            json.as_ref()
                .and_then(|j| j.pointer(p))
                .and_then(|v| v.as_str())
        })
        .collect();
    let mut field = String::new();
    let mut snippet = String::new();
    for (i, sg) in generators {
        let Some(text) = texts.get(*i).copied().flatten() else {
            continue;
        };
        let s = sg.snippet(text);
        if !s.highlighted().is_empty() {
            field = pointers.get(*i).cloned().unwrap_or_default();
            snippet = mark(s.fragment(), s.highlighted());
            break;
        }
    }
    if snippet.is_empty() {
        // No highlighted word (a prefix, a filter): the first text held.
        for (p, t) in pointers.iter().zip(&texts) {
            if let Some(t) = t {
                field = p.clone();
                snippet = t.chars().take(SNIPPET_CHARS).collect();
                break;
            }
        }
    }
    Ok(SearchHit {
        offset: u64_of(fields.offset)?,
        feed,
        seq,
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
    fn rewrites_prefixes_and_refuses_regexes() {
        let names = vec!["title".to_string(), "body".to_string()];
        let ast = tantivy::query_grammar::parse_query("meet* OR x").unwrap();
        let text = format!("{:?}", rewrite(ast, &names).unwrap());
        assert!(text.contains("meet.*"), "{text}");
        let ast = tantivy::query_grammar::parse_query("title:/a.*/").unwrap();
        assert!(rewrite(ast, &names).is_err());
        let ast = tantivy::query_grammar::parse_query("a*").unwrap();
        assert!(rewrite(ast, &names).is_err());
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
