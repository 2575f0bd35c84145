//! Checks of what peers send: the rules a page must meet against the want
//! it answers ([`check_page`]), why a peer is banned ([`SyncError`]), and
//! what a driver does to a decoded answer before the engine sees it
//! ([`receive`], [`receive_announce`]): the costly checks (signatures of
//! pages and fork proofs), which need no engine state and can run on other
//! threads.

use kappadb_core::{CheckedEntries, Entry, EntryError, FeedId, ForkProof, UncheckedForkProof};
use rayon::prelude::*;

use super::Input;
use crate::protocol::reconcile::ReconcileError;
use crate::protocol::wire::{
    Announce, Limits, MAX_FORK_PROOFS_PER_ANNOUNCE, Page, Response, Want, entry_wire_size,
};

/// Why a peer is banned: what it sent that an honest kappadb node never
/// sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A page of another feed than the one asked for.
    #[error("sent a page of feed {} for feed {}", .got.fmt_short(), .wanted.fmt_short())]
    WrongFeed {
        /// The feed asked for.
        wanted: FeedId,
        /// The feed the page named.
        got: FeedId,
    },
    /// More entries than asked for, or than a page holds.
    #[error("sent a page of {entries} entries for a want of {max}")]
    TooManyEntries {
        /// Entries sent.
        entries: u64,
        /// Most that could be sent.
        max: u64,
    },
    /// A page of several entries over the page byte budget.
    #[error("sent a page of {bytes} bytes (limit {limit})")]
    PageTooLarge {
        /// Its size.
        bytes: usize,
        /// The budget.
        limit: usize,
    },
    /// An entry of another feed inside a page.
    #[error("sent an entry of feed {} in a page of feed {}", .author.fmt_short(), .feed.fmt_short())]
    ForeignEntry {
        /// The page's feed.
        feed: FeedId,
        /// The entry's author.
        author: FeedId,
    },
    /// Seqs that are not consecutive from the wanted one.
    #[error("sent seq {found} where seq {expected} was expected")]
    OutOfOrder {
        /// The seq due.
        expected: u64,
        /// The seq sent.
        found: u64,
    },
    /// An entry that breaks a validation rule (the page was dropped whole).
    #[error("sent a page that failed validation: {0}")]
    InvalidEntry(EntryError),
    /// A fork proof that does not prove a fork.
    #[error("sent an invalid fork proof: {0}")]
    InvalidForkProof(EntryError),
    /// Fork proofs of feeds that were not asked for.
    #[error("sent fork proofs that were not asked for")]
    UnaskedForkProofs,
    /// An announcement carrying more fork proofs than one may.
    #[error("sent an announcement with more than {MAX_FORK_PROOFS_PER_ANNOUNCE} fork proofs")]
    AnnounceTooLarge,
    /// Announcements far faster than any node sends them.
    #[error("flooded the network with announcements")]
    AnnounceFlood,
    /// An answer of another kind than the request.
    #[error("answered a request with {0} it did not ask for")]
    UnexpectedAnswer(&'static str),
    /// Bytes that are not a message.
    #[error("sent a malformed message: {0}")]
    Malformed(String),
    /// A heads reconciliation message that breaks its rules.
    #[error("broke the heads reconciliation: {0}")]
    Reconcile(ReconcileError),
}

/// Check a page against the want it answers: the rules a page must meet
/// before its entries are offered to the store.
///
/// - it names the wanted feed, and every entry's author is that feed;
/// - seqs are consecutive from `from_seq` and end at or before `to_seq`;
/// - at most [`Limits::page_entries`] entries;
/// - more than one entry only within [`Limits::page_bytes`] (by
///   [`entry_wire_size`]).
pub fn check_page(want: &Want, page: &Page, limits: &Limits) -> Result<(), SyncError> {
    check_entries(want, page.feed, &page.entries, limits)
}

/// [`check_page`] for a page taken apart.
pub(super) fn check_entries(
    want: &Want,
    feed: FeedId,
    entries: &[Entry],
    limits: &Limits,
) -> Result<(), SyncError> {
    if feed != want.feed {
        return Err(SyncError::WrongFeed {
            wanted: want.feed,
            got: feed,
        });
    }
    let n = entries.len() as u64;
    if n > want.len() || n > limits.page_entries {
        return Err(SyncError::TooManyEntries {
            entries: n,
            max: want.len().min(limits.page_entries),
        });
    }
    if n > 1 {
        let bytes: usize = entries.iter().map(entry_wire_size).sum();
        if bytes > limits.page_bytes {
            return Err(SyncError::PageTooLarge {
                bytes,
                limit: limits.page_bytes,
            });
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if e.header.author != want.feed {
            return Err(SyncError::ForeignEntry {
                feed: want.feed,
                author: e.header.author,
            });
        }
        let expected = want.from_seq.saturating_add(i as u64);
        if e.header.seq != expected {
            return Err(SyncError::OutOfOrder {
                expected,
                found: e.header.seq,
            });
        }
    }
    Ok(())
}

/// Check fork proofs from a peer (two signatures each, on all cores),
/// each with the feed it claims.
pub fn check_proofs(
    proofs: Vec<UncheckedForkProof>,
) -> Vec<(FeedId, Result<ForkProof, EntryError>)> {
    proofs
        .into_par_iter()
        .map(|p| (p.author(), p.check()))
        .collect()
}

/// Turn a decoded answer to the request `tag` into the engine's input,
/// checking a page's entries against `max_payload` and a proof's
/// signatures on the way. Drivers that check pages in batches (the node's
/// check thread) build [`Input::Page`] themselves.
pub fn receive<P>(peer: P, tag: u64, response: Response, max_payload: u32) -> Input<P> {
    match response {
        Response::Heads(heads) => Input::Heads { peer, tag, heads },
        Response::Page(page) => Input::Page {
            peer,
            tag,
            feed: page.feed,
            entries: CheckedEntries::new(page.entries, max_payload),
        },
        Response::ForkProofs(proofs) => Input::ForkProofs {
            peer,
            tag,
            proofs: check_proofs(proofs),
        },
        Response::Refused(reason) => Input::Refused { peer, tag, reason },
        Response::Reconcile(message) => Input::Reconciled { peer, tag, message },
    }
}

/// Turn a decoded announcement into the engine's input, checking its fork
/// proofs. One with more proofs than an announcement may carry is passed
/// on unchecked past the limit's count, for the engine to ban its sender.
pub fn receive_announce<P>(peer: P, announce: Announce) -> Input<P> {
    let mut forks = announce.forks;
    let extra = forks.len().saturating_sub(MAX_FORK_PROOFS_PER_ANNOUNCE);
    // Checking more than the limit would be work spent on a flooder.
    let rest: Vec<UncheckedForkProof> = forks.split_off(forks.len() - extra);
    let mut proofs = check_proofs(forks);
    proofs.extend(rest.into_iter().map(|p| {
        (
            p.author(),
            Err(EntryError::Malformed("too many fork proofs")),
        )
    }));
    Input::Announce {
        peer,
        heads: announce.heads,
        proofs,
    }
}
