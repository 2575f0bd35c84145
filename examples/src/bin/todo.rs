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

use std::io::{Read, Write};
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
    let (db, created) = match open_or_create(&dir, None) {
        Ok(opened) => opened,
        // `serve` holds the list: hand the command to it.
        Err(e) if is_locked(&e) && dir.join(SOCKET).exists() => {
            return ask_server(&dir, &args.command);
        }
        Err(e) => return Err(e),
    };
    if created {
        eprintln!("created a new todo list in {}", dir.display());
    }
    match args.command {
        Command::Sync { addr } => sync(db, &addr),
        Command::Serve {
            listen,
            peer,
            no_mdns,
        } => serve(db, &listen, &peer, no_mdns),
        command => {
            let mut todo = Todo::open(&db)?;
            let mut out = String::new();
            exec(&db, &mut todo, command, &mut out)?;
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("cannot write to stdout")
        }
    }
}

/// Whether opening failed because another process holds the database.
fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<kappadb_core::StoreError>(),
            Some(kappadb_core::StoreError::Locked { .. })
        )
    })
}

/// Run one command that edits or reads the list, writing what it prints
/// to `out`: the same code for a command run on its own and for one that
/// `serve` runs for another process.
fn exec(db: &Db, todo: &mut Todo<'_>, command: Command, out: &mut String) -> anyhow::Result<()> {
    todo.refresh()?;
    match command {
        Command::Init { .. } => bail!("{} already holds a database", db.dir().display()),
        Command::Sync { .. } | Command::Serve { .. } => {
            bail!("the list is being served; stop `kappa-todo serve` first")
        }
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
            out.push_str(&format!("{invite}\n"));
            Ok(())
        }
        Command::Add { text } => {
            // The seq this append will get: only this process writes to
            // this feed (the directory is locked, and `serve` runs the
            // commands it is handed one at a time), so it is the head's + 1.
            let seq = db.head(&db.feed_id()).map_or(1, |h| h.seq + 1);
            let id = format!("{}-{seq}", &db.feed_id().to_string()[..6]);
            todo.put(
                &item_key(&id),
                json!({"text": text.join(" "), "created": now_ms()}),
            )?;
            out.push_str(&format!("{id}\n"));
            Ok(())
        }
        Command::Done { id } => todo.set_done(&id, true),
        Command::Undo { id } => todo.set_done(&id, false),
        Command::Edit { id, text } => {
            let mut item = todo.item(&id)?;
            item["text"] = Value::from(text.join(" "));
            todo.put(&item_key(&id), item)
        }
        Command::Rm { id } => {
            todo.item(&id)?;
            todo.del(&item_key(&id))?;
            todo.del(&done_key(&id))
        }
        Command::List => {
            for line in todo.list()? {
                out.push_str(&line);
                out.push('\n');
            }
            Ok(())
        }
    }
}

/// The socket `serve` takes commands on, in the database directory
/// (mode 0600: only this user can edit the list through it).
const SOCKET: &str = "todo.sock";

/// Largest request a client may send `serve`.
const MAX_REQUEST: u64 = 1 << 20;

/// What `serve` answers a command: its output, or the error; sent as
/// `{"out": "...", "error": null | "..."}`.
struct Reply {
    out: String,
    error: Option<String>,
}

/// The commands another process can hand to `serve`, as parsed there.
#[derive(Parser, Debug)]
#[command(name = "kappa-todo")]
struct Handed {
    #[command(subcommand)]
    command: Command,
}

/// Send this process's command line to the `serve` that holds the list,
/// print its answer.
fn ask_server(dir: &std::path::Path, command: &Command) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    if matches!(command, Command::Sync { .. } | Command::Serve { .. }) {
        bail!(
            "{} is being served by `kappa-todo serve`; stop it first",
            dir.display()
        );
    }
    // Everything after `--dir DIR` (or after the program name with
    // KAPPA_TODO_DIR): the subcommand and its arguments, as typed.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--dir" => i += 2,
            a if a.starts_with("--dir=") => i += 1,
            a => {
                rest.push(a.to_string());
                i += 1;
            }
        }
    }
    let mut stream =
        std::os::unix::net::UnixStream::connect(dir.join(SOCKET)).with_context(|| {
            format!(
                "{} is locked, and its server does not answer",
                dir.display()
            )
        })?;
    let mut line = serde_json::to_string(&rest)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream.take(64 << 20))
        .read_line(&mut answer)
        .context("the server's answer broke off")?;
    let reply: Value =
        serde_json::from_str(&answer).context("the server's answer does not decode")?;
    let out = reply["out"].as_str().unwrap_or_default();
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")?;
    match reply["error"].as_str() {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

/// Take commands from other `kappa-todo` processes on [`SOCKET`] while
/// serving, one at a time, until the process ends.
fn listen_for_commands(db: Db, listener: std::os::unix::net::UnixListener) {
    use std::io::{BufRead, BufReader};
    let mut todo = match Todo::open(&db) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kappa-todo: cannot take commands while serving: {e:#}");
            return;
        }
    };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        let reply = match read
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(serde_json::from_str::<Vec<String>>(&line)?))
        {
            Err(e) => Reply {
                out: String::new(),
                error: Some(format!("a bad request: {e}")),
            },
            Ok(args) => {
                let argv = std::iter::once("kappa-todo".to_string()).chain(args);
                match Handed::try_parse_from(argv) {
                    Err(e) => Reply {
                        out: String::new(),
                        error: Some(e.to_string()),
                    },
                    Ok(h) => {
                        let mut out = String::new();
                        let error = exec(&db, &mut todo, h.command, &mut out)
                            .err()
                            .map(|e| format!("{e:#}"));
                        Reply { out, error }
                    }
                }
            }
        };
        let mut text = json!({"out": reply.out, "error": reply.error}).to_string();
        text.push('\n');
        let _ = stream.write_all(text.as_bytes());
    }
}

/// Bind the command socket (replacing a stale one: this process holds
/// the database's lock, so no other server uses it).
fn bind_socket(dir: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
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
    indexer: Indexer,
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
            indexer,
        })
    }

    /// Fold what landed since (a peer's entries, while serving).
    fn refresh(&mut self) -> anyhow::Result<()> {
        self.indexer.catch_up()?;
        self.kv = self.indexer.kv()?;
        Ok(())
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
    let listener = bind_socket(db.dir())?;
    let handler_db = db.clone();
    std::thread::spawn(move || listen_for_commands(handler_db, listener));
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
        eprintln!("serving the list; Ctrl-C stops; other kappa-todo commands still edit it");
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
    let _ = std::fs::remove_file(db.dir().join(SOCKET));
    db.flush_index()?;
    Ok(())
}
