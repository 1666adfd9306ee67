//! The asl side of `scripts/check-grpo-parity.sh` (issue #15 item 8): asl's policy-gradient loss
//! and every parameter gradient on a fixed batch, for `scripts/grpo_parity_torch.py` to compare
//! with its PyTorch implementation of TRL's `GRPOTrainer._compute_loss`.
//!
//! It computes the loss exactly as `stages::train` does, through the same functions: the batch
//! split into micro-batches (`build_batch`, `LossPositions`), the old log-probs gathered per loss
//! token, `rl::loss::micro_batch_loss` (the function `train` calls: log-probs at the sampling
//! temperature, the reference's, `sequence_weight` over the `RoleCounts` of the whole batch with
//! one role of weight 1, `policy_loss`), `Trainer::backward`, `Trainer::export_grads`, and the
//! micro-batches' gradients added with `sum_grads`. Every weight is trainable
//! (`train_last_k` None).
//!
//! Input: a JSON spec (written by `grpo_parity_torch.py prepare`):
//! ```json
//! { "policy": "DIR", "reference": "DIR or null",
//!   "sequences": [{"prompt": [ids], "completion": [ids], "loss_mask": [0|1 per completion token],
//!                  "advantage": 0.5}],
//!   "cases": [{"name": "grpo", "loss_type": "grpo", "eps_low": 0.2, "eps_high": 0.28,
//!              "beta": 0.04, "entropy_coef": 0.0, "temperature": 0.7,
//!              "max_completion_length": 16, "micro_batch": 2,
//!              "old_logps": [[one per completion token]],
//!              "is_weights": null or [[one per completion token]]}] }
//! ```
//! Output, per case, in OUT_DIR: `<name>.safetensors` (every trainable tensor's gradient under
//! its HF name, plus `__loss__`, shape (1,)) and `<name>.json` (the loss and `policy_loss`'s
//! per-sequence statistics).
//!
//! cargo run --release --example grpo_parity -- SPEC.json OUT_DIR [--case NAME]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use asl::model::io::load_safetensors_dir;
use asl::model::llama::Model;
use asl::model::scoring::{LossPositions, build_batch};
use asl::model::train::{NamedGrad, TrainConfig, Trainer, sum_grads};
use asl::rl::loss::{
    LossConfig, LossType, MicroBatch, Reference, RoleCounts, SeqStats, micro_batch_loss,
};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Spec {
    policy: PathBuf,
    reference: Option<PathBuf>,
    sequences: Vec<Sequence>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Sequence {
    prompt: Vec<u32>,
    completion: Vec<u32>,
    loss_mask: Vec<u8>,
    advantage: f32,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    loss_type: String,
    eps_low: f64,
    eps_high: f64,
    beta: f64,
    #[serde(default)]
    entropy_coef: f64,
    temperature: f64,
    max_completion_length: usize,
    micro_batch: usize,
    /// Per sequence, one per completion token (only loss tokens are read).
    old_logps: Vec<Vec<f32>>,
    /// Truncated importance weights, same layout; absent: none.
    #[serde(default)]
    is_weights: Option<Vec<Vec<f32>>>,
}

/// The loss and gradients of one case, summed over its micro-batches.
struct CaseResult {
    loss: f64,
    grads: Vec<NamedGrad>,
    stats: Vec<SeqStats>,
}

fn run_case(
    trainer: &Trainer,
    reference: Option<Reference>,
    seqs: &[Sequence],
    case: &Case,
    device: &Device,
) -> anyhow::Result<CaseResult> {
    let loss_type: LossType = case.loss_type.parse().map_err(anyhow::Error::msg)?;
    let cfg = LossConfig {
        loss_type,
        eps_low: case.eps_low,
        eps_high: case.eps_high,
        beta: case.beta,
        entropy_coef: case.entropy_coef,
        max_completion_length: case.max_completion_length,
    };
    ensure!(
        case.old_logps.len() == seqs.len(),
        "case {}: {} old log-prob rows for {} sequences",
        case.name,
        case.old_logps.len(),
        seqs.len()
    );
    ensure!(case.micro_batch > 0, "case {}: micro_batch 0", case.name);
    // The normalisers: counts over the whole batch, one role of weight 1 (as `train` counts them
    // over the whole mini-batch before splitting it into micro-batches).
    let counts = RoleCounts {
        weight: 1.0,
        sequences: seqs.len(),
        tokens: seqs
            .iter()
            .map(|s| s.loss_mask.iter().filter(|&&m| m != 0).count() as u64)
            .sum(),
    };
    let pad = trainer.model().config().pad_token_id.unwrap_or(0);
    let mut loss_sum = 0f64;
    let mut parts: Vec<Vec<NamedGrad>> = Vec::new();
    let mut stats = Vec::with_capacity(seqs.len());
    for (c, chunk) in seqs.chunks(case.micro_batch).enumerate() {
        let first = c * case.micro_batch;
        let triples: Vec<(Vec<u32>, Vec<u32>, Vec<u8>)> = chunk
            .iter()
            .map(|s| (s.prompt.clone(), s.completion.clone(), s.loss_mask.clone()))
            .collect();
        let batch = build_batch(&triples, pad, device)?;
        let pos = LossPositions::of(&batch)?;
        let l = batch.input_ids.dim(1)?;
        // Flat position f = s·(L-1) + t predicts token t+1, completion token t+1-|prompt|.
        let at = |s: usize, f: u32| f as usize - s * (l - 1) + 1 - chunk[s].prompt.len();
        let per_token = |rows: &[Vec<f32>]| -> Vec<f32> {
            pos.flat
                .iter()
                .zip(&pos.seq)
                .map(|(&f, &s)| rows[first + s][at(s, f)])
                .collect()
        };
        let n = pos.flat.len();
        let old = Tensor::from_vec(per_token(&case.old_logps), n, device)?;
        let is_weights = match &case.is_weights {
            Some(w) => Some(Tensor::from_vec(per_token(w), n, device)?),
            None => None,
        };
        let advantages: Vec<f32> = chunk.iter().map(|s| s.advantage).collect();
        let (loss, st) = micro_batch_loss(
            &cfg,
            trainer.model(),
            reference,
            &MicroBatch {
                batch: &batch,
                pos: &pos,
                temperature: case.temperature,
                old_logp: &old,
                is_weights: is_weights.as_ref(),
                advantages: &advantages,
                counts: &counts,
            },
        )?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?);
        let grads = trainer.backward(&loss)?;
        parts.push(trainer.export_grads(&grads)?);
        stats.extend(st);
    }
    Ok(CaseResult {
        loss: loss_sum,
        grads: sum_grads(&parts)?,
        stats,
    })
}

fn write_case(out: &Path, name: &str, r: &CaseResult) -> anyhow::Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for g in &r.grads {
        let t = Tensor::from_slice(&g.values, g.shape.as_slice(), &Device::Cpu)?;
        tensors.insert(g.name.clone(), t);
    }
    tensors.insert(
        "__loss__".into(),
        Tensor::from_slice(&[r.loss as f32], 1, &Device::Cpu)?,
    );
    let path = out.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&tensors, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    let stats: Vec<_> = r
        .stats
        .iter()
        .map(|s| {
            json!({
                "tokens": s.tokens,
                "loss": s.loss,
                "mean_ratio": s.mean_ratio,
                "clip_fraction": s.clip_fraction,
                "kl": s.kl,
                "entropy": s.entropy,
            })
        })
        .collect();
    let path = out.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&json!({"loss": r.loss, "stats": stats}))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let usage = "usage: grpo_parity SPEC.json OUT_DIR [--case NAME]";
    let mut args = std::env::args().skip(1);
    let spec_path = PathBuf::from(args.next().context(usage)?);
    let out = PathBuf::from(args.next().context(usage)?);
    let only = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--case"), Some(name)) => Some(name),
        _ => bail!("{usage}"),
    };
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let spec: Spec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", spec_path.display()))?;
    ensure!(!spec.sequences.is_empty(), "the spec has no sequences");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let device = Device::Cpu;
    let cfg = TrainConfig {
        train_last_k: None,
        ..TrainConfig::default()
    };
    let trainer = Trainer::load(&spec.policy, &device, cfg)
        .with_context(|| format!("loading {}", spec.policy.display()))?;
    let reference = match &spec.reference {
        Some(dir) => {
            // What `train` does: layers equal to the trainer's frozen ones run once for both
            // (none here, since every layer trains).
            let loading = || format!("loading {}", dir.display());
            let weights = load_safetensors_dir(dir, &device).with_context(loading)?;
            let shared_layers = trainer.layers_shared_with(&weights)?;
            Some((
                Model::from_tensors(dir, weights, &device).with_context(loading)?,
                shared_layers,
            ))
        }
        None => None,
    };
    let reference = reference.as_ref().map(|(model, shared_layers)| Reference {
        model,
        shared_layers: *shared_layers,
    });
    let mut ran = 0;
    for case in &spec.cases {
        if only.as_ref().is_some_and(|n| n != &case.name) {
            continue;
        }
        ensure!(
            case.beta == 0.0 || reference.is_some(),
            "case {}: beta > 0 needs a reference model",
            case.name
        );
        let r = run_case(&trainer, reference, &spec.sequences, case, &device)
            .with_context(|| format!("case {}", case.name))?;
        write_case(&out, &case.name, &r)?;
        eprintln!(
            "grpo_parity: {}: loss {:.9e}, {} tensors",
            case.name,
            r.loss,
            r.grads.len()
        );
        ran += 1;
    }
    ensure!(ran > 0, "no case ran");
    Ok(())
}
