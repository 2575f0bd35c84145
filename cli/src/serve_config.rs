//! `serve.json`: the options of `kappa serve` saved in the database
//! directory (`kappa serve … --save`), so that a plain `kappa serve` (or a
//! service manager's unit) starts the node the same way every time.
//! Flags given on the command line win over what is saved.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::net_cmd::ServeArgs;

/// The file's name in the database directory.
pub const FILE: &str = "serve.json";

/// What is saved. Every field is optional: a missing one means the
/// built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Multiaddrs to listen on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Peers to connect to at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// LAN discovery with mDNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdns: Option<bool>,
    /// The API's address, or `"off"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Whether to fold views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<bool>,
    /// `--compact-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_at: Option<u64>,
}

/// The options `kappa serve` runs with: the flags over the saved file
/// over the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub listen: Vec<String>,
    pub peers: Vec<String>,
    pub mdns: bool,
    /// `None`: no API.
    pub api: Option<Option<std::net::SocketAddr>>,
    pub views: bool,
    pub compact_at: u64,
}

impl ServeConfig {
    /// The saved options of `dir` (none saved: all defaults). A file that
    /// does not parse is an error that names it, never ignored.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid serve configuration (fix or remove it)",
                path.display()
            )
        })
    }

    /// Write it to `dir` (atomically: a temporary file, then a rename).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The options to run with: each flag given wins over what is saved.
    pub fn apply(&self, args: &ServeArgs) -> anyhow::Result<Effective> {
        let api = if args.no_api {
            None
        } else if let Some(a) = args.api {
            Some(Some(a))
        } else {
            match self.api.as_deref() {
                None => Some(None),
                Some("off") => None,
                Some(a) => Some(Some(a.parse().map_err(|e| {
                    anyhow::anyhow!("{FILE}: api '{a}' is not host:port or \"off\" ({e})")
                })?)),
            }
        };
        let compact_at = args
            .compact_at
            .or(self.compact_at)
            .unwrap_or(crate::net_cmd::AUTO_COMPACT_BYTES);
        let listen = if args.listen.is_empty() {
            self.listen.clone()
        } else {
            args.listen.clone()
        };
        let mut peers = self.peers.clone();
        for p in &args.peer {
            if !peers.contains(p) {
                peers.push(p.clone());
            }
        }
        Ok(Effective {
            listen,
            peers,
            mdns: !args.no_mdns && self.mdns.unwrap_or(true),
            api,
            views: !args.no_views && self.views.unwrap_or(true),
            compact_at,
        })
    }

    /// What `--save` writes: the options as they are now in effect.
    pub fn of(e: &Effective) -> Self {
        Self {
            listen: e.listen.clone(),
            peers: e.peers.clone(),
            mdns: (!e.mdns).then_some(false),
            api: match e.api {
                None => Some("off".to_string()),
                Some(None) => None,
                Some(Some(a)) => Some(a.to_string()),
            },
            views: (!e.views).then_some(false),
            compact_at: (e.compact_at != crate::net_cmd::AUTO_COMPACT_BYTES)
                .then_some(e.compact_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let mut all = vec!["t"];
        all.extend_from_slice(extra);
        T::parse_from(all).a
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let saved = ServeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/4800".into()],
            peers: vec!["/ip4/127.0.0.1/tcp/4747".into()],
            mdns: Some(false),
            api: Some("off".into()),
            views: None,
            compact_at: Some(7),
        };
        let e = saved.apply(&args(&[])).unwrap();
        assert_eq!(e.listen, saved.listen);
        assert!(!e.mdns && e.api.is_none() && e.views && e.compact_at == 7);
        assert_eq!(ServeConfig::of(&e), saved);
        let e = saved
            .apply(&args(&[
                "--listen",
                "/ip4/0.0.0.0/tcp/1",
                "--api",
                "127.0.0.1:0",
                "--compact-at",
                "0",
                "--peer",
                "/ip4/10.0.0.2/tcp/4747",
            ]))
            .unwrap();
        assert_eq!(e.listen, vec!["/ip4/0.0.0.0/tcp/1".to_string()]);
        assert_eq!(e.api, Some(Some("127.0.0.1:0".parse().unwrap())));
        assert_eq!(e.compact_at, 0);
        assert_eq!(e.peers.len(), 2);
        let d = ServeConfig::default().apply(&args(&[])).unwrap();
        assert!(d.mdns && d.views && d.api == Some(None) && d.listen.is_empty());
        assert_eq!(ServeConfig::of(&d), ServeConfig::default());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{\"listen\": 5}").unwrap();
        let e = ServeConfig::load(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains(FILE), "{e:#}");
        std::fs::write(dir.path().join(FILE), "{\"lisen\": []}").unwrap();
        assert!(ServeConfig::load(dir.path()).is_err());
        std::fs::write(dir.path().join(FILE), "{\"api\": \"nope\"}").unwrap();
        let c = ServeConfig::load(dir.path()).unwrap();
        assert!(c.apply(&args(&[])).is_err());
    }
}
