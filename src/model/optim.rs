//! The optimizer: AdamW with decoupled weight decay, global grad-norm clipping and a linear
//! learning-rate warm-up, whose moments and step count resume from a checkpoint folder. Written
//! by hand rather than taken from candle-nn: its `AdamW` keeps the moments private, so a
//! checkpoint could not carry them and every round's `apply` would restart the optimizer from
//! zero. The trainer ([`super::train`]) owns the weights and hands them in.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::error::{ModelError, Result};
use super::io::{load_safetensors_dir_file, read_json, save_safetensors, write_json};

/// File names of the optimizer state inside a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up from lr/warmup to lr over this many steps (0: none).
    pub warmup_steps: usize,
    /// Global grad-norm clip (<= 0: none).
    pub max_grad_norm: f64,
    /// Train only the last k blocks + final norm (None: everything).
    pub train_last_k: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            train_last_k: None,
        }
    }
}

/// Statistics of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global grad norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Steps done so far (including this one).
    pub step: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TrainerState {
    /// Optimizer steps taken. A base folder may hold an HF Trainer's own `trainer_state.json`
    /// (`global_step`, no `step`): it reads as 0, a fresh optimizer, as its moments are not here.
    #[serde(default)]
    step: usize,
    /// The updates each tensor's moments have seen, for its bias correction (PyTorch keeps a
    /// step per parameter): a tensor that starts training late starts from 1. Files without it
    /// count `step` for every tensor with saved moments.
    #[serde(default)]
    tensor_steps: std::collections::BTreeMap<String, usize>,
}

/// AdamW's state for a list of trainable tensors (sorted by name; the same list every call):
/// first and second moments and the updates taken per tensor, and the steps taken.
pub(crate) struct AdamW {
    cfg: TrainConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates each tensor's moments have seen.
    updates: Vec<usize>,
    step: usize,
}

impl AdamW {
    /// The state saved in `dir` for `vars`; tensors without saved moments (a different
    /// `train_last_k`, a first training) start from zero, and without a saved step count at 0.
    pub(crate) fn resume(
        dir: &Path,
        device: &Device,
        cfg: TrainConfig,
        vars: &[(String, Var)],
    ) -> Result<AdamW> {
        let saved = match dir.join(OPTIMIZER_FILE) {
            p if p.exists() => load_safetensors_dir_file(&p, device)?,
            _ => HashMap::new(),
        };
        let moment = |kind: &str, name: &str, var: &Var| -> Result<Tensor> {
            match saved.get(&format!("{kind}.{name}")) {
                Some(t) if t.dims() == var.dims() => Ok(t.clone()),
                Some(t) => Err(ModelError::Weights {
                    path: dir.join(OPTIMIZER_FILE),
                    msg: format!(
                        "optimizer moment {kind}.{name} has shape {:?}, the weight {:?}",
                        t.dims(),
                        var.dims()
                    ),
                }),
                None => Ok(var.as_tensor().zeros_like()?),
            }
        };
        let state_path = dir.join(TRAINER_STATE_FILE);
        let state = if state_path.exists() {
            read_json::<TrainerState>(&state_path, "trainer state")?
        } else {
            TrainerState {
                step: 0,
                tensor_steps: Default::default(),
            }
        };
        let (mut m, mut v, mut updates) = (Vec::new(), Vec::new(), Vec::new());
        for (name, var) in vars {
            let resumed = saved.contains_key(&format!("m.{name}"));
            m.push(moment("m", name, var)?);
            v.push(moment("v", name, var)?);
            updates.push(match resumed {
                true => state.tensor_steps.get(name).copied().unwrap_or(state.step),
                false => 0,
            });
        }
        Ok(AdamW {
            cfg,
            m,
            v,
            updates,
            step: state.step,
        })
    }

    fn lr_at(&self, step: usize) -> f64 {
        if self.cfg.warmup_steps == 0 {
            self.cfg.lr
        } else {
            self.cfg.lr * ((step + 1) as f64 / self.cfg.warmup_steps as f64).min(1.0)
        }
    }

    /// Clips the global grad norm, applies warm-up and one AdamW step to `vars`.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &mut GradStore) -> Result<StepStats> {
        let mut sq = 0f64;
        for (_, v) in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(ModelError::InvalidArgument(format!(
                "non-finite gradient norm {norm}; step skipped"
            )));
        }
        if self.cfg.max_grad_norm > 0.0 && norm > self.cfg.max_grad_norm {
            let scale = self.cfg.max_grad_norm / (norm + 1e-6);
            for (_, v) in vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    let scaled = (g * scale)?;
                    grads.insert(v.as_tensor(), scaled);
                }
            }
        }
        let lr = self.lr_at(self.step);
        self.update(vars, grads, lr)?;
        self.step += 1;
        Ok(StepStats {
            grad_norm: norm,
            lr,
            step: self.step,
        })
    }

    /// Decoupled weight decay, then the bias-corrected Adam update, per trainable tensor. Each
    /// tensor's bias correction counts its own updates. Weight decay applies to matrices only
    /// (projections, embeddings), not to norm gains or biases, as TRL's (HF Trainer's) default.
    fn update(&mut self, vars: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        let c = &self.cfg;
        for (i, (_, var)) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let t = (self.updates[i] + 1) as i32;
            let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let decay = if var.rank() >= 2 { c.weight_decay } else { 0.0 };
            let theta = (var.as_tensor() * (1.0 - lr * decay))?;
            var.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
            self.updates[i] += 1;
        }
        Ok(())
    }

    /// Writes the moments of `vars` and the step count into the checkpoint folder `dir`.
    pub fn save(&self, dir: &Path, vars: &[(String, Var)]) -> Result<()> {
        let moments: Vec<(String, Tensor)> = vars
            .iter()
            .enumerate()
            .flat_map(|(i, (name, _))| {
                [
                    (format!("m.{name}"), self.m[i].clone()),
                    (format!("v.{name}"), self.v[i].clone()),
                ]
            })
            .collect();
        save_safetensors(&dir.join(OPTIMIZER_FILE), &moments)?;
        let tensor_steps = vars
            .iter()
            .zip(&self.updates)
            .map(|((name, _), &n)| (name.clone(), n))
            .collect();
        write_json(
            &dir.join(TRAINER_STATE_FILE),
            &TrainerState {
                step: self.step,
                tensor_steps,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, values: &[f32], shape: &[usize]) -> (String, Var) {
        let t = Tensor::from_slice(values, shape, &Device::Cpu).unwrap();
        (name.to_string(), Var::from_tensor(&t).unwrap())
    }

    /// Gradients of sum(w) for every var: all ones.
    fn ones_grads(vars: &[(String, Var)]) -> GradStore {
        let loss = vars
            .iter()
            .map(|(_, v)| v.as_tensor().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        loss.backward().unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn config() -> TrainConfig {
        TrainConfig {
            lr: 0.01,
            max_grad_norm: 0.0,
            ..Default::default()
        }
    }

    /// A tensor that starts training at step 1000 (no saved moments) takes Adam's first step,
    /// of size lr, not one bias-corrected for 1000 steps it never took (about 2.5·lr here).
    #[test]
    fn a_tensor_that_starts_late_is_bias_corrected_from_its_first_update() {
        let dir = tempfile::tempdir().unwrap();
        let state = serde_json::json!({"step": 1000});
        std::fs::write(dir.path().join(TRAINER_STATE_FILE), state.to_string()).unwrap();
        let vars = vec![var("w", &[1.0, 2.0], &[1, 2])];
        let mut opt = AdamW::resume(dir.path(), &Device::Cpu, config(), &vars).unwrap();
        let mut grads = ones_grads(&vars);
        opt.step(&vars, &mut grads).unwrap();
        for (after, before) in values(&vars[0].1).iter().zip([1.0, 2.0]) {
            assert!((before - after - 0.01).abs() < 1e-6, "{after}");
        }
        // Saved and resumed, it carries its own count.
        opt.save(dir.path(), &vars).unwrap();
        let again = AdamW::resume(dir.path(), &Device::Cpu, config(), &vars).unwrap();
        assert_eq!((again.step, again.updates.clone()), (1001, vec![1]));
    }

    /// An HF Trainer's `trainer_state.json` in a base folder is not asl's: a fresh optimizer.
    #[test]
    fn an_hf_trainer_state_reads_as_a_fresh_optimizer() {
        let dir = tempfile::tempdir().unwrap();
        let state = serde_json::json!({"global_step": 5, "log_history": []});
        std::fs::write(dir.path().join(TRAINER_STATE_FILE), state.to_string()).unwrap();
        let vars = vec![var("w", &[1.0], &[1, 1])];
        let opt = AdamW::resume(dir.path(), &Device::Cpu, config(), &vars).unwrap();
        assert_eq!((opt.step, opt.updates), (0, vec![0]));
    }

    /// Weight decay shrinks matrices, not norm gains or biases (TRL's default).
    #[test]
    fn weight_decay_leaves_vectors_alone() {
        let dir = tempfile::tempdir().unwrap();
        let vars = vec![
            var("model.norm.weight", &[1.0, 1.0], &[2]),
            var("proj.weight", &[1.0, 1.0], &[1, 2]),
        ];
        let cfg = TrainConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..config()
        };
        let mut opt = AdamW::resume(dir.path(), &Device::Cpu, cfg, &vars).unwrap();
        let mut grads = ones_grads(&vars);
        opt.step(&vars, &mut grads).unwrap();
        // Both take the same Adam step (-lr); only the matrix is also decayed by lr·wd = 5 %.
        let (norm, proj) = (values(&vars[0].1), values(&vars[1].1));
        assert!(norm.iter().all(|&x| (x - 0.9).abs() < 1e-6), "{norm:?}");
        assert!(
            proj.iter().all(|&x| (x - (0.95 - 0.1)).abs() < 1e-6),
            "{proj:?}"
        );
    }
}
