//! Driving the example binaries from tests: spawn, read stdout line by
//! line with generous deadlines, write stdin, stop.
#![allow(dead_code)] // each test file uses part of this

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long to wait for any expected output. Only a bound for a broken
/// program, never an assertion on speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Run a binary to completion; panics unless it succeeds. Returns stdout.
pub fn ok(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Run a binary to completion; panics if it succeeds. Returns stderr.
pub fn fails(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(!out.status.success(), "{bin} {args:?} succeeded");
    String::from_utf8(out.stderr).expect("utf-8 output")
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// A running example program. Killed when dropped (a failing test leaves
/// nothing behind).
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Start `bin` with `args`, stdin and stdout piped.
    pub fn spawn(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn context(&self) -> String {
        format!(
            "stdout so far:\n{}\nstderr so far:\n{}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Read stdout until a line matches `pred`; returns it. Panics (with
    /// the output so far) if the program ends or the deadline passes.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {what} within {DEADLINE:?}; {}", self.context())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the program ended before printing {what}; {}",
                        self.context()
                    )
                }
            }
        }
    }

    /// Read stdout until a line starts with `prefix`; returns the rest of
    /// that line.
    pub fn wait_for_prefix(&mut self, prefix: &str) -> String {
        let line = self.wait_for(&format!("starting with {prefix:?}"), |l| {
            l.starts_with(prefix)
        });
        line[prefix.len()..].trim().to_string()
    }

    /// Write one line to stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Close stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Send SIGTERM.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Wait for the program to exit (up to the deadline), reading the rest
    /// of its stdout into `seen`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Its stdout is closed: the reader thread ends soon.
                while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the program did not exit within {DEADLINE:?}; {}",
                    self.context()
                );
            }
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        }
    }

    /// Wait for a successful exit; panics with the output otherwise.
    pub fn wait_success(&mut self) {
        let status = self.wait_exit();
        assert!(
            status.success(),
            "exit status {status:?}; {}",
            self.context()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path as a `&str` (tests use UTF-8 temp paths).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
