//! Admission of inbound connections: a cap on how many connections one
//! remote IP address may have in the handshake at once.
//!
//! libp2p's `connection_limits` caps pending and established connections
//! in total and per peer, but a connection has no peer id until its
//! handshake is done: one host that opens hundreds of TCP connections and
//! then sends nothing would fill the node's pending slots until each
//! handshake times out, and an honest peer would find no room. This
//! behaviour counts pending inbound connections per remote IP and refuses
//! new ones from an address over its share, so the host only crowds out
//! itself. Loopback is not exempt: every address is a stranger until its
//! handshake proves it holds the network key.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Refusal of an inbound connection: its address has too many handshakes
/// in flight.
#[derive(Debug)]
pub struct TooManyPending {
    /// The remote address.
    pub ip: IpAddr,
    /// The cap it reached.
    pub limit: u32,
}

impl fmt::Display for TooManyPending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} already has {} inbound connections in the handshake",
            self.ip, self.limit
        )
    }
}

impl std::error::Error for TooManyPending {}

/// The per-address cap on pending inbound connections.
pub struct PendingPerIp {
    limit: u32,
    by_connection: HashMap<ConnectionId, IpAddr>,
    by_ip: HashMap<IpAddr, u32>,
}

impl PendingPerIp {
    /// At most `limit` pending inbound connections per remote IP.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            by_connection: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    /// Pending inbound connections from `ip` now.
    pub fn pending(&self, ip: &IpAddr) -> u32 {
        self.by_ip.get(ip).copied().unwrap_or(0)
    }

    fn settle(&mut self, id: ConnectionId) {
        let Some(ip) = self.by_connection.remove(&id) else {
            return;
        };
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

/// The IP address at the start of a multiaddr (`/ip4/..` or `/ip6/..`).
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

impl NetworkBehaviour for PendingPerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote_addr) else {
            return Ok(());
        };
        let n = self.by_ip.entry(ip).or_insert(0);
        if *n >= self.limit {
            return Err(ConnectionDenied::new(TooManyPending {
                ip,
                limit: self.limit,
            }));
        }
        *n += 1;
        self.by_connection.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // The handshake is over: the connection no longer counts as
        // pending (whether or not another behaviour accepts it).
        self.settle(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.settle(e.connection_id),
            FromSwarm::ListenFailure(e) => self.settle(e.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/40000").parse().unwrap()
    }

    #[test]
    fn each_address_gets_its_share_and_no_more() {
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4747".parse().unwrap();
        let mut b = PendingPerIp::new(2);
        let a1 = ConnectionId::new_unchecked(1);
        let a2 = ConnectionId::new_unchecked(2);
        let a3 = ConnectionId::new_unchecked(3);
        let b1 = ConnectionId::new_unchecked(4);
        assert!(
            b.handle_pending_inbound_connection(a1, &local, &remote("10.0.0.1"))
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(a2, &local, &remote("10.0.0.1"))
                .is_ok()
        );
        let denied = b
            .handle_pending_inbound_connection(a3, &local, &remote("10.0.0.1"))
            .unwrap_err();
        let cause = denied.downcast::<TooManyPending>().unwrap();
        assert_eq!(cause.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        // Another address is not affected.
        assert!(
            b.handle_pending_inbound_connection(b1, &local, &remote("10.0.0.2"))
                .is_ok()
        );
        // A finished handshake frees its slot.
        let peer = PeerId::random();
        assert!(
            b.handle_established_inbound_connection(a1, peer, &local, &remote("10.0.0.1"))
                .is_ok()
        );
        assert_eq!(b.pending(&"10.0.0.1".parse().unwrap()), 1);
        assert!(
            b.handle_pending_inbound_connection(a3, &local, &remote("10.0.0.1"))
                .is_ok()
        );
        // Settling twice (established, then the swarm's event) counts once.
        b.settle(a1);
        assert_eq!(b.pending(&"10.0.0.1".parse().unwrap()), 2);
    }
}
