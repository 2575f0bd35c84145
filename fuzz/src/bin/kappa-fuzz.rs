//! Run kappadb's fuzz targets for as long as asked:
//!
//! ```text
//! cargo run --release -p kappadb-fuzz -- [TARGET...] [--cases N] [--seed S] [--rounds R]
//! ```
//!
//! With no target, every target runs. Each round uses the next seed, so a
//! long run covers new inputs; a failure prints its seed and the smallest
//! failing input proptest found, and the exit code is 1.

use std::process::ExitCode;

use kappadb_fuzz::{TARGETS, Target, run_timed, target};

fn usage() -> ExitCode {
    eprintln!(
        "usage: kappa-fuzz [TARGET...] [--cases N] [--seed S] [--rounds R]\ntargets: {}",
        TARGETS
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut names = Vec::new();
    let mut cases: Option<u32> = None;
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut rounds: u64 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| {
            args.next().and_then(|v| v.parse::<u64>().ok())
        };
        match a.as_str() {
            "--cases" => match value(&mut args) {
                Some(n) => cases = Some(u32::try_from(n).unwrap_or(u32::MAX)),
                None => return usage(),
            },
            "--seed" => match value(&mut args) {
                Some(n) => seed = n,
                None => return usage(),
            },
            "--rounds" => match value(&mut args) {
                Some(n) => rounds = n.max(1),
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            name => match target(name) {
                Some(t) => names.push(t),
                None => {
                    eprintln!("unknown target {name}");
                    return usage();
                }
            },
        }
    }
    let chosen: Vec<Target> = if names.is_empty() {
        TARGETS.to_vec()
    } else {
        names
    };
    for round in 0..rounds {
        let s = seed.wrapping_add(round);
        for t in &chosen {
            // By default ten times what CI gives a target.
            let n = cases.unwrap_or(t.ci_cases.saturating_mul(10));
            let (r, took) = run_timed(t, n, s);
            match r {
                Ok(()) => println!(
                    "{:<10} seed {s:<12} {n:>8} cases in {:>7.2} s ({:.0} cases/s)",
                    t.name,
                    took.as_secs_f64(),
                    f64::from(n) / took.as_secs_f64().max(1e-9)
                ),
                Err(e) => {
                    println!("{:<10} FAILED: {e}", t.name);
                    return ExitCode::from(1);
                }
            }
        }
    }
    ExitCode::SUCCESS
}
