//! What several stages share: reading a round's tasks and trajectories, the trainer's view of a
//! trajectory, the answer-leak check and the verification target's name. Stages import these
//! from here, never from a sibling stage.

use std::path::PathBuf;

use super::{StageContext, Upstream};
use crate::error::Result;
use crate::shards::read_kind;
use crate::shards::rows::{TaskRow, TrajectoryRow};

/// Target name of the labelled verification items (`judge` writes them, `reward` scores them).
pub(crate) const VERIFICATION: &str = "verification";

/// Target name of the self-judgments (the generator's own answer).
pub(crate) const SELF_CHECK_TARGET: &str = "generator";

/// The trajectories among a stage's outputs.
pub fn trajectories(files: &[PathBuf]) -> Result<Vec<TrajectoryRow>> {
    read_kind(files)
}

/// The tasks among a stage's outputs.
pub fn tasks(files: &[PathBuf]) -> Result<Vec<TaskRow>> {
    read_kind(files)
}

/// The tasks a round works on: the self-check's when the round has one (`selfcheck?` among
/// `inputs`), else those `generate` wrote.
pub fn round_tasks(ctx: &StageContext) -> Result<Vec<TaskRow>> {
    let checked = ctx.input_files(Upstream::optional("selfcheck"))?;
    if checked.is_empty() {
        tasks(ctx.input_files(Upstream::needs("generate"))?)
    } else {
        tasks(checked)
    }
}

/// A trajectory as the trainer takes it: prompt ids, completion ids, completion loss mask.
pub(crate) fn training_sequence(t: &TrajectoryRow) -> (Vec<u32>, Vec<u32>, Vec<u8>) {
    (
        t.prompt_ids.clone(),
        t.completion_ids.clone(),
        t.loss_mask.iter().map(|&m| u8::from(m)).collect(),
    )
}
