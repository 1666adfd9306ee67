//! What the model-driven stages share: the checkpoint a round starts from, sampling and search
//! parameters, and one call that runs a role's prompts through the model with the search tool
//! (continuous batching, shared prompt prefixes; [`crate::model::generate`]) under a progress bar.

use std::path::{Path, PathBuf};

use super::env::open_env;
use super::{StageContext, Upstream};
use crate::error::{Error, Result};
use crate::model::generate::{Batching, GenStats, generate_with};
use crate::model::guide::Guide;
use crate::model::hf::HfModel;
use crate::model::placement::Placement;
use crate::model::sample::{
    FinishReason, SamplingParams, SeqOutput, SeqRequest, is_greedy, scoring_temperature,
};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::roles::grm::Verdict;
use crate::roles::tool::{self, TOOL_FORMATS, ToolFormat};
use crate::roles::{Message, tags};
use crate::search::render::render_information;
use crate::search::{SearchEnv, SearchMode};
use crate::shards::rows::TrajectoryRow;

/// The upstreams naming the checkpoint a round's model stages start from: the previous round's
/// `apply` when there is one, else the run's `warmup` (when the pipeline has one), else `init`.
pub(crate) const CHECKPOINT_UPSTREAM: [Upstream; 3] = [
    Upstream::needs("init"),
    Upstream::optional("warmup"),
    Upstream::previous_round("apply"),
];

/// The `judge_model` parameter of the GRM's stages (`selfcheck`, `judge`): `latest` judges with
/// the checkpoint every other stage of the round uses, `start` with the run's starting one
/// (`warmup`, else `init`) in every round, so the judge stays the one the run began with even
/// though the backbone is shared: the seed's frozen GRM, which the GRM's own loss being off
/// (`reward.train_roles`) does not give while the policy's and the generator's steps move it.
pub(crate) fn judge_model_spec() -> ParamSpec {
    ParamSpec::new(
        "judge_model",
        "latest",
        "checkpoint the GRM judges with: `latest` (the round's, shared with the policy) or `start` (the warm-up's, else init's, in every round: a frozen judge)",
    )
    .one_of(&["latest", "start"])
}

/// The checkpoint upstreams of a GRM stage (see [`judge_model_spec`]): [`CHECKPOINT_UPSTREAM`], or
/// without the previous round's `apply` when the judge is the run's starting checkpoint.
pub(crate) fn judge_checkpoint_upstream(params: &Params) -> Vec<Upstream> {
    let start = params.get("judge_model").and_then(|v| v.as_str()) == Some("start");
    CHECKPOINT_UPSTREAM
        .into_iter()
        .filter(|up| !start || *up != Upstream::previous_round("apply"))
        .collect()
}

/// The checkpoint folder a stage uses (see [`CHECKPOINT_UPSTREAM`]), also accepting this round's
/// `apply?` (for `eval`, which scores the round's new checkpoint) and the previous optimizer
/// step's `apply@prev_step?` (for `train` and `apply` from a round's second step on), the first
/// of these the stage declared and found.
pub(crate) fn checkpoint_dir(ctx: &StageContext, stage: &str) -> Result<PathBuf> {
    [
        Upstream::optional("apply"),
        Upstream::previous_step("apply"),
        Upstream::previous_round("apply"),
        Upstream::optional("warmup"),
        Upstream::needs("init"),
    ]
    .into_iter()
    .find_map(|up| ctx.declared(up)?.iter().find(|p| p.is_dir()).cloned())
    .ok_or_else(|| {
        Error::stage(
            stage,
            "no checkpoint: run `init` first (it is in every pipeline's setup)",
        )
    })
}

/// The `device` parameter of every model stage.
pub(crate) fn device_spec() -> ParamSpec {
    ParamSpec::new(
        "device",
        "cpu",
        "where the model runs: cpu, cuda, cuda:N (a `--features cuda` build) or auto",
    )
}

/// Where a stage's model runs: its `device`, and its `dtype` when it declares one (the sampling
/// stages); training stages keep f32.
pub fn placement(params: &Params, stage: &str) -> Result<Placement> {
    let dtype = params
        .get("dtype")
        .and_then(|v| v.as_str())
        .unwrap_or("f32");
    Placement::parse_each(params.str("device"), dtype)
        .map_err(|(part, e)| Error::param(format!("{stage}.{}", part.param()), e.to_string()))
}

/// Sampling and tool parameters every model stage declares, with per-stage defaults.
pub(crate) fn sampling_specs(
    max_new_tokens: u64,
    max_turns: u64,
    temperature: f64,
) -> Vec<ParamSpec> {
    vec![
        device_spec(),
        ParamSpec::new(
            "dtype",
            "f32",
            "weights and activations while sampling: f32, bf16, f16, q8_0 (int8 weights, CPU), amx_bf16 (bf16 matmuls on AMX tiles or AVX-512-BF16, f32 elsewhere; CPUs with either) or auto (bf16 on CUDA)",
        ).one_of(&["f32", "bf16", "f16", "q8_0", "amx_bf16", "auto"]),
        ParamSpec::new(
            "temperature",
            temperature,
            "sampling temperature (0: greedy)",
        ).at_least(0.0),
        ParamSpec::new("top_p", 1.0, "nucleus sampling mass (1: off)").above_up_to(0.0, 1.0),
        ParamSpec::new("top_k", 0, "sample from the k most likely tokens (0: off)"),
        ParamSpec::new(
            "max_new_tokens",
            max_new_tokens,
            "token budget per sequence over all its turns",
        ).at_least(1.0),
        ParamSpec::new(
            "max_turns",
            max_turns,
            "model turns per sequence; each turn but the last may end in a search",
        ).at_least(1.0),
        ParamSpec::new(
            "tool_format",
            "tags",
            "how the model calls search: `tags` (<search> … </search>, results in <information>) or `qwen` (<tool_call> JSON, results in a <tool_response> turn rendered by the chat template); set it run-wide with --set tool_format=…",
        ).one_of(&["tags", "qwen"]),
        ParamSpec::new(
            "batch_size",
            32,
            "sequences decoded together (continuous batching keeps the batch full)",
        ).at_least(1.0),
        ParamSpec::new(
            "continuous",
            true,
            "continuous batching: a finished sequence's slot takes the next prompt at once (false: each batch runs until its last sequence ends)",
        ),
        ParamSpec::new(
            "share_prefix",
            true,
            "prompts that begin like an earlier prompt copy its cached keys and values (outputs unchanged)",
        ),
        ParamSpec::new(
            "search_mode",
            "bm25",
            "`bm25`, `dense`, `hybrid`, or `none` (no search tool)",
        ).one_of(&["bm25", "dense", "hybrid", "none"]),
        ParamSpec::new("search_k", 3, "passages per search call").at_least(1.0),
        ParamSpec::new(
            "guided",
            false,
            "structure-guided decoding: tags constrained, content free (docs/format.md)",
        ),
        ParamSpec::new(
            "think_tokens",
            64,
            "with `guided`: tokens a think block may run before `</think>` is forced",
        ).at_least(1.0),
    ]
}

/// Which role's format a run follows (for structure-guided decoding).
pub use crate::roles::Role;

/// The settings every model stage shares, typed and checked: built from the stage's params when
/// the pipeline loads ([`check_agent_params`], so a bad value fails before any stage runs) and
/// again when the stage opens its agent. A stage that reconfigures its agent (`warmup` scores
/// greedily, one token; `eval --model` without a run has no search tool) changes these fields.
#[derive(Debug, Clone)]
pub(crate) struct AgentSettings {
    pub placement: Placement,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0: off.
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub max_turns: usize,
    pub tools: ToolFormat,
    pub batching: Batching,
    /// `None`: no search tool (`search_mode = none`).
    pub search: Option<SearchMode>,
    pub search_k: usize,
    /// With structure-guided decoding: tokens a think block may run before `</think>` is forced.
    pub guided: Option<usize>,
}

impl AgentSettings {
    /// An agent that only renders prompts and runs searches (the warm-up builds demonstrations
    /// with it): greedy, one token, one turn, unguided. Reads only the tool and search params
    /// and the device.
    pub(crate) fn tools_only(params: &Params, stage: &str) -> Result<Self> {
        Ok(Self {
            placement: placement(params, stage)?,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 1,
            max_turns: 1,
            tools: tool_format(params, stage)?,
            batching: Batching {
                batch_size: 1,
                continuous: true,
                share_prefix: true,
            },
            search: search_mode(params, stage)?,
            search_k: params.u64("search_k") as usize,
            guided: None,
        })
    }

    /// The settings of `stage` from its resolved params (declared by [`sampling_specs`], their
    /// ranges already checked against the specs).
    pub(crate) fn from_params(params: &Params, stage: &str) -> Result<Self> {
        Ok(Self {
            temperature: params.f64("temperature"),
            top_p: params.f64("top_p"),
            top_k: params.u64("top_k") as usize,
            max_new_tokens: params.u64("max_new_tokens") as usize,
            max_turns: params.u64("max_turns") as usize,
            batching: Batching {
                batch_size: params.u64("batch_size") as usize,
                continuous: params.bool("continuous"),
                share_prefix: params.bool("share_prefix"),
            },
            guided: params
                .bool("guided")
                .then(|| params.u64("think_tokens") as usize),
            ..Self::tools_only(params, stage)?
        })
    }
}

/// Checks the settings every model stage shares (tool format, search mode, device and dtype)
/// when the pipeline loads, by building them, so a typo fails before any stage runs, not when
/// the first model stage starts.
pub(crate) fn check_agent_params(params: &Params, stage: &str) -> Result<()> {
    AgentSettings::from_params(params, stage).map(|_| ())
}

/// The `min_searches` of a guided model stage (`generate`, `selfcheck`): searches each sequence
/// makes before its final action. Each search ends a turn and the final action needs one more, so
/// a count `max_turns` cannot hold is refused (the guide would drop the requirement silently), and
/// so is any count where nothing enforces it: only the guide does, and only with a search tool.
pub(crate) fn min_searches(params: &Params, stage: &str) -> Result<usize> {
    let n = params.u64("min_searches") as usize;
    let turns = params.u64("max_turns") as usize;
    if n > 0 && (!params.bool("guided") || params.str("search_mode") == "none") {
        return Err(Error::param(
            format!("{stage}.min_searches"),
            format!(
                "{n} searches are required only by guided decoding with a search tool ({stage}.guided = {}, {stage}.search_mode = {}); set min_searches = 0 or guided = true with a search mode",
                params.bool("guided"),
                params.str("search_mode")
            ),
        ));
    }
    if n > 0 && n >= turns {
        return Err(Error::param(
            format!("{stage}.min_searches"),
            format!(
                "{n} searches need at least {} turns ({stage}.max_turns = {turns}): each search ends a turn and the final action needs one more",
                n + 1
            ),
        ));
    }
    Ok(n)
}

/// The `tool_format` of a model stage's params.
pub fn tool_format(params: &Params, stage: &str) -> Result<ToolFormat> {
    let name = params.str("tool_format");
    ToolFormat::parse(name).ok_or_else(|| {
        Error::param(
            format!("{stage}.tool_format"),
            format!("unknown tool format {name:?} ({TOOL_FORMATS})"),
        )
    })
}

/// The `search_mode` of a model stage's params (`None`: no search tool).
pub fn search_mode(params: &Params, stage: &str) -> Result<Option<SearchMode>> {
    match params.str("search_mode") {
        "none" => Ok(None),
        "dense" => Ok(Some(SearchMode::Dense)),
        "hybrid" => Ok(Some(SearchMode::Hybrid)),
        "bm25" => Ok(Some(SearchMode::Bm25)),
        other => Err(Error::param(
            format!("{stage}.search_mode"),
            format!("unknown search mode {other:?} (bm25, dense, hybrid, none)"),
        )),
    }
}

/// The search stages a model stage reads, by its `search_mode`.
pub(crate) fn search_upstream(params: &Params) -> Vec<Upstream> {
    let names: &[&'static str] = match params.str("search_mode") {
        "none" => &[],
        "dense" => &["corpus", "embed"],
        "hybrid" => &["corpus", "index", "embed"],
        _ => &["corpus", "index"],
    };
    names.iter().map(|n| Upstream::needs(n)).collect()
}

/// One prompt to run.
pub(crate) struct Request {
    pub messages: Vec<Message>,
    pub seed: u64,
}

/// A finished sequence.
pub(crate) struct Completion {
    pub prompt_ids: Vec<u32>,
    pub out: SeqOutput,
    /// The temperature the log-probs were scored at (the sampling temperature, 1 when greedy).
    pub temperature: f32,
    /// Picked greedily: `sample_logprobs` holds 0s that are no distribution's log-probs.
    pub greedy: bool,
}

impl Completion {
    /// Searches whose results the model read: every tool text appended starts a turn (the
    /// agent appends only search results). A call in the last allowed turn ends the sequence
    /// (`max_turns`) with no result, so it is not counted.
    pub fn searches(&self) -> u32 {
        self.out.turns.saturating_sub(1) as u32
    }

    pub fn truncated(&self) -> bool {
        matches!(
            self.out.finish,
            FinishReason::Length | FinishReason::MaxTurns
        )
    }

    /// Log-probs under the distribution each token was drawn from. A greedy pick has none (the
    /// sampler reports 0); there the behaviour is the scored distribution itself. A sampled
    /// token the truncated distribution held alone (top-k 1, a top-p nucleus of one, a guided
    /// token) has probability 1 there: its 0 is kept, so every such sequence weighs the same.
    fn behavior_logprobs(&self) -> Vec<f32> {
        if self.greedy {
            return self.out.logprobs.clone();
        }
        self.out.sample_logprobs.clone()
    }

    /// The trajectory row of this completion.
    pub fn row(&self, ids: TrajectoryIds, parsed: Result<String, String>) -> TrajectoryRow {
        let (answer, parse_error) = match parsed {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        };
        TrajectoryRow {
            trajectory_id: ids.trajectory_id,
            task_id: ids.task_id,
            role: ids.role.to_string(),
            attempt: ids.attempt,
            seed: ids.seed,
            prompt_ids: self.prompt_ids.clone(),
            completion_ids: self.out.tokens.clone(),
            loss_mask: self.out.loss_mask.iter().map(|&m| m == 1).collect(),
            sampling_logprobs: self.out.logprobs.clone(),
            behavior_logprobs: self.behavior_logprobs(),
            temperature: self.temperature,
            text: self.out.text.clone(),
            turns: self.out.turns as u32,
            searches: self.searches(),
            parsed: answer.is_some(),
            answer,
            parse_error,
            finish_reason: self.out.finish.as_str().to_string(),
        }
    }
}

/// The identifying columns of a trajectory row.
pub(crate) struct TrajectoryIds {
    pub trajectory_id: String,
    pub task_id: String,
    pub role: &'static str,
    pub attempt: u32,
    pub seed: u64,
}

/// A loaded checkpoint with the run's search environment.
pub(crate) struct Agent {
    hf: HfModel,
    env: Option<SearchEnv>,
    search_k: usize,
    mode: SearchMode,
    sampling: SamplingParams,
    guided: Option<usize>,
    min_searches: usize,
    tools: ToolFormat,
    /// The text around a search result (see [`Agent::tool_result`]).
    result_wrap: (String, String),
    /// Tokens and seconds spent by this agent's calls so far.
    spent: std::cell::Cell<(GenStats, f64)>,
}

impl Agent {
    /// Loads the checkpoint and, unless `search_mode` is `none`, the search environment.
    pub fn load(ctx: &StageContext, stage: &str) -> Result<Agent> {
        let dir = checkpoint_dir(ctx, stage)?;
        let settings = AgentSettings::from_params(ctx.params, stage)?;
        Agent::open(&dir, Some((ctx.run_dir, ctx.round)), &settings, stage)
    }

    /// Loads `model_dir`; the search environment comes from `run` (run dir, round) when given.
    pub fn open(
        model_dir: &Path,
        run: Option<(&Path, u32)>,
        settings: &AgentSettings,
        stage: &str,
    ) -> Result<Agent> {
        let hf = HfModel::load_on(model_dir, &settings.placement)
            .map_err(|e| Error::stage(stage, format!("checkpoint: {e}")))?;
        let env = match (settings.search, run) {
            (Some(m), Some((run_dir, round))) => Some(open_env(run_dir, round, m)?),
            _ => None,
        };
        let tools = settings.tools;
        let result_wrap = match tools {
            ToolFormat::Tags => (tool::TAGS_RESULT.0.into(), tool::TAGS_RESULT.1.into()),
            ToolFormat::Qwen => hf
                .chat
                .tool_turn(tools.result_tag())
                .map_err(|e| Error::stage(stage, format!("tool_format = qwen: {e}")))?,
        };
        let temperature = settings.temperature;
        let mut stop_strings = vec!["</answer>".to_string(), hf.chat.end_of_turn().to_string()];
        if env.is_some() {
            stop_strings.insert(0, tools.call_close().to_string());
        }
        let sampling = SamplingParams {
            temperature,
            top_p: settings.top_p,
            top_k: settings.top_k,
            greedy: temperature <= 0.0,
            max_new_tokens: settings.max_new_tokens,
            stop_strings,
            eos_ids: hf.eos_ids().to_vec(),
            max_turns: settings.max_turns,
            guide: None,
            batching: settings.batching,
        };
        Ok(Agent {
            hf,
            env,
            search_k: settings.search_k,
            mode: settings.search.unwrap_or(SearchMode::Bm25),
            sampling,
            guided: settings.guided,
            min_searches: 0,
            tools,
            result_wrap,
            spent: Default::default(),
        })
    }

    /// With guided decoding and a search tool: searches each sequence makes before its final
    /// action (see [`Guide::with_min_tool_calls`]).
    pub(crate) fn require_searches(mut self, n: usize) -> Agent {
        self.min_searches = n;
        self
    }

    pub(crate) fn has_search(&self) -> bool {
        self.env.is_some()
    }

    pub(crate) fn search_env(&self) -> Option<&SearchEnv> {
        self.env.as_ref()
    }

    pub fn search_mode(&self) -> SearchMode {
        self.mode
    }

    /// How this agent's model calls the search tool.
    pub fn tool_format(&self) -> ToolFormat {
        self.tools
    }

    /// The text that closes an assistant turn in the model's chat format.
    pub fn end_of_turn(&self) -> &str {
        self.hf.chat.end_of_turn()
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.hf.tokenizer
    }

    /// Prompt token ids of `messages` in the model's chat format.
    pub fn encode(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let pairs: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        self.hf
            .encode_chat(&pairs)
            .map_err(|e| Error::stage("prompt", e.to_string()))
    }

    /// The sampling settings of `role`: its guide when decoding is guided.
    fn sampling_for(&self, role: Role) -> SamplingParams {
        let mut sampling = self.sampling.clone();
        sampling.guide = self.guided.map(|think| {
            let guide = match role {
                Role::Policy => Guide::policy(think, 24, 24),
                Role::Generator => Guide::generator(think, 24, 48),
                Role::Grm => Guide::grm(think, 24, &Verdict::ALL.map(Verdict::name)),
            };
            if self.env.is_some() {
                let (prefix, terminator) = self.tools.guided_call();
                guide.with_min_tool_calls(self.min_searches).with_tool_call(
                    &format!("<{}>", self.tools.call_tag()),
                    prefix,
                    self.tools.call_close(),
                    terminator,
                )
            } else {
                guide.without_tools()
            }
        });
        sampling
    }

    /// Runs every request to completion with the search tool (see [`Batching`]).
    pub fn run(&self, requests: &[Request], what: &str, role: Role) -> Result<Vec<Completion>> {
        Ok(self.run_with_stats(requests, what, role)?.0)
    }

    /// [`Agent::run`], with what the call cost in tokens and steps.
    pub(crate) fn run_with_stats(
        &self,
        requests: &[Request],
        what: &str,
        role: Role,
    ) -> Result<(Vec<Completion>, GenStats)> {
        let sampling = self.sampling_for(role);
        let mut seqs = Vec::with_capacity(requests.len());
        for r in requests {
            seqs.push(SeqRequest {
                prompt_ids: self.encode(&r.messages)?,
                seed: r.seed,
            });
        }
        let bar = crate::progress::bar(requests.len() as u64, what);
        let started = std::time::Instant::now();
        let generation = generate_with(
            &self.hf.model,
            &self.hf.tokenizer,
            &seqs,
            &sampling,
            |_, text| {
                let env = self.env.as_ref()?;
                if !text.trim_end().ends_with(self.tools.call_close()) {
                    return None;
                }
                Some(self.tool_text(env, text))
            },
            |_| bar.inc(1),
        )
        .map_err(|e| Error::stage(what, e.to_string()))?;
        bar.finish_and_clear();
        let (mut stats, mut secs) = self.spent.get();
        stats += generation.stats;
        secs += started.elapsed().as_secs_f64();
        self.spent.set((stats, secs));
        let temperature = scoring_temperature(&sampling) as f32;
        let greedy = is_greedy(&sampling);
        let done = seqs
            .into_iter()
            .zip(generation.outputs)
            .map(|(seq, out)| Completion {
                prompt_ids: seq.prompt_ids,
                out,
                temperature,
                greedy,
            })
            .collect();
        Ok((done, generation.stats))
    }

    /// What this agent's calls cost so far, as one summary clause ([`GenStats::describe`]).
    pub(crate) fn spent(&self) -> String {
        let (stats, secs) = self.spent.get();
        stats.describe(secs)
    }

    /// The result answering the last search call of `text`, in the agent's tool format.
    fn tool_text(&self, env: &SearchEnv, text: &str) -> String {
        let own = tags::after_last_block(text, self.tools.result_tag());
        let query = tool::queries(own).pop().unwrap_or_default();
        let body = if query.is_empty() {
            "The search query was empty.".to_string()
        } else {
            match env.search(&query, self.search_k, self.mode) {
                Ok(hits) if hits.is_empty() => "No results.".to_string(),
                Ok(hits) => render_information(&hits),
                Err(e) => format!("Search failed: {e}"),
            }
        };
        self.tool_result(&body)
    }

    /// A search result as the model reads it after its call: `<information>` in the `tags`
    /// format; with `qwen`, the tool turn the chat template renders, with the result in
    /// `<tool_response>` (the template's own, or added when it has none).
    pub(crate) fn tool_result(&self, body: &str) -> String {
        format!("{}{body}{}", self.result_wrap.0, self.result_wrap.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::resolve;

    /// A search called in the last allowed turn gets no result (generate's
    /// `tool_text_has_zero_loss_mask`: the last call is not appended), so it is not counted: a
    /// trajectory's `searches` is the results the model read.
    #[test]
    fn a_call_left_unanswered_at_max_turns_is_not_a_search() {
        let completion = |turns: usize, finish: FinishReason| Completion {
            prompt_ids: vec![1],
            out: SeqOutput {
                tokens: vec![2, 3],
                loss_mask: vec![1, 1],
                logprobs: vec![0.0; 2],
                sample_logprobs: vec![0.0; 2],
                text: String::new(),
                finish,
                stop: None,
                turns,
            },
            temperature: 1.0,
            greedy: false,
        };
        let ids = || TrajectoryIds {
            trajectory_id: "t".into(),
            task_id: "q".into(),
            role: "policy",
            attempt: 0,
            seed: 0,
        };
        // Three turns, the third ending on a call: two results were read.
        let c = completion(3, FinishReason::MaxTurns);
        assert_eq!(c.searches(), 2);
        assert_eq!(c.row(ids(), Err("no answer".into())).searches, 2);
        // An answer after one search; an answer with none.
        assert_eq!(completion(2, FinishReason::Stop).searches(), 1);
        assert_eq!(completion(1, FinishReason::Stop).searches(), 0);
    }

    /// The behaviour log-probs are the scored ones only for a greedy pick: a sampled sequence
    /// whose every token its truncated distribution held alone (probability 1, log-prob 0) keeps
    /// its 0s, as a sequence with one such token among others does.
    #[test]
    fn behaviour_log_probs_fall_back_to_the_scored_ones_only_when_greedy() {
        let completion = |sample_logprobs: Vec<f32>, greedy: bool| Completion {
            prompt_ids: vec![1],
            out: SeqOutput {
                tokens: vec![2, 3],
                loss_mask: vec![1, 1],
                logprobs: vec![-0.5, -2.0],
                sample_logprobs,
                text: String::new(),
                finish: FinishReason::Eos,
                stop: None,
                turns: 1,
            },
            temperature: 1.0,
            greedy,
        };
        assert_eq!(
            completion(vec![0.0, 0.0], true).behavior_logprobs(),
            [-0.5, -2.0]
        );
        assert_eq!(
            completion(vec![0.0, 0.0], false).behavior_logprobs(),
            [0.0, 0.0]
        );
        assert_eq!(
            completion(vec![-0.4, 0.0], false).behavior_logprobs(),
            [-0.4, 0.0]
        );
    }

    #[test]
    fn a_bad_device_or_dtype_is_reported_under_its_parameter() {
        let specs = sampling_specs(8, 1, 1.0);
        let params = resolve(
            "rollout",
            &specs,
            None,
            &["rollout.device=tpu".parse().unwrap()],
        )
        .unwrap();
        let e = placement(&params, "rollout").unwrap_err().to_string();
        assert!(e.contains("rollout.device") && e.contains("tpu"), "{e}");
        // A dtype is a closed set, refused when the params resolve.
        let e = resolve(
            "rollout",
            &specs,
            None,
            &["rollout.dtype=f8".parse().unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rollout.dtype") && e.contains("f8"), "{e}");
    }
}
