//! The node's admin endpoints: invite, block/unblock, sync, verify, and
//! the running node's part of `status` and `peers`. With a node running
//! they act through it (its real listen addresses, its connections, its
//! block list in memory); without one (the API of `kappa log --follow`)
//! they run the same [`Local`](crate::ops::Local) operation the CLI runs on a database.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use kappadb_net::{Multiaddr, NodeHandle, PeerId};

use super::{AppState, St, blocking, body, fail, no_node, node_stopping, reply};
use crate::answer::{BlockReply, InviteReply, NodeInfo, OpError, PeerInfo, SyncReply};
use crate::ops::Backend;
use crate::params::SyncBody;

/// The IP address a multiaddr starts with, if it does.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    use kappadb_net::multiaddr::Protocol;
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The addresses a peer on another machine can reach: the listen
/// addresses that are not loopback (all of them if only loopback ones
/// exist, as on a machine with no network).
pub(crate) fn reachable(listen: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let outside: Vec<Multiaddr> = listen
        .iter()
        .filter(|a| ip_of(a).is_some_and(|ip| !ip.is_loopback()))
        .cloned()
        .collect();
    if outside.is_empty() { listen } else { outside }
}

/// A peer's addresses as shown to the user: without any address this node
/// listens on itself (a peer's loopback address on the same port names
/// this node, not the peer), and without `/p2p/` suffixes to compare.
pub(crate) fn peer_view(mut p: PeerInfo, own: &[Multiaddr], connected: &[PeerId]) -> PeerInfo {
    let own: Vec<String> = own
        .iter()
        .map(|a| {
            let s = a.to_string();
            match s.find("/p2p/") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        })
        .collect();
    p.addrs.retain(|a| !own.contains(a));
    p.connected = connected.iter().any(|c| c.to_string() == p.peer);
    p
}

/// What the running node says about itself, or the error to answer.
async fn with_node<T>(
    st: &AppState,
    f: impl AsyncFnOnce(&NodeHandle) -> Result<T, OpError>,
) -> Option<Result<T, OpError>> {
    let node = st.service.node.clone()?;
    let guard = node.0.read().await;
    Some(match guard.as_ref() {
        Some(n) => f(n).await,
        None => Err(node_stopping()),
    })
}

pub(super) async fn invite(State(st): St) -> Response {
    let listen = with_node(&st, async |n| Ok(n.listen_addrs())).await;
    match listen {
        None => blocking(&st, |l| l.invite()).await,
        Some(Err(e)) => fail(e),
        Some(Ok(listen)) => {
            let key = match st.service.local.db().network_key() {
                Ok(k) => k,
                Err(e) => return fail(e.into()),
            };
            reply(Ok(InviteReply::of(key, reachable(listen))))
        }
    }
}

async fn set_blocked(st: std::sync::Arc<AppState>, feed: String, on: bool) -> Response {
    if st.service.node.is_none() {
        return blocking(&st, move |l| l.block(&feed, on)).await;
    }
    let id = match st.service.local.resolve_feed(&feed) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    if on && id == st.service.local.db().feed_id() {
        return fail(OpError::bad(
            "own_feed",
            "refusing to block this database's own feed",
        ));
    }
    let changed = with_node(&st, async |n| {
        let r = if on {
            n.block(id).await
        } else {
            n.unblock(id).await
        };
        r.map_err(|e| match e {
            kappadb_net::NetError::Stopped => node_stopping(),
            e => OpError::block_list(e),
        })
    })
    .await;
    reply(
        changed
            .unwrap_or_else(|| Err(no_node()))
            .map(|changed| BlockReply {
                blocked: on,
                changed,
                feed: id.to_string(),
            }),
    )
}

pub(super) async fn block(State(st): St, UrlPath(feed): UrlPath<String>) -> Response {
    set_blocked(st, feed, true).await
}

pub(super) async fn unblock(State(st): St, UrlPath(feed): UrlPath<String>) -> Response {
    set_blocked(st, feed, false).await
}

/// Sync once with a peer through the running node. It ends early (with
/// an error) when the API stops, so a long sync never holds up a
/// shutdown.
pub(super) async fn sync(State(st): St, b: Result<Bytes, BytesRejection>) -> Response {
    let b: SyncBody = match body(b) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let addr = match crate::net_cmd::parse_multiaddr(&b.addr) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mut stop = st.stop.clone();
    let timeout = Duration::from_secs(b.timeout.min(86_400));
    let res = with_node(&st, async |n| {
        tokio::select! {
            r = n.sync_with(addr, timeout) => r.map(|s| SyncReply::of(&s)).map_err(OpError::sync_failed),
            _ = stop.wait_for(|s| *s) => Err(node_stopping()),
        }
    })
    .await;
    reply(res.unwrap_or_else(|| Err(no_node())))
}

pub(super) async fn verify(State(st): St) -> Response {
    blocking(&st, |l| l.verify(&mut |_, _| {})).await
}

/// `status`, with the running node and the views' lag when there is a node.
pub(super) async fn status(State(st): St) -> Response {
    let local = st.service.local.clone();
    let with_views = st.service.node.is_some();
    let res = tokio::task::spawn_blocking(move || {
        let mut s = local.status()?;
        if with_views {
            s.views = local.views().ok();
        }
        Ok::<_, OpError>(s)
    })
    .await
    .unwrap_or_else(|e| Err(OpError::new(500, "internal", e.to_string())));
    let mut s = match res {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(Ok(info)) = with_node(&st, async |n| Ok(NodeInfo::of(n))).await {
        s.node = Some(info);
    }
    reply(Ok(s))
}

/// The address book, with who is connected now.
pub(super) async fn peers(State(st): St) -> Response {
    let res = with_node(&st, async |n| {
        let book = n.known_peers().await.map_err(OpError::from)?;
        let own = n.listen_addrs();
        let connected = n.connected_peers();
        Ok(book
            .iter()
            .map(|p| peer_view(PeerInfo::of(p), &own, &connected))
            .collect::<Vec<_>>())
    })
    .await;
    match res {
        None => blocking(&st, |l| l.peers()).await,
        Some(r) => reply(r),
    }
}
