//! The two threads behind the swarm task, and the bounded queues between
//! the three:
//!
//! ```text
//! swarm task --ToCheck (tokio, PIPELINE_DEPTH)--> kappadb-check thread
//!     ^                                              | checks pages and proofs
//!     |                                              v
//!     +----FromSync (tokio, PIPELINE_DEPTH)---- kappadb-sync thread (Engine, BlockList)
//! ```
//!
//! Every queue is bounded. The swarm task waits for room in the check
//! queue (it stops reading the network meanwhile: back-pressure reaches
//! the peers through TCP), except for gossip, which it drops when the
//! queue is full. The check thread blocks on the sync queue; the sync
//! thread blocks on the swarm's queue, which the swarm task always drains,
//! so the cycle cannot lock up. Database writes wake the sync thread
//! through a flag and a `try_send`, never a blocking send: a write may
//! come from the sync thread itself.
//!
//! The sync thread owns the [`Engine`] (and so the only handle on the
//! database it writes with) and the [`BlockList`]: blocking a feed, and
//! picking up another process's edits of `blocked.json`, happen there.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use kappadb_core::{CheckedEntries, FeedId, ForgetError};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::blocklist::BlockList;
use crate::error::NetError;
use crate::node::NodeEvent;
use crate::policy::FollowFile;
use crate::protocol::{Engine, Follow, Input, Output, Response, receive, receive_announce};

/// Messages in flight on each queue between the swarm task and the two
/// threads. Pages are bounded separately (by the engine's in-flight
/// limits), so this bounds the small messages.
pub(super) const PIPELINE_DEPTH: usize = 256;

/// Most entries the check thread checks in one go.
const CHECK_BATCH_ENTRIES: usize = 4096;

/// How often the sync thread looks at `blocked.json` and `follow.json` for
/// edits by another process (`kappa block`, `kappa unfollow`).
const POLICY_RELOAD: Duration = Duration::from_secs(2);

/// To the check thread (and on to the sync thread).
pub(super) enum ToCheck {
    /// An engine input, as the swarm produced it.
    Input(Input<PeerId>),
    /// A decoded answer to the engine's request `tag`: pages and fork
    /// proofs are checked on the check thread.
    Response {
        peer: PeerId,
        tag: u64,
        response: Response,
    },
    /// A decoded gossip announcement, its proofs checked on the way.
    Announce {
        peer: PeerId,
        announce: crate::protocol::Announce,
    },
    /// Block or unblock a feed and say whether anything changed.
    Block {
        feed: FeedId,
        block: bool,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    /// Follow or unfollow a feed (unfollowing forgets what is held of it)
    /// and say whether anything changed.
    Follow {
        feed: FeedId,
        follow: bool,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    /// Finish what is in hand and stop.
    Shutdown,
}

/// To the sync thread: what the check thread passes on, and wake-ups.
enum ToSync {
    Input(Input<PeerId>),
    Block {
        feed: FeedId,
        block: bool,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    Follow {
        feed: FeedId,
        follow: bool,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    /// The database grew (see `dirty`); nothing else to do.
    Wake,
    Shutdown,
}

/// From the sync thread to the swarm task.
pub(super) enum FromSync {
    Output(Output<PeerId>),
    Event(NodeEvent),
    Fatal(String),
    Stopped,
}

/// Start the check and sync threads. Returns the queue into the check
/// thread and the queue out of the sync thread.
pub(super) fn start(
    engine: Engine<PeerId>,
    blocklist: BlockList,
    follow: FollowFile,
) -> Result<(mpsc::Sender<ToCheck>, mpsc::Receiver<FromSync>), NetError> {
    let (check_tx, check_rx) = mpsc::channel(PIPELINE_DEPTH);
    let (sync_tx, sync_rx) = std_mpsc::sync_channel(PIPELINE_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(PIPELINE_DEPTH);
    let max_payload = engine.store().config().max_payload_bytes;
    let wake = sync_tx.clone();
    std::thread::Builder::new()
        .name("kappadb-sync".into())
        .spawn(move || {
            let files = Policies::new(blocklist, follow);
            sync_loop(engine, files, sync_rx, wake, out_tx)
        })
        .map_err(|e| NetError::Setup(format!("cannot start the sync thread: {e}")))?;
    std::thread::Builder::new()
        .name("kappadb-check".into())
        .spawn(move || check_loop(check_rx, sync_tx, max_payload))
        .map_err(|e| NetError::Setup(format!("cannot start the check thread: {e}")))?;
    Ok((check_tx, out_rx))
}

/// The block list and the replication policy, and when their files were
/// last seen changed.
struct Policies {
    blocklist: BlockList,
    blocklist_mtime: Option<std::time::SystemTime>,
    follow: FollowFile,
    follow_mtime: Option<std::time::SystemTime>,
    checked: Instant,
}

impl Policies {
    fn new(blocklist: BlockList, follow: FollowFile) -> Self {
        Self {
            blocklist_mtime: blocklist.modified(),
            follow_mtime: follow.modified(),
            blocklist,
            follow,
            checked: Instant::now(),
        }
    }
}

/// The sync thread: feeds the engine, steps it, sends its outputs.
fn sync_loop(
    mut engine: Engine<PeerId>,
    mut files: Policies,
    rx: std_mpsc::Receiver<ToSync>,
    wake: std_mpsc::SyncSender<ToSync>,
    out: mpsc::Sender<FromSync>,
) {
    let send = |msg: FromSync| out.blocking_send(msg).is_ok();
    let dirty = Arc::new(AtomicBool::new(false));
    let listener = {
        let dirty = dirty.clone();
        engine.store().watch().subscribe(move |_| {
            if !dirty.swap(true, Ordering::AcqRel) {
                // Never block here: this may run on this very thread.
                let _ = wake.try_send(ToSync::Wake);
            }
        })
    };
    loop {
        let wait = engine
            .next_deadline()
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(500));
        let first = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut stop = false;
        let more = std::iter::from_fn(|| rx.try_recv().ok()).take(PIPELINE_DEPTH);
        for msg in first.into_iter().chain(more) {
            match msg {
                ToSync::Input(input) => engine.handle(input),
                ToSync::Block { feed, block, reply } => {
                    let res = set_blocked(&mut engine, &mut files.blocklist, feed, block, &send);
                    files.blocklist_mtime = files.blocklist.modified();
                    let _ = reply.send(res);
                }
                ToSync::Follow {
                    feed,
                    follow,
                    reply,
                } => {
                    let res = set_followed(&mut engine, &mut files.follow, feed, follow, &send);
                    files.follow_mtime = files.follow.modified();
                    let _ = reply.send(res);
                }
                ToSync::Wake => {}
                ToSync::Shutdown => stop = true,
            }
        }
        if dirty.swap(false, Ordering::AcqRel) {
            engine.handle(Input::LocalChanged);
        }
        if files.checked.elapsed() >= POLICY_RELOAD {
            files.checked = Instant::now();
            reload_policies(&mut engine, &mut files, &send);
        }
        if let Err(e) = engine.step(Instant::now()) {
            tracing::error!(error = %e, "the sync engine stopped on a database error");
            send(FromSync::Fatal(e.to_string()));
            break;
        }
        let mut open = true;
        for o in engine.take_outputs() {
            open &= send(FromSync::Output(o));
        }
        if stop || !open {
            break;
        }
    }
    engine.store().watch().unsubscribe(listener);
    // The database handle goes before the swarm task hears we stopped.
    drop(engine);
    let _ = out.blocking_send(FromSync::Stopped);
}

fn set_blocked(
    engine: &mut Engine<PeerId>,
    blocklist: &mut BlockList,
    feed: FeedId,
    block: bool,
    send: &impl Fn(FromSync) -> bool,
) -> Result<bool, NetError> {
    let changed = if block {
        blocklist.block(feed)?
    } else {
        blocklist.unblock(&feed)?
    };
    if changed {
        if block {
            engine.handle(Input::Block(feed));
            send(FromSync::Event(NodeEvent::FeedBlocked { feed }));
        } else {
            engine.handle(Input::Unblock(feed));
            send(FromSync::Event(NodeEvent::FeedUnblocked { feed }));
        }
    }
    Ok(changed)
}

/// Follow or unfollow `feed`; unfollowing forgets what is held of it.
fn set_followed(
    engine: &mut Engine<PeerId>,
    policy: &mut FollowFile,
    feed: FeedId,
    follow: bool,
    send: &impl Fn(FromSync) -> bool,
) -> Result<bool, NetError> {
    let changed = if follow {
        policy.follow(feed)?
    } else {
        policy.unfollow(feed)?
    };
    if changed {
        apply_follow(engine, policy.policy(), Some((feed, follow)), send)?;
    }
    Ok(changed)
}

/// Tell the engine the policy; forget a feed no longer followed.
fn apply_follow(
    engine: &mut Engine<PeerId>,
    policy: &Follow,
    changed: Option<(FeedId, bool)>,
    send: &impl Fn(FromSync) -> bool,
) -> Result<(), NetError> {
    engine.handle(Input::Follow(policy.clone()));
    if let Some((feed, follow)) = changed {
        if follow {
            send(FromSync::Event(NodeEvent::FeedFollowed { feed }));
        } else {
            forget(engine, feed)?;
            send(FromSync::Event(NodeEvent::FeedUnfollowed { feed }));
        }
    }
    Ok(())
}

fn forget(engine: &Engine<PeerId>, feed: FeedId) -> Result<(), NetError> {
    match engine.store().forget(&feed) {
        Ok(_) => Ok(()),
        Err(ForgetError::OwnFeed) => Ok(()),
        Err(ForgetError::Store(e)) => Err(e.into()),
        Err(e) => Err(NetError::Setup(e.to_string())),
    }
}

/// Pick up changes another process (`kappa block`, `kappa unfollow`) made
/// to `blocked.json` or `follow.json`.
fn reload_policies(
    engine: &mut Engine<PeerId>,
    files: &mut Policies,
    send: &impl Fn(FromSync) -> bool,
) {
    let mtime = files.blocklist.modified();
    if mtime != files.blocklist_mtime {
        files.blocklist_mtime = mtime;
        reload_blocklist(engine, &mut files.blocklist, send);
    }
    let mtime = files.follow.modified();
    if mtime != files.follow_mtime {
        files.follow_mtime = mtime;
        let dir = files
            .follow
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match FollowFile::load(&dir) {
            Ok(fresh) => {
                let before = files.follow.policy().clone();
                let dropped: Vec<FeedId> = engine
                    .store()
                    .feeds()
                    .into_iter()
                    .map(|f| f.feed)
                    .filter(|f| before.wants(f) && !fresh.policy().wants(f))
                    .collect();
                files.follow = fresh;
                if let Err(e) = apply_follow(engine, files.follow.policy(), None, send) {
                    tracing::warn!(error = %e, "cannot apply the replication policy");
                }
                for feed in dropped {
                    if let Err(e) = forget(engine, feed) {
                        tracing::warn!(feed = %feed.fmt_short(), error = %e, "cannot forget an unfollowed feed");
                    }
                    send(FromSync::Event(NodeEvent::FeedUnfollowed { feed }));
                }
            }
            Err(e) => tracing::warn!(error = %e, "keeping the old replication policy"),
        }
    }
}

/// Pick up changes another process (`kappa block`) made to
/// `blocked.json`.
fn reload_blocklist(
    engine: &mut Engine<PeerId>,
    blocklist: &mut BlockList,
    send: &impl Fn(FromSync) -> bool,
) {
    let dir = blocklist
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let fresh = match BlockList::load(&dir) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "keeping the old block list");
            return;
        }
    };
    for feed in fresh.feeds() {
        if !blocklist.contains(feed) {
            tracing::info!(feed = %feed.fmt_short(), "feed blocked");
            engine.handle(Input::Block(*feed));
            send(FromSync::Event(NodeEvent::FeedBlocked { feed: *feed }));
        }
    }
    for feed in blocklist.feeds() {
        if !fresh.contains(feed) {
            tracing::info!(feed = %feed.fmt_short(), "feed unblocked");
            engine.handle(Input::Unblock(*feed));
            send(FromSync::Event(NodeEvent::FeedUnblocked { feed: *feed }));
        }
    }
    *blocklist = fresh;
}

/// The check thread: passes every message on to the sync thread in the
/// order it came, checking pages and fork proofs on the way. Pages that
/// are already queued are checked together (up to [`CHECK_BATCH_ENTRIES`]
/// entries), which makes larger and cheaper signature batches.
fn check_loop(mut rx: mpsc::Receiver<ToCheck>, tx: std_mpsc::SyncSender<ToSync>, max_payload: u32) {
    /// A message waiting for its turn; a page's entries wait in `all`.
    enum Held {
        Page {
            peer: PeerId,
            tag: u64,
            feed: FeedId,
            len: usize,
        },
        Other(ToSync),
    }
    while let Some(first) = rx.blocking_recv() {
        let mut held = Vec::new();
        let mut all = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                ToCheck::Response {
                    peer,
                    tag,
                    response: Response::Page(page),
                } => {
                    held.push(Held::Page {
                        peer,
                        tag,
                        feed: page.feed,
                        len: page.entries.len(),
                    });
                    all.extend(page.entries);
                }
                ToCheck::Response {
                    peer,
                    tag,
                    response,
                } => held.push(Held::Other(ToSync::Input(receive(
                    peer,
                    tag,
                    response,
                    max_payload,
                )))),
                ToCheck::Announce { peer, announce } => {
                    held.push(Held::Other(ToSync::Input(receive_announce(peer, announce))))
                }
                ToCheck::Input(input) => held.push(Held::Other(ToSync::Input(input))),
                ToCheck::Block { feed, block, reply } => {
                    held.push(Held::Other(ToSync::Block { feed, block, reply }))
                }
                ToCheck::Follow {
                    feed,
                    follow,
                    reply,
                } => held.push(Held::Other(ToSync::Follow {
                    feed,
                    follow,
                    reply,
                })),
                ToCheck::Shutdown => held.push(Held::Other(ToSync::Shutdown)),
            }
            next = if all.len() < CHECK_BATCH_ENTRIES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let mut checked = CheckedEntries::new(all, max_payload);
        for h in held {
            let msg = match h {
                Held::Page {
                    peer,
                    tag,
                    feed,
                    len,
                } => {
                    let rest = checked.split_off(len);
                    ToSync::Input(Input::Page {
                        peer,
                        tag,
                        feed,
                        entries: std::mem::replace(&mut checked, rest),
                    })
                }
                Held::Other(msg) => msg,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
}
