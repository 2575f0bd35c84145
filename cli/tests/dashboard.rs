//! The dashboard in real browsers: headless Chromium (chromedriver) and
//! headless Firefox (geckodriver), each driven over WebDriver with a plain
//! HTTP client, through the same scenario. Two nodes; the dashboard of one
//! shows the other connected, an entry appended on the other appears in
//! its live tail, a view rebuilt from the page reaches done, the panels
//! stack on a phone-sized window, and a feed blocked from the page is
//! blocked. Screenshots are saved under the target directory
//! (`target/ci-artifacts/dashboard.png`, `dashboard-firefox.png`, and the
//! phone-sized `-phone` ones).
//!
//! Needs Debian's `chromium` and `chromium-driver`, and `firefox-esr` with
//! geckodriver (not packaged in Debian: `cargo install geckodriver`; found
//! on the PATH or at `KAPPADB_GECKODRIVER`). Without them a test says so
//! and passes, unless `KAPPADB_REQUIRE_TOOLS=1` (set by `.ci/run`, which
//! installs them), which makes them a must.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ok, serve, serve_with};
use serde_json::{Value, json};

/// A chromedriver child, killed when dropped.
struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = self
                .agent
                .delete(format!("{}/session/{s}", self.base))
                .call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The browsers the scenario runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Browser {
    Chromium,
    Firefox,
}

/// A missing tool: a failure under `KAPPADB_REQUIRE_TOOLS=1`, else a skip.
fn missing(why: &str) -> Option<Driver> {
    if std::env::var("KAPPADB_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{why}");
    }
    eprintln!("skipping the browser test: {why}");
    None
}

impl Driver {
    /// Start the browser's WebDriver server and a headless session, or
    /// `None` if they are not installed (and not required).
    fn start(browser: Browser) -> Option<Self> {
        let (binary, driver) = match browser {
            Browser::Chromium => {
                let (Some(chromium), Some(driver)) = (
                    find(&["chromium", "chromium-browser"]),
                    find(&["chromedriver"]),
                ) else {
                    return missing(
                        "chromium and chromedriver are not installed (Debian: chromium chromium-driver)",
                    );
                };
                (chromium, driver)
            }
            Browser::Firefox => {
                let driver = std::env::var_os("KAPPADB_GECKODRIVER")
                    .map(PathBuf::from)
                    .filter(|p| p.is_file())
                    .or_else(|| find(&["geckodriver"]));
                let (Some(firefox), Some(driver)) = (find(&["firefox-esr", "firefox"]), driver)
                else {
                    return missing(
                        "firefox and geckodriver are not installed (Debian: firefox-esr; cargo install geckodriver)",
                    );
                };
                (firefox, driver)
            }
        };
        let port = free_port();
        let mut cmd = Command::new(driver);
        match browser {
            Browser::Chromium => cmd.arg(format!("--port={port}")),
            Browser::Firefox => cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let profile = tempfile::tempdir().unwrap();
        let mut d = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent,
            session: None,
            profile,
        };
        common::eventually("the WebDriver server to answer", || {
            d.agent
                .get(format!("{}/status", d.base))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        let caps = match browser {
            Browser::Chromium => {
                let args = [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,1600",
                    &format!("--user-data-dir={}", d.profile.path().display()),
                ];
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": binary.display().to_string(), "args": args},
                }}})
            }
            // geckodriver makes a fresh profile of its own.
            Browser::Firefox => json!({"capabilities": {"alwaysMatch": {
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": binary.display().to_string(),
                    "args": ["-headless", "--width=1280", "--height=1600"],
                    "prefs": {
                        "app.update.enabled": false,
                        "browser.shell.checkDefaultBrowser": false,
                        "datareporting.policy.dataSubmissionEnabled": false,
                        "network.captive-portal-service.enabled": false,
                    },
                },
            }}}),
        };
        let v = d.post("/session", &caps);
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        d.session = Some(id);
        let v = d.post(
            &d.session_path("/window/rect"),
            &json!({"width": 1280, "height": 1600}),
        );
        assert!(v["value"].is_object(), "window size: {v}");
        Some(d)
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let res = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        serde_json::from_str(&res.into_body().read_to_string().unwrap()).unwrap()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap())
    }

    fn open(&self, url: &str) {
        let v = self.post(&self.session_path("/url"), &json!({ "url": url }));
        assert!(v["value"].is_null(), "navigate: {v}");
    }

    /// Run `script` in the page; what it returns.
    fn run(&self, script: &str) -> Value {
        let v = self.post(
            &self.session_path("/execute/sync"),
            &json!({"script": script, "args": []}),
        );
        v["value"].clone()
    }

    /// Poll `script` until it returns something truthy (30 s at most).
    fn wait_for(&self, what: &str, script: &str) -> Value {
        common::eventually(what, || {
            let v = self.run(script);
            match &v {
                Value::Null | Value::Bool(false) => None,
                Value::String(s) if s.is_empty() => None,
                _ => Some(v),
            }
        })
    }

    fn click(&self, css: &str) {
        let v = self.post(
            &self.session_path("/element"),
            &json!({"using": "css selector", "value": css}),
        );
        let id = v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string();
        let v = self.post(
            &self.session_path(&format!("/element/{id}/click")),
            &json!({}),
        );
        assert!(v["value"].is_null(), "click {css}: {v}");
    }

    fn screenshot(&self) -> Vec<u8> {
        let res = self
            .agent
            .get(format!("{}{}", self.base, self.session_path("/screenshot")))
            .call()
            .unwrap();
        let v: Value = serde_json::from_str(&res.into_body().read_to_string().unwrap()).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap()
    }
}

/// Where CI artifacts go: `target/ci-artifacts` (or under
/// `CARGO_TARGET_DIR`).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn peer_id_of(node: &common::Node) -> String {
    common::eventually("the peer id line", || {
        node.stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix("peer id ").map(|s| s.trim().to_string()))
    })
}

#[test]
fn the_dashboard_shows_peers_the_live_tail_and_a_rebuild() {
    scenario(Browser::Chromium);
}

#[test]
fn the_dashboard_works_in_firefox_too() {
    scenario(Browser::Firefox);
}

fn scenario(kind: Browser) {
    let Some(browser) = Driver::start(kind) else {
        return;
    };
    let shot = |name: &str| {
        let suffix = if kind == Browser::Firefox {
            "-firefox"
        } else {
            ""
        };
        artifacts().join(format!("{name}{suffix}.png"))
    };
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    ok(&a, &["init"]);
    let invite = ok(&a, &["invite"]);
    ok(&b, &["init", "--join", invite.trim()]);
    ok(
        &a,
        &["append", r#"{"type":"note","text":"before the page"}"#],
    );
    let node_a = serve(&a);
    let node_b = serve_with(&b, &["--api", "127.0.0.1:0", "--peer", &node_a.addr]);
    let b_peer = peer_id_of(&node_b);

    let link = ok(&a, &["--json", "ui", "--no-open"]);
    let link: Value = serde_json::from_str(&link).unwrap();
    browser.open(link["url"].as_str().unwrap());
    browser.wait_for(
        "the page to log in and show the node",
        "return document.getElementById('conn').textContent === 'live'",
    );

    // The other peer, connected.
    let row = browser.wait_for(
        "the peer to show as connected",
        &format!(
            "const r = document.querySelector('tr[data-peer=\"{b_peer}\"]'); \
             return r && r.querySelector('.pill.on') ? r.innerText : null"
        ),
    );
    assert!(row.as_str().unwrap().contains("connected"), "{row}");

    // An entry appended on the other node appears in the live tail.
    let marker = format!("from-b-{}", std::process::id());
    let appended = Instant::now();
    ok(
        &b,
        &["append", &format!(r#"{{"type":"note","text":"{marker}"}}"#)],
    );
    browser.wait_for(
        "the entry in the live tail",
        &format!("return document.getElementById('tail').innerText.includes('{marker}')"),
    );
    eprintln!(
        "the entry appended on the peer was in the live tail after {} ms",
        appended.elapsed().as_millis()
    );
    // Rendered as JSON.
    let item = browser.run(&format!(
        "return [...document.querySelectorAll('#tail li')].find(li => li.innerText.includes('{marker}')).innerText"
    ));
    assert!(
        item.as_str().unwrap().contains("\"type\": \"note\""),
        "{item}"
    );

    // Rebuild a view from the page; its progress reaches done.
    browser.wait_for(
        "the views panel",
        "return document.querySelector('button[data-rebuild=\"timeline\"]') !== null",
    );
    browser.click("button[data-rebuild=\"timeline\"]");
    let done = browser.wait_for(
        "the rebuild to be done",
        "const p = document.querySelector('[data-progress=\"timeline\"]'); \
         return p && p.innerText.includes('done') ? p.innerText : null",
    );
    assert!(done.as_str().unwrap().contains("done"));
    let msg = browser.run("return document.getElementById('view-msg').innerText");
    assert!(msg.as_str().unwrap().contains("rebuilt timeline"), "{msg}");

    // Let a state event render the chart and counts, then keep a picture.
    std::thread::sleep(Duration::from_millis(1500));
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = shot("dashboard");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // On a phone-sized screen the panels stack in one column.
    let v = browser.post(
        &browser.session_path("/window/rect"),
        &json!({"width": 390, "height": 1400}),
    );
    assert!(v["value"].is_object(), "resize: {v}");
    let columns = browser.wait_for(
        "the panels in one column",
        "const xs = [...document.querySelectorAll('.panel')].map(p => p.getBoundingClientRect().left); \
         return new Set(xs).size === 1 ? xs.length : null",
    );
    assert!(columns.as_u64().unwrap() >= 6, "{columns}");
    let path = shot("dashboard-phone");
    std::fs::write(&path, browser.screenshot()).unwrap();

    // Block the other node's feed from the page (an admin endpoint, with
    // the session cookie): the feed shows as blocked.
    let b_feed = ok(&b, &["id"]).trim().to_string();
    browser.click(&format!("button[data-block=\"{b_feed}\"]"));
    browser.wait_for(
        "the feed to show as blocked",
        &format!(
            "const r = document.querySelector('tr[data-feed=\"{b_feed}\"]'); \
             return r && r.querySelector('.pill.warn') ? r.innerText : null"
        ),
    );
    let blocked = std::fs::read_to_string(a.join("blocked.json")).unwrap();
    assert!(blocked.contains(&b_feed), "{blocked}");

    drop(browser);
    assert!(node_b.stop(), "b stops cleanly");
    assert!(node_a.stop(), "a stops cleanly");
}
