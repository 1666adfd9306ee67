//! Batched generation with a multi-turn tool loop: a queue of requests decoded by a batch that
//! stays full (continuous batching), prompts that share a beginning prefilled once (prefix
//! sharing), and stop strings found by scanning only the newly decoded text.
//!
//! Every step feeds each active sequence's new tokens (a whole prompt or tool text, or the one
//! token just sampled) through one packed [`Model::forward_step`]; each sequence has its own KV
//! cache and samples from its own ChaCha8 RNG seeded with its own seed ([`seq_seed`](super::sample::seq_seed)), so what a
//! sequence generates does not depend on which others share its steps, on the batch size, on
//! the schedule or on the thread count.
//!
//! - **Continuous batching** ([`Batching::continuous`]): when a sequence ends, the next request
//!   takes its slot at the next step; with `continuous = false` a batch of `batch_size` runs until
//!   its last sequence ends (the static schedule, kept to measure against).
//! - **Prefix sharing** ([`Batching::share_prefix`]): before decoding, each request looks back
//!   over the last [`SHARE_WINDOW`] requests for the one whose prompt begins like its own for
//!   longest (ties: the earliest). That donor's cache is copied right after its prompt is
//!   prefilled, and the request starts from the copy: the attempts of one task skip their whole
//!   prompt (and take the donor's first logits); prompts that share only the role's instructions
//!   skip those, cut down to a multiple of [`SHARE_ALIGN`] tokens. The copy holds exactly the keys
//!   and values the request would have computed, so outputs are unchanged (tested byte for byte).
//!
//! Tool loop: when a turn's text contains a stop string, the callback gets
//! `(request index, completion text so far)`; if it returns tool text, that text is tokenized,
//! appended with loss mask 0, and generation continues (up to `max_turns` model turns).

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};
use super::guide::{GuideState, Next, TurnEnd};
use super::llama::{Model, SeqCache};
use super::sample::{
    FinishReason, SamplingParams, SeqOutput, SeqRequest, full_logprob, sample_constrained,
    sample_token,
};

/// How far back (in requests) a prompt looks for a donor to share its beginning with.
pub(crate) const SHARE_WINDOW: usize = 64;

/// A shared beginning that is not a whole prompt is cut down to a multiple of this: the fused
/// attention computes a prefill chunk in blocks of this many queries from its first token, and
/// the matmul of a block rounds differently with its shape, so only a cut on a block boundary
/// gives every later query the block it would have had in a prefill from position 0 (measured:
/// unaligned cuts changed judge log-probs in the 6th digit).
pub(crate) const SHARE_ALIGN: usize = super::fused::attention::BLOCK_ROWS;

/// How a call's requests are scheduled onto the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Sequences decoded together; 0: every request at once.
    pub batch_size: usize,
    /// A finished sequence's slot takes the next request at once; false: each batch runs
    /// until its last sequence ends.
    pub continuous: bool,
    /// Prompts that begin like an earlier request's copy its cached keys and values.
    pub share_prefix: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            batch_size: 0,
            continuous: true,
            share_prefix: true,
        }
    }
}

/// What a call cost, in tokens and steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GenStats {
    /// Prompt tokens of all requests.
    pub prompt_tokens: usize,
    /// Of those, tokens whose keys and values were copied from a donor instead of computed.
    pub shared_tokens: usize,
    /// Tokens sampled by the model.
    pub sampled_tokens: usize,
    /// Tool-text tokens appended.
    pub tool_tokens: usize,
    /// Tokens that went through the model (prompts, tool text, sampled tokens fed back).
    pub forward_tokens: usize,
    /// Packed forward steps.
    pub steps: usize,
}

impl std::ops::AddAssign for GenStats {
    fn add_assign(&mut self, o: GenStats) {
        self.prompt_tokens += o.prompt_tokens;
        self.shared_tokens += o.shared_tokens;
        self.sampled_tokens += o.sampled_tokens;
        self.tool_tokens += o.tool_tokens;
        self.forward_tokens += o.forward_tokens;
        self.steps += o.steps;
    }
}

impl GenStats {
    /// One line for a stage's summary: what was read and written, and how fast, over `secs`.
    pub(crate) fn describe(&self, secs: f64) -> String {
        let per_s = |n: usize| n as f64 / secs.max(1e-9);
        format!(
            "tokens: {} sampled, {} tool, {} prompt ({} of them shared), {} through the model in {} steps; {:.1} sampled/s, {:.0} processed/s",
            self.sampled_tokens,
            self.tool_tokens,
            self.prompt_tokens,
            self.shared_tokens,
            self.forward_tokens,
            self.steps,
            per_s(self.sampled_tokens),
            per_s(self.forward_tokens)
        )
    }
}

/// The outputs of a call, in request order, and its cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Generation {
    pub outputs: Vec<SeqOutput>,
    pub stats: GenStats,
}

/// Generates completions for `requests` (see the module doc) with
/// [`SamplingParams::batching`]. `tool(request_index, completion_text_so_far)` is called when a
/// turn stops on a stop string (the text ends with it, even when the token that completed it
/// carries more); returning `Some(text)` appends `text` (loss mask 0) and starts another turn.
pub fn generate<F>(
    model: &Model,
    tokenizer: &Tokenizer,
    requests: &[SeqRequest],
    params: &SamplingParams,
    tool: F,
) -> Result<Vec<SeqOutput>>
where
    F: FnMut(usize, &str) -> Option<String>,
{
    Ok(generate_with(model, tokenizer, requests, params, tool, |_| {})?.outputs)
}

/// [`generate`], calling `finished(request_index)` as each sequence ends and returning the
/// call's [`GenStats`] too.
pub(crate) fn generate_with<F, D>(
    model: &Model,
    tokenizer: &Tokenizer,
    requests: &[SeqRequest],
    params: &SamplingParams,
    mut tool: F,
    mut finished: D,
) -> Result<Generation>
where
    F: FnMut(usize, &str) -> Option<String>,
    D: FnMut(usize),
{
    let max_pos = model.config().max_position_embeddings;
    for r in requests {
        if r.prompt_ids.is_empty() || r.prompt_ids.len() >= max_pos {
            return Err(ModelError::InvalidArgument(format!(
                "prompt of {} tokens (must be 1..{max_pos})",
                r.prompt_ids.len()
            )));
        }
    }
    let batching = params.batching;
    let cap = match batching.batch_size {
        0 => requests.len().max(1),
        b => b,
    };
    let mut plan = if batching.share_prefix && params.max_new_tokens > 0 {
        SharePlan::new(requests)
    } else {
        SharePlan::none(requests.len())
    };
    let mut stats = GenStats {
        prompt_tokens: requests.iter().map(|r| r.prompt_ids.len()).sum(),
        ..GenStats::default()
    };
    let mut outputs: Vec<Option<SeqOutput>> = vec![None; requests.len()];
    let mut active: Vec<Row> = Vec::with_capacity(cap);
    let mut snapshots: HashMap<usize, Snapshot> = HashMap::new();
    let mut next = 0;
    loop {
        // Admit queued requests into free slots.
        if batching.continuous || active.is_empty() {
            while active.len() < cap && next < requests.len() {
                let mut row = Row::new(next, &requests[next], params, model, tokenizer);
                if row.done {
                    finish(&mut row, tokenizer, &mut outputs, &mut finished)?;
                } else {
                    row.snapshot = plan.users[next] > 0;
                    row.start = plan.donor[next];
                    if let Some(start) = row.start
                        && snapshots.contains_key(&start.donor)
                    {
                        row.start_from(&mut snapshots, &mut plan, &requests[next], &mut stats)?;
                    }
                    active.push(row);
                }
                next += 1;
            }
        }
        if active.is_empty() {
            if next >= requests.len() {
                break;
            }
            continue;
        }
        // One packed forward for the rows with tokens to feed (not those waiting for a donor or
        // holding a donor's logits).
        let fwd: Vec<usize> = (0..active.len())
            .filter(|&a| active[a].start.is_none() && active[a].ready.is_none())
            .collect();
        let mut logits: Vec<Option<Vec<f32>>> = vec![None; active.len()];
        if !fwd.is_empty() {
            let chunks: Vec<Vec<u32>> = fwd
                .iter()
                .map(|&a| std::mem::take(&mut active[a].pending))
                .collect();
            let chunk_refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
            let mut caches: Vec<&mut SeqCache> = active
                .iter_mut()
                .enumerate()
                .filter(|(a, _)| fwd.binary_search(a).is_ok())
                .map(|(_, r)| &mut r.cache)
                .collect();
            let out = model
                .forward_step(&chunk_refs, &mut caches)?
                .to_vec2::<f32>()?;
            stats.steps += 1;
            stats.forward_tokens += chunks.iter().map(Vec::len).sum::<usize>();
            for (row_logits, &a) in out.into_iter().zip(&fwd) {
                let row = &mut active[a];
                if row.snapshot && row.cache.len() == requests[row.idx].prompt_ids.len() {
                    snapshots.insert(
                        row.idx,
                        Snapshot {
                            cache: row.cache.fork(row.cache.len())?,
                            logits: row_logits.clone(),
                        },
                    );
                    row.snapshot = false;
                }
                logits[a] = Some(row_logits);
            }
        }
        // Rows waiting for a donor start from its copy once its prompt is in (a donor that
        // waits for its own donor prefills later; the first request of a chain never waits).
        for row in active.iter_mut() {
            if row.start.is_some_and(|s| snapshots.contains_key(&s.donor)) {
                row.start_from(&mut snapshots, &mut plan, &requests[row.idx], &mut stats)?;
            }
        }
        for (a, row) in active.iter_mut().enumerate() {
            if let Some(l) = logits[a].take().or_else(|| row.ready.take()) {
                row.advance(&l, model, tokenizer, params, &mut tool, &mut stats)?;
            }
        }
        let mut a = 0;
        while a < active.len() {
            if active[a].done {
                let mut row = active.swap_remove(a);
                finish(&mut row, tokenizer, &mut outputs, &mut finished)?;
            } else {
                a += 1;
            }
        }
        // Keep admission order stable for the packed forward (a row's place in the batch does
        // not change its result, but a stable order keeps runs easy to reason about).
        active.sort_by_key(|r| r.idx);
    }
    Ok(Generation {
        outputs: outputs
            .into_iter()
            .map(|o| o.expect("every request finishes"))
            .collect(),
        stats,
    })
}

fn finish<D: FnMut(usize)>(
    row: &mut Row,
    tokenizer: &Tokenizer,
    outputs: &mut [Option<SeqOutput>],
    finished: &mut D,
) -> Result<()> {
    let mut out = std::mem::replace(&mut row.out, empty_output());
    out.text = decode(tokenizer, &out.tokens)?;
    outputs[row.idx] = Some(out);
    finished(row.idx);
    Ok(())
}

/// One user of `donor`'s snapshot is served: the snapshot goes once nobody else needs it.
fn release(snapshots: &mut HashMap<usize, Snapshot>, donor: usize, plan: &mut SharePlan) {
    plan.users[donor] = plan.users[donor].saturating_sub(1);
    if plan.users[donor] == 0 {
        snapshots.remove(&donor);
    }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, false)
        .map_err(|e| ModelError::Tokenize(e.to_string()))
}

fn empty_output() -> SeqOutput {
    SeqOutput {
        tokens: Vec::new(),
        loss_mask: Vec::new(),
        logprobs: Vec::new(),
        sample_logprobs: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        stop: None,
        turns: 1,
    }
}

/// Where a request's prompt starts: from `donor`'s cache cut to `len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    donor: usize,
    len: usize,
}

/// Which earlier request each request shares its prompt's beginning with, and how many later
/// requests start from each request's prompt.
#[derive(Debug)]
struct SharePlan {
    donor: Vec<Option<Start>>,
    users: Vec<usize>,
}

impl SharePlan {
    fn none(n: usize) -> SharePlan {
        SharePlan {
            donor: vec![None; n],
            users: vec![0; n],
        }
    }

    fn new(requests: &[SeqRequest]) -> SharePlan {
        let mut plan = SharePlan::none(requests.len());
        for (j, r) in requests.iter().enumerate() {
            let mine = &r.prompt_ids;
            let mut best: Option<(usize, usize)> = None;
            for (k, d) in requests
                .iter()
                .enumerate()
                .take(j)
                .skip(j.saturating_sub(SHARE_WINDOW))
            {
                let lcp = mine
                    .iter()
                    .zip(&d.prompt_ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                if best.is_none_or(|(_, l)| lcp > l) {
                    best = Some((k, lcp));
                }
            }
            let Some((k, lcp)) = best else { continue };
            // A whole prompt equal to the donor's takes its logits too; otherwise at least one
            // token of the prompt is fed to get this request's own first logits.
            let whole = lcp == mine.len() && lcp == requests[k].prompt_ids.len();
            let len = if whole {
                lcp
            } else {
                lcp.min(mine.len() - 1) / SHARE_ALIGN * SHARE_ALIGN
            };
            if len > 0 {
                plan.donor[j] = Some(Start { donor: k, len });
                plan.users[k] += 1;
            }
        }
        plan
    }
}

/// A donor's cache right after its prompt, and the logits of the prompt's last token.
struct Snapshot {
    cache: SeqCache,
    logits: Vec<f32>,
}

/// Finds stop strings by decoding only the new token (the tokenizer's incremental decoder) and
/// scanning only the text that could complete a stop string; decodes the whole turn again only
/// when the newest token leaves a character unfinished.
struct StopScanner<'t> {
    stream: tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    text: String,
    /// The incremental decoder refused a token (its text did not extend the prefix): the rest
    /// of this turn decodes whole.
    broken: bool,
}

impl<'t> StopScanner<'t> {
    fn new(tokenizer: &'t Tokenizer) -> StopScanner<'t> {
        StopScanner {
            stream: tokenizer.decode_stream(false),
            text: String::new(),
            broken: false,
        }
    }

    /// The stop string that appears first in the turn's text once `tok` is appended, if any.
    /// `turn` decodes the whole turn (the fallback).
    fn push(
        &mut self,
        tok: u32,
        stops: &[String],
        turn: impl FnOnce() -> Result<String>,
    ) -> Result<Option<String>> {
        let first = |hay: &str| {
            stops
                .iter()
                .filter_map(|s| hay.find(s.as_str()).map(|p| (p, s)))
                .min_by_key(|(p, _)| *p)
                .map(|(_, s)| s.clone())
        };
        if !self.broken {
            match self.stream.step(tok) {
                Ok(Some(chunk)) => {
                    let longest = stops.iter().map(String::len).max().unwrap_or(0);
                    let mut from = self.text.len().saturating_sub(longest.saturating_sub(1));
                    while !self.text.is_char_boundary(from) {
                        from -= 1;
                    }
                    self.text.push_str(&chunk);
                    return Ok(first(&self.text[from..]));
                }
                Ok(None) => {}
                Err(_) => self.broken = true,
            }
        }
        Ok(first(&turn()?))
    }
}

struct Row<'t> {
    /// Index of the request in the call.
    idx: usize,
    guide: Option<GuideState>,
    cache: SeqCache,
    rng: ChaCha8Rng,
    /// Tokens to feed at the next step.
    pending: Vec<u32>,
    out: SeqOutput,
    /// Index in `out.tokens` where the current turn started.
    turn_start: usize,
    sampled: usize,
    done: bool,
    /// Stop-string scanner of the current turn (unguided decoding with stop strings).
    scanner: Option<StopScanner<'t>>,
    /// Waiting for this donor's prompt to be prefilled.
    start: Option<Start>,
    /// Logits to sample from at the next step without a forward (the donor's, prompt equal).
    ready: Option<Vec<f32>>,
    /// Later requests start from this one's prompt: copy the cache once the prompt is in.
    snapshot: bool,
}

impl<'t> Row<'t> {
    fn new(
        idx: usize,
        r: &SeqRequest,
        params: &SamplingParams,
        model: &Model,
        tokenizer: &'t Tokenizer,
    ) -> Row<'t> {
        Row {
            idx,
            guide: params
                .guide
                .as_ref()
                .map(|g| GuideState::new(g, &params.eos_ids)),
            cache: model.new_cache(),
            rng: ChaCha8Rng::seed_from_u64(r.seed),
            pending: r.prompt_ids.clone(),
            out: empty_output(),
            turn_start: 0,
            sampled: 0,
            done: params.max_new_tokens == 0,
            scanner: Self::scanner(params, tokenizer),
            start: None,
            ready: None,
            snapshot: false,
        }
    }

    fn scanner(params: &SamplingParams, tokenizer: &'t Tokenizer) -> Option<StopScanner<'t>> {
        (params.guide.is_none() && !params.stop_strings.is_empty())
            .then(|| StopScanner::new(tokenizer))
    }

    /// Starts from the donor's snapshot (its cache after its prompt) cut to the shared length.
    /// A prompt equal to the donor's takes its logits too, and is a snapshot itself at once
    /// when later requests start from it.
    fn start_from(
        &mut self,
        snapshots: &mut HashMap<usize, Snapshot>,
        plan: &mut SharePlan,
        r: &SeqRequest,
        stats: &mut GenStats,
    ) -> Result<()> {
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        let snap = &snapshots[&start.donor];
        self.cache = snap.cache.fork(start.len)?;
        stats.shared_tokens += start.len;
        if start.len == r.prompt_ids.len() {
            self.pending.clear();
            let logits = snap.logits.clone();
            if self.snapshot {
                let cache = self.cache.fork(start.len)?;
                snapshots.insert(
                    self.idx,
                    Snapshot {
                        cache,
                        logits: logits.clone(),
                    },
                );
                self.snapshot = false;
            }
            self.ready = Some(logits);
        } else {
            self.pending = r.prompt_ids[start.len..].to_vec();
        }
        release(snapshots, start.donor, plan);
        Ok(())
    }

    /// Samples the next token from `logits` and handles what it ends: a turn (tool call or
    /// stop), the sequence (eos, length).
    fn advance<F>(
        &mut self,
        logits: &[f32],
        model: &Model,
        tokenizer: &'t Tokenizer,
        params: &SamplingParams,
        tool: &mut F,
        stats: &mut GenStats,
    ) -> Result<()>
    where
        F: FnMut(usize, &str) -> Option<String>,
    {
        let max_pos = model.config().max_position_embeddings;
        let tools_left = self.out.turns < params.max_turns;
        let len = self.out.tokens.len();
        let remaining = params.max_new_tokens.saturating_sub(self.sampled);
        let next = match &mut self.guide {
            Some(g) => Some(g.next(tokenizer, tools_left, len, remaining)?),
            None => None,
        };
        let (tok, lp, slp, forced) = match &next {
            None => {
                let (t, lp, slp) = sample_token(logits, params, &mut self.rng);
                (t, lp, slp, false)
            }
            Some(Next::Force(t)) => (*t, full_logprob(logits, *t, params), 0.0, true),
            Some(Next::Free { ban }) => {
                let (t, lp, slp) = sample_constrained(logits, None, ban, params, &mut self.rng);
                (t, lp, slp, false)
            }
            Some(Next::Choose(set)) => {
                let (t, lp, slp) =
                    sample_constrained(logits, Some(set), &[], params, &mut self.rng);
                (t, lp, slp, false)
            }
        };
        let in_loss = !forced || self.guide.as_ref().is_some_and(|g| g.forced_in_loss());
        self.out.tokens.push(tok);
        self.out.loss_mask.push(u8::from(in_loss));
        self.out.logprobs.push(lp);
        self.out.sample_logprobs.push(slp);
        self.sampled += 1;
        stats.sampled_tokens += 1;
        self.pending = vec![tok];
        if let Some(g) = &mut self.guide {
            let tokens = &self.out.tokens;
            let start = g.phase_start.min(tokens.len());
            g.observe(tokenizer, tok, tokens.len(), || {
                decode(tokenizer, &tokens[start..])
            })?;
            match g.turn_end() {
                Some(TurnEnd::Done) => {
                    self.out.finish = FinishReason::Stop;
                    self.done = true;
                }
                Some(TurnEnd::Tool) => {
                    let text = decode(tokenizer, &self.out.tokens)?;
                    self.after_turn(tokenizer, tool(self.idx, &text), params, max_pos, stats)?;
                }
                None => {}
            }
        } else if params.eos_ids.contains(&tok) {
            self.out.finish = FinishReason::Eos;
            self.done = true;
            return Ok(());
        } else if let Some(scanner) = &mut self.scanner {
            let turn = &self.out.tokens[self.turn_start..];
            if let Some(stop) =
                scanner.push(tok, &params.stop_strings, || decode(tokenizer, turn))?
            {
                // The token that completed the stop string may carry text past it
                // (`</search>` then `<`): the tool reads the completion up to the stop string.
                let text = decode(tokenizer, &self.out.tokens)?;
                let end = text.rfind(&stop).map_or(text.len(), |at| at + stop.len());
                self.out.stop = Some(stop);
                self.after_turn(
                    tokenizer,
                    tool(self.idx, &text[..end]),
                    params,
                    max_pos,
                    stats,
                )?;
            }
        }
        if !self.done
            && (self.sampled >= params.max_new_tokens
                || self.cache.len() + self.pending.len() >= max_pos)
        {
            self.out.finish = FinishReason::Length;
            self.done = true;
        }
        Ok(())
    }

    /// After a turn that may call the tool: the sequence ends (no tool text, or no turns left)
    /// or the tool's text is appended and the next turn starts.
    fn after_turn(
        &mut self,
        tokenizer: &'t Tokenizer,
        tool_text: Option<String>,
        params: &SamplingParams,
        max_pos: usize,
        stats: &mut GenStats,
    ) -> Result<()> {
        match tool_text {
            None => {
                self.out.finish = FinishReason::Stop;
                self.done = true;
            }
            Some(_) if self.out.turns >= params.max_turns => {
                self.out.finish = FinishReason::MaxTurns;
                self.done = true;
            }
            Some(text) => {
                let enc = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| ModelError::Tokenize(e.to_string()))?;
                let ids = enc.get_ids();
                let n = ids.len();
                // A result that leaves no room for one more token in the context is not
                // appended: the model could not read past it, and a trajectory longer than the
                // context could not be trained on.
                if self.cache.len() + self.pending.len() + n >= max_pos {
                    self.out.finish = FinishReason::Length;
                    self.done = true;
                    return Ok(());
                }
                self.out.tokens.extend_from_slice(ids);
                self.out.loss_mask.extend(std::iter::repeat_n(0, n));
                self.out.logprobs.extend(std::iter::repeat_n(0.0, n));
                self.out.sample_logprobs.extend(std::iter::repeat_n(0.0, n));
                self.pending.extend_from_slice(ids);
                stats.tool_tokens += n;
                self.turn_start = self.out.tokens.len();
                self.out.turns += 1;
                self.scanner = Self::scanner(params, tokenizer);
                if let Some(g) = &mut self.guide {
                    g.on_tool_text();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::hf::load_tokenizer;
    use crate::model::sample::seq_seed;
    use crate::model::test_util::tiny_model;

    fn setup() -> Option<(Model, Tokenizer)> {
        let dir = tiny_model(11)?;
        Some((
            Model::load(&dir, &Device::Cpu).unwrap(),
            load_tokenizer(&dir).unwrap(),
        ))
    }

    fn requests(tok: &Tokenizer) -> Vec<SeqRequest> {
        [
            "Hello there",
            "What is the capital of France? Answer:",
            "1 2 3",
            "<|im_start|>user\nhi<|im_end|>\n",
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| SeqRequest {
            prompt_ids: tok.encode(*p, false).unwrap().get_ids().to_vec(),
            seed: seq_seed(42, i as u64, 0),
        })
        .collect()
    }

    #[test]
    fn same_seed_same_output_regardless_of_batch() {
        let Some((model, tok)) = setup() else { return };
        let params = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            max_new_tokens: 12,
            stop_strings: vec![],
            eos_ids: vec![],
            ..Default::default()
        };
        let reqs = requests(&tok);
        let batch = generate(&model, &tok, &reqs, &params, |_, _| None).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            let alone =
                generate(&model, &tok, std::slice::from_ref(r), &params, |_, _| None).unwrap();
            assert_eq!(alone[0].tokens, batch[i].tokens, "row {i}");
            assert_eq!(alone[0].finish, FinishReason::Length);
            for (a, b) in alone[0].logprobs.iter().zip(&batch[i].logprobs) {
                assert!((a - b).abs() < 1e-4, "row {i}: logprob {a} vs {b}");
            }
            assert_eq!(batch[i].tokens.len(), 12);
            assert!(batch[i].loss_mask.iter().all(|&m| m == 1));
        }
        // Different seeds give different samples (vocab 49k, near-uniform).
        assert_ne!(batch[0].tokens, batch[1].tokens);
        let again = generate(&model, &tok, &reqs, &params, |_, _| None).unwrap();
        assert_eq!(again, batch);
    }

    /// Requests as a stage makes them: groups of attempts at one prompt, prompts that share a
    /// long beginning (the role's instructions) and one that shares nothing.
    fn grouped_requests(tok: &Tokenizer) -> Vec<SeqRequest> {
        // Instructions longer than one attention block, so prompts of different tasks share a
        // block-aligned beginning too.
        let intro = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n",
            "You answer questions. Think, search when you need to, and answer briefly. ".repeat(6)
        );
        let mut reqs = Vec::new();
        for (task, question) in ["Who wrote Hamlet?", "Where is Paris?", "What is 2+2?"]
            .iter()
            .enumerate()
        {
            let text = format!("{intro}{question}<|im_end|>\n<|im_start|>assistant\n");
            let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            for attempt in 0..3 {
                reqs.push(SeqRequest {
                    prompt_ids: ids.clone(),
                    seed: seq_seed(7, task as u64, attempt),
                });
            }
        }
        reqs.push(SeqRequest {
            prompt_ids: tok.encode("1 2 3", false).unwrap().get_ids().to_vec(),
            seed: 5,
        });
        // Prompts of 170 tokens that share their first `cut` tokens with the one before, cuts
        // inside and across attention blocks, down to a 1-token rest.
        let long: Vec<u32> = (0..600u32).map(|i| 1000 + (i * 7919) % 30000).collect();
        for (j, cut) in [170usize, 169, 166, 130, 100, 70, 50, 20, 0]
            .into_iter()
            .enumerate()
        {
            let mut ids = long[..cut].to_vec();
            ids.extend(&long[200 + 10 * j..200 + 10 * j + 170 - cut]);
            reqs.push(SeqRequest {
                prompt_ids: ids,
                seed: 100 + j as u64,
            });
        }
        reqs
    }

    /// Outputs do not depend on the schedule: prefix sharing on or off, batch sizes 1, 8 and
    /// 32 (more than the requests), continuous or static batches, with tool turns. Compared
    /// byte for byte (tokens, loss masks, both log-probs, text) against one sequence at a time,
    /// unshared, in f32, with q8_0 weights and (on a CPU with AMX or AVX-512-BF16) with the bf16 kernel, on a
    /// model as wide as SmolLM2-135M.
    #[test]
    fn sharing_and_schedules_leave_every_output_unchanged() {
        let Some(dir) = crate::model::test_util::wide_tiny_model(12) else {
            return;
        };
        let amx = crate::model::amx::available().then_some("amx_bf16");
        for dtype in ["f32", "q8_0"].into_iter().chain(amx) {
            let placement = crate::model::placement::Placement::parse("cpu", dtype).unwrap();
            let model = Model::load_on(&dir, &placement).unwrap();
            schedules_leave_outputs_unchanged(&model, &load_tokenizer(&dir).unwrap());
        }
    }

    fn schedules_leave_outputs_unchanged(model: &Model, tok: &Tokenizer) {
        let reqs = grouped_requests(tok);
        // Turns end often (any text with an "e"), so tool text is prefilled mid-sequence too.
        let stop = "e".to_string();
        let params = |batch_size, continuous, share_prefix| SamplingParams {
            temperature: 1.0,
            max_new_tokens: 24,
            stop_strings: vec![stop.clone()],
            eos_ids: vec![],
            max_turns: 3,
            batching: Batching {
                batch_size,
                continuous,
                share_prefix,
            },
            ..Default::default()
        };
        let tool = |i: usize, _: &str| Some(format!(" <information>doc {i}</information> "));
        let run = |p: &SamplingParams| generate_with(model, tok, &reqs, p, tool, |_| {}).unwrap();
        let reference = run(&params(1, false, false));
        assert_eq!(reference.stats.shared_tokens, 0);
        for batch in [1, 8, 32] {
            for continuous in [false, true] {
                for share in [false, true] {
                    let got = run(&params(batch, continuous, share));
                    let what = format!("batch {batch}, continuous {continuous}, share {share}");
                    assert_eq!(got.outputs, reference.outputs, "{what}");
                    assert_eq!(got.stats.sampled_tokens, reference.stats.sampled_tokens);
                    if share {
                        // Two of each three attempts skip their whole prompt; the other tasks
                        // and attempts skip at least the shared instructions.
                        let whole: usize =
                            reqs[..9].chunks(3).map(|g| 2 * g[0].prompt_ids.len()).sum();
                        let least = whole + 2 * SHARE_ALIGN;
                        assert!(got.stats.shared_tokens >= least, "{what}: {:?}", got.stats);
                        assert!(got.stats.forward_tokens < reference.stats.forward_tokens);
                    } else {
                        assert_eq!(got.stats.forward_tokens, reference.stats.forward_tokens);
                    }
                }
            }
        }
        // The schedule really differs: a full batch takes fewer steps than one at a time.
        assert!(run(&params(8, true, true)).stats.steps < reference.stats.steps);
    }

    /// A prompt prefilled from a cache cut at a multiple of [`SHARE_ALIGN`] gives bit for bit
    /// the logits of a prefill from position 0, on the shipped model (what prefix sharing relies
    /// on). Cuts off the block boundary do not always (measured on judge prompts), which is why
    /// shared beginnings are cut down to the boundary.
    #[test]
    fn block_aligned_cuts_prefill_bit_for_bit_on_smollm2() {
        let Some(dir) = crate::model::test_util::imported_smollm2() else {
            return;
        };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..150u32).map(|i| 1000 + (i * 7919) % 30000).collect();
        let prefill = |cut: usize| -> Vec<f32> {
            let mut cache = model.new_cache();
            if cut > 0 {
                model
                    .forward_step(&[&prompt[..cut]], &mut [&mut cache])
                    .unwrap();
                cache = cache.fork(cut).unwrap();
            }
            let logits = model
                .forward_step(&[&prompt[cut..]], &mut [&mut cache])
                .unwrap();
            logits.flatten_all().unwrap().to_vec1().unwrap()
        };
        let full = prefill(0);
        for cut in [SHARE_ALIGN, 2 * SHARE_ALIGN] {
            assert!(prefill(cut) == full, "cut at {cut}");
        }
        let unaligned: Vec<usize> = [1usize, 30, 70, 140, 147, 149]
            .into_iter()
            .filter(|&c| prefill(c) != full)
            .collect();
        eprintln!("unaligned cuts that change the logits: {unaligned:?}");
    }

    /// Every request ends exactly once and reports in; the outputs keep request order.
    #[test]
    fn finished_reports_each_request_once() {
        let Some((model, tok)) = setup() else { return };
        let reqs = grouped_requests(&tok);
        let params = SamplingParams {
            max_new_tokens: 6,
            batching: Batching {
                batch_size: 4,
                ..Batching::default()
            },
            ..Default::default()
        };
        let mut seen = Vec::new();
        let g = generate_with(&model, &tok, &reqs, &params, |_, _| None, |i| seen.push(i)).unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..reqs.len()).collect::<Vec<_>>());
        assert_eq!(g.outputs.len(), reqs.len());
        let alone = generate(&model, &tok, &reqs[9..10], &params, |_, _| None).unwrap();
        assert_eq!(alone[0], g.outputs[9]);
    }

    /// The incremental scanner finds the same first stop string at the same token as searching
    /// the whole decoded turn after every token, on random token streams (partial UTF-8 and
    /// special tokens included).
    #[test]
    fn incremental_stop_scan_matches_decoding_the_whole_turn() {
        let Some((_, tok)) = setup() else { return };
        let vocab = tok.get_vocab_size(true) as u32;
        let stops: Vec<String> = vec!["</search>".into(), "</answer>".into(), "<|im_end|>".into()];
        // Tokens that spell the stop strings, mixed into random ones.
        let spelled: Vec<u32> = stops
            .iter()
            .flat_map(|s| tok.encode(s.as_str(), false).unwrap().get_ids().to_vec())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut hits = 0;
        for _ in 0..300 {
            let mut scanner = StopScanner::new(&tok);
            let mut turn: Vec<u32> = Vec::new();
            for _ in 0..40 {
                use rand::Rng;
                let t = if rng.random_bool(0.5) {
                    spelled[rng.random_range(0..spelled.len())]
                } else {
                    rng.random_range(0..vocab)
                };
                turn.push(t);
                let whole = tok.decode(&turn, false).unwrap();
                let expected = stops
                    .iter()
                    .filter_map(|s| whole.find(s.as_str()).map(|p| (p, s.clone())))
                    .min_by_key(|(p, _)| *p)
                    .map(|(_, s)| s);
                let got = scanner.push(t, &stops, || decode(&tok, &turn)).unwrap();
                assert_eq!(got, expected, "turn {turn:?}");
                if got.is_some() {
                    hits += 1;
                    break;
                }
            }
        }
        assert!(hits > 100, "only {hits} streams hit a stop string");
    }

    #[test]
    fn tool_text_has_zero_loss_mask() {
        let Some((model, tok)) = setup() else { return };
        let greedy = SamplingParams {
            greedy: true,
            max_new_tokens: 10,
            stop_strings: vec![],
            eos_ids: vec![],
            ..Default::default()
        };
        let reqs = requests(&tok);
        let probe = generate(&model, &tok, &reqs[..1], &greedy, |_, _| None).unwrap();
        // Stop on the text of the 3rd generated token.
        let stop = tok.decode(&probe[0].tokens[2..3], false).unwrap();
        assert!(!stop.is_empty());
        let params = SamplingParams {
            stop_strings: vec![stop.clone()],
            max_turns: 3,
            max_new_tokens: 30,
            ..greedy
        };
        let mut calls: Vec<(usize, String, String)> = Vec::new();
        let out = generate(&model, &tok, &reqs[..1], &params, |i, text| {
            let t = format!("<result>tool {}: 42</result>", calls.len());
            calls.push((i, text.to_string(), t.clone()));
            Some(t)
        })
        .unwrap();
        let o = &out[0];
        assert!(!calls.is_empty());
        assert!(calls.iter().all(|c| c.0 == 0 && c.1.contains(&stop)));
        // Mask-0 spans, in order, are exactly the tokenized tool texts that
        // were appended (the last call hit max_turns and was not appended).
        let mut spans: Vec<Vec<u32>> = Vec::new();
        for (j, (&t, &m)) in o.tokens.iter().zip(&o.loss_mask).enumerate() {
            if m == 0 {
                if j == 0 || o.loss_mask[j - 1] == 1 {
                    spans.push(Vec::new());
                }
                if let Some(s) = spans.last_mut() {
                    s.push(t);
                }
                assert_eq!(o.logprobs[j], 0.0);
            }
        }
        let appended = o.turns - 1;
        assert_eq!(spans.len(), appended);
        for (s, c) in spans.iter().zip(&calls) {
            assert_eq!(s, tok.encode(c.2.as_str(), false).unwrap().get_ids());
        }
        assert!(o.text.contains("<result>tool 0: 42</result>"));
        match o.finish {
            FinishReason::MaxTurns => assert_eq!((o.turns, calls.len()), (3, 3)),
            FinishReason::Length => assert_eq!(o.loss_mask.iter().filter(|&&m| m == 1).count(), 30),
            f => panic!("unexpected finish {f:?}"),
        }
        assert_eq!(o.tokens.len(), o.loss_mask.len());
        assert_eq!(o.tokens.len(), o.sample_logprobs.len());
    }

    /// A tool result that would fill the context is not appended: the sequence ends at the
    /// context's length, so prompt and completion still fit it (train reads them whole).
    #[test]
    fn a_tool_result_past_the_context_is_not_appended() {
        let Some((model, tok)) = setup() else { return };
        let max_pos = model.config().max_position_embeddings;
        let greedy = SamplingParams {
            greedy: true,
            max_new_tokens: 10,
            stop_strings: vec![],
            eos_ids: vec![],
            ..Default::default()
        };
        let reqs = requests(&tok);
        let probe = generate(&model, &tok, &reqs[..1], &greedy, |_, _| None).unwrap();
        let stop = tok.decode(&probe[0].tokens[..1], false).unwrap();
        let params = SamplingParams {
            stop_strings: vec![stop],
            max_turns: 3,
            ..greedy
        };
        let long = " x".repeat(max_pos);
        let out = generate(&model, &tok, &reqs[..1], &params, |_, _| Some(long.clone())).unwrap();
        let o = &out[0];
        assert_eq!((o.turns, o.finish), (1, FinishReason::Length));
        assert!(reqs[0].prompt_ids.len() + o.tokens.len() < max_pos);
        assert!(
            o.loss_mask.iter().all(|&m| m == 1),
            "no tool text was appended"
        );
    }

    /// A stop string can end inside the token that completes it (`</search>` then `<` in one
    /// token): the tool reads the completion up to the stop string, so a call is not missed for
    /// the character after it.
    #[test]
    fn the_tool_reads_up_to_a_stop_string_that_ends_inside_a_token() {
        let Some((model, tok)) = setup() else { return };
        let greedy = SamplingParams {
            greedy: true,
            max_new_tokens: 40,
            stop_strings: vec![],
            eos_ids: vec![],
            ..Default::default()
        };
        let reqs = requests(&tok);
        let probe = generate(&model, &tok, &reqs[..1], &greedy, |_, _| None).unwrap();
        let ids = &probe[0].tokens;
        // The first token of two or more characters whose text less its last character does
        // not occur earlier: that prefix is the stop string.
        let (k, stop, last) = (0..ids.len())
            .find_map(|k| {
                let piece = tok.decode(&ids[k..k + 1], false).ok()?;
                let last = piece.chars().last()?;
                let stop = piece[..piece.len() - last.len_utf8()].to_string();
                let before = tok.decode(&ids[..k], false).ok()?;
                (stop.trim().len() >= 2 && !before.contains(&stop)).then_some((k, stop, last))
            })
            .expect("greedy decoding gave no token of two or more characters");
        let params = SamplingParams {
            stop_strings: vec![stop.clone()],
            ..greedy
        };
        let mut seen = Vec::new();
        let out = generate(&model, &tok, &reqs[..1], &params, |_, text| {
            seen.push(text.to_string());
            None
        })
        .unwrap();
        let o = &out[0];
        assert_eq!(
            o.tokens,
            ids[..=k],
            "the turn ends at the token completing {stop:?}"
        );
        assert_eq!(o.stop.as_deref(), Some(stop.as_str()));
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].ends_with(&stop),
            "{:?} does not end with {stop:?}",
            seen[0]
        );
        assert_eq!(format!("{}{last}", seen[0]), o.text);
    }

    /// Decode throughput of the imported SmolLM2 (run with `--ignored`).
    #[test]
    #[ignore]
    fn bench_decode_smollm2() {
        let Some(dir) = crate::model::test_util::imported_smollm2() else {
            return;
        };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let tok = load_tokenizer(&dir).unwrap();
        let prompt = crate::model::chat::ChatTemplate::load(&dir)
            .unwrap()
            .render_pairs(
                &[(
                    "user",
                    "Write a short story about a robot learning to paint.",
                )],
                true,
            )
            .unwrap();
        let ids = tok
            .encode(prompt.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let n_new = 48;
        for b in [1usize, 8] {
            let reqs: Vec<SeqRequest> = (0..b)
                .map(|i| SeqRequest {
                    prompt_ids: ids.clone(),
                    seed: seq_seed(1, i as u64, 0),
                })
                .collect();
            let mk = |n| SamplingParams {
                greedy: std::env::var_os("BENCH_GREEDY").is_some(),
                temperature: 0.7,
                top_p: 0.9,
                max_new_tokens: n,
                stop_strings: vec![],
                eos_ids: vec![],
                ..Default::default()
            };
            let t0 = std::time::Instant::now();
            generate(&model, &tok, &reqs, &mk(1), |_, _| None).unwrap();
            let prefill = t0.elapsed().as_secs_f64();
            let t0 = std::time::Instant::now();
            let out = generate(&model, &tok, &reqs, &mk(n_new), |_, _| None).unwrap();
            let total = t0.elapsed().as_secs_f64();
            let n_gen: usize = out.iter().map(|o| o.tokens.len()).sum();
            let decode_tps = (n_gen - b) as f64 / (total - prefill);
            eprintln!(
                "batch {b}: prompt {} tok, prefill {prefill:.2}s, {n_gen} tokens in {total:.2}s, decode {decode_tps:.1} tok/s",
                ids.len()
            );
            if b == 1 {
                eprintln!("sample: {:?}", out[0].text);
            }
        }
    }
}

#[cfg(test)]
mod guided_tests {
    use candle_core::Device;
    use proptest::prelude::*;

    use super::*;
    use crate::model::guide::Guide;
    use crate::model::hf::load_tokenizer;
    use crate::model::test_util::tiny_model;
    use crate::roles::tags;

    /// Checks a guided policy completion's shape: turns of `<think>…</think><search>…</search>`
    /// then a final `<think>…</think><answer>…</answer>`, tool text aside.
    fn well_formed(text: &str) -> std::result::Result<(), String> {
        let own = tags::without_blocks(text, "information");
        let mut rest = own.trim();
        loop {
            rest = rest
                .strip_prefix("<think>")
                .ok_or(format!("turn does not open with <think>: {rest:?}"))?;
            let close = rest.find("</think>").ok_or("no </think>")?;
            rest = rest[close + "</think>".len()..].trim_start();
            if let Some(r) = rest.strip_prefix("<search>") {
                let end = r.find("</search>").ok_or("no </search>")?;
                rest = r[end + "</search>".len()..].trim();
            } else if let Some(r) = rest.strip_prefix("<answer>") {
                let end = r.find("</answer>").ok_or("no </answer>")?;
                let tail = r[end + "</answer>".len()..].trim();
                return if tail.is_empty() {
                    Ok(())
                } else {
                    Err(format!("text after the answer: {tail:?}"))
                };
            } else {
                return Err(format!("after </think> comes neither tag: {rest:?}"));
            }
        }
    }

    #[test]
    fn a_required_search_comes_before_the_answer() {
        let Some(dir) = tiny_model(11) else { return };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let tok = load_tokenizer(&dir).unwrap();
        let params = SamplingParams {
            max_new_tokens: 400,
            max_turns: 3,
            guide: Some(Guide::policy(6, 5, 5).with_min_tool_calls(1)),
            ..Default::default()
        };
        let prompt = tok
            .encode(
                "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n",
                false,
            )
            .unwrap();
        let reqs: Vec<SeqRequest> = (0..4)
            .map(|i| SeqRequest {
                prompt_ids: prompt.get_ids().to_vec(),
                seed: 7 + i,
            })
            .collect();
        let outs = generate(&model, &tok, &reqs, &params, |_, _| {
            Some("\n<information>Doc 1 (Title: X) y</information>\n".into())
        })
        .unwrap();
        for out in outs {
            let search = out.text.find("<search>");
            let answer = out.text.find("<answer>");
            assert!(
                search.is_some() && search < answer,
                "no search before the answer: {}",
                out.text
            );
            assert!(well_formed(&out.text).is_ok(), "{}", out.text);
            assert!(out.turns >= 2, "{}", out.text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]
        #[test]
        fn guided_decoding_never_breaks_the_policy_format(seed in any::<u64>(), searches in 0usize..3) {
            let Some(dir) = tiny_model(11) else { return Ok(()) };
            let model = Model::load(&dir, &Device::Cpu).unwrap();
            let tok = load_tokenizer(&dir).unwrap();
            let params = SamplingParams {
                max_new_tokens: 400,
                max_turns: searches + 1,
                guide: Some(Guide::policy(6, 5, 5)),
                ..Default::default()
            };
            let prompt = tok.encode("<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
            let reqs: Vec<SeqRequest> = (0..3)
                .map(|i| SeqRequest { prompt_ids: prompt.get_ids().to_vec(), seed: seed.wrapping_add(i) })
                .collect();
            let outs = generate(&model, &tok, &reqs, &params, |_, _| Some("\n<information>Doc 1 (Title: X) y</information>\n".into())).unwrap();
            for out in outs {
                prop_assert_eq!(out.finish, FinishReason::Stop, "{}", out.text);
                prop_assert!(well_formed(&out.text).is_ok(), "{:?}: {}", well_formed(&out.text), out.text);
                prop_assert!(out.turns <= searches + 1);
                let parsed = crate::roles::policy::parse(&out.text);
                prop_assert!(parsed.answer.is_some(), "{:?}", parsed.error);
                // Forced tag tokens are outside the loss; sampled ones inside.
                prop_assert!(out.loss_mask.contains(&0) && out.loss_mask.contains(&1));
            }
        }
    }
}
