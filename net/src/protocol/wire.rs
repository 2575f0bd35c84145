//! The sync protocol's messages and their encoding: the wire stability
//! boundary of `kappadb-net`.
//!
//! Every message is one postcard value. A transport frames it (the libp2p
//! codec prefixes a big-endian `u32` length) and refuses frames over
//! [`Limits::max_message_bytes`] before reading them; [`decode_request`] and
//! [`decode_response`] refuse trailing bytes. Nothing here panics on bytes
//! from a peer: every failure is a [`WireError`].
//!
//! ```text
//! Request::Heads(Heads)          -> Response::Heads(Heads{idle flag only})
//! Request::Want(Want)            -> Response::Page(Page)
//! Request::ForkProofs(Vec<FeedId>) -> Response::ForkProofs(Vec<UncheckedForkProof>)
//! Request::Reconcile(Reconcile)  -> Response::Reconcile(Message)   (version 3)
//! gossip: Announce { heads, forks }
//! ```
//!
//! The protocol version is part of the libp2p protocol name
//! ([`PROTOCOL_NAME`]); a new version gets a new name. New messages are
//! new enum variants at the end, so an older version's messages encode
//! the same in a newer one; a driver never sends a newer message on a
//! stream negotiated for an older version ([`Request::since_version`]).
//!
//! ```
//! use kappadb_net::protocol::{Request, Want, decode_request, encode_request, Limits};
//! use kappadb_core::FeedId;
//! let req = Request::Want(Want { feed: FeedId([1; 32]), from_seq: 1, to_seq: 512 });
//! let bytes = encode_request(&req);
//! assert_eq!(decode_request(&bytes, &Limits::default()).unwrap(), req);
//! ```

use kappadb_core::{Entry, EntryId, FeedId, Payload, UncheckedForkProof};
use serde::{Deserialize, Serialize};

use super::reconcile::Message;

/// The libp2p protocol name of the sync protocol, version 3: version 2
/// plus the heads reconciliation ([`Request::Reconcile`]), with which a
/// connection's first heads exchange costs what differs.
pub const PROTOCOL_NAME: &str = "/kappadb/sync/3";

/// Version 2 of the sync protocol: version 1 plus erased entries (an
/// entry's payload may be `Payload::Erased`). Still spoken, with the plain
/// heads exchange, to peers that know no newer version.
pub const PROTOCOL_V2: &str = "/kappadb/sync/2";

/// Version 1 of the sync protocol, still spoken to peers that know no
/// other: the same messages, but an erased entry goes out as one whose
/// payload is not held, which a version 1 peer understands.
pub const PROTOCOL_V1: &str = "/kappadb/sync/1";

/// Default number of entries in one page.
pub const MAX_PAGE_ENTRIES: u64 = 512;

/// Default byte budget of one page (a single entry may exceed it).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most heads carried by one [`Heads`] or [`Announce`] message.
pub const MAX_HEADS_PER_MESSAGE: usize = 4096;

/// Most fork proofs asked for or carried by one message.
pub const MAX_FORK_PROOFS_PER_MESSAGE: usize = 256;

/// Most heads a node puts in one gossip [`Announce`].
pub const MAX_HEADS_PER_ANNOUNCE: usize = MAX_HEADS_PER_MESSAGE / 4;

/// Most fork proofs one [`Announce`] may carry. An announcement with more
/// is not one an honest node sends, and gets its publisher banned.
pub const MAX_FORK_PROOFS_PER_ANNOUNCE: usize = 16;

/// Room for everything in a message besides entries.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Size limits of the protocol. Both sides use the defaults; a database
/// with a payload limit over [`MAX_PAGE_BYTES`] raises `max_message_bytes`
/// so that one such entry still fits in a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most entries in one page.
    pub page_entries: u64,
    /// Byte budget of a page of more than one entry, by [`entry_wire_size`].
    pub page_bytes: usize,
    /// Largest encoded message accepted.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            page_entries: MAX_PAGE_ENTRIES,
            page_bytes: MAX_PAGE_BYTES,
            max_message_bytes: MAX_PAGE_BYTES + MESSAGE_OVERHEAD,
        }
    }
}

impl Limits {
    /// The defaults, with room for one entry of `max_payload` bytes.
    pub fn for_payload_limit(max_payload: u32) -> Self {
        let mut limits = Self::default();
        let one_entry = max_payload as usize + MESSAGE_OVERHEAD;
        limits.max_message_bytes = limits.max_message_bytes.max(one_entry);
        limits
    }
}

/// An upper bound on the encoded size of an entry, used for page budgets
/// on both sides.
pub fn entry_wire_size(entry: &Entry) -> usize {
    // Header (at most ~130 bytes), signature (64), option tag and length.
    256 + entry.payload.bytes().map_or(0, <[u8]>::len)
}

/// One feed's head as a peer holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// The feed.
    pub feed: FeedId,
    /// Its length (seq of the newest entry held).
    pub seq: u64,
    /// Id of the newest entry held.
    pub id: EntryId,
}

/// What the sender holds. After the first message of a connection, only
/// the feeds that changed since the sender last told this peer. As the
/// answer to a heads request it carries no heads, only `idle` and
/// `serial`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    /// Feed heads (at most [`MAX_HEADS_PER_MESSAGE`]).
    pub heads: Vec<HeadInfo>,
    /// Feeds the sender knows to be forked, with the fork's seq.
    pub forks: Vec<(FeedId, u64)>,
    /// True if the sender holds everything the receiver announced to it.
    pub idle: bool,
    /// True if more heads follow in another message.
    pub more: bool,
    /// Counts the heads messages the sender sent this peer on this
    /// connection. Requests and responses travel on different streams and
    /// may arrive out of order: `idle` is taken from the highest only.
    pub serial: u64,
}

/// A request for the entries `from_seq..=to_seq` of a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Want {
    /// The feed.
    pub feed: FeedId,
    /// First seq wanted (1-based).
    pub from_seq: u64,
    /// Last seq wanted.
    pub to_seq: u64,
}

impl Want {
    /// How many entries the range covers.
    pub fn len(&self) -> u64 {
        self.to_seq.saturating_sub(self.from_seq).saturating_add(1)
    }

    /// True if the range is empty or malformed (`to_seq < from_seq`).
    pub fn is_empty(&self) -> bool {
        self.to_seq < self.from_seq || self.from_seq == 0
    }
}

/// Entries of one feed, consecutive from the wanted `from_seq`. Fewer than
/// asked means the rest did not fit; none means the sender does not hold
/// the range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The feed.
    pub feed: FeedId,
    /// The entries, in seq order.
    pub entries: Vec<Entry>,
}

/// One step of a heads reconciliation started by the sender (see
/// [`super::reconcile`]): the answer is the receiver's next message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    /// True for the first message: the receiver starts a new
    /// reconciliation from its current heads, dropping any earlier one.
    pub first: bool,
    /// The sender's message.
    pub message: Message,
}

/// A request from one peer to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The sender's heads; the answer is the receiver's.
    Heads(Heads),
    /// Entries of a feed; the answer is a [`Page`].
    Want(Want),
    /// Fork proofs of these feeds.
    ForkProofs(Vec<FeedId>),
    /// A step of a heads reconciliation (version 3).
    Reconcile(Reconcile),
}

impl Request {
    /// The first protocol version that has this request (1, 2 or 3).
    pub fn since_version(&self) -> u8 {
        match self {
            Request::Heads(_) | Request::Want(_) | Request::ForkProofs(_) => 1,
            Request::Reconcile(_) => 3,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Heads`].
    Heads(Heads),
    /// The answer to [`Request::Want`].
    Page(Page),
    /// The answer to [`Request::ForkProofs`] (checked by the receiver).
    ForkProofs(Vec<UncheckedForkProof>),
    /// The request was refused (with a short reason).
    Refused(String),
    /// The answer to [`Request::Reconcile`] (version 3).
    Reconcile(Message),
}

/// A gossip announcement: heads that moved at the publisher, and fork
/// proofs it learned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Heads that moved (at most [`MAX_HEADS_PER_MESSAGE`]).
    pub heads: Vec<HeadInfo>,
    /// Fork proofs (at most [`MAX_FORK_PROOFS_PER_ANNOUNCE`]; checked by
    /// the receiver).
    pub forks: Vec<UncheckedForkProof>,
}

impl Response {
    /// This response as a peer speaking version 1 of the protocol can
    /// read it: erased payloads become absent ones.
    pub fn for_v1(self) -> Response {
        match self {
            Response::Page(mut page) => {
                for e in &mut page.entries {
                    if e.payload.is_erased() {
                        e.payload = Payload::Absent;
                    }
                }
                Response::Page(page)
            }
            other => other,
        }
    }
}

/// Bytes that are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message is longer than the limit.
    #[error("message of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes do not decode as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limits: &Limits) -> Result<T, WireError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// Encode a request.
pub fn encode_request(req: &Request) -> Vec<u8> {
    encode(req)
}

/// Decode a request, refusing oversized or malformed bytes.
pub fn decode_request(bytes: &[u8], limits: &Limits) -> Result<Request, WireError> {
    decode(bytes, limits)
}

/// Encode a response.
pub fn encode_response(res: &Response) -> Vec<u8> {
    encode(res)
}

/// Decode a response, refusing oversized or malformed bytes.
pub fn decode_response(bytes: &[u8], limits: &Limits) -> Result<Response, WireError> {
    decode(bytes, limits)
}

/// Encode a gossip announcement.
pub fn encode_announce(announce: &Announce) -> Vec<u8> {
    encode(announce)
}

/// Decode a gossip announcement.
pub fn decode_announce(bytes: &[u8], limits: &Limits) -> Result<Announce, WireError> {
    decode(bytes, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappadb_core::test_utils::TestPeer;

    #[test]
    fn messages_round_trip() {
        let mut peer = TestPeer::new(1);
        let e1 = peer.make(1, b"one".to_vec());
        let e2 = peer.make(2, b"two".to_vec());
        let limits = Limits::default();
        let res = Response::Page(Page {
            feed: e1.header.author,
            entries: vec![e1.clone(), e2.clone()],
        });
        assert_eq!(
            decode_response(&encode_response(&res), &limits).unwrap(),
            res
        );
        let req = Request::Heads(Heads {
            heads: vec![HeadInfo {
                feed: e2.header.author,
                seq: 2,
                id: e2.id(),
            }],
            forks: vec![],
            idle: true,
            more: false,
            serial: 3,
        });
        assert_eq!(decode_request(&encode_request(&req), &limits).unwrap(), req);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let limits = Limits::default();
        for bytes in [
            &[][..],
            &[0xff; 7][..],
            &[9, 1, 2, 3][..],
            &[
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
        ] {
            assert!(decode_request(bytes, &limits).is_err(), "{bytes:?}");
            assert!(decode_response(bytes, &limits).is_err(), "{bytes:?}");
        }
        let mut bytes = encode_request(&Request::ForkProofs(vec![]));
        bytes.push(0);
        assert!(matches!(
            decode_request(&bytes, &limits),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_message_is_refused_before_decoding() {
        let limits = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        let bytes = encode_request(&Request::ForkProofs(vec![FeedId([0; 32])]));
        assert!(matches!(
            decode_request(&bytes, &limits),
            Err(WireError::TooLarge { .. })
        ));
    }
}
