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

/// Lower-case hex of bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Add a payload to a JSON object as two fields: `payload_format` is
/// `json` (then `payload` is the value), `text` (a string that is not
/// JSON), `binary` (`payload` is hex) or `absent` (not held; `null`).
pub fn with_payload(mut v: Value, payload: Option<&[u8]>) -> Value {
    let (format, value) = match payload {
        None => ("absent", Value::Null),
        Some(p) => match serde_json::from_slice::<Value>(p) {
            Ok(j) => ("json", j),
            Err(_) => match std::str::from_utf8(p) {
                Ok(s) => ("text", Value::String(s.to_string())),
                Err(_) => ("binary", Value::String(hex(p))),
            },
        },
    };
    if let Some(map) = v.as_object_mut() {
        map.insert("payload".into(), value);
        map.insert("payload_format".into(), json!(format));
    }
    v
}

/// A payload for humans, from an object [`with_payload`] made: compact
/// JSON, or quoted text, or a note.
pub fn payload_text(v: &Value) -> String {
    match v["payload_format"].as_str() {
        Some("json") => v["payload"].to_string(),
        Some("text") => format!("{:?}", v["payload"].as_str().unwrap_or_default()),
        Some("binary") => format!(
            "({} bytes of binary)",
            v["payload"].as_str().map_or(0, |s| s.len() / 2)
        ),
        _ => "(payload not held)".to_string(),
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
    });
    if let (Some(o), Some(map)) = (offset, v.as_object_mut()) {
        map.insert("offset".into(), json!(o));
    }
    with_payload(v, e.payload.as_deref())
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
            "ids": [p.a().header.id().to_string(), p.b().header.id().to_string()],
        }),
    }
}

/// The first 8 hex digits of an id in a JSON field, for log lines.
pub fn short(v: &Value) -> String {
    v.as_str().unwrap_or_default().chars().take(8).collect()
}

/// A u64 field of a JSON object (0 when absent).
pub fn num(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_default()
}

/// A log record (from [`record_json`]) as one human line.
pub fn record_text(v: &Value) -> String {
    if v["kind"] == "fork" {
        return format!(
            "{:>10}  {}  #{:<6} fork proof: two entries at this seq",
            num(v, "offset"),
            short(&v["feed"]),
            num(v, "seq")
        );
    }
    format!(
        "{:>10}  {}  #{:<6} {}  {}",
        num(v, "offset"),
        short(&v["feed"]),
        num(v, "seq"),
        fmt_time(num(v, "timestamp")),
        payload_text(v)
    )
}

/// A timeline item as one human line. Log records render the same way.
pub fn timeline_text(v: &Value) -> String {
    format!(
        "{}  {} #{:<6} {}",
        fmt_time(num(v, "timestamp")),
        short(&v["feed"]),
        num(v, "seq"),
        payload_text(v)
    )
}

/// A log record (from [`record_json`]) as a timeline item.
pub fn record_as_timeline(v: &Value) -> Value {
    let kind = if v["payload_format"] == "json" {
        v["payload"]["type"].as_str().map(str::to_string)
    } else {
        None
    };
    json!({
        "timestamp": v["timestamp"], "feed": v["feed"], "seq": v["seq"], "id": v["id"],
        "type": kind, "payload": v["payload"], "payload_format": v["payload_format"],
    })
}
