//! The local node API: HTTP/JSON on loopback, served by `kappa serve`.
//!
//! Every request needs the bearer token the node writes to `api.token`
//! (mode 0600) in the database directory at start; the node's address is
//! in `api.json` beside it, which is how the CLI finds a running node.
//! Each endpoint runs the same [`Local`] operation the CLI runs on an open
//! database, so answers have one shape whichever way they are asked. The
//! endpoints are mounted from the route table ([`crate::routes`]) the
//! client builds its URLs from; the README lists them.
//!
//! [`run`] serves a bound listener until a shutdown future completes, then
//! stops in order: no new connections, event streams end, requests in
//! flight finish (for at most [`GRACE`]). The node is lent to the handlers
//! through a [`SharedNode`], which `kappa serve` takes back before it shuts
//! the node down, so no connection can keep the node alive.

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
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodFilter, on};
use futures::StreamExt;
use kappadb_net::{NetError, NodeHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, watch};
use tokio::task::JoinHandle;

use crate::answer::{NodeInfo, OpError, OpResult, PeerInfo, Record};
use crate::dash::Dash;
use crate::ops::{Backend, Local};
use crate::out::note;
use crate::params::{
    AppendBody, BackupBody, DeleteBody, EntryParams, EventParams, FieldParams, FollowBody, KeyBody,
    KeyParam, KvListParams, KvWrite, LogParams, LoginParams, PeerAddBody, RangeParams,
    SearchParams, TimelineParams, ViewAddBody,
};
use crate::routes::{self, Method, Route};

/// The API's default port (the node's libp2p port is 4747).
pub const DEFAULT_API_PORT: u16 = 4740;
/// File with the API's address.
pub const ADDR_FILE: &str = "api.json";
/// File with the bearer token (mode 0600).
pub const TOKEN_FILE: &str = "api.token";
/// Largest request body.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long requests in flight may take to finish once the API is told to
/// stop; connections still open then are cut off.
pub const GRACE: Duration = Duration::from_secs(5);

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

/// The node, lent to the API's handlers until `kappa serve` takes it back
/// to shut it down. A connection the API could not close in time still
/// holds this, but no longer the node.
pub struct SharedNode(RwLock<Option<NodeHandle>>);

impl SharedNode {
    /// Lend `node` to the API.
    pub fn new(node: NodeHandle) -> Self {
        Self(RwLock::new(Some(node)))
    }

    /// Take the node back, once no request is using it; from then on the
    /// node endpoints answer that it is stopping.
    pub async fn take(&self) -> Option<NodeHandle> {
        self.0.write().await.take()
    }
}

/// What the API serves.
pub struct Service {
    /// The operations.
    pub local: Arc<Local>,
    /// The node, if this process runs one.
    pub node: Option<Arc<SharedNode>>,
    /// The bearer token every request must present.
    pub token: String,
    /// The dashboard: sessions, figures, metrics.
    pub dash: Arc<Dash>,
}

struct AppState {
    service: Service,
    /// Becomes true when the API stops: ends the event streams.
    stop: watch::Receiver<bool>,
    /// The Host headers requests may carry: loopback names with the
    /// API's port (and the address it is bound to, if it is another).
    hosts: Vec<String>,
    /// The dashboard's session cookie, named by the port (cookies are
    /// per host, not per port, so two nodes on one machine would share
    /// one name).
    cookie: String,
}

/// The Host headers a request to an API on `addr` may carry. Anything
/// else is refused: a page of another site whose name was made to point
/// at loopback (DNS rebinding) sends its own name.
fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    // A Host without a port names the default port, which a loopback
    // name cannot be turned against: allowed too.
    let mut hosts = vec![
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "[::1]".to_string(),
    ];
    if !addr.ip().is_unspecified() {
        let own = addr.to_string();
        if !hosts.contains(&own) {
            hosts.push(own);
        }
    }
    hosts
}

type St = State<Arc<AppState>>;

/// Serve the API on `listener` until `shutdown` completes. Then, in order:
/// accept no more connections, end the event streams, and let the
/// requests in flight finish, for at most [`GRACE`]; connections still
/// open after that are left to the runtime, which ends them when it is
/// dropped.
pub async fn run(
    service: Service,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    let addr = listener.local_addr()?;
    tokio::spawn(service.dash.clone().run_sampler(stop.clone()));
    let state = Arc::new(AppState {
        service,
        stop: stop.clone(),
        hosts: allowed_hosts(addr),
        cookie: format!("kappa_session_{}", addr.port()),
    });
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let mut stopping = stop;
    let out_of_time = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        res = server.into_future() => res,
        () = out_of_time => {
            note(format!(
                "API requests still unfinished {} s after the stop were cut off",
                GRACE.as_secs()
            ));
            Ok(())
        }
    }
}

/// A running API server.
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    dir: PathBuf,
}

impl ApiServer {
    /// Stop (see [`run`]) and remove the address and token files.
    pub async fn stop(self) {
        self.stop.send_replace(true);
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

/// The API's listener: `requested` (`--api`), or else the default loopback
/// port, or else any free loopback port.
async fn bind(requested: Option<SocketAddr>) -> anyhow::Result<TcpListener> {
    if let Some(addr) = requested {
        return TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve the API on {addr}"));
    }
    let default = SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT));
    match TcpListener::bind(default).await {
        Ok(l) => Ok(l),
        Err(e) => {
            note(format!(
                "the API's default address {default} is taken ({e}); using another port"
            ));
            TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("cannot serve the API on loopback")
        }
    }
}

/// Start the API for a serving node: bind (see [`bind`]), write the
/// address and token files, and [`run`] until [`ApiServer::stop`].
pub async fn start(
    local: Arc<Local>,
    node: Option<Arc<SharedNode>>,
    requested: Option<SocketAddr>,
    dash: Arc<Dash>,
) -> anyhow::Result<ApiServer> {
    let listener = bind(requested).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the API's address")?;
    if !addr.ip().is_loopback() {
        note(format!(
            "warning: the API listens on {addr}, which other machines can reach; anyone with the token can read and write this database"
        ));
    }
    let dir = local.db().dir().to_path_buf();
    let token = new_token()?;
    write_private(&dir.join(TOKEN_FILE), token.as_bytes())?;
    let file = AddrFile {
        addr: addr.to_string(),
        pid: std::process::id(),
    };
    write_private(&dir.join(ADDR_FILE), &serde_json::to_vec(&file)?)?;

    let (stop, mut stopped) = watch::channel(false);
    let service = Service {
        local,
        node,
        token,
        dash,
    };
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = run(service, listener, shutdown).await {
            note(format!("the API stopped: {e}"));
        }
    });
    Ok(ApiServer {
        addr,
        stop,
        task,
        dir,
    })
}

fn filter(method: Method) -> MethodFilter {
    match method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// Mounting a handler on a route of the table.
trait Mount {
    fn at<const N: usize, H, T>(self, route: &Route<N>, handler: H) -> Self
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static;
}

impl Mount for Router<Arc<AppState>> {
    fn at<const N: usize, H, T>(self, route: &Route<N>, handler: H) -> Self
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        self.route(route.path, on(filter(route.method), handler))
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .at(&routes::STATUS, admin::status)
        .at(&routes::NODE, node_info)
        .at(&routes::APPEND, append)
        .at(&routes::LOG, log)
        .at(&routes::FEEDS, feeds)
        .at(&routes::FEED_RANGE, feed_range)
        .at(&routes::ENTRY, entry)
        .at(&routes::PEERS, admin::peers)
        .at(&routes::INVITE, admin::invite)
        .at(&routes::BLOCK, admin::block)
        .at(&routes::UNBLOCK, admin::unblock)
        .at(&routes::SYNC, admin::sync)
        .at(&routes::VERIFY, admin::verify)
        .at(&routes::VIEWS, views)
        .at(&routes::VIEW_ADD, view_add)
        .at(&routes::VIEW_REMOVE, view_remove)
        .at(&routes::VIEW_DIGEST, view_digest)
        .at(&routes::FIELD_QUERY, field_query)
        .at(&routes::SEARCH, search)
        .at(&routes::VIEW_REBUILD, view_rebuild)
        .at(&routes::TIMELINE, timeline)
        .at(&routes::KV_GET, kv_get)
        .at(&routes::KV_HEADS, kv_heads)
        .at(&routes::KV_LIST, kv_list)
        .at(&routes::KV_PUT, kv_put)
        .at(&routes::KV_DEL, kv_del)
        .at(&routes::IDENTITY, identity)
        .at(&routes::IDENTITY_DELEGATE, identity_delegate)
        .at(&routes::IDENTITY_REVOKE, identity_revoke)
        .at(&routes::IDENTITY_KV_HEADS, identity_kv_heads)
        .at(&routes::EVENTS, events)
        .at(&routes::DELETE, delete)
        .at(&routes::KV_PURGE, kv_purge)
        .at(&routes::COMPACT, compact)
        .at(&routes::BACKUP, backup)
        .at(&routes::RELEASE_HOLD, release_hold)
        .at(&routes::FORGET, forget)
        .at(&routes::FOLLOWING, following)
        .at(&routes::FOLLOW, set_following)
        .at(&routes::PEER_ADD, peer_add)
        .at(&routes::UI_LOGIN, ui_login)
        .at(&routes::UI_STATE, ui_state)
        .at(&routes::UI_EVENTS, ui_events)
        .route("/", axum::routing::get(page))
        .route("/ui/app.js", axum::routing::get(app_js))
        .route("/ui/style.css", axum::routing::get(style_css))
        .route("/login", axum::routing::get(login))
        .route("/metrics", axum::routing::get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), host_check))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Count every request by route, method and final status.
async fn count_requests(State(st): St, req: Request, next: Next) -> Response {
    let route = routes::label_of(req.uri().path());
    // Methods outside HTTP's own are one label: a client making up
    // methods cannot grow the label sets.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let res = next.run(req).await;
    st.service
        .dash
        .metrics
        .request(route, method, res.status().as_u16());
    res
}

/// Refuse a request whose Host header is not one of this API's own
/// names (see [`allowed_hosts`]).
async fn host_check(State(st): St, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.to_ascii_lowercase());
    match host {
        Some(h) if st.hosts.contains(&h) => next.run(req).await,
        _ => fail(OpError::new(
            403,
            "foreign_host",
            "this API answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]) and its port",
        )),
    }
}

/// The session cookie's value, if the request carries one.
fn session_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a request that came with the session cookie may do what it
/// asks: reads always; writes only from the dashboard's own origin (a
/// browser names the page that sends a write in `Origin`).
fn cookie_request_ok(req: &Request, hosts: &[String]) -> bool {
    if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD {
        return true;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(o), Some(h)) => {
            o.strip_prefix("http://") == Some(h) && hosts.iter().any(|a| a.eq_ignore_ascii_case(h))
        }
        _ => false,
    }
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
    if req.uri().path() == "/login" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let by_token = presented.is_some_and(|t| token_ok(t.as_bytes(), st.service.token.as_bytes()));
    let by_cookie = !by_token
        && session_of(req.headers(), &st.cookie).is_some_and(|s| st.service.dash.session_ok(s))
        && cookie_request_ok(&req, &st.hosts);
    match by_token || by_cookie {
        true => {
            // A body announced as over the limit is refused before it is
            // waited for (the limit itself applies while reading).
            let announced = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|n| n > MAX_BODY as u64) {
                return fail(OpError::new(
                    413,
                    "body_too_large",
                    format!("request bodies are limited to {MAX_BODY} bytes"),
                ));
            }
            next.run(req).await
        }
        false if req.uri().path() == "/" => html(StatusCode::UNAUTHORIZED, crate::dash::LOGIN_HTML),
        false => {
            let mut res = fail(OpError::new(
                401,
                "unauthorized",
                "missing or wrong bearer token (it is in api.token in the database directory)",
            ));
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            res
        }
    }
}

async fn not_found() -> Response {
    fail(OpError::not_found(
        "no_such_endpoint",
        "no such endpoint; see the API reference in the README",
    ))
}

async fn method_not_allowed() -> Response {
    fail(OpError::new(
        405,
        "method_not_allowed",
        "this endpoint does not take that method",
    ))
}

/// An answer as a response.
fn reply<T: Serialize>(r: OpResult<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

/// An error as a response: its status and its JSON body.
/// Every error answer is a JSON error body: an extractor's rejection
/// (a path segment that is not UTF-8, a body over the limit, ...) comes as
/// plain text and is wrapped here, with its text as the message.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "bad_content_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    fail(OpError::new(status.as_u16(), code, message))
}

fn fail(e: OpError) -> Response {
    (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(e.body()),
    )
        .into_response()
}

/// Run a database operation off the async threads.
async fn blocking<T, F>(st: &AppState, f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Local) -> OpResult<T> + Send + 'static,
{
    let local = st.service.local.clone();
    match tokio::task::spawn_blocking(move || f(&local)).await {
        Ok(r) => reply(r),
        Err(e) => fail(OpError::new(
            500,
            "internal",
            format!("the request failed: {e}"),
        )),
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
            Err(e) => return fail(e),
        }
    };
}

mod admin;

fn no_node() -> OpError {
    OpError::not_found(
        "no_node",
        "this process serves the API without a node (`kappa log --follow`); `kappa serve` runs one",
    )
}

fn node_stopping() -> OpError {
    NetError::Stopped.into()
}

async fn node_info(State(st): St) -> Response {
    let Some(node) = &st.service.node else {
        return fail(no_node());
    };
    match &*node.0.read().await {
        Some(n) => reply(Ok(NodeInfo::of(n))),
        None => fail(node_stopping()),
    }
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

async fn entry(
    State(st): St,
    UrlPath((feed, seq)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let seq: u64 = try_op!(seq.parse().map_err(|_| OpError::bad(
        "bad_seq",
        format!("'{seq}' is not a seq (a whole number from 1)")
    )));
    let p: EntryParams = try_op!(query(q));
    blocking(&st, move |l| l.get(&feed, seq, &p)).await
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

async fn search(State(st): St, UrlPath(name): UrlPath<String>, RawQuery(q): RawQuery) -> Response {
    let p: SearchParams = try_op!(query(q));
    blocking(&st, move |l| l.search(&name, &p)).await
}

async fn timeline(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: TimelineParams = try_op!(query(q));
    blocking(&st, move |l| l.timeline(&p)).await
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

async fn identity(State(st): St) -> Response {
    blocking(&st, move |l| l.show_identity()).await
}

async fn identity_delegate(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: crate::params::DelegateBody = try_op!(body(b));
    blocking(&st, move |l| l.delegate_identity(&b)).await
}

async fn identity_revoke(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: crate::params::RevokeBody = try_op!(body(b));
    blocking(&st, move |l| l.revoke_identity(&b)).await
}

async fn identity_kv_heads(State(st): St, RawQuery(q): RawQuery) -> Response {
    let key = try_op!(key_of(q));
    blocking(&st, move |l| l.resolved_kv_heads(&key)).await
}

async fn kv_list(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: KvListParams = try_op!(query(q));
    blocking(&st, move |l| l.kv_list(&p)).await
}

async fn kv_put(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let w: KvWrite = try_op!(body(b));
    if w.value.is_none() {
        return fail(OpError::bad(
            "bad_request",
            "a put needs a \"value\" (use /v1/kv/del to delete)",
        ));
    }
    blocking(&st, move |l| l.kv_write(w)).await
}

async fn kv_del(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let w: KvWrite = try_op!(body(b));
    if w.value.is_some() {
        return fail(OpError::bad("bad_request", "a delete takes no \"value\""));
    }
    blocking(&st, move |l| l.kv_write(w)).await
}

async fn delete(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: DeleteBody = try_op!(body(b));
    blocking(&st, move |l| l.delete_entries(&b)).await
}

async fn kv_purge(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: KeyBody = try_op!(body(b));
    blocking(&st, move |l| l.kv_purge(&b.key)).await
}

async fn compact(State(st): St) -> Response {
    blocking(&st, |l| l.compact()).await
}

async fn backup(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: BackupBody = try_op!(body(b));
    blocking(&st, move |l| l.backup(&b)).await
}

async fn release_hold(State(st): St) -> Response {
    blocking(&st, |l| l.release_hold()).await
}

/// Forget a feed. With a node running, the node blocks it first, so that
/// no page of it lands after it is forgotten.
async fn forget(State(st): St, UrlPath(feed): UrlPath<String>) -> Response {
    let Some(node) = st.service.node.clone() else {
        return blocking(&st, move |l| l.forget(&feed, true)).await;
    };
    let id = try_op!(st.service.local.resolve_feed(&feed));
    if id == st.service.local.db().feed_id() {
        return blocking(&st, move |l| l.forget(&feed, false)).await;
    }
    {
        let node = node.0.read().await;
        let Some(n) = node.as_ref() else {
            return fail(node_stopping());
        };
        try_op!(n.block(id).await.map_err(OpError::from));
    }
    blocking(&st, move |l| l.forget(&feed, false)).await
}

async fn following(State(st): St) -> Response {
    blocking(&st, |l| l.following()).await
}

/// Change the replication policy. With a node running, following or
/// unfollowing single feeds goes through the node (it forgets what it
/// stops following at once); a whole new policy (`all`, `only`) is
/// written to the file, which the node reads within seconds and applies
/// the same way.
async fn set_following(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: FollowBody = try_op!(body(b));
    let Some(node) = st.service.node.clone() else {
        return blocking(&st, move |l| l.set_following(&b, true)).await;
    };
    if b.all || b.only {
        return blocking(&st, move |l| l.set_following(&b, false)).await;
    }
    let local = &st.service.local;
    let own = local.db().feed_id();
    let mut feeds = Vec::with_capacity(b.feeds.len());
    for f in &b.feeds {
        let id = try_op!(local.resolve_feed(f));
        if id == own && !b.follow {
            return fail(OpError::bad(
                "own_feed",
                "this node always replicates its own feed",
            ));
        }
        feeds.push(id);
    }
    {
        let node = node.0.read().await;
        let Some(n) = node.as_ref() else {
            return fail(node_stopping());
        };
        for id in feeds {
            let r = if b.follow {
                n.follow(id).await
            } else {
                n.unfollow(id).await
            };
            try_op!(r.map_err(OpError::from));
        }
    }
    blocking(&st, |l| l.following()).await
}

/// Server-sent events: every log record from `since` on, as it lands
/// ([`crate::follow::records`], the same follow `kappa log --follow`
/// runs). Each event's id is the record's offset, so a client that
/// reconnects with `Last-Event-ID` resumes right after the last record it
/// saw. The stream ends when the API stops.
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
    let local = &st.service.local;
    let db = local.db().clone();
    let since = match (last_id, p.since) {
        (Some(last), _) => last.saturating_add(1),
        (None, Some(s)) => s,
        (None, None) => db.log_end(),
    };
    let feed = match p.feed {
        Some(f) => Some(try_op!(local.resolve_feed(&f))),
        None => None,
    };
    let stream = crate::follow::records(db, since, feed, st.stop.clone()).map(|rec| match rec {
        Ok(rec) => Event::default()
            .id(rec.offset.to_string())
            .event("record")
            .json_data(Record::of(&rec)),
        // The stream ends after a read error, like the tail does.
        Err(e) => Event::default()
            .event("error")
            .json_data(OpError::from(e).body()),
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// An HTML page as a response.
fn html(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A built-in asset as a response.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    html(StatusCode::OK, crate::dash::INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", crate::dash::APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", crate::dash::STYLE_CSS)
}

/// The dashboard's login: a one-time code for a session cookie.
async fn login(State(st): St, RawQuery(q): RawQuery) -> Response {
    let p: LoginParams = query(q).unwrap_or_default();
    let session = match p.code.as_deref().map(|c| st.service.dash.redeem(c)) {
        Some(Ok(Some(s))) => s,
        Some(Err(e)) => return fail(e),
        _ => return html(StatusCode::UNAUTHORIZED, crate::dash::LOGIN_HTML),
    };
    let cookie = format!("{}={session}; HttpOnly; SameSite=Strict; Path=/", st.cookie);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// A one-time login link, for `kappa ui`: on the address the request came
/// to (its Host header, checked by [`host_check`]).
async fn ui_login(State(st): St, headers: HeaderMap) -> Response {
    let code = try_op!(st.service.dash.login_code());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    reply(Ok(crate::answer::UiLogin {
        expires_in: crate::dash::LOGIN_TTL.as_secs(),
        url: format!("http://{host}/login?code={code}"),
    }))
}

/// The node's figures as the dashboard shows them.
async fn dash_state(st: &AppState) -> serde_json::Value {
    let (info, book) = match &st.service.node {
        Some(node) => match &*node.0.read().await {
            Some(n) => (
                Some(NodeInfo::of(n)),
                n.known_peers().await.ok().map(|p| PeerInfo::all(&p)),
            ),
            None => (None, None),
        },
        None => (None, None),
    };
    let local = st.service.local.clone();
    let dash = st.service.dash.clone();
    tokio::task::spawn_blocking(move || dash.snapshot(&local, info.as_ref(), book.as_deref()))
        .await
        .unwrap_or_default()
}

async fn ui_state(State(st): St) -> Response {
    Json(dash_state(&st).await).into_response()
}

/// The dashboard's state once a second, as server-sent events (`state`),
/// until the API stops.
async fn ui_events(State(st): St) -> Response {
    let stream = futures::stream::unfold((st, true), |(st, first)| async move {
        if !first {
            let mut stop = st.stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if *st.stop.borrow() {
            return None;
        }
        let v = dash_state(&st).await;
        Some((Event::default().event("state").json_data(v), (st, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `GET /metrics`: the figures, states read now.
async fn metrics(State(st): St) -> Response {
    let connected = match &st.service.node {
        Some(node) => node
            .0
            .read()
            .await
            .as_ref()
            .map(|n| n.connected_peers().len()),
        None => None,
    };
    let local = st.service.local.clone();
    let dash = st.service.dash.clone();
    let text = tokio::task::spawn_blocking(move || {
        let m = &dash.metrics;
        if let Ok(s) = local.status() {
            m.set_status(&s);
        }
        m.set_views(&local.views().unwrap_or_default());
        m.connected_peers
            .set(i64::try_from(connected.unwrap_or(0)).unwrap_or(i64::MAX));
        m.encode()
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// Connect to a peer by address (the node keeps it in its address book).
async fn peer_add(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: PeerAddBody = try_op!(body(b));
    let addr: kappadb_net::Multiaddr = try_op!(b.addr.parse().map_err(|e| OpError::bad(
        "bad_addr",
        format!(
            "'{}' is not a multiaddr ({e}); it looks like /ip4/192.168.1.20/tcp/4747",
            b.addr
        )
    )));
    let Some(node) = &st.service.node else {
        return fail(no_node());
    };
    let node = node.0.read().await;
    let Some(n) = node.as_ref() else {
        return fail(node_stopping());
    };
    match n.dial(addr).await {
        Ok(peer) => reply(Ok(serde_json::json!({ "peer": peer.to_string() }))),
        Err(NetError::Stopped) => fail(node_stopping()),
        Err(e) => fail(OpError::new(502, "dial_failed", e.to_string())),
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
            Arc::new(Dash::default()),
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

#[cfg(test)]
mod tests;
