//! Stages: the commands of a round. Every stage is a value implementing [`Stage`]: it declares
//! its parameters, the stages whose outputs it reads and any files outside the run dir it reads,
//! before anything runs, and then does its work in `run`. The runner, the manifest and the rerun
//! check treat all stages alike through this one contract.

pub mod agent;
pub mod apply;
pub mod corpus;
pub mod embed;
pub mod env;
pub mod eval;
pub mod generate;
pub mod index;
pub mod init;
pub mod judge;
pub mod kit;
pub mod qa;
pub mod reward;
pub mod rollout;
pub mod selfcheck;
mod sources;
pub mod train;
pub mod warmup;

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::manifest::ShardSpec;
use crate::params::{ParamSpec, Params};

/// What a stage gets to do its work.
pub struct StageContext<'a> {
    pub run_dir: &'a Path,
    pub round: u32,
    /// The optimizer step (1..=`steps`) of a stage that repeats per step; 0 otherwise.
    pub step: u32,
    pub steps: u32,
    pub params: &'a Params,
    /// The stage's own seed, derived from the run seed, the stage name and the round. Per-row
    /// randomness derives from it plus the row id, so it does not depend on how work is split.
    pub seed: u64,
    pub shard: ShardSpec,
    /// Output files of each upstream stage, in the order `upstream` named them.
    pub inputs: &'a [(String, Vec<PathBuf>)],
    /// Where the stage writes: `RUN_DIR/round-NNN/<stage>/`.
    pub out_dir: PathBuf,
}

impl StageContext<'_> {
    /// Files written by the upstream stage named by `stage`, as `upstream` spelled it
    /// (`judge?`, `apply@prev?`): empty when an optional upstream is absent.
    pub fn input_files(&self, stage: &str) -> &[PathBuf] {
        self.inputs
            .iter()
            .find(|(name, _)| name == stage)
            .map(|(_, files)| files.as_slice())
            .unwrap_or(&[])
    }
}

/// What a stage wrote, and a line or two for the person watching.
pub struct StageOutput {
    pub files: Vec<PathBuf>,
    pub summary: String,
}

pub trait Stage: Sync {
    fn name(&self) -> &'static str;
    /// One line for `--help` and listings.
    fn about(&self) -> &'static str;
    fn params(&self) -> Vec<ParamSpec>;
    /// Stages whose outputs this stage reads, given its params.
    fn upstream(&self, params: &Params) -> Vec<&'static str>;
    /// Files outside the run dir that this stage reads (hashed into its identity).
    fn external_inputs(&self, params: &Params) -> Result<Vec<PathBuf>>;
    fn run(&self, ctx: &StageContext) -> Result<StageOutput>;
    /// Whether the stage repeats once per optimizer step within a round (`train`, `apply`);
    /// the runner then runs the round's stepped stages as a block, step after step.
    fn stepped(&self) -> bool {
        false
    }
    /// Whether `--shard i/n` splits the stage's work (each part writes its share of the rows,
    /// the parts together equal the whole). A stage that does not split (`reward` balances over
    /// the whole round, `apply` sums every part, `eval` scores one sample) runs as one part.
    fn splits(&self) -> bool {
        false
    }
    /// The version of what the stage computes. Bump it when a change to the stage (or to a
    /// formula it uses, such as a reward constant in `rl/`) would change its outputs for the
    /// same inputs, params and seed: `asl run` then reruns the stage and what reads it, instead
    /// of calling the old outputs up to date.
    fn version(&self) -> u32 {
        1
    }
    /// Checks the resolved params before any stage of a run starts: a bad value is one line
    /// naming `stage.key` and what is allowed.
    fn check(&self, _params: &Params) -> Result<()> {
        Ok(())
    }
    /// Whether `asl run` runs the stage in `round` of a run whose last round is `last` (eval
    /// skips rounds with `every`).
    fn runs_in_round(&self, _params: &Params, _round: u32, _last: u32) -> bool {
        true
    }
}

/// Every stage asl knows, in a round's order.
pub fn all() -> Vec<&'static dyn Stage> {
    vec![
        &corpus::CorpusStage,
        &qa::QaStage,
        &index::IndexStage,
        &embed::EmbedStage,
        &init::InitStage,
        &warmup::WarmupStage,
        &generate::GenerateStage,
        &selfcheck::SelfCheckStage,
        &rollout::RolloutStage,
        &judge::JudgeStage,
        &reward::RewardStage,
        &train::TrainStage,
        &apply::ApplyStage,
        &eval::EvalStage,
    ]
}

pub fn find(name: &str) -> Option<&'static dyn Stage> {
    all().into_iter().find(|s| s.name() == name)
}

pub fn known_names() -> String {
    all()
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the shipped assets live: `$ASL_ASSETS`, else `./assets` (what
/// `scripts/fetch-assets.sh` fills).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("ASL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"))
}
