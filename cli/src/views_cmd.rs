//! View commands: `kappa kv ...`, `kappa timeline`, `kappa view ...`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use kappadb_core::{Db, EntryId};
use kappadb_views::field::{FieldQuery, parse_query_value};
use kappadb_views::timeline::{Order, TimelineQuery};
use kappadb_views::{Indexer, IndexerConfig};
use serde_json::{Value, json};

use crate::cmd::resolve_feed;
use crate::out::{self, Out, note};

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
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
        /// Entry ids this delete supersedes.
        #[arg(long = "link")]
        links: Vec<String>,
    },
    /// List live keys and their values.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<usize>,
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
    /// Declare a field index on the value at a JSON pointer.
    Add {
        /// Name of the new view ([a-z0-9_-]).
        name: String,
        /// JSON pointer, e.g. /user or /address/city.
        #[arg(long)]
        field: String,
    },
    /// Remove a declared field index.
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
}

/// Open the views of `db` and fold them up to the log's end.
pub fn open_indexer(db: &Db) -> anyhow::Result<Indexer> {
    let indexer = Indexer::open_with(
        db.clone(),
        IndexerConfig {
            live: false,
            ..IndexerConfig::default()
        },
    )?;
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

fn parse_links(links: &[String]) -> anyhow::Result<Vec<EntryId>> {
    links
        .iter()
        .map(|l| {
            l.parse::<EntryId>().map_err(|_| {
                anyhow::anyhow!(
                    "'{l}' is not an entry id (64 hex digits, from `kappa kv get KEY --heads`)"
                )
            })
        })
        .collect()
}

pub fn kv(db: &Db, cmd: KvCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        KvCommand::Put { key, value, links } => {
            let links = parse_links(&links)?;
            let value = parse_value(&value);
            let a = db.append(kappadb_views::kv::put_payload(&key, &value, &links))?;
            if out.json {
                out.json_line(&json!({"key": key, "seq": a.seq, "id": a.id.to_string()}))?;
            } else {
                note(format!(
                    "put {key} (seq {}, id {})",
                    a.seq,
                    a.id.fmt_short()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Del { key, links } => {
            let links = parse_links(&links)?;
            let a = db.append(kappadb_views::kv::del_payload(&key, &links))?;
            if out.json {
                out.json_line(&json!({"key": key, "seq": a.seq, "id": a.id.to_string()}))?;
            } else {
                note(format!(
                    "deleted {key} (seq {}, id {})",
                    a.seq,
                    a.id.fmt_short()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Get { key, heads } => {
            let indexer = open_indexer(db)?;
            let kv = indexer.kv()?;
            if heads {
                let heads = kv.heads(&key)?;
                if heads.is_empty() {
                    note(format!("error: key '{key}' is not set"));
                    return Ok(ExitCode::FAILURE);
                }
                if out.json {
                    let arr: Vec<Value> = heads
                        .iter()
                        .map(|h| {
                            json!({
                                "id": h.id.to_string(), "feed": h.author.to_string(), "seq": h.seq,
                                "timestamp": h.timestamp, "deleted": h.is_deleted(), "value": h.value,
                            })
                        })
                        .collect();
                    out.line(Value::Array(arr).to_string())?;
                } else {
                    for h in &heads {
                        let value = h
                            .value
                            .as_ref()
                            .map_or("(deleted)".to_string(), Value::to_string);
                        out.line(format!(
                            "{}  {} #{}  {}  {}",
                            h.id,
                            h.author.fmt_short(),
                            h.seq,
                            out::fmt_time(h.timestamp),
                            value
                        ))?;
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            match kv.get(&key)? {
                Some(v) => {
                    out.line(v.to_string())?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    note(format!("error: key '{key}' is not set"));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        KvCommand::List { prefix, limit } => {
            let indexer = open_indexer(db)?;
            let kv = indexer.kv()?;
            let mut arr = Vec::new();
            for (n, item) in kv.list(&prefix).enumerate() {
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let item = item?;
                if out.json {
                    arr.push(json!({"key": item.key, "value": item.value, "heads": item.heads}));
                } else {
                    let conflict = if item.heads > 1 {
                        format!("  ({} concurrent heads)", item.heads)
                    } else {
                        String::new()
                    };
                    out.line(format!("{}\t{}{}", item.key, item.value, conflict))?;
                }
            }
            if out.json {
                out.line(Value::Array(arr).to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn timeline(db: &Db, args: TimelineArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let author = args.author.map(|a| resolve_feed(db, &a)).transpose()?;
    let indexer = open_indexer(db)?;
    let items = indexer.timeline()?.query(&TimelineQuery {
        kind: args.kind,
        author,
        from: args.from,
        to: args.to,
        limit: args.limit,
        order: if args.oldest_first {
            Order::Ascending
        } else {
            Order::Descending
        },
    })?;
    for it in items {
        if out.json {
            out.json_line(&json!({
                "timestamp": it.timestamp, "feed": it.author.to_string(), "seq": it.seq,
                "id": it.id.to_string(), "type": it.kind,
                "payload": out::payload_json(it.payload.as_deref()),
            }))?;
        } else {
            out.line(format!(
                "{}  {} #{:<6} {}",
                out::fmt_time(it.timestamp),
                it.author.fmt_short(),
                it.seq,
                out::payload_text(it.payload.as_deref())
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn view(db: &Db, cmd: ViewCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    let indexer = open_indexer(db)?;
    match cmd {
        ViewCommand::List => {
            let mut list = indexer.status();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if out.json {
                let arr: Vec<Value> = list
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.name, "description": s.description, "version": s.version,
                            "checkpoint": s.checkpoint, "lag": s.lag, "entries": s.folded,
                            "skipped": s.skipped, "rebuilding": s.rebuild.is_some(),
                        })
                    })
                    .collect();
                out.line(Value::Array(arr).to_string())?;
            } else {
                out.line(format!(
                    "{:<16} {:>7} {:>12} {:>10} {:>10} {:>9}  {}",
                    "NAME", "VERSION", "CHECKPOINT", "LAG", "ENTRIES", "SKIPPED", "WHAT"
                ))?;
                for s in &list {
                    out.line(format!(
                        "{:<16} {:>7} {:>12} {:>10} {:>10} {:>9}  {}",
                        s.name, s.version, s.checkpoint, s.lag, s.folded, s.skipped, s.description
                    ))?;
                }
            }
        }
        ViewCommand::Rebuild { name } => {
            let bar = out::progress(db.log_end(), "rebuilding");
            let status = indexer
                .rebuild(&name, &mut out::follow(&bar))
                .with_context(|| format!("cannot rebuild view '{name}'"))?;
            bar.finish_and_clear();
            if out.json {
                out.json_line(&json!({"name": status.name, "entries": status.folded, "skipped": status.skipped}))?;
            } else {
                out.line(format!(
                    "rebuilt {}: {} entries folded, {} skipped",
                    status.name, status.folded, status.skipped
                ))?;
            }
        }
        ViewCommand::Digest { name } => {
            out.line(indexer.digest(&name)?.to_string())?;
        }
        ViewCommand::Add { name, field } => {
            indexer.declare_field_index(&name, &field)?;
            indexer.catch_up()?;
            let s = indexer.view_status(&name)?;
            if out.json {
                out.json_line(&json!({"name": name, "field": field, "entries": s.folded}))?;
            } else {
                out.line(format!(
                    "added view {name} on {field}: {} entries indexed",
                    s.folded
                ))?;
            }
        }
        ViewCommand::Remove { name } => {
            indexer.remove_field_index(&name)?;
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
        } => {
            let q = match eq {
                Some(v) => FieldQuery::eq(parse_query_value(&v)),
                None => {
                    if from.is_none() && to.is_none() {
                        bail!("give --eq VALUE, or --from and/or --to");
                    }
                    FieldQuery::range(
                        from.as_deref().map(parse_query_value),
                        to.as_deref().map(parse_query_value),
                    )
                }
            }
            .limit(limit);
            for hit in indexer.field_index(&name)?.query(&q)? {
                if out.json {
                    out.json_line(&json!({
                        "value": hit.value, "timestamp": hit.timestamp, "feed": hit.author.to_string(),
                        "seq": hit.seq, "id": hit.id.to_string(),
                        "payload": out::payload_json(hit.payload.as_deref()),
                    }))?;
                } else {
                    out.line(format!(
                        "{}  {}  {} #{:<6} {}",
                        hit.value,
                        out::fmt_time(hit.timestamp),
                        hit.author.fmt_short(),
                        hit.seq,
                        out::payload_text(hit.payload.as_deref())
                    ))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
