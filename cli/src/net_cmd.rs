//! Network commands: `kappa serve`, `sync`, `invite`, `peers`, `block`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kappadb_core::{CreateOptions, Db};
use kappadb_net::{DEFAULT_PORT, Invite, Multiaddr, Node, NodeEvent, PeerId, default_listen_addr};
use kappadb_views::{Indexer, IndexerConfig};
use serde_json::json;

use crate::answer::{OpError, SyncReply};
use crate::api::SharedNode;
use crate::ops::{Backend, Local};
use crate::out::{self, Out, note};
use crate::params::SyncBody;

/// Options of `kappa serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Listen on this multiaddr (repeatable) [default: /ip4/0.0.0.0/tcp/4747].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Connect to this peer at start (repeatable).
    #[arg(long)]
    pub peer: Vec<String>,
    /// Do not discover peers on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve the HTTP API on this address [default: 127.0.0.1:4740, or
    /// another loopback port if that one is taken].
    #[arg(long, value_name = "ADDR")]
    pub api: Option<std::net::SocketAddr>,
    /// Do not serve the HTTP API.
    #[arg(long, conflicts_with = "api")]
    pub no_api: bool,
    /// Store and serve every feed followed, but fold no views: a backup or
    /// relay node (view queries answer that there are none).
    #[arg(long)]
    pub no_views: bool,
    /// Compact the log on its own once this many bytes of it are
    /// reclaimable (erased payloads, forgotten feeds); 0 never does
    /// [default: 67108864, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub compact_at: Option<u64>,
    /// Also stream the log into Kafka, exactly once:
    /// kafka://HOST:PORT[,HOST:PORT...]/TOPIC (see `kappa bridge kafka`).
    #[arg(long, value_name = "URL")]
    pub bridge: Option<String>,
    /// Save these options in the database directory (serve.json), so a
    /// plain `kappa serve` (or a service unit) starts the same way; flags
    /// given later still win.
    #[arg(long)]
    pub save: bool,
    /// Create a database (with a new network) in --dir if it holds none.
    /// Only the default data directory is created without being asked.
    #[arg(long)]
    pub create: bool,
}

/// `--compact-at`'s default: 64 MiB.
pub const AUTO_COMPACT_BYTES: u64 = 64 << 20;

/// How often `kappa serve` looks whether the log is worth compacting.
const COMPACT_CHECK: Duration = Duration::from_secs(5);

/// After a compaction that failed, how long before the next try.
const COMPACT_RETRY: Duration = Duration::from_secs(600);

/// Compact the log whenever `threshold` bytes of it are reclaimable,
/// until `stop` turns true. A compaction in progress finishes first (it
/// is crash-safe, but a clean finish keeps its work).
async fn auto_compact(db: Db, threshold: u64, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(COMPACT_CHECK) => {}
        }
        if db.status().reclaimable_bytes < threshold {
            continue;
        }
        let d = db.clone();
        // Segments worth less than this are left for a later pass.
        let min_gain = (threshold / 64).max(1);
        let res = tokio::task::spawn_blocking(move || d.compact(min_gain, &mut |_, _| {})).await;
        match res {
            Ok(Ok(r)) => note(format!(
                "compacted {} segments, gave back {}",
                r.segments,
                out::bytes(r.reclaimed())
            )),
            Ok(Err(e)) => {
                note(format!(
                    "warning: automatic compaction failed: {e}; trying again in {} minutes",
                    COMPACT_RETRY.as_secs() / 60
                ));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(COMPACT_RETRY) => {}
                }
            }
            Err(e) => {
                note(format!("warning: automatic compaction stopped: {e}"));
                return;
            }
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // API requests and log reads run on the blocking pool; bounded, so
        // a burst of requests queues instead of growing threads (and the
        // allocator's per-thread memory) without limit.
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A multiaddr the user typed, or a usage error (exit code 2) that shows
/// what one looks like.
fn parse_addr(text: &str) -> anyhow::Result<Multiaddr> {
    parse_multiaddr(text).map_err(|e| anyhow::Error::new(crate::out::Usage(e.message)))
}

/// A multiaddr given to an operation, or a 400 that shows what one looks
/// like.
pub fn parse_multiaddr(text: &str) -> Result<Multiaddr, OpError> {
    text.parse::<Multiaddr>().map_err(|e| {
        OpError::bad(
            "bad_addr",
            format!(
                "'{text}' is not a multiaddr ({e}); it looks like /ip4/192.168.1.20/tcp/{DEFAULT_PORT}"
            ),
        )
    })
}

/// `kappa serve`: create the database if there is none, then run the node
/// (network, views) until Ctrl-C.
pub fn serve(dir: &Path, args: ServeArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let db = if dir.join(kappadb_core::db::files::CONFIG).exists() {
        crate::cmd::open(dir)?
    } else if args.create || dir == crate::cmd::resolve_dir(None) {
        let db = Db::create(dir, CreateOptions::default())
            .with_context(|| format!("cannot create a database in {}", dir.display()))?;
        note(format!(
            "created a new database, in a new network of its own, in {}; to join an existing network instead, stop this and run `kappa init --join INVITE`",
            dir.display()
        ));
        db
    } else {
        bail!(
            "there is no database in {d}; create one with `kappa --dir {d} init` (or `init --join INVITE` to join a network), or pass --create",
            d = dir.display()
        );
    };
    let opts = crate::serve_config::ServeConfig::load(dir)?.apply(&args)?;
    let listen = if opts.listen.is_empty() {
        vec![default_listen_addr()]
    } else {
        opts.listen
            .iter()
            .map(|a| parse_addr(a))
            .collect::<anyhow::Result<_>>()?
    };
    let peers: Vec<Multiaddr> = opts
        .peers
        .iter()
        .map(|a| parse_addr(a))
        .collect::<anyhow::Result<_>>()?;
    if args.save {
        crate::serve_config::ServeConfig::of(&opts).save(dir)?;
        note(format!(
            "saved these options in {}; a plain `kappa serve` starts this way from now on",
            dir.join(crate::serve_config::FILE).display()
        ));
    }
    let indexer = if !opts.views {
        None
    } else {
        let indexer = Indexer::open_with(db.clone(), IndexerConfig::default())?;
        kappadb_search::install_declared(&indexer)?;
        Some(Arc::new(indexer))
    };
    let local = Arc::new(match &indexer {
        Some(i) => Local::with_indexer(db.clone(), i.clone()),
        None => Local::without_views(db.clone()),
    });
    let bridge_args = args
        .bridge
        .as_deref()
        .map(crate::bridge_cmd::KafkaArgs::from_url)
        .transpose()?;
    let bridge = match &bridge_args {
        Some(a) => Some(crate::bridge_cmd::start(&local, a)?),
        None => None,
    };
    // The figures of `/metrics` and the dashboard, counted from here on.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    db.set_observer(metrics.clone());
    let dash = Arc::new(crate::dash::Dash::new(metrics));
    let rt = runtime()?;
    let json = out.json;
    let res: anyhow::Result<()> = rt.block_on(async {
        // Watch for the stop signals before anything is announced: a
        // SIGTERM that arrives right after "listening on" must stop the
        // node cleanly, not kill it with the default action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        let mut builder = Node::builder(db.clone()).mdns(opts.mdns);
        for a in listen {
            builder = builder.listen(a);
        }
        for p in peers {
            builder = builder.peer(p);
        }
        let node = builder.spawn().await?;
        let me = node.peer_id();
        let mut events = node.events();
        tokio::spawn(crate::dash::track(dash.clone(), node.events()));
        note(format!(
            "kappa node for feed {} in {}",
            db.feed_id(),
            db.dir().display()
        ));
        note(format!("peer id {me}"));
        for a in node.listen_addrs() {
            note(format!("listening on {a}"));
        }
        if !opts.views {
            note("folding no views (--no-views): storing and serving feeds only");
        }
        let (stop_compact, compact_stop) = tokio::sync::watch::channel(false);
        let compactor = (opts.compact_at > 0)
            .then(|| tokio::spawn(auto_compact(db.clone(), opts.compact_at, compact_stop)));
        // The API's handlers borrow the node; it is taken back below to
        // shut it down.
        let node = Arc::new(SharedNode::new(node));
        let api = if let Some(addr) = opts.api {
            let api =
                crate::api::start(local.clone(), Some(node.clone()), addr, dash.clone()).await?;
            note(format!(
                "API on http://{} (bearer token in {})",
                api.addr,
                db.dir().join(crate::api::TOKEN_FILE).display()
            ));
            Some(api)
        } else {
            None
        };
        note("press Ctrl-C to stop");
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        let stop = matches!(ev, NodeEvent::Stopped { .. });
                        report_event(&ev, me, json);
                        if stop { break; }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(n, "missed node events");
                    }
                    Err(_) => break,
                },
            }
        }
        note("stopping…");
        // In order: the API stops accepting requests and lets those in
        // flight finish; then the node is taken back from it (once no
        // request uses it) and shut down, so it finishes the page it is
        // storing and saves its address book.
        if let Some(api) = api {
            api.stop().await;
        }
        if let Some(node) = node.take().await {
            node.shutdown().await;
        }
        stop_compact.send_replace(true);
        if let Some(c) = compactor {
            let _ = c.await;
        }
        Ok(())
    });
    drop(rt);
    if let Some(b) = bridge
        && let Err(e) = b.stop()
    {
        note(format!("the Kafka bridge stopped with an error: {e}"));
    }
    res?;
    drop(local);
    drop(indexer);
    db.flush_index()?;
    note("stopped; everything stored is on disk");
    Ok(ExitCode::SUCCESS)
}

fn report_event(ev: &NodeEvent, me: PeerId, json: bool) {
    if json {
        let v = match ev {
            NodeEvent::Listening { addr } => {
                json!({"event": "listening", "addr": format!("{addr}/p2p/{me}")})
            }
            NodeEvent::PeerDiscovered { peer, addr } => {
                json!({"event": "discovered", "peer": peer.to_string(), "addr": addr.to_string()})
            }
            NodeEvent::PeerConnected { peer, feed } => {
                json!({"event": "connected", "peer": peer.to_string(), "feed": feed.map(|f| f.to_string())})
            }
            NodeEvent::PeerDisconnected { peer } => {
                json!({"event": "disconnected", "peer": peer.to_string()})
            }
            NodeEvent::SyncProgress {
                peer,
                feed,
                entries,
                ..
            } => {
                json!({"event": "pulled", "peer": peer.to_string(), "feed": feed.to_string(), "entries": entries})
            }
            NodeEvent::SyncIdle { peer, stats } => {
                json!({"event": "synced", "peer": peer.to_string(), "pulled": stats.pulled, "served": stats.served})
            }
            NodeEvent::PeerBanned { peer, reason } => {
                json!({"event": "banned", "peer": peer.to_string(), "reason": reason})
            }
            NodeEvent::ForkFound { feed, seq, .. } => {
                json!({"event": "fork", "feed": feed.to_string(), "seq": seq})
            }
            NodeEvent::Stopped { error } => json!({"event": "stopped", "error": error}),
            _ => return,
        };
        println!("{v}");
        return;
    }
    let text = match ev {
        NodeEvent::Listening { addr } => format!("listening on {addr}/p2p/{me}"),
        NodeEvent::PeerDiscovered { peer, addr } => format!("found {peer} at {addr} on the LAN"),
        NodeEvent::PeerConnected { peer, feed } => match feed {
            Some(f) => format!("peer {peer} joined (feed {})", f.fmt_short()),
            None => format!("peer {peer} joined"),
        },
        NodeEvent::PeerDisconnected { peer } => format!("peer {peer} left"),
        NodeEvent::SyncProgress {
            peer,
            feed,
            entries,
            ..
        } => {
            format!(
                "pulled {entries} entries of feed {} from {peer}",
                feed.fmt_short()
            )
        }
        NodeEvent::SyncIdle { peer, stats } => format!(
            "in sync with {peer} (pulled {}, served {})",
            stats.pulled, stats.served
        ),
        NodeEvent::PeerBanned { peer, reason } => format!("banned {peer} for a while: {reason}"),
        NodeEvent::ForkFound { feed, seq, .. } => {
            format!("feed {feed} is FORKED at seq {seq}; it is not extended past it")
        }
        NodeEvent::Stopped { error: Some(e) } => format!("the node stopped: {e}"),
        NodeEvent::Stopped { error: None } => "the node stopped".to_string(),
        _ => return,
    };
    note(text);
}

/// `kappa ui`: a one-time login link to the dashboard of the node that
/// serves `dir`, printed, and opened in a browser where there is a
/// desktop to open it on.
pub fn ui(dir: &Path, no_open: bool, out: &mut Out) -> anyhow::Result<ExitCode> {
    let Some(file) = crate::api::ApiFile::read(dir)? else {
        bail!(
            "no node serves {}; start one with `kappa --dir {} serve`, then run `kappa ui` again",
            dir.display(),
            dir.display()
        );
    };
    let remote = crate::client::Remote::new(&file.addr, file.token);
    let login = remote
        .ui_login()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    out.answer(&login, |l| {
        vec![
            l.url.clone(),
            format!(
                "(a one-time link, good for {} s; run `kappa ui` again for another)",
                l.expires_in
            ),
        ]
    })?;
    let desktop = std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos");
    if !no_open && desktop {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        let spawned = std::process::Command::new(opener)
            .arg(&login.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if spawned.is_err() {
            note(format!("could not run {opener}; open the link by hand"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kappa sync ADDR`: connect once, sync both ways, print what moved.
pub fn sync(db: &Db, addr: &str, timeout: u64, out: &mut Out) -> anyhow::Result<ExitCode> {
    let addr = parse_addr(addr)?;
    let before = db.status().entries;
    let bar = out::counter("syncing, entries stored");
    let db2 = db.clone();
    let bar2 = bar.clone();
    let listener = db
        .watch()
        .subscribe(move |_| bar2.set_position(db2.status().entries - before));
    let rt = runtime()?;
    let res = rt.block_on(kappadb_net::sync_once(
        db.clone(),
        addr.clone(),
        Duration::from_secs(timeout),
    ));
    db.watch().unsubscribe(listener);
    bar.finish_and_clear();
    let summary = res.with_context(|| format!("sync with {addr} failed"))?;
    print_sync(&SyncReply::of(&summary), out)
}

/// Addresses other machines can reach this node at: every non-loopback
/// interface address on the default port (loopback if there is none).
pub fn reachable_addrs(peer: PeerId) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(v4) => Some(format!("/ip4/{v4}/tcp/{DEFAULT_PORT}/p2p/{peer}")),
            std::net::IpAddr::V6(_) => None,
        })
        .filter_map(|s| s.parse().ok())
        .collect();
    if addrs.is_empty()
        && let Ok(a) = format!("/ip4/127.0.0.1/tcp/{DEFAULT_PORT}/p2p/{peer}").parse()
    {
        addrs.push(a);
    }
    addrs
}

/// `kappa invite`: the network key and this node's addresses, as one
/// string (a running node's real listen addresses).
pub fn invite(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let invite = b.invite()?;
    if out.json {
        out.json_line(&invite)?;
    } else {
        note("this invite holds the network key: anyone who has it can join; share it privately");
        out.line(&invite.invite)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kappa sync ADDR` while `kappa serve` runs: the node syncs.
pub fn sync_via(
    b: &dyn Backend,
    addr: &str,
    timeout: u64,
    out: &mut Out,
) -> anyhow::Result<ExitCode> {
    parse_addr(addr)?;
    let summary = b
        .sync(&SyncBody {
            addr: addr.to_string(),
            timeout,
        })
        .with_context(|| format!("sync with {addr} failed"))?;
    print_sync(&summary, out)
}

fn print_sync(s: &SyncReply, out: &mut Out) -> anyhow::Result<ExitCode> {
    if out.json {
        out.json_line(s)?;
    } else {
        out.line(format!(
            "synced with {}: pulled {} entries, sent {}, {} feeds touched",
            s.peer, s.pulled, s.pushed, s.feeds
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The libp2p peer id of this database's key.
pub fn peer_id_of(db: &Db) -> Result<PeerId, OpError> {
    kappadb_net::behaviour::peer_of_feed(&db.feed_id()).ok_or_else(|| {
        OpError::new(
            500,
            "bad_identity",
            "this database's feed id is not a usable libp2p identity",
        )
    })
}

/// Parse an invite given on the command line.
pub fn parse_invite(text: &str) -> anyhow::Result<Invite> {
    Ok(text.parse::<Invite>()?)
}

/// `kappa peers`: the address book.
pub fn peers(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let peers = b.peers()?;
    if !out.json && peers.is_empty() {
        note(
            "no peers known yet; `kappa serve` finds them on the LAN, or `kappa sync ADDR` reaches one",
        );
    }
    out.answer(&peers, |list| list.iter().map(out::peer_line).collect())?;
    Ok(ExitCode::SUCCESS)
}

/// `kappa block FEED` / `kappa unblock FEED`.
pub fn block(b: &dyn Backend, feed: &str, on: bool, out: &mut Out) -> anyhow::Result<ExitCode> {
    let r = b.block(feed, on)?;
    if out.json {
        out.json_line(&r)?;
    } else {
        let what = if on { "blocked" } else { "unblocked" };
        let state = if r.changed {
            what.to_string()
        } else {
            format!("already {what}")
        };
        out.line(format!("feed {} {state}", r.feed))?;
        if on {
            note("`kappa forget` also removes what is held of the feed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
