//! The contract every stage implements, and nothing else: [`Stage`] (what a stage declares
//! before anything runs, and its work), [`Upstream`] (a typed reference to another stage's
//! outputs), [`StageContext`] (what a run hands a stage) and [`StageOutput`]. The runner, the
//! manifest, the rerun check and Slurm treat every stage alike through it; the registry of
//! stages is `stages/mod.rs`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::ShardSpec;
use crate::params::{ParamSpec, Params};

/// What a stage gets to do its work.
pub struct StageContext<'a> {
    /// The stage's name, for messages.
    pub stage: &'static str,
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
    /// Output files of each upstream the stage declared, in the order `upstream` named them
    /// (empty for an optional upstream that is absent).
    pub inputs: &'a [(Upstream, Vec<PathBuf>)],
    /// Where the stage writes: `RUN_DIR/round-NNN/<stage>/`.
    pub out_dir: PathBuf,
}

impl StageContext<'_> {
    /// Files written by `up`, which the stage must have declared in `upstream` for these
    /// params: empty when an optional upstream is absent, an error when it was not declared (a
    /// typo or a forgotten declaration would otherwise read as "optional input absent").
    pub(crate) fn input_files(&self, up: Upstream) -> Result<&[PathBuf]> {
        self.declared(up).ok_or_else(|| {
            Error::stage(
                self.stage,
                format!("reads `{up}`, which it does not declare as an upstream for these params"),
            )
        })
    }

    /// Files written by `up` when the stage declared it, else `None` (for lookups across
    /// alternatives, such as the checkpoint a stage starts from).
    pub fn declared(&self, up: Upstream) -> Option<&[PathBuf]> {
        self.inputs
            .iter()
            .find(|(u, _)| *u == up)
            .map(|(_, files)| files.as_slice())
    }
}

/// Which run of an upstream stage a stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// The newest finished run in this round or before (setup is round 0). A stepped stage
    /// naming another stepped stage (`apply` naming `train`) reads the same step.
    Latest,
    /// The newest run of an earlier round (the checkpoint a round starts from is the previous
    /// round's `apply`).
    PreviousRound,
    /// The previous optimizer step of this round; absent at step 1.
    PreviousStep,
}

/// A stage whose outputs another stage reads, declared before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub stage: &'static str,
    /// Absent is fine: an optional upstream of this round or setup (never another round's,
    /// which would be stale), or one of a previous round or step.
    pub optional: bool,
    pub reads: Reads,
}

impl Upstream {
    /// Required: the stage must have finished in this round or before.
    pub const fn needs(stage: &'static str) -> Self {
        Self {
            stage,
            optional: false,
            reads: Reads::Latest,
        }
    }

    /// This round's or setup's run when the pipeline has the stage.
    pub const fn optional(stage: &'static str) -> Self {
        Self {
            stage,
            optional: true,
            reads: Reads::Latest,
        }
    }

    /// The previous round's run, when there is one.
    pub const fn previous_round(stage: &'static str) -> Self {
        Self {
            stage,
            optional: true,
            reads: Reads::PreviousRound,
        }
    }

    /// The previous optimizer step's run, from a round's second step on.
    pub const fn previous_step(stage: &'static str) -> Self {
        Self {
            stage,
            optional: true,
            reads: Reads::PreviousStep,
        }
    }
}

/// The spelling messages use: `judge`, `judge?`, `apply@prev?`, `apply@prev_step?`.
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = match self.reads {
            Reads::Latest => "",
            Reads::PreviousRound => "@prev",
            Reads::PreviousStep => "@prev_step",
        };
        let optional = if self.optional { "?" } else { "" };
        write!(f, "{}{when}{optional}", self.stage)
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
    /// Stages whose outputs this stage reads, given its params. `run` can read only these.
    fn upstream(&self, params: &Params) -> Vec<Upstream>;
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
    /// The QA splits the stage writes, when its params say which (`qa` from a built-in source);
    /// `None`: not a QA stage, or a user's file that names its own splits.
    fn qa_splits_written(&self, _params: &Params) -> Option<Vec<&'static str>> {
        None
    }
    /// The QA splits the stage reads, each with the `stage.key` that makes it read it. When the
    /// pipeline loads, each must be a split `qa` writes (where that is known).
    fn qa_splits_read(&self, _params: &Params) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Whether `asl run` runs the stage in `round` of a run whose last round is `last` (eval
    /// skips rounds with `every`).
    fn runs_in_round(&self, _params: &Params, _round: u32, _last: u32) -> bool {
        true
    }
}

/// A stage's inputs as the runner hands them over, for unit tests: every upstream the stage
/// declares for `params`, with the files `given` under its spelling (`selfcheck?`, `init`), else
/// none. A given name the stage does not declare is a broken test.
#[cfg(test)]
pub(crate) fn test_inputs(
    stage: &dyn Stage,
    params: &Params,
    given: &[(String, Vec<PathBuf>)],
) -> Vec<(Upstream, Vec<PathBuf>)> {
    let declared = stage.upstream(params);
    for (name, _) in given {
        assert!(
            declared.iter().any(|u| u.to_string() == *name),
            "{} does not declare {name}",
            stage.name()
        );
    }
    declared
        .into_iter()
        .map(|up| {
            let files = given
                .iter()
                .find(|(name, _)| *name == up.to_string())
                .map(|(_, f)| f.clone())
                .unwrap_or_default();
            (up, files)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(params: &'a Params, inputs: &'a [(Upstream, Vec<PathBuf>)]) -> StageContext<'a> {
        StageContext {
            stage: "reward",
            run_dir: Path::new("run"),
            round: 1,
            step: 0,
            steps: 0,
            params,
            seed: 0,
            shard: ShardSpec::WHOLE,
            inputs,
            out_dir: PathBuf::from("run/round-001/reward"),
        }
    }

    #[test]
    fn upstreams_are_spelled_as_before() {
        let spelled: Vec<String> = [
            Upstream::needs("init"),
            Upstream::optional("judge"),
            Upstream::previous_round("apply"),
            Upstream::previous_step("apply"),
        ]
        .iter()
        .map(Upstream::to_string)
        .collect();
        assert_eq!(
            spelled,
            ["init", "judge?", "apply@prev?", "apply@prev_step?"]
        );
    }

    /// An absent optional upstream reads as no files; one the stage never declared is an
    /// error naming it, not an empty list (a typo would otherwise read as "absent").
    #[test]
    fn input_files_refuses_an_undeclared_upstream() {
        let params = Params::new();
        let inputs = vec![
            (Upstream::needs("rollout"), vec![PathBuf::from("a.parquet")]),
            (Upstream::optional("judge"), vec![]),
        ];
        let c = ctx(&params, &inputs);
        assert_eq!(c.input_files(Upstream::needs("rollout")).unwrap().len(), 1);
        assert!(
            c.input_files(Upstream::optional("judge"))
                .unwrap()
                .is_empty()
        );
        let err = c.input_files(Upstream::optional("selfcheck")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stage reward: reads `selfcheck?`, which it does not declare as an upstream for these params"
        );
        // The same stage under another reading is another upstream.
        assert!(c.input_files(Upstream::previous_round("rollout")).is_err());
        assert!(c.declared(Upstream::needs("judge")).is_none());
    }
}
