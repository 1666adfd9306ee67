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
    step: usize,
}

/// AdamW's state for a list of trainable tensors (sorted by name; the same list every call):
/// first and second moments per tensor and the steps taken.
pub(crate) struct AdamW {
    cfg: TrainConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
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
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (name, var) in vars {
            m.push(moment("m", name, var)?);
            v.push(moment("v", name, var)?);
        }
        let state_path = dir.join(TRAINER_STATE_FILE);
        let step = if state_path.exists() {
            read_json::<TrainerState>(&state_path, "trainer state")?.step
        } else {
            0
        };
        Ok(AdamW { cfg, m, v, step })
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

    /// Decoupled weight decay, then the bias-corrected Adam update, per trainable tensor.
    fn update(&mut self, vars: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        let c = &self.cfg;
        let t = (self.step + 1) as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, (_, var)) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let theta = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(theta - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
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
        write_json(
            &dir.join(TRAINER_STATE_FILE),
            &TrainerState { step: self.step },
        )
    }
}
