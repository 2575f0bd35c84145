//! The web dashboard's server side: logins, the figures the node's events
//! give (peers' sync traffic, throughput), and the state the page shows.
//!
//! The page itself (`ui/`: one HTML, one script, one style sheet) is built
//! into the binary and served by [`crate::api`] on the API's address. It
//! asks nothing of its own: its actions are the API's endpoints, its log
//! tail is `/v1/events`, and its panels are the state event stream
//! `/v1/ui/events`, one [`Dash::snapshot`] a second.
//!
//! Logging in: `kappa ui` asks the API (with the bearer token) for a login
//! link, `/login?code=CODE`, good once and for [`LOGIN_TTL`]. Opening it
//! sets a session cookie (HttpOnly, SameSite=Strict), which the API then
//! takes in place of the token; the token itself never travels in a URL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kappadb_net::NodeEvent;
use serde_json::{Value, json};

use crate::answer::{FeedInfo, NodeInfo, OpError, PeerInfo, Status, ViewInfo};
use crate::metrics::{Metrics, PeerLabel};
use crate::ops::{Backend, Local};

/// How long a login link is good for.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// Sessions kept at most (the oldest goes first).
const MAX_SESSIONS: usize = 64;
/// Samples of the throughput chart (one a second).
const RATE_SAMPLES: usize = 300;
/// Window of a peer's sync rate.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The page, its script and its style sheet.
pub const INDEX_HTML: &str = include_str!("ui/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("ui/app.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("ui/style.css");
/// What a browser without a session sees.
pub const LOGIN_HTML: &str = include_str!("ui/login.html");

#[derive(Default)]
struct PeerStat {
    feed: Option<String>,
    connected: bool,
    pulled: u64,
    pulled_bytes: u64,
    served: u64,
    syncing: bool,
    /// Entries received in the sync under way.
    this_sync: u64,
    /// What the peer said it still has, at the last page.
    remaining: u64,
    /// Entries received lately, for the rate.
    recent: VecDeque<(Instant, u64)>,
}

#[derive(Default)]
struct Logins {
    codes: HashMap<String, Instant>,
    sessions: VecDeque<String>,
    live: HashSet<String>,
}

/// The dashboard's state, shared by the API and the node's event loop.
pub struct Dash {
    /// The node's figures (also `/metrics`).
    pub metrics: Arc<Metrics>,
    started: Instant,
    started_ms: u64,
    peers: Mutex<HashMap<String, PeerStat>>,
    forks: Mutex<Vec<Value>>,
    /// `[ms, appends, ingests]` per second, oldest first.
    rates: Mutex<VecDeque<[u64; 3]>>,
    logins: Mutex<Logins>,
    /// Since when each view has been behind the log without a break.
    behind: Mutex<HashMap<String, Instant>>,
}

impl Default for Dash {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::new()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 32 random bytes as hex.
pub fn random_hex() -> Result<String, OpError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| OpError::new(500, "internal", format!("no OS randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Dash {
    /// A dashboard counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            started_ms: now_ms(),
            peers: Mutex::default(),
            forks: Mutex::default(),
            rates: Mutex::default(),
            logins: Mutex::default(),
            behind: Mutex::default(),
        }
    }

    /// A new one-time login code.
    pub fn login_code(&self) -> Result<String, OpError> {
        let code = random_hex()?;
        let mut l = lock(&self.logins);
        l.codes.retain(|_, at| at.elapsed() < LOGIN_TTL);
        l.codes.insert(code.clone(), Instant::now());
        Ok(code)
    }

    /// Trade a login code (once, within [`LOGIN_TTL`]) for a session.
    pub fn redeem(&self, code: &str) -> Result<Option<String>, OpError> {
        let mut l = lock(&self.logins);
        match l.codes.remove(code) {
            Some(at) if at.elapsed() < LOGIN_TTL => {}
            _ => return Ok(None),
        }
        let session = random_hex()?;
        l.sessions.push_back(session.clone());
        l.live.insert(session.clone());
        while l.sessions.len() > MAX_SESSIONS {
            if let Some(old) = l.sessions.pop_front() {
                l.live.remove(&old);
            }
        }
        Ok(Some(session))
    }

    /// Whether `session` is one [`Dash::redeem`] gave.
    pub fn session_ok(&self, session: &str) -> bool {
        lock(&self.logins).live.contains(session)
    }

    /// Count what a node event says.
    pub fn on_event(&self, ev: &NodeEvent) {
        let mut peers = lock(&self.peers);
        match ev {
            NodeEvent::PeerConnected { peer, feed } => {
                let p = peers.entry(peer.to_string()).or_default();
                p.connected = true;
                p.served = 0;
                p.feed = feed.map(|f| f.to_string());
            }
            NodeEvent::PeerDisconnected { peer } => {
                let p = peers.entry(peer.to_string()).or_default();
                p.connected = false;
                p.syncing = false;
            }
            NodeEvent::SyncProgress {
                peer,
                entries,
                bytes,
                remaining,
                ..
            } => {
                let label = PeerLabel {
                    peer: peer.to_string(),
                };
                self.metrics
                    .sync_entries
                    .get_or_create(&label)
                    .inc_by(*entries);
                self.metrics.sync_bytes.get_or_create(&label).inc_by(*bytes);
                let p = peers.entry(peer.to_string()).or_default();
                p.pulled += entries;
                p.pulled_bytes += bytes;
                if !p.syncing {
                    p.this_sync = 0;
                }
                p.this_sync += entries;
                p.remaining = *remaining;
                p.syncing = true;
                p.recent.push_back((Instant::now(), *entries));
                while p
                    .recent
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() > RATE_WINDOW)
                {
                    p.recent.pop_front();
                }
            }
            NodeEvent::SyncIdle { peer, stats } => {
                let label = PeerLabel {
                    peer: peer.to_string(),
                };
                let p = peers.entry(peer.to_string()).or_default();
                // A session's counter only grows (it starts again at 0 with
                // each connection): count what it added.
                let added = stats.served.checked_sub(p.served).unwrap_or(stats.served);
                self.metrics.sync_served.get_or_create(&label).inc_by(added);
                p.served = stats.served;
                p.syncing = false;
            }
            NodeEvent::ForkFound { feed, seq, peer } => {
                self.metrics.forks_found.inc();
                lock(&self.forks).push(json!({
                    "feed": feed.to_string(),
                    "seq": seq,
                    "peer": peer.map(|p| p.to_string()),
                    "at": now_ms(),
                }));
            }
            _ => {}
        }
    }

    /// Take one sample of the throughput chart (call once a second).
    fn sample(&self, last: &mut (u64, u64)) {
        let (a, i) = self.metrics.totals();
        let mut rates = lock(&self.rates);
        rates.push_back([now_ms(), a.saturating_sub(last.0), i.saturating_sub(last.1)]);
        while rates.len() > RATE_SAMPLES {
            rates.pop_front();
        }
        *last = (a, i);
    }

    /// Sample the throughput once a second until `stop` turns true.
    pub async fn run_sampler(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut last = self.metrics.totals();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => self.sample(&mut last),
            }
        }
    }

    /// Everything the page's panels show, now.
    pub fn snapshot(
        &self,
        local: &Local,
        node: Option<&NodeInfo>,
        book: Option<&[PeerInfo]>,
    ) -> Value {
        let status: Option<Status> = local.status().ok();
        let views: Vec<ViewInfo> = local.views().unwrap_or_default();
        let feeds: Vec<FeedInfo> = local.feeds().unwrap_or_default();
        let dir = local.db().dir().to_path_buf();
        let blocked: HashSet<String> = kappadb_net::blocklist::BlockList::load(&dir)
            .map(|b| b.feeds().map(|f| f.to_string()).collect())
            .unwrap_or_default();
        let network = local
            .db()
            .network_key()
            .map(|k| {
                k.public_tag()
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .ok();
        let connected: HashSet<&str> = node
            .map(|n| n.connected.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let stats = lock(&self.peers);
        let mut peers: Vec<Value> = Vec::new();
        let mut seen = HashSet::new();
        for p in book.unwrap_or_default() {
            seen.insert(p.peer.clone());
            peers.push(peer_json(
                &p.peer,
                p.feed.clone(),
                p.addrs.clone(),
                p.last_seen,
                p.last_sync,
                connected.contains(p.peer.as_str()),
                stats.get(&p.peer),
            ));
        }
        for c in &connected {
            if !seen.contains(*c) {
                peers.push(peer_json(c, None, Vec::new(), 0, None, true, stats.get(*c)));
            }
        }
        drop(stats);
        let feeds: Vec<Value> = feeds
            .iter()
            .map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
                v["blocked"] = Value::Bool(blocked.contains(&f.feed));
                if f.forked {
                    v["fork_proof"] = fork_proof(local, &f.feed);
                }
                v
            })
            .collect();
        let views: Vec<Value> = {
            let mut behind = lock(&self.behind);
            behind.retain(|name, _| views.iter().any(|v| v.lag > 0 && &v.name == name));
            views
                .iter()
                .map(|v| {
                    let since = (v.lag > 0)
                        .then(|| *behind.entry(v.name.clone()).or_insert_with(Instant::now));
                    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
                    j["lag_seconds"] = json!(since.map_or(0, |t| t.elapsed().as_secs()));
                    let (records, more) = if v.lag > 0 {
                        records_behind(local.db(), v.checkpoint)
                    } else {
                        (0, false)
                    };
                    j["lag_records"] = json!(records);
                    j["lag_records_more"] = json!(more);
                    j
                })
                .collect()
        };
        let rates: Vec<[u64; 3]> = lock(&self.rates).iter().copied().collect();
        json!({
            "node": {
                "feed": local.db().feed_id().to_string(),
                "peer_id": node.map(|n| n.peer_id.clone()),
                "listen": node.map(|n| n.listen.clone()).unwrap_or_default(),
                "network": network,
                "version": env!("CARGO_PKG_VERSION"),
                "started_ms": self.started_ms,
                "uptime_s": self.started.elapsed().as_secs(),
                "now_ms": now_ms(),
                "running": node.is_some(),
            },
            "status": status,
            "peers": peers,
            "feeds": feeds,
            "forks": *lock(&self.forks),
            "views": views,
            "rates": rates,
        })
    }
}

/// The stored proof of a forked feed (the two conflicting entry ids), as
/// the log's fork record says it; `null` if it cannot be read.
fn fork_proof(local: &Local, feed: &str) -> Value {
    let db = local.db();
    let Ok(id) = feed.parse::<kappadb_core::FeedId>() else {
        return Value::Null;
    };
    let Some(fork) = db.fork(&id) else {
        return Value::Null;
    };
    match db.record_at(fork.proof_offset) {
        Ok(rec) => serde_json::to_value(crate::answer::Record::of(&rec)).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn peer_json(
    peer: &str,
    feed: Option<String>,
    addrs: Vec<String>,
    last_seen: u64,
    last_sync: Option<u64>,
    connected: bool,
    stat: Option<&PeerStat>,
) -> Value {
    let rate = stat.map_or(0.0, |s| {
        let n: u64 = s
            .recent
            .iter()
            .filter(|(at, _)| at.elapsed() <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        n as f64 / RATE_WINDOW.as_secs_f64()
    });
    json!({
        "peer": peer,
        "feed": feed.or_else(|| stat.and_then(|s| s.feed.clone())),
        "addrs": addrs,
        "last_seen": last_seen,
        "last_sync": last_sync,
        "connected": connected,
        "pulled": stat.map_or(0, |s| s.pulled),
        "pulled_bytes": stat.map_or(0, |s| s.pulled_bytes),
        "served": stat.map_or(0, |s| s.served),
        "syncing": connected && stat.is_some_and(|s| s.syncing),
        "sync_done": stat.map_or(0, |s| s.this_sync),
        "sync_left": stat.map_or(0, |s| s.remaining),
        "rate": rate,
    })
}

/// Count the node's events into `dash` until the node stops.
pub async fn track(dash: Arc<Dash>, mut events: tokio::sync::broadcast::Receiver<NodeEvent>) {
    loop {
        match events.recv().await {
            Ok(ev) => {
                let stop = matches!(ev, NodeEvent::Stopped { .. });
                dash.on_event(&ev);
                if stop {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(n, "the dashboard missed node events");
            }
            Err(_) => return,
        }
    }
}

/// Most records counted behind a view's checkpoint for the dashboard
/// (read from the log once a second while a view is behind).
const LAG_RECORDS_COUNTED: usize = 10_000;

/// How many records of the log lie past `checkpoint` (a record boundary):
/// the count, and whether there are more than [`LAG_RECORDS_COUNTED`].
fn records_behind(db: &kappadb_core::Db, checkpoint: u64) -> (u64, bool) {
    let n = db
        .log_iter(checkpoint)
        .take(LAG_RECORDS_COUNTED + 1)
        .count();
    if n > LAG_RECORDS_COUNTED {
        (LAG_RECORDS_COUNTED as u64, true)
    } else {
        (n as u64, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_code_works_once() {
        let dash = Dash::default();
        let code = dash.login_code().unwrap();
        let session = dash.redeem(&code).unwrap().unwrap();
        assert!(dash.session_ok(&session));
        assert_eq!(dash.redeem(&code).unwrap(), None, "used once");
        assert_eq!(dash.redeem("nope").unwrap(), None);
        assert!(!dash.session_ok("nope"));
        assert!(!dash.session_ok(&code));
    }

    #[test]
    fn the_snapshot_has_every_panel() {
        use kappadb_core::{CreateOptions, Db};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
        db.append(br#"{"type":"note"}"#.to_vec()).unwrap();
        let local = Local::new(db.clone(), |db| kappadb_views::Indexer::open(db.clone()));
        let dash = Dash::default();
        let s = dash.snapshot(&local, None, None);
        assert_eq!(s["node"]["feed"], db.feed_id().to_string());
        assert_eq!(s["node"]["running"], false);
        assert_eq!(s["status"]["entries"], 1);
        assert_eq!(s["feeds"][0]["blocked"], false);
        assert_eq!(s["feeds"][0]["seq"], 1);
        let views = s["views"].as_array().unwrap();
        assert!(views.iter().any(|v| v["name"] == "timeline"), "{s}");
        assert!(views.iter().all(|v| v["lag_seconds"].is_u64()), "{s}");
        assert!(views.iter().all(|v| v["lag_records"].is_u64()), "{s}");
        // Records behind a checkpoint are counted from the log.
        assert_eq!(records_behind(local.db(), 0), (1, false));
        assert_eq!(records_behind(local.db(), local.db().log_end()), (0, false));
        assert_eq!(s["peers"], json!([]));
        // A forked feed comes with its proof.
        let key = kappadb_core::SigningKey::from_seed([7; 32]);
        let a = kappadb_core::Entry::sign(&key, None, 1, b"a".to_vec());
        let b = kappadb_core::Entry::sign(&key, None, 2, b"b".to_vec());
        db.ingest(vec![a.clone()]).unwrap();
        assert_eq!(db.ingest(vec![b.clone()]).unwrap().forks.len(), 1);
        let s = dash.snapshot(&local, None, None);
        let forked = s["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["forked"] == true)
            .unwrap_or_else(|| panic!("{s}"));
        let ids = forked["fork_proof"]["ids"].as_array().unwrap();
        let mut want = [a.header.id().to_string(), b.header.id().to_string()];
        let mut got = [
            ids[0].as_str().unwrap().to_string(),
            ids[1].as_str().unwrap().to_string(),
        ];
        want.sort();
        got.sort();
        assert_eq!(got, want);
        // A node's peers: the address book and the connected ones.
        let info = NodeInfo {
            connected: vec!["p2".into()],
            feed: db.feed_id().to_string(),
            listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
            peer_id: "me".into(),
        };
        let book = [PeerInfo {
            addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
            connected: false,
            feed: None,
            last_seen: 1,
            last_sync: None,
            peer: "p1".into(),
        }];
        let s = dash.snapshot(&local, Some(&info), Some(&book));
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "{s}");
        assert_eq!(peers[0]["connected"], false);
        assert_eq!(peers[1]["peer"], "p2");
        assert_eq!(peers[1]["connected"], true);
    }

    #[test]
    fn sync_progress_counts_per_peer_and_says_what_is_left() {
        let dash = Dash::default();
        let peer = kappadb_net::PeerId::random();
        let feed = kappadb_core::SigningKey::from_seed([3; 32]).feed_id();
        dash.on_event(&NodeEvent::PeerConnected { peer, feed: None });
        for _ in 0..3 {
            dash.on_event(&NodeEvent::SyncProgress {
                peer,
                feed,
                entries: 100,
                bytes: 1000,
                remaining: 700,
            });
        }
        let stats = lock(&dash.peers);
        let p = peer_json(
            &peer.to_string(),
            None,
            vec![],
            0,
            None,
            true,
            stats.get(&peer.to_string()),
        );
        assert_eq!(p["pulled"], 300);
        assert_eq!(p["pulled_bytes"], 3000);
        assert_eq!(p["syncing"], true);
        assert_eq!(p["sync_done"], 300);
        assert_eq!(p["sync_left"], 700);
        assert!(p["rate"].as_f64().unwrap() > 0.0);
        drop(stats);
        let text = dash.metrics.encode();
        let label = format!("{{peer=\"{peer}\"}}");
        assert!(
            text.contains(&format!("kappa_sync_received_entries_total{label} 300")),
            "{text}"
        );
        assert!(
            text.contains(&format!("kappa_sync_received_bytes_total{label} 3000")),
            "{text}"
        );
        dash.on_event(&NodeEvent::SyncIdle {
            peer,
            stats: kappadb_net::protocol::SyncStats {
                pulled: 300,
                served: 5,
                feeds: 1,
            },
        });
        let stats = lock(&dash.peers);
        let p = peer_json(
            &peer.to_string(),
            None,
            vec![],
            0,
            None,
            true,
            stats.get(&peer.to_string()),
        );
        assert_eq!(p["syncing"], false);
        assert_eq!(p["served"], 5);
    }

    #[test]
    fn sessions_are_bounded() {
        let dash = Dash::default();
        let first = dash.redeem(&dash.login_code().unwrap()).unwrap().unwrap();
        for _ in 0..MAX_SESSIONS {
            dash.redeem(&dash.login_code().unwrap()).unwrap().unwrap();
        }
        assert!(!dash.session_ok(&first));
    }
}
