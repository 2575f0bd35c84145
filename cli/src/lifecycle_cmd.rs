//! The data lifecycle commands: `kappa delete`, `kappa kv purge`,
//! `kappa compact`, `kappa forget` (and `kappa feeds --drop`),
//! `kappa follow`, `kappa unfollow`. Each runs through a [`Backend`], so
//! it works the same with and without a node running.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;

use crate::answer::{BackupReply, CompactReply, DeleteReply, FollowReply, ForgetReply, HoldReply};
use crate::ops::Backend;
use crate::out::{self, Out, note};
use crate::params::{BackupBody, DeleteBody, FollowBody};

/// Options of `kappa delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// `[FEED] SEQ...`: the seqs to delete, optionally after the feed
    /// (which must be this database's own: "self", its id or a prefix).
    #[arg(value_name = "FEED|SEQ")]
    pub targets: Vec<String>,
    /// Also delete every entry before this seq (a prune point).
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
    /// Also delete the entry with this id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
}

/// Options of `kappa follow`.
#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// Feeds to follow (ids or unique prefixes). None: print the policy.
    pub feeds: Vec<String>,
    /// Follow every feed of the network (the default policy), except the
    /// ones unfollowed afterwards.
    #[arg(long, conflicts_with = "only")]
    pub all: bool,
    /// Follow only this node's feed and the FEEDs given; every other feed
    /// held is forgotten.
    #[arg(long)]
    pub only: bool,
}

/// Options of `kappa restore`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["src", "release"]))]
pub struct RestoreArgs {
    /// The backup to restore (from `kappa backup`).
    pub src: Option<PathBuf>,
    /// Instead of restoring, lift the hold of --dir's restored database:
    /// let it append before it has synced with a peer.
    #[arg(long, requires = "i_know_this_is_the_newest", conflicts_with = "src")]
    pub release: bool,
    /// With --release: no other copy of this database appended after the
    /// backup was made (if one did, appending here forks the feed for good).
    #[arg(long)]
    pub i_know_this_is_the_newest: bool,
}

/// Split `kappa delete`'s positional arguments into the feed (if the
/// first one is not a number) and the seqs, and check that the feed is
/// this database's.
fn delete_body(b: &dyn Backend, a: DeleteArgs) -> anyhow::Result<DeleteBody> {
    let mut args = a.targets.into_iter().peekable();
    if let Some(first) = args.peek()
        && first.parse::<u64>().is_err()
    {
        let feed = args.next().unwrap_or_default();
        let own = b.id()?.feed;
        let is_own = feed == "self" || (feed.len() >= 4 && own.starts_with(&feed));
        if !is_own {
            bail!(
                "only an entry's author can delete it, and {feed} is not this database's feed ({}); \
                 to stop holding another feed, `kappa forget FEED`",
                out::short(&own)
            );
        }
    }
    let seqs = args
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| anyhow::anyhow!("'{s}' is not a seq (a whole number from 1)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if seqs.is_empty() && a.ids.is_empty() && a.before.is_none() {
        bail!("name what to delete: `kappa delete SEQ...`, `--before SEQ` or `--id ID`");
    }
    Ok(DeleteBody {
        seqs,
        ids: a.ids,
        before: a.before,
    })
}

fn deleted_line(d: &DeleteReply) -> Vec<String> {
    let mut what = Vec::new();
    if d.targets > 0 {
        let s = if d.targets == 1 { "y" } else { "ies" };
        what.push(format!("{} entr{s}", d.targets));
    }
    if let Some(n) = d.up_to {
        what.push(format!("every entry up to seq {n}"));
    }
    vec![format!(
        "deleted {} (deletion entry seq {}, {})",
        what.join(" and "),
        d.seq,
        out::short(&d.id)
    )]
}

/// `kappa delete`.
pub fn delete(b: &dyn Backend, a: DeleteArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let body = delete_body(b, a)?;
    let d = b.delete(&body)?;
    out.answer(&d, deleted_line)?;
    if !out.json {
        note(
            "peers erase the payloads when the deletion reaches them; `kappa compact` gives the space back",
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kappa kv purge KEY`.
pub fn kv_purge(b: &dyn Backend, key: &str, out: &mut Out) -> anyhow::Result<ExitCode> {
    let d = b.kv_purge(key)?;
    out.answer(&d, |d| {
        vec![format!(
            "purged {} op{} of this feed on {key:?} (deletion entry seq {})",
            d.targets,
            if d.targets == 1 { "" } else { "s" },
            d.seq
        )]
    })?;
    Ok(ExitCode::SUCCESS)
}

fn compacted_lines(c: &CompactReply) -> Vec<String> {
    if c.segments == 0 {
        return vec!["nothing to compact".to_string()];
    }
    vec![format!(
        "compacted {} segments: {} → {} ({} given back)",
        c.segments,
        out::bytes(c.bytes_before),
        out::bytes(c.bytes_after),
        out::bytes(c.reclaimed)
    )]
}

/// `kappa compact`.
pub fn compact(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let c = b.compact()?;
    out.answer(&c, compacted_lines)?;
    Ok(ExitCode::SUCCESS)
}

/// `kappa forget FEED` and `kappa feeds --drop FEED`.
pub fn forget(b: &dyn Backend, feed: &str, out: &mut Out) -> anyhow::Result<ExitCode> {
    let f: ForgetReply = b.forget(feed)?;
    out.answer(&f, |f| {
        vec![if f.forgotten {
            format!(
                "forgot feed {} and blocked it; `kappa compact` gives its space back",
                f.feed
            )
        } else {
            format!("feed {} blocked (nothing of it was held)", f.feed)
        }]
    })?;
    Ok(ExitCode::SUCCESS)
}

fn policy_lines(p: &FollowReply) -> Vec<String> {
    let mut lines = vec![match (p.mode.as_str(), p.feeds.len()) {
        ("all", 0) => "following every feed of the network".to_string(),
        ("all", n) => format!("following every feed of the network but {n}:"),
        (_, n) => format!("following only this node's feed and {n} more:"),
    }];
    lines.extend(p.feeds.iter().map(|f| format!("  {f}")));
    lines
}

/// `kappa follow`.
pub fn follow(b: &dyn Backend, a: FollowArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let policy = if a.feeds.is_empty() && !a.all && !a.only {
        b.following()?
    } else {
        b.set_following(&FollowBody {
            feeds: a.feeds,
            follow: true,
            all: a.all,
            only: a.only,
        })?
    };
    out.answer(&policy, policy_lines)?;
    Ok(ExitCode::SUCCESS)
}

/// `kappa unfollow FEED...`.
pub fn unfollow(b: &dyn Backend, feeds: Vec<String>, out: &mut Out) -> anyhow::Result<ExitCode> {
    let policy = b.set_following(&FollowBody {
        feeds,
        follow: false,
        all: false,
        only: false,
    })?;
    out.answer(&policy, policy_lines)?;
    if !out.json {
        note("what was held of those feeds is forgotten; `kappa compact` gives the space back");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kappa backup DEST`: through the node when one runs, else directly.
pub fn backup(b: &dyn Backend, dest: &Path, out: &mut Out) -> anyhow::Result<ExitCode> {
    let dest = std::path::absolute(dest)
        .map_err(|e| anyhow::anyhow!("cannot use {} as a destination: {e}", dest.display()))?;
    let r = b.backup(&BackupBody {
        dest: dest.display().to_string(),
    })?;
    out.answer(&r, |r: &BackupReply| {
        vec![
            format!(
                "backed up {} of log (own feed at seq {}) to {}",
                out::bytes(r.log_bytes),
                r.own_seq,
                r.dest
            ),
            format!("restore it with: kappa --dir NEW_DIR restore {}", r.dest),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `kappa restore SRC` into `dir`.
pub fn restore(dir: &Path, src: &Path, out: &mut Out) -> anyhow::Result<ExitCode> {
    let db = kappadb_core::Db::restore(src, dir).map_err(|e| match e {
        kappadb_core::StoreError::AlreadyExists { .. } => anyhow::anyhow!(
            "{} already holds a database (or other files); restore into a new directory with --dir",
            dir.display()
        ),
        kappadb_core::StoreError::NotADatabase { .. } => anyhow::anyhow!(
            "{} is not a kappadb backup (no config.json, keys and log)",
            src.display()
        ),
        other => anyhow::Error::new(other).context(format!(
            "cannot restore {} into {}",
            src.display(),
            dir.display()
        )),
    })?;
    let seq = db.head(&db.feed_id()).map_or(0, |h| h.seq);
    let held = db.publish_hold().map(|h| h.to_string());
    let r = HoldReply { held };
    out.answer(&r, |_| {
        vec![
            format!(
                "restored {} into {} (own feed at seq {seq})",
                src.display(),
                dir.display()
            ),
            "appends wait until this database has synced with a peer (`kappa sync ADDR` or `kappa serve`), so that it cannot fork its own feed".to_string(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `kappa restore --release --i-know-this-is-the-newest`.
pub fn release_hold(b: &dyn Backend, out: &mut Out) -> anyhow::Result<ExitCode> {
    let r = b.release_hold()?;
    out.answer(&r, |r: &HoldReply| match &r.held {
        None => vec!["appends are no longer held".to_string()],
        Some(why) => vec![format!("still held: {why}")],
    })?;
    Ok(ExitCode::SUCCESS)
}
