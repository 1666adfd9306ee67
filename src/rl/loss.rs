//! The policy-gradient loss every trained role uses: PPO's clipped surrogate on the ratio to the
//! sampling-time log-probs, an optional k3 KL to a reference model and an optional entropy bonus,
//! aggregated as `loss_type` says. This is the one implementation; `train` calls it and the
//! parity script (`scripts/check-grpo-parity.sh`) compares it with TRL's `_compute_loss`.
//!
//! Shard-parallel training needs the loss of a mini-batch to be a *sum* of per-sequence terms,
//! so that workers can each sum their part and `apply` adds the parts. Every aggregation here is
//! one: a token `t` of sequence `i` enters with the weight [`sequence_weight`] gives `i`, computed
//! from counts over the whole mini-batch (which every worker knows, because every worker reads
//! the same reward rows), not over the worker's part.
//!
//! | `loss_type` | weight of a token of sequence `i` (role `ρ`) | as in |
//! |---|---|---|
//! | `grpo` | `w_ρ / (n_ρ · T_i)`: token mean per sequence, mean over sequences | TRL `grpo` |
//! | `token_mean` | `w_ρ / Σ_ρ T`: every token of the role counts alike | TRL `dapo`/`bnpo`, verl `token-mean` |
//! | `dr_grpo` | `w_ρ / (n_ρ · L_max)`: a constant normaliser, no length bias | TRL `dr_grpo` |
//!
//! `n_ρ` is the role's sequences in the mini-batch, `T_i` the loss tokens of sequence `i` and
//! `w_ρ` the role's weight (`train.<role>_weight`), so each role's update is a mean over its own
//! rows and the policy's is never diluted by the GRM's row count.

use candle_core::{D, DType, Tensor};

use crate::model::ModelError;
use crate::model::fused::target_logprobs;
use crate::model::llama::Model;
use crate::model::scoring::{LossPositions, SeqBatch, selected_logits_from};

type Result<T> = std::result::Result<T, ModelError>;

/// How per-token losses are aggregated into a mini-batch loss (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    Grpo,
    DrGrpo,
    TokenMean,
}

impl LossType {
    pub(crate) const NAMES: &'static str = "grpo, dr_grpo, token_mean";

    pub fn as_str(self) -> &'static str {
        match self {
            LossType::Grpo => "grpo",
            LossType::DrGrpo => "dr_grpo",
            LossType::TokenMean => "token_mean",
        }
    }
}

impl std::str::FromStr for LossType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "grpo" => Ok(LossType::Grpo),
            "dr_grpo" => Ok(LossType::DrGrpo),
            "token_mean" => Ok(LossType::TokenMean),
            _ => Err(format!("unknown loss_type {s:?} ({})", LossType::NAMES)),
        }
    }
}

/// The loss's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub loss_type: LossType,
    /// Lower clip range: the ratio is clipped at `1 - eps_low`.
    pub eps_low: f64,
    /// Upper clip range (DAPO's clip-higher when above `eps_low`).
    pub eps_high: f64,
    /// Weight of the k3 KL to the reference (0: none).
    pub beta: f64,
    /// Weight of the entropy bonus (0: none); the entropy is aggregated like the loss.
    pub entropy_coef: f64,
    /// `dr_grpo`'s constant normaliser `L_max`.
    pub max_completion_length: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            loss_type: LossType::Grpo,
            eps_low: 0.2,
            eps_high: 0.2,
            beta: 0.0,
            entropy_coef: 0.0,
            max_completion_length: 512,
        }
    }
}

/// The counts over a whole mini-batch that a role's sequences are normalised by.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoleCounts {
    /// The role's weight `w_ρ`.
    pub weight: f64,
    /// Sequences of the role in the mini-batch.
    pub sequences: usize,
    /// Loss tokens of the role in the mini-batch.
    pub tokens: u64,
}

/// The weight each loss token of a sequence with `tokens` loss tokens enters the loss with.
pub fn sequence_weight(cfg: &LossConfig, role: &RoleCounts, tokens: u32) -> f64 {
    if tokens == 0 || role.sequences == 0 {
        return 0.0;
    }
    let n = role.sequences as f64;
    match cfg.loss_type {
        LossType::Grpo => role.weight / (n * f64::from(tokens)),
        LossType::TokenMean => role.weight / role.tokens.max(1) as f64,
        LossType::DrGrpo => role.weight / (n * cfg.max_completion_length.max(1) as f64),
    }
}

/// verl's `low_var_kl`: the k3 estimator `exp(ref - logp) - (ref - logp) - 1`, with the log-ratio
/// clamped to ±20 and the result to ±10, so one token the reference finds very unlikely cannot
/// blow the loss up.
pub(crate) fn kl_k3_clamped(logp: &Tensor, ref_logp: &Tensor) -> Result<Tensor> {
    let d = (ref_logp - logp)?.clamp(-20f32, 20f32)?;
    Ok(((d.exp()? - &d)? - 1.0)?.clamp(-10f32, 10f32)?)
}

/// Per-token entropies `(N,)` of rows of logits `(N, V)`, differentiable.
pub(crate) fn entropy_of_logits(logits: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// The loss's inputs, all `(N,)` over the loss tokens of the sequences a worker holds.
pub struct TokenBatch<'a> {
    /// Log-probs under the model being trained (differentiable), at the sampling temperature.
    pub logp: &'a Tensor,
    /// Log-probs recorded when the tokens were sampled.
    pub old_logp: &'a Tensor,
    /// Log-probs under the KL reference (needed when `beta > 0`).
    pub ref_logp: Option<&'a Tensor>,
    /// Entropy of each token's distribution: differentiable when `entropy_coef > 0`, else
    /// detached (reported only).
    pub entropy: &'a Tensor,
    /// Truncated importance weights `min(exp(old − behaviour), cap)` (detached) correcting for a
    /// token drawn from a truncated distribution (top-p, guide masks): TRL's correction for the
    /// sampler/trainer mismatch. `None`: every weight 1.
    pub is_weights: Option<&'a Tensor>,
    /// The sequence (0..B) each token belongs to.
    pub seq: &'a [usize],
    /// Each sequence's advantage.
    pub advantages: &'a [f32],
    /// Each sequence's [`sequence_weight`].
    pub weights: &'a [f64],
}

/// Statistics of one sequence's tokens (means over its loss tokens).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeqStats {
    /// Mean per-token loss (surrogate + KL − entropy bonus), before weighting.
    pub loss: f32,
    pub mean_ratio: f32,
    /// Mean `r²`, with `mean_ratio` the spread of the ratios.
    pub mean_ratio_sq: f32,
    /// Mean `|log r|`: how far the sampling-time log-probs are from these (at a round's first
    /// step, only the sampling precision and the kernels separate them).
    pub abs_log_ratio: f32,
    /// Share of tokens whose clipping is active for the advantage's sign (TRL's count: ratio
    /// below `1 - eps_low` with a negative advantage, above `1 + eps_high` with a positive one).
    pub clip_fraction: f32,
    pub kl: f32,
    pub entropy: f32,
    pub tokens: u32,
}

/// The weighted sum `Σ_t weight(seq(t)) · ℓ_t` (a scalar to differentiate) and each sequence's
/// statistics, where `ℓ_t = -ρ_t min(r_t A, clip(r_t, 1-ε_lo, 1+ε_hi) A) + β k3_t - c H_t` and
/// `ρ_t` is the truncated importance weight (1 without one).
pub fn policy_loss(cfg: &LossConfig, b: &TokenBatch) -> Result<(Tensor, Vec<SeqStats>)> {
    let n = b.seq.len();
    let sequences = b.advantages.len();
    if b.weights.len() != sequences || b.seq.iter().any(|&s| s >= sequences) {
        return Err(ModelError::InvalidArgument(format!(
            "policy_loss: {sequences} advantages, {} weights, and a token of sequence {}",
            b.weights.len(),
            b.seq.iter().max().copied().unwrap_or(0)
        )));
    }
    if n == 0 {
        return Err(ModelError::InvalidArgument(
            "policy_loss: the batch has no loss tokens".into(),
        ));
    }
    let dev = b.logp.device();
    let adv_tok: Vec<f32> = b.seq.iter().map(|&s| b.advantages[s]).collect();
    let w_tok: Vec<f32> = b.seq.iter().map(|&s| b.weights[s] as f32).collect();
    let adv = Tensor::from_vec(adv_tok.clone(), n, dev)?;
    let w = Tensor::from_vec(w_tok, n, dev)?;

    let r = (b.logp - b.old_logp)?.exp()?;
    let unclipped = (&r * &adv)?;
    let clipped = (r.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)? * &adv)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    if let Some(w) = b.is_weights {
        per_token = (per_token * w.detach())?;
    }
    let kl = match (b.ref_logp, cfg.beta != 0.0) {
        (Some(rl), true) => {
            let k = kl_k3_clamped(b.logp, rl)?;
            per_token = (per_token + (&k * cfg.beta)?)?;
            Some(k)
        }
        (None, true) => {
            return Err(ModelError::InvalidArgument(
                "policy_loss: beta > 0 needs the reference log-probs".into(),
            ));
        }
        _ => None,
    };
    if cfg.entropy_coef != 0.0 {
        per_token = (per_token - (b.entropy * cfg.entropy_coef)?)?;
    }
    let total = (&per_token * &w)?.sum_all()?;

    // Statistics, detached.
    let ratios = r.detach().to_vec1::<f32>()?;
    let clipped_active: Vec<f32> = ratios
        .iter()
        .zip(&adv_tok)
        .map(|(&ratio, &a)| {
            let low = f64::from(ratio) < 1.0 - cfg.eps_low && a < 0.0;
            let high = f64::from(ratio) > 1.0 + cfg.eps_high && a > 0.0;
            f32::from(u8::from(low || high))
        })
        .collect();
    let mut tokens = vec![0u32; sequences];
    for &s in b.seq {
        tokens[s] += 1;
    }
    let per_seq = |v: &[f32]| -> Vec<f32> {
        let mut sums = vec![0f32; sequences];
        for (x, &s) in v.iter().zip(b.seq) {
            sums[s] += x;
        }
        sums.iter()
            .zip(&tokens)
            .map(|(sum, &t)| sum / t.max(1) as f32)
            .collect()
    };
    let losses = per_seq(&per_token.detach().to_vec1::<f32>()?);
    let mean_ratio = per_seq(&ratios);
    let mean_ratio_sq = per_seq(&ratios.iter().map(|r| r * r).collect::<Vec<_>>());
    let abs_log_ratio = per_seq(&ratios.iter().map(|r| r.ln().abs()).collect::<Vec<_>>());
    let clips = per_seq(&clipped_active);
    let kls = match &kl {
        Some(k) => per_seq(&k.detach().to_vec1::<f32>()?),
        None => vec![0.0; sequences],
    };
    let entropies = per_seq(&b.entropy.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?);
    let stats = (0..sequences)
        .map(|i| SeqStats {
            loss: losses[i],
            mean_ratio: mean_ratio[i],
            mean_ratio_sq: mean_ratio_sq[i],
            abs_log_ratio: abs_log_ratio[i],
            clip_fraction: clips[i],
            kl: kls[i],
            entropy: entropies[i],
            tokens: tokens[i],
        })
        .collect();
    Ok((total, stats))
}

/// One micro-batch of one role sampled at one temperature, as the trainer holds it.
pub struct MicroBatch<'a> {
    pub batch: &'a SeqBatch,
    pub pos: &'a LossPositions,
    /// The temperature the sequences were sampled at; the loss scores the same distribution.
    pub temperature: f64,
    /// Sampling-time log-probs `(N,)` over `pos`.
    pub old_logp: &'a Tensor,
    pub is_weights: Option<&'a Tensor>,
    /// One advantage per sequence.
    pub advantages: &'a [f32],
    /// The role's counts over the whole mini-batch (the loss's normalisers).
    pub counts: &'a RoleCounts,
}

/// The KL reference of a loss: a model, and how many of its leading layers (with the
/// embeddings) equal the trained model's bit for bit (`Trainer::layers_shared_with`; 0 for
/// none). The shared layers run once for both models: with the default's last-4-block training
/// that is 26 of SmolLM2's 30, most of the reference's forward.
#[derive(Debug, Clone, Copy)]
pub struct Reference<'a> {
    pub model: &'a Model,
    pub shared_layers: usize,
}

/// The loss of a micro-batch under `model`: log-probs at the sampling temperature (with a
/// differentiable entropy when the bonus is on), the reference's log-probs when `beta > 0`, each
/// sequence's [`sequence_weight`], then [`policy_loss`]. `train` and the parity check both call
/// this, so the check measures what training runs.
pub fn micro_batch_loss(
    cfg: &LossConfig,
    model: &Model,
    reference: Option<Reference>,
    mb: &MicroBatch,
) -> Result<(Tensor, Vec<SeqStats>)> {
    let reference = reference.filter(|_| cfg.beta > 0.0);
    let (ids, mask) = (&mb.batch.input_ids, &mb.batch.attention_mask);
    // The layers both models share, once; nothing in them trains, so no graph is kept.
    let shared = model.forward_partial(ids, mask, reference.map_or(0, |r| r.shared_layers))?;
    let logits = selected_logits_from(model, &shared, mb.batch, mb.pos, mb.temperature)?;
    let targets = Tensor::from_slice(&mb.pos.targets, mb.pos.targets.len(), logits.device())?;
    let (logp, entropy) = target_logprobs(&logits, &targets)?;
    // The bonus needs an entropy the gradient flows through; the stats' detached one will do
    // otherwise.
    let entropy = if cfg.entropy_coef > 0.0 {
        entropy_of_logits(&logits)?
    } else {
        entropy
    };
    let ref_logp = match reference {
        Some(r) => {
            let logits = selected_logits_from(r.model, &shared, mb.batch, mb.pos, mb.temperature)?;
            Some(target_logprobs(&logits, &targets)?.0.detach())
        }
        None => None,
    };
    let weights: Vec<f64> = mb
        .pos
        .tokens
        .iter()
        .map(|&t| sequence_weight(cfg, mb.counts, t))
        .collect();
    policy_loss(
        cfg,
        &TokenBatch {
            logp: &logp,
            old_logp: mb.old_logp,
            ref_logp: ref_logp.as_ref(),
            entropy: &entropy,
            is_weights: mb.is_weights,
            seq: &mb.pos.seq,
            advantages: mb.advantages,
            weights: &weights,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        f64::from(x.to_scalar::<f32>().unwrap())
    }

    /// Two sequences of one role: A has 2 tokens, B has 1.
    fn role(weight: f64) -> RoleCounts {
        RoleCounts {
            weight,
            sequences: 2,
            tokens: 3,
        }
    }

    #[test]
    fn weights_by_loss_type_by_hand() {
        let c = |loss_type| LossConfig {
            loss_type,
            max_completion_length: 10,
            ..LossConfig::default()
        };
        let r = role(1.0);
        assert_eq!(sequence_weight(&c(LossType::Grpo), &r, 2), 1.0 / 4.0);
        assert_eq!(sequence_weight(&c(LossType::Grpo), &r, 1), 1.0 / 2.0);
        assert_eq!(sequence_weight(&c(LossType::TokenMean), &r, 2), 1.0 / 3.0);
        assert_eq!(sequence_weight(&c(LossType::TokenMean), &r, 1), 1.0 / 3.0);
        assert_eq!(sequence_weight(&c(LossType::DrGrpo), &r, 1), 1.0 / 20.0);
        assert_eq!(sequence_weight(&c(LossType::Grpo), &role(0.5), 1), 0.25);
        assert_eq!(sequence_weight(&c(LossType::Grpo), &r, 0), 0.0);
        assert!(
            "dapo"
                .parse::<LossType>()
                .unwrap_err()
                .contains("token_mean")
        );
    }

    /// Tokens: A = (ratio e^0.1, e^-0.3), B = (ratio 1); advantages A +1, B -1; eps 0.2.
    /// A's first token is unclipped (1.105 < 1.2): ℓ = -1.105; its second is below 0.8 with a
    /// positive advantage, so min(r·A, 0.8·A) = r·A = 0.741 (not clipped for its sign):
    /// ℓ = -0.741. B: ℓ = +1.
    #[test]
    fn each_loss_type_by_hand() {
        let logp = t(&[0.1, -0.3, 0.0]);
        let old = t(&[0.0, 0.0, 0.0]);
        let ent = t(&[0.5, 1.5, 1.0]);
        let seq = [0usize, 0, 1];
        let adv = [1.0f32, -1.0];
        let (e1, e2) = (0.1f64.exp(), (-0.3f64).exp());
        let per_tok = [-e1, -e2, 1.0];
        for (loss_type, expect) in [
            (
                LossType::Grpo,
                (per_tok[0] + per_tok[1]) / 2.0 / 2.0 + per_tok[2] / 2.0,
            ),
            (LossType::TokenMean, per_tok.iter().sum::<f64>() / 3.0),
            (LossType::DrGrpo, per_tok.iter().sum::<f64>() / (2.0 * 4.0)),
        ] {
            let cfg = LossConfig {
                loss_type,
                max_completion_length: 4,
                ..LossConfig::default()
            };
            let weights: Vec<f64> = [2u32, 1]
                .iter()
                .map(|&n| sequence_weight(&cfg, &role(1.0), n))
                .collect();
            let b = TokenBatch {
                logp: &logp,
                old_logp: &old,
                ref_logp: None,
                entropy: &ent,
                is_weights: None,
                seq: &seq,
                advantages: &adv,
                weights: &weights,
            };
            let (loss, stats) = policy_loss(&cfg, &b).unwrap();
            assert!((scalar(&loss) - expect).abs() < 1e-6, "{loss_type:?}");
            assert_eq!(stats[0].tokens, 2);
            assert!((f64::from(stats[0].mean_ratio) - (e1 + e2) / 2.0).abs() < 1e-6);
            assert_eq!(stats[0].clip_fraction, 0.0);
            assert!((stats[0].entropy - 1.0).abs() < 1e-6);
        }
    }

    /// Clipping counted as TRL does: above 1+ε with A > 0 and below 1−ε with A < 0 count, the
    /// other two do not; the clipped token's loss is the clipped value.
    #[test]
    fn clip_fraction_counts_only_active_clipping() {
        let logp = t(&[0.5, 0.5, -0.5, -0.5]);
        let old = t(&[0.0; 4]);
        let ent = t(&[0.0; 4]);
        let seq = [0usize, 1, 2, 3];
        let adv = [1.0f32, -1.0, 1.0, -1.0];
        let cfg = LossConfig {
            eps_high: 0.28,
            ..LossConfig::default()
        };
        let weights = [1.0; 4];
        let b = TokenBatch {
            logp: &logp,
            old_logp: &old,
            ref_logp: None,
            entropy: &ent,
            is_weights: None,
            seq: &seq,
            advantages: &adv,
            weights: &weights,
        };
        let (loss, stats) = policy_loss(&cfg, &b).unwrap();
        let clips: Vec<f32> = stats.iter().map(|s| s.clip_fraction).collect();
        assert_eq!(clips, vec![1.0, 0.0, 0.0, 1.0]);
        let (up, down) = (0.5f64.exp(), (-0.5f64).exp());
        // -min(1.65, 1.28) ; -min(-1.65, -1.28) ; -min(0.61, 0.8) ; -min(-0.61, -0.8)
        let expect = -1.28 + up - down + 0.8;
        assert!((scalar(&loss) - expect).abs() < 1e-5, "{}", scalar(&loss));
    }

    #[test]
    fn k3_is_clamped_and_entropy_bonus_lowers_the_loss() {
        let logp = t(&[0.0, -30.0]);
        let reference = t(&[0.0, 0.0]);
        let k = kl_k3_clamped(&logp, &reference)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(k[0], 0.0);
        assert_eq!(k[1], 10.0);
        let logp = t(&[-0.2]);
        let reference = t(&[0.1]);
        let ent = t(&[2.0]);
        let cfg = LossConfig {
            beta: 0.5,
            entropy_coef: 0.1,
            ..LossConfig::default()
        };
        let b = TokenBatch {
            logp: &logp,
            old_logp: &logp,
            ref_logp: Some(&reference),
            entropy: &ent,
            is_weights: None,
            seq: &[0],
            advantages: &[0.0],
            weights: &[1.0],
        };
        let (loss, stats) = policy_loss(&cfg, &b).unwrap();
        let k3 = 0.3f64.exp() - 0.3 - 1.0;
        assert!((scalar(&loss) - (0.5 * k3 - 0.2)).abs() < 1e-6);
        assert!((f64::from(stats[0].kl) - k3).abs() < 1e-6);
        let no_ref = TokenBatch {
            ref_logp: None,
            ..b
        };
        assert!(policy_loss(&cfg, &no_ref).is_err());
    }

    /// The KL reference finishing the trainer's own pass through the layers they share gives
    /// the loss and every gradient bit for bit as a reference that runs its whole stack.
    #[test]
    fn a_shared_reference_prefix_changes_no_bit() {
        use crate::model::scoring::build_batch;
        use crate::model::test_util::tiny_model;
        use crate::model::train::{TrainConfig, Trainer};
        let Some(dir) = tiny_model(5) else { return };
        let dev = Device::Cpu;
        let train_cfg = TrainConfig {
            lr: 3e-3,
            train_last_k: Some(1),
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::load(&dir, &dev, train_cfg).unwrap();
        let reference = Model::load(&dir, &dev).unwrap();
        let seqs = vec![
            (
                vec![1u32, 19556, 905],
                vec![520u32, 33, 34, 35, 2],
                vec![1u8; 5],
            ),
            (vec![1u32, 11], vec![7u32, 8, 9], vec![1u8, 0, 1]),
        ];
        let batch = build_batch(&seqs, 2, &dev).unwrap();
        let pos = LossPositions::of(&batch).unwrap();
        let n = pos.flat.len();
        let old = Tensor::zeros(n, DType::F32, &dev).unwrap();
        let counts = RoleCounts {
            weight: 1.0,
            sequences: 2,
            tokens: n as u64,
        };
        let mb = MicroBatch {
            batch: &batch,
            pos: &pos,
            temperature: 0.7,
            old_logp: &old,
            is_weights: None,
            advantages: &[1.0, -0.5],
            counts: &counts,
        };
        let cfg = LossConfig {
            beta: 0.1,
            entropy_coef: 0.01,
            ..LossConfig::default()
        };
        let run = |trainer: &Trainer, shared_layers: usize| {
            let r = Reference {
                model: &reference,
                shared_layers,
            };
            let (loss, stats) = micro_batch_loss(&cfg, trainer.model(), Some(r), &mb).unwrap();
            let grads = trainer.backward(&loss).unwrap();
            let grads = trainer.export_grads(&grads).unwrap();
            let kl: Vec<u32> = stats.iter().map(|s| s.kl.to_bits()).collect();
            (loss.to_scalar::<f32>().unwrap().to_bits(), kl, grads)
        };
        // One step first, so the trainer's last layer differs from the reference's.
        let (_, _, g) = run(&trainer, 0);
        trainer.step_with_grads(&g).unwrap();
        let weights = crate::model::io::load_safetensors_dir(&dir, &dev).unwrap();
        assert_eq!(trainer.layers_shared_with(&weights).unwrap(), 1);
        let (loss0, kl0, grads0) = run(&trainer, 0);
        let (loss1, kl1, grads1) = run(&trainer, 1);
        assert!(
            kl0.iter().any(|&k| f32::from_bits(k) > 0.0),
            "a KL term to compare"
        );
        assert_eq!((loss0, &kl0), (loss1, &kl1));
        assert_eq!(grads0.len(), grads1.len());
        for (a, b) in grads0.iter().zip(&grads1) {
            assert_eq!(a.name, b.name);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.values), bits(&b.values), "{}", a.name);
        }
    }
}
