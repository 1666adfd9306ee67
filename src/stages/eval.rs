//! Stage `eval`: the round's checkpoint on held-out labelled QA (EM, F1 and SubEM after SQuAD
//! normalisation, with the policy's format figures: parse rate, search rate, turns, truncation),
//! the GRM on the task it is trained on, and the generator's format on corpus topics. Greedy by
//! default, so a checkpoint's score does not depend on the seed.
//!
//! GRM accuracy: in training, `judge` shows the GRM a policy attempt, the question and (with
//! `judge.show_reference`, the default) the reference answer. Eval does the same with the
//! policy's own held-out predictions: the first `grm_questions` parsable predictions are judged
//! against the gold answer, shown or not as `judge` showed it, and the label is the `rule` label
//! (SubEM of the prediction against the gold answers). `grm_reference = "judge"` (the default)
//! reads `show_reference` from this round's `judge` in the manifest (`judge` is then an upstream,
//! so its outputs are part of eval's identity); `shown` / `hidden` set it outside a run or
//! without a judge (no judge: shown, the judge's default). The old check, dev questions with
//! their gold answer and another question's answer and no reference (`verification` pairs,
//! the GRM's real-data items), is reported as `verification_*` metrics when `verification > 0`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::agent::{
    Agent, AgentSettings, CHECKPOINT_UPSTREAM, Request, Role, checkpoint_dir, sampling_specs,
    search_upstream,
};
use super::kit::dev_trains_grm;
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Status};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::metrics::{exact_match, f1, normalize_answer, sub_exact_match};
use crate::roles::grm::Verdict;
use crate::roles::{generator, grm, policy};
use crate::seed::stable_u64;
use crate::shards::rows::{CorpusRow, EvalItemRow, EvalRow, QaRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub(crate) struct EvalStage;

impl Stage for EvalStage {
    /// 2: guided decoding completes a closing tag the budget cuts.
    /// 3: near misses leave out misspellings that leave an alias whole (SubEM calls them right).
    /// 4: `searches` counts results read; a call the last turn leaves unanswered is not one;
    ///    a call close sharing its token with the next character (`</search><`) still calls;
    ///    a search result that would overflow the context ends the sequence unappended;
    ///    a GRM item on the checkpoint's predictions is keyed by the answer it judges as well;
    ///    a verification pair's wrong answer is one the rule calls wrong (normalised);
    ///    SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US").
    /// 5: verification pairs and near misses come from the half of dev that `judge.real_items`
    ///    never trains on (`dev_trains_grm`).
    /// 6: a decoding step's attention (one query row) rounds as the few-row kernels do, not `gemm`.
    fn version(&self) -> u32 {
        6
    }

    fn name(&self) -> &'static str {
        "eval"
    }

    fn about(&self) -> &'static str {
        "score the round's checkpoint: held-out QA, GRM accuracy, each role's format"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new(
                "split",
                "test",
                "QA split the policy is scored on; a comma list (`test,fanoutqa`) scores each as its own dataset, the GRM on the first",
            ),
            ParamSpec::new(
                "questions",
                50,
                "held-out questions per split (0: all of the split)",
            ),
            ParamSpec::new(
                "samples",
                1,
                "answers per question: EM etc. are their mean (mean@n), pass@n is reported above 1 (needs temperature > 0)",
            ).at_least(1.0),
            ParamSpec::new(
                "every",
                1,
                "score every Nth round and always the last round of `asl run` (1: every round)",
            ).at_least(1.0).runner_only(),
            ParamSpec::new(
                "grm_questions",
                20,
                "held-out predictions the GRM judges against the gold answer (GRM accuracy)",
            ),
            ParamSpec::new(
                "grm_reference",
                "judge",
                "show the gold answer when the GRM judges: `judge` (as this round's judge does), `shown` or `hidden`",
            ).one_of(&["judge", "shown", "hidden"]),
            ParamSpec::new(
                "verification",
                0,
                "dev questions (of the half `judge.real_items` never trains on) judged with their gold and a wrong answer, no reference (verification_* metrics)",
            ),
            ParamSpec::new(
                "near_misses",
                0,
                "dev questions (of the half `judge.real_items` never trains on) judged with their gold and a misspelt gold, the reference shown as for grm_questions (near_miss_* metrics)",
            ),
            ParamSpec::new(
                "generator_prompts",
                8,
                "topic prompts for the generator's format figures",
            ),
        ];
        specs.extend(sampling_specs(256, 4, 0.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("qa")];
        up.extend(search_upstream(params));
        if params.u64("generator_prompts") > 0 && !up.contains(&Upstream::needs("corpus")) {
            up.push(Upstream::needs("corpus"));
        }
        up.extend(CHECKPOINT_UPSTREAM);
        up.push(Upstream::optional("apply"));
        if params.u64("grm_questions") > 0 && params.str("grm_reference") == "judge" {
            up.push(Upstream::optional("judge"));
        }
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn check(&self, params: &Params) -> Result<()> {
        super::agent::check_agent_params(params, "eval")?;
        EvalSettings::from_params(params).map(|_| ())
    }

    fn qa_splits_read(&self, params: &Params) -> Vec<(String, String)> {
        let Ok(settings) = EvalSettings::from_params(params) else {
            return Vec::new();
        };
        let mut read: Vec<(String, String)> = settings
            .splits
            .into_iter()
            .map(|s| ("eval.split".to_string(), s))
            .collect();
        if settings.verification > 0 {
            read.push(("eval.verification".into(), "dev".into()));
        }
        if settings.near_misses > 0 {
            read.push(("eval.near_misses".into(), "dev".into()));
        }
        read
    }

    fn runs_in_round(&self, params: &Params, round: u32, last: u32) -> bool {
        // The pipeline checked the settings when it loaded (`every` ≥ 1).
        let every = EvalSettings::from_params(params).map_or(1, |s| s.every);
        round == last || u64::from(round).is_multiple_of(every)
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        super::agent::check_agent_params(ctx.params, "eval")?;
        let settings = EvalSettings::from_params(ctx.params)?;
        let ckpt = checkpoint_dir(ctx, "eval")?;
        let agent = Agent::load(ctx, "eval")?;
        let qa: Vec<QaRow> = read_rows(ctx.input_files(Upstream::needs("qa"))?)?;
        let topics: Vec<String> = if settings.generator_prompts > 0 {
            let mut corpus: Vec<CorpusRow> =
                read_rows(ctx.input_files(Upstream::needs("corpus"))?)?;
            corpus.sort_by_key(|r| stable_u64(&["eval-topics", &r.doc_id]));
            corpus
                .into_iter()
                .take(settings.generator_prompts)
                .map(|r| r.title)
                .collect()
        } else {
            Vec::new()
        };
        let checkpoint = crate::manifest::record_path(ctx.run_dir, &ckpt);
        let show_reference =
            grm_show_reference(settings.grm_reference, Some((ctx.run_dir, ctx.round)))?;
        let evaluation = evaluate(&agent, &settings, &qa, &topics, ctx.seed, show_reference)?
            .stamped(ctx.round, &checkpoint);
        Ok(StageOutput {
            files: evaluation.write(&ctx.out_dir, ctx.shard.index)?,
            summary: summary(&evaluation.metrics),
        })
    }
}

/// Which reference the GRM sees when eval measures it (`eval.grm_reference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrmReference {
    Shown,
    Hidden,
    /// As the round's `judge` was run (`show_reference`).
    Judge,
}

/// The eval stage's own settings, typed and checked when the pipeline loads (the sampling
/// settings are [`AgentSettings`]).
#[derive(Debug, Clone)]
pub(crate) struct EvalSettings {
    /// The `qa` splits scored, each its own dataset (empty: every question, one dataset).
    pub splits: Vec<String>,
    /// Questions per split (0: all).
    pub questions: usize,
    pub samples: u32,
    pub every: u64,
    pub grm_questions: usize,
    pub grm_reference: GrmReference,
    pub verification: usize,
    pub near_misses: usize,
    pub generator_prompts: usize,
}

impl EvalSettings {
    pub(crate) fn from_params(params: &Params) -> Result<EvalSettings> {
        let samples = at_least_one(params, "samples")?;
        let every = at_least_one(params, "every")?;
        if samples > 1 && params.f64("temperature") <= 0.0 {
            return Err(Error::param(
                "eval.samples",
                format!("{samples} samples need eval.temperature > 0 (greedy gives one answer)"),
            ));
        }
        let grm_reference = match params.str("grm_reference") {
            "shown" => GrmReference::Shown,
            "hidden" => GrmReference::Hidden,
            "judge" => GrmReference::Judge,
            other => {
                return Err(Error::param(
                    "eval.grm_reference",
                    format!("unknown value {other:?} (judge, shown, hidden)"),
                ));
            }
        };
        Ok(EvalSettings {
            splits: params
                .str("split")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            questions: params.u64("questions") as usize,
            samples: samples as u32,
            every,
            grm_questions: params.u64("grm_questions") as usize,
            grm_reference,
            verification: params.u64("verification") as usize,
            near_misses: params.u64("near_misses") as usize,
            generator_prompts: params.u64("generator_prompts") as usize,
        })
    }
}

/// An integer param of eval that must be 1 or more.
fn at_least_one(params: &Params, key: &str) -> Result<u64> {
    let v = params.get(key);
    v.and_then(|v| v.as_u64())
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| {
            Error::param(
                format!("eval.{key}"),
                format!(
                    "expected an integer in 1..=100000, got {}",
                    v.map_or("nothing".to_string(), |v| v.to_string())
                ),
            )
        })
}

/// The one-line summary of eval rows: the headline metrics.
pub fn summary(rows: &[EvalRow]) -> String {
    let get = |role: &str, metric: &str| {
        rows.iter()
            .find(|r| r.role == role && r.metric == metric)
            .map(|r| format!("{:.3}", r.value))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "EM {} F1 {} SubEM {}; policy parse {} search {}; GRM accuracy {} parse {}; generator parse {}",
        get("policy", "em"),
        get("policy", "f1"),
        get("policy", "subem"),
        get("policy", "parse_rate"),
        get("policy", "search_rate"),
        get("grm", "accuracy"),
        get("grm", "parse_rate"),
        get("generator", "parse_rate"),
    )
}

/// Whether the GRM sees the gold answer when eval measures it (`grm_reference`): `judge` reads
/// `show_reference` from the newest done `judge` of `run`'s round (true when there is none, the
/// judge's default).
pub(crate) fn grm_show_reference(
    reference: GrmReference,
    run: Option<(&Path, u32)>,
) -> Result<bool> {
    match reference {
        GrmReference::Shown => Ok(true),
        GrmReference::Hidden => Ok(false),
        GrmReference::Judge => {
            let Some((run_dir, round)) = run else {
                return Ok(true);
            };
            let manifest = Manifest::load(run_dir)?;
            Ok(manifest
                .entries
                .iter()
                .rev()
                .find(|e| e.stage == "judge" && e.round == round && e.status == Status::Done)
                .and_then(|e| e.params.get("show_reference"))
                .and_then(|v| v.as_bool())
                .unwrap_or(true))
        }
    }
}

/// What an eval measured: one row per metric and one per scored item.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub metrics: Vec<EvalRow>,
    pub items: Vec<EvalItemRow>,
}

impl Evaluation {
    /// Stamps every row with the round and checkpoint it measured.
    fn stamped(mut self, round: u32, checkpoint: &str) -> Evaluation {
        for r in &mut self.metrics {
            r.round = round;
            r.checkpoint = checkpoint.to_string();
        }
        for r in &mut self.items {
            r.round = round;
            r.checkpoint = checkpoint.to_string();
        }
        self
    }

    /// Writes the metric and item shards of part `index` into `dir`.
    pub fn write(&self, dir: &Path, index: u32) -> Result<Vec<PathBuf>> {
        let metrics = shard_path(dir, ShardKind::Eval, index);
        write_rows(&metrics, &self.metrics)?;
        let items = shard_path(dir, ShardKind::EvalItems, index);
        write_rows(&items, &self.items)?;
        Ok(vec![metrics, items])
    }
}

/// The first `n` questions of `split` (every split when empty; all of them when `n` is 0) that
/// have an answer and that `keep` accepts, in eval's fixed order.
fn pick_questions<'a>(
    qa: &'a [QaRow],
    split: &str,
    n: usize,
    keep: fn(&QaRow) -> bool,
) -> Vec<&'a QaRow> {
    let mut v: Vec<&QaRow> = qa
        .iter()
        .filter(|q| (split.is_empty() || q.split == split) && !q.answers.is_empty() && keep(q))
        .collect();
    v.sort_by_key(|q| stable_u64(&["eval", &q.id]));
    if n > 0 {
        v.truncate(n);
    }
    v
}

/// The dev questions the GRM is scored on: the half `judge.real_items` never trains on.
fn scored_dev(qa: &[QaRow], n: usize) -> Vec<&QaRow> {
    pick_questions(qa, "dev", n, |q| !dev_trains_grm(q))
}

/// Scores `agent` on the `split` questions of `qa` (`samples` per question), the GRM on its
/// held-out predictions (the gold answer shown when `show_reference`) and on dev verification
/// pairs, and the generator on `topics`. Rows have round 0 and an empty checkpoint; callers
/// stamp them.
pub(crate) fn evaluate(
    agent: &Agent,
    settings: &EvalSettings,
    qa: &[QaRow],
    topics: &[String],
    seed: u64,
    show_reference: bool,
) -> Result<Evaluation> {
    // Asked-for GRM items that cannot be made are an error, not metrics silently missing; found
    // before any sampling.
    let scored_dev_count = scored_dev(qa, 0).len();
    for (key, asked, needs) in [
        ("verification", settings.verification, 2),
        ("near_misses", settings.near_misses, 1),
    ] {
        if asked > 0 && scored_dev_count < needs {
            return Err(Error::stage(
                "eval",
                format!(
                    "eval.{key} = {asked} needs {needs} labelled dev question(s) in the half \
                     `judge.real_items` never trains on; the run's qa has {scored_dev_count}"
                ),
            ));
        }
    }
    if settings.near_misses > 0
        && near_miss_items(&scored_dev(qa, settings.near_misses), seed, show_reference).is_empty()
    {
        return Err(Error::stage(
            "eval",
            format!(
                "eval.near_misses = {}: none of those dev questions has an answer word of five \
                 letters or more to misspell",
                settings.near_misses
            ),
        ));
    }
    let mut rows = Vec::new();
    let mut items: Vec<EvalItemRow> = Vec::new();

    // Each named split is its own dataset; one agent call serves them all (one queue).
    let mut splits: Vec<&str> = settings.splits.iter().map(String::as_str).collect();
    if splits.is_empty() {
        splits.push(""); // every split
    }
    let mut held_out: Vec<(&str, &QaRow)> = Vec::new();
    for split in &splits {
        let questions = pick_questions(qa, split, settings.questions, |_| true);
        if questions.is_empty() {
            return Err(Error::stage(
                "eval",
                format!("no labelled questions in split {split:?}"),
            ));
        }
        held_out.extend(questions.into_iter().map(|q| (*split, q)));
    }
    let samples = settings.samples;
    let requests: Vec<Request> = held_out
        .iter()
        .flat_map(|(_, q)| {
            (0..samples).map(|s| Request {
                messages: if agent.has_search() {
                    policy::prompt(&q.question, agent.tool_format())
                } else {
                    policy::prompt_without_tools(&q.question)
                },
                seed: seq_seed(seed, stable_u64(&[&q.id]), u64::from(s)),
            })
        })
        .collect();
    let outs = agent.run(&requests, "eval policy", Role::Policy)?;
    let first_split = splits[0];
    let mut predictions: Vec<(&QaRow, String)> = Vec::new();
    for (i, c) in outs.iter().enumerate() {
        let (split, q) = held_out[i / samples as usize];
        let sample = (i % samples as usize) as u32;
        let p = policy::parse(&c.out.text);
        let (em, f, sub) = match &p.answer {
            Some(a) => (
                exact_match(a, &q.answers),
                f1(a, &q.answers),
                sub_exact_match(a, &q.answers),
            ),
            None => (0.0, 0.0, 0.0),
        };
        if let (Some(a), 0, true) = (&p.answer, sample, split == first_split) {
            predictions.push((q, a.clone()));
        }
        items.push(EvalItemRow {
            round: 0,
            checkpoint: String::new(),
            dataset: format!("qa:{split}"),
            role: Role::Policy.as_str().into(),
            item_id: q.id.clone(),
            sample,
            seed: requests[i].seed,
            question: q.question.clone(),
            references: q.answers.clone(),
            candidate: None,
            prediction: p.answer.clone(),
            label: None,
            parsed: p.answer.is_some(),
            correct: em > 0.0,
            em,
            f1: f,
            subem: sub,
            searches: c.searches(),
            turns: c.out.turns as u32,
            truncated: c.truncated(),
        });
    }
    for split in &splits {
        let dataset = format!("qa:{split}");
        let of_split: Vec<EvalItemRow> = items
            .iter()
            .filter(|r| r.dataset == dataset)
            .cloned()
            .collect();
        rows.extend(policy_metrics(&of_split, &dataset, samples));
    }
    let split = first_split;

    predictions.truncate(settings.grm_questions);
    if !predictions.is_empty() {
        let judged = prediction_items(&predictions, seed, show_reference);
        let dataset = format!(
            "qa:{split} predictions, {}",
            if show_reference {
                "reference shown"
            } else {
                "no reference"
            }
        );
        let judged = judge_items(agent, &judged, "eval grm", &dataset)?;
        let score = score(&judged);
        let n = judged.len();
        for (metric, value) in [
            ("accuracy", score.accuracy),
            ("balanced_accuracy", score.balanced_accuracy),
            ("parse_rate", score.parse_rate),
            ("correct_verdict_rate", score.correct_verdict_rate),
            ("label_correct_rate", score.label_correct_rate),
        ] {
            rows.push(metric_row(&dataset, "grm", metric, value, n));
        }
        items.extend(judged);
    }

    let verification = scored_dev(qa, settings.verification + 1);
    if settings.verification > 0 {
        let pairs = verification_items(&verification, seed);
        let dataset = "qa:dev verification";
        let judged = judge_items(agent, &pairs, "eval verification", dataset)?;
        let score = score(&judged);
        let n = judged.len();
        for (metric, value) in [
            ("verification_accuracy", score.accuracy),
            ("verification_parse_rate", score.parse_rate),
            (
                "verification_correct_verdict_rate",
                score.correct_verdict_rate,
            ),
        ] {
            rows.push(metric_row(dataset, "grm", metric, value, n));
        }
        items.extend(judged);
    }

    if settings.near_misses > 0 {
        let (metrics, judged) = judge_near_misses(
            agent,
            &scored_dev(qa, settings.near_misses),
            seed,
            show_reference,
        )?;
        rows.extend(metrics);
        items.extend(judged);
    }

    if !topics.is_empty() {
        let requests: Vec<Request> = topics
            .iter()
            .map(|t| Request {
                messages: generator::seed_prompt(t, agent.tool_format()),
                seed: seq_seed(seed, stable_u64(&["eval-topic", t]), 0),
            })
            .collect();
        let outs = agent.run(&requests, "eval generator", Role::Generator)?;
        let (mut parsed, mut valid, mut searched) = (0, 0, 0);
        for c in &outs {
            let g = generator::parse(&c.out.text);
            if g.error.is_none() {
                parsed += 1;
                let q = g.question.unwrap_or_default();
                let a = g.answer.unwrap_or_default();
                let ok = crate::rl::rewards::format_validity(&q, Some(&a)).is_none();
                valid += usize::from(ok);
            }
            searched += usize::from(c.searches() > 0);
        }
        let n = outs.len();
        let nf = n as f64;
        rows.push(metric_row(
            "corpus topics",
            "generator",
            "parse_rate",
            parsed as f64 / nf,
            n,
        ));
        rows.push(metric_row(
            "corpus topics",
            "generator",
            "valid_rate",
            valid as f64 / nf,
            n,
        ));
        rows.push(metric_row(
            "corpus topics",
            "generator",
            "search_rate",
            searched as f64 / nf,
            n,
        ));
    }
    Ok(Evaluation {
        metrics: rows,
        items,
    })
}

/// The GRM on near misses: each of `questions` with a long enough answer is judged twice, with
/// its gold answer (label right) and with the gold misspelt by one letter (label wrong,
/// [`grm::misspelt`]), the reference shown as `judge` shows it. The misspelling depends on the
/// question only, so every checkpoint is shown the same ones. Metrics: accuracy and balanced
/// accuracy over both, and `near_miss_pass_rate`, the share of misspellings judged correct. No
/// question with a misspellable answer: no rows (a pass rate of nothing is not 0).
fn judge_near_misses(
    agent: &Agent,
    questions: &[&QaRow],
    seed: u64,
    show_reference: bool,
) -> Result<(Vec<EvalRow>, Vec<EvalItemRow>)> {
    let pairs = near_miss_items(questions, seed, show_reference);
    if pairs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let dataset = format!(
        "qa:dev near misses, {}",
        if show_reference {
            "reference shown"
        } else {
            "no reference"
        }
    );
    let judged = judge_items(agent, &pairs, "eval near misses", &dataset)?;
    let all = score(&judged);
    // The misspellings' share of `correct` verdicts is their pass rate.
    let misspelt: Vec<EvalItemRow> = judged
        .iter()
        .filter(|r| r.label == Some(false))
        .cloned()
        .collect();
    let passed = score(&misspelt).correct_verdict_rate;
    let row = |metric: &str, value: f64, count: usize| {
        metric_row(&dataset, Role::Grm.as_str(), metric, value, count)
    };
    let n = judged.len();
    let metrics = vec![
        row("near_miss_accuracy", all.accuracy, n),
        row("near_miss_balanced_accuracy", all.balanced_accuracy, n),
        row("near_miss_parse_rate", all.parse_rate, n),
        row("near_miss_pass_rate", passed, misspelt.len()),
    ];
    Ok((metrics, judged))
}

/// The GRM's items on this checkpoint's own answers, labelled by SubEM. The candidate is the
/// checkpoint's, so the id carries it: two evals pair only the items where the judge saw the
/// same answer (`asl eval compare`), not a right answer in one round and a wrong one in another.
fn prediction_items<'a>(
    predictions: &[(&'a QaRow, String)],
    seed: u64,
    show_reference: bool,
) -> Vec<GrmItem<'a>> {
    predictions
        .iter()
        .map(|&(q, ref a)| GrmItem {
            question: q,
            item_id: format!("{}:{}", q.id, normalize_answer(a)),
            candidate: a.clone(),
            reference: show_reference.then(|| q.answers[0].clone()),
            label: sub_exact_match(a, &q.answers) > 0.0,
            seed: seq_seed(seed, stable_u64(&[&q.id, "grm"]), 0),
        })
        .collect()
}

/// Verification pairs without a reference: each question's gold answer, and the next
/// question's answer as a wrong one unless the rule calls it right ("Beatles" for "The
/// Beatles"), as the verification labels in training do.
fn verification_items<'a>(questions: &[&'a QaRow], seed: u64) -> Vec<GrmItem<'a>> {
    let mut pairs = Vec::new();
    for pair in questions.windows(2) {
        let (q, other) = (pair[0], pair[1]);
        pairs.push(GrmItem {
            question: q,
            item_id: format!("{}:true", q.id),
            candidate: q.answers[0].clone(),
            reference: None,
            label: true,
            seed: seq_seed(seed, stable_u64(&[&q.id, "true"]), 0),
        });
        if exact_match(&other.answers[0], &q.answers) == 0.0 {
            pairs.push(GrmItem {
                question: q,
                item_id: format!("{}:false", q.id),
                candidate: other.answers[0].clone(),
                reference: None,
                label: false,
                seed: seq_seed(seed, stable_u64(&[&q.id, "false"]), 0),
            });
        }
    }
    pairs
}

/// The items of [`judge_near_misses`]: per question its gold and its misspelt gold. A question is
/// left out when its answer has no word to misspell, or when the misspelling still matches one
/// of its answers by the rule's SubEM (an alias left whole, as "Leonardo" in "Leonardo da
/// Vinci"): labelled wrong, it would count a judge that agrees with the rule as mistaken.
fn near_miss_items<'a>(
    questions: &[&'a QaRow],
    seed: u64,
    show_reference: bool,
) -> Vec<GrmItem<'a>> {
    let mut pairs = Vec::new();
    for q in questions {
        let gold = &q.answers[0];
        let Some(near) = grm::misspelt(gold, stable_u64(&["misspelt", &q.id]))
            .filter(|m| sub_exact_match(m, &q.answers) == 0.0)
        else {
            continue;
        };
        for (kind, candidate, label) in [("gold", gold.clone(), true), ("misspelt", near, false)] {
            pairs.push(GrmItem {
                question: q,
                item_id: format!("{}:{kind}", q.id),
                candidate,
                reference: show_reference.then(|| gold.clone()),
                label,
                seed: seq_seed(seed, stable_u64(&[&q.id, "near-miss", kind]), 0),
            });
        }
    }
    pairs
}

/// A metric row of `role` on `dataset`, with round 0 and an empty checkpoint (callers stamp them).
fn metric_row(dataset: &str, role: &str, metric: &str, value: f64, count: usize) -> EvalRow {
    EvalRow {
        round: 0,
        checkpoint: String::new(),
        dataset: dataset.to_string(),
        role: role.to_string(),
        metric: metric.to_string(),
        value,
        count: count as u64,
    }
}

/// One answer for the GRM to judge, with its known label.
struct GrmItem<'a> {
    question: &'a QaRow,
    item_id: String,
    candidate: String,
    reference: Option<String>,
    label: bool,
    seed: u64,
}

/// The policy's metrics over its item rows: means over every sample (mean@n with `samples`
/// above 1), and pass@n (a question counts when any sample is an exact match).
fn policy_metrics(items: &[EvalItemRow], dataset: &str, samples: u32) -> Vec<EvalRow> {
    let n = items.len();
    let nf = n.max(1) as f64;
    let mean = |f: &dyn Fn(&EvalItemRow) -> f64| items.iter().map(f).sum::<f64>() / nf;
    let row = |metric: &str, value: f64, count: usize| {
        metric_row(dataset, Role::Policy.as_str(), metric, value, count)
    };
    let mut rows = vec![
        row("em", mean(&|r| r.em), n),
        row("f1", mean(&|r| r.f1), n),
        row("subem", mean(&|r| r.subem), n),
        row("parse_rate", mean(&|r| f64::from(u8::from(r.parsed))), n),
        row(
            "search_rate",
            mean(&|r| f64::from(u8::from(r.searches > 0))),
            n,
        ),
        row("mean_turns", mean(&|r| f64::from(r.turns)), n),
        row(
            "truncation_rate",
            mean(&|r| f64::from(u8::from(r.truncated))),
            n,
        ),
    ];
    if samples > 1 {
        let mut solved: BTreeMap<&str, bool> = BTreeMap::new();
        for r in items {
            *solved.entry(r.item_id.as_str()).or_default() |= r.correct;
        }
        let questions = solved.len();
        let pass = solved.values().filter(|s| **s).count() as f64 / questions.max(1) as f64;
        rows.push(row(&format!("pass@{samples}"), pass, questions));
    }
    rows
}

/// The GRM's verdicts on `items`, as item rows of `dataset`.
fn judge_items(
    agent: &Agent,
    items: &[GrmItem],
    what: &str,
    dataset: &str,
) -> Result<Vec<EvalItemRow>> {
    let requests: Vec<Request> = items
        .iter()
        .map(|it| Request {
            messages: grm::prompt(
                &it.question.question,
                &it.candidate,
                it.reference.as_deref(),
                agent.tool_format(),
            ),
            seed: it.seed,
        })
        .collect();
    let outs = agent.run(&requests, what, Role::Grm)?;
    Ok(items
        .iter()
        .zip(&outs)
        .map(|(it, c)| {
            let v = grm::parse(&c.out.text);
            let correct = v.parsed && (v.verdict == grm::Verdict::Correct) == it.label;
            let score = f64::from(u8::from(correct));
            EvalItemRow {
                round: 0,
                checkpoint: String::new(),
                dataset: dataset.to_string(),
                role: Role::Grm.as_str().into(),
                item_id: it.item_id.clone(),
                sample: 0,
                seed: it.seed,
                question: it.question.question.clone(),
                references: it.question.answers.clone(),
                candidate: Some(it.candidate.clone()),
                prediction: v.parsed.then(|| v.verdict.name().to_string()),
                label: Some(it.label),
                parsed: v.parsed,
                correct,
                em: score,
                f1: score,
                subem: score,
                searches: c.searches(),
                turns: c.out.turns as u32,
                truncated: c.truncated(),
            }
        })
        .collect())
}

/// How the GRM did on labelled items.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GrmScore {
    /// Share of items whose parsed verdict equals the label (unparsable: wrong).
    accuracy: f64,
    /// Mean over the labels present of the share of that label's items judged right, so a
    /// judge that says `wrong` to everything scores ½, not the share of wrong answers.
    balanced_accuracy: f64,
    parse_rate: f64,
    correct_verdict_rate: f64,
    label_correct_rate: f64,
}

/// Scores GRM item rows (`correct`: verdict parsed and equal to the label).
fn score(items: &[EvalItemRow]) -> GrmScore {
    let n = items.len().max(1) as f64;
    let label = |r: &EvalItemRow| r.label == Some(true);
    let recalls: Vec<f64> = [true, false]
        .iter()
        .filter_map(|&class| {
            let of_class: Vec<_> = items.iter().filter(|r| label(r) == class).collect();
            (!of_class.is_empty()).then(|| {
                of_class.iter().filter(|r| r.correct).count() as f64 / of_class.len() as f64
            })
        })
        .collect();
    GrmScore {
        accuracy: items.iter().filter(|r| r.correct).count() as f64 / n,
        balanced_accuracy: recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
        parse_rate: items.iter().filter(|r| r.parsed).count() as f64 / n,
        correct_verdict_rate: items
            .iter()
            .filter(|r| r.prediction.as_deref().is_some_and(Verdict::says_correct))
            .count() as f64
            / n,
        label_correct_rate: items.iter().filter(|r| label(r)).count() as f64 / n,
    }
}

/// `asl eval --model DIR --qa FILE`: any checkpoint on any labelled QA file, outside a run.
/// Without a run there is no search index, so the policy answers without the tool unless a
/// run dir with one is given.
pub fn evaluate_file(
    model_dir: &Path,
    qa_file: &Path,
    run: Option<(&Path, u32)>,
    params: &Params,
) -> Result<Evaluation> {
    let qa = super::sources::read_qa_file(qa_file)?;
    let mut eval_settings = EvalSettings::from_params(params)?;
    // A user's file is scored whole, whatever splits it names.
    eval_settings.splits.clear();
    let mut settings = AgentSettings::from_params(params, "eval")?;
    if run.is_none() {
        settings.search = None;
    }
    let agent = Agent::open(model_dir, run, &settings, "eval")?;
    let show_reference = grm_show_reference(eval_settings.grm_reference, run)?;
    let mut evaluation = evaluate(&agent, &eval_settings, &qa, &[], 0, show_reference)?
        .stamped(0, &model_dir.to_string_lossy());
    for r in &mut evaluation.metrics {
        if r.role == Role::Policy.as_str() {
            r.dataset = qa_file.display().to_string();
        }
    }
    for r in &mut evaluation.items {
        if r.role == Role::Policy.as_str() {
            r.dataset = qa_file.display().to_string();
        }
    }
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GRM item row with a verdict (`None`: unparsable) and a label.
    fn judged(verdict: Option<bool>, label: bool) -> EvalItemRow {
        let parsed = verdict.is_some();
        let correct = verdict == Some(label);
        EvalItemRow {
            round: 0,
            checkpoint: String::new(),
            dataset: "d".into(),
            role: "grm".into(),
            item_id: "q".into(),
            sample: 0,
            seed: 0,
            question: "q?".into(),
            references: vec!["a".into()],
            candidate: Some("a".into()),
            prediction: verdict.map(|v| if v { "correct" } else { "wrong" }.to_string()),
            label: Some(label),
            parsed,
            correct,
            em: f64::from(u8::from(correct)),
            f1: f64::from(u8::from(correct)),
            subem: f64::from(u8::from(correct)),
            searches: 0,
            turns: 1,
            truncated: false,
        }
    }

    /// A dev question with these gold answers.
    fn row(id: &str, answers: &[&str]) -> QaRow {
        QaRow {
            id: id.into(),
            question: format!("Question {id}?"),
            answers: answers.iter().map(|a| a.to_string()).collect(),
            split: "dev".into(),
            source: "wiki".into(),
            source_doc_id: None,
        }
    }

    /// A GRM item on a prediction is keyed by the answer too, so two checkpoints' items pair
    /// only where the judge saw the same answer; a verification pair's wrong answer is one the
    /// rule calls wrong.
    #[test]
    fn grm_items_pair_only_the_same_answer_and_wrong_answers_are_wrong() {
        let q = row("q1", &["Paris"]);
        let ids = |answer: &str| {
            prediction_items(&[(&q, answer.to_string())], 7, true)
                .into_iter()
                .map(|i| i.item_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("Paris"), ids("the paris."));
        assert_ne!(ids("Paris"), ids("Lyon"));
        let rows = [
            row("q1", &["The Beatles"]),
            row("q2", &["Beatles"]),
            row("q3", &["Oasis"]),
        ];
        let refs: Vec<&QaRow> = rows.iter().collect();
        let items = verification_items(&refs, 7);
        let got: Vec<(&str, &str, bool)> = items
            .iter()
            .map(|i| (i.item_id.as_str(), i.candidate.as_str(), i.label))
            .collect();
        assert_eq!(
            got,
            [
                ("q1:true", "The Beatles", true),
                ("q2:true", "Beatles", true),
                ("q2:false", "Oasis", false),
            ]
        );
    }

    /// The GRM is scored on one half of dev (`verification`, `near_misses`) and `judge` trains
    /// on the other, so injected real data never meets the items it is scored on.
    #[test]
    fn the_grm_is_scored_on_the_dev_half_it_never_trains_on() {
        let qa: Vec<QaRow> = (0..400)
            .map(|i| QaRow {
                id: format!("q{i}"),
                question: format!("Question {i}?"),
                answers: vec![format!("answer {i}")],
                split: if i % 4 == 0 { "test" } else { "dev" }.into(),
                source: "wiki".into(),
                source_doc_id: Some(format!("article {}", i / 3)),
            })
            .collect();
        let scored = scored_dev(&qa, 0);
        let dev = qa.iter().filter(|q| q.split == "dev").count();
        assert!(
            (dev * 2 / 5..dev * 3 / 5).contains(&scored.len()),
            "{}",
            scored.len()
        );
        assert!(
            scored
                .iter()
                .all(|q| q.split == "dev" && !dev_trains_grm(q))
        );
        assert_eq!(scored_dev(&qa, 10), scored[..10]);
    }

    /// Near misses: a gold and its misspelling per question, except where no word can be
    /// misspelt or the misspelling leaves an alias whole (the rule would call it right).
    #[test]
    fn near_misses_leave_out_misspellings_the_rule_calls_right() {
        let rows = [
            row("q1", &["Umberto Eco"]),
            row("q2", &["University of Cambridge", "Cambridge"]),
            row("q3", &["Au"]),
        ];
        let refs: Vec<&QaRow> = rows.iter().collect();
        let items = near_miss_items(&refs, 7, true);
        let ids: Vec<&str> = items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["q1:gold", "q1:misspelt"]);
        assert_eq!(items[0].candidate, "Umberto Eco");
        assert!(items[0].label && !items[1].label);
        assert_ne!(items[1].candidate, "Umberto Eco");
        assert_eq!(sub_exact_match(&items[1].candidate, &rows[0].answers), 0.0);
        assert!(
            items
                .iter()
                .all(|i| i.reference.as_deref() == Some("Umberto Eco"))
        );
        // The alias case really is one the old exact-match filter kept.
        let near = grm::misspelt(&rows[1].answers[0], stable_u64(&["misspelt", "q2"])).unwrap();
        assert_eq!(exact_match(&near, &rows[1].answers), 0.0);
        assert_eq!(sub_exact_match(&near, &rows[1].answers), 1.0);
        assert!(near_miss_items(&refs[2..], 7, false).is_empty());
    }

    /// Two items labelled correct (one judged right), four labelled wrong (all judged right,
    /// one of them unparsable and so not right): accuracy 4/6, balanced (½ + ¾) / 2.
    #[test]
    fn grm_score_counts_unparsable_as_wrong_and_balances_the_labels() {
        let items = [
            judged(Some(true), true),
            judged(Some(false), true),
            judged(Some(false), false),
            judged(Some(false), false),
            judged(Some(false), false),
            judged(None, false),
        ];
        let s = score(&items);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12, "{s:?}");
        assert!(
            (s.balanced_accuracy - (0.5 + 0.75) / 2.0).abs() < 1e-12,
            "{s:?}"
        );
        assert!((s.parse_rate - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.correct_verdict_rate - 1.0 / 6.0).abs() < 1e-12);
        assert!((s.label_correct_rate - 2.0 / 6.0).abs() < 1e-12);
        // A judge that says wrong to everything: high accuracy on mostly-wrong answers, ½
        // balanced.
        let mut items: Vec<_> = (0..3).map(|_| judged(Some(false), false)).collect();
        items.push(judged(Some(false), true));
        let s = score(&items);
        assert_eq!((s.accuracy, s.balanced_accuracy), (0.75, 0.5));
    }

    /// Policy metrics are means over every sample; pass@n counts a question once when any of
    /// its samples is right.
    #[test]
    fn policy_metrics_average_samples_and_count_pass_at_n() {
        let item = |id: &str, em: f64| EvalItemRow {
            role: "policy".into(),
            item_id: id.into(),
            label: None,
            candidate: None,
            correct: em > 0.0,
            em,
            f1: em,
            subem: em,
            ..judged(Some(true), true)
        };
        let items = [
            item("a", 1.0),
            item("a", 0.0),
            item("b", 0.0),
            item("b", 0.0),
            item("c", 1.0),
            item("c", 1.0),
        ];
        let rows = policy_metrics(&items, "qa:test", 2);
        let get = |m: &str| rows.iter().find(|r| r.metric == m).unwrap();
        assert_eq!((get("em").value, get("em").count), (0.5, 6));
        assert_eq!((get("pass@2").value, get("pass@2").count), (2.0 / 3.0, 3));
        assert!(
            policy_metrics(&items, "qa:test", 1)
                .iter()
                .all(|r| !r.metric.starts_with("pass@"))
        );
    }

    #[test]
    fn every_skips_rounds_but_never_the_last() {
        let specs = EvalStage.params();
        let mut p = crate::params::resolve("eval", &specs, None, &[]).unwrap();
        p.insert("every".into(), 3.into());
        let runs: Vec<u32> = (1..=7)
            .filter(|&r| EvalStage.runs_in_round(&p, r, 7))
            .collect();
        assert_eq!(runs, vec![3, 6, 7]);
        p.insert("every".into(), 0.into());
        let e = EvalStage.check(&p).unwrap_err().to_string();
        assert!(e.contains("eval.every") && !e.contains('\n'), "{e}");
        p.insert("every".into(), 1.into());
        p.insert("samples".into(), 4.into());
        let e = EvalStage.check(&p).unwrap_err().to_string();
        assert!(
            e.contains("eval.samples") && e.contains("temperature"),
            "{e}"
        );
        p.insert("temperature".into(), 1.0.into());
        EvalStage.check(&p).unwrap();
    }

    #[test]
    fn grm_reference_follows_the_rounds_judge() {
        let specs = EvalStage.params();
        let params = |v: &str| {
            let mut p = crate::params::resolve("eval", &specs, None, &[]).unwrap();
            p.insert("grm_reference".into(), v.into());
            p
        };
        let reference = |v: &str| EvalSettings::from_params(&params(v)).map(|s| s.grm_reference);
        let dir = tempfile::tempdir().unwrap();
        let run = Some((dir.path(), 1));
        assert!(grm_show_reference(reference("shown").unwrap(), run).unwrap());
        assert!(!grm_show_reference(reference("hidden").unwrap(), run).unwrap());
        // No judge in the run: the judge's default (shown).
        assert!(grm_show_reference(reference("judge").unwrap(), run).unwrap());
        assert!(grm_show_reference(reference("judge").unwrap(), None).unwrap());
        let e = reference("maybe").unwrap_err().to_string();
        assert!(e.contains("eval.grm_reference") && !e.contains('\n'), "{e}");
        // A judge that hid the reference in round 1 (and not in round 2).
        let entry = |round: u32, show: bool| crate::manifest::Entry {
            stage: "judge".into(),
            round,
            step: 0,
            steps: 0,
            shard: crate::manifest::ShardSpec::WHOLE,
            status: Status::Done,
            params: [("show_reference".to_string(), serde_json::Value::Bool(show))]
                .into_iter()
                .collect(),
            seed: 0,
            inputs: vec![],
            outputs: vec![],
            asl_version: String::new(),
            stage_version: 1,
            started_at: String::new(),
            finished_at: None,
            wall_s: None,
            error: None,
            slurm_job: None,
        };
        Manifest::update(dir.path(), |m| {
            m.entries.push(entry(1, false));
            m.entries.push(entry(2, true));
        })
        .unwrap();
        assert!(!grm_show_reference(reference("judge").unwrap(), Some((dir.path(), 1))).unwrap());
        assert!(grm_show_reference(reference("judge").unwrap(), Some((dir.path(), 2))).unwrap());
        // With `judge`, the round's judge is an upstream (its outputs are in eval's identity).
        assert!(
            EvalStage
                .upstream(&params("judge"))
                .contains(&Upstream::optional("judge"))
        );
        assert!(
            !EvalStage
                .upstream(&params("shown"))
                .contains(&Upstream::optional("judge"))
        );
    }
}
