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
        if *template == routes::EVENTS.path {
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
