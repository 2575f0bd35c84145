//! kappadb-net: keep kappadb databases in sync over a network.
//!
//! Peers of one network (one network key) find each other (mDNS on the
//! LAN, explicit addresses, an address book of peers seen before), exchange
//! the heads of every feed they hold, pull what they miss in bounded pages
//! and announce new heads by gossip. Every page is validated and stored
//! all or nothing; a peer that sends an invalid page is banned for a while.
//!
//! - [`protocol`]: the sync protocol as a transport-independent state
//!   machine ([`protocol::Engine`]) and its wire messages. No libp2p.
//! - [`behaviour`]: the libp2p glue: TCP + pnet + Noise + Yamux,
//!   request-response with a postcard codec, gossipsub, identify, ping,
//!   mDNS.
//! - [`node`]: the tokio node ([`Node::builder`]) and [`sync_once`].
//! - [`peers`], [`blocklist`]: the address book (`peers.json`) and the
//!   block list (`blocked.json`) in the database directory.
//! - [`subscription`]: [`Subscription`] (and [`tail_stream`]), the async
//!   counterpart of `Db::tail`: the log's records, then each new one as it
//!   becomes durable, without blocking the runtime.
//!
//! `kappadb-net` depends on `kappadb-core` only, never on `kappadb-views`.
//!
//! Following the log from a tokio app (entries appended here or pulled
//! from peers alike):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use kappadb_core::{CreateOptions, Db};
//! use kappadb_net::Subscription;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open_or_create(dir.path(), CreateOptions::default()).unwrap();
//! db.append(b"before".to_vec()).unwrap();
//!
//! let mut sub = Subscription::new(db.clone(), 0);
//! let rec = sub.next().await.unwrap().unwrap();
//! assert_eq!(rec.entry().unwrap().payload.bytes(), Some(&b"before"[..]));
//!
//! // An append fsyncs: keep it off the async threads too.
//! tokio::task::spawn_blocking(move || db.append(b"after".to_vec()));
//! let rec = sub.next().await.unwrap().unwrap();
//! assert_eq!(rec.entry().unwrap().payload.bytes(), Some(&b"after"[..]));
//! // Where to resume after a restart: `Subscription::new(db, offset)`.
//! println!("next offset {}", sub.offset());
//! # }
//! ```
//!
//! Syncing (needs peers, so not run here):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kappadb_core::Db;
//! use kappadb_net::{Node, sync_once};
//!
//! let db = Db::open("my.kappa".as_ref())?;
//! // One-shot: sync with a peer until neither side misses anything.
//! let summary = sync_once(db.clone(), "/ip4/192.168.1.20/tcp/4747".parse()?, Duration::from_secs(60)).await?;
//! println!("pulled {} entries", summary.pulled);
//!
//! // Long-running: listen, discover, sync continuously.
//! let node = Node::builder(db).listen("/ip4/0.0.0.0/tcp/4747".parse()?).spawn().await?;
//! println!("listening on {:?}", node.listen_addrs());
//! node.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]

pub mod admission;
pub mod behaviour;
pub mod blocklist;
pub mod error;
pub mod invite;
pub mod node;
pub mod peers;
pub mod policy;
pub mod protocol;
pub mod subscription;

#[cfg(any(test, feature = "test_utils"))]
pub mod test_utils;

pub use behaviour::ConnectionLimitsConfig;
pub use error::NetError;
pub use invite::Invite;
pub use libp2p::{Multiaddr, PeerId, multiaddr};
pub use node::{
    DEFAULT_PORT, Node, NodeBuilder, NodeConfig, NodeEvent, NodeHandle, SyncSummary,
    default_listen_addr, sync_once,
};
pub use protocol::{SyncConfig, SyncStats};
pub use subscription::{Subscription, tail_stream};
