//! Sampling one token: temperature / top-k / top-p / greedy, guided choices, the log-probs
//! training scores; the settings and results of a generation call ([`super::generate`] runs it).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::generate::Batching;
use super::guide::Guide;

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
    /// How the call's requests are scheduled (batch size, continuous batching, prefix sharing).
    pub batching: Batching,
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
            batching: Batching::default(),
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

impl FinishReason {
    /// The word a trajectory shard's `finish_reason` column holds.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::MaxTurns => "max_turns",
        }
    }
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
    /// ([`crate::model::scoring::selected_logprobs`] at the same temperature);
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
pub(crate) fn seq_seed(run_seed: u64, row_id: u64, attempt: u64) -> u64 {
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
pub(crate) fn sample_token(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut ChaCha8Rng,
) -> (u32, f32, f32) {
    sample(logits, params, rng, true)
}

/// [`sample_token`]; the full-vocabulary log-prob (the second value) is computed only when
/// `full_lp` asks for it, and is 0 otherwise.
fn sample(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut ChaCha8Rng,
    full_lp: bool,
) -> (u32, f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let raw_lp = |i: usize| match full_lp {
        true => full_logprob(logits, i as u32, params),
        false => 0.0,
    };
    if is_greedy(params) {
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
    // At T = 1 these weights are the terms of the full log-prob's sum (x / 1 is x), in the same
    // order before anything reorders them: summed here, the vocabulary is exponentiated once.
    let log_sum =
        (full_lp && t == 1.0).then(|| max as f64 + cand.iter().map(|c| c.1).sum::<f64>().ln());
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
    let lp = match log_sum {
        Some(lse) => (logits[pick.0] as f64 - lse) as f32,
        None => raw_lp(pick.0),
    };
    (pick.0 as u32, lp, (pick.1 / total).ln() as f32)
}

/// Samples with only `allowed` tokens (when given) and never `ban`; the returned log-prob at
/// temperature 1 is over the full vocabulary, as training computes it.
pub(crate) fn sample_constrained(
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
    let (tok, _, slp) = sample(&masked, params, rng, false);
    (tok, full_logprob(logits, tok, params), slp)
}

/// Whether `params` pick the most likely token instead of sampling.
pub(crate) fn is_greedy(params: &SamplingParams) -> bool {
    params.greedy || params.temperature <= 0.0
}

/// The temperature log-probs are scored at: the sampling temperature, 1 when greedy.
pub(crate) fn scoring_temperature(params: &SamplingParams) -> f64 {
    if is_greedy(params) {
        1.0
    } else {
        params.temperature
    }
}

/// `log softmax(logits / T)[tok]` at the [`scoring_temperature`].
pub(crate) fn full_logprob(logits: &[f32], tok: u32, params: &SamplingParams) -> f32 {
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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

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

    /// The log-prob a sampled token comes with is [`full_logprob`]'s, bit for bit, at T = 1
    /// (where the sampler's weights serve as its sum) and elsewhere, with and without truncation.
    #[test]
    fn sampled_logprob_is_the_full_logprob() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for trial in 0..200 {
            let logits: Vec<f32> = (0..500)
                .map(|_| rng.random::<f32>() * 20.0 - 10.0 + (trial % 3) as f32)
                .collect();
            let params = SamplingParams {
                temperature: [1.0, 0.7, 1.3][trial % 3],
                top_k: [0, 50][trial % 2],
                top_p: [1.0, 0.9, 0.95, 1.0][trial % 4],
                ..Default::default()
            };
            let (tok, lp, _) = sample_token(&logits, &params, &mut rng);
            let want = full_logprob(&logits, tok, &params);
            assert_eq!(
                lp.to_bits(),
                want.to_bits(),
                "trial {trial}: {lp} vs {want}"
            );
        }
    }
}
