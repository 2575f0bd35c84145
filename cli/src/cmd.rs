//! Command implementations: open the database, call the library, print.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use kappadb_core::{CreateOptions, Db, DbConfig, StoreError};
use serde_json::{Value, json};

use crate::answer::{AppendSummary, AppendedOne, PayloadFormat, Record};
use crate::client::Remote;
use crate::ops::{Backend, Local};
use crate::out::{self, Out, note};
use crate::params::{AppendBody, EntryParams, LogParams};
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

/// Open the database for a command that needs it to itself, waiting a
/// moment if another short-lived command holds it.
pub fn open(dir: &Path) -> anyhow::Result<Db> {
    match open_or_node(dir, false)? {
        Opened::Local(db) => Ok(db),
        // `open_or_node(_, false)` never answers with a node.
        Opened::Node(_) => bail!("{} is held by a running node", dir.display()),
    }
}

/// How long a command waits for a database another command holds:
/// `KAPPA_BUSY_TIMEOUT` seconds, 5 by default.
pub(crate) fn busy_timeout() -> Duration {
    std::env::var("KAPPA_BUSY_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(5), |s| {
            Duration::from_secs_f64(s.min(86_400.0))
        })
}

/// The command line of process `pid`, if this system shows it.
pub(crate) fn command_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let program = args.next()?;
    let program = Path::new(&program)
        .file_name()
        .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
    let rest: Vec<String> = args.take(6).collect();
    Some(format!("{program} {}", rest.join(" ")).trim().to_string())
}

/// A directory opened for a command: the database itself, or the node
/// that holds it.
enum Opened {
    Local(Db),
    Node(Remote),
}

/// Open `dir`, or (if `via_node`) reach the node that holds it. A lock
/// held by anything else is waited for, up to [`busy_timeout`]; the error
/// when that runs out names the holder as it is.
fn open_or_node(dir: &Path, via_node: bool) -> anyhow::Result<Opened> {
    let wait = busy_timeout();
    let deadline = std::time::Instant::now() + wait;
    loop {
        match Db::open(dir) {
            Ok(db) => {
                report_recovery(&db);
                return Ok(Opened::Local(db));
            }
            Err(StoreError::Locked { dir: d, pid }) => {
                let who = pid.map_or("another process".to_string(), |p| match command_of(p) {
                    Some(cmd) => format!("PID {p} (`{cmd}`)"),
                    None => format!("PID {p}"),
                });
                if let Some(api) = crate::api::ApiFile::read(dir)? {
                    if via_node {
                        return Ok(Opened::Node(Remote::new(&api.addr, api.token)));
                    }
                    bail!(
                        "the node running on {} ({who}) holds it, and this command needs the database to itself: stop the node first",
                        d.display()
                    );
                }
                if std::time::Instant::now() >= deadline {
                    let serving = pid
                        .and_then(command_of)
                        .is_some_and(|c| c.contains(" serve"));
                    if serving {
                        bail!(
                            "{} is held by `kappa serve` ({who}), which serves no API (started with --no-api?): stop it, or restart it without --no-api",
                            d.display()
                        );
                    }
                    bail!(
                        "database {} is in use by {who}, still after waiting {:.0} s; try again once it is done (KAPPA_BUSY_TIMEOUT=SECONDS waits longer)",
                        d.display(),
                        wait.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn report_recovery(db: &Db) {
    if let Some(r) = db.recovery() {
        note(format!(
            "warning: the log had a torn or corrupt tail ({}); cut {} bytes at offset {}, saved to {}",
            r.reason,
            r.bytes_removed,
            r.cut_at,
            r.saved_to.display()
        ));
    }
}

/// Run the shared operations on `dir`: directly when the database is free,
/// through the node's API when `kappa serve` holds it (waiting a moment
/// for a short-lived command that holds it).
pub fn connect(dir: &Path) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match open_or_node(dir, true)? {
        Opened::Local(db) => Box::new(Local::new(db, crate::views_cmd::open_indexer)),
        Opened::Node(remote) => Box::new(remote),
    })
}

/// [`connect`] for a command that follows the log until Ctrl-C. Without a
/// node, this process opens the database with live views and serves the
/// API while it follows, so other commands can still write.
pub fn connect_following(
    dir: &Path,
) -> anyhow::Result<(Box<dyn Backend>, Option<crate::api::FollowHost>)> {
    let db = match Db::open(dir) {
        Ok(db) => db,
        Err(StoreError::Locked { .. }) => return Ok((connect(dir)?, None)),
        Err(e) => return Err(e.into()),
    };
    report_recovery(&db);
    let indexer = kappadb_views::Indexer::open(db.clone())?;
    kappadb_search::install_declared(&indexer)?;
    let local = Local::with_indexer(db, std::sync::Arc::new(indexer));
    let host = crate::api::FollowHost::start(&local)?;
    Ok((Box::new(local), Some(host)))
}

/// Run a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = resolve_dir(cli.dir);
    out::set_utc(cli.utc);
    let mut out = Out::new(cli.json);
    match cli.command {
        Command::Init { max_payload, join } => init(&dir, max_payload, join, &mut out),
        Command::Id => {
            out.line(connect(&dir)?.id()?.feed)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Append { value, file } => append(&*connect(&dir)?, value, file, &mut out),
        Command::Log {
            feed,
            since,
            limit,
            follow,
        } => {
            let (b, _host) = if follow {
                connect_following(&dir)?
            } else {
                (connect(&dir)?, None)
            };
            log(&*b, feed, since, limit, follow, &mut out)
        }
        Command::Get { feed, seq, raw } => get(&*connect(&dir)?, &feed, seq, raw, &mut out),
        Command::Feeds { drop: None } => feeds(&*connect(&dir)?, &mut out),
        Command::Feeds { drop: Some(feed) } => {
            crate::lifecycle_cmd::forget(&*connect(&dir)?, &feed, &mut out)
        }
        Command::Verify => verify(&*connect(&dir)?, &mut out),
        Command::Reindex => reindex(&dir, &mut out),
        Command::Status => status(&*connect(&dir)?, &mut out),
        Command::Kv(c) => crate::views_cmd::kv(&*connect(&dir)?, c, &mut out),
        Command::Timeline(a) => {
            let (b, _host) = if a.follow {
                connect_following(&dir)?
            } else {
                (connect(&dir)?, None)
            };
            crate::views_cmd::timeline(&*b, a, &mut out)
        }
        Command::View(c) => crate::views_cmd::view(&*connect(&dir)?, c, &mut out),
        Command::Search(a) => crate::views_cmd::search(&*connect(&dir)?, a, &mut out),
        Command::Serve(args) => crate::net_cmd::serve(&dir, args, &mut out),
        Command::Bridge(cmd) => crate::bridge_cmd::run(&dir, cmd, &mut out),
        Command::Ui { no_open } => crate::net_cmd::ui(&dir, no_open, &mut out),
        Command::Sync { addr, timeout } => match open_or_node(&dir, true)? {
            Opened::Local(db) => crate::net_cmd::sync(&db, &addr, timeout, &mut out),
            Opened::Node(node) => crate::net_cmd::sync_via(&node, &addr, timeout, &mut out),
        },
        Command::Invite => crate::net_cmd::invite(&*connect(&dir)?, &mut out),
        Command::Identity(c) => crate::identity_cmd::run(&dir, c, &mut out),
        Command::Peers => crate::net_cmd::peers(&*connect(&dir)?, &mut out),
        Command::Delete(a) => crate::lifecycle_cmd::delete(&*connect(&dir)?, a, &mut out),
        Command::Compact => crate::lifecycle_cmd::compact(&*connect(&dir)?, &mut out),
        Command::Backup { dest } => crate::lifecycle_cmd::backup(&*connect(&dir)?, &dest, &mut out),
        Command::Restore(a) => match a.src {
            Some(src) => crate::lifecycle_cmd::restore(&dir, &src, &mut out),
            None => crate::lifecycle_cmd::release_hold(&*connect(&dir)?, &mut out),
        },
        Command::Forget { feed } => crate::lifecycle_cmd::forget(&*connect(&dir)?, &feed, &mut out),
        Command::Follow(a) => crate::lifecycle_cmd::follow(&*connect(&dir)?, a, &mut out),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kappa", &mut buf);
            out.line(String::from_utf8_lossy(&buf).trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { manager } => {
            out.line(crate::service::render(manager, &dir)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .context("cannot render the manual page")?;
            out.line(String::from_utf8_lossy(&buf).trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unfollow { feeds } => {
            crate::lifecycle_cmd::unfollow(&*connect(&dir)?, feeds, &mut out)
        }
        Command::Block { feed } => crate::net_cmd::block(&*connect(&dir)?, &feed, true, &mut out),
        Command::Unblock { feed } => {
            crate::net_cmd::block(&*connect(&dir)?, &feed, false, &mut out)
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
        invite.remember(dir)?;
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

/// Parse a user's JSON text into a payload.
fn parse_payload(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
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
    b: &dyn Backend,
    arg: Option<String>,
    file: Option<PathBuf>,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    if let Some(text) = arg {
        let payload = parse_payload(&text).map_err(|e| anyhow!("{e}"))?;
        let reply = b.append(AppendBody {
            payload: Some(payload),
            payloads: None,
        })?;
        let Some(a) = reply.appended.into_iter().next() else {
            bail!("the append answered with no entry");
        };
        let one = AppendedOne {
            feed: reply.feed,
            id: a.id.clone(),
            offset: a.offset,
            seq: a.seq,
            timestamp: a.timestamp,
        };
        out.answer(&one, |_| vec![out::appended_line(&a)])?;
        return Ok(ExitCode::SUCCESS);
    }
    let reader: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin().lock())),
    };
    let bar = out::counter("appended");
    let mut batch: Vec<Value> = Vec::with_capacity(APPEND_BATCH);
    let mut appended = 0u64;
    let mut first_seq = None;
    let mut last_seq = None;
    let mut feed = None;
    let mut flush = |batch: Vec<Value>| -> anyhow::Result<()> {
        let reply = b.append(AppendBody {
            payload: None,
            payloads: Some(batch),
        })?;
        let list = &reply.appended;
        appended += list.len() as u64;
        first_seq = first_seq.or(list.first().map(|a| a.seq));
        last_seq = list.last().map(|a| a.seq).or(last_seq);
        feed = Some(reply.feed);
        bar.set_position(appended);
        Ok(())
    };
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
            flush(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        flush(batch)?;
    }
    bar.finish_and_clear();
    let feed = match feed {
        Some(f) => f,
        None => b.id()?.feed,
    };
    let summary = AppendSummary {
        appended,
        feed,
        first_seq,
        last_seq,
    };
    out.answer(&summary, |s| vec![out::append_summary_line(s)])?;
    Ok(ExitCode::SUCCESS)
}

fn log(
    b: &dyn Backend,
    feed: Option<String>,
    since: u64,
    limit: Option<usize>,
    follow: bool,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let mut printed = 0usize;
    let mut next = since;
    if !out.json {
        out.line(out::record_header())?;
    }
    loop {
        let want = limit.map(|l| l - printed);
        if want == Some(0) {
            return Ok(ExitCode::SUCCESS);
        }
        let page = b.log(&LogParams {
            since: next,
            limit: want,
            feed: feed.clone(),
        })?;
        for r in &page.records {
            print_record(r, out)?;
            printed += 1;
        }
        next = page.next;
        if page.next >= page.end {
            break;
        }
    }
    if follow {
        out.flush()?;
        b.follow(next, feed.as_deref(), &mut |r| {
            print_record(&r, out)?;
            out.flush()?;
            printed += 1;
            Ok(limit.is_none_or(|l| printed < l))
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(r: &Record, out: &mut Out) -> anyhow::Result<()> {
    out.answer(r, |r| vec![out::record_line(r)])
}

fn get(
    b: &dyn Backend,
    feed: &str,
    seq: u64,
    raw: bool,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let entry = b.get(feed, seq, &EntryParams { raw })?;
    if raw && !out.json {
        // The payload's bytes, exactly as stored (and hashed).
        let Some(r) = &entry.raw else {
            anyhow::bail!("the node did not send the raw entry");
        };
        let bytes = match (r.payload.as_deref(), r.payload_encoding.as_deref()) {
            (Some(text), Some("utf8")) => text.as_bytes().to_vec(),
            (Some(b64), Some("base64")) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64)?
            }
            _ => anyhow::bail!(
                "entry {seq} has no payload here ({}); --json --raw shows its header",
                match entry.payload_format {
                    PayloadFormat::Erased => "erased by its author",
                    _ => "not held",
                }
            ),
        };
        out.raw(&bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    out.answer(&entry, out::entry_lines)?;
    Ok(ExitCode::SUCCESS)
}

fn feeds(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let feeds = b.feeds()?;
    if !out.json && feeds.is_empty() {
        note("no feeds yet; `kappa append '{\"type\":\"note\"}'` starts yours");
    }
    out.answer(&feeds, |list| list.iter().map(out::feed_line).collect())?;
    Ok(ExitCode::SUCCESS)
}

fn verify(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let bar = out::progress(0, "verifying");
    let report = b.verify(&mut out::follow(&bar))?;
    bar.finish_and_clear();
    if out.json {
        out.json_line(&report)?;
    } else {
        for p in &report.problems {
            out.line(format!("offset {}: {}", p.offset, p.problem))?;
        }
        out.line(format!(
            "{}: {} records, {} entries in {} feeds, {} fork proofs, {} payloads not held, {} erased by {} deletions",
            if report.ok { "ok" } else { "FAILED" },
            report.records,
            report.entries,
            report.feeds,
            report.fork_proofs,
            report.missing_payloads,
            report.erased_payloads,
            report.deletions
        ))?;
    }
    Ok(if report.ok {
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

fn status(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    out.answer(&b.status()?, out::status_lines)?;
    Ok(ExitCode::SUCCESS)
}
