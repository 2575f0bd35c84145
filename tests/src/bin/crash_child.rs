//! Test helper: appends to a database in a loop until killed, printing
//! `ok SEQ` after every append that returned (and so is durable).
//!
//! Usage: `crash_child DIR` (the database must exist).

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crash_child DIR");
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
