//! Invites: how a new peer learns a network's key and where to find a
//! member.
//!
//! Text form, as `kappa invite` prints it:
//! `kappa-invite-v1:<network key, 64 hex digits>:<multiaddr>,<multiaddr>,…`
//! (the address list may be empty). Anyone holding an invite can join the
//! network, so it is shared privately.

use std::fmt;
use std::path::Path;

use kappadb_core::NetworkKey;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::NetError;
use crate::peers::AddressBook;

/// The text an invite starts with.
pub const INVITE_PREFIX: &str = "kappa-invite-v1";

/// Why a text is not an invite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The prefix or the key is missing or malformed.
    #[error(
        "this is not a kappadb invite (it starts with {INVITE_PREFIX}: and a 64-digit key); ask for a new one with `kappa invite`"
    )]
    NotAnInvite,
    /// One of the addresses does not parse.
    #[error("the invite's address '{addr}' is not a multiaddr ({reason})")]
    BadAddress {
        /// The address as written.
        addr: String,
        /// The parser's reason.
        reason: String,
    },
}

/// An invite: the network key and where the inviter can be reached.
///
/// ```
/// use kappadb_net::invite::Invite;
///
/// let text = format!("kappa-invite-v1:{}:/ip4/127.0.0.1/tcp/4747", "ab".repeat(32));
/// let invite: Invite = text.parse().unwrap();
/// assert_eq!(invite.addrs.len(), 1);
/// assert_eq!(invite.to_string(), text);
/// assert!("kappa-invite-v1:nope:".parse::<Invite>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The network's key.
    pub key: NetworkKey,
    /// Addresses of the inviter, usually ending in `/p2p/PEER`.
    pub addrs: Vec<Multiaddr>,
}

impl std::str::FromStr for Invite {
    type Err = InviteError;

    /// Parse the text form (surrounding whitespace is ignored).
    fn from_str(text: &str) -> Result<Self, InviteError> {
        let mut parts = text.trim().splitn(3, ':');
        if parts.next() != Some(INVITE_PREFIX) {
            return Err(InviteError::NotAnInvite);
        }
        let key = parts
            .next()
            .and_then(NetworkKey::from_hex)
            .ok_or(InviteError::NotAnInvite)?;
        let addrs = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|a| {
                a.parse::<Multiaddr>().map_err(|e| InviteError::BadAddress {
                    addr: a.to_string(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { key, addrs })
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        write!(
            f,
            "{INVITE_PREFIX}:{}:{}",
            self.key.to_hex(),
            addrs.join(",")
        )
    }
}

impl Invite {
    /// Store the invite's addresses that end in `/p2p/PEER` in the address
    /// book of the database in `dir` (`peers.json`), so a node started there
    /// dials them. Addresses without a peer id are skipped: the book is
    /// keyed by peer.
    pub fn remember(&self, dir: &Path) -> Result<(), NetError> {
        let mut book = AddressBook::load(dir);
        for addr in &self.addrs {
            let peer = addr.iter().find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if let Some(peer) = peer {
                let bare: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect();
                book.add_addrs(peer, [bare]);
            }
        }
        book.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let key = "cd".repeat(32);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let text =
            format!("{INVITE_PREFIX}:{key}:/ip4/10.0.0.1/tcp/4747/p2p/{peer},/ip4/10.0.0.2/tcp/1");
        let invite: Invite = format!("  {text}\n").parse().unwrap();
        assert_eq!(invite.addrs.len(), 2);
        assert_eq!(invite.to_string(), text);
        let empty: Invite = format!("{INVITE_PREFIX}:{key}:").parse().unwrap();
        assert!(empty.addrs.is_empty());
        for bad in [
            "",
            "hello",
            "kappa-invite-v2:00:",
            &format!("{INVITE_PREFIX}:{}:", "zz".repeat(32)),
            &format!("{INVITE_PREFIX}:{}", "cd".repeat(31)),
        ] {
            assert_eq!(
                bad.parse::<Invite>(),
                Err(InviteError::NotAnInvite),
                "{bad}"
            );
        }
        assert!(matches!(
            format!("{INVITE_PREFIX}:{key}:/nope").parse::<Invite>(),
            Err(InviteError::BadAddress { .. })
        ));
    }

    #[test]
    fn remember_keeps_addresses_with_a_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let invite: Invite = format!(
            "{INVITE_PREFIX}:{}:/ip4/10.0.0.1/tcp/4747/p2p/{peer},/ip4/10.0.0.2/tcp/1",
            "cd".repeat(32)
        )
        .parse()
        .unwrap();
        invite.remember(dir.path()).unwrap();
        let book = AddressBook::load(dir.path());
        let rec = book.get(&peer).unwrap();
        assert_eq!(
            rec.addrs,
            ["/ip4/10.0.0.1/tcp/4747".parse::<Multiaddr>().unwrap()]
        );
        assert_eq!(book.peers().len(), 1);
    }
}
