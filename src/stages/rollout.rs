//! Stage `rollout`: the policy attempts every valid task `attempts` times in the search
//! environment (SPEC §2). Every attempt is kept, parsable or not; an attempt without exactly one
//! final `<answer>` is recorded with its reason and later scored as wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{
    Agent, CHECKPOINT_UPSTREAM, Request, Role, TrajectoryIds, sampling_specs, search_upstream,
};
use super::generate::tasks;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::roles::policy;
use crate::seed::stable_u64;
use crate::shards::{ShardKind, shard_path, write_rows};

pub struct RolloutStage;

impl Stage for RolloutStage {
    fn name(&self) -> &'static str {
        "rollout"
    }

    fn about(&self) -> &'static str {
        "the policy attempts every valid task m times with the search tool"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![ParamSpec::new(
            "attempts",
            4,
            "attempts per task (m; the GRPO group size)",
        )];
        specs.extend(sampling_specs(384, 4, 1.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<&'static str> {
        let mut up = vec!["generate"];
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
        let all = tasks(ctx.input_files("generate"))?;
        let mut empty_questions = 0;
        let valid: Vec<_> = all
            .into_iter()
            .filter(|t| t.valid)
            .filter(|t| {
                let empty = t.question.trim().is_empty();
                empty_questions += usize::from(empty);
                !empty
            })
            .collect();
        let agent = Agent::load(ctx, "rollout")?;
        let mut requests = Vec::new();
        let mut ids = Vec::new();
        for (i, task) in valid.iter().enumerate() {
            if !ctx.shard.owns(i) {
                continue;
            }
            for attempt in 0..m {
                let seed = seq_seed(ctx.seed, stable_u64(&[&task.task_id]), attempt as u64);
                let messages = if agent.has_search() {
                    policy::prompt(&task.question)
                } else {
                    policy::prompt_without_tools(&task.question)
                };
                requests.push(Request { messages, seed });
                ids.push(TrajectoryIds {
                    trajectory_id: format!("{}-p{attempt}", task.task_id),
                    task_id: task.task_id.clone(),
                    role: "policy",
                    attempt,
                    seed,
                });
            }
        }
        let completions = agent.run(&requests, "rollout", Role::Policy)?;
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
        if empty_questions > 0 {
            summary.push_str(&format!(
                "; {empty_questions} tasks with an empty question skipped"
            ));
        }
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|(r, k)| format!("{k}× {r}")).collect();
            summary.push_str(&format!("; unparsable: {}", list.join(", ")));
        }
        Ok(StageOutput {
            files: vec![out],
            summary,
        })
    }
}
