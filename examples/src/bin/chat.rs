//! `kappa-chat`: a LAN chat on kappadb.
//!
//! ```text
//! kappa-chat --dir DIR --name NAME [--join INVITE] [--listen MULTIADDR]...
//!            [--peer MULTIADDR]... [--no-mdns] [--history N]
//! ```
//!
//! Each message is an entry `{"type":"chat","user":NAME,"text":LINE}` in the
//! writer's own feed. A kappadb-net node finds the other chats of the
//! network (mDNS on the LAN, `--peer` addresses, the invite's addresses and
//! peers seen before) and replicates every feed, so every chat ends up with
//! every message, and keeps them across restarts.
//!
//! - At start: the history, from the `timeline` view (type `chat`, oldest
//!   first), then this chat's addresses and invite.
//! - Then: every new chat entry of any feed, as it lands in the local log
//!   (typed here or pulled from a peer), by following the log from where
//!   the history stopped (a `kappadb_net::Subscription`).
//! - Each line read on stdin is sent. End of input (Ctrl-D), Ctrl-C or
//!   SIGTERM stops the node cleanly.
//!
//! Lines this program prints about itself start with `* `; messages look
//! like `[HH:MM:SS] name: text` (UTC time of the author's clock).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kappadb_core::{Db, LogRecord};
use kappadb_examples::{
    ChatMessage, Invite, advertised_addrs, open_or_create, parse_addr, parse_invite,
};
use kappadb_net::{Node, NodeEvent, NodeHandle, Subscription};
use kappadb_views::{Indexer, Order, TimelineQuery};
use tokio::sync::mpsc;

/// A LAN chat on kappadb: type a line to send it, Ctrl-D to quit.
#[derive(Parser, Debug)]
#[command(name = "kappa-chat")]
struct Args {
    /// The database directory (created on first run).
    #[arg(long)]
    dir: PathBuf,
    /// Your name in the chat.
    #[arg(long)]
    name: String,
    /// Join the network of this invite (`kappa-invite-v1:…`, printed by
    /// another chat or by `kappa invite`) when creating the database.
    #[arg(long)]
    join: Option<String>,
    /// Listen on this multiaddr (repeatable).
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    listen: Vec<String>,
    /// Connect to this peer (repeatable).
    #[arg(long)]
    peer: Vec<String>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// How many past messages to show at start.
    #[arg(long, default_value_t = 100)]
    history: usize,
}

/// Print one line to stdout; an error (say, a closed pipe) ends the chat.
fn say(line: impl Display) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to stdout")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let invite = args.join.as_deref().map(parse_invite).transpose()?;
    let (db, created) = open_or_create(&args.dir, invite.as_ref())?;
    if created {
        say(format_args!(
            "* created a new chat database in {}",
            args.dir.display()
        ))?;
    }
    say(format_args!(
        "* {} chatting as {} (feed {})",
        args.dir.display(),
        args.name,
        db.feed_id().fmt_short()
    ))?;

    // The views, folded on a background thread as entries land.
    let indexer = Indexer::open(db.clone())?;

    // History. Nothing writes to the database until the node starts, so
    // the timeline's checkpoint is exactly where the history stops and the
    // live part must start.
    indexer.wait_until_caught_up("timeline", Duration::from_secs(60))?;
    let timeline = indexer.timeline()?;
    let shown_up_to = timeline.reader().checkpoint().next_offset;
    let mut past = timeline.query(&TimelineQuery {
        kind: Some(kappadb_examples::CHAT_TYPE.into()),
        limit: args.history,
        order: Order::Descending, // the newest N…
        ..TimelineQuery::default()
    })?;
    past.reverse(); // …oldest first
    say(format_args!("* history: {} message(s)", past.len()))?;
    for item in &past {
        if let Some(msg) = item.payload.as_deref().and_then(ChatMessage::from_payload) {
            say(msg.format(item.timestamp))?;
        }
    }
    say("* end of history")?;

    let rt = kappadb_examples::runtime()?;
    let res = rt.block_on(run(&db, &args, invite.as_ref(), shown_up_to));
    // Stop folding, then make sled's derived state durable too (entries
    // already are).
    drop(indexer);
    db.flush_index()?;
    res
}

/// Run the node and the chat loop until stdin ends or a signal arrives.
async fn run(db: &Db, args: &Args, invite: Option<&Invite>, from: u64) -> anyhow::Result<()> {
    let mut builder = Node::builder(db.clone()).mdns(!args.no_mdns);
    for addr in &args.listen {
        builder = builder.listen(parse_addr(addr)?);
    }
    for addr in &args.peer {
        builder = builder.peer(parse_addr(addr)?);
    }
    for addr in invite.map(|i| i.addrs.as_slice()).unwrap_or_default() {
        builder = builder.peer(addr.clone());
    }
    let node = builder.spawn().await?;
    let res = chat_loop(db, args, &node, from).await;
    node.shutdown().await;
    say("* bye")?;
    res
}

async fn chat_loop(db: &Db, args: &Args, node: &NodeHandle, from: u64) -> anyhow::Result<()> {
    let mut events = node.events();
    let addrs = node.listen_addrs();
    for addr in &addrs {
        say(format_args!("* listening on {addr}"))?;
    }
    let invite = Invite {
        key: db.network_key()?,
        addrs: advertised_addrs(&addrs),
    };
    say(format_args!("* invite: {invite}"))?;
    say("* type a message and press Enter; Ctrl-D quits")?;

    // The log from where the history stopped, then each record as it
    // lands: own appends and pages pulled from peers alike, in the order
    // this peer stored them (so a peer's backlog shows up as it is pulled).
    let mut log = Subscription::new(db.clone(), from);

    // Stdin on a plain thread: a blocked read must not keep the runtime
    // from shutting down. Dropping the sender (end of input) ends the chat.
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let stop = kappadb_examples::shutdown_signal();
    tokio::pin!(stop);
    // Who is connected, by peer id, to name them when they leave.
    let mut peers = HashMap::new();
    let res = loop {
        tokio::select! {
            res = &mut stop => break res,
            // `next` is cancel-safe: losing the race loses no record.
            record = log.next() => match record {
                Some(record) => print_message(&record?)?,
                None => break Ok(()),
            },
            line = lines.recv() => {
                let Some(line) = line else { break Ok(()) };
                let text = line.trim_end();
                if text.is_empty() {
                    continue;
                }
                let msg = ChatMessage { user: args.name.clone(), text: text.to_string() };
                // Durable on return; it shows up through the log like any
                // other message.
                if let Err(e) = db.append(msg.to_payload()) {
                    say(format_args!("* not sent: {e}"))?;
                }
            }
            ev = events.recv() => match ev {
                Ok(NodeEvent::PeerConnected { peer, feed }) => {
                    let who = feed.map_or_else(|| peer.to_string(), |f| f.fmt_short());
                    say(format_args!("* {who} connected"))?;
                    peers.insert(peer, who);
                }
                Ok(NodeEvent::PeerDisconnected { peer }) => {
                    let who = peers.remove(&peer).unwrap_or_else(|| peer.to_string());
                    say(format_args!("* {who} left"))?;
                }
                Ok(NodeEvent::Stopped { error }) => {
                    break match error {
                        Some(e) => Err(anyhow::anyhow!("the node stopped: {e}")),
                        None => Ok(()),
                    };
                }
                // Events we do not show, or missed because we were slow.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break Ok(()),
            },
        }
    };
    // What landed but was not shown yet (say, the line typed just before
    // the end of input).
    let end = db.log_end();
    while log.offset() < end {
        match log.next().await {
            Some(record) => print_message(&record?)?,
            None => break,
        }
    }
    res
}

/// Print a log record if it is a chat message.
fn print_message(record: &LogRecord) -> anyhow::Result<()> {
    let Some(entry) = record.entry() else {
        return Ok(()); // a fork proof
    };
    if let Some(msg) = entry.payload.bytes().and_then(ChatMessage::from_payload) {
        say(msg.format(entry.header.timestamp))?;
    }
    Ok(())
}
