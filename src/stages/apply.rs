//! Stage `apply`: sums the round's `gradients` shards in path order (a fixed order, so the sum is
//! the same bytes however the workers were scheduled), divides by the sequences they cover and
//! takes one AdamW step from the round's starting checkpoint. The result is the next round's
//! checkpoint: `RUN_DIR/round-NNN/apply/model`, a Hugging Face folder with the optimizer state.

use std::path::PathBuf;

use super::agent::{CHECKPOINT_UPSTREAM, checkpoint_dir, device_spec, placement};
use super::init::copy_folder;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
use crate::model::llama::load_config;
use crate::model::train::{NamedGrad, TrainConfig, Trainer, sum_grads};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::shards::rows::GradientRow;
use crate::shards::{ShardKind, read_rows, shards_of};

pub struct ApplyStage;

impl Stage for ApplyStage {
    fn name(&self) -> &'static str {
        "apply"
    }

    fn about(&self) -> &'static str {
        "sum the gradient shards and take one optimizer step: the next round's checkpoint"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            device_spec(),
            ParamSpec::new("lr", 1e-6, "AdamW learning rate"),
            ParamSpec::new("weight_decay", 0.0, "AdamW decoupled weight decay"),
            ParamSpec::new(
                "max_grad_norm",
                1.0,
                "clip the global gradient norm (0: off)",
            ),
            ParamSpec::new(
                "warmup_steps",
                0,
                "linear learning-rate warm-up over this many steps",
            ),
        ]
    }

    fn upstream(&self, _params: &Params) -> Vec<&'static str> {
        let mut up = vec!["train"];
        up.extend(CHECKPOINT_UPSTREAM);
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let err = |e: crate::model::ModelError| Error::stage("apply", e.to_string());
        let ckpt = checkpoint_dir(ctx, "apply")?;
        let dest = ctx.out_dir.join("model");
        let mut files = shards_of(ctx.input_files("train"), ShardKind::Gradients);
        files.sort();
        let mut parts = Vec::new();
        let mut sequences = 0u64;
        for file in &files {
            let rows: Vec<GradientRow> = read_rows(std::slice::from_ref(file))?;
            if let Some(first) = rows.first() {
                sequences += u64::from(first.sequences);
                parts.push(
                    rows.into_iter()
                        .map(|r| NamedGrad {
                            name: r.name,
                            shape: r.shape.iter().map(|&d| d as usize).collect(),
                            values: r.values,
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        if sequences == 0 {
            copy_folder(&ckpt, &dest)?;
            return Ok(StageOutput {
                files: vec![dest],
                summary: "no gradients this round: checkpoint carried over unchanged".into(),
            });
        }
        let mut grads = sum_grads(&parts).map_err(|e| Error::shard(&files[0], e.to_string()))?;
        let scale = 1.0 / sequences as f32;
        for g in &mut grads {
            for v in &mut g.values {
                *v *= scale;
            }
        }
        let layers = load_config(&ckpt).map_err(err)?.num_hidden_layers;
        let cfg = TrainConfig {
            lr: ctx.params.f64("lr"),
            weight_decay: ctx.params.f64("weight_decay"),
            max_grad_norm: ctx.params.f64("max_grad_norm"),
            warmup_steps: ctx.params.u64("warmup_steps") as usize,
            train_last_k: trained_last_k(&grads, layers),
            ..TrainConfig::default()
        };
        let device = placement(ctx.params, "apply")?.device;
        let mut trainer = Trainer::load(&ckpt, &device, cfg).map_err(err)?;
        let stats = trainer
            .step_with_grads(&grads)
            .map_err(|e| Error::shard(&files[0], e.to_string()))?;
        trainer.save_checkpoint(&dest).map_err(err)?;
        Ok(StageOutput {
            files: vec![dest],
            summary: format!(
                "optimizer step {}: {sequences} sequences from {} gradient shards, grad norm {:.4}, lr {:.2e}",
                stats.step,
                parts.len(),
                stats.grad_norm,
                stats.lr
            ),
        })
    }
}

/// The `train_last_k` the gradients were computed under, read from their tensor names.
fn trained_last_k(grads: &[NamedGrad], layers: usize) -> Option<usize> {
    let mut lowest = layers;
    for g in grads {
        match g
            .name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => lowest = lowest.min(i),
            None if g.name == "model.norm.weight" => {}
            None => return None,
        }
    }
    Some(layers - lowest)
}
