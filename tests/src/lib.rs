//! kappadb-tests: cross-crate scenarios and crash tests. The tests live in
//! `tests/tests/`; `src/bin/` holds helper programs they spawn.
