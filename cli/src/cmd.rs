//! Command implementations: open the database, call the library, print.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use kappadb_core::{CreateOptions, Db, DbConfig, FeedId, RecordBody};
use serde_json::{Value, json};

use crate::out::{self, Out, note};
use crate::{Cli, Command};

/// Entries per batch when appending lines.
const APPEND_BATCH: usize = 1000;

/// The database directory: `--dir`, `KAPPA_DIR`, or the platform default.
pub fn resolve_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| {
        dirs::data_dir()
            .map(|d| d.join("kappadb"))
            .unwrap_or_else(|| PathBuf::from(".kappadb"))
    })
}

pub fn open(dir: &Path) -> anyhow::Result<Db> {
    let db = Db::open(dir)?;
    if let Some(r) = db.recovery() {
        note(format!(
            "warning: the log had a torn or corrupt tail ({}); cut {} bytes at offset {}, saved to {}",
            r.reason,
            r.bytes_removed,
            r.cut_at,
            r.saved_to.display()
        ));
    }
    Ok(db)
}

/// Run a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = resolve_dir(cli.dir);
    let mut out = Out::new(cli.json);
    match cli.command {
        Command::Init { max_payload, join } => init(&dir, max_payload, join, &mut out),
        Command::Id => {
            let db = open(&dir)?;
            out.line(db.feed_id().to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Append { value, file } => append(&open(&dir)?, value, file, &mut out),
        Command::Log { feed, since, limit } => log(&open(&dir)?, feed, since, limit, &mut out),
        Command::Get { feed, seq } => get(&open(&dir)?, &feed, seq, &mut out),
        Command::Feeds => feeds(&open(&dir)?, &mut out),
        Command::Verify => verify(&open(&dir)?, &mut out),
        Command::Reindex => reindex(&dir, &mut out),
        Command::Status => status(&open(&dir)?, &mut out),
        Command::Kv(c) => crate::views_cmd::kv(&open(&dir)?, c, &mut out),
        Command::Timeline(a) => crate::views_cmd::timeline(&open(&dir)?, a, &mut out),
        Command::View(c) => crate::views_cmd::view(&open(&dir)?, c, &mut out),
        Command::Serve(args) => crate::net_cmd::serve(&dir, args, &mut out),
        Command::Sync { addr, timeout } => {
            crate::net_cmd::sync(&open(&dir)?, &addr, timeout, &mut out)
        }
        Command::Invite => crate::net_cmd::invite(&open(&dir)?, &mut out),
        Command::Peers => {
            if !dir.join(kappadb_core::db::files::CONFIG).exists() {
                bail!(
                    "no kappadb database in {}; run `kappa init` to create one",
                    dir.display()
                );
            }
            crate::net_cmd::peers(&dir, &mut out)
        }
        Command::Block { feed } => {
            let db = open(&dir)?;
            let feed = resolve_feed(&db, &feed)?;
            crate::net_cmd::block(&db, feed, true, &mut out)
        }
        Command::Unblock { feed } => {
            let db = open(&dir)?;
            let feed = resolve_feed(&db, &feed)?;
            crate::net_cmd::block(&db, feed, false, &mut out)
        }
    }
}

fn init(
    dir: &Path,
    max_payload: u32,
    join: Option<String>,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let config = DbConfig {
        max_payload_bytes: max_payload,
        ..DbConfig::default()
    };
    let invite = join
        .as_deref()
        .map(crate::net_cmd::parse_invite)
        .transpose()?;
    let db = Db::create(
        dir,
        CreateOptions {
            config,
            network_key: invite.as_ref().map(|i| i.key.clone()),
            ..CreateOptions::default()
        },
    )
    .with_context(|| format!("cannot create a database in {}", dir.display()))?;
    if let Some(invite) = &invite {
        crate::net_cmd::remember_invite_addrs(dir, &invite.addrs)?;
        note(format!(
            "joined the invite's network; `kappa serve` will connect to {} known address(es)",
            invite.addrs.len()
        ));
    }
    if out.json {
        out.json_line(
            &json!({"dir": dir.display().to_string(), "feed": db.feed_id().to_string()}),
        )?;
    } else {
        note(format!("created a kappadb database in {}", dir.display()));
        out.line(db.feed_id().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parse a user's JSON text into normalized payload bytes.
fn parse_payload(text: &str) -> Result<Vec<u8>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v.to_string().into_bytes()),
        Err(e) => {
            let hint = if !text.trim_start().starts_with(['{', '[', '"']) {
                " (strings need quotes, e.g. '\"hello\"')"
            } else {
                ""
            };
            Err(format!("not valid JSON: {e}{hint}"))
        }
    }
}

fn append(
    db: &Db,
    arg: Option<String>,
    file: Option<PathBuf>,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    if let Some(text) = arg {
        let payload = parse_payload(&text).map_err(|e| anyhow!("{e}"))?;
        let a = db.append(payload)?;
        if out.json {
            out.json_line(&json!({
                "feed": db.feed_id().to_string(), "seq": a.seq, "offset": a.offset,
                "id": a.id.to_string(), "timestamp": a.timestamp,
            }))?;
        } else {
            out.line(format!(
                "appended seq {} at offset {} (id {})",
                a.seq,
                a.offset,
                a.id.fmt_short()
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reader: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin().lock())),
    };
    let bar = out::counter("appended");
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(APPEND_BATCH);
    let mut appended = 0u64;
    let mut first_seq = None;
    let mut last = None;
    for (idx, line) in reader.lines().enumerate() {
        let line_no = idx + 1;
        let line = line.with_context(|| format!("cannot read line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_payload(&line) {
            Ok(p) => batch.push(p),
            Err(e) => {
                bar.finish_and_clear();
                if appended == 0 {
                    bail!("line {line_no}: {e}; nothing was appended");
                }
                bail!(
                    "line {line_no}: {e}; the {appended} entries before the current batch of {APPEND_BATCH} lines were appended, nothing after them"
                );
            }
        }
        if batch.len() >= APPEND_BATCH {
            let res = db.append_batch(std::mem::take(&mut batch))?;
            appended += res.len() as u64;
            first_seq = first_seq.or(res.first().map(|a| a.seq));
            last = res.last().copied().or(last);
            bar.set_position(appended);
        }
    }
    if !batch.is_empty() {
        let res = db.append_batch(batch)?;
        appended += res.len() as u64;
        first_seq = first_seq.or(res.first().map(|a| a.seq));
        last = res.last().copied().or(last);
    }
    bar.finish_and_clear();
    if out.json {
        out.json_line(&json!({
            "feed": db.feed_id().to_string(),
            "appended": appended,
            "first_seq": first_seq,
            "last_seq": last.map(|a| a.seq),
        }))?;
    } else {
        match (first_seq, last) {
            (Some(f), Some(l)) => {
                out.line(format!("appended {appended} entries (seq {f}..={})", l.seq))?
            }
            _ => out.line("appended 0 entries")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolve a feed argument: a full id, "self", or a unique prefix of a known feed.
pub fn resolve_feed(db: &Db, text: &str) -> anyhow::Result<FeedId> {
    let text = text.trim();
    if text == "self" || text == "me" {
        return Ok(db.feed_id());
    }
    if let Ok(id) = text.parse::<FeedId>() {
        return Ok(id);
    }
    let lower = text.to_ascii_lowercase();
    if lower.len() < 4 || !lower.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "'{text}' is not a feed id: give the 64 hex digits from `kappa feeds`, a unique prefix of at least 4, or \"self\""
        );
    }
    let matches: Vec<FeedId> = db
        .feeds()
        .into_iter()
        .map(|f| f.feed)
        .filter(|f| f.to_string().starts_with(&lower))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no known feed starts with '{text}'; `kappa feeds` lists them"),
        _ => bail!("'{text}' matches {} feeds; give more digits", matches.len()),
    }
}

fn log(
    db: &Db,
    feed: Option<String>,
    since: u64,
    limit: Option<usize>,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let feed = feed.map(|f| resolve_feed(db, &f)).transpose()?;
    let start = db.record_boundary(since)?;
    let mut printed = 0usize;
    for rec in db.log_iter(start) {
        if limit.is_some_and(|l| printed >= l) {
            break;
        }
        let rec = rec?;
        let author = match &rec.body {
            RecordBody::Entry(e) => e.header.author,
            RecordBody::Fork(p) => p.author(),
        };
        if feed.is_some_and(|f| f != author) {
            continue;
        }
        if out.json {
            out.json_line(&out::record_json(&rec))?;
        } else {
            out.line(out::record_text(&rec))?;
        }
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn get(db: &Db, feed: &str, seq: u64, out: &mut Out) -> anyhow::Result<ExitCode> {
    let feed = resolve_feed(db, feed)?;
    let Some(entry) = db.get(&feed, seq)? else {
        match db.head(&feed) {
            None => bail!("no entries of feed {} are held here", feed.fmt_short()),
            Some(h) => bail!(
                "feed {} has no entry at seq {seq} (this database holds seq 1..={})",
                feed.fmt_short(),
                h.seq
            ),
        }
    };
    if out.json {
        out.json_line(&out::entry_json(None, &entry))?;
    } else {
        let h = &entry.header;
        out.line(format!("feed      {}", h.author))?;
        out.line(format!("seq       {}", h.seq))?;
        out.line(format!("id        {}", entry.id()))?;
        out.line(format!(
            "prev      {}",
            h.prev.map_or("(none)".to_string(), |p| p.to_string())
        ))?;
        out.line(format!(
            "timestamp {} ({})",
            h.timestamp,
            out::fmt_time(h.timestamp)
        ))?;
        out.line(format!("payload   {} bytes", h.payload_len))?;
        out.line(out::payload_text(entry.payload.as_deref()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn feeds(db: &Db, out: &mut Out) -> anyhow::Result<ExitCode> {
    let feeds = db.feeds();
    let me = db.feed_id();
    if out.json {
        let arr: Vec<Value> = feeds
            .iter()
            .map(|f| {
                json!({
                    "feed": f.feed.to_string(),
                    "seq": f.head.seq,
                    "head": f.head.id.to_string(),
                    "timestamp": f.head.timestamp,
                    "forked": f.fork.is_some(),
                    "fork_seq": f.fork.map(|x| x.seq),
                    "local": f.feed == me,
                })
            })
            .collect();
        out.line(Value::Array(arr).to_string())?;
    } else {
        if feeds.is_empty() {
            note("no feeds yet; `kappa append '{\"type\":\"note\"}'` starts yours");
        }
        for f in &feeds {
            let mut flags = String::new();
            if f.feed == me {
                flags.push_str(" (self)");
            }
            if let Some(fork) = f.fork {
                flags.push_str(&format!(" FORKED at seq {}", fork.seq));
            }
            out.line(format!(
                "{}  seq {:<8} head {}{}",
                f.feed,
                f.head.seq,
                f.head.id.fmt_short(),
                flags
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(db: &Db, out: &mut Out) -> anyhow::Result<ExitCode> {
    let end = db.log_end();
    let bar = out::progress(end, "verifying");
    let report = db.verify(&mut out::follow(&bar))?;
    bar.finish_and_clear();
    let ok = report.problems.is_empty();
    if out.json {
        out.json_line(&json!({
            "ok": ok,
            "records": report.records,
            "entries": report.entries,
            "feeds": report.feeds,
            "fork_proofs": report.fork_proofs,
            "missing_payloads": report.missing_payloads,
            "problems": report.problems.iter().map(|p| json!({"offset": p.offset, "problem": p.what})).collect::<Vec<_>>(),
        }))?;
    } else {
        for p in &report.problems {
            out.line(format!("offset {}: {}", p.offset, p.what))?;
        }
        out.line(format!(
            "{}: {} records, {} entries in {} feeds, {} fork proofs, {} payloads not held",
            if ok { "ok" } else { "FAILED" },
            report.records,
            report.entries,
            report.feeds,
            report.fork_proofs,
            report.missing_payloads
        ))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn reindex(dir: &Path, out: &mut Out) -> anyhow::Result<ExitCode> {
    let bar = out::progress(0, "reindexing");
    let db = Db::open_reindex(dir, &mut out::follow(&bar))?;
    bar.finish_and_clear();
    let s = db.status();
    if out.json {
        out.json_line(&json!({"records": s.records, "entries": s.entries, "feeds": s.feeds}))?;
    } else {
        out.line(format!(
            "reindexed {} records: {} entries in {} feeds",
            s.records, s.entries, s.feeds
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(db: &Db, out: &mut Out) -> anyhow::Result<ExitCode> {
    let s = db.status();
    if out.json {
        out.json_line(&json!({
            "dir": s.dir.display().to_string(),
            "feed": s.feed_id.to_string(),
            "log_bytes": s.log_bytes,
            "records": s.records,
            "entries": s.entries,
            "feeds": s.feeds,
            "forked_feeds": s.forked_feeds,
            "own_seq": db.head(&s.feed_id).map_or(0, |h| h.seq),
        }))?;
    } else {
        out.line(format!("dir       {}", s.dir.display()))?;
        out.line(format!("feed      {}", s.feed_id))?;
        out.line(format!(
            "own seq   {}",
            db.head(&s.feed_id).map_or(0, |h| h.seq)
        ))?;
        out.line(format!(
            "log       {} bytes, {} records",
            s.log_bytes, s.records
        ))?;
        out.line(format!("entries   {} in {} feeds", s.entries, s.feeds))?;
        if s.forked_feeds > 0 {
            out.line(format!(
                "forked    {} feeds (see `kappa feeds`)",
                s.forked_feeds
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
