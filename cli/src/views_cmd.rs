//! View commands: `kappa kv ...`, `kappa timeline`, `kappa view ...`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use kappadb_core::Db;
use kappadb_views::{Indexer, IndexerConfig};
use serde_json::Value;

use crate::ops::{Backend, FieldParams, KvListParams, KvWrite, TimelineParams, ViewAddBody};
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
    /// Print the newest entries oldest first, then new ones as they land,
    /// until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
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

pub fn kv(b: &dyn Backend, cmd: KvCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        KvCommand::Put { key, value, links } => {
            let v = b.kv_write(KvWrite {
                key: key.clone(),
                value: Some(parse_value(&value)),
                links,
            })?;
            if out.json {
                out.json_line(&v)?;
            } else {
                note(format!(
                    "put {key} (seq {}, id {})",
                    out::num(&v, "seq"),
                    out::short(&v["id"])
                ));
            }
        }
        KvCommand::Del { key, links } => {
            let v = b.kv_write(KvWrite {
                key: key.clone(),
                value: None,
                links,
            })?;
            if out.json {
                out.json_line(&v)?;
            } else {
                note(format!(
                    "deleted {key} (seq {}, id {})",
                    out::num(&v, "seq"),
                    out::short(&v["id"])
                ));
            }
        }
        KvCommand::Get { key, heads: false } => {
            out.line(b.kv_get(&key)?.to_string())?;
        }
        KvCommand::Get { key, heads: true } => {
            let heads = b.kv_heads(&key)?;
            if out.json {
                out.line(heads.to_string())?;
            } else {
                for h in heads.as_array().into_iter().flatten() {
                    let value = if h["deleted"] == true {
                        "(deleted)".to_string()
                    } else {
                        h["value"].to_string()
                    };
                    out.line(format!(
                        "{}  {} #{}  {}  {}",
                        h["id"].as_str().unwrap_or_default(),
                        out::short(&h["feed"]),
                        out::num(h, "seq"),
                        out::fmt_time(out::num(h, "timestamp")),
                        value
                    ))?;
                }
            }
        }
        KvCommand::List { prefix, limit } => {
            let items = b.kv_list(&KvListParams { prefix, limit })?;
            if out.json {
                out.line(items.to_string())?;
            } else {
                for item in items.as_array().into_iter().flatten() {
                    let n = out::num(item, "heads");
                    let conflict = if n > 1 {
                        format!("  ({n} concurrent heads)")
                    } else {
                        String::new()
                    };
                    out.line(format!(
                        "{}\t{}{}",
                        item["key"].as_str().unwrap_or_default(),
                        item["value"],
                        conflict
                    ))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_timeline_item(item: &Value, out: &mut Out) -> anyhow::Result<()> {
    if out.json {
        out.json_line(item)
    } else {
        out.line(out::timeline_text(item))
    }
}

pub fn timeline(b: &dyn Backend, args: TimelineArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    // With --follow, new entries are printed as they land, after the newest
    // `limit` ones, oldest first (like `tail -f`).
    let start = if args.follow {
        Some(out::num(&b.status()?, "log_bytes"))
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
    };
    let mut items = b.timeline(&params)?.as_array().cloned().unwrap_or_default();
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
    let shown: std::collections::HashSet<String> = items
        .iter()
        .filter_map(|it| it["id"].as_str().map(str::to_string))
        .collect();
    b.follow(start, args.author.as_deref(), &mut |rec| {
        if rec["kind"] != "entry" || rec["id"].as_str().is_some_and(|id| shown.contains(id)) {
            return Ok(true);
        }
        let item = out::record_as_timeline(&rec);
        if args
            .kind
            .as_ref()
            .is_some_and(|k| item["type"] != k.as_str())
        {
            return Ok(true);
        }
        let ts = out::num(&item, "timestamp");
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
            let list = b.views()?;
            if out.json {
                out.line(list.to_string())?;
            } else {
                out.line(format!(
                    "{:<16} {:>7} {:>12} {:>10} {:>10} {:>9}  {}",
                    "NAME", "VERSION", "CHECKPOINT", "LAG", "ENTRIES", "SKIPPED", "WHAT"
                ))?;
                for s in list.as_array().into_iter().flatten() {
                    out.line(format!(
                        "{:<16} {:>7} {:>12} {:>10} {:>10} {:>9}  {}",
                        s["name"].as_str().unwrap_or_default(),
                        out::num(s, "version"),
                        out::num(s, "checkpoint"),
                        out::num(s, "lag"),
                        out::num(s, "entries"),
                        out::num(s, "skipped"),
                        s["description"].as_str().unwrap_or_default()
                    ))?;
                }
            }
        }
        ViewCommand::Rebuild { name } => {
            let bar = out::progress(0, "rebuilding");
            let res = b.view_rebuild(&name, &mut out::follow(&bar));
            bar.finish_and_clear();
            let v = res.with_context(|| format!("cannot rebuild view '{name}'"))?;
            if out.json {
                out.json_line(&v)?;
            } else {
                out.line(format!(
                    "rebuilt {}: {} entries folded, {} skipped",
                    v["name"].as_str().unwrap_or_default(),
                    out::num(&v, "entries"),
                    out::num(&v, "skipped")
                ))?;
            }
        }
        ViewCommand::Digest { name } => {
            let v = b.view_digest(&name)?;
            out.line(v["digest"].as_str().unwrap_or_default())?;
        }
        ViewCommand::Add { name, field } => {
            let v = b.view_add(ViewAddBody { name, field })?;
            if out.json {
                out.json_line(&v)?;
            } else {
                out.line(format!(
                    "added view {} on {}: {} entries indexed",
                    v["name"].as_str().unwrap_or_default(),
                    v["field"].as_str().unwrap_or_default(),
                    out::num(&v, "entries")
                ))?;
            }
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
                },
            )?;
            for hit in hits.as_array().into_iter().flatten() {
                if out.json {
                    out.json_line(hit)?;
                } else {
                    out.line(format!(
                        "{}  {}  {} #{:<6} {}",
                        hit["value"],
                        out::fmt_time(out::num(hit, "timestamp")),
                        out::short(&hit["feed"]),
                        out::num(hit, "seq"),
                        out::payload_text(hit)
                    ))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
