//! Whole-system benchmarks of the validation engine; the code is the `engine` bench
//! (`benches/engine.rs`, run with `cargo bench -p bench --bench engine`). What each scenario
//! and figure means: `docs/benchmarks.md`.
