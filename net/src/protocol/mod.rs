//! The sync protocol, independent of any transport: its messages
//! ([`wire`]) and the [`Engine`] that drives every peer session of a node
//! ([`engine`]), over a [`SyncStore`] ([`store`]). No libp2p here; the node in [`crate::node`] carries the
//! messages over libp2p request-response and gossipsub, and the tests carry
//! them over channels (`test_utils::Pair`, feature `test_utils`).
//!
//! ```text
//! A (smaller key)                     B
//! Reconcile{first, fingerprint} ----> compare with its own heads
//! Reconcile{split, items} <---------- fingerprints of the parts, or heads
//! ... a few rounds, then a settled message: each knows what differs
//! Heads{changed, idle} -------------> (and B's Heads{changed, idle} to A)
//! Want{feed, from, to} x4 ----------> read from the log
//! check + ingest_page <-------------- Page{entries}
//! Heads{changed, idle: true} -------> both idle: SyncEvent::Idle
//!        (every heads request is answered with the responder's idle flag;
//!         with an older peer the first Heads carry every head instead)
//! ```

pub mod engine;
pub mod follow;
pub mod reconcile;
pub mod store;
pub mod wire;

pub use engine::{
    ConfigError, ENTRY_OVERHEAD, Engine, Input, Output, PeerKey, SyncConfig, SyncError, SyncEvent,
    SyncStats, check_page, check_proofs, receive, receive_announce,
};
pub use follow::Follow;
pub use store::SyncStore;
pub use wire::{
    Announce, HeadInfo, Heads, Limits, MAX_FORK_PROOFS_PER_ANNOUNCE, MAX_FORK_PROOFS_PER_MESSAGE,
    MAX_HEADS_PER_ANNOUNCE, MAX_HEADS_PER_MESSAGE, MAX_PAGE_BYTES, MAX_PAGE_ENTRIES, PROTOCOL_NAME,
    PROTOCOL_V1, PROTOCOL_V2, Page, Reconcile, Request, Response, Want, WireError, decode_announce,
    decode_request, decode_response, encode_announce, encode_request, encode_response,
    entry_wire_size,
};
