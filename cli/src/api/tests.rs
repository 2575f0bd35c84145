//! The API server on a bound loopback listener: every route of the table
//! is mounted, and a shutdown ends open event streams and returns.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kappadb_core::{CreateOptions, Db};
use kappadb_views::Indexer;
use serde_json::Value;
use tokio::sync::oneshot;

use super::*;

const TOKEN: &str = "test-token";

fn open_views(db: &Db) -> Result<Indexer, kappadb_views::ViewError> {
    Indexer::open(db.clone())
}

/// A template with every parameter filled in with `x`.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_is_served_and_shutdown_ends_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
    db.append(br#"{"type":"note"}"#.to_vec()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service {
        local: Arc::new(Local::new(db, open_views)),
        node: None,
        token: TOKEN.into(),
        dash: Arc::new(Dash::default()),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = rt.spawn(run(service, listener, async move {
        let _ = stop_rx.await;
    }));

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    for (method, template) in routes::ALL {
        if *template == routes::EVENTS.path || *template == routes::UI_EVENTS.path {
            continue;
        }
        let url = format!("http://{addr}{}", sample_path(template));
        let auth = format!("Bearer {TOKEN}");
        let res = match method {
            Method::Get => agent.get(&url).header("authorization", &auth).call(),
            Method::Delete => agent.delete(&url).header("authorization", &auth).call(),
            Method::Post => agent
                .post(&url)
                .header("authorization", &auth)
                .send(&b"{}"[..]),
        }
        .unwrap();
        let status = res.status().as_u16();
        let v: Value = serde_json::from_str(&res.into_body().read_to_string().unwrap()).unwrap();
        assert_ne!(status, 405, "{method:?} {template}: {v}");
        assert_ne!(
            v["error"]["code"], "no_such_endpoint",
            "{method:?} {template}"
        );
    }

    // An event stream, open and read: the shutdown ends it.
    let mut events = TcpStream::connect(addr).unwrap();
    write!(
        events,
        "GET {}?since=0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        routes::EVENTS.path
    )
    .unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(events);
    let mut line = String::new();
    while !line.starts_with("event: record") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the first record");
    }
    let started = Instant::now();
    stop_tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    assert!(
        started.elapsed() < GRACE,
        "the stream ended without waiting for the grace period"
    );
    let mut rest = String::new();
    while reader.read_line(&mut rest).unwrap_or(0) > 0 {}
}

/// A server on a free loopback port for the auth tests: its address, the
/// dashboard (to mint login codes), and a stop.
struct TestServer {
    addr: SocketAddr,
    dash: Arc<Dash>,
    rt: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path(), CreateOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let dash = Arc::new(Dash::default());
        let service = Service {
            local: Arc::new(Local::new(db, open_views)),
            node: None,
            token: TOKEN.into(),
            dash: dash.clone(),
        };
        let (stop, stop_rx) = oneshot::channel::<()>();
        rt.spawn(run(service, listener, async move {
            let _ = stop_rx.await;
        }));
        Self {
            addr,
            dash,
            rt,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// One raw HTTP/1.1 request; the status line's code and the whole
    /// answer.
    fn raw(&self, head: &str) -> (u16, String) {
        use std::io::Read;
        let mut conn = TcpStream::connect(self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.write_all(head.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// `method path` with these extra header lines, Host set to `host`.
    fn ask(&self, method: Method, path: &str, host: &str, extra: &str) -> (u16, String) {
        let (m, body) = match method {
            Method::Get => ("GET", ""),
            Method::Post => ("POST", "{}"),
            Method::Delete => ("DELETE", ""),
        };
        self.raw(&format!(
            "{m} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}content-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

#[test]
fn without_credentials_every_route_and_the_page_answer_401() {
    let server = TestServer::start();
    let host = server.host();
    let pages = routes::PAGES.iter().map(|p| (Method::Get, *p));
    for (method, template) in routes::ALL.iter().copied().chain(pages) {
        let path = sample_path(template);
        let (status, text) = server.ask(method, &path, &host, "");
        assert_eq!(status, 401, "{method:?} {path} without a token: {text}");
        // A wrong token, and a cookie no login gave, are no better.
        let (status, _) = server.ask(method, &path, &host, "authorization: Bearer nope\r\n");
        assert_eq!(status, 401, "{method:?} {path} with a wrong token");
        let cookie = format!("cookie: kappa_session_{}=forged\r\n", server.addr.port());
        let (status, _) = server.ask(method, &path, &host, &cookie);
        assert_eq!(status, 401, "{method:?} {path} with a forged cookie");
    }
    // The page says how to log in.
    let (_, text) = server.ask(Method::Get, "/", &host, "");
    assert!(text.contains("kappa ui"), "{text}");
}

#[test]
fn a_foreign_host_is_refused_even_with_the_token() {
    let server = TestServer::start();
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    let port = server.addr.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.2:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
    ] {
        for path in ["/v1/status", "/", "/metrics", "/login?code=x"] {
            let (status, text) = server.ask(Method::Get, path, &host, &auth);
            assert_eq!(status, 403, "Host {host} {path}: {text}");
            assert!(text.contains("foreign_host"), "{text}");
        }
    }
    // No Host at all (HTTP/1.0) is refused too.
    let (status, _) = server.raw(&format!(
        "GET /v1/status HTTP/1.0\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    ));
    assert_eq!(status, 403);
    // The loopback names with the port are this API's own.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, text) = server.ask(Method::Get, "/v1/status", &host, &auth);
        assert_eq!(status, 200, "Host {host}: {text}");
    }
}

/// The value of the `Set-Cookie` header of an answer, up to its first `;`.
fn set_cookie(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap_or_default().to_string())
}

#[test]
fn a_login_link_gives_a_strict_httponly_session_once() {
    let server = TestServer::start();
    let host = server.host();
    // `kappa ui` asks for the link with the token.
    let (status, text) = server.ask(
        Method::Post,
        routes::UI_LOGIN.path,
        &host,
        &format!("authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    let url = v["url"].as_str().unwrap();
    let path = url.strip_prefix(&format!("http://{host}")).unwrap();
    assert!(path.starts_with("/login?code="), "{url}");
    assert!(!url.contains(TOKEN), "the token is never in a link");

    let (status, text) = server.ask(Method::Get, path, &host, "");
    assert_eq!(status, 303, "{text}");
    assert!(text.contains("location: /\r\n"), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("set-cookie: "))
        .unwrap();
    assert!(header.contains("HttpOnly"), "{header}");
    assert!(header.contains("SameSite=Strict"), "{header}");
    let cookie = set_cookie(&text).unwrap();
    assert!(cookie.starts_with(&format!("kappa_session_{}=", server.addr.port())));
    // The link works once.
    let (status, _) = server.ask(Method::Get, path, &host, "");
    assert_eq!(status, 401, "a used link");

    // The session opens the page, its assets and reads.
    let with = format!("cookie: other=1; {cookie}\r\n");
    for p in [
        "/",
        "/ui/app.js",
        "/ui/style.css",
        "/v1/status",
        "/v1/ui/state",
    ] {
        let (status, text) = server.ask(Method::Get, p, &host, &with);
        assert_eq!(status, 200, "{p}: {text}");
    }
    // A write with the cookie needs the dashboard's own Origin (what a
    // browser sends with a page's fetch): another site's is refused.
    let append = "/v1/append";
    let (status, _) = server.ask(Method::Post, append, &host, &with);
    assert_eq!(status, 401, "a cookie write without Origin");
    let evil = format!("{with}origin: http://evil.example\r\n");
    assert_eq!(server.ask(Method::Post, append, &host, &evil).0, 401);
    let own = format!("{with}origin: http://{host}\r\n");
    let (status, text) = server.ask(Method::Post, append, &host, &own);
    // Through auth: the empty body is the endpoint's own 400.
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("bad_request"), "{text}");

    // A made-up code is refused, and so is none.
    assert!(server.dash.login_code().is_ok());
    let (status, _) = server.ask(Method::Get, "/login?code=0000", &host, "");
    assert_eq!(status, 401);
    let (status, _) = server.ask(Method::Get, "/login", &host, "");
    assert_eq!(status, 401);
}

#[test]
fn requests_are_counted_by_route_template_and_known_methods_only() {
    let server = TestServer::start();
    let host = server.host();
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    server.ask(Method::Get, "/v1/feeds/nope/3", &host, &auth);
    server.ask(Method::Get, "/v1/status", &host, "");
    for m in ["BREW", "WHEN", "XYZZY"] {
        server.raw(&format!(
            "{m} /v1/status HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n"
        ));
    }
    let text = server.dash.metrics.encode();
    assert!(
        text.contains(
            "kappa_api_requests_total{route=\"/v1/feeds/{feed}/{seq}\",method=\"GET\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kappa_api_requests_total{route=\"/v1/status\",method=\"GET\",status=\"401\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kappa_api_requests_total{route=\"/v1/status\",method=\"OTHER\",status=\"401\"} 3"
        ),
        "{text}"
    );
    assert!(!text.contains("BREW"), "{text}");
}
