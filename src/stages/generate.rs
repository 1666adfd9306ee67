//! Stage `generate`: the Prompt Generator writes this round's tasks (SPEC §2). Round 1 seeds it
//! with topics drawn from the corpus; later rounds evolve the previous round's valid tasks, HARDER
//! when the policy solved them at `solve_threshold` or more and EASIER otherwise, with the
//! `width` template before `depth_from_round` and `depth` from then on. With `source = "qa"` the
//! tasks are labelled training questions instead (Search-R1), and no generator runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{
    Agent, CHECKPOINT_UPSTREAM, Request, Role, TrajectoryIds, sampling_specs, search_upstream,
    tool_format,
};
use super::kit::tasks;
use super::qa::{fact_quota, facts_in_turn};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::rewards::{grounding, validity};
use crate::roles::generator::{self, Direction, Template};
use crate::seed::stable_u64;
use crate::shards::rows::{CorpusRow, QaRow, RewardRow, TaskRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub(crate) struct GenerateStage;

/// What one task is asked to be before the generator writes it.
struct Seed {
    topic: Option<String>,
    parent: Option<(TaskRow, Direction)>,
}

/// Where a round's tasks come from (`generate.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The model writes them.
    Generator,
    /// Labelled train questions (Search-R1).
    Qa,
}

/// The generate stage's own settings, typed and checked when the pipeline loads (the sampling
/// settings are [`super::agent::AgentSettings`]).
#[derive(Debug, Clone)]
struct Settings {
    source: Source,
    tasks: usize,
    resample: bool,
    fact_share: f64,
    depth_from_round: u32,
    solve_threshold: f64,
    min_searches: usize,
    grounding_k: usize,
}

impl Settings {
    fn from_params(params: &Params) -> Result<Settings> {
        let source = match params.str("source") {
            "qa" => Source::Qa,
            _ => Source::Generator,
        };
        let s = Settings {
            source,
            tasks: params.u64("tasks") as usize,
            resample: params.bool("resample"),
            fact_share: params.f64("fact_share"),
            depth_from_round: params.u64("depth_from_round") as u32,
            solve_threshold: params.f64("solve_threshold"),
            min_searches: super::agent::min_searches(params, "generate")?,
            grounding_k: params.u64("grounding_k") as usize,
        };
        if s.tasks == 0 {
            return Err(Error::param("generate.tasks", "must be at least 1"));
        }
        if s.grounding_k > 0 && s.source == Source::Generator && params.str("search_mode") == "none"
        {
            return Err(grounding_without_index());
        }
        Ok(s)
    }
}

/// `grounding_k` without a search index to check the tasks against.
fn grounding_without_index() -> Error {
    Error::param(
        "generate.grounding_k",
        "needs a search index (generate.search_mode is none)",
    )
}

impl Stage for GenerateStage {
    /// 2: guided decoding completes a closing tag the budget cuts; `grounding_k`.
    /// 3: parents are the previous round's tasks valid after its self-check, not before.
    /// 4: `searches` counts results read; a call the last turn leaves unanswered is not one;
    ///    a call close sharing its token with the next character (`</search><`) still calls;
    ///    a search result that would overflow the context ends the sequence unappended;
    ///    SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US");
    ///    a sampled sequence whose every token was its truncated distribution's only one keeps
    ///    behaviour log-probs of 0 (they were the scored ones, as for a greedy pick).
    /// 5: a decoding step's attention (one query row) rounds as the few-row kernels do, not `gemm`.
    fn version(&self) -> u32 {
        5
    }

    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "generate"
    }

    fn check(&self, params: &Params) -> Result<()> {
        super::agent::check_agent_params(params, "generate")?;
        Settings::from_params(params).map(|_| ())
    }

    fn about(&self) -> &'static str {
        "the Prompt Generator writes this round's tasks (or labelled QA is sampled as tasks)"
    }

    fn qa_splits_read(&self, params: &Params) -> Vec<(String, String)> {
        match Settings::from_params(params) {
            Ok(s) if s.source == Source::Qa => vec![("generate.source".into(), "train".into())],
            _ => Vec::new(),
        }
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new(
                "source",
                "generator",
                "`generator` (the model writes tasks) or `qa` (labelled train questions)",
            )
            .one_of(&["generator", "qa"]),
            ParamSpec::new("tasks", 8, "tasks per round").between(1.0, f64::from(u32::MAX)),
            ParamSpec::new(
                "resample",
                true,
                "with `source = qa`: a different seeded sample of questions each round (false: the same `tasks` questions every round)",
            ),
            ParamSpec::new(
                "fact_share",
                0.0,
                "with `source = qa`: share of the tasks drawn first from corpus questions that ask for a fact in an article's text rather than for its subject, the families taken in turn",
            )
            .between(0.0, 1.0),
            ParamSpec::new(
                "depth_from_round",
                3,
                "first round whose evolved tasks use the depth template (earlier: width)",
            ),
            ParamSpec::new(
                "solve_threshold",
                0.5,
                "a task solved at this rate or more is made HARDER next round, else EASIER",
            )
            .between(0.0, 1.0),
            ParamSpec::new(
                "min_searches",
                0,
                "with `guided`: searches the generator makes before it writes its task (0: its choice)",
            ),
            ParamSpec::new(
                "grounding_k",
                0,
                "a task is valid only when one of the top K passages the search engine finds for its question holds its answer (0: no grounding check)",
            ),
        ];
        specs.extend(sampling_specs(384, 3, 1.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        if params.str("source") == "qa" {
            return vec![Upstream::needs("qa")];
        }
        let mut up = vec![Upstream::needs("corpus")];
        up.extend(search_upstream(params));
        up.extend(CHECKPOINT_UPSTREAM);
        up.extend([
            Upstream::previous_round("generate"),
            Upstream::previous_round("selfcheck"),
            Upstream::previous_round("reward"),
        ]);
        up.dedup();
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let settings = Settings::from_params(ctx.params)?;
        let n = settings.tasks;
        let tasks_path = shard_path(&ctx.out_dir, ShardKind::Tasks, ctx.shard.index);
        if settings.source == Source::Qa {
            let tasks = labelled_tasks(ctx, n, settings.resample, settings.fact_share)?;
            let rows = write_rows(&tasks_path, &tasks)?;
            return Ok(StageOutput {
                files: vec![tasks_path],
                summary: format!("{rows} labelled tasks"),
            });
        }
        let seeds = task_seeds(ctx, n, settings.solve_threshold)?;
        let template = if ctx.round >= settings.depth_from_round {
            Template::Depth
        } else {
            Template::Width
        };
        let agent = Agent::load(ctx, "generate")?.require_searches(settings.min_searches);
        let mut ids = Vec::new();
        let mut requests = Vec::new();
        let tools = tool_format(ctx.params, "generate")?;
        for (i, seed) in seeds.iter().enumerate() {
            if !ctx.shard.owns(i) {
                continue;
            }
            let task_id = format!("r{:03}-t{i:05}", ctx.round);
            let messages = match (&seed.parent, &seed.topic) {
                (Some((parent, dir)), _) => generator::evolve_prompt(
                    &parent.question,
                    &parent.answer,
                    *dir,
                    template,
                    tools,
                ),
                (None, Some(topic)) => generator::seed_prompt(topic, tools),
                (None, None) => unreachable!("every seed has a topic or a parent"),
            };
            let seed_value = seq_seed(ctx.seed, stable_u64(&[&task_id]), 0);
            requests.push(Request {
                messages,
                seed: seed_value,
            });
            ids.push((i, task_id, seed_value));
        }
        let grounding_k = settings.grounding_k;
        let search = match (grounding_k, agent.search_env()) {
            (0, _) => None,
            (_, Some(env)) => Some((env, agent.search_mode())),
            (_, None) => return Err(grounding_without_index()),
        };
        let completions = agent.run(&requests, "generate", Role::Generator)?;
        let mut tasks = Vec::new();
        let mut trajectories = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for ((i, task_id, seed_value), c) in ids.into_iter().zip(&completions) {
            let seed = &seeds[i];
            let parsed = generator::parse(&c.out.text);
            let question = parsed.question.clone().unwrap_or_default();
            let answer = parsed.answer.clone().unwrap_or_default();
            let invalid = parsed
                .error
                .clone()
                .or_else(|| validity(&question, parsed.answer.as_deref(), 0, 0));
            let invalid = match (invalid, search) {
                (None, Some((env, mode))) => {
                    let hits = env
                        .search(&question, grounding_k, mode)
                        .map_err(|e| Error::stage("generate", format!("grounding search: {e}")))?;
                    grounding(&answer, hits.iter().map(|h| h.text.as_str()))
                }
                (invalid, _) => invalid,
            };
            if let Some(r) = &invalid {
                *reasons.entry(r.clone()).or_default() += 1;
            }
            let trajectory_id = format!("{task_id}-g");
            trajectories.push(c.row(
                TrajectoryIds {
                    trajectory_id: trajectory_id.clone(),
                    task_id: task_id.clone(),
                    role: Role::Generator.as_str(),
                    attempt: 0,
                    seed: seed_value,
                },
                match &parsed.error {
                    None => Ok(question.clone()),
                    Some(e) => Err(e.clone()),
                },
            ));
            let template_name = match &seed.parent {
                None => "seed".to_string(),
                Some((_, Direction::Harder)) => format!("harder/{}", template.name()),
                Some((_, Direction::Easier)) => format!("easier/{}", template.name()),
            };
            tasks.push(TaskRow {
                task_id,
                round: ctx.round,
                question,
                answer,
                answer_aliases: Vec::new(),
                template: template_name,
                parent_task_id: seed.parent.as_ref().map(|(p, _)| p.task_id.clone()),
                topic: seed.topic.clone(),
                generator_trajectory_id: Some(trajectory_id),
                valid: invalid.is_none(),
                invalid_reason: invalid,
            });
        }
        let traj_path = shard_path(&ctx.out_dir, ShardKind::Trajectories, ctx.shard.index);
        let written = write_rows(&tasks_path, &tasks)?;
        write_rows(&traj_path, &trajectories)?;
        let valid = tasks.iter().filter(|t| t.valid).count();
        let searched = completions.iter().filter(|c| c.searches() > 0).count();
        let mut summary =
            format!("{written} tasks written, {valid} valid; {searched} generator runs searched");
        if !reasons.is_empty() {
            let list: Vec<String> = reasons.iter().map(|(r, k)| format!("{k}× {r}")).collect();
            summary.push_str(&format!("; invalid: {}", list.join(", ")));
        }
        Ok(StageOutput {
            files: vec![tasks_path, traj_path],
            summary,
        })
    }
}

/// Topic seeds for round 1, evolved parents afterwards (topics fill in when the previous round
/// left fewer valid tasks than `n`).
fn task_seeds(ctx: &StageContext, n: usize, solve_threshold: f64) -> Result<Vec<Seed>> {
    let generated = tasks(ctx.input_files(Upstream::previous_round("generate"))?)?;
    let checked = tasks(ctx.input_files(Upstream::previous_round("selfcheck"))?)?;
    let mut seeds = if generated.is_empty() {
        Vec::new()
    } else {
        let rewards: Vec<RewardRow> =
            read_rows(ctx.input_files(Upstream::previous_round("reward"))?)?;
        evolved_parents(generated, checked, &rewards, ctx.seed, n, solve_threshold)
    };
    if seeds.len() < n {
        let mut corpus: Vec<CorpusRow> = read_rows(ctx.input_files(Upstream::needs("corpus"))?)?;
        if corpus.is_empty() {
            return Err(Error::stage(
                "generate",
                "the corpus is empty: no topic seeds",
            ));
        }
        corpus.sort_by_key(|r| stable_u64(&[&ctx.seed.to_string(), &r.doc_id]));
        for row in corpus.into_iter().cycle().take(n - seeds.len()) {
            seeds.push(Seed {
                topic: Some(row.title),
                parent: None,
            });
        }
    }
    Ok(seeds)
}

/// The previous round's valid tasks as parents, `n` at most in a seeded order: made HARDER when
/// the policy solved them at `solve_threshold` or more, else EASIER. Valid as the round used
/// them: after its self-check when it had one (`checked`, of the same round), since a task the
/// check rejected was never attempted and has no solve rate to evolve.
fn evolved_parents(
    generated: Vec<TaskRow>,
    checked: Vec<TaskRow>,
    rewards: &[RewardRow],
    seed: u64,
    n: usize,
    solve_threshold: f64,
) -> Vec<Seed> {
    let round = generated.first().map(|t| t.round);
    let prev = if !checked.is_empty() && checked.iter().all(|t| Some(t.round) == round) {
        checked
    } else {
        generated
    };
    let mut solved: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in rewards.iter().filter(|r| r.role == Role::Policy.as_str()) {
        let e = solved.entry(r.task_id.as_str()).or_default();
        e.0 += usize::from(r.reward > 0.5);
        e.1 += 1;
    }
    let mut order: Vec<&TaskRow> = prev.iter().filter(|t| t.valid).collect();
    order.sort_by_key(|t| stable_u64(&[&seed.to_string(), &t.task_id]));
    order
        .into_iter()
        .take(n)
        .map(|t| {
            let rate = solved
                .get(t.task_id.as_str())
                .map(|&(k, m)| k as f64 / m.max(1) as f64)
                .unwrap_or(0.0);
            let dir = if rate >= solve_threshold {
                Direction::Harder
            } else {
                Direction::Easier
            };
            Seed {
                topic: t.topic.clone(),
                parent: Some((t.clone(), dir)),
            }
        })
        .collect()
}

/// `n` of `rows` (in their order, cycling when there are fewer): `fact_share` of them from the
/// questions that ask for a fact, the families in turn, then the others.
fn pick_labelled<'a>(rows: &[&'a QaRow], n: usize, fact_share: f64) -> Vec<&'a QaRow> {
    let n_facts = fact_quota(n, fact_share);
    let mut chosen: Vec<&QaRow> = facts_in_turn(rows)
        .into_iter()
        .cycle()
        .take(n_facts)
        .collect();
    let taken: std::collections::HashSet<&str> = chosen.iter().map(|q| q.id.as_str()).collect();
    let rest: Vec<&QaRow> = rows
        .iter()
        .copied()
        .filter(|q| !taken.contains(q.id.as_str()))
        .collect();
    let rest = if rest.is_empty() { rows.to_vec() } else { rest };
    chosen.extend(rest.into_iter().cycle().take(n - chosen.len()));
    chosen
}

/// `n` labelled training questions as tasks: a different seeded sample each round, or with
/// `resample = false` the same `n` questions in every round and every run (a fixed set to
/// watch the training reward on). `fact_share` of them come first from the questions that ask
/// for a fact (`qa::facts_in_turn`), the rest from all the others.
fn labelled_tasks(
    ctx: &StageContext,
    n: usize,
    resample: bool,
    fact_share: f64,
) -> Result<Vec<TaskRow>> {
    let mut rows: Vec<QaRow> = read_rows::<QaRow>(ctx.input_files(Upstream::needs("qa"))?)?
        .into_iter()
        .filter(|q| q.split == "train" && !q.answers.is_empty())
        .collect();
    if rows.is_empty() {
        return Err(Error::stage(
            "generate",
            "source = qa, but the qa stage wrote no train questions",
        ));
    }
    let key = if resample {
        ctx.seed.to_string()
    } else {
        "fixed".to_string()
    };
    rows.sort_by_key(|q| stable_u64(&[&key, &q.id]));
    let all: Vec<&QaRow> = rows.iter().collect();
    Ok(pick_labelled(&all, n, fact_share)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ctx.shard.owns(*i))
        .map(|(i, q)| TaskRow {
            task_id: format!("r{:03}-t{i:05}", ctx.round),
            round: ctx.round,
            question: q.question.clone(),
            answer: q.answers[0].clone(),
            answer_aliases: q.answers[1..].to_vec(),
            template: "labelled".into(),
            parent_task_id: None,
            topic: Some(q.id.clone()),
            generator_trajectory_id: None,
            valid: true,
            invalid_reason: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qa(id: &str) -> QaRow {
        QaRow {
            id: id.into(),
            question: format!("{id}?"),
            answers: vec![id.to_uppercase()],
            split: "train".into(),
            source: "corpus".into(),
            source_doc_id: None,
        }
    }

    fn task(id: &str, round: u32, valid: bool) -> TaskRow {
        TaskRow {
            task_id: id.into(),
            round,
            question: format!("Question {id}?"),
            answer: "A".into(),
            answer_aliases: vec![],
            template: "width".into(),
            parent_task_id: None,
            topic: Some(format!("topic {id}")),
            generator_trajectory_id: None,
            valid,
            invalid_reason: None,
        }
    }

    fn policy_reward(task: &str, reward: f32) -> RewardRow {
        RewardRow {
            trajectory_id: format!("{task}-a"),
            task_id: task.into(),
            role: Role::Policy.as_str().into(),
            group_id: task.into(),
            scheme: "grm".into(),
            reward,
            format_bonus: 0.0,
            total: reward,
            advantage: 0.0,
            label: None,
            train: true,
        }
    }

    /// Parents are the tasks the previous round attempted: those its self-check passed, each
    /// evolved by its solve rate; without a self-check of that round, generate's valid tasks.
    #[test]
    fn parents_are_the_tasks_valid_after_the_previous_rounds_self_check() {
        let generated = vec![
            task("t0", 1, true),
            task("t1", 1, true),
            task("t2", 1, false),
        ];
        // The self-check rejected t1.
        let checked = vec![
            task("t0", 1, true),
            task("t1", 1, false),
            task("t2", 1, false),
        ];
        let rewards = [policy_reward("t0", 1.0)];
        let parents = |checked: Vec<TaskRow>| -> Vec<(String, Direction)> {
            evolved_parents(generated.clone(), checked, &rewards, 7, 8, 0.5)
                .into_iter()
                .map(|s| {
                    let (t, d) = s.parent.unwrap();
                    (t.task_id, d)
                })
                .collect()
        };
        assert_eq!(
            parents(checked.clone()),
            [("t0".to_string(), Direction::Harder)]
        );
        // No self-check: generate's validity, and t1 (never attempted) made easier.
        let mut without = parents(vec![]);
        without.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            without,
            [
                ("t0".to_string(), Direction::Harder),
                ("t1".to_string(), Direction::Easier)
            ]
        );
        // A self-check of another round does not stand in for this one's.
        let stale: Vec<TaskRow> = checked
            .into_iter()
            .map(|t| TaskRow { round: 0, ..t })
            .collect();
        assert_eq!(parents(stale).len(), 2);
    }

    /// Half of eight tasks ask for a fact, one family after the other; the rest keep the seeded
    /// order, and no share picks exactly the first `n` (cycling when the rows run out).
    #[test]
    fn labelled_tasks_draw_their_fact_share_from_every_family_in_turn() {
        let rows: Vec<QaRow> = ["wiki-def-1", "wiki-symbol-1", "wiki-def-2", "wiki-symbol-2"]
            .into_iter()
            .chain([
                "wiki-def-3",
                "wiki-wrote-1",
                "wiki-def-4",
                "wiki-def-5",
                "wiki-def-6",
            ])
            .map(qa)
            .collect();
        let refs: Vec<&QaRow> = rows.iter().collect();
        let ids = |picked: Vec<&QaRow>| picked.iter().map(|q| q.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(pick_labelled(&refs, 8, 0.5)),
            [
                "wiki-symbol-1",
                "wiki-wrote-1",
                "wiki-symbol-2",
                "wiki-symbol-1",
                "wiki-def-1",
                "wiki-def-2",
                "wiki-def-3",
                "wiki-def-4"
            ]
        );
        assert_eq!(
            ids(pick_labelled(&refs, 11, 0.0))[..],
            ids(refs.iter().copied().cycle().take(11).collect())[..]
        );
    }
}
