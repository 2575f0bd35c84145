//! Test helper: appends to a database in a loop until killed, printing
//! `ok SEQ` after every append that returned (and so is durable).
//!
//! Usage: `crash_child DIR` (the database must exist), or
//! `crash_child compact DIR`: rounds of appends (payload `e<seq>` and
//! padding), a deletion of the round's entries whose seq is a multiple of
//! 3, and a compaction, each step done before the next.

use std::io::Write;
use std::path::PathBuf;

/// The payload `crash_child compact` appends at `seq`.
pub fn compact_payload(seq: u64) -> Vec<u8> {
    format!("e{seq} {}", "p".repeat(300)).into_bytes()
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    let compact = first.as_deref() == Some(std::ffi::OsStr::new("compact"));
    let dir = if compact { args.next() } else { first };
    let Some(dir) = dir.map(PathBuf::from) else {
        eprintln!("usage: crash_child [compact] DIR");
        std::process::exit(2);
    };
    let db = match kappadb_core::Db::open(&dir) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if compact {
        compact_rounds(&db, &mut stdout);
        return;
    }
    let mut round: u64 = 0;
    loop {
        round += 1;
        // Alternate single appends and batches of varying size.
        let res = if round.is_multiple_of(3) {
            db.append(format!("{{\"type\":\"crash\",\"round\":{round}}}").into_bytes())
                .map(|a| a.seq)
        } else {
            let n = 1 + (round * 7919 % 200) as usize;
            let payloads = (0..n)
                .map(|i| format!("{{\"type\":\"crash\",\"round\":{round},\"i\":{i}}}").into_bytes())
                .collect();
            db.append_batch(payloads)
                .map(|v| v.last().map_or(0, |a| a.seq))
        };
        match res {
            Ok(seq) => {
                if writeln!(stdout, "ok {seq}")
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                eprintln!("append failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn compact_rounds(db: &kappadb_core::Db, stdout: &mut impl Write) {
    let feed = db.feed_id();
    loop {
        let next = db.head(&feed).map_or(1, |h| h.seq + 1);
        let payloads = (next..next + 40).map(compact_payload).collect();
        let appended = match db.append_batch(payloads) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("append failed: {e}");
                std::process::exit(1);
            }
        };
        let seqs: Vec<u64> = appended
            .iter()
            .map(|a| a.seq)
            .filter(|s| s % 3 == 0)
            .collect();
        let last = appended.last().map_or(0, |a| a.seq);
        if let Err(e) = db.delete(&seqs, None) {
            eprintln!("delete failed: {e}");
            std::process::exit(1);
        }
        if let Err(e) = db.compact(1, &mut |_, _| {}) {
            eprintln!("compact failed: {e}");
            std::process::exit(1);
        }
        if writeln!(stdout, "ok {last}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}
