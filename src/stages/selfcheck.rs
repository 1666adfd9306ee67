//! Stage `selfcheck`: the GRM judges the generator's own answer to each of its tasks
//! `self_judgments` times (v), and a task stays valid only when at least `v_min` of those
//! verdicts say correct (SPEC §2, validity). It runs between `generate` and `rollout`, so a task
//! that fails costs no policy attempts: `rollout`, `judge` and `reward` read the tasks this stage
//! writes, with the decision in `valid` / `invalid_reason`.
//!
//! The GRM sees the question and the generator's answer, never a reference (the answer *is* the
//! reference), as in the seed. A task that was already invalid (format, no answer, the question
//! contains its answer) is not judged; a labelled task (`source = "qa"`) has nothing to check and
//! passes. A task with fewer judgments than `v_min` is invalid: the gate is never lowered to the
//! number of judgments there happen to be.
//!
//! Outputs: `tasks` (every task of `generate`, its validity after the check), `judgments`
//! (target `generator`) and `trajectories` (the GRM's, which `reward` labels and `train` trains
//! like `judge`'s). `--shard i/n` splits by task, so every part decides whole tasks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{
    Agent, Request, Role, TrajectoryIds, judge_checkpoint_upstream, judge_model_spec,
    sampling_specs, search_upstream, tool_format,
};
use super::kit::{SELF_CHECK_TARGET as TARGET, tasks};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::rewards::{SelfCheck, self_check};
use crate::roles::grm;
use crate::seed::stable_u64;
use crate::shards::rows::{JudgmentRow, TaskRow};
use crate::shards::{ShardKind, shard_path, write_rows};

pub(crate) struct SelfCheckStage;

/// The self-check's own settings, checked when the pipeline loads: each task's answer is judged
/// `self_judgments` times and needs `v_min` "correct" verdicts.
#[derive(Debug, Clone, Copy)]
struct Settings {
    self_judgments: usize,
    v_min: usize,
    min_searches: usize,
}

impl Settings {
    fn from_params(params: &Params) -> Result<Settings> {
        let v = params.u64("self_judgments") as usize;
        let v_min = params.u64("v_min") as usize;
        if v_min > v {
            return Err(Error::param(
                "selfcheck.v_min",
                format!("{v_min} is more than selfcheck.self_judgments = {v}: no task could pass"),
            ));
        }
        Ok(Settings {
            self_judgments: v,
            v_min,
            min_searches: super::agent::min_searches(params, "selfcheck")?,
        })
    }
}

impl Stage for SelfCheckStage {
    /// 2: guided decoding completes a closing tag the budget cuts.
    /// 3: `searches` counts results read; a call the last turn leaves unanswered is not one;
    ///    a call close sharing its token with the next character (`</search><`) still calls;
    ///    a search result that would overflow the context ends the sequence unappended;
    ///    SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US");
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
        "selfcheck"
    }

    fn check(&self, params: &Params) -> Result<()> {
        super::agent::check_agent_params(params, "selfcheck")?;
        Settings::from_params(params).map(|_| ())
    }

    fn about(&self) -> &'static str {
        "the GRM judges the generator's own answers before any rollout; tasks below v_min are invalid"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new(
                "self_judgments",
                5,
                "times the GRM judges the generator's own answer (v)",
            )
            .between(0.0, f64::from(u32::MAX)),
            ParamSpec::new(
                "v_min",
                4,
                "correct verdicts a task needs to stay valid (at most self_judgments)",
            ),
            ParamSpec::new(
                "min_searches",
                0,
                "with `guided`: searches the GRM makes before its verdict (0: its choice); the self-check shows no reference, so a judge that looks the question up has something to compare with",
            ),
            judge_model_spec(),
        ];
        specs.extend(sampling_specs(256, 2, 1.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("generate")];
        up.extend(search_upstream(params));
        up.extend(judge_checkpoint_upstream(params));
        up.dedup();
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let Settings {
            self_judgments: v,
            v_min,
            min_searches,
        } = Settings::from_params(ctx.params)?;
        let all = tasks(ctx.input_files(Upstream::needs("generate"))?)?;
        let owned: Vec<TaskRow> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| ctx.shard.owns(*i))
            .map(|(_, t)| t)
            .collect();
        let mut requests = Vec::new();
        let mut items: Vec<(&TaskRow, &str, u32)> = Vec::new();
        let tools = tool_format(ctx.params, "selfcheck")?;
        for task in owned.iter().filter(|t| needs_check(t)) {
            let traj = task.generator_trajectory_id.as_deref().unwrap_or_default();
            for sample in 0..v as u32 {
                requests.push(Request {
                    messages: grm::prompt(&task.question, &task.answer, None, tools),
                    seed: seq_seed(ctx.seed, stable_u64(&[traj]), u64::from(sample)),
                });
                items.push((task, traj, sample));
            }
        }
        // Nothing to judge (no valid generated task in this part): no model to load.
        let completions = if requests.is_empty() {
            Vec::new()
        } else {
            Agent::load(ctx, "selfcheck")?
                .require_searches(min_searches)
                .run(&requests, "selfcheck", Role::Grm)?
        };
        let mut judgments = Vec::with_capacity(items.len());
        let mut grm_rows = Vec::with_capacity(items.len());
        let mut unparsable = 0;
        for (((task, traj, sample), c), req) in items.into_iter().zip(&completions).zip(&requests) {
            let out = grm::parse(&c.out.text);
            unparsable += usize::from(!out.parsed);
            let judgment_id = format!("{traj}-j{sample}");
            grm_rows.push(c.row(
                TrajectoryIds {
                    trajectory_id: judgment_id.clone(),
                    task_id: task.task_id.clone(),
                    role: Role::Grm.as_str(),
                    attempt: sample,
                    seed: req.seed,
                },
                match &out.error {
                    None => Ok(out.verdict.name().to_string()),
                    Some(e) => Err(e.clone()),
                },
            ));
            judgments.push(JudgmentRow {
                judgment_id: judgment_id.clone(),
                task_id: task.task_id.clone(),
                target_trajectory_id: traj.to_string(),
                target: TARGET.to_string(),
                sample,
                question: task.question.clone(),
                reference_answer: task.answer.clone(),
                candidate_answer: Some(task.answer.clone()),
                verdict: out.verdict.name().to_string(),
                parsed: out.parsed,
                parse_error: out.error,
                judge_trajectory_id: judgment_id,
            });
        }
        let decided = decide(owned, &judgments, v_min);

        let tasks_path = shard_path(&ctx.out_dir, ShardKind::Tasks, ctx.shard.index);
        let judgments_path = shard_path(&ctx.out_dir, ShardKind::Judgments, ctx.shard.index);
        let traj_path = shard_path(&ctx.out_dir, ShardKind::Trajectories, ctx.shard.index);
        write_rows(&tasks_path, &decided.tasks)?;
        let written = write_rows(&judgments_path, &judgments)?;
        write_rows(&traj_path, &grm_rows)?;
        Ok(StageOutput {
            files: vec![tasks_path, judgments_path, traj_path],
            summary: format!(
                "{}; {written} self-judgments, {unparsable} unparsable",
                decided.summary()
            ),
        })
    }
}

/// Whether the self-check judges `task`: a generated task that is valid so far.
fn needs_check(task: &TaskRow) -> bool {
    task.valid && task.generator_trajectory_id.is_some() && task.template != "labelled"
}

/// The tasks after the self-check and what it decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decided {
    pub tasks: Vec<TaskRow>,
    /// Valid after the check (checked or not).
    pub valid: usize,
    /// Passed the check.
    pub passed: usize,
    /// Fewer than `v_min` correct verdicts.
    pub rejected: usize,
    /// Fewer than `v_min` judgments.
    pub too_few_judgments: usize,
    /// Invalid before the check (not judged).
    pub invalid_before: usize,
}

impl Decided {
    pub fn summary(&self) -> String {
        format!(
            "{}/{} tasks valid after the self-check: {} passed, {} rejected (fewer than v_min correct verdicts), {} with fewer than v_min self-judgments, {} invalid before the check",
            self.valid,
            self.tasks.len(),
            self.passed,
            self.rejected,
            self.too_few_judgments,
            self.invalid_before
        )
    }
}

/// Applies the self-check to `tasks`: a checked task stays valid when at least `v_min` of its
/// `judgments` (target `generator`, matched by task id; an unparsable verdict counts as a
/// judgment that said wrong) say correct and there are at least `v_min` of them.
pub(crate) fn decide(tasks: Vec<TaskRow>, judgments: &[JudgmentRow], v_min: usize) -> Decided {
    let mut votes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for j in judgments.iter().filter(|j| j.target == TARGET) {
        let e = votes.entry(j.task_id.as_str()).or_default();
        e.0 += usize::from(j.verdict == grm::Verdict::Correct.name());
        e.1 += 1;
    }
    let mut d = Decided {
        tasks: Vec::with_capacity(tasks.len()),
        valid: 0,
        passed: 0,
        rejected: 0,
        too_few_judgments: 0,
        invalid_before: 0,
    };
    for mut task in tasks {
        if !task.valid {
            d.invalid_before += 1;
        } else if needs_check(&task) {
            let (correct, judged) = votes
                .get(task.task_id.as_str())
                .copied()
                .unwrap_or_default();
            let check = self_check(correct, judged, v_min);
            match check {
                SelfCheck::Passed => d.passed += 1,
                SelfCheck::Rejected { .. } => d.rejected += 1,
                SelfCheck::TooFewJudgments { .. } => d.too_few_judgments += 1,
            }
            if let Some(reason) = check.reason() {
                task.valid = false;
                task.invalid_reason = Some(reason);
            }
        }
        d.valid += usize::from(task.valid);
        d.tasks.push(task);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, valid: bool) -> TaskRow {
        TaskRow {
            task_id: id.into(),
            round: 1,
            question: format!("What is the answer to question {id}?"),
            answer: "Paris".into(),
            answer_aliases: vec![],
            template: "seed".into(),
            parent_task_id: None,
            topic: None,
            generator_trajectory_id: Some(format!("{id}-g")),
            valid,
            invalid_reason: (!valid).then(|| "no answer".to_string()),
        }
    }

    fn judgment(task: &str, sample: u32, verdict: &str) -> JudgmentRow {
        JudgmentRow {
            judgment_id: format!("{task}-g-j{sample}"),
            task_id: task.into(),
            target_trajectory_id: format!("{task}-g"),
            target: TARGET.into(),
            sample,
            question: "Q?".into(),
            reference_answer: "Paris".into(),
            candidate_answer: Some("Paris".into()),
            verdict: verdict.into(),
            parsed: true,
            parse_error: None,
            judge_trajectory_id: format!("{task}-g-j{sample}"),
        }
    }

    /// v_min = 2: `ok` has 2 of 3 correct (passes), `no` 1 of 3 (rejected), `few` has one
    /// judgment that says correct (fewer than v_min: invalid, never a gate lowered to 1),
    /// `none` no judgment at all (invalid), `bad` was invalid before (not judged, counted
    /// apart), `qa` is a labelled task (nothing to check: valid).
    #[test]
    fn v_min_gate_counts_rejections_and_too_few_judgments() {
        let mut labelled = task("qa", true);
        labelled.template = "labelled".into();
        labelled.generator_trajectory_id = None;
        let tasks = vec![
            task("ok", true),
            task("no", true),
            task("few", true),
            task("none", true),
            task("bad", false),
            labelled,
        ];
        let judgments = vec![
            judgment("ok", 0, "correct"),
            judgment("ok", 1, "wrong"),
            judgment("ok", 2, "correct"),
            judgment("no", 0, "correct"),
            judgment("no", 1, "wrong"),
            judgment("no", 2, "wrong"),
            judgment("few", 0, "correct"),
        ];
        let d = decide(tasks, &judgments, 2);
        let valid: Vec<(&str, bool)> = d
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.valid))
            .collect();
        assert_eq!(
            valid,
            vec![
                ("ok", true),
                ("no", false),
                ("few", false),
                ("none", false),
                ("bad", false),
                ("qa", true)
            ]
        );
        assert_eq!(
            (
                d.valid,
                d.passed,
                d.rejected,
                d.too_few_judgments,
                d.invalid_before
            ),
            (2, 1, 1, 2, 1)
        );
        let reason = |id: &str| {
            d.tasks
                .iter()
                .find(|t| t.task_id == id)
                .and_then(|t| t.invalid_reason.clone())
                .unwrap()
        };
        assert_eq!(SelfCheck::of_reason(&reason("no")), Some("rejected"));
        assert_eq!(
            SelfCheck::of_reason(&reason("few")),
            Some("too_few_judgments")
        );
        assert_eq!(reason("bad"), "no answer");
        assert!(
            d.summary().contains("2 with fewer than v_min"),
            "{}",
            d.summary()
        );
    }

    /// A self-check that must search needs a turn for each search and one for the verdict.
    #[test]
    fn min_searches_needs_a_turn_more_than_its_searches() {
        let mut params =
            crate::params::resolve("selfcheck", &SelfCheckStage.params(), None, &[]).unwrap();
        params.insert("guided".to_string(), true.into());
        let mut with = |searches: u64, turns: u64| {
            params.insert("min_searches".to_string(), searches.into());
            params.insert("max_turns".to_string(), turns.into());
            SelfCheckStage.check(&params).map_err(|e| e.to_string())
        };
        assert!(with(0, 1).is_ok());
        assert!(with(1, 2).is_ok());
        let err = with(1, 1).unwrap_err();
        assert!(err.contains("selfcheck.min_searches"), "{err}");
        assert!(err.contains("at least 2 turns"), "{err}");
    }

    /// Only the guide enforces `min_searches`, and only with a search tool: elsewhere it is refused.
    #[test]
    fn min_searches_needs_guided_decoding_with_a_search_tool() {
        let base = || {
            let mut p =
                crate::params::resolve("selfcheck", &SelfCheckStage.params(), None, &[]).unwrap();
            p.insert("min_searches".to_string(), 1u64.into());
            p.insert("max_turns".to_string(), 2u64.into());
            p.insert("guided".to_string(), true.into());
            p
        };
        assert!(SelfCheckStage.check(&base()).is_ok());
        for (key, value) in [("guided", false.into()), ("search_mode", "none".into())] {
            let mut p = base();
            p.insert(key.to_string(), value);
            let err = SelfCheckStage.check(&p).unwrap_err().to_string();
            assert!(err.contains("selfcheck.min_searches"), "{err}");
            assert!(err.contains("guided decoding with a search tool"), "{err}");
        }
        let mut p = base();
        p.insert("min_searches".to_string(), 0u64.into());
        p.insert("guided".to_string(), false.into());
        assert!(SelfCheckStage.check(&p).is_ok());
    }

    fn run_stage(
        run: &std::path::Path,
        inputs: &[(String, Vec<PathBuf>)],
        v: u64,
        v_min: u64,
    ) -> Result<StageOutput> {
        let mut params =
            crate::params::resolve("selfcheck", &SelfCheckStage.params(), None, &[]).unwrap();
        for (k, val) in [
            ("self_judgments", v.into()),
            ("v_min", v_min.into()),
            ("search_mode", "none".into()),
            ("guided", true.into()),
            ("think_tokens", 4.into()),
            ("max_new_tokens", 40.into()),
            ("max_turns", 1.into()),
        ] {
            params.insert(k.to_string(), val);
        }
        let inputs = crate::stages::contract::test_inputs(&SelfCheckStage, &params, inputs);
        let ctx = StageContext {
            stage: "selfcheck",
            run_dir: run,
            round: 1,
            step: 0,
            steps: 0,
            params: &params,
            seed: 5,
            shard: crate::manifest::ShardSpec::WHOLE,
            inputs: &inputs,
            out_dir: run.join("round-001/selfcheck"),
        };
        SelfCheckStage.run(&ctx)
    }

    /// The stage on a tiny model: every valid generated task is judged v times (the invalid
    /// one never), the tasks come back with the decision `decide` makes from the judgments, and
    /// the GRM trajectories match the judgments one to one.
    #[test]
    fn the_stage_judges_each_valid_task_v_times_and_writes_the_decision() {
        use crate::shards::read_kind;
        use crate::shards::rows::TrajectoryRow;
        let Some(init) = crate::model::test_util::tiny_model(43) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let tasks_in = vec![task("a", true), task("b", false), task("c", true)];
        let generated = shard_path(&run.join("round-001/generate"), ShardKind::Tasks, 0);
        write_rows(&generated, &tasks_in).unwrap();
        let inputs = vec![
            ("generate".to_string(), vec![generated]),
            ("init".to_string(), vec![init]),
        ];
        let out = run_stage(run, &inputs, 2, 1).unwrap();
        let tasks_out: Vec<TaskRow> = read_kind(&out.files).unwrap();
        let judgments: Vec<JudgmentRow> = read_kind(&out.files).unwrap();
        let runs: Vec<TrajectoryRow> = read_kind(&out.files).unwrap();
        assert_eq!(tasks_out.len(), 3);
        let judged: Vec<(&str, u32)> = judgments
            .iter()
            .map(|j| (j.task_id.as_str(), j.sample))
            .collect();
        assert_eq!(judged, vec![("a", 0), ("a", 1), ("c", 0), ("c", 1)]);
        assert!(judgments.iter().all(|j| j.target == TARGET));
        let ids: Vec<&str> = runs.iter().map(|r| r.trajectory_id.as_str()).collect();
        let jids: Vec<&str> = judgments
            .iter()
            .map(|j| j.judge_trajectory_id.as_str())
            .collect();
        assert_eq!(ids, jids);
        assert_eq!(decide(tasks_in, &judgments, 1).tasks, tasks_out);
        assert!(
            out.summary.contains("1 invalid before the check"),
            "{}",
            out.summary
        );

        // v_min above v is refused in one line, before any model is loaded.
        let Err(e) = run_stage(run, &inputs, 2, 3) else {
            panic!("v_min above v was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("selfcheck.v_min") && !e.contains('\n'), "{e}");
    }
}
