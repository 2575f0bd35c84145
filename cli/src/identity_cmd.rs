//! `kappa identity ...`: identity keys, delegations, revocations and the
//! LAN pairing of a new device (`invite` / `join`).
//!
//! Pairing runs over the ordinary sync of the database's network (the two
//! devices must share the network key: `kappa join INVITE` first), with two
//! system entries, both keyed by the code (`ARCHITECTURE.md`, *Pairing*):
//!
//! 1. `invite` (on the device holding the identity key) appends a pairing
//!    offer to the identity feed, prints the code and runs a node;
//! 2. `join CODE` (on the new device) runs a node until it holds an offer
//!    whose tag the code reproduces, which names the identity; it appends
//!    a pairing request (its consent and a proof that it holds the code)
//!    to its own feed;
//! 3. the inviter, seeing a request whose proof the code reproduces,
//!    appends the delegation to the identity feed; the joiner stops once
//!    it holds it, the inviter once the joiner disconnected (or at its
//!    deadline).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use kappadb_core::identity::{Delegation, IdentityKey, IdentityOp, PairRequest, PairingCode};
use kappadb_core::system::SystemPayload;
use kappadb_core::{Db, FeedId, RecordBody};
use kappadb_net::{Multiaddr, Node};

use crate::answer::IdentityInfo;
use crate::identity::{held_key, key_path};
use crate::out::{Out, note};
use crate::params::{DelegateBody, RevokeBody};

/// `kappa identity` subcommands.
#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// Create an identity key here and make this database's feed its first
    /// device.
    New,
    /// Print the identity key (the secret!) as a printable string, or
    /// write it to a file (mode 0600).
    Export {
        /// Write the key to this new file instead of printing it.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Keep an identity key here (a printable string, or a file holding
    /// one or 64 hex digits).
    Import {
        /// The key string, or a path to a key file.
        key: String,
    },
    /// The identity this database's feed speaks for, and its devices.
    Show,
    /// Print a pairing code for a new device, and wait until it joined.
    Invite {
        /// How long the code is valid and this command waits, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Listen on this multiaddr [default: /ip4/0.0.0.0/tcp/4747].
        #[arg(long)]
        listen: Option<String>,
    },
    /// Join the identity of the device that printed CODE (same network,
    /// same LAN), and wait until the delegation is here.
    Join {
        /// The code `kappa identity invite` printed.
        code: String,
        /// Dial this peer too (a multiaddr), besides mDNS and the address
        /// book.
        #[arg(long)]
        peer: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Revoke a device: its entries from seq FROM on no longer speak for
    /// the identity.
    Revoke {
        /// The device's feed (id or unique prefix).
        feed: String,
        /// The first entry revoked [default: the one after the last held
        /// here].
        #[arg(long = "from")]
        from: Option<u64>,
    },
}

/// Run an identity command on the database in `dir`.
pub fn run(dir: &Path, cmd: IdentityCommand, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCommand::New => new(dir, out),
        IdentityCommand::Export { file } => export(dir, file.as_deref(), out),
        IdentityCommand::Import { key } => import(dir, &key, out),
        IdentityCommand::Show => {
            let info = crate::cmd::connect(dir)?.identity()?;
            print_info(&info, out)
        }
        IdentityCommand::Revoke { feed, from } => {
            let b = crate::cmd::connect(dir)?;
            let r = b.identity_revoke(&RevokeBody { feed, from })?;
            out.answer(&r, |r| {
                vec![format!(
                    "revoked {} from seq {} (identity {}, its seq {})",
                    r.device,
                    r.from.unwrap_or(0),
                    r.identity,
                    r.seq
                )]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        IdentityCommand::Invite { timeout, listen } => invite(dir, timeout, listen, out),
        IdentityCommand::Join {
            code,
            peer,
            timeout,
        } => join(dir, &code, &peer, timeout, out),
    }
}

fn print_info(info: &IdentityInfo, out: &mut Out) -> anyhow::Result<ExitCode> {
    out.answer(info, |i| {
        let mut lines = vec![format!("feed      {}", i.feed)];
        match &i.identity {
            None => lines.push(
                "identity  none (`kappa identity new`, or `kappa identity join CODE`)".into(),
            ),
            Some(id) => {
                lines.push(format!(
                    "identity  {id}{}",
                    if i.key_here { " (key held here)" } else { "" }
                ));
                if let Some(seq) = i.forked_at {
                    lines.push(format!(
                        "warning   the identity feed is forked at seq {seq}: entries from there on are ignored"
                    ));
                }
                for d in &i.devices {
                    let cut = d
                        .cut
                        .map_or(String::new(), |c| format!(", revoked from seq {c}"));
                    let this = if d.this { " (this device)" } else { "" };
                    lines.push(format!("device    {}{this}{cut}", d.feed));
                }
            }
        }
        lines
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The database's own signing key, read from its key file (so this works
/// while a node holds the database).
fn device_key(dir: &Path) -> anyhow::Result<kappadb_core::SigningKey> {
    let path = dir.join(kappadb_core::db::files::SECRET_KEY);
    kappadb_core::SigningKey::load(&path)
        .with_context(|| format!("cannot read this database's key in {}", dir.display()))
}

fn new(dir: &Path, out: &mut Out) -> anyhow::Result<ExitCode> {
    let path = key_path(dir);
    if path.exists() {
        bail!(
            "this database already holds an identity key ({}); `kappa identity show` shows it",
            path.display()
        );
    }
    let b = crate::cmd::connect(dir)?;
    let key = IdentityKey::generate()?;
    key.save(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let device = device_key(dir)?;
    let d = Delegation::new(key.id(), &device);
    let r = b.identity_delegate(&DelegateBody {
        device: device.feed_id().to_string(),
        device_sig: kappadb_core::keys::hex(&d.device_sig.to_bytes()),
    })?;
    note(format!(
        "identity key written to {} (mode 0600); back it up with `kappa identity export`",
        path.display()
    ));
    out.answer(&r, |r| vec![format!("identity {}", r.identity)])?;
    Ok(ExitCode::SUCCESS)
}

fn export(dir: &Path, file: Option<&Path>, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key = held_key(dir)?.ok_or_else(|| {
        anyhow!("this database holds no identity key (`kappa identity new` makes one)")
    })?;
    match file {
        Some(f) => {
            key.save(f)
                .with_context(|| format!("cannot write {}", f.display()))?;
            note(format!(
                "identity key written to {} (mode 0600)",
                f.display()
            ));
        }
        None => {
            note("this is the identity's secret key: whoever holds it can add and revoke devices");
            if out.json {
                out.json_line(&serde_json::json!({
                    "identity": key.id().to_string(),
                    "key": key.to_text(),
                }))?;
            } else {
                out.line(key.to_text())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn import(dir: &Path, text: &str, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key = match IdentityKey::from_text(text) {
        Ok(k) => k,
        Err(_) => {
            let p = Path::new(text);
            if !p.exists() {
                bail!(
                    "not an identity key (kappa-identity-v1:...) nor a file: {}",
                    text.chars().take(24).collect::<String>()
                );
            }
            match std::fs::read_to_string(p)
                .ok()
                .and_then(|t| IdentityKey::from_text(&t).ok())
            {
                Some(k) => k,
                None => IdentityKey::load(p)
                    .with_context(|| format!("cannot read an identity key from {}", p.display()))?,
            }
        }
    };
    let path = key_path(dir);
    if let Some(held) = held_key(dir)? {
        if held.id() == key.id() {
            note("this database already holds this identity key");
            out.answer(
                &serde_json::json!({"identity": key.id().to_string()}),
                |_| vec![format!("identity {}", key.id())],
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        bail!(
            "this database already holds another identity key ({})",
            path.display()
        );
    }
    key.save(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    note(
        "two devices writing with one identity key fork the identity feed: revoke and delegate from one of them only",
    );
    out.answer(
        &serde_json::json!({"identity": key.id().to_string()}),
        |_| vec![format!("identity {}", key.id())],
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Scans the log for pairing entries, from where it stopped.
struct Scanner {
    offset: u64,
}

impl Scanner {
    fn new() -> Self {
        Self { offset: 0 }
    }

    /// The pairing entries since the last call: (author, payload).
    fn next(&mut self, db: &Db) -> anyhow::Result<Vec<(FeedId, SystemPayload)>> {
        let mut found = Vec::new();
        for rec in db.log_iter(self.offset) {
            let rec = rec?;
            self.offset = rec.next_offset;
            if let RecordBody::Entry(e) = rec.body
                && let Some(p) = e.payload.bytes()
                && let Some(Ok(sp)) = SystemPayload::parse(p)
                && matches!(
                    sp,
                    SystemPayload::PairOffer(_) | SystemPayload::PairRequest(_)
                )
            {
                found.push((e.header.author, sp));
            }
        }
        Ok(found)
    }
}

fn parse_multiaddr(text: &str) -> anyhow::Result<Multiaddr> {
    text.parse()
        .map_err(|e| anyhow!("'{text}' is not a multiaddr ({e}); e.g. /ip4/192.168.1.5/tcp/4747"))
}

fn invite(
    dir: &Path,
    timeout: u64,
    listen: Option<String>,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let db = crate::cmd::open(dir).context(
        "`kappa identity invite` runs its own node: stop `kappa serve` on this database first",
    )?;
    let key = held_key(dir)?.ok_or_else(|| {
        anyhow!("this database holds no identity key: run `kappa identity new` (or import the key) first")
    })?;
    crate::identity::need_identity_feed(&db, &key)?;
    let code = PairingCode::generate()?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let expires = kappadb_core::now_ms().saturating_add(timeout.saturating_mul(1000));
    db.offer_pairing(&key, &code, expires)?;
    let listen = match listen {
        Some(l) => parse_multiaddr(&l)?,
        None => kappadb_net::default_listen_addr(),
    };
    note("on the new device (in this network, on this LAN), run:");
    if out.json {
        out.json_line(&serde_json::json!({
            "code": code.to_text(),
            "identity": key.id().to_string(),
        }))?;
    } else {
        out.line(format!("kappa identity join {}", code.to_text()))?;
    }
    out.flush()?;
    let rt = crate::net_cmd::runtime()?;
    let identity = key.id();
    let joined = rt.block_on(async {
        let node = Node::builder(db.clone())
            .listen(listen)
            .mdns(true)
            .spawn()
            .await
            .context("cannot start the node")?;
        let mut scan = Scanner::new();
        let mut joined: Option<FeedId> = None;
        let res: anyhow::Result<Option<FeedId>> = loop {
            if joined.is_none() {
                for (author, sp) in scan.next(&db)? {
                    let SystemPayload::PairRequest(req) = sp else {
                        continue;
                    };
                    if req.identity != identity
                        || req.proof != code.request_proof(&identity, &author)
                    {
                        continue;
                    }
                    let d = Delegation::from_consent(author, req.device_sig.to_bytes());
                    match db.append_identity(&key, &IdentityOp::Delegate(d)) {
                        Ok(_) => {
                            note(format!("delegated {author}; waiting for it to sync"));
                            joined = Some(author);
                            break;
                        }
                        Err(e) => note(format!("refused the request of {author}: {e}")),
                    }
                }
            }
            if let Some(device) = joined {
                // Done once the new device has what it waited for and
                // went away (it stops once it holds the delegation).
                let peer = kappadb_net::behaviour::peer_of_feed(&device);
                let connected = node.connected_peers();
                if peer.is_none_or(|p| !connected.contains(&p)) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if peer.is_none_or(|p| !node.connected_peers().contains(&p)) {
                        break Ok(joined);
                    }
                }
            }
            if Instant::now() >= deadline {
                break Ok(joined);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        node.shutdown().await;
        res
    })?;
    match joined {
        Some(device) => {
            note(format!("{device} now speaks for identity {identity}"));
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("no device joined within {timeout} s; the code is void now"),
    }
}

fn join(
    dir: &Path,
    code_text: &str,
    peers: &[String],
    timeout: u64,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    let code = PairingCode::from_text(code_text)?;
    let db = crate::cmd::open(dir).context(
        "`kappa identity join` runs its own node: stop `kappa serve` on this database first",
    )?;
    let peers: Vec<Multiaddr> = peers
        .iter()
        .map(|p| parse_multiaddr(p))
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let own = db.feed_id();
    let rt = crate::net_cmd::runtime()?;
    let identity = rt.block_on(async {
        let mut builder = Node::builder(db.clone())
            .listen("/ip4/0.0.0.0/tcp/0".parse().map_err(|e| anyhow!("{e}"))?)
            .mdns(true);
        for p in peers {
            builder = builder.peer(p);
        }
        let node = builder.spawn().await.context("cannot start the node")?;
        let mut scan = Scanner::new();
        let mut asked: Option<FeedId> = None;
        let res: anyhow::Result<Option<FeedId>> = loop {
            if asked.is_none() {
                let now = kappadb_core::now_ms();
                for (author, sp) in scan.next(&db)? {
                    let SystemPayload::PairOffer(offer) = sp else {
                        continue;
                    };
                    if offer.tag != code.offer_tag(&author) || offer.expires < now {
                        continue;
                    }
                    let req = PairRequest::new(author, db.signing_key(), &code);
                    db.append(req.encode())?;
                    note(format!("found identity {author}; asked to join"));
                    asked = Some(author);
                    break;
                }
            }
            if let Some(identity) = asked {
                let delegated = db
                    .identity_ops(&identity)?
                    .iter()
                    .any(|(_, op)| matches!(op, IdentityOp::Delegate(d) if d.device == own));
                if delegated {
                    break Ok(Some(identity));
                }
            }
            if Instant::now() >= deadline {
                break Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        node.shutdown().await;
        res
    })?;
    match identity {
        Some(identity) => {
            out.answer(
                &serde_json::json!({"device": own.to_string(), "identity": identity.to_string()}),
                |_| vec![format!("identity {identity}")],
            )?;
            Ok(ExitCode::SUCCESS)
        }
        None => bail!(
            "no identity offered this code within {timeout} s: is `kappa identity invite` running on the other device, in this network (`kappa join INVITE`) and on this LAN?"
        ),
    }
}
