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

use std::path::{Path, PathBuf};

use super::agent::{
    Agent, CHECKPOINT_UPSTREAM, Request, Role, checkpoint_dir, sampling_specs, search_upstream,
};
use super::generate::contains_answer;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Status};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::metrics::{exact_match, f1, sub_exact_match};
use crate::roles::{generator, grm, policy};
use crate::seed::stable_u64;
use crate::shards::rows::{CorpusRow, EvalRow, QaRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub struct EvalStage;

impl Stage for EvalStage {
    fn name(&self) -> &'static str {
        "eval"
    }

    fn about(&self) -> &'static str {
        "score the round's checkpoint: held-out QA, GRM accuracy, each role's format"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new("split", "test", "QA split the policy is scored on"),
            ParamSpec::new("questions", 50, "held-out questions (0: all of the split)"),
            ParamSpec::new(
                "grm_questions",
                20,
                "held-out predictions the GRM judges against the gold answer (GRM accuracy)",
            ),
            ParamSpec::new(
                "grm_reference",
                "judge",
                "show the gold answer when the GRM judges: `judge` (as this round's judge does), `shown` or `hidden`",
            ),
            ParamSpec::new(
                "verification",
                0,
                "dev questions judged with their gold and a wrong answer, no reference (verification_* metrics)",
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

    fn upstream(&self, params: &Params) -> Vec<&'static str> {
        let mut up = vec!["qa"];
        up.extend(search_upstream(params));
        if params.u64("generator_prompts") > 0 && !up.contains(&"corpus") {
            up.push("corpus");
        }
        up.extend(CHECKPOINT_UPSTREAM);
        up.push("apply?");
        if params.u64("grm_questions") > 0 && params.str("grm_reference") == "judge" {
            up.push("judge?");
        }
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let ckpt = checkpoint_dir(ctx, "eval")?;
        let agent = Agent::load(ctx, "eval")?;
        let qa: Vec<QaRow> = read_rows(ctx.input_files("qa"))?;
        let topics: Vec<String> = if ctx.params.u64("generator_prompts") > 0 {
            let mut corpus: Vec<CorpusRow> = read_rows(ctx.input_files("corpus"))?;
            corpus.sort_by_key(|r| stable_u64(&["eval-topics", &r.doc_id]));
            corpus
                .into_iter()
                .take(ctx.params.u64("generator_prompts") as usize)
                .map(|r| r.title)
                .collect()
        } else {
            Vec::new()
        };
        let checkpoint = crate::manifest::record_path(ctx.run_dir, &ckpt);
        let show_reference = grm_show_reference(ctx.params, Some((ctx.run_dir, ctx.round)))?;
        let rows = evaluate(&agent, ctx.params, &qa, &topics, ctx.seed, show_reference)?
            .into_iter()
            .map(|mut r| {
                r.round = ctx.round;
                r.checkpoint = checkpoint.clone();
                r
            })
            .collect::<Vec<_>>();
        let out = shard_path(&ctx.out_dir, ShardKind::Eval, ctx.shard.index);
        write_rows(&out, &rows)?;
        Ok(StageOutput {
            files: vec![out],
            summary: summary(&rows),
        })
    }
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
pub fn grm_show_reference(params: &Params, run: Option<(&Path, u32)>) -> Result<bool> {
    match params.str("grm_reference") {
        "shown" => Ok(true),
        "hidden" => Ok(false),
        "judge" => {
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
        other => Err(Error::param(
            "eval.grm_reference",
            format!("unknown value {other:?} (judge, shown, hidden)"),
        )),
    }
}

/// Scores `agent` on the `split` questions of `qa`, the GRM on its held-out predictions (the gold
/// answer shown when `show_reference`) and on dev verification pairs, and the generator on
/// `topics`. Rows have round 0 and an empty checkpoint; callers fill them in.
pub fn evaluate(
    agent: &Agent,
    params: &Params,
    qa: &[QaRow],
    topics: &[String],
    seed: u64,
    show_reference: bool,
) -> Result<Vec<EvalRow>> {
    let split = params.str("split");
    let mut rows = Vec::new();
    let row = |dataset: &str, role: &str, metric: &str, value: f64, count: usize| EvalRow {
        round: 0,
        checkpoint: String::new(),
        dataset: dataset.to_string(),
        role: role.to_string(),
        metric: metric.to_string(),
        value,
        count: count as u64,
    };
    let pick = |split: &str, n: usize| -> Vec<&QaRow> {
        let mut v: Vec<&QaRow> = qa
            .iter()
            .filter(|q| (split.is_empty() || q.split == split) && !q.answers.is_empty())
            .collect();
        v.sort_by_key(|q| stable_u64(&["eval", &q.id]));
        if n > 0 {
            v.truncate(n);
        }
        v
    };

    let held_out = pick(split, params.u64("questions") as usize);
    if held_out.is_empty() {
        return Err(Error::stage(
            "eval",
            format!("no labelled questions in split {split:?}"),
        ));
    }
    let requests: Vec<Request> = held_out
        .iter()
        .map(|q| Request {
            messages: if agent.has_search() {
                policy::prompt(&q.question)
            } else {
                policy::prompt_without_tools(&q.question)
            },
            seed: seq_seed(seed, stable_u64(&[&q.id]), 0),
        })
        .collect();
    let outs = agent.run(&requests, "eval policy", Role::Policy)?;
    let n = outs.len();
    let (mut em, mut f, mut sub, mut parsed, mut searched, mut turns, mut truncated) =
        (0.0, 0.0, 0.0, 0, 0, 0, 0);
    let mut predictions: Vec<(&QaRow, String)> = Vec::new();
    for (q, c) in held_out.iter().zip(&outs) {
        let p = policy::parse(&c.out.text);
        if let Some(a) = &p.answer {
            em += exact_match(a, &q.answers);
            f += f1(a, &q.answers);
            sub += sub_exact_match(a, &q.answers);
            parsed += 1;
            predictions.push((*q, a.clone()));
        }
        searched += usize::from(c.searches > 0);
        turns += c.out.turns;
        truncated += usize::from(c.truncated());
    }
    let dataset = format!("qa:{split}");
    let nf = n as f64;
    rows.push(row(&dataset, "policy", "em", em / nf, n));
    rows.push(row(&dataset, "policy", "f1", f / nf, n));
    rows.push(row(&dataset, "policy", "subem", sub / nf, n));
    rows.push(row(&dataset, "policy", "parse_rate", parsed as f64 / nf, n));
    rows.push(row(
        &dataset,
        "policy",
        "search_rate",
        searched as f64 / nf,
        n,
    ));
    rows.push(row(&dataset, "policy", "mean_turns", turns as f64 / nf, n));
    rows.push(row(
        &dataset,
        "policy",
        "truncation_rate",
        truncated as f64 / nf,
        n,
    ));

    predictions.truncate(params.u64("grm_questions") as usize);
    if !predictions.is_empty() {
        let items: Vec<GrmItem> = predictions
            .iter()
            .map(|(q, a)| GrmItem {
                question: &q.question,
                candidate: a.clone(),
                reference: show_reference.then(|| q.answers[0].clone()),
                label: sub_exact_match(a, &q.answers) > 0.0,
                seed: seq_seed(seed, stable_u64(&[&q.id, "grm"]), 0),
            })
            .collect();
        let dataset = format!(
            "qa:{split} predictions, {}",
            if show_reference {
                "reference shown"
            } else {
                "no reference"
            }
        );
        let score = judge_items(agent, &items, "eval grm")?;
        let n = items.len();
        for (metric, value) in [
            ("accuracy", score.accuracy),
            ("balanced_accuracy", score.balanced_accuracy),
            ("parse_rate", score.parse_rate),
            ("correct_verdict_rate", score.correct_verdict_rate),
            ("label_correct_rate", score.label_correct_rate),
        ] {
            rows.push(row(&dataset, "grm", metric, value, n));
        }
    }

    let verification = pick("dev", params.u64("verification") as usize + 1);
    if params.u64("verification") > 0 && verification.len() >= 2 {
        let mut items = Vec::new();
        for pair in verification.windows(2) {
            let (q, other) = (pair[0], pair[1]);
            items.push(GrmItem {
                question: &q.question,
                candidate: q.answers[0].clone(),
                reference: None,
                label: true,
                seed: seq_seed(seed, stable_u64(&[&q.id, "true"]), 0),
            });
            if !q
                .answers
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&other.answers[0]))
            {
                items.push(GrmItem {
                    question: &q.question,
                    candidate: other.answers[0].clone(),
                    reference: None,
                    label: false,
                    seed: seq_seed(seed, stable_u64(&[&q.id, "false"]), 0),
                });
            }
        }
        let score = judge_items(agent, &items, "eval verification")?;
        let n = items.len();
        for (metric, value) in [
            ("verification_accuracy", score.accuracy),
            ("verification_parse_rate", score.parse_rate),
            (
                "verification_correct_verdict_rate",
                score.correct_verdict_rate,
            ),
        ] {
            rows.push(row("qa:dev verification", "grm", metric, value, n));
        }
    }

    if !topics.is_empty() {
        let requests: Vec<Request> = topics
            .iter()
            .map(|t| Request {
                messages: generator::seed_prompt(t),
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
                let ok = crate::rl::rewards::format_validity(&q, Some(&a)).is_none()
                    && !contains_answer(&q, &a);
                valid += usize::from(ok);
            }
            searched += usize::from(c.searches > 0);
        }
        let n = outs.len();
        let nf = n as f64;
        rows.push(row(
            "corpus topics",
            "generator",
            "parse_rate",
            parsed as f64 / nf,
            n,
        ));
        rows.push(row(
            "corpus topics",
            "generator",
            "valid_rate",
            valid as f64 / nf,
            n,
        ));
        rows.push(row(
            "corpus topics",
            "generator",
            "search_rate",
            searched as f64 / nf,
            n,
        ));
    }
    Ok(rows)
}

/// One answer for the GRM to judge, with its known label.
struct GrmItem<'a> {
    question: &'a str,
    candidate: String,
    reference: Option<String>,
    label: bool,
    seed: u64,
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

fn judge_items(agent: &Agent, items: &[GrmItem], what: &str) -> Result<GrmScore> {
    let requests: Vec<Request> = items
        .iter()
        .map(|it| Request {
            messages: grm::prompt(it.question, &it.candidate, it.reference.as_deref()),
            seed: it.seed,
        })
        .collect();
    let outs = agent.run(&requests, what, Role::Grm)?;
    let verdicts: Vec<(bool, bool)> = outs
        .iter()
        .map(|c| {
            let v = grm::parse(&c.out.text);
            (v.parsed, v.verdict == grm::Verdict::Correct)
        })
        .collect();
    let labels: Vec<bool> = items.iter().map(|it| it.label).collect();
    Ok(score(&verdicts, &labels))
}

/// Scores `(parsed, said correct)` verdicts against `labels`.
fn score(verdicts: &[(bool, bool)], labels: &[bool]) -> GrmScore {
    let n = verdicts.len().max(1) as f64;
    let right = |&((parsed, yes), label): &((bool, bool), bool)| parsed && yes == label;
    let pairs: Vec<((bool, bool), bool)> = verdicts
        .iter()
        .copied()
        .zip(labels.iter().copied())
        .collect();
    let recalls: Vec<f64> = [true, false]
        .iter()
        .filter_map(|&class| {
            let of_class: Vec<_> = pairs.iter().filter(|(_, l)| *l == class).collect();
            (!of_class.is_empty()).then(|| {
                of_class.iter().filter(|p| right(p)).count() as f64 / of_class.len() as f64
            })
        })
        .collect();
    GrmScore {
        accuracy: pairs.iter().filter(|p| right(p)).count() as f64 / n,
        balanced_accuracy: recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
        parse_rate: verdicts.iter().filter(|(p, _)| *p).count() as f64 / n,
        correct_verdict_rate: verdicts.iter().filter(|(_, y)| *y).count() as f64 / n,
        label_correct_rate: labels.iter().filter(|l| **l).count() as f64 / n,
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
) -> Result<Vec<EvalRow>> {
    let qa = super::qa::read_qa_file(qa_file)?;
    let mut params = params.clone();
    if run.is_none() {
        params.insert("search_mode".into(), "none".into());
    }
    // A user's file is scored whole, whatever splits it names.
    params.insert("split".into(), "".into());
    let agent = Agent::open(model_dir, run, &params, "eval")?;
    let show_reference = grm_show_reference(&params, run)?;
    let rows = evaluate(&agent, &params, &qa, &[], 0, show_reference)?;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            r.checkpoint = model_dir.to_string_lossy().into_owned();
            r.dataset = if r.role == "policy" {
                qa_file.display().to_string()
            } else {
                r.dataset
            };
            r
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two items labelled correct (one judged right), four labelled wrong (all judged right,
    /// one of them unparsable and so not right): accuracy 4/6, balanced (½ + ¾) / 2.
    #[test]
    fn grm_score_counts_unparsable_as_wrong_and_balances_the_labels() {
        let verdicts = [
            (true, true),
            (true, false),
            (true, false),
            (true, false),
            (true, false),
            (false, false),
        ];
        let labels = [true, true, false, false, false, false];
        let s = score(&verdicts, &labels);
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
        let s = score(&[(true, false); 4], &[false, false, false, true]);
        assert_eq!((s.accuracy, s.balanced_accuracy), (0.75, 0.5));
    }

    #[test]
    fn grm_reference_follows_the_rounds_judge() {
        let specs = EvalStage.params();
        let params = |v: &str| {
            let mut p = crate::params::resolve("eval", &specs, None, &[]).unwrap();
            p.insert("grm_reference".into(), v.into());
            p
        };
        let dir = tempfile::tempdir().unwrap();
        let run = Some((dir.path(), 1));
        assert!(grm_show_reference(&params("shown"), run).unwrap());
        assert!(!grm_show_reference(&params("hidden"), run).unwrap());
        // No judge in the run: the judge's default (shown).
        assert!(grm_show_reference(&params("judge"), run).unwrap());
        assert!(grm_show_reference(&params("judge"), None).unwrap());
        let e = grm_show_reference(&params("maybe"), run)
            .unwrap_err()
            .to_string();
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
            started_at: String::new(),
            finished_at: None,
            wall_s: None,
            error: None,
        };
        Manifest::update(dir.path(), |m| {
            m.entries.push(entry(1, false));
            m.entries.push(entry(2, true));
        })
        .unwrap();
        assert!(!grm_show_reference(&params("judge"), Some((dir.path(), 1))).unwrap());
        assert!(grm_show_reference(&params("judge"), Some((dir.path(), 2))).unwrap());
        // With `judge`, the round's judge is an upstream (its outputs are in eval's identity).
        assert!(EvalStage.upstream(&params("judge")).contains(&"judge?"));
        assert!(!EvalStage.upstream(&params("shown")).contains(&"judge?"));
    }
}
