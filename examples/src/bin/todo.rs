//! `kappa-todo`: an offline-first todo list on kappadb's `kv` view.
//!
//! ```text
//! kappa-todo --dir DIR init [--join INVITE]
//! kappa-todo --dir DIR invite [MULTIADDR]...
//! kappa-todo --dir DIR add TEXT...        # prints the new item's id
//! kappa-todo --dir DIR done ID | undo ID | rm ID
//! kappa-todo --dir DIR edit ID TEXT...
//! kappa-todo --dir DIR list
//! kappa-todo --dir DIR serve [--listen MULTIADDR]... [--peer MULTIADDR]... [--no-mdns]
//! kappa-todo --dir DIR sync MULTIADDR
//! ```
//!
//! Every command works offline against the local database; `serve` and
//! `sync` exchange entries with the other lists of the network.
//!
//! # Data
//!
//! An item is two `kv` registers, so that marking an item done on one
//! laptop and editing its text on another, both offline, keeps both
//! changes:
//!
//! ```text
//! todo/<id>  {"text": "...", "created": <ms>}   (kv.del when removed)
//! done/<id>  true | false
//! ```
//!
//! An id is `<first 6 hex digits of the author's feed>-<seq>`: unique per
//! feed without coordination, short enough to type.
//!
//! Every write names the key's current heads in `links`: it supersedes
//! exactly what this peer had seen. Two writes made without seeing each
//! other are both kept as heads; the `kv` view answers with the greatest by
//! `(timestamp, author, seq)`, the same on every peer, and `list` marks the
//! item until the next write (which links both) settles it.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kappadb_core::{Db, EntryId, now_ms};
use kappadb_examples::{Invite, open_or_create, parse_addr, parse_invite};
use kappadb_net::{Node, NodeEvent};
use kappadb_views::kv::{del_payload, put_payload};
use kappadb_views::{Indexer, IndexerConfig, KvReader};
use serde_json::{Value, json};

/// An offline-first todo list, synced peer to peer.
#[derive(Parser, Debug)]
#[command(name = "kappa-todo")]
struct Args {
    /// The database directory (created on first use).
    #[arg(long, env = "KAPPA_TODO_DIR")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the list's database, in a new network or in an invite's.
    Init {
        /// An invite printed by `kappa-todo invite` (or `kappa invite`).
        #[arg(long)]
        join: Option<String>,
    },
    /// Print an invite to this list's network, with the addresses given
    /// (say, where `serve` listens).
    Invite {
        /// Addresses to put in the invite.
        addrs: Vec<String>,
    },
    /// Add an item; prints its id.
    Add {
        /// The item's text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Mark an item done.
    Done {
        /// The item's id.
        id: String,
    },
    /// Mark an item not done.
    Undo {
        /// The item's id.
        id: String,
    },
    /// Change an item's text.
    Edit {
        /// The item's id.
        id: String,
        /// The new text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Remove an item.
    Rm {
        /// The item's id.
        id: String,
    },
    /// Print every item, oldest first.
    List,
    /// Sync once with a peer running `serve`, both ways.
    Sync {
        /// The peer's address, e.g. /ip4/192.168.1.20/tcp/4748/p2p/12D3…
        addr: String,
    },
    /// Run a node until Ctrl-C, so others can sync with this list.
    Serve {
        /// Listen on this multiaddr (repeatable).
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4748")]
        listen: Vec<String>,
        /// Keep connected to this peer (repeatable).
        #[arg(long)]
        peer: Vec<String>,
        /// Do not look for peers on the LAN with mDNS.
        #[arg(long)]
        no_mdns: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kappa-todo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.dir;
    if let Command::Init { join } = &args.command {
        if dir.join(kappadb_core::db::files::CONFIG).exists() {
            bail!("{} already holds a database", dir.display());
        }
        let invite = join.as_deref().map(parse_invite).transpose()?;
        let (db, _) = open_or_create(&dir, invite.as_ref())?;
        println!("{}", db.feed_id());
        return Ok(());
    }
    let (db, created) = open_or_create(&dir, None)?;
    if created {
        eprintln!("created a new todo list in {}", dir.display());
    }
    match args.command {
        Command::Init { .. } => Ok(()),
        Command::Invite { addrs } => {
            let addrs = addrs
                .iter()
                .map(|a| parse_addr(a))
                .collect::<Result<_, _>>()?;
            let invite = Invite {
                key: db.network_key()?,
                addrs,
            };
            eprintln!("anyone with this invite can join the list's network; share it privately");
            println!("{invite}");
            Ok(())
        }
        Command::Add { text } => {
            let todo = Todo::open(&db)?;
            // The seq this append will get: only this process writes to
            // this feed (the directory is locked), so it is the head's + 1.
            let seq = db.head(&db.feed_id()).map_or(1, |h| h.seq + 1);
            let id = format!("{}-{seq}", &db.feed_id().to_string()[..6]);
            todo.put(
                &item_key(&id),
                json!({"text": text.join(" "), "created": now_ms()}),
            )?;
            println!("{id}");
            Ok(())
        }
        Command::Done { id } => Todo::open(&db)?.set_done(&id, true),
        Command::Undo { id } => Todo::open(&db)?.set_done(&id, false),
        Command::Edit { id, text } => {
            let todo = Todo::open(&db)?;
            let mut item = todo.item(&id)?;
            item["text"] = Value::from(text.join(" "));
            todo.put(&item_key(&id), item)
        }
        Command::Rm { id } => {
            let todo = Todo::open(&db)?;
            todo.item(&id)?;
            todo.del(&item_key(&id))?;
            todo.del(&done_key(&id))
        }
        Command::List => {
            let mut out = String::new();
            for line in Todo::open(&db)?.list()? {
                out.push_str(&line);
                out.push('\n');
            }
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("cannot write to stdout")
        }
        Command::Sync { addr } => sync(db, &addr),
        Command::Serve {
            listen,
            peer,
            no_mdns,
        } => serve(db, &listen, &peer, no_mdns),
    }
}

fn item_key(id: &str) -> String {
    format!("todo/{id}")
}

fn done_key(id: &str) -> String {
    format!("done/{id}")
}

/// The todo list over one database: writes go to the log, reads to the
/// `kv` view.
struct Todo<'a> {
    db: &'a Db,
    kv: KvReader,
}

impl<'a> Todo<'a> {
    /// Fold everything the log holds into the views (on this thread: a
    /// one-shot command needs no background indexer), then read them.
    fn open(db: &'a Db) -> anyhow::Result<Self> {
        let indexer = Indexer::open_with(
            db.clone(),
            IndexerConfig {
                live: false,
                ..IndexerConfig::default()
            },
        )?;
        indexer.catch_up()?;
        Ok(Self {
            db,
            kv: indexer.kv()?,
        })
    }

    /// The ids of `key`'s current heads: what a new write supersedes.
    fn heads(&self, key: &str) -> anyhow::Result<Vec<EntryId>> {
        Ok(self.kv.heads(key)?.iter().map(|h| h.id).collect())
    }

    fn put(&self, key: &str, value: Value) -> anyhow::Result<()> {
        self.db
            .append(put_payload(key, &value, &self.heads(key)?))?;
        Ok(())
    }

    fn del(&self, key: &str) -> anyhow::Result<()> {
        let links = self.heads(key)?;
        if !links.is_empty() {
            self.db.append(del_payload(key, &links))?;
        }
        Ok(())
    }

    /// The item's value (text, created), or an error naming the id.
    fn item(&self, id: &str) -> anyhow::Result<Value> {
        match self.kv.get(&item_key(id))? {
            Some(v) if v.is_object() => Ok(v),
            _ => bail!("there is no item {id}; `kappa-todo list` shows the ids"),
        }
    }

    fn set_done(&self, id: &str, done: bool) -> anyhow::Result<()> {
        self.item(id)?;
        self.put(&done_key(id), Value::Bool(done))
    }

    /// One line per item, oldest first (ties by id): the same bytes on
    /// every peer that holds the same entries.
    fn list(&self) -> anyhow::Result<Vec<String>> {
        let mut items = Vec::new();
        for kv_item in self.kv.list("todo/") {
            let kv_item = kv_item?;
            let Some(id) = kv_item.key.strip_prefix("todo/") else {
                continue;
            };
            // Values come from any peer of the network: read defensively.
            let text = kv_item.value["text"].as_str().unwrap_or("").to_string();
            let created = kv_item.value["created"].as_u64().unwrap_or(0);
            let done = self.kv.get(&done_key(id))? == Some(Value::Bool(true));
            let mut line = format!(
                "[{}] {id}  {}",
                if done { 'x' } else { ' ' },
                kappadb_examples::printable(&text)
            );
            if kv_item.heads > 1 {
                line.push_str(&format!(
                    "  ({} concurrent versions; the newest is shown, an edit settles it)",
                    kv_item.heads
                ));
            }
            items.push((created, id.to_string(), line));
        }
        items.sort();
        Ok(items.into_iter().map(|(_, _, line)| line).collect())
    }
}

/// One sync with a peer, both ways, then exit.
fn sync(db: Db, addr: &str) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let rt = kappadb_examples::runtime()?;
    let summary = rt
        .block_on(kappadb_net::sync_once(
            db,
            addr.clone(),
            kappadb_examples::SYNC_TIMEOUT,
        ))
        .with_context(|| format!("sync with {addr} failed"))?;
    println!(
        "synced with {}: pulled {} entries, sent {}",
        summary.peer, summary.pulled, summary.pushed_estimate
    );
    Ok(())
}

/// Run a node until Ctrl-C or SIGTERM, so peers can sync with this list.
fn serve(db: Db, listen: &[String], peers: &[String], no_mdns: bool) -> anyhow::Result<()> {
    let rt = kappadb_examples::runtime()?;
    rt.block_on(async {
        let mut builder = Node::builder(db.clone()).mdns(!no_mdns);
        for a in listen {
            builder = builder.listen(parse_addr(a)?);
        }
        for a in peers {
            builder = builder.peer(parse_addr(a)?);
        }
        let node = builder.spawn().await?;
        for addr in node.listen_addrs() {
            println!("listening on {addr}");
        }
        eprintln!("serving the list; Ctrl-C stops");
        let mut events = node.events();
        let stop = kappadb_examples::shutdown_signal();
        tokio::pin!(stop);
        let res = loop {
            tokio::select! {
                res = &mut stop => break res,
                ev = events.recv() => match ev {
                    Ok(NodeEvent::SyncIdle { peer, stats }) => eprintln!(
                        "in sync with {peer} (pulled {}, served {})",
                        stats.pulled, stats.served
                    ),
                    Ok(NodeEvent::Stopped { error: Some(e) }) => {
                        break Err(anyhow::anyhow!("the node stopped: {e}"))
                    }
                    Ok(NodeEvent::Stopped { error: None }) => break Ok(()),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break Ok(()),
                },
            }
        };
        node.shutdown().await;
        res
    })?;
    db.flush_index()?;
    Ok(())
}
