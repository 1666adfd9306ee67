//! asl — Agentic Self-Learning as a batch tool. One LLM backbone plays the prompt generator,
//! the search policy and the generative reward model; every stage of a round is a command that
//! reads and writes Parquet shards, and a manifest chains the stages into reproducible rounds.
//!
//! The binary (`src/main.rs`) is argument parsing and glue over this library.

pub mod audit;
pub mod compare;
pub(crate) mod error;
pub mod export;
pub mod fsutil;
pub mod manifest;
pub(crate) mod memory;
pub mod model;
pub mod page;
pub mod params;
pub mod pipeline;
pub mod process;
pub(crate) mod progress;
pub mod report;
pub(crate) mod retention;
pub mod rl;
pub mod roles;
pub mod search;
pub(crate) mod seed;
pub mod shards;
pub mod show;
pub mod slurm;
pub mod stages;
pub mod status;
pub(crate) mod tensorboard;

pub use error::{Error, Result};

/// Cases a property test runs: `default` in the suite, `ASL_FUZZ_CASES` when set
/// (`scripts/fuzz.sh` runs each fuzz target for a set time with a large count).
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("ASL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
