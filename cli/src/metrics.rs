//! `GET /metrics`: the node's figures in the Prometheus text format
//! (OpenMetrics), through `prometheus-client`.
//!
//! Counters are moved where things happen: appends, ingests and refused
//! entries by the database (`Metrics` is its [`Observer`]), sync traffic by
//! the node's events ([`crate::dash::track`]), API requests by the API's
//! outermost layer. Figures that are states, not events (connected peers,
//! view lag, log size, forked feeds), are read when the endpoint is asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kappadb_core::Observer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A refused entry's rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `EntryError::reason`.
    pub reason: String,
}

/// A peer, by peer id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The libp2p peer id.
    pub peer: String,
}

/// A view, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViewLabel {
    /// The view's name.
    pub view: String,
}

/// An API request: its route template, method and answer status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The route template (`/v1/feeds/{feed}`), or `other`.
    pub route: String,
    /// GET, POST, ...
    pub method: String,
    /// The HTTP status.
    pub status: u16,
}

/// Every figure the node exports.
pub struct Metrics {
    registry: Registry,
    /// Own entries appended.
    pub appends: Counter,
    /// Time of each append call (a batch counts once).
    pub append_seconds: Histogram,
    /// Entries ingested (from peers).
    pub ingests: Counter,
    /// Time of each ingest (a sync page counts once).
    pub ingest_seconds: Histogram,
    /// Entries refused, by rule.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Entries received from each peer.
    pub sync_entries: Family<PeerLabel, Counter>,
    /// Bytes received from each peer.
    pub sync_bytes: Family<PeerLabel, Counter>,
    /// Entries served to each peer (reported when a session is in sync).
    pub sync_served: Family<PeerLabel, Counter>,
    /// Peers connected now.
    pub connected_peers: Gauge,
    /// Bytes of log each view has not folded yet.
    pub view_lag: Family<ViewLabel, Gauge>,
    /// Entries each view has folded.
    pub view_entries: Family<ViewLabel, Gauge>,
    /// Size of the log.
    pub log_bytes: Gauge,
    /// Bytes the log's files take on disk.
    pub disk_bytes: Gauge,
    /// Entries held.
    pub entries: Gauge,
    /// Feeds known to be forked now.
    pub forked_feeds: Gauge,
    /// Forks found while this node ran.
    pub forks_found: Counter,
    /// API requests.
    pub api_requests: Family<RequestLabel, Counter>,
    /// Entries appended, as a plain figure for the dashboard's chart.
    appended_total: AtomicU64,
    /// Entries ingested, likewise.
    ingested_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn to_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// A registry with every figure at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kappa");
        let m = Self {
            appends: Counter::default(),
            append_seconds: latency(),
            ingests: Counter::default(),
            ingest_seconds: latency(),
            rejected: Family::default(),
            sync_entries: Family::default(),
            sync_bytes: Family::default(),
            sync_served: Family::default(),
            connected_peers: Gauge::default(),
            view_lag: Family::default(),
            view_entries: Family::default(),
            log_bytes: Gauge::default(),
            disk_bytes: Gauge::default(),
            entries: Gauge::default(),
            forked_feeds: Gauge::default(),
            forks_found: Counter::default(),
            api_requests: Family::default(),
            appended_total: AtomicU64::new(0),
            ingested_total: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "appended_entries",
            "Own entries appended",
            m.appends.clone(),
        );
        registry.register(
            "append_duration_seconds",
            "Time of each append (a batch once), durable on return",
            m.append_seconds.clone(),
        );
        registry.register(
            "ingested_entries",
            "Entries from peers stored",
            m.ingests.clone(),
        );
        registry.register(
            "ingest_duration_seconds",
            "Time of each ingest (a sync page once)",
            m.ingest_seconds.clone(),
        );
        registry.register(
            "rejected_entries",
            "Entries refused, by the rule they broke",
            m.rejected.clone(),
        );
        registry.register(
            "sync_received_entries",
            "Entries received from each peer",
            m.sync_entries.clone(),
        );
        registry.register(
            "sync_received_bytes",
            "Bytes received from each peer (payloads and signed headers)",
            m.sync_bytes.clone(),
        );
        registry.register(
            "sync_served_entries",
            "Entries served to each peer, counted when a session is in sync",
            m.sync_served.clone(),
        );
        registry.register(
            "connected_peers",
            "Peers connected now",
            m.connected_peers.clone(),
        );
        registry.register(
            "view_lag_bytes",
            "Bytes of log a view has not folded yet",
            m.view_lag.clone(),
        );
        registry.register(
            "view_entries",
            "Entries a view has folded",
            m.view_entries.clone(),
        );
        registry.register("log_bytes", "Size of the log", m.log_bytes.clone());
        registry.register(
            "disk_bytes",
            "Bytes the log's files take on disk",
            m.disk_bytes.clone(),
        );
        registry.register("entries", "Entries held", m.entries.clone());
        registry.register(
            "forked_feeds",
            "Feeds known to be forked",
            m.forked_feeds.clone(),
        );
        registry.register(
            "forks_found",
            "Forks found while this node ran",
            m.forks_found.clone(),
        );
        registry.register(
            "api_requests",
            "API requests, by route, method and status",
            m.api_requests.clone(),
        );
        Self { registry, ..m }
    }

    /// The text format of every figure.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Set the database figures read at scrape time.
    pub fn set_status(&self, s: &crate::answer::Status) {
        self.log_bytes.set(to_gauge(s.log_bytes));
        self.disk_bytes.set(to_gauge(s.disk_bytes));
        self.entries.set(to_gauge(s.entries));
        self.forked_feeds.set(to_gauge(s.forked_feeds as u64));
    }

    /// Set the views' figures read at scrape time.
    pub fn set_views(&self, views: &[crate::answer::ViewInfo]) {
        self.view_lag.clear();
        self.view_entries.clear();
        for v in views {
            let l = ViewLabel {
                view: v.name.clone(),
            };
            self.view_lag.get_or_create(&l).set(to_gauge(v.lag));
            self.view_entries.get_or_create(&l).set(to_gauge(v.entries));
        }
    }

    /// Count one API request.
    pub fn request(&self, route: &str, method: &str, status: u16) {
        self.api_requests
            .get_or_create(&RequestLabel {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
    }

    /// Entries appended and ingested since start (for the dashboard).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.appended_total.load(Ordering::Relaxed),
            self.ingested_total.load(Ordering::Relaxed),
        )
    }
}

impl Observer for Metrics {
    fn appended(&self, entries: usize, took: Duration) {
        self.appends.inc_by(entries as u64);
        self.appended_total
            .fetch_add(entries as u64, Ordering::Relaxed);
        self.append_seconds.observe(took.as_secs_f64());
    }

    fn ingested(&self, accepted: usize, took: Duration) {
        self.ingests.inc_by(accepted as u64);
        self.ingested_total
            .fetch_add(accepted as u64, Ordering::Relaxed);
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    fn rejected(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_in_the_text_with_their_labels() {
        let m = Metrics::new();
        m.appended(3, Duration::from_millis(2));
        m.rejected("seq_gap");
        m.request("/v1/status", "GET", 200);
        let text = m.encode();
        assert!(text.contains("kappa_appended_entries_total 3"), "{text}");
        assert!(
            text.contains("kappa_rejected_entries_total{reason=\"seq_gap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kappa_api_requests_total{route=\"/v1/status\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kappa_append_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        assert_eq!(m.totals(), (3, 0));
    }
}
