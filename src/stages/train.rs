//! Stage `train`: one data-parallel GRPO worker. It turns its part of the round's training
//! trajectories (every role whose rewards say `train`, non-zero advantage) into a `gradients`
//! shard, the summed gradient of the per-sequence losses, and an `updates` shard of per-sequence
//! statistics. `apply` sums the workers' shards and takes the optimizer step, so
//! `asl train --shard i/n` can run as a job array.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Tensor;

use super::agent::{CHECKPOINT_UPSTREAM, checkpoint_dir, device_spec, placement};
use super::generate::trajectories;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
use crate::model::llama::Model;
use crate::model::train::{
    GrpoParams, LossPositions, NamedGrad, TrainConfig, Trainer, build_batch, grpo_sequence_sum,
    selected_logprobs, sum_grads,
};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::shards::rows::{GradientRow, RewardRow, TrajectoryRow, UpdateRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub struct TrainStage;

/// `train_last_k` as the trainer takes it: 0 means every tensor.
pub fn last_k(params: &Params) -> Option<usize> {
    match params.u64("train_last_k") {
        0 => None,
        k => Some(k as usize),
    }
}

/// A trajectory as the trainer takes it: prompt ids, completion ids, completion loss mask.
pub fn training_sequence(t: &TrajectoryRow) -> (Vec<u32>, Vec<u32>, Vec<u8>) {
    (
        t.prompt_ids.clone(),
        t.completion_ids.clone(),
        t.loss_mask.iter().map(|&m| u8::from(m)).collect(),
    )
}

impl Stage for TrainStage {
    fn name(&self) -> &'static str {
        "train"
    }

    fn about(&self) -> &'static str {
        "GRPO gradients of this round's rewarded trajectories (one worker per --shard)"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            device_spec(),
            ParamSpec::new("clip_eps", 0.2, "PPO clip range ε"),
            ParamSpec::new(
                "kl_beta",
                0.0,
                "weight of the k3 KL to the `init` checkpoint (0: none)",
            ),
            ParamSpec::new("micro_batch", 4, "sequences per forward/backward pass"),
            ParamSpec::new(
                "train_last_k",
                0,
                "train only the last k decoder blocks and the final norm (0: every weight)",
            ),
        ]
    }

    fn upstream(&self, _params: &Params) -> Vec<&'static str> {
        let mut up = vec!["reward", "generate", "rollout", "judge?"];
        up.extend(CHECKPOINT_UPSTREAM);
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let err = |e: crate::model::ModelError| Error::stage("train", e.to_string());
        let rewards: Vec<RewardRow> = read_rows(ctx.input_files("reward"))?;
        let mut by_id: BTreeMap<String, TrajectoryRow> = BTreeMap::new();
        for key in ["generate", "rollout", "judge?"] {
            for t in trajectories(ctx.input_files(key))? {
                by_id.insert(t.trajectory_id.clone(), t);
            }
        }
        let mut missing = 0;
        let selected: Vec<(&RewardRow, &TrajectoryRow)> = rewards
            .iter()
            .filter(|r| r.train && r.advantage != 0.0)
            .enumerate()
            .filter(|(i, _)| ctx.shard.owns(*i))
            .filter_map(|(_, r)| match by_id.get(&r.trajectory_id) {
                Some(t) if !t.completion_ids.is_empty() => Some((r, t)),
                _ => {
                    missing += 1;
                    None
                }
            })
            .collect();
        let grad_path = shard_path(&ctx.out_dir, ShardKind::Gradients, ctx.shard.index);
        let updates_path = shard_path(&ctx.out_dir, ShardKind::Updates, ctx.shard.index);
        if selected.is_empty() {
            write_rows::<GradientRow>(&grad_path, &[])?;
            write_rows::<UpdateRow>(&updates_path, &[])?;
            return Ok(StageOutput {
                files: vec![grad_path, updates_path],
                summary: "no trajectory with a non-zero advantage: nothing to train".into(),
            });
        }
        let ckpt = checkpoint_dir(ctx, "train")?;
        let cfg = TrainConfig {
            train_last_k: last_k(ctx.params),
            ..TrainConfig::default()
        };
        let device = placement(ctx.params, "train")?.device;
        let trainer = Trainer::load(&ckpt, &device, cfg).map_err(err)?;
        let beta = ctx.params.f64("kl_beta");
        let reference = if beta > 0.0 {
            let init = ctx
                .input_files("init")
                .first()
                .ok_or_else(|| Error::stage("train", "kl_beta > 0 needs the `init` checkpoint"))?;
            Some(Model::load(init, &device).map_err(err)?)
        } else {
            None
        };
        let eps = ctx.params.f64("clip_eps");
        let grpo = GrpoParams {
            eps_low: eps,
            eps_high: eps,
            beta,
        };
        let pad = trainer.model().config().pad_token_id.unwrap_or(0);
        let micro = ctx.params.u64("micro_batch").max(1) as usize;
        let step = trainer.steps_done() as u32 + 1;
        let bar = crate::progress::bar(selected.len() as u64, "train");
        let mut total: Option<Vec<NamedGrad>> = None;
        let mut updates = Vec::with_capacity(selected.len());
        let mut tokens = 0u64;
        for chunk in selected.chunks(micro) {
            let seqs: Vec<_> = chunk.iter().map(|(_, t)| training_sequence(t)).collect();
            let batch = build_batch(&seqs, pad, &device).map_err(err)?;
            let pos = LossPositions::of(&batch).map_err(err)?;
            let l = batch.input_ids.dim(1).map_err(|e| err(e.into()))?;
            // The sampler's log-prob of each loss token, in LossPositions order.
            let old: Vec<f32> = pos
                .flat
                .iter()
                .zip(&pos.seq)
                .map(|(&f, &s)| {
                    let t = chunk[s].1;
                    let completion_index = f as usize - s * (l - 1) + 1 - t.prompt_ids.len();
                    t.sampling_logprobs[completion_index]
                })
                .collect();
            let old = Tensor::from_vec(old, pos.flat.len(), &device).map_err(|e| err(e.into()))?;
            let adv: Vec<f32> = chunk.iter().map(|(r, _)| r.advantage).collect();
            let ref_logp = match &reference {
                Some(m) => Some(selected_logprobs(m, &batch, &pos).map_err(err)?.0.detach()),
                None => None,
            };
            let (loss, stats) = grpo_sequence_sum(
                trainer.model(),
                &batch,
                &pos,
                &old,
                &adv,
                ref_logp.as_ref(),
                &grpo,
            )
            .map_err(err)?;
            let grads = trainer.backward(&loss).map_err(err)?;
            let named = trainer.export_grads(&grads).map_err(err)?;
            drop((grads, loss));
            crate::memory::release_free_memory_if_large();
            total = Some(match total {
                None => named,
                Some(acc) => sum_grads(&[acc, named]).map_err(err)?,
            });
            for ((r, _), s) in chunk.iter().zip(stats) {
                tokens += u64::from(s.tokens);
                updates.push(UpdateRow {
                    trajectory_id: r.trajectory_id.clone(),
                    role: r.role.clone(),
                    step,
                    loss: s.loss,
                    mean_ratio: s.mean_ratio,
                    clip_fraction: s.clip_fraction,
                    kl: s.kl,
                    entropy: s.entropy,
                    tokens: s.tokens,
                });
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let sequences = selected.len() as u32;
        let rows: Vec<GradientRow> = total
            .unwrap_or_default()
            .into_iter()
            .map(|g| GradientRow {
                name: g.name,
                shape: g.shape.iter().map(|&d| d as u64).collect(),
                values: g.values,
                sequences,
                tokens,
            })
            .collect();
        let tensors = rows.len();
        write_rows(&grad_path, &rows)?;
        write_rows(&updates_path, &updates)?;
        let mut per_role: BTreeMap<&str, usize> = BTreeMap::new();
        for (r, _) in &selected {
            *per_role.entry(r.role.as_str()).or_default() += 1;
        }
        let roles: Vec<String> = per_role.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let mean_loss =
            updates.iter().map(|u| f64::from(u.loss)).sum::<f64>() / updates.len() as f64;
        let mut summary = format!(
            "{sequences} sequences ({}), {tokens} loss tokens, mean loss {mean_loss:.4}; gradients of {tensors} tensors",
            roles.join(", ")
        );
        if missing > 0 {
            summary.push_str(&format!("; {missing} rewards without a trajectory skipped"));
        }
        Ok(StageOutput {
            files: vec![grad_path, updates_path],
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardSpec;
    use crate::model::llama::HfModel;
    use crate::model::sample::{SamplingParams, SeqRequest, generate};
    use crate::model::test_util::tiny_model;
    use crate::model::train::token_logprobs;
    use crate::params::resolve;
    use crate::stages::apply::ApplyStage;
    use candle_core::Device;

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
        let ctx = StageContext {
            run_dir: run,
            round: 1,
            params: &train_params,
            seed: 0,
            shard: ShardSpec::WHOLE,
            inputs: &inputs,
            out_dir: run.join("round-001/train"),
        };
        let out = TrainStage.run(&ctx).unwrap();
        assert!(out.summary.starts_with("4 sequences"), "{}", out.summary);
        let grads: Vec<GradientRow> = read_rows(&out.files[..1]).unwrap();
        assert!(grads.iter().all(|g| g.sequences == 4));
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
        let ctx = StageContext {
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
