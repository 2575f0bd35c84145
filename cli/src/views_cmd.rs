//! View commands: `kappa kv ...`, `kappa timeline`, `kappa view ...`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use kappadb_core::Db;
use kappadb_views::{Indexer, IndexerConfig, ViewError};
use serde_json::Value;

use crate::answer::{Record, TimelineItem};
use crate::ops::Backend;
use crate::out::{self, Out, note};
use crate::params::{
    FieldParams, KvListParams, KvWrite, SearchParams, TimelineParams, ViewAddBody,
};

/// `kappa kv ...`
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Set KEY to VALUE (JSON; a bare word is a string).
    Put {
        /// The key.
        key: String,
        /// The value: JSON, or a bare word taken as a string.
        value: String,
        /// Entry ids this put supersedes (see `kv get --heads`).
        #[arg(long = "link")]
        links: Vec<String>,
    },
    /// Print KEY's value as JSON (exit 1 if absent).
    Get {
        /// The key.
        key: String,
        /// Print every concurrent head instead of the winner.
        #[arg(long)]
        heads: bool,
        /// Resolve authors to identities: the devices of one identity
        /// write like one author, revoked writes are left out.
        #[arg(long)]
        identity: bool,
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
        /// Entry ids this delete supersedes.
        #[arg(long = "link")]
        links: Vec<String>,
    },
    /// Delete this feed's whole history on KEY (its puts and deletes,
    /// not only the value): peers erase them, and the key shows what
    /// other feeds wrote, if anything.
    Purge {
        /// The key.
        key: String,
    },
    /// List live keys and their values.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<usize>,
        /// Resolve authors to identities (see `kv get --identity`).
        #[arg(long)]
        identity: bool,
    },
}

/// `kappa view ...`
#[derive(Subcommand, Debug)]
pub enum ViewCommand {
    /// List views: name, version, checkpoint, lag, entries.
    List,
    /// Rebuild a view from offset 0 (the old data answers queries meanwhile).
    Rebuild {
        /// The view.
        name: String,
    },
    /// Print a view's digest (hex) alone.
    Digest {
        /// The view.
        name: String,
    },
    /// Declare a field index on the value at a JSON pointer (--field), or a
    /// full-text search view on text fields (--text, repeated).
    Add {
        /// Name of the new view ([a-z0-9_-]).
        name: String,
        /// JSON pointer, e.g. /user or /address/city.
        #[arg(long, required_unless_present = "text", conflicts_with = "text")]
        field: Option<String>,
        /// Search view: a JSON pointer to a text field (repeat for more),
        /// e.g. --text /title --text /body.
        #[arg(long)]
        text: Vec<String>,
        /// Search view: only entries whose payload "type" is this.
        #[arg(long = "type", requires = "text")]
        kind: Option<String>,
        /// Search view: stemming language (default english; "none" for no
        /// stemming).
        #[arg(long, requires = "text")]
        language: Option<String>,
    },
    /// Remove a declared field index or search view.
    Remove {
        /// The view.
        name: String,
    },
    /// Query a field index.
    Query {
        /// The field index.
        name: String,
        /// Entries whose field equals this (JSON scalar or bare word).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        eq: Option<String>,
        /// Entries whose field is >= this.
        #[arg(long)]
        from: Option<String>,
        /// Entries whose field is <= this.
        #[arg(long)]
        to: Option<String>,
        /// At most this many results.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only entries of this identity (id, prefix, or `self`); revoked
        /// entries are left out.
        #[arg(long, value_name = "IDENTITY")]
        identity: Option<String>,
    },
}

/// Options of `kappa timeline`.
#[derive(clap::Args, Debug)]
pub struct TimelineArgs {
    /// Only entries whose payload "type" is this.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Only entries of this feed (id, unique prefix, or "self").
    #[arg(long)]
    pub author: Option<String>,
    /// Only entries at or after this timestamp (ms since the epoch).
    #[arg(long)]
    pub from: Option<u64>,
    /// Only entries at or before this timestamp (ms since the epoch).
    #[arg(long)]
    pub to: Option<u64>,
    /// At most this many entries.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Oldest first (default: newest first).
    #[arg(long)]
    pub oldest_first: bool,
    /// Only entries of this identity (id, prefix, or `self`), authors
    /// resolved through delegations; revoked entries are left out.
    #[arg(long, value_name = "IDENTITY")]
    pub identity: Option<String>,
    /// Print the newest entries oldest first, then new ones as they land,
    /// until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Open the views of `db` and fold them up to the log's end, with a
/// progress bar when that is a lot of work. This is how the operations
/// ([`crate::ops::Local`]) open views the first time a command needs them.
pub fn open_indexer(db: &Db) -> Result<Indexer, ViewError> {
    let indexer = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            ..IndexerConfig::default()
        },
    )?;
    kappadb_search::install_declared(&indexer)?;
    let lag: u64 = indexer.status().iter().map(|s| s.lag).max().unwrap_or(0);
    if lag > 16 * 1024 * 1024 {
        let bar = out::progress(db.log_end(), "indexing");
        while indexer.step()? {
            let done = indexer
                .status()
                .iter()
                .map(|s| s.checkpoint)
                .min()
                .unwrap_or(0);
            bar.set_position(done);
        }
        bar.finish_and_clear();
    }
    indexer.catch_up()?;
    Ok(indexer)
}

/// A value typed on the command line: JSON, or a bare word as a string.
fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn kv(b: &dyn Backend, cmd: KvCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        KvCommand::Put { key, value, links } => {
            let w = b.kv_write(KvWrite {
                key,
                value: Some(parse_value(&value)),
                links,
            })?;
            if out.json {
                out.json_line(&w)?;
            } else {
                note(out::kv_written_note("put", &w));
            }
        }
        KvCommand::Del { key, links } => {
            let w = b.kv_write(KvWrite {
                key,
                value: None,
                links,
            })?;
            if out.json {
                out.json_line(&w)?;
            } else {
                note(out::kv_written_note("deleted", &w));
            }
        }
        KvCommand::Purge { key } => return crate::lifecycle_cmd::kv_purge(b, &key, out),
        KvCommand::Get {
            key,
            heads: false,
            identity: false,
        } => {
            out.json_line(&b.kv_get(&key)?)?;
        }
        KvCommand::Get {
            key,
            heads: true,
            identity: false,
        } => {
            let heads = b.kv_heads(&key)?;
            out.answer(&heads, |h| h.iter().map(out::kv_head_line).collect())?;
        }
        KvCommand::Get {
            key,
            heads,
            identity: true,
        } => {
            let all = b.identity_kv_heads(&key)?;
            if heads {
                out.answer(&all, |h| h.iter().map(out::kv_head_line).collect())?;
            } else {
                match all.last() {
                    Some(h) if !h.deleted => out.json_line(&h.value)?,
                    _ => {
                        return Err(crate::answer::OpError::not_found(
                            "no_such_key",
                            format!("key '{key}' is not set"),
                        )
                        .into());
                    }
                }
            }
        }
        KvCommand::List {
            prefix,
            limit,
            identity,
        } => {
            let items = b.kv_list(&KvListParams {
                prefix,
                limit,
                identity,
            })?;
            out.answer(&items, |i| i.iter().map(out::kv_item_line).collect())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_timeline_item(item: &TimelineItem, out: &mut Out) -> anyhow::Result<()> {
    out.answer(item, |it| vec![out::timeline_line(it)])
}

pub fn timeline(b: &dyn Backend, args: TimelineArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    // With --follow, new entries are printed as they land, after the newest
    // `limit` ones, oldest first (like `tail -f`).
    let start = if args.follow {
        Some(b.status()?.log_bytes)
    } else {
        None
    };
    let params = TimelineParams {
        kind: args.kind.clone(),
        author: args.author.clone(),
        from: args.from,
        to: args.to,
        limit: args.limit,
        order: if args.oldest_first { "asc" } else { "desc" }.into(),
        identity: args.identity.clone(),
    };
    let mut items = b.timeline(&params)?;
    if args.follow && !args.oldest_first {
        items.reverse();
    }
    for it in &items {
        print_timeline_item(it, out)?;
    }
    let Some(start) = start else {
        return Ok(ExitCode::SUCCESS);
    };
    out.flush()?;
    // Entries that landed between reading the log's end and the query are
    // in both; print them once.
    let shown: std::collections::HashSet<String> = items.iter().map(|it| it.id.clone()).collect();
    b.follow(start, args.author.as_deref(), &mut |rec| {
        let Record::Entry(entry) = rec else {
            return Ok(true);
        };
        if shown.contains(&entry.id) {
            return Ok(true);
        }
        let item = TimelineItem::from_entry(&entry);
        if args.kind.is_some() && item.kind != args.kind {
            return Ok(true);
        }
        let ts = item.timestamp;
        if args.from.is_some_and(|f| ts < f) || args.to.is_some_and(|t| ts > t) {
            return Ok(true);
        }
        print_timeline_item(&item, out)?;
        out.flush()?;
        Ok(true)
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn view(b: &dyn Backend, cmd: ViewCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        ViewCommand::List => {
            out.answer(&b.views()?, |list| out::views_table(list))?;
        }
        ViewCommand::Rebuild { name } => {
            let bar = out::progress(0, "rebuilding");
            let res = b.view_rebuild(&name, &mut out::follow(&bar));
            bar.finish_and_clear();
            let v = res.with_context(|| format!("cannot rebuild view '{name}'"))?;
            out.answer(&v, |v| vec![out::rebuilt_line(v)])?;
        }
        ViewCommand::Digest { name } => {
            out.answer(&b.view_digest(&name)?, |d| vec![d.digest.clone()])?;
        }
        ViewCommand::Add {
            name,
            field,
            text,
            kind,
            language,
        } => {
            let v = b.view_add(ViewAddBody {
                name,
                field: field.unwrap_or_default(),
                text,
                kind,
                language,
            })?;
            out.answer(&v, |v| vec![out::view_added_line(v)])?;
        }
        ViewCommand::Remove { name } => {
            b.view_remove(&name)?;
            if !out.json {
                note(format!("removed view {name}"));
            }
        }
        ViewCommand::Query {
            name,
            eq,
            from,
            to,
            limit,
            identity,
        } => {
            if eq.is_none() && from.is_none() && to.is_none() {
                bail!("give --eq VALUE, or --from and/or --to");
            }
            let hits = b.field_query(
                &name,
                &FieldParams {
                    eq,
                    from,
                    to,
                    limit,
                    identity,
                },
            )?;
            for hit in &hits {
                out.answer(hit, |h| vec![out::field_hit_line(h)])?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `kappa search`.
#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// The search view (see `kappa view add NAME --text /field`).
    pub view: String,
    /// The query: words (all required), "a phrase", field:word, -word,
    /// word* (a prefix), a OR b.
    pub query: String,
    /// At most this many hits.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only entries of this feed (id, unique prefix, or "self").
    #[arg(long)]
    pub author: Option<String>,
    /// Only entries whose payload "type" is this.
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Only entries at or after this timestamp (ms since the epoch).
    #[arg(long)]
    pub since: Option<u64>,
    /// Only entries at or before this timestamp (ms since the epoch).
    #[arg(long)]
    pub until: Option<u64>,
}

pub fn search(b: &dyn Backend, args: SearchArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let hits = b.search(
        &args.view,
        &SearchParams {
            q: args.query,
            limit: Some(args.limit),
            author: args.author,
            kind: args.kind,
            since: args.since,
            until: args.until,
        },
    )?;
    for hit in &hits {
        out.answer(hit, |h| vec![out::search_hit_line(h)])?;
    }
    Ok(ExitCode::SUCCESS)
}
