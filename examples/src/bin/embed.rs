//! `kappa-embed`: the smallest useful embedding of kappadb, to copy from.
//!
//! ```text
//! kappa-embed --dir DIR                      # run it twice: the second run sees the first
//! kappa-embed --dir DIR --listen /ip4/0.0.0.0/tcp/4749 [--peer MULTIADDR]... [--no-mdns]
//! ```
//!
//! It opens (or creates) a database, folds it into the built-in views plus
//! a custom one, follows the log, appends two entries, queries the views
//! and, with `--listen`, runs a node that syncs with the network until
//! Ctrl-C.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kappadb_core::{CreateOptions, Db};
use kappadb_views::{
    Indexer, Order, TimelineQuery, View, ViewError, ViewRecord, ViewTx, kv::put_payload,
};
use serde_json::{Value, json};

/// Open a kappadb database, append, query, optionally sync.
#[derive(Parser, Debug)]
#[command(name = "kappa-embed")]
struct Args {
    /// The database directory (created on first run).
    #[arg(long)]
    dir: PathBuf,
    /// After the demo, run a node listening here until Ctrl-C.
    #[arg(long)]
    listen: Option<String>,
    /// With --listen: also keep connected to this peer (repeatable).
    #[arg(long)]
    peer: Vec<String>,
    /// With --listen: do not look for peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
}

/// A custom view: how many entries of each payload `"type"` the log holds.
/// Its keys are the types, its values big-endian counts. Counting commutes,
/// so the result does not depend on the order entries arrive in: that is
/// the one contract a view must keep.
struct TypeCount;

impl View for TypeCount {
    fn name(&self) -> &str {
        "type-count"
    }

    fn version(&self) -> u32 {
        1 // bump when `apply` changes: the view is then rebuilt from the log
    }

    fn apply(&self, batch: &[ViewRecord], tx: &mut ViewTx<'_>) -> Result<(), ViewError> {
        for record in batch {
            let Some(kind) = record.kind() else {
                tx.skip(); // not a JSON object with a "type"
                continue;
            };
            // Values are `kappadb_views::Bytes`, read as `&[u8]`.
            let count = tx.get(kind.as_bytes())?.map_or(0, |v| decode_count(&v));
            tx.insert(kind.as_bytes(), (count + 1).to_be_bytes().to_vec());
        }
        Ok(())
    }
}

fn decode_count(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_be_bytes)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wait = Duration::from_secs(30);

    // 1. Open the database, or create it (keys, network key, log) on the
    //    first run. One process per directory: the handle holds a lock.
    let db = Db::open_or_create(&args.dir, CreateOptions::default())?;
    if db.created() {
        println!("created a new database in {}", args.dir.display());
    }
    println!("feed {}", db.feed_id().fmt_short());

    // 2. Views: the built-in `kv` and `timeline`, plus ours, folded from the
    //    log on a background thread as entries land.
    let views = Indexer::open(db.clone())?;
    views.register(TypeCount)?;

    // 3. Follow the log from its end: a tail yields each record once it is
    //    durable (ours, or pages synced from peers) and waits at the end of
    //    the log. `tail.offset()` is where to resume after a restart.
    let start = db.log_end();
    let mut tail = db.tail(start);

    // 4. Append. Payloads are bytes; the views understand JSON objects with
    //    a "type". A kv put names the heads it replaces (`links`).
    views.wait_until_caught_up("kv", wait)?;
    let kv = views.kv()?;
    let runs = kv.get("runs")?.and_then(|v| v.as_u64()).unwrap_or(0) + 1;
    let replaces: Vec<_> = kv.heads("runs")?.iter().map(|h| h.id).collect();
    let appended = db.append_batch(vec![
        put_payload("runs", &json!(runs), &replaces),
        json!({"type": "note", "text": format!("hello from run {runs}")})
            .to_string()
            .into_bytes(),
    ])?; // durable when this returns: one fsync for the batch
    println!("appended {} entries", appended.len());

    // 5. The tail sees the new records. (`for record in tail` would print
    //    them and then block for more; here we take ours, with a timeout.)
    let end = db.log_end();
    println!("the log grew from offset {start} to {end}; new records:");
    for _ in &appended {
        let record = tail.next_timeout(wait).context("no news from the log")??;
        if let Some(entry) = record.entry() {
            let payload = entry.payload.bytes().unwrap_or_default();
            println!(
                "  seq {}: {}",
                entry.header.seq,
                String::from_utf8_lossy(payload)
            );
        }
    }

    // 6. Query the views once they have folded everything.
    for view in ["kv", "timeline", "type-count"] {
        views.wait_until_caught_up(view, wait)?;
    }
    let runs = views.kv()?.get("runs")?.unwrap_or_default();
    println!("kv: runs = {runs}");
    println!("timeline, notes oldest first:");
    let notes = views.timeline()?.query(&TimelineQuery {
        kind: Some("note".into()),
        order: Order::Ascending,
        ..TimelineQuery::default()
    })?;
    for note in notes {
        // Payloads come from any peer of the network: parse, never assume.
        let payload: Value =
            serde_json::from_slice(note.payload.as_deref().unwrap_or_default()).unwrap_or_default();
        println!("  {}", payload["text"].as_str().unwrap_or("?"));
    }
    println!("type-count:");
    for item in views.reader("type-count")?.scan_prefix(b"") {
        let (kind, count) = item?;
        println!(
            "  {} = {}",
            String::from_utf8_lossy(&kind),
            decode_count(&count)
        );
    }

    // 7. Optionally sync: a node listens, finds peers (mDNS on the LAN,
    //    --peer, the address book) and replicates every feed of the
    //    network; the views fold what it pulls.
    if let Some(listen) = &args.listen {
        let rt = kappadb_examples::runtime()?;
        rt.block_on(async {
            let mut node = kappadb_net::Node::builder(db.clone())
                .listen(listen.parse()?)
                .mdns(!args.no_mdns);
            for peer in &args.peer {
                node = node.peer(peer.parse()?);
            }
            let node = node.spawn().await?;
            for addr in node.listen_addrs() {
                println!("listening on {addr}");
            }
            let stopped = kappadb_examples::shutdown_signal().await;
            node.shutdown().await;
            stopped
        })?;
    }

    // Dropping the views stops their thread; flushing sled is optional
    // (entries are durable already; the views would catch up on open).
    drop(views);
    db.flush_index()?;
    Ok(())
}
