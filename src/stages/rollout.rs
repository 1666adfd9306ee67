//! Stage `rollout`: the policy attempts every valid task `attempts` times in the search
//! environment (SPEC §2). Every attempt is kept, parsable or not; an attempt without exactly one
//! final `<answer>` is recorded with its reason and later scored as wrong.
//!
//! When the round has a `selfcheck`, the tasks come from it: a task the GRM did not accept as
//! the generator's own answer is invalid there and gets no attempt (no rollout is spent on a
//! task that is thrown away afterwards).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{
    Agent, CHECKPOINT_UPSTREAM, Request, Role, TrajectoryIds, sampling_specs, search_upstream,
    tool_format,
};
use super::kit::round_tasks;
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::roles::policy;
use crate::seed::stable_u64;
use crate::shards::rows::TaskRow;
use crate::shards::{ShardKind, shard_path, write_rows};

pub(crate) struct RolloutStage;

impl Stage for RolloutStage {
    /// 2: guided decoding completes a closing tag the budget cuts.
    /// 3: `searches` counts results read; a call the last turn leaves unanswered is not one;
    ///    a call close sharing its token with the next character (`</search><`) still calls;
    ///    a search result that would overflow the context ends the sequence unappended;
    ///    a sampled sequence whose every token was its truncated distribution's only one keeps
    ///    behaviour log-probs of 0 (they were the scored ones, as for a greedy pick).
    /// 4: a decoding step's attention (one query row) rounds as the few-row kernels do, not `gemm`.
    fn version(&self) -> u32 {
        4
    }

    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "rollout"
    }

    fn check(&self, params: &Params) -> Result<()> {
        super::agent::check_agent_params(params, "rollout")
    }

    fn about(&self) -> &'static str {
        "the policy attempts every valid task m times with the search tool"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new("attempts", 4, "attempts per task (m; the GRPO group size)")
                .between(1.0, f64::from(u32::MAX)),
        ];
        specs.extend(sampling_specs(384, 4, 1.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("generate"), Upstream::optional("selfcheck")];
        up.extend(search_upstream(params));
        up.extend(CHECKPOINT_UPSTREAM);
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let m = ctx.params.u64("attempts") as u32;
        if m == 0 {
            return Err(Error::param("rollout.attempts", "must be at least 1"));
        }
        let picked = attempted(round_tasks(ctx)?);
        let valid = picked.tasks;
        let mut requests = Vec::new();
        let mut ids = Vec::new();
        let mut agent = None;
        for (i, task) in valid.iter().enumerate() {
            if !ctx.shard.owns(i) {
                continue;
            }
            // The checkpoint loads only when there is a task to attempt.
            if agent.is_none() {
                agent = Some(Agent::load(ctx, "rollout")?);
            }
            let has_search = agent.as_ref().is_some_and(Agent::has_search);
            for attempt in 0..m {
                let seed = seq_seed(ctx.seed, stable_u64(&[&task.task_id]), attempt as u64);
                let messages = if has_search {
                    policy::prompt(&task.question, tool_format(ctx.params, "rollout")?)
                } else {
                    policy::prompt_without_tools(&task.question)
                };
                requests.push(Request { messages, seed });
                ids.push(TrajectoryIds {
                    trajectory_id: format!("{}-p{attempt}", task.task_id),
                    task_id: task.task_id.clone(),
                    role: Role::Policy.as_str(),
                    attempt,
                    seed,
                });
            }
        }
        let completions = match &agent {
            Some(agent) => agent.run(&requests, "rollout", Role::Policy)?,
            None => Vec::new(),
        };
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let mut rows = Vec::with_capacity(completions.len());
        for (id, c) in ids.into_iter().zip(&completions) {
            let parsed = policy::parse(&c.out.text);
            let answer = match (parsed.answer, parsed.error) {
                (Some(a), None) => Ok(a),
                (_, e) => {
                    let e = e.unwrap_or_else(|| "no answer".into());
                    *errors.entry(e.clone()).or_default() += 1;
                    Err(e)
                }
            };
            rows.push(c.row(id, answer));
        }
        let out = shard_path(&ctx.out_dir, ShardKind::Trajectories, ctx.shard.index);
        let written = write_rows(&out, &rows)?;
        let parsed = rows.iter().filter(|r| r.parsed).count();
        let searched = rows.iter().filter(|r| r.searches > 0).count();
        let truncated = completions.iter().filter(|c| c.truncated()).count();
        let turns: u32 = rows.iter().map(|r| r.turns).sum();
        let mut summary = format!(
            "{written} attempts at {} tasks: {parsed} parsable, {searched} searched, {truncated} truncated, {:.1} turns on average",
            written / u64::from(m).max(1),
            turns as f64 / rows.len().max(1) as f64
        );
        if picked.invalid > 0 {
            summary.push_str(&format!(
                "; {} invalid tasks skipped ({} of them failed the self-check)",
                picked.invalid, picked.failed_self_check
            ));
        }
        if picked.empty_questions > 0 {
            summary.push_str(&format!(
                "; {} tasks with an empty question skipped",
                picked.empty_questions
            ));
        }
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|(r, k)| format!("{k}× {r}")).collect();
            summary.push_str(&format!("; unparsable: {}", list.join(", ")));
        }
        if let Some(agent) = &agent {
            summary.push_str(&format!("; {}", agent.spent()));
        }
        Ok(StageOutput {
            files: vec![out],
            summary,
        })
    }
}

/// The tasks a rollout attempts, and what it skipped.
pub(crate) struct Attempted {
    pub tasks: Vec<TaskRow>,
    /// Invalid tasks (format, or the self-check when the round has one).
    pub invalid: usize,
    /// Among `invalid`: tasks the self-check rejected or could not decide.
    pub failed_self_check: usize,
    pub empty_questions: usize,
}

/// The valid tasks with a question, in input order.
pub fn attempted(all: Vec<TaskRow>) -> Attempted {
    let mut a = Attempted {
        tasks: Vec::with_capacity(all.len()),
        invalid: 0,
        failed_self_check: 0,
        empty_questions: 0,
    };
    for t in all {
        if !t.valid {
            a.invalid += 1;
            a.failed_self_check += usize::from(
                t.invalid_reason
                    .as_deref()
                    .and_then(crate::rl::rewards::SelfCheck::of_reason)
                    .is_some(),
            );
        } else if t.question.trim().is_empty() {
            a.empty_questions += 1;
        } else {
            a.tasks.push(t);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::ShardSpec;
    use crate::params::resolve;
    use crate::rl::rewards::self_check;
    use crate::shards::read_rows;
    use crate::shards::rows::TrajectoryRow;

    fn task(id: &str) -> TaskRow {
        crate::shards::rows::fixtures::task(
            id,
            &format!("Which city is the capital of the country {id}?"),
            "Paris",
        )
    }

    /// `generate` wrote `a`, `b`, `c` (all valid); the round's self-check rejected `b` and
    /// found too few judgments for `c`. Returns the run's inputs for `rollout`.
    fn round_with_self_check(
        run: &Path,
        checkpoint: Option<PathBuf>,
    ) -> Vec<(String, Vec<PathBuf>)> {
        let written = vec![task("a"), task("b"), task("c")];
        let mut checked = written.clone();
        checked[1].valid = false;
        checked[1].invalid_reason = self_check(1, 3, 2).reason();
        checked[2].valid = false;
        checked[2].invalid_reason = self_check(1, 1, 2).reason();
        let generated = shard_path(&run.join("round-001/generate"), ShardKind::Tasks, 0);
        let selfchecked = shard_path(&run.join("round-001/selfcheck"), ShardKind::Tasks, 0);
        write_rows(&generated, &written).unwrap();
        write_rows(&selfchecked, &checked).unwrap();
        let mut inputs = vec![
            ("generate".to_string(), vec![generated]),
            ("selfcheck?".to_string(), vec![selfchecked]),
        ];
        if let Some(c) = checkpoint {
            inputs.push(("init".to_string(), vec![c]));
        }
        inputs
    }

    fn rollout(run: &Path, inputs: &[(String, Vec<PathBuf>)]) -> Result<StageOutput> {
        let mut params = resolve("rollout", &RolloutStage.params(), None, &[]).unwrap();
        for (k, v) in [
            ("search_mode", "none".into()),
            ("attempts", 2.into()),
            ("max_new_tokens", 8.into()),
            ("max_turns", 1.into()),
        ] {
            params.insert(k.to_string(), v);
        }
        let inputs = crate::stages::contract::test_inputs(&RolloutStage, &params, inputs);
        let ctx = StageContext {
            stage: "rollout",
            run_dir: run,
            round: 1,
            step: 0,
            steps: 0,
            params: &params,
            seed: 3,
            shard: ShardSpec::WHOLE,
            inputs: &inputs,
            out_dir: run.join("round-001/rollout"),
        };
        RolloutStage.run(&ctx)
    }

    /// The self-check runs before the rollout: of three tasks `generate` wrote, only the one
    /// that passed the check is attempted; the two that failed cost no rollout.
    #[test]
    fn rollout_attempts_only_the_tasks_that_passed_the_self_check() {
        let Some(init) = crate::model::test_util::tiny_model(41) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let inputs = round_with_self_check(dir.path(), Some(init));
        let out = rollout(dir.path(), &inputs).unwrap();
        let rows: Vec<TrajectoryRow> = read_rows(&out.files).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.trajectory_id.as_str()).collect();
        assert_eq!(ids, vec!["a-p0", "a-p1"]);
        assert!(
            out.summary
                .contains("2 invalid tasks skipped (2 of them failed the self-check)"),
            "{}",
            out.summary
        );
    }

    /// Without a self-check in the round (no `selfcheck?` files) the tasks are `generate`'s.
    /// With one that failed every task, nothing is attempted and the checkpoint is never
    /// loaded (here there is none at all).
    #[test]
    fn every_task_failing_the_self_check_costs_no_rollout_and_no_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = round_with_self_check(dir.path(), None);
        let checked = inputs[1].1[0].clone();
        let mut none_valid: Vec<TaskRow> = read_rows(std::slice::from_ref(&checked)).unwrap();
        none_valid[0].valid = false;
        none_valid[0].invalid_reason = self_check(0, 3, 2).reason();
        write_rows(&checked, &none_valid).unwrap();
        let out = rollout(dir.path(), &inputs).unwrap();
        let rows: Vec<TrajectoryRow> = read_rows(&out.files).unwrap();
        assert!(rows.is_empty());
        assert!(
            out.summary.contains("3 of them failed the self-check"),
            "{}",
            out.summary
        );
        // The same round without its self-check: generate's three valid tasks need the model.
        inputs.retain(|(k, _)| k != "selfcheck?");
        let Err(e) = rollout(dir.path(), &inputs) else {
            panic!("rollout ran without a checkpoint")
        };
        let e = e.to_string();
        assert!(e.contains("checkpoint"), "{e}");
    }
}
