//! The local node API: HTTP/JSON on loopback, served by `kappa serve`.
//!
//! Every request needs the bearer token the node writes to `api.token`
//! (mode 0600) in the database directory at start; the node's address is
//! in `api.json` beside it, which is how the CLI finds a running node.
//! Each endpoint runs the same [`Local`] operation the CLI runs on an open
//! database, so answers have one shape whichever way they are asked.
//! The README lists the endpoints.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use kappadb_core::FeedId;
use kappadb_net::{NodeHandle, Subscription};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ops::{
    AppendBody, Backend, FieldParams, KvListParams, KvWrite, Local, LogParams, OpError, OpResult,
    RangeParams, TimelineParams, ViewAddBody, peers_json, record_author,
};
use crate::out::{self, note};

/// The API's default port (the node's libp2p port is 4747).
pub const DEFAULT_API_PORT: u16 = 4740;
/// File with the API's address.
pub const ADDR_FILE: &str = "api.json";
/// File with the bearer token (mode 0600).
pub const TOKEN_FILE: &str = "api.token";
/// Events buffered per stream before the reader waits.
const EVENT_BATCH: usize = 256;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What `api.json` and `api.token` say.
pub struct ApiFile {
    /// host:port of the API.
    pub addr: String,
    /// The bearer token.
    pub token: String,
}

#[derive(Serialize, Deserialize)]
struct AddrFile {
    addr: String,
    pid: u32,
}

impl ApiFile {
    /// Read the files a running node wrote in `dir`; `None` if there are
    /// none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let addr_path = dir.join(ADDR_FILE);
        let token_path = dir.join(TOKEN_FILE);
        let (Ok(addr), Ok(token)) = (
            std::fs::read_to_string(&addr_path),
            std::fs::read_to_string(&token_path),
        ) else {
            return Ok(None);
        };
        let file: AddrFile = serde_json::from_str(&addr).with_context(|| {
            format!(
                "{} is damaged; restart `kappa serve` to rewrite it",
                addr_path.display()
            )
        })?;
        Ok(Some(Self {
            addr: file.addr,
            token: token.trim().to_string(),
        }))
    }
}

/// Parameters of the event stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventParams {
    /// Start at the first record at or after this offset [default: the
    /// log's end, i.e. only new records]. A `Last-Event-ID` header wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only records of this feed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
}

struct AppState {
    local: Arc<Local>,
    node: Option<Arc<NodeHandle>>,
    token: String,
    stop: watch::Receiver<bool>,
}

type St = State<Arc<AppState>>;

/// A running API server.
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    dir: PathBuf,
}

impl ApiServer {
    /// Stop: end the event streams, finish requests in flight, remove the
    /// address and token files.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = std::fs::remove_file(self.dir.join(ADDR_FILE));
        let _ = std::fs::remove_file(self.dir.join(TOKEN_FILE));
    }
}

/// Write `bytes` to `path` through a temporary file, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Start the API for a serving node. `requested` is `--api`; without it the
/// default loopback port is tried, then any free loopback port.
pub async fn start(
    local: Arc<Local>,
    node: Option<Arc<NodeHandle>>,
    requested: Option<SocketAddr>,
) -> anyhow::Result<ApiServer> {
    let listener = match requested {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve the API on {addr}"))?,
        None => {
            let default = SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT));
            match tokio::net::TcpListener::bind(default).await {
                Ok(l) => l,
                Err(e) => {
                    note(format!(
                        "the API's default address {default} is taken ({e}); using another port"
                    ));
                    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                        .await
                        .context("cannot serve the API on loopback")?
                }
            }
        }
    };
    let addr = listener
        .local_addr()
        .context("cannot read the API's address")?;
    if !addr.ip().is_loopback() {
        note(format!(
            "warning: the API listens on {addr}, which other machines can reach; anyone with the token can read and write this database"
        ));
    }
    let db = local.db().clone();
    let dir = db.dir().to_path_buf();
    let token = new_token()?;
    write_private(&dir.join(TOKEN_FILE), token.as_bytes())?;
    let file = AddrFile {
        addr: addr.to_string(),
        pid: std::process::id(),
    };
    write_private(&dir.join(ADDR_FILE), &serde_json::to_vec(&file)?)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        local: local.clone(),
        node,
        token,
        stop: stop_rx.clone(),
    });
    let app = router(state);
    let mut stop_wait = stop_rx;
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_wait.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            note(format!("the API stopped: {e}"));
        }
    });
    Ok(ApiServer {
        addr,
        stop: stop_tx,
        task,
        dir,
    })
}

fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/node", get(node_info))
        .route("/append", post(append))
        .route("/log", get(log))
        .route("/feeds", get(feeds))
        .route("/feeds/{feed}", get(feed_range))
        .route("/feeds/{feed}/{seq}", get(entry))
        .route("/peers", get(peers))
        .route("/views", get(views).post(view_add))
        .route("/views/{name}", delete(view_remove))
        .route("/views/{name}/digest", get(view_digest))
        .route("/views/{name}/query", get(field_query))
        .route("/views/{name}/rebuild", post(view_rebuild))
        .route("/timeline", get(timeline))
        .route("/kv/get", get(kv_get))
        .route("/kv/heads", get(kv_heads))
        .route("/kv/list", get(kv_list))
        .route("/kv/put", post(kv_put))
        .route("/kv/del", post(kv_del))
        .route("/events", get(events));
    Router::new()
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Constant-time comparison of the presented token.
fn token_ok(presented: &[u8], token: &[u8]) -> bool {
    presented.len() == token.len()
        && presented
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn auth(State(st): St, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if token_ok(t.as_bytes(), st.token.as_bytes()) => next.run(req).await,
        _ => {
            let err = OpError::new(
                401,
                "unauthorized",
                "missing or wrong bearer token (it is in api.token in the database directory)",
            );
            let mut res = reply::<Value>(Err(err));
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            res
        }
    }
}

async fn not_found() -> Response {
    reply::<Value>(Err(OpError::not_found(
        "no_such_endpoint",
        "no such endpoint; see the API reference in the README",
    )))
}

async fn method_not_allowed() -> Response {
    reply::<Value>(Err(OpError::new(
        405,
        "method_not_allowed",
        "this endpoint does not take that method",
    )))
}

fn reply<T: Serialize>(r: OpResult<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(e.body()),
        )
            .into_response(),
    }
}

/// Run a database operation off the async threads.
async fn blocking<T, F>(st: &AppState, f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Local) -> OpResult<T> + Send + 'static,
{
    let local = st.local.clone();
    match tokio::task::spawn_blocking(move || f(&local)).await {
        Ok(r) => reply(r),
        Err(e) => reply::<Value>(Err(OpError::new(
            500,
            "internal",
            format!("the request failed: {e}"),
        ))),
    }
}

fn query<T: DeserializeOwned + Default>(raw: Option<String>) -> OpResult<T> {
    match raw {
        None => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(&q)
            .map_err(|e| OpError::bad("bad_query", format!("bad query string: {e}"))),
    }
}

fn body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> OpResult<T> {
    let bytes = bytes.map_err(|e| {
        OpError::new(
            e.status().as_u16(),
            "bad_body",
            format!("cannot read the request body: {e}"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        OpError::bad(
            "bad_json",
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    })
}

/// Early return of a bad request.
macro_rules! try_op {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return reply::<Value>(Err(e)),
        }
    };
}

async fn status(State(st): St) -> Response {
    blocking(&st, |l| l.status()).await
}

fn no_node() -> OpError {
    OpError::not_found(
        "no_node",
        "this process serves the API without a node (`kappa log --follow`); `kappa serve` runs one",
    )
}

async fn node_info(State(st): St) -> Response {
    let Some(node) = &st.node else {
        return reply::<Value>(Err(no_node()));
    };
    reply::<Value>(Ok(json!({
        "peer_id": node.peer_id().to_string(),
        "feed": node.feed_id().to_string(),
        "listen": node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "connected": node.connected_peers().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })))
}

async fn append(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: AppendBody = try_op!(body(b));
    blocking(&st, move |l| l.append(b)).await
}

async fn log(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: LogParams = try_op!(query(q));
    blocking(&st, move |l| l.log(&p)).await
}

async fn feeds(State(st): St) -> Response {
    blocking(&st, |l| l.feeds()).await
}

async fn feed_range(
    State(st): St,
    UrlPath(feed): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let p: RangeParams = try_op!(query(q));
    blocking(&st, move |l| l.feed_range(&feed, &p)).await
}

async fn entry(State(st): St, UrlPath((feed, seq)): UrlPath<(String, String)>) -> Response {
    let seq: u64 = try_op!(seq.parse().map_err(|_| OpError::bad(
        "bad_seq",
        format!("'{seq}' is not a seq (a whole number from 1)")
    )));
    blocking(&st, move |l| l.get(&feed, seq)).await
}

async fn peers(State(st): St) -> Response {
    let Some(node) = st.node.clone() else {
        return blocking(&st, |l| l.peers()).await;
    };
    match node.known_peers().await {
        Ok(p) => reply::<Value>(Ok(peers_json(&p))),
        Err(e) => reply::<Value>(Err(OpError::new(503, "node_stopped", e.to_string()))),
    }
}

async fn views(State(st): St) -> Response {
    blocking(&st, |l| l.views()).await
}

async fn view_add(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: ViewAddBody = try_op!(body(b));
    blocking(&st, move |l| l.view_add(b)).await
}

async fn view_remove(State(st): St, UrlPath(name): UrlPath<String>) -> Response {
    blocking(&st, move |l| l.view_remove(&name)).await
}

async fn view_digest(State(st): St, UrlPath(name): UrlPath<String>) -> Response {
    blocking(&st, move |l| l.view_digest(&name)).await
}

async fn view_rebuild(State(st): St, UrlPath(name): UrlPath<String>) -> Response {
    blocking(&st, move |l| l.view_rebuild(&name, &mut |_, _| {})).await
}

async fn field_query(
    State(st): St,
    UrlPath(name): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let p: FieldParams = try_op!(query(q));
    blocking(&st, move |l| l.field_query(&name, &p)).await
}

async fn timeline(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: TimelineParams = try_op!(query(q));
    blocking(&st, move |l| l.timeline(&p)).await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyParam {
    key: Option<String>,
}

fn key_of(q: Option<String>) -> OpResult<String> {
    query::<KeyParam>(q)?
        .key
        .ok_or_else(|| OpError::bad("bad_query", "give the key: ?key=KEY"))
}

async fn kv_get(State(st): St, RawQuery(q): RawQuery) -> Response {
    let key = try_op!(key_of(q));
    blocking(&st, move |l| l.kv_get(&key)).await
}

async fn kv_heads(State(st): St, RawQuery(q): RawQuery) -> Response {
    let key = try_op!(key_of(q));
    blocking(&st, move |l| l.kv_heads(&key)).await
}

async fn kv_list(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: KvListParams = try_op!(query(q));
    blocking(&st, move |l| l.kv_list(&p)).await
}

async fn kv_put(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let w: KvWrite = try_op!(body(b));
    if w.value.is_none() {
        return reply::<Value>(Err(OpError::bad(
            "bad_request",
            "a put needs a \"value\" (use /v1/kv/del to delete)",
        )));
    }
    blocking(&st, move |l| l.kv_write(w)).await
}

async fn kv_del(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let w: KvWrite = try_op!(body(b));
    if w.value.is_some() {
        return reply::<Value>(Err(OpError::bad(
            "bad_request",
            "a delete takes no \"value\"",
        )));
    }
    blocking(&st, move |l| l.kv_write(w)).await
}

/// Server-sent events: every log record from `since` on, as it lands.
/// Each event's id is the record's offset, so a client that reconnects
/// with `Last-Event-ID` resumes right after the last record it saw.
async fn events(State(st): St, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let p: EventParams = try_op!(query(q));
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                OpError::bad(
                    "bad_last_event_id",
                    "Last-Event-ID must be an offset from an earlier event",
                )
            })
        })
        .transpose();
    let last_id = try_op!(last_id);
    let db = st.local.db().clone();
    let since = match (last_id, p.since) {
        (Some(last), _) => last.saturating_add(1),
        (None, Some(s)) => s,
        (None, None) => db.log_end(),
    };
    let feed = match p.feed {
        Some(f) => Some(try_op!(st.local.resolve_feed(&f))),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Event>(EVENT_BATCH);
    tokio::spawn(stream_records(st.clone(), since, feed, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn stream_records(
    st: Arc<AppState>,
    since: u64,
    feed: Option<FeedId>,
    tx: mpsc::Sender<Event>,
) {
    let mut records = Subscription::new(st.local.db().clone(), since);
    let mut stop = st.stop.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let rec = tokio::select! {
            r = records.next() => r,
            _ = stop.changed() => return,
            _ = tx.closed() => return,
        };
        let ev = match rec {
            Some(Ok(rec)) if feed.is_some_and(|f| f != record_author(&rec.body)) => continue,
            Some(Ok(rec)) => Event::default()
                .id(rec.offset.to_string())
                .event("record")
                .data(out::record_json(&rec).to_string()),
            Some(Err(e)) => {
                // The stream ends after a read error, like the tail does.
                let ev = Event::default()
                    .event("error")
                    .data(OpError::from(e).body().to_string());
                let _ = tx.send(ev).await;
                return;
            }
            None => return,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// A process that follows the log without a node serves the API meanwhile,
/// so other `kappa` commands can still write to the database it holds.
pub struct FollowHost {
    rt: tokio::runtime::Runtime,
    server: Option<ApiServer>,
}

impl FollowHost {
    /// Serve `local` on a free loopback port; Ctrl-C interrupts `local`'s
    /// follow.
    pub fn start(local: &Local) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let shared = Arc::new(local.clone());
        let server = rt.block_on(start(
            shared,
            None,
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ))?;
        let on_stop = local.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_stop.interrupt();
            }
        });
        Ok(Self {
            rt,
            server: Some(server),
        })
    }
}

impl Drop for FollowHost {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.stop());
        }
    }
}
