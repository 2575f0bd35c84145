//! `GET /metrics` of `kappa serve`, read by an independent parser of the
//! Prometheus text format (Python's `prometheus_client`, its OpenMetrics
//! parser): it parses, and its counters move as they should after
//! appends, a refused append and a sync between two nodes.
//!
//! Without `python3` and `prometheus_client` the test says so and passes,
//! unless `KAPPADB_REQUIRE_TOOLS=1` (set by `.ci/run`, which installs
//! them).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{ApiClient, eventually, ok, serve, serve_with};
use serde_json::{Value, json};

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

fn parser_present() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = "python3 with prometheus_client is not installed (pip install prometheus_client)";
        if std::env::var("KAPPADB_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("skipping the metrics test: {why}");
    }
    found
}

/// The samples of a scrape: `(name, labels, value)`.
struct Scrape(Vec<(String, Value, f64)>);

impl Scrape {
    fn of(api: &ApiClient) -> Self {
        let res = api
            .agent
            .get(format!("{}/metrics", api.base))
            .header("authorization", &format!("Bearer {}", api.token))
            .call()
            .unwrap();
        assert_eq!(res.status(), 200);
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        let text = res.into_body().read_to_string().unwrap();
        let mut py = Command::new("python3")
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the parser refused the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
        Self(rows)
    }

    /// The value of the sample `name` whose labels include `labels`
    /// (`None` if there is none).
    fn get(&self, name: &str, labels: &Value) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .as_object()
                        .is_none_or(|want| want.iter().all(|(k, v)| l.get(k) == Some(v)))
            })
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: Value) -> f64 {
        self.get(name, &labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels}"))
    }
}

fn peer_id_of(node: &common::Node) -> String {
    eventually("the peer id line", || {
        node.stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix("peer id ").map(|s| s.trim().to_string()))
    })
}

#[test]
fn metrics_parse_and_count_appends_refusals_and_a_sync() {
    if !parser_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    ok(&a, &["init"]);
    let invite = ok(&a, &["invite"]);
    ok(&b, &["init", "--join", invite.trim()]);
    let node_a = serve(&a);
    let a_peer = peer_id_of(&node_a);
    let api_a = ApiClient::of(&a);

    let before = Scrape::of(&api_a);
    assert_eq!(before.value("kappa_appended_entries_total", json!({})), 0.0);
    assert_eq!(before.value("kappa_connected_peers", json!({})), 0.0);
    let append_route = json!({"route": "/v1/append", "method": "POST", "status": "200"});
    assert_eq!(before.get("kappa_api_requests_total", &append_route), None);

    for n in 0..5 {
        api_a.append(&json!({"type": "note", "n": n})).unwrap();
    }
    // One refused append: a payload over the 1 MiB limit.
    let big = json!({ "payload": "x".repeat(1 << 21) }).to_string();
    let res = api_a
        .agent
        .post(format!("{}/v1/append", api_a.base))
        .header("authorization", &format!("Bearer {}", api_a.token))
        .send(big.as_bytes())
        .unwrap();
    assert_eq!(res.status(), 413);

    let after = Scrape::of(&api_a);
    assert_eq!(after.value("kappa_appended_entries_total", json!({})), 5.0);
    assert_eq!(
        after.value("kappa_append_duration_seconds_count", json!({})),
        5.0
    );
    assert!(after.value("kappa_append_duration_seconds_sum", json!({})) > 0.0);
    assert_eq!(
        after.value(
            "kappa_rejected_entries_total",
            json!({"reason": "payload_too_large"})
        ),
        1.0
    );
    assert_eq!(after.value("kappa_api_requests_total", append_route), 5.0);
    assert_eq!(
        after.value(
            "kappa_api_requests_total",
            json!({"route": "/v1/append", "status": "413"})
        ),
        1.0
    );
    assert!(after.value("kappa_log_bytes", json!({})) > before.value("kappa_log_bytes", json!({})));
    assert_eq!(after.value("kappa_entries", json!({})), 5.0);
    assert!(
        after
            .get("kappa_view_lag_bytes", &json!({"view": "kv"}))
            .is_some()
    );

    // A second node syncs the five entries from the first.
    let node_b = serve_with(&b, &["--api", "127.0.0.1:0", "--peer", &node_a.addr]);
    let api_b = ApiClient::of(&b);
    let feed_a = api_a.get_ok("/v1/status")["feed"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("b to hold a's five entries", || {
        let (status, v) = api_b.get(&format!("/v1/feeds/{feed_a}?limit=1"));
        (status == 200 && v["head_seq"] == 5).then_some(())
    });
    let from_a = json!({ "peer": a_peer });
    let synced = eventually("b's counters to show the sync", || {
        let s = Scrape::of(&api_b);
        (s.get("kappa_sync_received_entries_total", &from_a) == Some(5.0)).then_some(s)
    });
    assert_eq!(synced.value("kappa_ingested_entries_total", json!({})), 5.0);
    assert!(synced.value("kappa_ingest_duration_seconds_count", json!({})) >= 1.0);
    // Each entry brings its payload and its signed header.
    assert!(synced.value("kappa_sync_received_bytes_total", from_a) > 5.0 * 100.0);
    assert_eq!(synced.value("kappa_appended_entries_total", json!({})), 0.0);
    assert_eq!(synced.value("kappa_connected_peers", json!({})), 1.0);
    assert_eq!(synced.value("kappa_entries", json!({})), 5.0);
    let a_now = eventually("a to count the connection", || {
        let s = Scrape::of(&api_a);
        (s.value("kappa_connected_peers", json!({})) == 1.0).then_some(s)
    });
    assert_eq!(a_now.value("kappa_ingested_entries_total", json!({})), 0.0);

    assert!(node_b.stop());
    assert!(node_a.stop());
}
