//! Batched generation with temperature / top-k / top-p / greedy sampling,
//! stop strings, and a multi-turn tool loop.
//!
//! All sequences of a call advance together through
//! [`Model::forward_step`] (one packed forward per step, each sequence with
//! its own KV cache), but every sequence samples from its own ChaCha8 RNG
//! seeded with its own seed ([`seq_seed`]), so a sequence's output does not
//! depend on which other sequences share the batch or on the thread count
//! (up to float rounding differences of the packed matmuls, far below what
//! changes a sample in practice).
//!
//! Tool loop: when a turn's text contains a stop string, the callback gets
//! `(sequence index, completion text so far)`; if it returns tool text, that
//! text is tokenized, appended with loss mask 0, and generation continues
//! (up to `max_turns` model turns).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};
use super::guide::{Guide, GuideState, Next, TurnEnd};
use super::llama::{Model, SeqCache};

/// Sampling settings shared by the sequences of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Always take the most likely token (ties: lowest id).
    pub greedy: bool,
    /// Budget of sampled tokens per sequence, over all turns.
    pub max_new_tokens: usize,
    /// Strings that end a turn (e.g. `</search>`, `</answer>`, `<|im_end|>`).
    pub stop_strings: Vec<String>,
    /// Token ids that end the sequence (e.g. `<|im_end|>` = 2).
    pub eos_ids: Vec<u32>,
    /// Model turns per sequence (1 = no tool calls).
    pub max_turns: usize,
    /// Structure-guided decoding: the role's tags are constrained, its content is not. With a
    /// guide, turns end when the guide says so rather than on stop strings.
    pub guide: Option<Guide>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            greedy: false,
            max_new_tokens: 256,
            stop_strings: vec!["</search>".into(), "</answer>".into(), "<|im_end|>".into()],
            eos_ids: vec![2],
            max_turns: 1,
            guide: None,
        }
    }
}

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqRequest {
    /// Prompt token ids (already templated), non-empty.
    pub prompt_ids: Vec<u32>,
    /// Seed of this sequence's RNG, e.g. [`seq_seed`]`(run, row, attempt)`.
    pub seed: u64,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string ended a turn and the callback returned no tool text.
    Stop,
    /// An end-of-sequence token was sampled.
    Eos,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// A turn ended asking for a tool, but `max_turns` turns were used.
    MaxTurns,
}

/// Result of one sequence. `tokens`, `loss_mask`, `logprobs` and
/// `sample_logprobs` have one entry per completion token (prompt excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct SeqOutput {
    /// Completion token ids: sampled tokens and inserted tool tokens.
    pub tokens: Vec<u32>,
    /// 1 for sampled tokens, 0 for tool text.
    pub loss_mask: Vec<u8>,
    /// Log-prob of each sampled token under the model at the sampling
    /// temperature (1 when greedy) over the full vocabulary, with no top-k,
    /// top-p or guide truncation: the distribution the training loss scores
    /// ([`crate::model::train::selected_logprobs`] at the same temperature);
    /// 0 for tool tokens.
    pub logprobs: Vec<f32>,
    /// Log-prob under the distribution actually sampled from (temperature,
    /// top-k, top-p applied; 0 for greedy picks and tool tokens).
    pub sample_logprobs: Vec<f32>,
    /// Decoded completion (special tokens kept).
    pub text: String,
    pub finish: FinishReason,
    /// The stop string that ended the last turn, if any.
    pub stop: Option<String>,
    /// Model turns used.
    pub turns: usize,
}

/// Per-sequence seed from a run seed, a row id and an attempt number
/// (SplitMix64 finalizer over the combination).
pub fn seq_seed(run_seed: u64, row_id: u64, attempt: u64) -> u64 {
    let mut z = run_seed
        ^ row_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ attempt.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks the next token from `logits`; returns `(token, logprob at the
/// sampling temperature over the full vocabulary, logprob under the sampled
/// distribution)`.
pub fn sample_token(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut ChaCha8Rng,
) -> (u32, f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let raw_lp = |i: usize| full_logprob(logits, i as u32, params);
    if params.greedy || params.temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return (best as u32, raw_lp(best), 0.0);
    }
    let t = params.temperature;
    // Candidates with unnormalized weights exp((l - max) / t).
    let mut cand: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l - max) as f64 / t).exp()))
        .collect();
    // Descending weight, ties by id: a total, deterministic order.
    let desc = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.select_nth_unstable_by(params.top_k - 1, desc);
        cand.truncate(params.top_k);
        cand.sort_by(desc);
    }
    if params.top_p < 1.0 {
        // Only the smallest top-m set holding mass >= top_p needs sorting:
        // grow m until it does (exact, avoids sorting the whole vocab).
        let total: f64 = cand.iter().map(|c| c.1).sum();
        let mut m = 64;
        while m < cand.len() {
            cand.select_nth_unstable_by(m - 1, desc);
            if cand[..m].iter().map(|c| c.1).sum::<f64>() >= params.top_p * total {
                cand.truncate(m);
                break;
            }
            m *= 4;
        }
        cand.sort_by(desc);
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (j, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= params.top_p {
                keep = j + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    let u: f64 = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut pick = cand[cand.len() - 1];
    for &c in &cand {
        acc += c.1;
        if u < acc {
            pick = c;
            break;
        }
    }
    (pick.0 as u32, raw_lp(pick.0), (pick.1 / total).ln() as f32)
}

/// Samples with only `allowed` tokens (when given) and never `ban`; the returned log-prob at
/// temperature 1 is over the full vocabulary, as training computes it.
fn sample_constrained(
    logits: &[f32],
    allowed: Option<&[u32]>,
    ban: &[u32],
    params: &SamplingParams,
    rng: &mut ChaCha8Rng,
) -> (u32, f32, f32) {
    let mut masked = match allowed {
        Some(set) => {
            let mut m = vec![f32::NEG_INFINITY; logits.len()];
            for &t in set {
                if let Some(v) = logits.get(t as usize) {
                    m[t as usize] = *v;
                }
            }
            m
        }
        None => logits.to_vec(),
    };
    for &t in ban {
        if let Some(v) = masked.get_mut(t as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
    let (tok, _, slp) = sample_token(&masked, params, rng);
    (tok, full_logprob(logits, tok, params), slp)
}

/// The temperature log-probs are scored at: the sampling temperature, 1 when greedy.
pub fn scoring_temperature(params: &SamplingParams) -> f64 {
    if params.greedy || params.temperature <= 0.0 {
        1.0
    } else {
        params.temperature
    }
}

/// `log softmax(logits / T)[tok]` at the [`scoring_temperature`].
fn full_logprob(logits: &[f32], tok: u32, params: &SamplingParams) -> f32 {
    let t = scoring_temperature(params);
    if t == 1.0 {
        return (logits[tok as usize] as f64 - log_sum_exp(logits)) as f32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max / t
        + logits
            .iter()
            .map(|&l| ((l as f64 - max) / t).exp())
            .sum::<f64>()
            .ln();
    (logits[tok as usize] as f64 / t - lse) as f32
}

/// `log Σ exp(logits)`, computed stably in f64.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max as f64
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln()
}

/// After a turn that may call the tool: the sequence ends (no tool text, or no turns left) or
/// the tool's text is appended and the next turn starts.
fn after_turn(
    row: &mut Row,
    tokenizer: &Tokenizer,
    tool_text: Option<String>,
    max_turns: usize,
) -> Result<()> {
    match tool_text {
        None => {
            row.out.finish = FinishReason::Stop;
            row.done = true;
        }
        Some(_) if row.out.turns >= max_turns => {
            row.out.finish = FinishReason::MaxTurns;
            row.done = true;
        }
        Some(text) => append_tool_text(row, tokenizer, &text)?,
    }
    Ok(())
}

/// Appends tool text (loss mask 0) and starts the next turn.
fn append_tool_text(row: &mut Row, tokenizer: &Tokenizer, tool_text: &str) -> Result<()> {
    let enc = tokenizer
        .encode(tool_text, false)
        .map_err(|e| ModelError::Tokenize(e.to_string()))?;
    let ids = enc.get_ids();
    row.out.tokens.extend_from_slice(ids);
    row.out.loss_mask.extend(std::iter::repeat_n(0, ids.len()));
    row.out.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
    row.out
        .sample_logprobs
        .extend(std::iter::repeat_n(0.0, ids.len()));
    row.pending.extend_from_slice(ids);
    row.turn_start = row.out.tokens.len();
    row.out.turns += 1;
    if let Some(g) = &mut row.guide {
        g.on_tool_text();
    }
    Ok(())
}

struct Row {
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
}

/// Generates completions for `requests` together (see module doc).
/// `tool(seq_index, completion_text_so_far)` is called when a turn stops on
/// a stop string; returning `Some(text)` appends `text` (loss mask 0) and
/// starts another turn.
pub fn generate<F>(
    model: &Model,
    tokenizer: &Tokenizer,
    requests: &[SeqRequest],
    params: &SamplingParams,
    mut tool: F,
) -> Result<Vec<SeqOutput>>
where
    F: FnMut(usize, &str) -> Option<String>,
{
    let max_pos = model.config().max_position_embeddings;
    let mut rows = Vec::with_capacity(requests.len());
    for r in requests {
        if r.prompt_ids.is_empty() || r.prompt_ids.len() >= max_pos {
            return Err(ModelError::InvalidArgument(format!(
                "prompt of {} tokens (must be 1..{max_pos})",
                r.prompt_ids.len()
            )));
        }
        rows.push(Row {
            guide: params
                .guide
                .as_ref()
                .map(|g| GuideState::new(g, &params.eos_ids)),
            cache: model.new_cache(),
            rng: ChaCha8Rng::seed_from_u64(r.seed),
            pending: r.prompt_ids.clone(),
            out: SeqOutput {
                tokens: Vec::new(),
                loss_mask: Vec::new(),
                logprobs: Vec::new(),
                sample_logprobs: Vec::new(),
                text: String::new(),
                finish: FinishReason::Length,
                stop: None,
                turns: 1,
            },
            turn_start: 0,
            sampled: 0,
            done: params.max_new_tokens == 0,
        });
    }
    let decode = |ids: &[u32]| {
        tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    };
    loop {
        let active: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].done).collect();
        if active.is_empty() {
            break;
        }
        let logits = {
            let chunks: Vec<Vec<u32>> = active.iter().map(|&i| rows[i].pending.clone()).collect();
            let chunk_refs: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
            let mut caches: Vec<&mut SeqCache> = rows
                .iter_mut()
                .filter(|r| !r.done)
                .map(|r| &mut r.cache)
                .collect();
            let logits: Tensor = model.forward_step(&chunk_refs, &mut caches)?;
            logits.to_vec2::<f32>()?
        };
        for (k, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            let tools_left = row.out.turns < params.max_turns;
            let len = row.out.tokens.len();
            let remaining = params.max_new_tokens.saturating_sub(row.sampled);
            let next = match &mut row.guide {
                Some(g) => Some(g.next(tokenizer, tools_left, len, remaining)?),
                None => None,
            };
            let (tok, lp, slp, forced) = match &next {
                None => {
                    let (t, lp, slp) = sample_token(&logits[k], params, &mut row.rng);
                    (t, lp, slp, false)
                }
                Some(Next::Force(t)) => (*t, full_logprob(&logits[k], *t, params), 0.0, true),
                Some(Next::Free { ban }) => {
                    let (t, lp, slp) =
                        sample_constrained(&logits[k], None, ban, params, &mut row.rng);
                    (t, lp, slp, false)
                }
                Some(Next::Choose(set)) => {
                    let (t, lp, slp) =
                        sample_constrained(&logits[k], Some(set), &[], params, &mut row.rng);
                    (t, lp, slp, false)
                }
            };
            let in_loss = !forced || row.guide.as_ref().is_some_and(|g| g.forced_in_loss());
            row.out.tokens.push(tok);
            row.out.loss_mask.push(u8::from(in_loss));
            row.out.logprobs.push(lp);
            row.out.sample_logprobs.push(slp);
            row.sampled += 1;
            row.pending = vec![tok];
            if let Some(g) = &mut row.guide {
                let tokens = &row.out.tokens;
                let start = g.phase_start.min(tokens.len());
                g.observe(tokenizer, tok, tokens.len(), || decode(&tokens[start..]))?;
                match g.turn_end() {
                    Some(TurnEnd::Done) => {
                        row.out.finish = FinishReason::Stop;
                        row.done = true;
                    }
                    Some(TurnEnd::Tool) => {
                        let text = decode(&row.out.tokens)?;
                        after_turn(row, tokenizer, tool(i, &text), params.max_turns)?;
                    }
                    None => {}
                }
            } else if params.eos_ids.contains(&tok) {
                row.out.finish = FinishReason::Eos;
                row.done = true;
                continue;
            } else {
                let turn_text = decode(&row.out.tokens[row.turn_start..])?;
                let hit = params
                    .stop_strings
                    .iter()
                    .filter_map(|s| turn_text.find(s.as_str()).map(|p| (p, s)))
                    .min_by_key(|(p, _)| *p)
                    .map(|(_, s)| s.clone());
                if let Some(stop) = hit {
                    row.out.stop = Some(stop);
                    let text = decode(&row.out.tokens)?;
                    after_turn(row, tokenizer, tool(i, &text), params.max_turns)?;
                }
            }
            if !row.done
                && (row.sampled >= params.max_new_tokens
                    || row.cache.len() + row.pending.len() >= max_pos)
            {
                row.out.finish = FinishReason::Length;
                row.done = true;
            }
        }
    }
    for row in &mut rows {
        row.out.text = decode(&row.out.tokens)?;
    }
    Ok(rows.into_iter().map(|r| r.out).collect())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::llama::load_tokenizer;
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

    #[test]
    fn sampler_truncation() {
        let logits = vec![0.0f32, 3.0, 1.0, 2.9];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = |k, top_p| SamplingParams {
            top_k: k,
            top_p,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, &p(1, 1.0), &mut rng).0, 1);
            assert_eq!(sample_token(&logits, &p(0, 1e-6), &mut rng).0, 1);
            let t = sample_token(&logits, &p(2, 1.0), &mut rng).0;
            assert!(t == 1 || t == 3);
        }
        let g = SamplingParams {
            greedy: true,
            ..Default::default()
        };
        let (t, lp, _) = sample_token(&logits, &g, &mut rng);
        let lse = logits.iter().map(|l| (*l as f64).exp()).sum::<f64>().ln();
        assert_eq!(t, 1);
        assert!((lp as f64 - (3.0 - lse)).abs() < 1e-6);
        assert_ne!(seq_seed(1, 2, 0), seq_seed(1, 2, 1));
        assert_ne!(seq_seed(1, 2, 0), seq_seed(1, 3, 0));
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
        let prompt = crate::model::llama::render_chatml(
            &[(
                "user",
                "Write a short story about a robot learning to paint.",
            )],
            Some(crate::model::llama::SMOLLM2_DEFAULT_SYSTEM),
            true,
        );
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
    use crate::model::llama::load_tokenizer;
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
