//! The address book: peers seen before, persisted as `peers.json` in the
//! database directory, and redialed when a node starts.
//!
//! ```json
//! { "version": 1,
//!   "peers": [ { "peer_id": "12D3Koo…", "feed": "ea4a…", "addrs": ["/ip4/10.0.0.2/tcp/4747"],
//!                "last_seen": 1700000000000, "last_sync": 1700000000000 } ] }
//! ```
//!
//! The file is derived and disposable: a damaged file is logged and
//! replaced, never an error that stops a node. Writes go to a temporary
//! file that is then renamed over the old one.
//!
//! ```
//! use kappadb_net::peers::AddressBook;
//! let dir = tempfile::tempdir().unwrap();
//! let book = AddressBook::load(dir.path());
//! assert!(book.peers().is_empty());
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kappadb_core::FeedId;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::behaviour::feed_of_peer;
use crate::error::NetError;

/// File name of the address book in the database directory.
pub const PEERS_FILE: &str = "peers.json";

/// Most addresses kept per peer.
const MAX_ADDRS: usize = 8;

/// Most peers kept (the least recently seen are dropped).
const MAX_PEERS: usize = 256;

/// One peer of the address book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer.
    pub peer_id: PeerId,
    /// Its feed, if its peer id is an ed25519 key.
    pub feed: Option<FeedId>,
    /// Addresses it was reached at or listens on (without `/p2p`).
    pub addrs: Vec<Multiaddr>,
    /// When it was last connected, ms since the epoch.
    pub last_seen: u64,
    /// When a sync with it last finished, ms since the epoch.
    pub last_sync: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct FileRecord {
    peer_id: String,
    #[serde(default)]
    feed: Option<String>,
    #[serde(default)]
    addrs: Vec<String>,
    #[serde(default)]
    last_seen: u64,
    #[serde(default)]
    last_sync: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    peers: Vec<FileRecord>,
}

/// Peers seen before. See the module docs.
#[derive(Debug)]
pub struct AddressBook {
    path: PathBuf,
    peers: BTreeMap<PeerId, PeerRecord>,
    dirty: bool,
}

impl AddressBook {
    /// Load `peers.json` from a database directory; a missing or damaged
    /// file gives an empty book (damage is logged).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(PEERS_FILE);
        let mut book = Self {
            path,
            peers: BTreeMap::new(),
            dirty: false,
        };
        let text = match fs::read_to_string(&book.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return book,
            Err(e) => {
                tracing::warn!(path = %book.path.display(), error = %e, "cannot read the address book");
                return book;
            }
        };
        let file: File = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %book.path.display(), error = %e, "ignoring a damaged address book");
                return book;
            }
        };
        for r in file.peers {
            let Ok(peer_id) = r.peer_id.parse::<PeerId>() else {
                continue;
            };
            let addrs = r
                .addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .take(MAX_ADDRS)
                .collect();
            book.peers.insert(
                peer_id,
                PeerRecord {
                    peer_id,
                    feed: feed_of_peer(&peer_id),
                    addrs,
                    last_seen: r.last_seen,
                    last_sync: r.last_sync,
                },
            );
        }
        book
    }

    /// Every peer, sorted by peer id.
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.peers.values().cloned().collect()
    }

    /// One peer.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// True if changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerRecord {
        self.dirty = true;
        self.peers.entry(peer).or_insert_with(|| PeerRecord {
            peer_id: peer,
            feed: feed_of_peer(&peer),
            addrs: Vec::new(),
            last_seen: 0,
            last_sync: None,
        })
    }

    /// Record that `peer` is connected now.
    pub fn seen(&mut self, peer: PeerId, now_ms: u64) {
        self.entry(peer).last_seen = now_ms;
    }

    /// Record addresses of `peer` (most recent first; `/p2p` is stripped,
    /// unusable addresses are skipped).
    pub fn add_addrs(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let addrs: Vec<Multiaddr> = addrs.into_iter().filter_map(dialable).collect();
        if addrs.is_empty() {
            return;
        }
        let rec = self.entry(peer);
        for a in addrs.into_iter().rev() {
            rec.addrs.retain(|x| *x != a);
            rec.addrs.insert(0, a);
        }
        rec.addrs.truncate(MAX_ADDRS);
    }

    /// Record a finished sync with `peer`.
    pub fn synced(&mut self, peer: PeerId, now_ms: u64) {
        let rec = self.entry(peer);
        rec.last_seen = now_ms;
        rec.last_sync = Some(now_ms);
    }

    /// Forget a peer.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let had = self.peers.remove(peer).is_some();
        self.dirty |= had;
        had
    }

    /// Write the book to its file (atomically).
    pub fn save(&mut self) -> Result<(), NetError> {
        let mut recs: Vec<&PeerRecord> = self.peers.values().collect();
        recs.sort_by_key(|r| std::cmp::Reverse(r.last_seen));
        recs.truncate(MAX_PEERS);
        let file = File {
            version: 1,
            peers: recs
                .into_iter()
                .map(|r| FileRecord {
                    peer_id: r.peer_id.to_string(),
                    feed: r.feed.map(|f| f.to_string()),
                    addrs: r.addrs.iter().map(ToString::to_string).collect(),
                    last_seen: r.last_seen,
                    last_sync: r.last_sync,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| NetError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, text.as_bytes())?;
        self.dirty = false;
        Ok(())
    }
}

/// Whether an address starts with a loopback IP.
fn is_loopback(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Of the listen addresses a peer announces, those worth keeping for it:
/// its loopback ones only if it is on this machine (it saw us at a
/// loopback address, `observed`), and none that this node listens on
/// itself (`own`): on another machine, the peer's 127.0.0.1:4747 is this
/// node's own address, and dialing it dials ourselves.
pub fn useful_listen_addrs(
    announced: Vec<Multiaddr>,
    observed: &Multiaddr,
    own: &[Multiaddr],
) -> Vec<Multiaddr> {
    let same_machine = is_loopback(observed);
    let own: Vec<Multiaddr> = own.iter().cloned().filter_map(dialable).collect();
    announced
        .into_iter()
        .filter_map(dialable)
        .filter(|a| same_machine || !is_loopback(a))
        .filter(|a| !own.contains(a))
        .collect()
}

/// The address without `/p2p`, if it can be dialed (not unspecified).
fn dialable(addr: Multiaddr) -> Option<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let mut out = Multiaddr::empty();
    for p in addr.iter() {
        match p {
            Protocol::P2p(_) => {}
            Protocol::Ip4(ip) if ip.is_unspecified() => return None,
            Protocol::Ip6(ip) if ip.is_unspecified() => return None,
            other => out.push(other),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Write a file by writing a temporary one and renaming it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    let err = |e: std::io::Error| NetError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(err)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_book_round_trips_and_tolerates_damage() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let mut book = AddressBook::load(dir.path());
        book.seen(peer, 5);
        book.add_addrs(
            peer,
            [
                "/ip4/10.0.0.2/tcp/4747/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                    .parse()
                    .unwrap(),
                "/ip4/0.0.0.0/tcp/4747".parse().unwrap(),
            ],
        );
        book.synced(peer, 9);
        book.save().unwrap();
        let again = AddressBook::load(dir.path());
        let rec = again.get(&peer).unwrap();
        assert_eq!(
            rec.addrs,
            vec!["/ip4/10.0.0.2/tcp/4747".parse::<Multiaddr>().unwrap()]
        );
        assert_eq!(rec.last_sync, Some(9));
        fs::write(dir.path().join(PEERS_FILE), "{ not json").unwrap();
        assert!(AddressBook::load(dir.path()).peers().is_empty());
    }

    #[test]
    fn a_peer_on_another_machine_keeps_no_loopback_or_own_address() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let own = [
            a("/ip4/127.0.0.1/tcp/4747/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"),
            a("/ip4/10.0.0.1/tcp/4747"),
        ];
        let announced = vec![
            a("/ip4/127.0.0.1/tcp/4747"),
            a("/ip4/10.0.0.2/tcp/4747"),
            a("/ip4/10.0.0.1/tcp/4747"),
            a("/ip6/::1/tcp/4747"),
        ];
        // It saw us at our LAN address: another machine.
        assert_eq!(
            useful_listen_addrs(announced.clone(), &a("/ip4/10.0.0.1/tcp/51000"), &own),
            vec![a("/ip4/10.0.0.2/tcp/4747")]
        );
        // It saw us at loopback: the same machine, where its loopback
        // addresses (but never ours) reach it.
        assert_eq!(
            useful_listen_addrs(
                vec![a("/ip4/127.0.0.1/tcp/4800"), a("/ip4/127.0.0.1/tcp/4747")],
                &a("/ip4/127.0.0.1/tcp/51000"),
                &own
            ),
            vec![a("/ip4/127.0.0.1/tcp/4800")]
        );
    }
}
