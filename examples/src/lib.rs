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
use kappadb_core::{CreateOptions, Db};
use kappadb_net::Multiaddr;
use kappadb_net::multiaddr::Protocol;
use serde_json::{Value, json};

/// How long a one-shot sync may take before it is given up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Invites (the `kappa invite` format) come from `kappadb-net`.
pub use kappadb_net::invite::{INVITE_PREFIX, Invite};

/// Parse an invite typed by a user.
///
/// ```
/// let text = format!("kappa-invite-v1:{}:/ip4/127.0.0.1/tcp/4747", "ab".repeat(32));
/// let invite = kappadb_examples::parse_invite(&text).unwrap();
/// assert_eq!(invite.addrs.len(), 1);
/// assert_eq!(invite.to_string(), text);
/// ```
pub fn parse_invite(text: &str) -> anyhow::Result<Invite> {
    Ok(text.parse::<Invite>()?)
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
        Some(invite) if created => invite.remember(dir)?,
        Some(invite) if db.network_key()? != invite.key => bail!(
            "the database in {} belongs to another network than the invite; use a new --dir to join",
            dir.display()
        ),
        _ => {}
    }
    Ok((db, created))
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
            key: kappadb_core::NetworkKey::from_bytes([9; 32]),
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
            key: kappadb_core::NetworkKey::from_bytes([1; 32]),
            addrs: vec![],
        };
        let err = open_or_create(tmp.path(), Some(&other)).unwrap_err();
        assert!(err.to_string().contains("another network"), "{err}");
    }
}
