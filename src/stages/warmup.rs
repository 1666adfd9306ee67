//! Stage `warmup` *(ours; a deviation from the seed, see docs/format.md)*: a supervised cold
//! start on format demonstrations asl makes itself from the corpus, with no human labels, so a
//! small model writes the tags RL needs. Policy: a corpus-built training question, a think step,
//! a real search through the run's search tool with its real `<information>`, and the answer
//! taken from the article (kept only when the retrieved passages contain it). Generator: an
//! article's title as the topic, a search for it, and the corpus-built question and answer in
//! the generator's format. GRM: a question, the reference, and a candidate (the gold answer or
//! another question's) with the verdict the rule match gives. Loss only on the model's own
//! tokens. The demonstrations are written as a `trajectories` shard; the checkpoint round 1
//! starts from is `RUN_DIR/round-000/warmup/model`.

use std::path::PathBuf;

use super::agent::{
    Agent, AgentSettings, Role, device_spec, placement, sampling_specs, search_upstream,
};
use super::kit::training_sequence;
use super::qa::{fact_quota, facts_in_turn, family_of};
use super::train::{precision, precision_spec, use_precision};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::scoring::{LossPositions, build_batch, selected_logprobs};
use crate::model::train::{TrainConfig, Trainer};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::metrics::{normalize_answer, sub_exact_match};
use crate::rl::rewards::contains_answer;
use crate::roles::tool::ToolFormat;
use crate::roles::{Message, generator, grm, policy};
use crate::search::SearchEnv;
use crate::search::render::render_information;
use crate::seed::stable_u64;
use crate::shards::rows::{QaRow, TrajectoryRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub(crate) struct WarmupStage;

/// One demonstration: the prompt, then completion pieces that are the model's own text (in the
/// loss) or tool text (masked).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Demo {
    pub id: String,
    pub role: Role,
    pub messages: Vec<Message>,
    pub pieces: Vec<(String, bool)>,
}

impl Demo {
    pub fn text(&self) -> String {
        self.pieces.iter().map(|(t, _)| t.as_str()).collect()
    }
}

/// Which candidates the GRM's demonstrations judge (`warmup.grm_demos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrmDemos {
    /// The gold answer or another question's answer, in turn.
    Answers,
    /// Six kinds in turn, three right and three wrong, shaped like a warmed-up policy's answers:
    /// the gold answer, another question's, a sentence holding the gold answer, the question's
    /// own subject (a restatement), the gold answer in a short phrase, and a sentence holding
    /// another question's answer.
    Mixed,
    /// The six kinds of `Mixed`, with the wrong answers taken from a question of the same
    /// family (a director for a director, a title for a title), and a thought that restates the
    /// reference before the verdict, so the verdict sits right after the two strings it compares.
    Contrast,
}

impl std::str::FromStr for GrmDemos {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "answers" => Ok(Self::Answers),
            "mixed" => Ok(Self::Mixed),
            "contrast" => Ok(Self::Contrast),
            _ => Err(format!(
                "unknown GRM demonstrations {s:?} (answers, mixed, contrast)"
            )),
        }
    }
}

/// The `i`-th GRM demonstration's candidate for question `q` (`other`: the next question).
fn grm_candidate(kind: GrmDemos, i: usize, q: &QaRow, other: &QaRow) -> String {
    let (gold, wrong) = (&q.answers[0], &other.answers[0]);
    let kinds = match kind {
        GrmDemos::Answers => 2,
        GrmDemos::Mixed | GrmDemos::Contrast => 6,
    };
    match i % kinds {
        0 => gold.clone(),
        1 => wrong.clone(),
        2 => format!("The documents say it is {gold}."),
        3 => topic_title(q),
        4 => format!("It is {gold}."),
        _ => format!("The documents say it is {wrong}."),
    }
}

/// How many demonstrations of each role to build, what the GRM's candidates are, and the share
/// of the policy's and the generator's demonstrations that ask for a fact in an article's text
/// rather than for its subject (`qa::asks_for_a_fact`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DemoMix {
    pub policy: usize,
    pub generator: usize,
    pub grm: usize,
    pub grm_demos: GrmDemos,
    pub fact_share: f64,
    /// The share of the GRM's demonstrations shown no reference, judged by searching
    /// (`warmup.grm_unreferenced`, [`unreferenced_grm_demo`]).
    pub grm_unreferenced: f64,
    /// The share of the GRM's questions that get a contrast beside their own demonstration,
    /// shown the reference: the reference itself judged right and misspelt by one letter
    /// ([`grm::misspelt`]) judged wrong (`warmup.grm_near_misses`).
    pub grm_near_misses: f64,
}

impl DemoMix {
    /// `policy`, `generator` and `grm` demonstrations, `answers` GRM candidates, no fact quota.
    #[cfg(test)]
    fn counts(policy: usize, generator: usize, grm: usize) -> DemoMix {
        DemoMix {
            policy,
            generator,
            grm,
            grm_demos: GrmDemos::Answers,
            fact_share: 0.0,
            grm_unreferenced: 0.0,
            grm_near_misses: 0.0,
        }
    }
}

/// Tries the rows of `candidates` not yet `used`, in order, marking each tried, until `make`
/// has made `n` demonstrations (a row it refuses, `None`, counts in the returned total). The
/// GRM's pool is taken the same way, its "demonstrations" being the rows themselves.
fn take_demos<'a, T>(
    candidates: &[&'a QaRow],
    n: usize,
    used: &mut std::collections::HashSet<&'a str>,
    demos: &mut Vec<T>,
    mut make: impl FnMut(&'a QaRow) -> Option<T>,
) -> usize {
    let (mut made, mut refused) = (0, 0);
    for q in candidates {
        if made == n {
            break;
        }
        if !used.insert(q.id.as_str()) {
            continue;
        }
        match make(q) {
            Some(d) => {
                demos.push(d);
                made += 1;
            }
            None => refused += 1,
        }
    }
    refused
}

/// One role's `n` demonstrations: `fact_quota(n, fact_share)` of them tried from `facts` first,
/// the rest from `rows`, through `take_demos` (the refused rows' count returned).
fn take_role_demos<'a>(
    facts: &[&'a QaRow],
    rows: &[&'a QaRow],
    n: usize,
    fact_share: f64,
    used: &mut std::collections::HashSet<&'a str>,
    demos: &mut Vec<Demo>,
    mut make: impl FnMut(&'a QaRow) -> Option<Demo>,
) -> usize {
    let before = demos.len();
    let refused = take_demos(facts, fact_quota(n, fact_share), used, demos, &mut make);
    let made = demos.len() - before;
    refused + take_demos(rows, n - made, used, demos, make)
}

/// Builds the demonstrations from labelled corpus QA (train split) and the search tool.
/// `search(query)` returns the rendered result body and `wrap(body)` the text the model reads
/// after its call; calls are written in `tools`' format and `end_of_turn` closes each answer
/// (the model's chat format: `<|im_end|>` in ChatML). `title(q)` is the title of the article a
/// question was built from, the topic of its generator demonstration as `generate` gives its
/// topics; without one the question's subject stands in. Policy and generator demonstrations are
/// kept only when the search results they show hold the answer (the count of the others is
/// returned); a generator demonstration also needs a question that does not contain its answer.
/// Training questions are taken in a seeded order; `mix.fact_share` of the policy's and the
/// generator's come first from the questions that ask for a fact, the rest from any.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_demos(
    qa: &[QaRow],
    mix: DemoMix,
    seed: u64,
    tools: ToolFormat,
    end_of_turn: &str,
    mut search: impl FnMut(&str) -> String,
    wrap: impl Fn(&str) -> String,
    title: impl Fn(&QaRow) -> Option<String>,
) -> (Vec<Demo>, usize) {
    let mut rows: Vec<&QaRow> = qa
        .iter()
        .filter(|q| q.split == "train" && !q.answers.is_empty())
        .collect();
    rows.sort_by_key(|q| stable_u64(&[&seed.to_string(), &q.id]));
    let facts = facts_in_turn(&rows);
    let mut demos = Vec::new();
    let mut used = std::collections::HashSet::new();
    let mut ungrounded = 0;
    let policy_demo = |q: &QaRow| {
        let answer = &q.answers[0];
        let info = search(&q.question);
        if !results_hold(&info, answer) {
            return None;
        }
        Some(Demo {
            id: format!("warmup-policy-{}", q.id),
            role: Role::Policy,
            messages: policy::prompt(&q.question, tools),
            pieces: vec![
                (
                    format!(
                        "<think>I should search for this.</think>\n{}",
                        tools.call(q.question.trim())
                    ),
                    true,
                ),
                (wrap(&info), false),
                (
                    format!(
                        "<think>The documents say it is {answer}.</think>\n<answer>{answer}</answer>{end_of_turn}"
                    ),
                    true,
                ),
            ],
        })
    };
    ungrounded += take_role_demos(
        &facts,
        &rows,
        mix.policy,
        mix.fact_share,
        &mut used,
        &mut demos,
        policy_demo,
    );
    let generator_demo = |q: &QaRow| {
        let answer = &q.answers[0];
        let topic = title(q).unwrap_or_else(|| topic_title(q));
        let info = search(&topic);
        if !results_hold(&info, answer) || contains_answer(&q.question, answer) {
            return None;
        }
        Some(Demo {
            id: format!("warmup-generator-{}", q.id),
            role: Role::Generator,
            messages: generator::seed_prompt(&topic, tools),
            pieces: vec![
                (
                    format!(
                        "<think>I should look up {topic}.</think>\n{}",
                        tools.call(&topic)
                    ),
                    true,
                ),
                (wrap(&info), false),
                (
                    format!(
                        "<think>I can ask about this.</think>\n<question>{}</question>\n<answer>{answer}</answer>{end_of_turn}",
                        q.question.trim(),
                    ),
                    true,
                ),
            ],
        })
    };
    ungrounded += take_role_demos(
        &facts,
        &rows,
        mix.generator,
        mix.fact_share,
        &mut used,
        &mut demos,
        generator_demo,
    );
    // The GRM's pool: its fact quota of the unused fact questions, then the next unused rows in
    // order (one more, the last one's `other`).
    // (The quota is a request, not a size: a pool never holds more than the train rows.)
    let wanted = mix.grm.saturating_add(1);
    let mut pool: Vec<&QaRow> = Vec::with_capacity(wanted.min(rows.len()));
    let quota = fact_quota(mix.grm, mix.fact_share);
    take_demos(&facts, quota, &mut used, &mut pool, Some);
    take_demos(&rows, wanted - pool.len(), &mut used, &mut pool, Some);
    for (i, pair) in pool.windows(2).enumerate() {
        let q = pair[0];
        let other = match mix.grm_demos {
            GrmDemos::Contrast => same_family(q, &pool).unwrap_or(pair[1]),
            _ => pair[1],
        };
        let candidate = &grm_candidate(mix.grm_demos, i, q, other);
        let correct = sub_exact_match(candidate, &q.answers) > 0.0;
        let id = format!("warmup-grm-{}-{i}", q.id);
        let unreferenced = picked(seed, "unreferenced", &q.id, mix.grm_unreferenced)
            .then(|| search(&q.question))
            .filter(|info| results_hold(info, &q.answers[0]));
        demos.push(match &unreferenced {
            Some(info) => unreferenced_grm_demo(
                id.clone(),
                q,
                candidate,
                correct,
                (&wrap(info), tools, end_of_turn),
            ),
            None => referenced_grm_demo(
                id.clone(),
                q,
                candidate,
                correct,
                mix.grm_demos,
                (tools, end_of_turn),
            ),
        });
        // A near miss comes as a contrast beside the question's own demonstration: the
        // reference itself judged right, then misspelt by one letter judged wrong (the exact copy
        // is left out when the question's own demonstration already is it). Every other
        // candidate, the class balance and the unreferenced share stay as they are. Shown the
        // misspelling alone, the judge learnt to refuse exact copies too (docs/rounds.md).
        let near_miss = picked(seed, "near-miss", &q.id, mix.grm_near_misses)
            .then(|| grm::misspelt(&q.answers[0], stable_u64(&["misspelt", &q.id])))
            .flatten()
            .filter(|m| sub_exact_match(m, &q.answers) == 0.0);
        if let Some(near_miss) = near_miss {
            let gold = &q.answers[0];
            let own_is_gold = unreferenced.is_none() && candidate == gold;
            let pair = [(gold, true, "exact"), (&near_miss, false, "near-miss")];
            for (candidate, correct, what) in pair {
                if correct && own_is_gold {
                    continue;
                }
                demos.push(referenced_grm_demo(
                    format!("{id}-{what}"),
                    q,
                    candidate,
                    correct,
                    mix.grm_demos,
                    (tools, end_of_turn),
                ));
            }
        }
    }
    (demos, ungrounded)
}

/// A GRM demonstration shown the reference: the question, `candidate` and the reference in the
/// prompt, then a thought and the verdict `correct` gives. The last argument: the tool format and
/// the text that closes a turn.
fn referenced_grm_demo(
    id: String,
    q: &QaRow,
    candidate: &str,
    correct: bool,
    kind: GrmDemos,
    (tools, end_of_turn): (ToolFormat, &str),
) -> Demo {
    let thought = grm_thought(kind, &q.answers[0], correct);
    Demo {
        id,
        role: Role::Grm,
        messages: grm::prompt(&q.question, candidate, Some(&q.answers[0]), tools),
        pieces: vec![(verdict_turn(&thought, correct, end_of_turn), true)],
    }
}

/// Whether search results (`info`) hold `answer`: a demonstration that reads them is grounded.
fn results_hold(info: &str, answer: &str) -> bool {
    sub_exact_match(
        &normalize_answer(info),
        std::slice::from_ref(&answer.to_string()),
    ) > 0.0
}

/// Whether the question `id` is among the `share` picked by a seeded draw for `what`
/// (independent of its place in the pool, so of the kind of candidate it gets, and of the
/// draws for other `what`s).
fn picked(seed: u64, what: &str, id: &str, share: f64) -> bool {
    let draw = stable_u64(&[&seed.to_string(), what, id]) % 10_000;
    share > 0.0 && (draw as f64) < share * 10_000.0
}

/// A GRM demonstration without a reference, as the self-check judges the generator's answer:
/// the GRM searches the question, its thought says what the documents hold (the policy's words,
/// "The documents say it is …") and whether the candidate names it, then the verdict. Built only
/// for questions whose search results (`information`, wrapped as the model reads it) hold the
/// answer. The last argument: the wrapped results, the tool format and the text that closes a
/// turn.
fn unreferenced_grm_demo(
    id: String,
    q: &QaRow,
    candidate: &str,
    correct: bool,
    (information, tools, end_of_turn): (&str, ToolFormat, &str),
) -> Demo {
    let thought = format!(
        "The documents say it is {}. The candidate {}.",
        q.answers[0],
        names_it(correct)
    );
    Demo {
        id,
        role: Role::Grm,
        messages: grm::prompt(&q.question, candidate, None, tools),
        pieces: vec![
            (
                format!(
                    "<think>I should search for this.</think>\n{}",
                    tools.call(q.question.trim())
                ),
                true,
            ),
            (information.to_string(), false),
            (verdict_turn(&thought, correct, end_of_turn), true),
        ],
    }
}

/// A GRM demonstration's last turn: its thought, the verdict `correct` gives, and the text that
/// closes a turn.
fn verdict_turn(thought: &str, correct: bool, end_of_turn: &str) -> String {
    let verdict = grm::Verdict::from_correct(correct).name();
    format!("<think>{thought}</think>\n<answer>conclusion: {verdict}</answer>{end_of_turn}")
}

/// How a `contrast` or unreferenced thought says whether the candidate is right.
fn names_it(correct: bool) -> &'static str {
    if correct {
        "names it"
    } else {
        "does not name it"
    }
}

/// The thought of a GRM demonstration: whether the candidate matches, and with `Contrast` the
/// reference restated first (as the prompt quotes it).
pub(crate) fn grm_thought(kind: GrmDemos, reference: &str, correct: bool) -> String {
    match kind {
        GrmDemos::Contrast => {
            let reference = crate::roles::quoted(reference);
            format!(
                "The reference is {reference}. The candidate {}.",
                names_it(correct)
            )
        }
        _ if correct => "The candidate matches the reference.".to_string(),
        _ => "The candidate does not match the reference.".to_string(),
    }
}

/// The next question after `q` in `pool` (wrapping) of `q`'s family whose answer `q`'s
/// answers do not match: a wrong answer of the right kind.
fn same_family<'a>(q: &QaRow, pool: &[&'a QaRow]) -> Option<&'a QaRow> {
    let f = family_of(&q.id)?;
    let at = pool.iter().position(|p| p.id == q.id)?;
    pool.iter()
        .cycle()
        .skip(at + 1)
        .take(pool.len() - 1)
        .copied()
        .find(|p| family_of(&p.id) == Some(f) && sub_exact_match(&p.answers[0], &q.answers) == 0.0)
}

/// A topic for the generator's prompt when the question's article is unknown: the question
/// without its first two words ("Who founded", "What is") and its question mark.
fn topic_title(q: &QaRow) -> String {
    let words: Vec<&str> = q
        .question
        .trim_end_matches('?')
        .split_whitespace()
        .skip(2)
        .collect();
    if words.is_empty() {
        q.question.clone()
    } else {
        words.join(" ")
    }
}

/// How many micro-batches' worth of rows are sorted by length together (`length_grouped`).
const LENGTH_WINDOW: usize = 16;

/// An epoch's micro-batches: rows shuffled by (seed, epoch, id), sorted by length inside windows
/// of `LENGTH_WINDOW` micro-batches, chunked, and the chunks shuffled again — TRL's
/// `group_by_length` sampler. A short GRM demonstration then rarely shares a batch with a long
/// policy one and is not padded to its length. Returns indices into `ids`/`lengths`.
fn length_grouped(
    ids: &[&str],
    lengths: &[usize],
    micro: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let micro = micro.max(1);
    let (seed, epoch) = (seed.to_string(), epoch.to_string());
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| stable_u64(&[&seed, &epoch, ids[i]]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for window in order.chunks_mut(micro * LENGTH_WINDOW) {
        window.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(window.chunks(micro).map(<[usize]>::to_vec));
    }
    batches.sort_by_key(|b| stable_u64(&[&seed, &epoch, "batch", ids[b[0]]]));
    batches
}

impl Stage for WarmupStage {
    /// 2: generator demonstrations take the article's title as topic and must be grounded.
    /// 3: micro-batches group rows of similar length.
    /// 4: a role's demonstrations no longer skip the row after its last one; `fact_share`.
    /// 5: a near miss (`grm_near_misses`) is a demonstration added beside its question's own,
    /// not a candidate replacing it.
    /// 6: a near miss comes with the exact reference judged right beside it.
    /// 7: the checkpoint keeps the chat template file and each tensor's Adam update count;
    ///    weight decay skips norm gains and biases; SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US").
    fn version(&self) -> u32 {
        7
    }

    fn name(&self) -> &'static str {
        "warmup"
    }

    fn check(&self, params: &Params) -> Result<()> {
        AgentSettings::tools_only(params, "warmup")?;
        precision(params, "warmup")?;
        let keys = ["policy_examples", "generator_examples", "grm_examples"];
        if keys.iter().all(|k| params.u64(k) == 0) {
            return Err(Error::param(
                "warmup.policy_examples",
                "policy_examples, generator_examples and grm_examples are all 0: nothing to train on",
            ));
        }
        Ok(())
    }

    fn about(&self) -> &'static str {
        "supervised cold start on format demonstrations built from the corpus (no human labels)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            device_spec(),
            ParamSpec::new("policy_examples", 48, "policy demonstrations"),
            ParamSpec::new("generator_examples", 16, "generator demonstrations"),
            ParamSpec::new("grm_examples", 32, "GRM demonstrations"),
            ParamSpec::new(
                "grm_demos",
                "answers",
                "candidates the GRM demonstrations judge: `answers` (the gold or another question's answer) or `mixed` (also sentences holding either, and the question's own subject) or `contrast` (mixed, with wrong answers of the question's own kind and the reference restated before the verdict)",
            )
            .one_of(&["answers", "mixed", "contrast"]),
            ParamSpec::new(
                "fact_share",
                0.0,
                "share of the policy and generator demonstrations drawn first from corpus questions that ask for a fact in an article's text (a director, a year, a capital) rather than for its subject, the families taken in turn",
            )
            .between(0.0, 1.0),
            ParamSpec::new(
                "grm_unreferenced",
                0.0,
                "share of the GRM demonstrations shown no reference, as the self-check judges: the GRM searches the question and says what the documents hold before its verdict (questions whose results do not hold the answer keep their reference)",
            )
            .between(0.0, 1.0),
            ParamSpec::new(
                "grm_near_misses",
                0.0,
                "share of the GRM demonstrations' questions that get a contrast, shown the reference: the reference itself, verdict right, and the reference misspelt by one inner letter (dropped, doubled or swapped), verdict wrong. Exact match refuses such copies, and a judge that passes them pays the policy for them. Added, not substituted, so the other demonstrations stay as they are (answers without a word of five letters or more get none; the exact copy is left out where the question's own demonstration is it)",
            )
            .between(0.0, 1.0),
            ParamSpec::new("epochs", 2, "passes over the demonstrations").at_least(1.0),
            ParamSpec::new("micro_batch", 4, "sequences per optimizer step").at_least(1.0),
            ParamSpec::new("lr", 5e-5, "AdamW learning rate").at_least(0.0),
            ParamSpec::new(
                "train_last_k",
                8,
                "train only the last k decoder blocks and the final norm (0: every weight)",
            ),
            precision_spec(),
        ];
        specs.extend(
            sampling_specs(0, 1, 0.0)
                .into_iter()
                .filter(|s| matches!(s.key, "search_mode" | "search_k" | "tool_format")),
        );
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("qa"), Upstream::needs("init")];
        up.extend(search_upstream(params));
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let err = |e: crate::model::ModelError| Error::stage("warmup", e.to_string());
        let init = ctx
            .input_files(Upstream::needs("init"))?
            .first()
            .cloned()
            .ok_or_else(|| Error::stage("warmup", "needs the `init` checkpoint"))?;
        let qa: Vec<QaRow> = read_rows(ctx.input_files(Upstream::needs("qa"))?)?;
        let settings = AgentSettings::tools_only(ctx.params, "warmup")?;
        let agent = Agent::open(&init, Some((ctx.run_dir, ctx.round)), &settings, "warmup")?;
        let env: Option<&SearchEnv> = agent.search_env();
        let k = settings.search_k;
        let mode = agent.search_mode();
        let mix = DemoMix {
            policy: ctx.params.u64("policy_examples") as usize,
            generator: ctx.params.u64("generator_examples") as usize,
            grm: ctx.params.u64("grm_examples") as usize,
            grm_demos: ctx
                .params
                .str("grm_demos")
                .parse()
                .map_err(|e| Error::param("warmup.grm_demos", e))?,
            fact_share: ctx.params.f64("fact_share"),
            grm_unreferenced: ctx.params.f64("grm_unreferenced"),
            grm_near_misses: ctx.params.f64("grm_near_misses"),
        };
        let (demos, ungrounded) = build_demos(
            &qa,
            mix,
            ctx.seed,
            agent.tool_format(),
            agent.end_of_turn(),
            |query| match env {
                Some(env) => env
                    .search(query, k, mode)
                    .map(|hits| render_information(&hits))
                    .unwrap_or_else(|e| format!("Search failed: {e}")),
                None => "No results.".to_string(),
            },
            |body| agent.tool_result(body),
            |q| {
                let doc = q.source_doc_id.as_deref()?;
                Some(env?.passage(doc)?.title.clone())
            },
        );
        if demos.is_empty() {
            return Err(Error::stage("warmup", "no demonstrations could be built"));
        }
        let tokenizer = agent.tokenizer();
        let mut rows = Vec::with_capacity(demos.len());
        for d in &demos {
            let prompt_ids = agent.encode(&d.messages)?;
            let mut completion = Vec::new();
            let mut mask = Vec::new();
            for (text, own) in &d.pieces {
                let ids = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| Error::stage("warmup", e.to_string()))?;
                completion.extend_from_slice(ids.get_ids());
                mask.extend(std::iter::repeat_n(*own, ids.get_ids().len()));
            }
            rows.push(TrajectoryRow {
                trajectory_id: d.id.clone(),
                task_id: d.id.clone(),
                role: d.role.as_str().into(),
                attempt: 0,
                seed: 0,
                prompt_ids,
                sampling_logprobs: vec![0.0; completion.len()],
                behavior_logprobs: vec![0.0; completion.len()],
                temperature: 1.0,
                completion_ids: completion,
                loss_mask: mask,
                text: d.text(),
                turns: d.pieces.iter().filter(|(_, own)| !own).count() as u32 + 1,
                searches: d.pieces.iter().filter(|(_, own)| !own).count() as u32,
                answer: None,
                parsed: true,
                parse_error: None,
                finish_reason: "demonstration".into(),
            });
        }
        let data_path = shard_path(&ctx.out_dir, ShardKind::Trajectories, ctx.shard.index);
        write_rows(&data_path, &rows)?;

        let last_k = match ctx.params.u64("train_last_k") {
            0 => None,
            k => Some(k as usize),
        };
        let cfg = TrainConfig {
            lr: ctx.params.f64("lr"),
            train_last_k: last_k,
            ..TrainConfig::default()
        };
        let device = placement(ctx.params, "warmup")?.device;
        let mut trainer = Trainer::load(&init, &device, cfg).map_err(err)?;
        let precision = precision(ctx.params, "warmup")?;
        use_precision(&mut trainer, precision, &device, "warmup")?;
        let pad = trainer.model().config().pad_token_id.unwrap_or(0);
        let micro = ctx.params.u64("micro_batch") as usize;
        let epochs = ctx.params.u64("epochs") as usize;
        let bar = crate::progress::bar((epochs * rows.len()) as u64, "warmup");
        let mut first_loss = None;
        let mut last_loss = 0.0;
        let lengths: Vec<usize> = rows
            .iter()
            .map(|r| r.prompt_ids.len() + r.completion_ids.len())
            .collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.trajectory_id.as_str()).collect();
        for epoch in 0..epochs {
            let mut epoch_loss = (0.0, 0usize);
            for indices in length_grouped(&ids, &lengths, micro, ctx.seed, epoch) {
                let chunk: Vec<&TrajectoryRow> = indices.iter().map(|&i| &rows[i]).collect();
                let seqs: Vec<_> = chunk.iter().map(|t| training_sequence(t)).collect();
                let batch = build_batch(&seqs, pad, &device).map_err(err)?;
                let pos = LossPositions::of(&batch).map_err(err)?;
                let weights: Vec<f32> = pos
                    .seq
                    .iter()
                    .map(|&s| 1.0 / (pos.tokens[s].max(1) as f32 * chunk.len() as f32))
                    .collect();
                let weights = candle_core::Tensor::from_vec(weights, pos.seq.len(), &device)
                    .map_err(|e| err(e.into()))?;
                let (logp, _) =
                    selected_logprobs(trainer.model(), &batch, &pos, 1.0).map_err(err)?;
                let loss = (logp * weights)
                    .and_then(|x| x.sum_all())
                    .and_then(|x| x.neg())
                    .map_err(|e| err(e.into()))?;
                let value = loss.to_scalar::<f32>().map_err(|e| err(e.into()))?;
                let mut grads = trainer.backward(&loss).map_err(err)?;
                trainer.step(&mut grads).map_err(err)?;
                epoch_loss.0 += f64::from(value);
                epoch_loss.1 += 1;
                bar.inc(chunk.len() as u64);
            }
            let mean = epoch_loss.0 / epoch_loss.1.max(1) as f64;
            first_loss.get_or_insert(mean);
            last_loss = mean;
        }
        bar.finish_and_clear();
        let dest = ctx.out_dir.join("model");
        trainer.save_checkpoint(&dest).map_err(err)?;
        // RL starts its optimizer afresh: SFT moments at another learning rate would skew it.
        for f in [
            crate::model::train::OPTIMIZER_FILE,
            crate::model::train::TRAINER_STATE_FILE,
        ] {
            let p = dest.join(f);
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        let by_role = |r: &str| rows.iter().filter(|t| t.role == r).count();
        Ok(StageOutput {
            files: vec![data_path, dest],
            summary: format!(
                "{} demonstrations (policy {}, generator {}, grm {}; {ungrounded} questions skipped: answer not in the search results); loss {:.3} -> {last_loss:.3} over {epochs} epochs",
                rows.len(),
                by_role("policy"),
                by_role("generator"),
                by_role("grm"),
                first_loss.unwrap_or_default(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::qa::asks_for_a_fact;

    fn qa(id: &str, q: &str, a: &str) -> QaRow {
        QaRow {
            id: id.into(),
            question: q.into(),
            answers: vec![a.into()],
            split: "train".into(),
            source: "corpus".into(),
            source_doc_id: Some(id.into()),
        }
    }

    /// `warmup.precision` is checked as `train.precision` is, under its own key: the warm-up
    /// trains every weight by default, so `amx_bf16_frozen` has nothing to freeze.
    #[test]
    fn precision_is_checked_under_the_warmups_key() {
        let with = |precision: &str, last_k: u64| {
            let mut p = crate::params::resolve("warmup", &WarmupStage.params(), None, &[]).unwrap();
            p.insert("precision".into(), precision.into());
            p.insert("train_last_k".into(), last_k.into());
            WarmupStage.check(&p)
        };
        with("f32", 0).unwrap();
        let e = with("amx_bf16_frozen", 0).unwrap_err().to_string();
        assert!(
            e.contains("warmup.precision") && e.contains("train_last_k"),
            "{e}"
        );
        match with("amx_bf16", 0) {
            Ok(()) => assert!(crate::model::amx::available()),
            Err(e) => {
                assert!(!crate::model::amx::available());
                let e = e.to_string();
                assert!(e.contains("warmup.precision") && e.contains("AMX"), "{e}");
            }
        }
    }

    #[test]
    fn length_grouped_batches_cover_every_row_once_and_pad_less_than_a_shuffle() {
        let ids: Vec<String> = (0..200).map(|i| format!("d{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A few long policy demonstrations among many short GRM ones, as the contrast warm-up.
        let lengths: Vec<usize> = (0..200)
            .map(|i| if i % 6 == 0 { 700 } else { 120 })
            .collect();
        let batches = length_grouped(&ids, &lengths, 4, 7, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 4));
        let padded = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let shuffled: Vec<Vec<usize>> = (0..200)
            .collect::<Vec<_>>()
            .chunks(4)
            .map(<[usize]>::to_vec)
            .collect();
        assert!(
            padded(&batches) * 10 < padded(&shuffled) * 7,
            "{} vs {}",
            padded(&batches),
            padded(&shuffled)
        );
        // The same seed and epoch give the same batches; another epoch another order.
        assert_eq!(batches, length_grouped(&ids, &lengths, 4, 7, 0));
        assert_ne!(batches, length_grouped(&ids, &lengths, 4, 7, 1));
    }

    #[test]
    fn demonstrations_follow_every_role_format_and_mask_tool_text() {
        let rows: Vec<QaRow> = (0..24)
            .map(|i| {
                qa(
                    &format!("q{i}"),
                    &format!("Who founded city number {i}?"),
                    &format!("Founder {i}"),
                )
            })
            .collect();
        // The search finds the answer for even questions only.
        let (before, after) = crate::roles::tool::TAGS_RESULT;
        let wrap = |body: &str| format!("{before}{body}{after}");
        let (demos, ungrounded) = build_demos(
            &rows,
            DemoMix::counts(3, 2, 2),
            1,
            ToolFormat::Tags,
            "<|im_end|>",
            |query| {
                let n: usize = query
                    .split_whitespace()
                    .find_map(|w| w.trim_end_matches('?').parse().ok())
                    .unwrap_or(1);
                if n.is_multiple_of(2) {
                    format!("Doc 1 (Title: City {n}) It was founded by Founder {n}.")
                } else {
                    "Doc 1 (Title: Elsewhere) Nothing here.".into()
                }
            },
            wrap,
            |q| {
                let n = q.id.trim_start_matches('q');
                Some(format!("City {n}"))
            },
        );
        let by = |r: Role| demos.iter().filter(|d| d.role == r).collect::<Vec<_>>();
        assert_eq!(by(Role::Policy).len(), 3);
        assert!(ungrounded > 0);
        for d in by(Role::Policy) {
            let p = policy::parse(&d.text());
            assert!(p.answer.is_some(), "{:?}: {}", p.error, d.text());
            assert_eq!(p.searches.len(), 1);
            assert!(
                d.pieces
                    .iter()
                    .any(|(t, own)| !own && t.contains("<information>"))
            );
            assert!(
                d.pieces
                    .iter()
                    .all(|(t, own)| *own || !t.contains("<answer>"))
            );
        }
        assert_eq!(by(Role::Generator).len(), 2);
        for d in by(Role::Generator) {
            let g = generator::parse(&d.text());
            assert!(g.error.is_none(), "{:?}", g.error);
            // The topic is the article's title, as `generate` gives it, the search is for it,
            // and the results hold the answer.
            let answer = g.answer.unwrap();
            let n = answer.trim_start_matches("Founder ");
            assert!(
                d.messages[1].content.contains(&format!("City {n}")),
                "{:?}",
                d.messages
            );
            assert!(
                d.text().contains(&format!("<search>City {n}</search>")),
                "{}",
                d.text()
            );
            assert!(
                d.text().contains(&format!("founded by Founder {n}")),
                "{}",
                d.text()
            );
        }
        let verdicts: Vec<grm::Verdict> = by(Role::Grm)
            .iter()
            .map(|d| {
                let v = grm::parse(&d.text());
                assert!(v.parsed);
                v.verdict
            })
            .collect();
        assert_eq!(verdicts, vec![grm::Verdict::Correct, grm::Verdict::Wrong]);
    }

    /// `mixed` GRM demonstrations judge six kinds of candidate in turn, right and wrong
    /// alternating, each labelled by SubEM against the question's answer.
    #[test]
    fn mixed_grm_demonstrations_judge_answers_shaped_like_the_policys() {
        let (q, other) = (
            qa("q1", "Who founded city number 1?", "Founder 1"),
            qa("q2", "Who founded city number 2?", "Founder 2"),
        );
        let candidates: Vec<String> = (0..7)
            .map(|i| grm_candidate(GrmDemos::Mixed, i, &q, &other))
            .collect();
        assert_eq!(
            candidates,
            [
                "Founder 1",
                "Founder 2",
                "The documents say it is Founder 1.",
                "city number 1",
                "It is Founder 1.",
                "The documents say it is Founder 2.",
                "Founder 1",
            ]
        );
        let right: Vec<bool> = candidates
            .iter()
            .map(|c| sub_exact_match(c, &q.answers) > 0.0)
            .collect();
        assert_eq!(right, [true, false, true, false, true, false, true]);
        let answers: Vec<String> = (0..3)
            .map(|i| grm_candidate(GrmDemos::Answers, i, &q, &other))
            .collect();
        assert_eq!(answers, ["Founder 1", "Founder 2", "Founder 1"]);
    }

    /// `fact_share` of the policy's and the generator's demonstrations ask for a fact, their
    /// families taken in turn; the rest come in the seeded order, and no question serves twice.
    #[test]
    fn a_fact_share_draws_fact_questions_first_from_every_family_in_turn() {
        let mut rows: Vec<QaRow> = (0..40)
            .map(|n| {
                qa(
                    &format!("wiki-def-{n}"),
                    &format!("What is thing {n}?"),
                    &format!("Name {n}"),
                )
            })
            .collect();
        for n in 0..10 {
            rows.push(qa(
                &format!("wiki-symbol-{n}"),
                &format!("What is the symbol of element {n}?"),
                &format!("E{n}"),
            ));
        }
        for n in 0..2 {
            rows.push(qa(
                &format!("wiki-directed-{n}"),
                &format!("Who directed film {n}?"),
                &format!("Director {n}"),
            ));
        }
        let build = |fact_share: f64| {
            let mix = DemoMix {
                fact_share,
                ..DemoMix::counts(8, 4, 6)
            };
            // Every search finds every answer, so no demonstration is refused.
            let everything = rows
                .iter()
                .map(|q| q.answers[0].clone())
                .collect::<Vec<_>>()
                .join(" ");
            build_demos(
                &rows,
                mix,
                3,
                ToolFormat::Tags,
                "<|im_end|>",
                |_| everything.clone(),
                |b| b.to_string(),
                |_| None,
            )
            .0
        };
        let fact_ids = |demos: &[Demo], role: Role| -> Vec<String> {
            demos
                .iter()
                .filter(|d| d.role == role)
                .filter_map(|d| {
                    let id =
                        d.id.split_once("-wiki-")
                            .map(|(_, q)| format!("wiki-{q}"))?;
                    family_of(&id)
                        .filter(|f| asks_for_a_fact(f))
                        .map(|f| f.to_string())
                })
                .collect()
        };
        let demos = build(0.5);
        // Four of eight policy demonstrations: both directors first, in turn with the symbols.
        assert_eq!(
            fact_ids(&demos, Role::Policy),
            ["directed", "symbol", "directed", "symbol"]
        );
        assert_eq!(fact_ids(&demos, Role::Generator), ["symbol", "symbol"]);
        assert_eq!(demos.iter().filter(|d| d.role == Role::Policy).count(), 8);
        assert_eq!(
            demos.iter().filter(|d| d.role == Role::Generator).count(),
            4
        );
        assert_eq!(demos.iter().filter(|d| d.role == Role::Grm).count(), 6);
        // The GRM's pool takes its quota too, from the fact questions the others left.
        let grm_facts = |demos: &[Demo]| {
            demos
                .iter()
                .filter(|d| d.role == Role::Grm)
                .filter(|d| {
                    let q = &d.messages[1].content;
                    q.contains("symbol of element") || q.contains("Who directed")
                })
                .count()
        };
        assert_eq!(grm_facts(&demos), 3);
        // No question serves two roles.
        let mut questions: Vec<&str> = demos
            .iter()
            .filter(|d| d.role != Role::Grm)
            .filter_map(|d| d.id.split_once("-wiki-").map(|(_, q)| q))
            .collect();
        let n = questions.len();
        questions.sort_unstable();
        questions.dedup();
        assert_eq!(questions.len(), n);
        // Without a quota the fact questions come only as often as the seeded order brings them.
        assert!(fact_ids(&build(0.0), Role::Policy).len() < 4);
    }

    /// Quotas are requests: asking for more demonstrations than there are train rows uses every
    /// row once, without sizing anything by the request (a typo of a huge count must not abort).
    #[test]
    fn quotas_beyond_the_train_rows_take_what_there_is() {
        let rows: Vec<QaRow> = (0..6)
            .map(|n| {
                qa(
                    &format!("q{n}"),
                    &format!("Who founded city {n}?"),
                    &format!("Founder {n}"),
                )
            })
            .collect();
        let huge = 1usize << 62;
        let (demos, _) = build_demos(
            &rows,
            DemoMix::counts(huge, huge, huge),
            3,
            ToolFormat::Tags,
            "<|im_end|>",
            |_| "Founder 0 Founder 1 Founder 2 Founder 3 Founder 4 Founder 5".to_string(),
            |b| b.to_string(),
            |_| None,
        );
        // The policy takes every row; nothing is left for the others.
        assert_eq!(demos.iter().filter(|d| d.role == Role::Policy).count(), 6);
        assert_eq!(demos.len(), 6);
    }

    /// `grm_unreferenced` of the GRM's demonstrations show no reference: the GRM searches the
    /// question, reads the results (masked from the loss) and says what they hold before the
    /// verdict. A question whose results do not hold its answer keeps its reference.
    #[test]
    fn unreferenced_grm_demonstrations_search_and_say_what_the_documents_hold() {
        let rows: Vec<QaRow> = (0..60)
            .map(|n| {
                let q = format!("Who directed film {n}?");
                qa(&format!("wiki-directed-{n}"), &q, &format!("Director {n}"))
            })
            .collect();
        let build = |share: f64| {
            build_demos(
                &rows,
                DemoMix {
                    grm_demos: GrmDemos::Contrast,
                    grm_unreferenced: share,
                    ..DemoMix::counts(0, 0, 40)
                },
                7,
                ToolFormat::Tags,
                "<|im_end|>",
                // Film 0 to 9's results name no director.
                |query: &str| {
                    let n: usize = query
                        .trim_start_matches("Who directed film ")
                        .trim_end_matches('?')
                        .parse()
                        .unwrap();
                    if n < 10 {
                        "A film.".to_string()
                    } else {
                        format!("Film {n} was directed by Director {n}.")
                    }
                },
                |b| format!("<information>{b}</information>"),
                |_| None,
            )
            .0
        };
        let referenced = |d: &Demo| d.messages[1].content.contains("Reference answer:");
        assert!(build(0.0).iter().all(referenced));
        let all = build(1.0);
        assert_eq!(all.len(), 40);
        let (with, without): (Vec<&Demo>, Vec<&Demo>) = all.iter().partition(|d| referenced(d));
        // Every question is picked; only those whose results hold the answer lose the reference.
        assert!(with.iter().all(|d| d.pieces.len() == 1));
        for d in &with {
            let n: usize = d.id.split('-').nth(4).unwrap().parse().unwrap();
            assert!(n < 10, "{}", d.id);
        }
        assert!(without.len() >= 25, "{}", without.len());
        let (mut right, mut wrong) = (0, 0);
        for d in &without {
            assert_eq!(d.pieces.len(), 3);
            assert!(d.pieces[0].0.contains("<search>Who directed film"));
            assert!(d.pieces[1].0.starts_with("<information>") && !d.pieces[1].1);
            let text = d.text();
            let question = d.messages[1]
                .content
                .split("Who directed film ")
                .nth(1)
                .unwrap();
            let n = question.split('?').next().unwrap();
            assert!(
                text.contains(&format!("The documents say it is Director {n}.")),
                "{text}"
            );
            match grm::parse(&text).verdict {
                grm::Verdict::Correct => {
                    assert!(text.contains("The candidate names it."));
                    right += 1
                }
                _ => {
                    assert!(text.contains("The candidate does not name it."));
                    wrong += 1
                }
            }
        }
        assert!(right > 0 && wrong > 0, "{right} right, {wrong} wrong");
        // A share picks about that share, whatever the candidate's kind.
        let half = build(0.5).iter().filter(|d| !referenced(d)).count();
        assert!((8..=28).contains(&half), "{half} of 40");
    }

    /// `grm_near_misses` of the GRM's questions get a contrast shown beside the reference: the
    /// reference itself, verdict right, and misspelt by one letter, verdict wrong. Answers too
    /// short to misspell get none, and the question's own demonstrations are those without a
    /// share.
    #[test]
    fn near_miss_grm_demonstrations_judge_a_misspelt_reference_wrong() {
        let rows: Vec<QaRow> = (0..60)
            .map(|n| {
                let answer = if n % 4 == 0 {
                    format!("Ra {n}")
                } else {
                    format!("Directorio {n}")
                };
                qa(
                    &format!("wiki-directed-{n}"),
                    &format!("Who directed film {n}?"),
                    &answer,
                )
            })
            .collect();
        let build = |share: f64| {
            build_demos(
                &rows,
                DemoMix {
                    grm_demos: GrmDemos::Contrast,
                    grm_near_misses: share,
                    ..DemoMix::counts(0, 0, 40)
                },
                7,
                ToolFormat::Tags,
                "<|im_end|>",
                |_: &str| String::new(),
                |b| format!("<information>{b}</information>"),
                |_| None,
            )
            .0
        };
        // The prompt's line `label` ("Candidate answer:"), unquoted.
        let line = |d: &Demo, label: &str| {
            let prompt = &d.messages[1].content;
            let at = prompt.find(label).expect(label) + label.len();
            prompt[at..]
                .lines()
                .next()
                .unwrap()
                .trim()
                .trim_matches('"')
                .to_string()
        };
        let candidate = |d: &Demo| line(d, "Candidate answer:");
        let reference = |d: &Demo| line(d, "Reference answer:");
        let none = build(0.0);
        let all = build(1.0);
        // The question's own demonstrations first, unchanged; the contrasts beside them.
        let added = |d: &&Demo| d.id.ends_with("-near-miss") || d.id.ends_with("-exact");
        let own: Vec<Demo> = all.iter().filter(|d| !added(d)).cloned().collect();
        assert_eq!(own, none);
        let (mut near, mut exact) = (0, 0);
        for d in all.iter().filter(added) {
            let (c, r) = (candidate(d), reference(d));
            assert!(!r.starts_with("Ra "), "{r} is too short to misspell");
            let verdict = grm::parse(&d.text()).verdict;
            if d.id.ends_with("-exact") {
                assert_eq!((c.as_str(), verdict), (r.as_str(), grm::Verdict::Correct));
                exact += 1;
                continue;
            }
            // "Directorio N" misspelt: one letter of the long word changed, the number kept.
            assert_ne!(c, r);
            assert!(
                c.ends_with(r.split(' ').nth(1).unwrap()) && c.starts_with('D'),
                "{c}"
            );
            assert_eq!(verdict, grm::Verdict::Wrong, "{c}");
            near += 1;
        }
        // A misspelling for each question with a long word, and the exact reference beside it
        // unless the question's own demonstration is that.
        let long: Vec<&Demo> = none
            .iter()
            .filter(|d| !reference(d).starts_with("Ra "))
            .collect();
        let gold = long.iter().filter(|d| candidate(d) == reference(d)).count();
        assert_eq!((near, exact), (long.len(), long.len() - gold));
        assert!(gold > 0 && exact > 0);
        // Without a share every candidate is of the usual kinds: an answer whole, a sentence
        // holding one, or the question's subject ("film N").
        for d in &none {
            let c = candidate(d);
            assert!(
                c.contains("Directorio") || c.contains("Ra ") || c.starts_with("film"),
                "{c}"
            );
        }
        let half = build(0.5).len() - none.len();
        assert!((10..=50).contains(&half), "{half} of {}", near + exact);
    }

    /// `contrast` GRM demonstrations take their wrong answers from a question of the same
    /// family, and their thought restates the reference before the verdict.
    #[test]
    fn contrast_grm_demonstrations_use_wrong_answers_of_the_same_kind() {
        let rows = [
            qa("wiki-directed-1", "Who directed film 1?", "Director 1"),
            qa("wiki-film_year-1", "When was film 1 made?", "1901"),
            qa("wiki-directed-2", "Who directed film 2?", "Director 2"),
            qa("wiki-film_year-2", "When was film 2 made?", "1902"),
        ];
        let pool: Vec<&QaRow> = rows.iter().collect();
        assert_eq!(same_family(&rows[0], &pool).unwrap().id, "wiki-directed-2");
        assert_eq!(same_family(&rows[3], &pool).unwrap().id, "wiki-film_year-1");
        assert!(same_family(&qa("x", "Q?", "A"), &pool).is_none());
        // One family of six, so every question in the pool has a wrong answer of its kind.
        let directed: Vec<QaRow> = (1..=6)
            .map(|n| {
                let q = format!("Who directed film {n}?");
                qa(&format!("wiki-directed-{n}"), &q, &format!("Director {n}"))
            })
            .collect();
        let (demos, _) = build_demos(
            &directed,
            DemoMix {
                grm_demos: GrmDemos::Contrast,
                ..DemoMix::counts(0, 0, 3)
            },
            7,
            ToolFormat::Tags,
            "<|im_end|>",
            |_| String::new(),
            |b| b.to_string(),
            |_| None,
        );
        assert_eq!(demos.len(), 3);
        let wrong = demos
            .iter()
            .filter(|d| grm::parse(&d.text()).verdict == grm::Verdict::Wrong)
            .count();
        assert_eq!(wrong, 1);
        for d in &demos {
            let text = d.text();
            let question = &d.messages[1].content;
            let reference = question
                .split("Reference answer: ")
                .nth(1)
                .and_then(|r| r.lines().next())
                .unwrap();
            assert!(
                text.contains(&format!("The reference is {reference}.")),
                "{text}"
            );
            // A wrong candidate is another answer of the reference's family.
            if grm::parse(&text).verdict == grm::Verdict::Wrong {
                let candidate = question.split("Candidate answer: ").nth(1).unwrap();
                assert!(candidate.starts_with("Director"), "{question}");
                assert!(!candidate.starts_with(reference), "{question}");
            }
        }
    }
}
