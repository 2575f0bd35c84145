//! Hostile gossip over real libp2p: a peer of the network that floods
//! announcements, or announces an invalid fork proof, is banned, and the
//! node keeps syncing with honest peers.

use std::time::Duration;

use futures::StreamExt;
use kappadb_core::{CreateOptions, Db, NetworkKey, SigningKey, UncheckedForkProof};
use kappadb_net::behaviour::{SyncCodec, build_transport, gossip_topic, identity_keypair};
use kappadb_net::protocol::{
    Announce, HeadInfo, Heads, Limits, PROTOCOL_V2, Request, Response, encode_announce,
};
use kappadb_net::{Multiaddr, Node, NodeEvent, NodeHandle};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{PeerId, StreamProtocol, Swarm, gossipsub};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(25);

#[derive(NetworkBehaviour)]
struct Evil {
    sync: request_response::Behaviour<SyncCodec>,
    gossipsub: gossipsub::Behaviour,
}

fn db(net: &NetworkKey) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(
        dir.path(),
        CreateOptions {
            network_key: Some(net.clone()),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (dir, db)
}

async fn node(db: &Db) -> NodeHandle {
    Node::builder(db.clone())
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .mdns(false)
        .address_book(false)
        .spawn()
        .await
        .unwrap()
}

/// A swarm of the network that speaks the sync protocol (answering heads
/// requests as an empty, idle peer) and gossips on the network's topic.
fn evil_swarm(net: &NetworkKey, seed: u8) -> (Swarm<Evil>, PeerId) {
    let kp = identity_keypair(&SigningKey::from_seed([seed; 32]));
    let id = kp.public().to_peer_id();
    let sync = request_response::Behaviour::with_codec(
        SyncCodec::new(Limits::default()),
        [(StreamProtocol::new(PROTOCOL_V2), ProtocolSupport::Full)],
        request_response::Config::default(),
    );
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(kp.clone()), config)
            .unwrap();
    gossipsub.subscribe(&gossip_topic(net)).unwrap();
    let swarm = Swarm::new(
        build_transport(&kp, net).unwrap(),
        Evil { sync, gossipsub },
        id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    (swarm, id)
}

/// Drive the evil swarm: answer requests, and once the node subscribed to
/// the topic, publish what `next` gives until it gives nothing. Ends when
/// the node bans the evil peer, or fails after [`WAIT`].
async fn run_evil(
    mut evil: Swarm<Evil>,
    evil_id: PeerId,
    target: Multiaddr,
    events: &mut broadcast::Receiver<NodeEvent>,
    net: &NetworkKey,
    mut next: impl FnMut() -> Option<Vec<u8>>,
) -> String {
    evil.dial(target).unwrap();
    let topic = gossip_topic(net);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut publishing = false;
    loop {
        if publishing {
            for _ in 0..50 {
                match next() {
                    Some(bytes) => {
                        let _ = evil.behaviour_mut().gossipsub.publish(topic.clone(), bytes);
                    }
                    None => publishing = false,
                }
            }
        }
        tokio::select! {
            ev = evil.select_next_some() => match ev {
                SwarmEvent::Behaviour(EvilEvent::Sync(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                })) => {
                    let response = match request {
                        Request::Heads(_) => Response::Heads(Heads {
                            idle: true,
                            serial: 1,
                            ..Heads::default()
                        }),
                        _ => Response::Refused("no".into()),
                    };
                    let _ = evil.behaviour_mut().sync.send_response(channel, response);
                }
                SwarmEvent::Behaviour(EvilEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
                    publishing = true;
                }
                _ => {}
            },
            ev = events.recv() => {
                if let Ok(NodeEvent::PeerBanned { peer, reason }) = ev
                    && peer == evil_id
                {
                    return reason;
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("the evil peer was never banned"),
            _ = tokio::time::sleep(Duration::from_millis(5)), if publishing => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_announcements_is_banned() {
    let net = NetworkKey::from_bytes([21; 32]);
    let (_d, a) = db(&net);
    let na = node(&a).await;
    let mut events = na.events();
    let (evil, evil_id) = evil_swarm(&net, 0xe1);
    let mut n = 0u64;
    let reason = run_evil(
        evil,
        evil_id,
        na.listen_addrs()[0].clone(),
        &mut events,
        &net,
        || {
            n += 1;
            let announce = Announce {
                heads: vec![HeadInfo {
                    feed: kappadb_core::FeedId([3; 32]),
                    seq: n,
                    id: kappadb_core::EntryId([n as u8; 32]),
                }],
                forks: vec![],
            };
            Some(encode_announce(&announce))
        },
    )
    .await;
    assert!(reason.contains("flooded"), "{reason}");
    assert!(n < 2000, "banned after {n} announcements");

    // An honest peer still syncs with the node.
    let (_d2, b) = db(&net);
    b.append(b"still here".to_vec()).unwrap();
    let summary = kappadb_net::sync_once(b.clone(), na.listen_addrs()[0].clone(), WAIT)
        .await
        .unwrap();
    assert_eq!((summary.pulled, summary.pushed_estimate), (0, 1));
    assert_eq!(a.head(&b.feed_id()).map(|h| h.seq), Some(1));
    na.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_invalid_fork_proof_bans_its_publisher() {
    let net = NetworkKey::from_bytes([22; 32]);
    let (_d, a) = db(&net);
    let na = node(&a).await;
    let mut events = na.events();
    let (evil, evil_id) = evil_swarm(&net, 0xe2);
    // The "proof": one entry twice.
    let e = kappadb_core::test_utils::TestPeer::new(5).make(1, b"x".to_vec());
    let bogus = UncheckedForkProof {
        a: e.signed_header(),
        b: e.signed_header(),
    };
    let mut sent = false;
    let reason = run_evil(
        evil,
        evil_id,
        na.listen_addrs()[0].clone(),
        &mut events,
        &net,
        || {
            if sent {
                return None;
            }
            sent = true;
            Some(encode_announce(&Announce {
                heads: vec![],
                forks: vec![bogus.clone()],
            }))
        },
    )
    .await;
    assert!(reason.contains("invalid fork proof"), "{reason}");
    assert!(
        a.fork(&e.header.author).is_none(),
        "nothing of it is stored"
    );
    na.shutdown().await;
}
