//! Stage `eval`: the round's checkpoint on held-out labelled QA (EM, F1 and SubEM after SQuAD
//! normalisation, with the policy's format figures: parse rate, search rate, turns, truncation),
//! the GRM on a verification split (gold answer → correct, another question's answer → wrong),
//! and the generator's format on corpus topics. Greedy by default, so a checkpoint's score does
//! not depend on the seed.

use std::path::{Path, PathBuf};

use super::agent::{
    Agent, CHECKPOINT_UPSTREAM, Request, Role, checkpoint_dir, sampling_specs, search_upstream,
};
use super::generate::contains_answer;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
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
                "verification",
                20,
                "dev questions for GRM accuracy (each judged with a gold and a wrong answer)",
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
        let rows = evaluate(&agent, ctx.params, &qa, &topics, ctx.seed)?
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

/// Scores `agent` on the `split` questions of `qa`, the GRM on dev verification pairs and the
/// generator on `topics`. Rows have round 0 and an empty checkpoint; callers fill them in.
pub fn evaluate(
    agent: &Agent,
    params: &Params,
    qa: &[QaRow],
    topics: &[String],
    seed: u64,
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
    for (q, c) in held_out.iter().zip(&outs) {
        let p = policy::parse(&c.out.text);
        if let Some(a) = &p.answer {
            em += exact_match(a, &q.answers);
            f += f1(a, &q.answers);
            sub += sub_exact_match(a, &q.answers);
            parsed += 1;
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

    let verification = pick("dev", params.u64("verification") as usize + 1);
    if verification.len() >= 2 {
        let mut items = Vec::new();
        for pair in verification.windows(2) {
            let (q, other) = (pair[0], pair[1]);
            items.push((q, q.answers[0].clone(), true));
            if !q
                .answers
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&other.answers[0]))
            {
                items.push((q, other.answers[0].clone(), false));
            }
        }
        let requests: Vec<Request> = items
            .iter()
            .map(|(q, candidate, gold)| Request {
                messages: grm::prompt(&q.question, candidate, None),
                seed: seq_seed(seed, stable_u64(&[&q.id, &gold.to_string()]), 0),
            })
            .collect();
        let outs = agent.run(&requests, "eval grm", Role::Grm)?;
        let (mut correct, mut parsed, mut said_correct) = (0, 0, 0);
        for ((_, _, gold), c) in items.iter().zip(&outs) {
            let v = grm::parse(&c.out.text);
            parsed += usize::from(v.parsed);
            let yes = v.verdict == grm::Verdict::Correct;
            said_correct += usize::from(yes);
            correct += usize::from(v.parsed && yes == *gold);
        }
        let n = items.len();
        let nf = n as f64;
        rows.push(row(
            "qa:dev verification",
            "grm",
            "accuracy",
            correct as f64 / nf,
            n,
        ));
        rows.push(row(
            "qa:dev verification",
            "grm",
            "parse_rate",
            parsed as f64 / nf,
            n,
        ));
        rows.push(row(
            "qa:dev verification",
            "grm",
            "correct_verdict_rate",
            said_correct as f64 / nf,
            n,
        ));
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
                let ok = crate::rl::rewards::validity(&q, Some(&a), 0, 0).is_none()
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
    let rows = evaluate(&agent, &params, &qa, &[], 0)?;
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
