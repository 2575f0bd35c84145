//! The canonical log: append-only segment files, the one store everything
//! else is derived from.
//!
//! A record's *offset* is its byte position in the whole log. Segment files
//! are named by the offset of their first byte (`log/00000000000000000000.seg`),
//! so offsets only grow and are never reused, and a record is found without
//! any index. Every record is framed:
//!
//! ```text
//! record  = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body    = 1u8 | header_len: u16 LE | header (postcard) | signature (64)
//!               | has_payload: u8 | payload           (an entry)
//!         | 2u8 | postcard(ForkProof)                   (a fork proof)
//! ```
//!
//! The payload sits last so that a later payload deletion can overwrite it
//! in place. Writes go to the newest segment and are fsynced before the call
//! that made them returns; a batch shares one fsync.
//!
//! On open, the newest segment is scanned: a torn or corrupt record at the
//! tail and everything after it is moved to a `torn-<offset>.bin` file beside
//! the segments (never simply deleted) and cut off, and the cut is reported.
//!
//! Code map: `record.rs` (the record format: encode, decode, frames),
//! `read.rs` (`Segments`, `LogIter`: readers, any number), `write.rs`
//! (`LogWriter`: the one writer, preallocation, rolling, tail recovery).

mod compact;
mod read;
mod record;
mod write;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub(crate) use self::compact::{SourceSegment, compact_segment, gain as compact_gain};
pub use self::read::LogIter;
pub(crate) use self::read::Segments;
pub(crate) use self::record::{encode_record, live_len_of_body, payload_bytes_in};
pub(crate) use self::write::{Edit, Edited, LogWriter};
use crate::entry::{Entry, ForkProof};
use crate::error::StoreError;
use crate::keys::FeedId;

/// Bytes of framing before each record body.
pub const FRAME_LEN: u64 = 8;
/// The largest record body a log accepts: the largest allowed payload limit
/// plus room for the header.
pub const MAX_BODY_LEN: u32 = MAX_PAYLOAD_LIMIT + 4096;
/// The largest payload limit a database can be configured with.
pub const MAX_PAYLOAD_LIMIT: u32 = 64 * 1024 * 1024;

/// The active segment is zero-filled ahead of the writer in chunks of this
/// size.
const PREALLOC_CHUNK: u64 = 1024 * 1024;

const KIND_ENTRY: u8 = 1;
const KIND_FORK: u8 = 2;
/// A dropped record's bytes: skipped by every reader.
const KIND_PADDING: u8 = 3;
/// A local marker: this node forgot a feed.
const KIND_FORGET: u8 = 4;
const SEG_EXT: &str = "seg";

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordBody {
    /// An entry of some feed.
    Entry(Entry),
    /// Proof that a feed forked.
    Fork(ForkProof),
    /// This node forgot a feed (`Db::forget`): its earlier records were
    /// dropped from the log, and views drop what they folded of it. Local:
    /// never sent to peers.
    Forget(FeedId),
}

/// One record of the log, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Byte offset of the record in the log.
    pub offset: u64,
    /// Offset of the record after this one.
    pub next_offset: u64,
    /// The record's content.
    pub body: RecordBody,
}

impl LogRecord {
    /// The entry, if this record holds one.
    pub fn entry(&self) -> Option<&Entry> {
        match &self.body {
            RecordBody::Entry(e) => Some(e),
            _ => None,
        }
    }
}

/// What opening the log had to repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Offset where the log was cut.
    pub cut_at: u64,
    /// Bytes removed from the tail.
    pub bytes_removed: u64,
    /// Where the removed bytes were saved.
    pub saved_to: PathBuf,
    /// Why the first removed record was refused.
    pub reason: String,
}

pub(crate) fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEG_EXT}"))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::io(path, source)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// List segment start offsets, sorted.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut starts = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name
            .strip_suffix(".seg")
            .or_else(|| name.strip_suffix(".cseg"))
        else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>() {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
}
