//! Output: human text or JSON, progress bars, and clean exits on a closed
//! pipe. Only the CLI prints.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use kappadb_core::{Entry, LogRecord, RecordBody};
use serde_json::{Value, json};

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

    /// Print a JSON value on one line.
    pub fn json_line(&mut self, value: &Value) -> anyhow::Result<()> {
        self.line(value.to_string())
    }

    /// Flush stdout (for streaming output).
    #[allow(dead_code)]
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
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A payload as JSON when it parses, otherwise as a string (lossy UTF-8).
pub fn payload_json(payload: Option<&[u8]>) -> Value {
    match payload {
        None => Value::Null,
        Some(p) => serde_json::from_slice(p)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(p).into_owned())),
    }
}

/// A payload for humans: compact JSON, or text, or a note.
pub fn payload_text(payload: Option<&[u8]>) -> String {
    match payload {
        None => "(payload not held)".to_string(),
        Some(p) => match serde_json::from_slice::<Value>(p) {
            Ok(v) => v.to_string(),
            Err(_) => match std::str::from_utf8(p) {
                Ok(s) => format!("{s:?}"),
                Err(_) => format!("({} bytes of binary)", p.len()),
            },
        },
    }
}

/// An entry as a JSON object.
pub fn entry_json(offset: Option<u64>, e: &Entry) -> Value {
    let h = &e.header;
    let mut v = json!({
        "kind": "entry",
        "feed": h.author.to_string(),
        "seq": h.seq,
        "id": e.id().to_string(),
        "prev": h.prev.map(|p| p.to_string()),
        "timestamp": h.timestamp,
        "payload_len": h.payload_len,
        "payload": payload_json(e.payload.as_deref()),
    });
    if let (Some(o), Some(map)) = (offset, v.as_object_mut()) {
        map.insert("offset".into(), json!(o));
    }
    v
}

/// A log record as a JSON object.
pub fn record_json(rec: &LogRecord) -> Value {
    match &rec.body {
        RecordBody::Entry(e) => entry_json(Some(rec.offset), e),
        RecordBody::Fork(p) => json!({
            "kind": "fork",
            "offset": rec.offset,
            "feed": p.author().to_string(),
            "seq": p.seq(),
            "ids": [p.a.header.id().to_string(), p.b.header.id().to_string()],
        }),
    }
}

/// A log record as one human line.
pub fn record_text(rec: &LogRecord) -> String {
    match &rec.body {
        RecordBody::Entry(e) => format!(
            "{:>10}  {}  #{:<6} {}  {}",
            rec.offset,
            e.header.author.fmt_short(),
            e.header.seq,
            fmt_time(e.header.timestamp),
            payload_text(e.payload.as_deref())
        ),
        RecordBody::Fork(p) => format!(
            "{:>10}  {}  #{:<6} fork proof: two entries at this seq",
            rec.offset,
            p.author().fmt_short(),
            p.seq()
        ),
    }
}
