//! The [`Remote`] backend: the same operations as [`crate::ops::Local`],
//! sent to a running node's HTTP API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use crate::api::{self, ApiFile};
use crate::ops::{
    AppendBody, Backend, FieldParams, KvListParams, KvWrite, LogPage, LogParams, OpError, OpResult,
    TimelineParams, ViewAddBody,
};

/// A node's API, found through the files it writes in its database
/// directory.
pub struct Remote {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// No overall timeout: for the event stream.
    stream_agent: ureq::Agent,
}

/// Percent-encode a path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Remote {
    /// The API of the node running on `dir`, if it wrote its address
    /// there. Waits a moment for a node that is still starting.
    pub fn discover(dir: &Path) -> anyhow::Result<Option<Self>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match ApiFile::read(dir)? {
                Some(f) => return Ok(Some(Self::new(&f.addr, f.token))),
                None if Instant::now() >= deadline => return Ok(None),
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A client of the API at `addr` (host:port) with `token`.
    pub fn new(addr: &str, token: String) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let stream_agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base: format!("http://{addr}"),
            token,
            agent,
            stream_agent,
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> OpError {
        OpError::new(
            503,
            "node_unreachable",
            format!("cannot reach the node's API at {}: {e}", self.base),
        )
    }

    fn url(&self, path: &str, query: &impl Serialize) -> OpResult<String> {
        let q = serde_urlencoded::to_string(query)
            .map_err(|e| OpError::bad("bad_request", e.to_string()))?;
        Ok(if q.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{q}", self.base)
        })
    }

    fn answer(&self, res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> OpResult {
        let mut res = res.map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            OpError::new(
                502,
                "bad_answer",
                format!("the node answered {status} with something that is not JSON"),
            )
        })?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let err = &value["error"];
        Err(OpError::new(
            status,
            err["code"].as_str().unwrap_or("error"),
            err["message"]
                .as_str()
                .map_or_else(|| format!("the node answered {status}"), str::to_string),
        ))
    }

    fn get(&self, path: &str, query: &impl Serialize) -> OpResult {
        let url = self.url(path, query)?;
        let res = self
            .agent
            .get(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .call();
        self.answer(res)
    }

    fn send(&self, method: &str, path: &str, body: &impl Serialize) -> OpResult {
        let url = self.url(path, &())?;
        let body =
            serde_json::to_vec(body).map_err(|e| OpError::bad("bad_request", e.to_string()))?;
        let auth = format!("Bearer {}", self.token);
        let res = match method {
            "DELETE" => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            _ => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(&body[..]),
        };
        self.answer(res)
    }
}

impl Backend for Remote {
    fn id(&self) -> OpResult {
        let s = self.get("/v1/status", &())?;
        Ok(serde_json::json!({"feed": s["feed"]}))
    }

    fn append(&self, body: AppendBody) -> OpResult {
        self.send("POST", "/v1/append", &body)
    }

    fn log(&self, p: &LogParams) -> OpResult<LogPage> {
        let v = self.get("/v1/log", p)?;
        serde_json::from_value(v).map_err(|e| {
            OpError::new(
                502,
                "bad_answer",
                format!("the node's log page does not decode: {e}"),
            )
        })
    }

    fn get(&self, feed: &str, seq: u64) -> OpResult {
        self.get(&format!("/v1/feeds/{}/{seq}", segment(feed)), &())
    }

    fn feeds(&self) -> OpResult {
        self.get("/v1/feeds", &())
    }

    fn status(&self) -> OpResult {
        self.get("/v1/status", &())
    }

    fn peers(&self) -> OpResult {
        self.get("/v1/peers", &())
    }

    fn kv_get(&self, key: &str) -> OpResult {
        self.get("/v1/kv/get", &[("key", key)])
    }

    fn kv_heads(&self, key: &str) -> OpResult {
        self.get("/v1/kv/heads", &[("key", key)])
    }

    fn kv_list(&self, p: &KvListParams) -> OpResult {
        self.get("/v1/kv/list", p)
    }

    fn kv_write(&self, w: KvWrite) -> OpResult {
        let path = if w.value.is_some() {
            "/v1/kv/put"
        } else {
            "/v1/kv/del"
        };
        self.send("POST", path, &w)
    }

    fn timeline(&self, p: &TimelineParams) -> OpResult {
        self.get("/v1/timeline", p)
    }

    fn views(&self) -> OpResult {
        self.get("/v1/views", &())
    }

    fn view_digest(&self, name: &str) -> OpResult {
        self.get(&format!("/v1/views/{}/digest", segment(name)), &())
    }

    fn view_add(&self, body: ViewAddBody) -> OpResult {
        self.send("POST", "/v1/views", &body)
    }

    fn view_remove(&self, name: &str) -> OpResult {
        self.send("DELETE", &format!("/v1/views/{}", segment(name)), &())
    }

    fn view_rebuild(&self, name: &str, _progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        self.send("POST", &format!("/v1/views/{}/rebuild", segment(name)), &())
    }

    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult {
        self.get(&format!("/v1/views/{}/query", segment(name)), p)
    }

    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let params = api::EventParams {
            since: Some(since),
            feed: feed.map(str::to_string),
        };
        let url = self.url("/v1/events", &params)?;
        let mut res = self
            .stream_agent
            .get(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("accept", "text/event-stream")
            .call()
            .map_err(|e| self.unreachable(e))?;
        if res.status().as_u16() != 200 {
            let status = res.status().as_u16();
            let text = res.body_mut().read_to_string().unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            bail!(OpError::new(
                status,
                v["error"]["code"].as_str().unwrap_or("error"),
                v["error"]["message"]
                    .as_str()
                    .map_or_else(|| format!("the node answered {status}"), str::to_string),
            ));
        }
        let reader = BufReader::new(res.into_body().into_reader());
        for line in reader.lines() {
            let line = line.context("the node's event stream broke")?;
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let v: Value = serde_json::from_str(data.trim_start())
                .context("the node sent an event that is not JSON")?;
            if !f(v)? {
                return Ok(());
            }
        }
        bail!("the node's event stream ended (did `kappa serve` stop?)")
    }
}
