//! Every fuzz target for a bounded number of cases (each target's
//! `ci_cases`, times `KAPPADB_FUZZ_SCALE` if set), from a fixed seed unless
//! `KAPPADB_FUZZ_SEED` says otherwise. Longer runs: the `kappa-fuzz`
//! binary (see the README).

use kappadb_fuzz::{TARGETS, run_timed};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn every_target_holds_for_a_bounded_run() {
    let seed = env_u64("KAPPADB_FUZZ_SEED").unwrap_or(20261203);
    let scale = env_u64("KAPPADB_FUZZ_SCALE").unwrap_or(1);
    let mut failures = Vec::new();
    for t in TARGETS {
        let cases = u32::try_from(u64::from(t.ci_cases) * scale).unwrap_or(u32::MAX);
        let (r, took) = run_timed(t, cases, seed);
        println!(
            "{}: {cases} cases, seed {seed}, {:.2} s",
            t.name,
            took.as_secs_f64()
        );
        if let Err(e) = r {
            failures.push(format!("{}: {e}", t.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
