//! `kappa`: the kappadb command-line tool.
//!
//! Thin by design: parse arguments with clap, call the libraries, render
//! human or JSON output. Exit status: 0 on success, 1 on an error (one line
//! on stderr saying what went wrong and what to do), 2 on a usage error.
//! A closed stdout (`kappa log | head`) is a clean exit.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod answer;
mod api;
mod bridge_cmd;
mod client;
mod cmd;
mod dash;
mod follow;
mod group_commit;
mod identity;
mod identity_cmd;
mod lifecycle;
mod lifecycle_cmd;
mod metrics;
mod net_cmd;
mod ops;
mod out;
mod params;
mod routes;
mod serve_config;
mod service;
mod views_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sled allocates heavily; mimalloc makes indexing about twice as fast.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kappadb: a peer-to-peer replicated log database.
#[derive(Parser, Debug)]
#[command(name = "kappa", version, about, long_about = None)]
pub struct Cli {
    /// Database directory [default: the platform data dir, e.g. ~/.local/share/kappadb].
    #[arg(long, global = true, env = "KAPPA_DIR")]
    pub dir: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in UTC (RFC 3339) instead of the local time zone.
    #[arg(long, global = true)]
    pub utc: bool,
    /// More log output on stderr: -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output: errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// How log lines look: text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    Text,
    /// One JSON object per line.
    Json,
}

/// The log filter: `KAPPA_LOG`, else `RUST_LOG` (both in `RUST_LOG`'s
/// syntax, e.g. `kappadb_net=debug`), else the level `-v`/`-q` ask for.
fn log_filter(verbose: u8, quiet: bool) -> tracing_subscriber::EnvFilter {
    for var in ["KAPPA_LOG", "RUST_LOG"] {
        if let Ok(f) = tracing_subscriber::EnvFilter::try_from_env(var) {
            return f;
        }
    }
    let ours = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "warn,kappadb=info,kappa=info",
        (false, 2) => "info,kappadb=debug,kappa=debug",
        (false, _) => "info,kappadb=trace,kappa=trace",
    };
    tracing_subscriber::EnvFilter::new(ours)
}

fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let filter = log_filter(cli.verbose, cli.quiet);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a database: feed key, network key, log and index.
    Init {
        /// Largest payload in bytes this database accepts.
        #[arg(long, default_value_t = kappadb_core::db::DEFAULT_MAX_PAYLOAD)]
        max_payload: u32,
        /// Join the network of this invite (from `kappa invite`).
        #[arg(long)]
        join: Option<String>,
    },
    /// Print this database's feed id.
    Id,
    /// Append JSON entries: one from the argument, or one per line from
    /// --file or stdin.
    Append {
        /// A JSON value (quote strings: '"hello"'). Omit to read lines.
        #[arg(value_name = "JSON")]
        value: Option<String>,
        /// Read one JSON value per line from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Print entries in log order.
    Log {
        /// Only this feed (id, unique prefix, or "self").
        #[arg(long)]
        feed: Option<String>,
        /// Start at this log offset.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// Keep printing new records as they land, until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print one entry.
    Get {
        /// Feed id, unique prefix, or "self".
        feed: String,
        /// Sequence number (1-based).
        seq: u64,
        /// The entry exactly as stored: the payload's bytes on stdout, or
        /// with --json the signed header's bytes and the payload too.
        #[arg(long)]
        raw: bool,
    },
    /// List every known feed with its head.
    Feeds {
        /// Forget this feed instead (see `kappa forget`).
        #[arg(long, value_name = "FEED")]
        drop: Option<String>,
    },
    /// Re-check every chain, signature and payload hash in the log.
    Verify,
    /// Rebuild the feed index from the log.
    Reindex,
    /// Show the database's state.
    Status,
    /// The key-value view: put, get, del, list.
    #[command(subcommand)]
    Kv(views_cmd::KvCommand),
    /// Entries ordered by (timestamp, author, seq), newest first.
    Timeline(views_cmd::TimelineArgs),
    /// Views: list, rebuild, digest, add a field index or a search view,
    /// query it.
    #[command(subcommand)]
    View(views_cmd::ViewCommand),
    /// Full-text search in a search view, best matches first.
    Search(views_cmd::SearchArgs),
    /// Run the node until Ctrl-C: listen, discover, sync, keep views
    /// indexed (creates the database if there is none).
    Serve(net_cmd::ServeArgs),
    /// Stream the log into another system: `kappa bridge kafka --brokers
    /// HOST:PORT --topic TOPIC` (inside a node: `serve --bridge`).
    #[command(subcommand)]
    Bridge(bridge_cmd::BridgeCommand),
    /// Identities: one person, several devices (new, export, import,
    /// show, invite, join, revoke).
    #[command(subcommand)]
    Identity(identity_cmd::IdentityCommand),
    /// Open the web dashboard of the node serving this database: prints a
    /// one-time login link and opens it in a browser where there is one.
    Ui {
        /// Only print the link.
        #[arg(long)]
        no_open: bool,
    },
    /// Sync once with a peer, both ways, until neither misses anything.
    Sync {
        /// The peer's multiaddr, e.g. /ip4/192.168.1.20/tcp/4747 (the
        /// /p2p/PEER suffix is optional).
        addr: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print an invite (network key and this node's addresses) for `init --join`.
    Invite,
    /// List known peers, their addresses and last sync.
    Peers,
    /// Stop storing and serving a feed.
    Block {
        /// Feed id, or unique prefix of a known feed.
        feed: String,
    },
    /// Undo `kappa block`.
    Unblock {
        /// Feed id, or unique prefix of a known feed.
        feed: String,
    },
    /// Delete entries of this database's own feed: peers erase their
    /// payloads, views forget them.
    Delete(lifecycle_cmd::DeleteArgs),
    /// Give back the disk space of erased payloads and forgotten feeds.
    Compact,
    /// Block a feed and remove everything held of it (entries, views).
    Forget {
        /// Feed id, or unique prefix of a known feed.
        feed: String,
    },
    /// Print the replication policy, or follow feeds (again).
    Follow(lifecycle_cmd::FollowArgs),
    /// Write a consistent copy of the database (log, keys, config) to
    /// DEST, also while `kappa serve` runs. Restore it with `kappa restore`.
    Backup {
        /// A directory that does not exist yet (or is empty).
        dest: PathBuf,
    },
    /// Restore a backup into --dir (which must hold no database). The
    /// restored database appends only once it has synced with a peer, so
    /// that it cannot fork its own feed.
    Restore(lifecycle_cmd::RestoreArgs),
    /// Print a shell completion script: `kappa completions bash >
    /// ~/.local/share/bash-completion/completions/kappa`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a service definition that runs `kappa serve` on this
    /// database at login: a systemd user unit or a launchd agent.
    Service {
        /// The service manager.
        #[arg(value_enum)]
        manager: service::Manager,
    },
    /// Print the manual page (roff): `kappa man > kappa.1; man ./kappa.1`.
    Man,
    /// Stop replicating feeds; what was held of them is forgotten.
    Unfollow {
        /// Feed ids or unique prefixes.
        #[arg(required = true)]
        feeds: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Known before parsing, so that a usage error answers in JSON too.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if json {
                out::json_error("usage", &e.kind().to_string(), &e.render().to_string());
            } else {
                let _ = e.print();
            }
            return ExitCode::from(2);
        }
    };
    init_logging(&cli);
    let json = cli.json;
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<out::BrokenPipe>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            let usage = e.downcast_ref::<out::Usage>().is_some();
            let msg = format!("{e:#}");
            if json {
                let code = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<answer::OpError>())
                    .map_or(if usage { "usage" } else { "error" }, |o| o.code.as_str());
                out::json_error(code, "", &msg);
            } else {
                out::note(format!("error: {msg}"));
            }
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
