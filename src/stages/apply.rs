//! Stage `apply`: one optimizer step. It reads the step's `gradients` shards (one per `train`
//! worker, each holding one gradient per role, already weighted by the loss's normalisers), sums
//! each role's parts in path order (a fixed order, so the sum is the same bytes however the
//! workers were scheduled), adds the roles, and takes one AdamW step from the step's starting
//! checkpoint: the previous step's `apply`, else the round's. It writes the checkpoint
//! (`round-NNN/apply/step-SSS/model`, a Hugging Face folder with the optimizer state) and a
//! `steps` shard with each role's gradient norm; the round's last step is the next round's start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{CHECKPOINT_UPSTREAM, checkpoint_dir, device_spec, placement};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::fsutil::link_folder;
use crate::model::config::load_config;
use crate::model::train::{NamedGrad, TrainConfig, Trainer, sum_grads};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::shards::rows::{GradientRow, StepRow};
use crate::shards::{ShardKind, read_rows, shard_path, shards_of, write_rows};

pub(crate) struct ApplyStage;

impl Stage for ApplyStage {
    /// 2: the checkpoint keeps the chat template file and each tensor's Adam update count (bias
    ///    correction per tensor); weight decay skips norm gains and biases.
    fn version(&self) -> u32 {
        2
    }

    fn name(&self) -> &'static str {
        "apply"
    }

    fn about(&self) -> &'static str {
        "sum one step's gradient shards and take the optimizer step: a new checkpoint"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            device_spec(),
            ParamSpec::new("lr", 1e-6, "AdamW learning rate").at_least(0.0),
            ParamSpec::new("weight_decay", 0.0, "AdamW decoupled weight decay (matrices only: norm gains and biases are not decayed)").at_least(0.0),
            ParamSpec::new(
                "max_grad_norm",
                1.0,
                "clip the global gradient norm (0: off)",
            )
            .at_least(0.0),
            ParamSpec::new(
                "warmup_steps",
                0,
                "linear learning-rate warm-up over this many steps",
            ),
            ParamSpec::new(
                "keep_checkpoints",
                0,
                "`asl run` keeps the last K rounds' checkpoints and deletes older ones (0: keep all; docs/rounds.md); changing it reruns nothing",
            )
            .runner_only(),
            ParamSpec::new(
                "keep_every",
                0,
                "with keep_checkpoints: also keep every Nth round's checkpoint (0: none)",
            )
            .runner_only(),
        ]
    }

    fn check(&self, params: &Params) -> Result<()> {
        crate::retention::Retention::from_params(params).map(|_| ())
    }

    fn upstream(&self, _params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("train"), Upstream::previous_step("apply")];
        up.extend(CHECKPOINT_UPSTREAM);
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn stepped(&self) -> bool {
        true
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let err = |e: crate::model::ModelError| Error::stage("apply", e.to_string());
        let ckpt = checkpoint_dir(ctx, "apply")?;
        let dest = ctx.out_dir.join("model");
        let steps_path = shard_path(&ctx.out_dir, ShardKind::Steps, 0);
        let step = ctx.step.max(1);
        let mut files = shards_of(
            ctx.input_files(Upstream::needs("train"))?,
            ShardKind::Gradients,
        );
        files.sort();
        // Each role's parts, in path order.
        let mut parts: BTreeMap<String, (Vec<Vec<NamedGrad>>, u32, u64)> = BTreeMap::new();
        for file in &files {
            let rows: Vec<GradientRow> = read_rows(std::slice::from_ref(file))?;
            let mut by_role: BTreeMap<String, Vec<GradientRow>> = BTreeMap::new();
            for r in rows {
                by_role.entry(r.role.clone()).or_default().push(r);
            }
            for (role, rows) in by_role {
                let e = parts.entry(role).or_default();
                e.1 += rows[0].sequences;
                e.2 += rows[0].tokens;
                e.0.push(
                    rows.into_iter()
                        .map(|r| NamedGrad {
                            name: r.name,
                            shape: r.shape.iter().map(|&d| d as usize).collect(),
                            values: r.values,
                        })
                        .collect(),
                );
            }
        }
        if parts.is_empty() {
            link_folder(&ckpt, &dest)?;
            write_rows::<StepRow>(&steps_path, &[])?;
            return Ok(StageOutput {
                files: vec![dest, steps_path],
                summary: format!("step {step}: no gradients, checkpoint carried over unchanged"),
            });
        }
        let mut rows = Vec::new();
        let mut role_sums = Vec::new();
        let (mut sequences, mut tokens) = (0u32, 0u64);
        for (role, (role_parts, n, t)) in &parts {
            let summed =
                sum_grads(role_parts).map_err(|e| Error::shard(&files[0], e.to_string()))?;
            rows.push(StepRow {
                step,
                role: role.clone(),
                sequences: *n,
                tokens: *t,
                grad_norm: global_norm(&summed) as f32,
                lr: 0.0,
            });
            sequences += n;
            tokens += t;
            role_sums.push(summed);
        }
        let grads = sum_grads(&role_sums).map_err(|e| Error::shard(&files[0], e.to_string()))?;
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
        for r in &mut rows {
            r.lr = stats.lr;
        }
        rows.push(StepRow {
            step,
            role: "all".into(),
            sequences,
            tokens,
            grad_norm: stats.grad_norm as f32,
            lr: stats.lr,
        });
        write_rows(&steps_path, &rows)?;
        let norms: Vec<String> = rows
            .iter()
            .filter(|r| r.role != "all")
            .map(|r| format!("{} {:.4}", r.role, r.grad_norm))
            .collect();
        Ok(StageOutput {
            files: vec![dest, steps_path],
            summary: format!(
                "step {step} (optimizer step {}): {sequences} sequences from {} gradient shards, grad norm {:.4} ({}), lr {:.2e}",
                stats.step,
                files.len(),
                stats.grad_norm,
                norms.join(", "),
                stats.lr
            ),
        })
    }
}

/// The L2 norm of a set of gradients.
fn global_norm(grads: &[NamedGrad]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.values.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
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
