//! Small runnable apps built on kappadb, and the few helpers they share.
//!
//! The apps live in `src/bin/`:
//!
//! - `kappa-chat` (`chat.rs`): a LAN chat. Every message is an entry of the
//!   author's feed; the node syncs feeds between peers and the timeline view
//!   answers "the history, oldest first".
//! - `kappa-todo` (`todo.rs`): an offline-first todo list on the `kv` view,
//!   synced on demand; concurrent edits converge on every peer.
//! - `kappa-embed` (`embed.rs`): the minimal embedding, to copy from.
//!
//! This library holds what they share: invites (the `kappa invite` format),
//! opening or creating a database, and formatting chat lines. It uses only
//! the public APIs of `kappadb-core`, `kappadb-views` and `kappadb-net`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use kappadb_core::{CreateOptions, Db, NetworkKey};
use kappadb_net::Multiaddr;
use kappadb_net::multiaddr::Protocol;
use kappadb_net::peers::AddressBook;
use serde_json::{Value, json};

/// The text an invite starts with (the same as `kappa invite`'s).
pub const INVITE_PREFIX: &str = "kappa-invite-v1";

/// How long a one-shot sync may take before it is given up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// An invite: the network key and where the inviter can be reached.
///
/// Text form (the format of `kappa invite`):
/// `kappa-invite-v1:<network key, 64 hex digits>:<multiaddr>,<multiaddr>,…`
/// (the address list may be empty). Anyone holding an invite can join the
/// network, so it is shared privately.
#[derive(Clone, Debug)]
pub struct Invite {
    /// The network's key.
    pub key: NetworkKey,
    /// Addresses of the inviter, usually ending in `/p2p/PEER`.
    pub addrs: Vec<Multiaddr>,
}

impl Invite {
    /// Parse the text form (surrounding whitespace is ignored).
    ///
    /// ```
    /// let text = format!("kappa-invite-v1:{}:/ip4/127.0.0.1/tcp/4747", "ab".repeat(32));
    /// let invite = kappadb_examples::Invite::parse(&text).unwrap();
    /// assert_eq!(invite.addrs.len(), 1);
    /// assert_eq!(invite.to_string(), text);
    /// ```
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let bad = || anyhow!("this is not a kappadb invite (it starts with {INVITE_PREFIX}:)");
        let mut parts = text.trim().splitn(3, ':');
        if parts.next() != Some(INVITE_PREFIX) {
            return Err(bad());
        }
        let key = parts
            .next()
            .and_then(NetworkKey::from_hex)
            .ok_or_else(bad)?;
        let addrs = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(parse_addr)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { key, addrs })
    }
}

impl std::fmt::Display for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        write!(
            f,
            "{INVITE_PREFIX}:{}:{}",
            self.key.to_hex(),
            addrs.join(",")
        )
    }
}

/// Parse a multiaddr typed by a user, with an error that shows the shape.
pub fn parse_addr(text: &str) -> anyhow::Result<Multiaddr> {
    text.trim().parse::<Multiaddr>().map_err(|e| {
        anyhow!("'{text}' is not a multiaddr ({e}); it looks like /ip4/192.168.1.20/tcp/4747")
    })
}

/// Which of a node's listen addresses to put in an invite: the ones another
/// machine can reach (not loopback), or the loopback ones if that is all
/// there is (a node listening on 127.0.0.1 only, as in tests).
pub fn advertised_addrs(listen: &[Multiaddr]) -> Vec<Multiaddr> {
    let is_loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let outside: Vec<Multiaddr> = listen.iter().filter(|a| !is_loopback(a)).cloned().collect();
    if outside.is_empty() {
        listen.to_vec()
    } else {
        outside
    }
}

/// Open the database in `dir`, or create it there if there is none
/// ([`Db::open_or_create`]), joining an invite's network.
///
/// Creating with an invite joins the invite's network (its key becomes the
/// database's network key) and stores the inviter's addresses in the
/// address book, so a node redials them on every start. Opening an existing
/// database with an invite of another network is an error. Returns the
/// database and whether it was created now.
pub fn open_or_create(dir: &Path, join: Option<&Invite>) -> anyhow::Result<(Db, bool)> {
    let opts = CreateOptions {
        network_key: join.map(|i| i.key.clone()),
        ..CreateOptions::default()
    };
    let db = Db::open_or_create(dir, opts)
        .with_context(|| format!("cannot open or create a database in {}", dir.display()))?;
    let created = db.created();
    match join {
        Some(invite) if created => remember_addrs(dir, &invite.addrs)?,
        Some(invite) if db.network_key()? != invite.key => bail!(
            "the database in {} belongs to another network than the invite; use a new --dir to join",
            dir.display()
        ),
        _ => {}
    }
    Ok((db, created))
}

/// Store addresses ending in `/p2p/PEER` in the database's address book
/// (`peers.json`); a node started later dials them. Addresses without a
/// peer id are skipped (the book is keyed by peer).
pub fn remember_addrs(dir: &Path, addrs: &[Multiaddr]) -> anyhow::Result<()> {
    let mut book = AddressBook::load(dir);
    for addr in addrs {
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
    book.save()?;
    Ok(())
}

/// A multi-threaded tokio runtime (the node runs on it).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        res = tokio::signal::ctrl_c() => res.context("cannot watch for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The payload `type` of a chat message.
pub const CHAT_TYPE: &str = "chat";

/// A chat message: `{"type":"chat","user":NAME,"text":TEXT}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// The name the author chose (a claim: anyone can pick any name).
    pub user: String,
    /// What they wrote.
    pub text: String,
}

impl ChatMessage {
    /// The payload to append.
    pub fn to_payload(&self) -> Vec<u8> {
        json!({"type": CHAT_TYPE, "user": self.user, "text": self.text})
            .to_string()
            .into_bytes()
    }

    /// Read a payload; `None` if it is not a chat message. Payloads come
    /// from any peer of the network, so nothing about them is assumed.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        if value.get("type")?.as_str()? != CHAT_TYPE {
            return None;
        }
        Some(Self {
            user: value.get("user")?.as_str()?.to_string(),
            text: value.get("text")?.as_str()?.to_string(),
        })
    }

    /// The line a chat prints: `[HH:MM:SS] user: text` (UTC clock time of
    /// the author's timestamp). Control characters from the network are
    /// replaced so a message cannot rewrite the terminal.
    ///
    /// ```
    /// let m = kappadb_examples::ChatMessage { user: "ana".into(), text: "hi\x1b[2J".into() };
    /// assert_eq!(m.format(3_723_000), "[01:02:03] ana: hi\u{fffd}[2J");
    /// ```
    pub fn format(&self, timestamp_ms: u64) -> String {
        format!(
            "[{}] {}: {}",
            clock(timestamp_ms),
            printable(&self.user),
            printable(&self.text)
        )
    }
}

/// `HH:MM:SS` (UTC) of a timestamp in ms since the Unix epoch.
pub fn clock(timestamp_ms: u64) -> String {
    let secs = (timestamp_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `text` with every control character (newlines, escapes) replaced by
/// U+FFFD, safe to print on one terminal line.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_round_trip_and_errors() {
        let key = NetworkKey::from_bytes([7; 32]);
        let feed = kappadb_core::SigningKey::from_seed([1; 32]).feed_id();
        let peer = kappadb_net::behaviour::peer_of_feed(&feed).unwrap();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4747/p2p/{peer}")
            .parse()
            .unwrap();
        let invite = Invite {
            key: key.clone(),
            addrs: vec![addr.clone(), "/ip4/10.0.0.2/tcp/1".parse().unwrap()],
        };
        let text = invite.to_string();
        let back = Invite::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back.key, key);
        assert_eq!(back.addrs, invite.addrs);

        let empty = Invite::parse(&format!("{INVITE_PREFIX}:{}:", key.to_hex())).unwrap();
        assert!(empty.addrs.is_empty());
        let no_addrs = Invite::parse(&format!("{INVITE_PREFIX}:{}", key.to_hex())).unwrap();
        assert!(no_addrs.addrs.is_empty());

        assert!(Invite::parse("hello").is_err());
        assert!(Invite::parse(&format!("{INVITE_PREFIX}:abcd:")).is_err());
        assert!(Invite::parse(&format!("kappa-invite-v2:{}:", key.to_hex())).is_err());
        let err = Invite::parse(&format!("{INVITE_PREFIX}:{}:not-an-addr", key.to_hex()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a multiaddr"), "{err}");
    }

    #[test]
    fn advertised_addrs_prefer_reachable_ones() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let lan: Multiaddr = "/ip4/192.168.1.2/tcp/1".parse().unwrap();
        assert_eq!(
            advertised_addrs(&[lo.clone(), lan.clone()]),
            vec![lan.clone()]
        );
        assert_eq!(advertised_addrs(std::slice::from_ref(&lo)), vec![lo]);
    }

    #[test]
    fn chat_payloads() {
        let m = ChatMessage {
            user: "ana".into(),
            text: "hello \"there\"".into(),
        };
        assert_eq!(ChatMessage::from_payload(&m.to_payload()), Some(m));
        assert_eq!(ChatMessage::from_payload(b"not json"), None);
        assert_eq!(
            ChatMessage::from_payload(br#"{"type":"note","user":"a","text":"b"}"#),
            None
        );
        assert_eq!(
            ChatMessage::from_payload(br#"{"type":"chat","user":1,"text":"b"}"#),
            None
        );
        assert_eq!(clock(86_400_000 + 59_000), "00:00:59");
        assert_eq!(printable("a\nb"), "a\u{fffd}b");
    }

    #[test]
    fn open_or_create_joins_and_refuses_another_network() {
        let tmp = tempfile::tempdir().unwrap();
        let invite = Invite {
            key: NetworkKey::from_bytes([9; 32]),
            addrs: vec![],
        };
        let (db, created) = open_or_create(tmp.path(), Some(&invite)).unwrap();
        assert!(created);
        assert_eq!(db.network_key().unwrap(), invite.key);
        drop(db);
        let (_db, created) = open_or_create(tmp.path(), Some(&invite)).unwrap();
        assert!(!created);
        drop(_db);
        let other = Invite {
            key: NetworkKey::from_bytes([1; 32]),
            addrs: vec![],
        };
        let err = open_or_create(tmp.path(), Some(&other)).unwrap_err();
        assert!(err.to_string().contains("another network"), "{err}");
    }
}
