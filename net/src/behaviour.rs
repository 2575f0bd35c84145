//! The libp2p glue: identity, transport, the request-response codec and
//! the combined network behaviour.
//!
//! Transport: TCP, then libp2p pnet with the database's network key, then
//! a 16-byte check inside the pnet stream (so a wrong key fails at once
//! with [`HandshakeError::NotInNetwork`] instead of as garbled noise),
//! then Noise (authenticated with the feed key) and Yamux.
//!
//! Identity: the libp2p keypair is the ed25519 feed key, so a `PeerId`
//! names a feed ([`feed_of_peer`], [`peer_of_feed`]).
//!
//! Behaviour: request-response on [`PROTOCOL_NAME`] with [`SyncCodec`]
//! (big-endian `u32` length, then postcard; frames over the limit end the
//! stream before they are read), gossipsub for head announcements on
//! [`gossip_topic`], identify, ping and (optionally) mDNS.
//!
//! ```
//! use kappadb_core::SigningKey;
//! use kappadb_net::behaviour::{feed_of_peer, identity_keypair, peer_of_feed};
//! let key = SigningKey::from_seed([3; 32]);
//! let peer = identity_keypair(&key).public().to_peer_id();
//! assert_eq!(feed_of_peer(&peer), Some(key.feed_id()));
//! assert_eq!(peer_of_feed(&key.feed_id()), Some(peer));
//! ```

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use kappadb_core::{FeedId, NetworkKey, SigningKey};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PnetError, PnetOutput, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{PeerId, StreamProtocol, Transport, gossipsub, identify, mdns, noise, ping};
use libp2p::{connection_limits, request_response, tcp, yamux};

use crate::admission::PendingPerIp;
use crate::error::NetError;
use crate::protocol::{
    Limits, PROTOCOL_NAME, PROTOCOL_V1, PROTOCOL_V2, Request, Response, decode_request,
    decode_response, encode_request, encode_response,
};

/// The identify protocol version string of kappadb nodes.
pub const IDENTIFY_VERSION: &str = "/kappadb/1.0.0";

/// Largest gossip message.
pub const MAX_GOSSIP_BYTES: usize = 1024 * 1024;

/// Bytes each side sends first inside the pnet stream. Decrypted with the
/// wrong key they come out as noise.
const PNET_CHECK: &[u8; 16] = b"kappadb-pnet/v1\n";

/// The libp2p keypair of a feed key (the same ed25519 secret).
pub fn identity_keypair(key: &SigningKey) -> Keypair {
    let mut seed = key.to_seed();
    // 32 bytes are always a valid ed25519 secret key.
    match Keypair::ed25519_from_bytes(&mut seed) {
        Ok(kp) => kp,
        Err(_) => unreachable_keypair(),
    }
}

#[cold]
fn unreachable_keypair() -> Keypair {
    // Only reachable if libp2p starts refusing 32-byte secrets.
    Keypair::generate_ed25519()
}

/// The feed a peer id names, if it is an ed25519 peer id.
pub fn feed_of_peer(peer: &PeerId) -> Option<FeedId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        // Not an inline (identity-hashed) key: not an ed25519 peer.
        return None;
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    Some(FeedId(ed.to_bytes()))
}

/// The peer id of a feed's author.
pub fn peer_of_feed(feed: &FeedId) -> Option<PeerId> {
    let ed = libp2p::identity::ed25519::PublicKey::try_from_bytes(feed.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(ed).to_peer_id())
}

/// The gossipsub topic of a network: derived from its public tag, so it
/// says nothing about the key.
pub fn gossip_topic(network: &NetworkKey) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!(
        "kappadb/heads/v1/{}",
        kappadb_core::keys::hex(&network.public_tag())
    ))
}

/// Why a connection failed before Noise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The pnet check did not decrypt: the peer has another network key.
    #[error("the peer is not in this network")]
    NotInNetwork,
    /// The pnet nonce exchange failed.
    #[error("pnet handshake failed: {0}")]
    Pnet(#[from] PnetError),
    /// Reading or writing the check failed.
    #[error("pnet check failed: {0}")]
    Io(#[from] io::Error),
}

async fn pnet_handshake<S>(socket: S, psk: PreSharedKey) -> Result<PnetOutput<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut out = PnetConfig::new(psk).handshake(socket).await?;
    out.write_all(PNET_CHECK).await?;
    out.flush().await?;
    let mut got = [0u8; 16];
    out.read_exact(&mut got).await?;
    if &got != PNET_CHECK {
        return Err(HandshakeError::NotInNetwork);
    }
    Ok(out)
}

/// TCP + pnet (+ check) + Noise + Yamux, with a 20 s handshake timeout.
pub fn build_transport(
    keypair: &Keypair,
    network: &NetworkKey,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let psk = PreSharedKey::new(*network.as_bytes());
    let noise = noise::Config::new(keypair).map_err(|e| NetError::Setup(e.to_string()))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(tcp
        .and_then(move |socket, _| pnet_handshake(socket, psk))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .boxed())
}

/// True if a dial or listen error comes from a peer with another network
/// key.
pub fn is_not_in_network(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if matches!(
            e.downcast_ref::<HandshakeError>(),
            Some(HandshakeError::NotInNetwork)
        ) {
            return true;
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && is_not_in_network(inner)
        {
            return true;
        }
        cur = e.source();
    }
    // Some wrappers (`Either`) hide their inner error from `source`; their
    // debug output does not.
    format!("{err:?}").contains("NotInNetwork")
}

/// The postcard codec of the sync protocol: a big-endian `u32` length,
/// then the message. A length over the limit or bytes that do not decode
/// fail the stream with [`io::ErrorKind::InvalidData`].
#[derive(Clone, Debug)]
pub struct SyncCodec {
    limits: Limits,
}

impl SyncCodec {
    /// A codec enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The version number of a negotiated sync protocol name.
fn version(protocol: &StreamProtocol) -> u8 {
    match protocol.as_ref() {
        PROTOCOL_V1 => 1,
        PROTOCOL_V2 => 2,
        _ => 3,
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(format!(
            "message of {len} bytes is over the limit of {max} bytes"
        )));
    }
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream ended inside a message",
        ));
    }
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(invalid)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, self.limits.max_message_bytes).await?;
        let req = decode_request(&bytes, &self.limits).map_err(invalid)?;
        // An older version's peer cannot send what it does not know.
        if req.since_version() > version(protocol) {
            return Err(invalid(format!(
                "a version {} request on a {} stream",
                req.since_version(),
                protocol.as_ref()
            )));
        }
        Ok(req)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, self.limits.max_message_bytes).await?;
        decode_response(&bytes, &self.limits).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        // The peer speaks an older version: the engine falls back (a
        // reconciliation becomes the plain heads exchange).
        if req.since_version() > version(protocol) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the peer speaks only {}", protocol.as_ref()),
            ));
        }
        let bytes = encode_request(&req);
        write_frame(io, bytes).await
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let res = if protocol.as_ref() == PROTOCOL_V1 {
            res.for_v1()
        } else {
            res
        };
        let bytes = encode_response(&res);
        write_frame(io, bytes).await
    }
}

/// Caps on connections, so that many of them (idle, slow or hostile)
/// cannot exhaust the node's memory or crowd out honest peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimitsConfig {
    /// Inbound connections in the handshake at once, in all.
    pub max_pending_incoming: u32,
    /// Inbound connections in the handshake at once from one remote IP
    /// address (see [`crate::admission`]).
    pub max_pending_incoming_per_ip: u32,
    /// Established inbound connections.
    pub max_established_incoming: u32,
    /// Established connections, both directions.
    pub max_established: u32,
    /// Established connections with one peer.
    pub max_established_per_peer: u32,
}

impl Default for ConnectionLimitsConfig {
    fn default() -> Self {
        Self {
            max_pending_incoming: 256,
            max_pending_incoming_per_ip: 8,
            max_established_incoming: 256,
            max_established: 512,
            max_established_per_peer: 4,
        }
    }
}

/// Settings of [`Behaviour`].
#[derive(Clone, Debug)]
pub(crate) struct BehaviourConfig {
    pub(crate) limits: Limits,
    pub(crate) request_timeout: Duration,
    pub(crate) mdns: Option<Duration>,
    pub(crate) connections: ConnectionLimitsConfig,
    /// Speak version 3 (heads reconciliation).
    pub(crate) reconcile: bool,
}

/// Everything a kappadb node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // The limits come first: a connection they refuse costs the other
    // behaviours nothing.
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) pending_per_ip: PendingPerIp,
    pub(crate) sync: request_response::Behaviour<SyncCodec>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub(crate) fn new(keypair: &Keypair, config: &BehaviourConfig) -> Result<Self, NetError> {
        let peer_id = keypair.public().to_peer_id();
        // The newest first: both sides use the first they share. Without
        // reconciliation the node speaks as a version 2 node did.
        let newest: &[&'static str] = if config.reconcile {
            &[PROTOCOL_NAME, PROTOCOL_V2, PROTOCOL_V1]
        } else {
            &[PROTOCOL_V2, PROTOCOL_V1]
        };
        let sync = request_response::Behaviour::with_codec(
            SyncCodec::new(config.limits.clone()),
            newest.iter().map(|name| {
                (
                    StreamProtocol::new(name),
                    request_response::ProtocolSupport::Full,
                )
            }),
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(64),
        );
        // Messages are forwarded only once the node accepts them
        // (`report_message_validation_result`): a flood is not passed on.
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_BYTES)
            .heartbeat_interval(Duration::from_secs(1))
            .build()
            .map_err(|e| NetError::Setup(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Setup(e.to_string()))?;
        let identify = identify::Behaviour::new(identify::Config::new(
            IDENTIFY_VERSION.to_string(),
            keypair.public(),
        ));
        let ping = ping::Behaviour::new(ping::Config::new());
        let mdns = match config.mdns {
            Some(interval) => {
                let cfg = mdns::Config {
                    query_interval: interval,
                    ..mdns::Config::default()
                };
                match mdns::tokio::Behaviour::new(cfg, peer_id) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS is unavailable; LAN discovery is off");
                        None
                    }
                }
            }
            None => None,
        };
        let c = &config.connections;
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(c.max_pending_incoming))
                .with_max_established_incoming(Some(c.max_established_incoming))
                .with_max_established(Some(c.max_established))
                .with_max_established_per_peer(Some(c.max_established_per_peer)),
        );
        Ok(Self {
            limits,
            pending_per_ip: PendingPerIp::new(c.max_pending_incoming_per_ip),
            sync,
            gossipsub,
            identify,
            ping,
            mdns: Toggle::from(mdns),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use request_response::Codec;

    #[test]
    fn peer_and_feed_ids_map_both_ways() {
        for seed in 0..8u8 {
            let key = SigningKey::from_seed([seed; 32]);
            let peer = identity_keypair(&key).public().to_peer_id();
            assert_eq!(feed_of_peer(&peer), Some(key.feed_id()));
            assert_eq!(peer_of_feed(&key.feed_id()), Some(peer));
        }
    }

    #[tokio::test]
    async fn a_reconciliation_never_goes_to_an_older_version() {
        use crate::protocol::Reconcile;
        use crate::protocol::reconcile::{HeadSet, Reconciler};
        let req = Request::Reconcile(Reconcile {
            first: true,
            message: Reconciler::new(HeadSet::new([])).start(),
        });
        let mut codec = SyncCodec::new(Limits::default());
        let v3 = StreamProtocol::new(PROTOCOL_NAME);
        let mut out = Cursor::new(Vec::new());
        codec
            .write_request(&v3, &mut out, req.clone())
            .await
            .unwrap();
        let bytes = out.into_inner();
        let back = codec
            .read_request(&v3, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(back, req);
        for old in [PROTOCOL_V2, PROTOCOL_V1] {
            let proto = StreamProtocol::new(old);
            let err = codec
                .write_request(&proto, &mut Cursor::new(Vec::new()), req.clone())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported);
            let err = codec
                .read_request(&proto, &mut Cursor::new(bytes.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn a_version_1_peer_gets_erased_entries_as_absent() {
        use kappadb_core::Payload;
        let mut peer = kappadb_core::test_utils::TestPeer::new(4);
        let mut e = peer.make(1, b"gone".to_vec());
        e.payload = Payload::Erased;
        let page = Response::Page(crate::protocol::Page {
            feed: e.header.author,
            entries: vec![e],
        });
        let mut codec = SyncCodec::new(Limits::default());
        for (name, expect) in [
            (PROTOCOL_NAME, Payload::Erased),
            (PROTOCOL_V1, Payload::Absent),
        ] {
            let proto = StreamProtocol::new(name);
            let mut out = Cursor::new(Vec::new());
            codec
                .write_response(&proto, &mut out, page.clone())
                .await
                .unwrap();
            let back = codec
                .read_response(&proto, &mut Cursor::new(out.into_inner()))
                .await
                .unwrap();
            let Response::Page(p) = back else {
                panic!("not a page")
            };
            assert_eq!(p.entries[0].payload, expect, "{name}");
        }
    }

    #[tokio::test]
    async fn codec_refuses_oversized_and_garbage_frames() {
        let limits = Limits {
            max_message_bytes: 1000,
            ..Limits::default()
        };
        let mut codec = SyncCodec::new(limits);
        let proto = StreamProtocol::new(PROTOCOL_NAME);
        // Oversized: refused from the length alone.
        let mut frame = 5000u32.to_be_bytes().to_vec();
        frame.extend(vec![0u8; 5000]);
        let err = codec
            .read_request(&proto, &mut Cursor::new(frame))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Garbage.
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend([0xff, 0xff, 0xff, 0xff]);
        let err = codec
            .read_response(&proto, &mut Cursor::new(frame))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Truncated.
        let mut frame = 40u32.to_be_bytes().to_vec();
        frame.extend([0u8; 3]);
        assert!(
            codec
                .read_response(&proto, &mut Cursor::new(frame))
                .await
                .is_err()
        );
        // A good one round-trips.
        let mut buf = Cursor::new(Vec::new());
        let req = Request::ForkProofs(vec![FeedId([1; 32])]);
        codec
            .write_request(&proto, &mut buf, req.clone())
            .await
            .unwrap();
        buf.set_position(0);
        assert_eq!(codec.read_request(&proto, &mut buf).await.unwrap(), req);
    }
}
