//! Output: the typed answers ([`crate::answer`]) as human text or JSON,
//! progress bars, and clean exits on a closed pipe. Only the CLI prints.
//!
//! Everything here renders; nothing decides. The functions that turn an
//! answer into human lines are the only place its text form is defined.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::answer::{
    AppendSummary, Appended, Entry, FeedInfo, FieldHit, KvHead, KvItem, KvWritten, PayloadFormat,
    PeerInfo, Record, SearchHit, Status, TimelineItem, ViewAdded, ViewInfo, ViewRebuilt,
};

/// Where command output goes.
pub struct Out {
    /// `--json` was given.
    pub json: bool,
    stdout: io::StdoutLock<'static>,
}

/// Raised when stdout is closed (e.g. `kappa log | head`): exit quietly.
#[derive(Debug)]
pub struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("broken pipe")
    }
}

impl std::error::Error for BrokenPipe {}

/// With `--json`, an error is one JSON object on stderr:
/// `{"error": {"code": …, "message": …}}` (and `"kind"`, clap's name for a
/// usage error, when there is one).
pub fn json_error(code: &str, kind: &str, message: &str) {
    let mut err = serde_json::json!({"code": code, "message": message.trim_end()});
    if !kind.is_empty() {
        err["kind"] = kind.into();
    }
    eprintln!("{}", serde_json::json!({ "error": err }));
}

/// A command line that asks for something impossible (a value that does
/// not parse, say): exit code 2, like clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl Out {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            stdout: io::stdout().lock(),
        }
    }

    /// Print one line to stdout.
    pub fn line(&mut self, text: impl AsRef<str>) -> anyhow::Result<()> {
        let res = writeln!(self.stdout, "{}", text.as_ref());
        match res {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            Err(e) => Err(e.into()),
            Ok(()) => Ok(()),
        }
    }

    /// Write bytes to stdout as they are (no newline added).
    pub fn raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let res = self
            .stdout
            .write_all(bytes)
            .and_then(|()| self.stdout.flush());
        match res {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            Err(e) => Err(e.into()),
            Ok(()) => Ok(()),
        }
    }

    /// Print lines to stdout.
    pub fn lines(&mut self, lines: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
        lines.into_iter().try_for_each(|l| self.line(l))
    }

    /// Print a value as JSON on one line.
    pub fn json_line(&mut self, value: &impl Serialize) -> anyhow::Result<()> {
        let text = serde_json::to_string(value)?;
        self.line(text)
    }

    /// Print an answer: its JSON on one line with `--json`, else the lines
    /// `human` renders.
    pub fn answer<T: Serialize>(
        &mut self,
        value: &T,
        human: impl FnOnce(&T) -> Vec<String>,
    ) -> anyhow::Result<()> {
        if self.json {
            self.json_line(value)
        } else {
            self.lines(human(value))
        }
    }

    /// Flush stdout (for streaming output).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        match self.stdout.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
            other => Ok(other?),
        }
    }
}

/// Print a note for humans on stderr (never part of machine output).
pub fn note(text: impl AsRef<str>) {
    let _ = writeln!(io::stderr(), "{}", text.as_ref());
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A `(offset, end)` progress callback, as the libraries take, that moves
/// `bar`.
pub fn follow(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    move |pos, end| {
        bar.set_length(end);
        bar.set_position(pos);
    }
}

/// A counter spinner on stderr when it is a terminal (unknown length).
pub fn counter(what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {msg} {pos} ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// RFC 3339 time of a ms timestamp.
pub fn fmt_time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    if UTC.load(std::sync::atomic::Ordering::Relaxed) {
        return humantime::format_rfc3339_millis(t).to_string();
    }
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S%.3f %:z")
        .to_string()
}

/// `--utc`: times for people in UTC (RFC 3339) instead of local time.
static UTC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Show times in UTC (`--utc`) rather than in the local zone.
pub fn set_utc(on: bool) {
    UTC.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The header row of `kappa log`'s lines.
pub fn record_header() -> String {
    let width = fmt_time(0).len();
    format!(
        "{:>10}  {:<8}  {:<7} {:<width$}  PAYLOAD",
        "OFFSET", "FEED", "SEQ", "TIME"
    )
}

/// The first 8 hex digits of an id, for lines.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// A byte count for humans: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A payload for humans: compact JSON, or quoted text, or a note.
pub fn payload_text(payload: &Value, format: PayloadFormat) -> String {
    match format {
        PayloadFormat::Json => payload.to_string(),
        PayloadFormat::Text => format!("{:?}", payload.as_str().unwrap_or_default()),
        PayloadFormat::Binary => format!(
            "({} bytes of binary)",
            payload.as_str().map_or(0, |s| s.len() / 2)
        ),
        PayloadFormat::Absent => "(payload not held)".to_string(),
        PayloadFormat::Erased => "(erased by its author)".to_string(),
        PayloadFormat::Deletion => format!("(deletion) {payload}"),
        PayloadFormat::Identity => format!("(identity) {payload}"),
    }
}

/// A log record as one line: offset, feed, seq, time, payload.
pub fn record_line(r: &Record) -> String {
    match r {
        Record::Fork(f) => format!(
            "{:>10}  {}  #{:<6} fork proof: two entries at this seq",
            f.offset,
            short(&f.feed),
            f.seq
        ),
        Record::Forget(f) => format!(
            "{:>10}  {}  forgotten here: its entries were dropped",
            f.offset,
            short(&f.feed),
        ),
        Record::Entry(e) => format!(
            "{:>10}  {}  #{:<6} {}  {}",
            e.offset.unwrap_or_default(),
            short(&e.feed),
            e.seq,
            fmt_time(e.timestamp),
            payload_text(&e.payload, e.payload_format)
        ),
    }
}

/// A timeline item as one line: time, feed, seq, payload.
pub fn timeline_line(it: &TimelineItem) -> String {
    format!(
        "{}  {} #{:<6} {}",
        fmt_time(it.timestamp),
        short(&it.feed),
        it.seq,
        payload_text(&it.payload, it.payload_format)
    )
}

/// One entry, field by field, then its payload.
pub fn entry_lines(e: &Entry) -> Vec<String> {
    vec![
        format!("feed      {}", e.feed),
        format!("seq       {}", e.seq),
        format!("id        {}", e.id),
        format!("prev      {}", e.prev.as_deref().unwrap_or("(none)")),
        format!("timestamp {} ({})", e.timestamp, fmt_time(e.timestamp)),
        format!("signature {}", e.signature),
        format!(
            "payload   {} bytes, blake3 {}",
            e.payload_len, e.payload_hash
        ),
        payload_text(&e.payload, e.payload_format),
    ]
}

/// What one appended entry became.
pub fn appended_line(a: &Appended) -> String {
    format!(
        "appended seq {} at offset {} (id {})",
        a.seq,
        a.offset,
        short(&a.id)
    )
}

/// How many lines were appended.
pub fn append_summary_line(s: &AppendSummary) -> String {
    match (s.first_seq, s.last_seq) {
        (Some(f), Some(l)) => format!("appended {} entries (seq {f}..={l})", s.appended),
        _ => "appended 0 entries".to_string(),
    }
}

/// A feed and its head.
pub fn feed_line(f: &FeedInfo) -> String {
    let mut flags = String::new();
    if f.local {
        flags.push_str(" (self)");
    }
    if f.forked {
        flags.push_str(&format!(
            " FORKED at seq {}",
            f.fork_seq.unwrap_or_default()
        ));
    }
    format!(
        "{}  seq {:<8} head {}{}",
        f.feed,
        f.seq,
        short(&f.head),
        flags
    )
}

/// The database's state.
pub fn status_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![
        format!("dir       {}", s.dir),
        format!("feed      {}", s.feed),
        format!("own seq   {}", s.own_seq),
        format!("log       {} bytes, {} records", s.log_bytes, s.records),
        format!("on disk   {} bytes", s.disk_bytes),
        format!("entries   {} in {} feeds", s.entries, s.feeds),
        format!(
            "erased    {} entries, {} payload bytes",
            s.erased_entries, s.erased_bytes
        ),
        format!(
            "reclaim   {} bytes (`kappa compact` gives them back)",
            s.reclaimable_bytes
        ),
    ];
    if let Some(seq) = s.own_forked_at {
        lines.push(format!(
            "FORKED    your own feed is forked at seq {seq}: another copy of this database \
             (a backup restored without syncing, or a copied directory) appended there too. \
             Every peer now refuses new entries of this feed, so this database cannot append \
             any more. What it holds is safe and still syncs. To write again, create a new \
             database in this network (`kappa invite` here, then `kappa --dir NEW init --join \
             INVITE`) and write from that one; to prevent this, use `kappa backup` and \
             `kappa restore`, never a copy of the directory."
        ));
    }
    if let Some(why) = &s.held {
        lines.push(format!("held      appends wait: {why}"));
    }
    if s.forked_feeds > 0 {
        lines.push(format!(
            "forked    {} feeds (see `kappa feeds`)",
            s.forked_feeds
        ));
    }
    if let Some(b) = &s.bridge {
        lines.push(format!(
            "kafka     topic {}: {}, {} records ({} bytes) behind, {} produced, {} found already there",
            b.topic, b.state, b.lag_records, b.lag_bytes, b.produced, b.skipped
        ));
        if let Some(e) = &b.last_error {
            lines.push(format!("kafka     last error: {e}"));
        }
    }
    match &s.node {
        None => lines.push("node      not running (`kappa serve` runs it)".to_string()),
        Some(n) => {
            lines.push(format!(
                "node      running, peer id {}, {} peers connected",
                n.peer_id,
                n.connected.len()
            ));
            for a in &n.listen {
                lines.push(format!("listen    {a}"));
            }
            for p in &n.connected {
                lines.push(format!("peer      {p}"));
            }
        }
    }
    if let Some(views) = &s.views {
        lines.push(String::new());
        lines.extend(views_table(views));
    }
    lines
}

/// A peer of the address book.
pub fn peer_line(p: &PeerInfo) -> String {
    let seen = match p.last_seen {
        0 => "never".to_string(),
        t => fmt_time(t),
    };
    let synced = p.last_sync.map_or("never".to_string(), fmt_time);
    format!(
        "{}  {}  feed {}  seen {}  synced {}  {}",
        p.peer,
        if p.connected {
            "connected"
        } else {
            "-        "
        },
        p.feed.as_deref().map_or("-".to_string(), short),
        seen,
        synced,
        p.addrs.join(" ")
    )
}

/// A concurrent head of a kv key.
pub fn kv_head_line(h: &KvHead) -> String {
    let value = if h.deleted {
        "(deleted)".to_string()
    } else {
        h.value.to_string()
    };
    format!(
        "{}  {} #{}  {}  {}",
        h.id,
        short(&h.feed),
        h.seq,
        fmt_time(h.timestamp),
        value
    )
}

/// A live kv key and its value.
pub fn kv_item_line(item: &KvItem) -> String {
    let conflict = if item.heads > 1 {
        format!("  ({} concurrent heads)", item.heads)
    } else {
        String::new()
    };
    format!("{}\t{}{}", item.key, item.value, conflict)
}

/// The note after a kv put or delete (`verb`: "put" or "deleted").
pub fn kv_written_note(verb: &str, w: &KvWritten) -> String {
    format!("{verb} {} (seq {}, id {})", w.key, w.seq, short(&w.id))
}

/// The views as a table with a header.
pub fn views_table(views: &[ViewInfo]) -> Vec<String> {
    let row = |cells: [&dyn std::fmt::Display; 7]| {
        let [name, version, checkpoint, lag, entries, skipped, what] = cells;
        format!(
            "{name:<16} {version:>7} {checkpoint:>12} {lag:>10} {entries:>10} {skipped:>9}  {what}"
        )
    };
    let mut lines = vec![row([
        &"NAME",
        &"VERSION",
        &"CHECKPOINT",
        &"LAG",
        &"ENTRIES",
        &"SKIPPED",
        &"WHAT",
    ])];
    lines.extend(views.iter().map(|s| {
        row([
            &s.name,
            &s.version,
            &s.checkpoint,
            &s.lag,
            &s.entries,
            &s.skipped,
            &s.description,
        ])
    }));
    lines
}

/// A finished rebuild.
pub fn rebuilt_line(r: &ViewRebuilt) -> String {
    format!(
        "rebuilt {}: {} entries folded, {} skipped",
        r.name, r.entries, r.skipped
    )
}

/// A declared field index.
pub fn view_added_line(v: &ViewAdded) -> String {
    let on = if v.text.is_empty() {
        v.field.clone()
    } else {
        format!("text {}", v.text.join(", "))
    };
    let skipped = if v.skipped > 0 {
        format!(", {} skipped", v.skipped)
    } else {
        String::new()
    };
    format!(
        "added view {} on {}: {} entries indexed{skipped}",
        v.name, on, v.entries
    )
}

/// `s` with control characters (newlines, escapes) as spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A hit of a search.
pub fn search_hit_line(hit: &SearchHit) -> String {
    format!(
        "{:>7.3}  {}  {} #{:<6} {}: {}",
        hit.score,
        fmt_time(hit.timestamp),
        short(&hit.feed),
        hit.seq,
        hit.field,
        one_line(&hit.snippet)
    )
}

/// A hit of a field index query.
pub fn field_hit_line(hit: &FieldHit) -> String {
    format!(
        "{}  {}  {} #{:<6} {}",
        hit.value,
        fmt_time(hit.timestamp),
        short(&hit.feed),
        hit.seq,
        payload_text(&hit.payload, hit.payload_format)
    )
}
