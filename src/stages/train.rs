//! Stage `train`: one data-parallel GRPO worker for one optimizer step. A round's training rows
//! (every role whose rewards say `train`, non-zero advantage) are split into `steps_per_round`
//! mini-batches, and the split is made again for each of `epochs` passes, so a round takes
//! `steps_per_round × epochs` optimizer steps; `train` and `apply` run once per step (the runner
//! repeats them as a block, `asl train --step S` runs one by hand). Step `S` turns its
//! mini-batch's sequences owned by this worker (`--shard i/n`) into a `gradients` shard, one
//! gradient per role already weighted as the loss says ([`crate::rl::loss`]), and an `updates`
//! shard of per-sequence statistics; `apply` sums the workers' shards and takes the step.
//!
//! Every worker reads the same reward rows, so every worker knows the whole mini-batch and its
//! per-role counts, and the loss normalisers are the mini-batch's, whatever the worker count.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::agent::{CHECKPOINT_UPSTREAM, checkpoint_dir, device_spec, placement};
use super::kit::{training_sequence, trajectories};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::io::load_safetensors_dir;
use crate::model::llama::Model;
use crate::model::placement::Quant;
use crate::model::scoring::{LossPositions, build_batch};
use crate::model::train::{NamedGrad, TrainConfig, Trainer, sum_grads};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::loss::{LossConfig, LossType, MicroBatch, Reference, RoleCounts, micro_batch_loss};
use crate::seed::derive_seed;
use crate::shards::rows::{GradientRow, RewardRow, TrajectoryRow, UpdateRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub(crate) struct TrainStage;

/// The roles that can train, in the order their gradients are written and summed.
const ROLES: [&str; 3] = ["generator", "grm", "policy"];

/// `train_last_k` as the trainer takes it: 0 means every tensor.
pub(crate) fn last_k(params: &Params) -> Option<usize> {
    match params.u64("train_last_k") {
        0 => None,
        k => Some(k as usize),
    }
}

/// The train stage's parameters, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub steps_per_round: u32,
    pub epochs: u32,
    pub loss: LossConfig,
    /// Cap of the truncated importance weight `min(π_T / μ, cap)` that corrects for sampling
    /// from a truncated distribution (top-p, guide masks); 0 turns the correction off.
    pub truncation_is_cap: f64,
    pub micro_batch: usize,
    /// `w_ρ` per role.
    pub weights: BTreeMap<&'static str, f64>,
    /// Where the matrix products run in bf16 on the CPU's bf16 kernel (`precision`).
    pub precision: Precision,
}

fn non_negative_int(params: &Params, key: &str) -> Result<u64> {
    let v = params.get(key);
    v.and_then(serde_json::Value::as_u64).ok_or_else(|| {
        Error::param(
            format!("train.{key}"),
            format!(
                "expected a non-negative integer, got {}",
                v.map_or("nothing".to_string(), |v| v.to_string())
            ),
        )
    })
}

fn number_at_least(params: &Params, key: &str, min: f64) -> Result<f64> {
    let x = params.f64(key);
    if x.is_finite() && x >= min {
        Ok(x)
    } else {
        Err(Error::param(
            format!("train.{key}"),
            format!("{x} is out of range (a number >= {min})"),
        ))
    }
}

pub fn settings(params: &Params) -> Result<Settings> {
    let positive = |key: &str| -> Result<u32> {
        let n = non_negative_int(params, key)?;
        u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
            Error::param(
                format!("train.{key}"),
                format!("{n} is out of range (1..=100000)"),
            )
        })
    };
    let steps_per_round = positive("steps_per_round")?;
    let epochs = positive("epochs")?;
    if u64::from(steps_per_round) * u64::from(epochs) > 100_000 {
        return Err(Error::param(
            "train.steps_per_round",
            "steps_per_round × epochs is above 100000",
        ));
    }
    let loss_type: LossType = params
        .str("loss_type")
        .parse()
        .map_err(|e: String| Error::param("train.loss_type", e))?;
    let eps_low = number_at_least(params, "clip_eps", 0.0)?;
    let eps_high = match params.f64("clip_eps_high") {
        x if x < 0.0 => eps_low,
        _ => number_at_least(params, "clip_eps_high", 0.0)?,
    };
    let max_len = positive("max_completion_length")?;
    let mut weights = BTreeMap::new();
    for role in ROLES {
        weights.insert(
            role,
            number_at_least(params, &format!("{role}_weight"), 0.0)?,
        );
    }
    Ok(Settings {
        steps_per_round,
        epochs,
        loss: LossConfig {
            loss_type,
            eps_low,
            eps_high,
            beta: number_at_least(params, "kl_beta", 0.0)?,
            entropy_coef: number_at_least(params, "entropy_coef", 0.0)?,
            max_completion_length: max_len as usize,
        },
        truncation_is_cap: number_at_least(params, "truncation_is_cap", 0.0)?,
        micro_batch: positive("micro_batch")? as usize,
        weights,
        precision: precision(params, "train")?,
    })
}

/// `precision` of `train` and `warmup`: where the training step's matrix products round to bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything f32: the log-probs the loss sees are the f32 ones.
    F32,
    /// The layers before the trained blocks (no gradient) in bf16 (AMX tiles or AVX-512-BF16).
    AmxBf16Frozen,
    /// Every projection and the head in bf16, forward and backward.
    AmxBf16,
}

/// The `precision` parameter of the stages that train (`train`, `warmup`).
pub(crate) fn precision_spec() -> ParamSpec {
    ParamSpec::new(
        "precision",
        "f32",
        "matrix products of the training step: f32; amx_bf16_frozen (bf16 on AMX tiles or AVX-512-BF16, f32 accumulation, in the layers before the trained blocks, which carry no gradient); amx_bf16 (every projection and the head, forward and backward, as autocast(bfloat16)); norms, attention, loss and weights stay f32",
    )
    .one_of(&["f32", "amx_bf16_frozen", "amx_bf16"])
}

/// `STAGE.precision`, checked: the AMX variants need a CPU with AMX, and `amx_bf16_frozen` layers
/// that do not train.
pub(crate) fn precision(params: &Params, stage: &str) -> Result<Precision> {
    let bad = |msg: &str| Error::param(format!("{stage}.precision"), msg);
    let p = match params.str("precision") {
        "f32" => return Ok(Precision::F32),
        "amx_bf16_frozen" if last_k(params).is_none() => {
            return Err(bad(
                "amx_bf16_frozen needs train_last_k > 0: with every weight training no layer is frozen",
            ));
        }
        "amx_bf16_frozen" => Precision::AmxBf16Frozen,
        "amx_bf16" => Precision::AmxBf16,
        other => {
            return Err(bad(&format!(
                "{other:?}: expected f32, amx_bf16_frozen or amx_bf16"
            )));
        }
    };
    if !crate::model::amx::available() {
        return Err(bad(
            "AMX: this CPU (or its OS) has neither AMX-BF16 tiles nor AVX-512-BF16 (lscpu flags amx_bf16, avx512_bf16); use f32",
        ));
    }
    Ok(p)
}

/// Puts `trainer` in `precision` for `stage`'s step: the bf16 kernels are the CPU's, so the AMX
/// variants are refused on any other device.
pub(crate) fn use_precision(
    trainer: &mut Trainer,
    precision: Precision,
    device: &candle_core::Device,
    stage: &str,
) -> Result<()> {
    if precision == Precision::F32 {
        return Ok(());
    }
    if !device.is_cpu() {
        return Err(Error::param(
            format!("{stage}.precision"),
            "the bf16 kernels (AMX tiles, AVX-512-BF16) are the CPU's; use f32 on CUDA",
        ));
    }
    trainer
        .use_amx(precision == Precision::AmxBf16)
        .map_err(|e| Error::stage(stage, e.to_string()))?;
    Ok(())
}

/// Optimizer steps per round: `steps_per_round × epochs`.
pub(crate) fn optimizer_steps(params: &Params) -> Result<u32> {
    let s = settings(params)?;
    Ok(s.steps_per_round * s.epochs)
}

/// The reward rows of step `step` (1-based) of a round: each role's training rows, shuffled
/// once per epoch with a seed of the epoch and role, cut into `steps_per_round` near-equal
/// mini-batches; the step takes mini-batch `(step − 1) mod K` of epoch `(step − 1) / K`.
pub(crate) fn minibatch<'a>(
    rows: &[&'a RewardRow],
    s: &Settings,
    seed: u64,
    step: u32,
) -> Vec<&'a RewardRow> {
    let k = s.steps_per_round as usize;
    let index = (step as usize - 1) % k;
    let epoch = (step as usize - 1) / k;
    let mut out = Vec::new();
    for role in ROLES {
        let mut mine: Vec<&RewardRow> = rows.iter().copied().filter(|r| r.role == role).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(
            seed,
            &format!("minibatches/epoch-{epoch}/{role}"),
        ));
        mine.shuffle(&mut rng);
        let n = mine.len();
        out.extend_from_slice(&mine[index * n / k..(index + 1) * n / k]);
    }
    out
}

impl Stage for TrainStage {
    /// 2: micro-batches group sequences by length (another summation order, so other bits).
    fn version(&self) -> u32 {
        2
    }

    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "train"
    }

    fn about(&self) -> &'static str {
        "GRPO gradients of one optimizer step's mini-batch (one worker per --shard)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            device_spec(),
            ParamSpec::new(
                "steps_per_round",
                1,
                "mini-batches the round's training rows are cut into, one optimizer step each (TRL's steps_per_generation)",
            ).at_least(1.0),
            ParamSpec::new(
                "epochs",
                1,
                "passes over the round's rows (TRL's num_iterations, verl's ppo_epochs)",
            ).at_least(1.0),
            ParamSpec::new(
                "loss_type",
                "grpo",
                "`grpo` (token mean per sequence), `token_mean` (DAPO) or `dr_grpo`",
            ).one_of(&["grpo", "token_mean", "dr_grpo"]),
            ParamSpec::new("clip_eps", 0.2, "PPO clip range ε (the lower bound 1 − ε)").above(0.0),
            ParamSpec::new(
                "clip_eps_high",
                -1.0,
                "upper clip range (DAPO's clip-higher, e.g. 0.28); negative: the same as clip_eps",
            ),
            ParamSpec::new(
                "kl_beta",
                0.0,
                "weight of the k3 KL (clamped as verl's low_var_kl) to the checkpoint RL starts from: the warm-up's, else init's (0: none)",
            ).at_least(0.0),
            ParamSpec::new("entropy_coef", 0.0, "weight of the entropy bonus (0: none)"),
            ParamSpec::new(
                "max_completion_length",
                512,
                "dr_grpo's constant normaliser L_max (tokens)",
            ).at_least(1.0),
            ParamSpec::new(
                "truncation_is_cap",
                2.0,
                "cap of the importance weight correcting for top-p / guided sampling (0: off)",
            ).at_least(0.0),
            ParamSpec::new("policy_weight", 1.0, "weight of the policy's mean loss").at_least(0.0),
            ParamSpec::new(
                "generator_weight",
                1.0,
                "weight of the generator's mean loss",
            ).at_least(0.0),
            ParamSpec::new("grm_weight", 1.0, "weight of the GRM's mean loss").at_least(0.0),
            ParamSpec::new("micro_batch", 4, "sequences per forward/backward pass").at_least(1.0),
            ParamSpec::new(
                "train_last_k",
                0,
                "train only the last k decoder blocks and the final norm (0: every weight)",
            ),
            precision_spec(),
        ]
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        let mut up = vec![
            Upstream::needs("reward"),
            Upstream::needs("generate"),
            Upstream::needs("rollout"),
            Upstream::optional("judge"),
            Upstream::previous_step("apply"),
        ];
        up.extend(CHECKPOINT_UPSTREAM);
        // The self-check's judgments are GRM trajectories that `reward` can mark to train.
        up.push(Upstream::optional("selfcheck"));
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn stepped(&self) -> bool {
        true
    }

    fn check(&self, params: &Params) -> Result<()> {
        settings(params).map(|_| ())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let err = |e: crate::model::ModelError| Error::stage("train", e.to_string());
        let s = settings(ctx.params)?;
        let (step, steps) = match ctx.step {
            0 => (1, 1),
            n => (n, ctx.steps),
        };
        if steps != s.steps_per_round * s.epochs {
            return Err(Error::stage(
                "train",
                format!(
                    "step {step} of {steps}, but steps_per_round × epochs is {}",
                    s.steps_per_round * s.epochs
                ),
            ));
        }
        let rewards: Vec<RewardRow> = read_rows(ctx.input_files(Upstream::needs("reward"))?)?;
        let mut by_id: BTreeMap<String, TrajectoryRow> = BTreeMap::new();
        for up in [
            Upstream::needs("generate"),
            Upstream::optional("selfcheck"),
            Upstream::needs("rollout"),
            Upstream::optional("judge"),
        ] {
            for file in ctx.input_files(up)? {
                for t in trajectories(std::slice::from_ref(file))? {
                    check_lengths(&t, file)?;
                    by_id.insert(t.trajectory_id.clone(), t);
                }
            }
        }
        let mut missing = 0;
        let eligible: Vec<&RewardRow> = rewards
            .iter()
            .filter(|r| r.train && r.advantage != 0.0)
            .filter(|r| match by_id.get(&r.trajectory_id) {
                Some(t) if t.loss_mask.iter().any(|&m| m) => true,
                _ => {
                    missing += 1;
                    false
                }
            })
            .collect();
        let batch = minibatch(&eligible, &s, ctx.seed, step);
        // Per-role counts over the whole mini-batch: the loss's normalisers.
        let mut counts: BTreeMap<&str, RoleCounts> = BTreeMap::new();
        for r in &batch {
            let c = counts.entry(r.role.as_str()).or_insert(RoleCounts {
                weight: s.weights.get(r.role.as_str()).copied().unwrap_or(1.0),
                ..RoleCounts::default()
            });
            c.sequences += 1;
            c.tokens += by_id[&r.trajectory_id]
                .loss_mask
                .iter()
                .filter(|&&m| m)
                .count() as u64;
        }
        let mut mine: Vec<(&RewardRow, &TrajectoryRow)> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| ctx.shard.owns(*i))
            .map(|(_, r)| (*r, &by_id[&r.trajectory_id]))
            .collect();
        micro_batch_order(&mut mine);
        let grad_path = shard_path(&ctx.out_dir, ShardKind::Gradients, ctx.shard.index);
        let updates_path = shard_path(&ctx.out_dir, ShardKind::Updates, ctx.shard.index);
        if mine.is_empty() {
            write_rows::<GradientRow>(&grad_path, &[])?;
            write_rows::<UpdateRow>(&updates_path, &[])?;
            let summary = if eligible.is_empty() {
                "no trajectory with a non-zero advantage: nothing to train".to_string()
            } else if batch.is_empty() {
                // A round with fewer training rows than steps leaves some mini-batches empty;
                // `apply` carries the checkpoint over for them.
                format!(
                    "step {step}/{steps}: empty mini-batch (the round has {} training rows for {} steps)",
                    eligible.len(),
                    s.steps_per_round
                )
            } else {
                format!("step {step}/{steps}: no sequence of this step's mini-batch in this part")
            };
            return Ok(StageOutput {
                files: vec![grad_path, updates_path],
                summary,
            });
        }
        let ckpt = checkpoint_dir(ctx, "train")?;
        let cfg = TrainConfig {
            train_last_k: last_k(ctx.params),
            ..TrainConfig::default()
        };
        let device = placement(ctx.params, "train")?.device;
        let mut trainer = Trainer::load(&ckpt, &device, cfg).map_err(err)?;
        use_precision(&mut trainer, s.precision, &device, "train")?;
        let reference = if s.loss.beta > 0.0 {
            // KL to the checkpoint RL starts from: the warm-up's output, else init's.
            let start = [Upstream::optional("warmup"), Upstream::needs("init")]
                .into_iter()
                .find_map(|up| ctx.declared(up)?.iter().find(|p| p.is_dir()).cloned())
                .ok_or_else(|| Error::stage("train", "kl_beta > 0 needs the `init` checkpoint"))?;
            // Read once: compared with the trainer's frozen weights, then built into the model.
            let weights = load_safetensors_dir(&start, &device).map_err(err)?;
            let shared_layers = trainer.layers_shared_with(&weights).map_err(err)?;
            let mut model = Model::from_tensors(&start, weights, &device).map_err(err)?;
            if s.precision == Precision::AmxBf16 {
                // The reference in the policy's precision, so the KL does not measure rounding.
                let n = model.config().num_hidden_layers;
                model
                    .quantize_layers(shared_layers..n, Quant::AmxBf16)
                    .map_err(err)?;
                model.quantize_head(Quant::AmxBf16).map_err(err)?;
            }
            Some((model, shared_layers))
        } else {
            None
        };
        let reference = reference.as_ref().map(|(model, shared_layers)| Reference {
            model,
            shared_layers: *shared_layers,
        });
        let pad = trainer.model().config().pad_token_id.unwrap_or(0);
        let bar = crate::progress::bar(mine.len() as u64, "train");
        let mut per_role: BTreeMap<&str, (Vec<NamedGrad>, u32, u64)> = BTreeMap::new();
        let mut updates = Vec::with_capacity(mine.len());
        let mut gap = LogprobGap::default();
        let mut start = 0;
        while start < mine.len() {
            let (role, temp) = (mine[start].0.role.as_str(), mine[start].1.temperature);
            let mut end = start + 1;
            while end < mine.len()
                && end - start < s.micro_batch
                && mine[end].0.role == role
                && mine[end].1.temperature.to_bits() == temp.to_bits()
            {
                end += 1;
            }
            let chunk = &mine[start..end];
            start = end;
            let seqs: Vec<_> = chunk.iter().map(|(_, t)| training_sequence(t)).collect();
            let batch = build_batch(&seqs, pad, &device).map_err(err)?;
            let pos = LossPositions::of(&batch).map_err(err)?;
            let l = batch.input_ids.dim(1).map_err(|e| err(e.into()))?;
            // The sampler's log-probs of each loss token, in LossPositions order.
            let at = |s: usize, f: u32| f as usize - s * (l - 1) + 1 - chunk[s].1.prompt_ids.len();
            let old: Vec<f32> = pos
                .flat
                .iter()
                .zip(&pos.seq)
                .map(|(&f, &s)| chunk[s].1.sampling_logprobs[at(s, f)])
                .collect();
            let is_weights: Option<Vec<f32>> = (s.truncation_is_cap > 0.0).then(|| {
                pos.flat
                    .iter()
                    .zip(&pos.seq)
                    .zip(&old)
                    .map(|((&f, &s_), &o)| {
                        let behaviour = chunk[s_].1.behavior_logprobs[at(s_, f)];
                        ((o - behaviour).exp()).min(s.truncation_is_cap as f32)
                    })
                    .collect()
            });
            let n = pos.flat.len();
            let old = Tensor::from_vec(old, n, &device).map_err(|e| err(e.into()))?;
            let is_weights = match is_weights {
                Some(w) => Some(Tensor::from_vec(w, n, &device).map_err(|e| err(e.into()))?),
                None => None,
            };
            let advantages: Vec<f32> = chunk.iter().map(|(r, _)| r.advantage).collect();
            let (loss, stats) = micro_batch_loss(
                &s.loss,
                trainer.model(),
                reference,
                &MicroBatch {
                    batch: &batch,
                    pos: &pos,
                    temperature: f64::from(temp),
                    old_logp: &old,
                    is_weights: is_weights.as_ref(),
                    advantages: &advantages,
                    counts: &counts[role],
                },
            )
            .map_err(err)?;
            let grads = trainer.backward(&loss).map_err(err)?;
            let named = trainer.export_grads(&grads).map_err(err)?;
            drop((grads, loss));
            crate::memory::release_free_memory_if_large();
            let key = ROLES
                .iter()
                .find(|r| **r == role)
                .copied()
                .unwrap_or("policy");
            let entry = per_role.entry(key).or_insert((Vec::new(), 0, 0));
            entry.0 = if entry.0.is_empty() {
                named
            } else {
                sum_grads(&[std::mem::take(&mut entry.0), named]).map_err(err)?
            };
            entry.1 += chunk.len() as u32;
            for ((r, _), st) in chunk.iter().zip(stats) {
                entry.2 += u64::from(st.tokens);
                gap.add(&st);
                updates.push(UpdateRow {
                    trajectory_id: r.trajectory_id.clone(),
                    role: r.role.clone(),
                    step,
                    loss: st.loss,
                    mean_ratio: st.mean_ratio,
                    clip_fraction: st.clip_fraction,
                    kl: st.kl,
                    entropy: st.entropy,
                    tokens: st.tokens,
                });
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let mut rows = Vec::new();
        for (role, (grads, sequences, tokens)) in per_role {
            rows.extend(grads.into_iter().map(|g| GradientRow {
                role: role.to_string(),
                name: g.name,
                shape: g.shape.iter().map(|&d| d as u64).collect(),
                values: g.values,
                sequences,
                tokens,
            }));
        }
        write_rows(&grad_path, &rows)?;
        write_rows(&updates_path, &updates)?;
        let mut summary = format!("step {step}/{steps}: {}", role_summary(&updates));
        if step == 1 && gap.tokens > 0.0 {
            // Before the round's first update the weights are the ones that sampled: what
            // separates the two log-probs is the sampling precision (`dtype`) and the kernels.
            summary.push_str(&format!("; {gap}"));
        }
        if let Some(r) = reference.filter(|_| step == 1) {
            summary.push_str(&format!(
                "; the KL reference shares {} of {} layers",
                r.shared_layers,
                trainer.model().config().num_hidden_layers
            ));
        }
        if missing > 0 {
            summary.push_str(&format!("; {missing} rewards without a trajectory skipped"));
        }
        Ok(StageOutput {
            files: vec![grad_path, updates_path],
            summary,
        })
    }
}

/// The order a worker's rows are cut into micro-batches in: by role and temperature, so each
/// micro-batch holds one role at one temperature and each role's gradient stays apart, then by
/// length, so a micro-batch pads little (on the ASL benchmark's rows, 199–578 tokens, ~10 %
/// fewer tokens through the model than the mini-batch's shuffled order). Stable: ties keep the
/// mini-batch's seeded order.
fn micro_batch_order(rows: &mut [(&RewardRow, &TrajectoryRow)]) {
    rows.sort_by_cached_key(|(r, t)| {
        let len = t.prompt_ids.len() + t.completion_ids.len();
        (r.role.clone(), t.temperature.to_bits(), len)
    });
}

/// How far the sampling-time log-probs are from the ones `train` recomputes in f32, pooled over
/// tokens: mean `|Δ log p|` and the spread of the PPO ratio.
#[derive(Debug, Default)]
struct LogprobGap {
    tokens: f64,
    abs_log_ratio: f64,
    ratio: f64,
    ratio_sq: f64,
}

impl LogprobGap {
    fn add(&mut self, st: &crate::rl::loss::SeqStats) {
        let t = f64::from(st.tokens);
        self.tokens += t;
        self.abs_log_ratio += t * f64::from(st.abs_log_ratio);
        self.ratio += t * f64::from(st.mean_ratio);
        self.ratio_sq += t * f64::from(st.mean_ratio_sq);
    }
}

impl std::fmt::Display for LogprobGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tokens.max(1.0);
        let mean = self.ratio / n;
        let sd = (self.ratio_sq / n - mean * mean).max(0.0).sqrt();
        write!(
            f,
            "sampling gap |Δ log p| {:.2e}, ratio sd {sd:.2e}",
            self.abs_log_ratio / n
        )
    }
}

/// Per role: sequences, mean loss, mean ratio and clip fraction of this worker's part.
fn role_summary(updates: &[UpdateRow]) -> String {
    let mut by_role: BTreeMap<&str, (usize, f64, f64, f64)> = BTreeMap::new();
    for u in updates {
        let e = by_role.entry(u.role.as_str()).or_default();
        e.0 += 1;
        e.1 += f64::from(u.loss);
        e.2 += f64::from(u.mean_ratio);
        e.3 += f64::from(u.clip_fraction);
    }
    by_role
        .iter()
        .map(|(role, (n, loss, ratio, clip))| {
            let n_f = *n as f64;
            format!(
                "{role} {n} seqs loss {:.4} ratio {:.3} clip {:.3}",
                loss / n_f,
                ratio / n_f,
                clip / n_f
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A trajectory's per-token columns must each have one entry per completion token: the loss
/// indexes them by position, so a shard another tool wrote otherwise panics mid-step.
fn check_lengths(t: &TrajectoryRow, file: &std::path::Path) -> Result<()> {
    let n = t.completion_ids.len();
    for (column, len) in [
        ("loss_mask", t.loss_mask.len()),
        ("sampling_logprobs", t.sampling_logprobs.len()),
        ("behavior_logprobs", t.behavior_logprobs.len()),
    ] {
        if len != n {
            return Err(Error::shard(
                file,
                format!(
                    "trajectory {}: {column} has {len} entries for {n} completion tokens",
                    t.trajectory_id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardSpec;
    use crate::model::generate::generate;
    use crate::model::hf::HfModel;
    use crate::model::sample::{SamplingParams, SeqRequest};
    use crate::model::scoring::token_logprobs;
    use crate::model::test_util::tiny_model;
    use crate::params::resolve;
    use crate::stages::apply::ApplyStage;
    use candle_core::Device;

    /// A trajectory whose per-token columns do not match its completion is refused with the
    /// file and the column named, not indexed out of bounds mid-step.
    #[test]
    fn per_token_columns_shorter_than_the_completion_are_refused() {
        let t = TrajectoryRow {
            trajectory_id: "r001-t0000-a0".into(),
            task_id: "r001-t0000".into(),
            role: "policy".into(),
            attempt: 0,
            seed: 0,
            prompt_ids: vec![1],
            completion_ids: vec![2, 3],
            loss_mask: vec![true, true],
            sampling_logprobs: vec![-1.0, -1.0],
            behavior_logprobs: vec![-1.0, -1.0],
            temperature: 1.0,
            text: String::new(),
            turns: 1,
            searches: 0,
            answer: None,
            parsed: false,
            parse_error: None,
            finish_reason: "stop".into(),
        };
        let file = std::path::Path::new("round-001/rollout/trajectories-00000.parquet");
        assert!(check_lengths(&t, file).is_ok());
        let short = TrajectoryRow {
            behavior_logprobs: vec![-1.0],
            ..t
        };
        let e = check_lengths(&short, file).unwrap_err().to_string();
        assert!(
            e.contains("trajectories-00000.parquet")
                && e.contains("behavior_logprobs has 1 entries for 2"),
            "{e}"
        );
    }

    /// A training row of `role` with advantage 1 (its task and group `t`).
    fn reward_row(id: &str, role: &str) -> RewardRow {
        RewardRow {
            trajectory_id: id.into(),
            task_id: "t".into(),
            role: role.into(),
            group_id: "t".into(),
            scheme: "test".into(),
            reward: 0.0,
            format_bonus: 0.0,
            total: 0.0,
            advantage: 1.0,
            label: None,
            train: true,
        }
    }

    /// Micro-batches: one role at one temperature, shortest first, ties in the given order.
    #[test]
    fn micro_batches_group_role_temperature_then_length() {
        let traj = |id: &str, role: &str, temperature: f32, len: usize| TrajectoryRow {
            trajectory_id: id.into(),
            task_id: "t".into(),
            role: role.into(),
            attempt: 0,
            seed: 0,
            prompt_ids: vec![1; len - 1],
            completion_ids: vec![2],
            loss_mask: vec![true],
            sampling_logprobs: vec![0.0],
            behavior_logprobs: vec![0.0],
            temperature,
            text: String::new(),
            turns: 1,
            searches: 0,
            answer: None,
            parsed: true,
            parse_error: None,
            finish_reason: "stop".into(),
        };
        let spec = [
            ("p-long", "policy", 1.0, 500),
            ("g-cold", "generator", 0.7, 300),
            ("p-short", "policy", 1.0, 200),
            ("g-hot", "generator", 1.0, 100),
            ("p-tie-a", "policy", 1.0, 300),
            ("p-tie-b", "policy", 1.0, 300),
        ];
        let rewards: Vec<RewardRow> = spec.iter().map(|s| reward_row(s.0, s.1)).collect();
        let trajs: Vec<TrajectoryRow> = spec.iter().map(|s| traj(s.0, s.1, s.2, s.3)).collect();
        let mut rows: Vec<(&RewardRow, &TrajectoryRow)> = rewards.iter().zip(&trajs).collect();
        micro_batch_order(&mut rows);
        let order: Vec<&str> = rows.iter().map(|(r, _)| r.trajectory_id.as_str()).collect();
        assert_eq!(
            order,
            ["g-cold", "g-hot", "p-short", "p-tie-a", "p-tie-b", "p-long"]
        );
    }

    /// `precision`: f32 always; the AMX variants where the CPU has a bf16 kernel (refused in one line
    /// naming the key elsewhere); `amx_bf16_frozen` only when some layers do not train.
    #[test]
    fn precision_is_checked() {
        let with = |precision: &str, last_k: u64| {
            let mut p = resolve("train", &TrainStage.params(), None, &[]).unwrap();
            p.insert("precision".into(), precision.into());
            p.insert("train_last_k".into(), last_k.into());
            settings(&p).map(|s| s.precision)
        };
        assert_eq!(with("f32", 0).unwrap(), Precision::F32);
        let e = with("amx_bf16_frozen", 0).unwrap_err().to_string();
        assert!(
            e.contains("train.precision") && e.contains("train_last_k"),
            "{e}"
        );
        for (name, want) in [
            ("amx_bf16", Precision::AmxBf16),
            ("amx_bf16_frozen", Precision::AmxBf16Frozen),
        ] {
            match with(name, 4) {
                Ok(p) => {
                    assert!(crate::model::amx::available());
                    assert_eq!(p, want);
                }
                Err(e) => {
                    assert!(!crate::model::amx::available());
                    let e = e.to_string();
                    assert!(e.contains("train.precision") && e.contains("AMX"), "{e}");
                }
            }
        }
    }

    /// A round with fewer training rows than `steps_per_round` trains each row once and leaves
    /// the other steps' mini-batches empty (a run of a few valid tasks a round must not stop).
    #[test]
    fn fewer_rows_than_steps_leave_empty_minibatches_and_train_each_row_once() {
        let rows = [
            reward_row("policy-0", "policy"),
            reward_row("policy-1", "policy"),
            reward_row("grm-0", "grm"),
        ];
        let refs: Vec<&RewardRow> = rows.iter().collect();
        let mut p = resolve("train", &TrainStage.params(), None, &[]).unwrap();
        p.insert("steps_per_round".into(), 4.into());
        let s = settings(&p).unwrap();
        let batches: Vec<Vec<&RewardRow>> =
            (1..=4).map(|step| minibatch(&refs, &s, 7, step)).collect();
        assert!(batches.iter().any(|b| b.is_empty()), "{batches:?}");
        let mut seen: Vec<&str> = batches
            .iter()
            .flatten()
            .map(|r| r.trajectory_id.as_str())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, ["grm-0", "policy-0", "policy-1"]);
    }

    fn completion_logprob(model_dir: &std::path::Path, t: &TrajectoryRow) -> f32 {
        let model = Model::load(model_dir, &Device::Cpu).unwrap();
        let mask: Vec<u8> = t.loss_mask.iter().map(|&m| u8::from(m)).collect();
        let batch = build_batch(
            &[(t.prompt_ids.clone(), t.completion_ids.clone(), mask)],
            2,
            &Device::Cpu,
        )
        .unwrap();
        let lp = token_logprobs(&model, &batch.input_ids, &batch.attention_mask).unwrap();
        (lp * batch.loss_mask)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Train then apply as stages over shards: the step raises the log-prob of the positively
    /// advantaged sequences and lowers the negative ones, and the checkpoint carries optimizer
    /// state.
    #[test]
    fn train_and_apply_move_log_probs_the_way_the_advantages_say() {
        let Some(init) = tiny_model(31) else { return };
        let hf = HfModel::load(&init, &Device::Cpu).unwrap();
        let prompt = hf.tokenizer.encode("Question: who?", false).unwrap();
        let requests: Vec<SeqRequest> = (0..4)
            .map(|i| SeqRequest {
                prompt_ids: prompt.get_ids().to_vec(),
                seed: 100 + i,
            })
            .collect();
        let params = SamplingParams {
            max_new_tokens: 6,
            eos_ids: vec![],
            stop_strings: vec![],
            ..SamplingParams::default()
        };
        let outs = generate(&hf.model, &hf.tokenizer, &requests, &params, |_, _| None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let trajectories: Vec<TrajectoryRow> = outs
            .iter()
            .enumerate()
            .map(|(i, o)| TrajectoryRow {
                trajectory_id: format!("t-p{i}"),
                task_id: "t".into(),
                role: "policy".into(),
                attempt: i as u32,
                seed: 100 + i as u64,
                prompt_ids: requests[i].prompt_ids.clone(),
                completion_ids: o.tokens.clone(),
                loss_mask: o.loss_mask.iter().map(|&m| m == 1).collect(),
                sampling_logprobs: o.logprobs.clone(),
                behavior_logprobs: o.logprobs.clone(),
                temperature: 1.0,
                text: o.text.clone(),
                turns: 1,
                searches: 0,
                answer: None,
                parsed: false,
                parse_error: None,
                finish_reason: "length".into(),
            })
            .collect();
        let rewards: Vec<RewardRow> = (0..4)
            .map(|i| RewardRow {
                trajectory_id: format!("t-p{i}"),
                task_id: "t".into(),
                role: "policy".into(),
                group_id: "t".into(),
                scheme: "test".into(),
                reward: 0.0,
                format_bonus: 0.0,
                total: 0.0,
                advantage: if i < 2 { 1.0 } else { -1.0 },
                label: None,
                train: true,
            })
            .collect();
        let traj_file = run.join("round-001/rollout/trajectories-00000.parquet");
        let reward_file = run.join("round-001/reward/rewards-00000.parquet");
        write_rows(&traj_file, &trajectories).unwrap();
        write_rows(&reward_file, &rewards).unwrap();

        let train_params = resolve("train", &TrainStage.params(), None, &[]).unwrap();
        let inputs = vec![
            ("reward".to_string(), vec![reward_file]),
            ("rollout".to_string(), vec![traj_file]),
            ("init".to_string(), vec![init.clone()]),
        ];
        let inputs = crate::stages::contract::test_inputs(&TrainStage, &train_params, &inputs);
        let ctx = StageContext {
            stage: "train",
            run_dir: run,
            round: 1,
            step: 1,
            steps: 1,
            params: &train_params,
            seed: 0,
            shard: ShardSpec::WHOLE,
            inputs: &inputs,
            out_dir: run.join("round-001/train"),
        };
        let out = TrainStage.run(&ctx).unwrap();
        assert!(
            out.summary.starts_with("step 1/1: policy 4 seqs"),
            "{}",
            out.summary
        );
        let grads: Vec<GradientRow> = read_rows(&out.files[..1]).unwrap();
        assert!(grads.iter().all(|g| g.sequences == 4 && g.role == "policy"));
        assert!(grads.iter().any(|g| g.values.iter().any(|v| *v != 0.0)));
        let updates: Vec<UpdateRow> = read_rows(&out.files[1..]).unwrap();
        assert_eq!(updates.len(), 4);
        // Ratios start at 1: the sampler's log-probs match the training forward.
        assert!(
            updates.iter().all(|u| (u.mean_ratio - 1.0).abs() < 1e-3),
            "{updates:?}"
        );

        let mut apply_params = resolve("apply", &ApplyStage.params(), None, &[]).unwrap();
        apply_params.insert("lr".into(), 0.01.into());
        let inputs = vec![
            ("train".to_string(), out.files.clone()),
            ("init".to_string(), vec![init.clone()]),
        ];
        let inputs = crate::stages::contract::test_inputs(&ApplyStage, &apply_params, &inputs);
        let ctx = StageContext {
            stage: "apply",
            params: &apply_params,
            inputs: &inputs,
            out_dir: run.join("round-001/apply"),
            ..ctx
        };
        let applied = ApplyStage.run(&ctx).unwrap();
        let new_model = &applied.files[0];
        assert!(new_model.join(crate::model::train::OPTIMIZER_FILE).exists());
        for (i, t) in trajectories.iter().enumerate() {
            let (before, after) = (
                completion_logprob(&init, t),
                completion_logprob(new_model, t),
            );
            if i < 2 {
                assert!(after > before, "sequence {i}: {before} -> {after}");
            } else {
                assert!(after < before, "sequence {i}: {before} -> {after}");
            }
        }
    }
}
