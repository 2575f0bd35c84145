//! Helpers shared by the CLI's end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn kappa(dir: &Path, args: &[&str]) -> Output {
    kappa_stdin(dir, args, None)
}

pub fn kappa_stdin(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("KAPPA_DIR")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kappa");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = kappa(dir, args);
    assert!(
        out.status.success(),
        "kappa {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn fails(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kappa_stdin(dir, args, stdin);
    assert!(!out.status.success(), "kappa {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// A `kappa serve` child, killed when dropped.
pub struct Node {
    pub child: Child,
    /// The full multiaddr it listens on.
    pub addr: String,
    /// What it printed on stderr so far, line by line.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The thread that reads its stderr (until it exits).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Stop with SIGTERM and wait; true if it exited cleanly.
    pub fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Stop with SIGTERM; its exit status if it exits within `deadline`
    /// (it is killed when dropped otherwise).
    pub fn stop_within(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its stderr so far, as one string.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// Start `kappa serve` on an ephemeral loopback port with `extra` options;
/// returns once it printed its address (and its API's, unless --no-api).
pub fn serve_with(dir: &Path, extra: &[&str]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(extra)
        .env_remove("KAPPA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let want_api = !extra.contains(&"--no-api");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let log = lines.clone();
    let reader = std::thread::spawn(move || {
        let mut addr = None;
        let mut api = !want_api;
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push(line.clone());
            if let Some(a) = line.strip_prefix("listening on ") {
                addr.get_or_insert(a.trim().to_string());
            }
            if line.starts_with("API on ") {
                api = true;
            }
            if !sent
                && api
                && let Some(a) = &addr
            {
                let _ = tx.send(a.clone());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve printed its address");
    Node {
        child,
        addr,
        stderr: lines,
        reader: Some(reader),
    }
}

/// [`serve_with`] with the API on a free loopback port.
pub fn serve(dir: &Path) -> Node {
    serve_with(dir, &["--api", "127.0.0.1:0"])
}

/// Poll `f` until it returns Some, for up to 30 s.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The running node's API address (`host:port`) and bearer token, from
/// `api.json` and `api.token` in its database directory.
pub fn api_endpoint(dir: &Path) -> (String, String) {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("api.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string();
    (file["addr"].as_str().unwrap().to_string(), token)
}

/// A small client of a running node's API, for the load and search
/// tests (answers as `(status, JSON)`).
#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`.
    pub base: String,
    /// The bearer token.
    pub token: String,
    /// The HTTP agent (statuses are not errors; 60 s timeout).
    pub agent: ureq::Agent,
}

impl ApiClient {
    /// The API of the node running on `dir`.
    pub fn of(dir: &Path) -> Self {
        let (addr, token) = api_endpoint(dir);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self {
            base: format!("http://{addr}"),
            token,
            agent,
        }
    }

    /// GET `path`: the status and the JSON answer.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        let status = res.status().as_u16();
        let text = res.into_body().read_to_string().unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        (status, v)
    }

    /// GET `path`, which must answer 200.
    pub fn get_ok(&self, path: &str) -> serde_json::Value {
        let (status, v) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Append one payload: the acknowledged (seq, id), or None if the
    /// request failed (the node died).
    pub fn append(&self, payload: &serde_json::Value) -> Option<(u64, String)> {
        let body = serde_json::json!({ "payload": payload }).to_string();
        let res = self
            .agent
            .post(format!("{}/v1/append", self.base))
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .ok()?;
        if res.status() != 200 {
            return None;
        }
        let v: serde_json::Value =
            serde_json::from_str(&res.into_body().read_to_string().ok()?).ok()?;
        let a = &v["appended"][0];
        Some((a["seq"].as_u64()?, a["id"].as_str()?.to_string()))
    }
}

impl ApiClient {
    /// POST a JSON body to `path`: the status and the JSON answer.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let res = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        let status = res.status().as_u16();
        let text = res.into_body().read_to_string().unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        (status, v)
    }
}
