//! Errors of the networking layer.
//!
//! A peer's protocol faults are not errors here: the engine bans the peer
//! and reports [`crate::NodeEvent::PeerBanned`]. These variants stop an
//! operation (a dial, a one-shot sync, starting a node).

use std::path::PathBuf;
use std::time::Duration;

use kappadb_core::StoreError;
use libp2p::{Multiaddr, PeerId};

/// An error from the node or a one-shot sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport handshake failed because the peer uses another
    /// network key (libp2p pnet).
    #[error(
        "the peer is not in this network: {addr} uses a different network key (join its network with an invite from it)"
    )]
    NotInNetwork {
        /// The address dialed.
        addr: Multiaddr,
    },
    /// The peer could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The address dialed.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// An address that cannot be used.
    #[error("invalid address {addr}: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// A sync did not finish in time.
    #[error(
        "the sync did not finish within {after:?} (entries stored so far are kept; run it again to resume)"
    )]
    Timeout {
        /// The time allowed.
        after: Duration,
    },
    /// The peer closed the connection before the sync finished.
    #[error("peer {peer} closed the connection before the sync finished")]
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// The peer broke the protocol and was banned.
    #[error("peer {peer} was banned: {reason}")]
    Banned {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the node (address book, block list) could not be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// libp2p could not be set up.
    #[error("cannot set up the network stack: {0}")]
    Setup(String),
    /// The node has stopped (shut down or failed).
    #[error("the node has stopped")]
    Stopped,
}
