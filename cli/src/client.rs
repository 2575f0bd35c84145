//! The [`Remote`] backend: the same operations as [`crate::ops::Local`],
//! sent to a running node's HTTP API. URLs come from the route table
//! ([`crate::routes`]); answers decode into the types of
//! [`crate::answer`].

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::answer::{
    AppendReply, BackupReply, BlockReply, CompactReply, DeleteReply, Digest, Entry, ErrorBody,
    FeedInfo, FieldHit, FollowReply, ForgetReply, HoldReply, Id, IdentityInfo, IdentityOpReply,
    InviteReply, KvHead, KvItem, KvWritten, LogPage, OpError, OpResult, PeerInfo, Record,
    SearchHit, Status, SyncReply, TimelineItem, VerifyReply, ViewAdded, ViewInfo, ViewRebuilt,
    ViewRemoved,
};
use crate::ops::Backend;
use crate::params::{
    AppendBody, BackupBody, DelegateBody, DeleteBody, EntryParams, EventParams, FieldParams,
    FollowBody, KeyBody, KeyParam, KvListParams, KvWrite, LogParams, RevokeBody, SearchParams,
    SyncBody, TimelineParams, ViewAddBody,
};
use crate::routes::{self, Method, Route};

/// A node's API, found through the files it writes in its database
/// directory.
pub struct Remote {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// No overall timeout: for the event stream.
    stream_agent: ureq::Agent,
}

type Answer = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

/// The error an error answer names; `value` is its body (`null` if it
/// was not JSON).
fn error_of(status: u16, value: &Value) -> OpError {
    let err = &value["error"];
    OpError::new(
        status,
        err["code"].as_str().unwrap_or("error"),
        err["message"]
            .as_str()
            .map_or_else(|| format!("the node answered {status}"), str::to_string),
    )
}

impl Remote {
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

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
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

    /// The answer to a request, decoded, or the error it names.
    fn answer<T: DeserializeOwned>(&self, res: Answer, path: &str) -> OpResult<T> {
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
        if !(200..300).contains(&status) {
            return Err(error_of(status, &value));
        }
        serde_json::from_value(value).map_err(|e| {
            OpError::new(
                502,
                "bad_answer",
                format!("the node's answer to {path} does not decode: {e}"),
            )
        })
    }

    /// Ask `route` (with `args` in its path): a GET with `query` as the
    /// query string, a POST with `body` as JSON, a DELETE with neither.
    fn call<const N: usize, T: DeserializeOwned>(
        &self,
        route: &Route<N>,
        args: [&str; N],
        query: &impl Serialize,
        body: &impl Serialize,
    ) -> OpResult<T> {
        let path = route.fill(args);
        let url = self.url(&path, query)?;
        let auth = self.auth();
        let res = match route.method {
            Method::Get => self.agent.get(&url).header("authorization", &auth).call(),
            Method::Delete => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            Method::Post => {
                let body = serde_json::to_vec(body)
                    .map_err(|e| OpError::bad("bad_request", e.to_string()))?;
                self.agent
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(&body[..])
            }
        };
        self.answer(res, &path)
    }

    /// A one-time login link of the node's dashboard.
    pub fn ui_login(&self) -> OpResult<crate::answer::UiLogin> {
        self.call(&routes::UI_LOGIN, [], &(), &serde_json::json!({}))
    }

    /// A GET of `route` with `query`.
    fn read<const N: usize, T: DeserializeOwned>(
        &self,
        route: &Route<N>,
        args: [&str; N],
        query: &impl Serialize,
    ) -> OpResult<T> {
        self.call(route, args, query, &())
    }
}

impl Backend for Remote {
    fn id(&self) -> OpResult<Id> {
        Ok(Id {
            feed: self.status()?.feed,
        })
    }

    fn append(&self, body: AppendBody) -> OpResult<AppendReply> {
        self.call(&routes::APPEND, [], &(), &body)
    }

    fn log(&self, p: &LogParams) -> OpResult<LogPage> {
        self.read(&routes::LOG, [], p)
    }

    fn get(&self, feed: &str, seq: u64, p: &EntryParams) -> OpResult<Entry> {
        self.read(&routes::ENTRY, [feed, &seq.to_string()], p)
    }

    fn feeds(&self) -> OpResult<Vec<FeedInfo>> {
        self.read(&routes::FEEDS, [], &())
    }

    fn status(&self) -> OpResult<Status> {
        self.read(&routes::STATUS, [], &())
    }

    fn peers(&self) -> OpResult<Vec<PeerInfo>> {
        self.read(&routes::PEERS, [], &())
    }

    fn kv_get(&self, key: &str) -> OpResult<Value> {
        let key = KeyParam {
            key: Some(key.to_string()),
        };
        self.read(&routes::KV_GET, [], &key)
    }

    fn kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>> {
        let key = KeyParam {
            key: Some(key.to_string()),
        };
        self.read(&routes::KV_HEADS, [], &key)
    }

    fn kv_list(&self, p: &KvListParams) -> OpResult<Vec<KvItem>> {
        self.read(&routes::KV_LIST, [], p)
    }

    fn kv_write(&self, w: KvWrite) -> OpResult<KvWritten> {
        let route = if w.value.is_some() {
            &routes::KV_PUT
        } else {
            &routes::KV_DEL
        };
        self.call(route, [], &(), &w)
    }

    fn timeline(&self, p: &TimelineParams) -> OpResult<Vec<TimelineItem>> {
        self.read(&routes::TIMELINE, [], p)
    }

    fn identity(&self) -> OpResult<IdentityInfo> {
        self.read(&routes::IDENTITY, [], &())
    }

    fn identity_delegate(&self, body: &DelegateBody) -> OpResult<IdentityOpReply> {
        self.call(&routes::IDENTITY_DELEGATE, [], &(), body)
    }

    fn identity_revoke(&self, body: &RevokeBody) -> OpResult<IdentityOpReply> {
        self.call(&routes::IDENTITY_REVOKE, [], &(), body)
    }

    fn identity_kv_heads(&self, key: &str) -> OpResult<Vec<KvHead>> {
        let key = KeyParam {
            key: Some(key.to_string()),
        };
        self.read(&routes::IDENTITY_KV_HEADS, [], &key)
    }

    fn views(&self) -> OpResult<Vec<ViewInfo>> {
        self.read(&routes::VIEWS, [], &())
    }

    fn view_digest(&self, name: &str) -> OpResult<Digest> {
        self.read(&routes::VIEW_DIGEST, [name], &())
    }

    fn view_add(&self, body: ViewAddBody) -> OpResult<ViewAdded> {
        self.call(&routes::VIEW_ADD, [], &(), &body)
    }

    fn view_remove(&self, name: &str) -> OpResult<ViewRemoved> {
        self.call(&routes::VIEW_REMOVE, [name], &(), &())
    }

    fn view_rebuild(
        &self,
        name: &str,
        _progress: &mut dyn FnMut(u64, u64),
    ) -> OpResult<ViewRebuilt> {
        self.call(&routes::VIEW_REBUILD, [name], &(), &())
    }

    fn field_query(&self, name: &str, p: &FieldParams) -> OpResult<Vec<FieldHit>> {
        self.read(&routes::FIELD_QUERY, [name], p)
    }

    fn search(&self, name: &str, p: &SearchParams) -> OpResult<Vec<SearchHit>> {
        self.read(&routes::SEARCH, [name], p)
    }

    fn delete(&self, body: &DeleteBody) -> OpResult<DeleteReply> {
        self.call(&routes::DELETE, [], &(), body)
    }

    fn kv_purge(&self, key: &str) -> OpResult<DeleteReply> {
        let key = KeyBody {
            key: key.to_string(),
        };
        self.call(&routes::KV_PURGE, [], &(), &key)
    }

    fn compact(&self) -> OpResult<CompactReply> {
        self.call(&routes::COMPACT, [], &(), &())
    }

    fn backup(&self, body: &BackupBody) -> OpResult<BackupReply> {
        self.call(&routes::BACKUP, [], &(), body)
    }

    fn release_hold(&self) -> OpResult<HoldReply> {
        self.call(&routes::RELEASE_HOLD, [], &(), &())
    }

    fn forget(&self, feed: &str) -> OpResult<ForgetReply> {
        self.call(&routes::FORGET, [feed], &(), &())
    }

    fn following(&self) -> OpResult<FollowReply> {
        self.read(&routes::FOLLOWING, [], &())
    }

    fn set_following(&self, body: &FollowBody) -> OpResult<FollowReply> {
        self.call(&routes::FOLLOW, [], &(), body)
    }

    fn invite(&self) -> OpResult<InviteReply> {
        self.read(&routes::INVITE, [], &())
    }

    fn block(&self, feed: &str, on: bool) -> OpResult<BlockReply> {
        let route = if on { &routes::BLOCK } else { &routes::UNBLOCK };
        self.call(route, [feed], &(), &())
    }

    fn sync(&self, body: &SyncBody) -> OpResult<SyncReply> {
        self.call(&routes::SYNC, [], &(), body)
    }

    fn verify(&self, _progress: &mut dyn FnMut(u64, u64)) -> OpResult<VerifyReply> {
        self.read(&routes::VERIFY, [], &())
    }

    fn follow(
        &self,
        since: u64,
        feed: Option<&str>,
        f: &mut dyn FnMut(Record) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let params = EventParams {
            since: Some(since),
            feed: feed.map(str::to_string),
        };
        let url = self.url(&routes::EVENTS.fill([]), &params)?;
        let mut res = self
            .stream_agent
            .get(&url)
            .header("authorization", &self.auth())
            .header("accept", "text/event-stream")
            .call()
            .map_err(|e| self.unreachable(e))?;
        if res.status().as_u16() != 200 {
            let status = res.status().as_u16();
            let text = res.body_mut().read_to_string().unwrap_or_default();
            bail!(error_of(
                status,
                &serde_json::from_str(&text).unwrap_or_default()
            ));
        }
        let reader = BufReader::new(res.into_body().into_reader());
        let mut event = String::new();
        for line in reader.lines() {
            let line = line.context("the node's event stream broke")?;
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
                continue;
            }
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if event == "error" {
                // The node could not read its log; the stream ends here.
                let body: ErrorBody = serde_json::from_str(data)
                    .context("the node sent an error event that does not decode")?;
                bail!(OpError::new(500, &body.error.code, body.error.message));
            }
            let rec: Record = serde_json::from_str(data)
                .context("the node sent an event that is not a log record")?;
            if !f(rec)? {
                return Ok(());
            }
        }
        bail!("the node's event stream ended (did `kappa serve` stop?)")
    }
}
