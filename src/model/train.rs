//! The trainer: the weights being trained (all, or only the last k decoder blocks + final norm,
//! the rest constants), stepped by [`super::optim`]'s AdamW; gradient export / summation across
//! workers; and HF-layout checkpoints. Sequences are scored by [`super::scoring`]; the
//! policy-gradient loss lives in [`crate::rl::loss`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::config::{Config, load_config};
use super::error::{ModelError, Result};
use super::io::{StagingDir, load_safetensors_dir, save_safetensors, write_json};
use super::llama::Model;
use super::optim::AdamW;
pub use super::optim::{OPTIMIZER_FILE, StepStats, TRAINER_STATE_FILE, TrainConfig};
use super::placement::Quant;

/// One parameter's gradient, for exchange between workers.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedGrad {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Var builder backend: trainable names are `Var`s, the rest constants.
struct SplitBackend {
    vars: HashMap<String, Var>,
    frozen: HashMap<String, Tensor>,
}

impl SimpleBackend for SplitBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}: expected {s:?}, got {:?}",
                t.shape()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = match (self.vars.get(name), self.frozen.get(name)) {
            (Some(v), _) => v.as_tensor().clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => candle_core::bail!("cannot find tensor {name}"),
        };
        if t.dtype() != dtype || !t.device().same_device(dev) {
            candle_core::bail!("{name}: weights must be f32 on the model device")
        }
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.contains_key(name) || self.frozen.contains_key(name)
    }
}

/// A model being trained: trainable `Var`s (sorted by name) in an AdamW,
/// frozen weights as constants.
pub struct Trainer {
    model: Model,
    config: Config,
    source_dir: PathBuf,
    vars: Vec<(String, Var)>,
    frozen: HashMap<String, Tensor>,
    opt: AdamW,
}

impl Trainer {
    /// Loads the HF folder `dir` (f32, CPU or `device`) for training.
    pub fn load(dir: &Path, device: &Device, cfg: TrainConfig) -> Result<Self> {
        let config = load_config(dir)?;
        let tensors = load_safetensors_dir(dir, device)?;
        let n = config.num_hidden_layers;
        let trainable = |name: &str| match cfg.train_last_k {
            None => true,
            Some(k) => {
                name == "model.norm.weight"
                    || (n.saturating_sub(k)..n)
                        .any(|i| name.starts_with(&format!("model.layers.{i}.")))
            }
        };
        let mut vars = HashMap::new();
        let mut frozen = HashMap::new();
        for (name, t) in tensors {
            if config.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            if trainable(&name) {
                vars.insert(name, Var::from_tensor(&t)?);
            } else {
                frozen.insert(name, t);
            }
        }
        let mut sorted: Vec<(String, Var)> =
            vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let backend = SplitBackend {
            vars,
            frozen: frozen.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = Model::new(&config, vb).map_err(|e| match e {
            ModelError::Candle(c) => ModelError::Weights {
                path: dir.to_path_buf(),
                msg: c.to_string(),
            },
            other => other,
        })?;
        let opt = AdamW::resume(dir, device, cfg, &sorted)?;
        Ok(Self {
            model,
            config,
            source_dir: dir.to_path_buf(),
            vars: sorted,
            frozen,
            opt,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The leading decoder layers nothing trains in (0 when the embeddings train): no gradient
    /// flows through them.
    fn frozen_layers(&self) -> usize {
        if !self.frozen.contains_key("model.embed_tokens.weight") {
            return 0;
        }
        (0..self.config.num_hidden_layers)
            .take_while(|i| {
                let prefix = format!("model.layers.{i}.");
                !self.vars.iter().any(|(name, _)| name.starts_with(&prefix))
            })
            .count()
    }

    /// Runs the matrix products in bf16 on AMX tiles (`train.precision`): only those of the
    /// leading frozen layers (`everywhere = false`), or every projection and the head, forward
    /// and backward ([`Model::train_on_amx`]). Norms, attention and the loss stay f32, and the
    /// weights the optimizer steps and checkpoints save stay f32. Returns the frozen layers.
    pub fn use_amx(&mut self, everywhere: bool) -> Result<usize> {
        let n = self.frozen_layers();
        if everywhere {
            self.model.train_on_amx(n)?;
        } else {
            self.model.quantize_layers(0..n, Quant::AmxBf16)?;
        }
        Ok(n)
    }

    /// How many leading decoder layers of a checkpoint's `weights` (as
    /// [`load_safetensors_dir`] reads them) equal this trainer's frozen weights bit for bit, the
    /// embeddings included (0 when the embeddings differ or train). Those layers compute the
    /// same for both models, so a KL reference built from `weights` can finish the trainer's
    /// [`super::llama::Partial`] instead of running them again.
    pub fn layers_shared_with(&self, weights: &HashMap<String, Tensor>) -> Result<usize> {
        let equal = |name: &str| -> Result<bool> {
            match (self.frozen.get(name), weights.get(name)) {
                (Some(a), Some(b)) => bitwise_equal(a, b),
                _ => Ok(false),
            }
        };
        let all_equal = |names: &[&String]| -> Result<bool> {
            for name in names {
                if !equal(name)? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if !equal("model.embed_tokens.weight")? {
            return Ok(0);
        }
        let mut shared = 0;
        for i in 0..self.frozen_layers() {
            let prefix = format!("model.layers.{i}.");
            let theirs: Vec<&String> = weights.keys().filter(|n| n.starts_with(&prefix)).collect();
            let mine = self
                .frozen
                .keys()
                .filter(|n| n.starts_with(&prefix))
                .count();
            if theirs.is_empty() || mine != theirs.len() || !all_equal(&theirs)? {
                break;
            }
            shared += 1;
        }
        Ok(shared)
    }

    /// Names of the trainable tensors, sorted.
    #[cfg(test)]
    fn trainable_names(&self) -> Vec<&str> {
        self.vars.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Gradients of `loss` (a scalar).
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        Ok(loss.backward()?)
    }

    /// Clips the global grad norm, applies warm-up and one AdamW step.
    pub fn step(&mut self, grads: &mut GradStore) -> Result<StepStats> {
        let stats = self.opt.step(&self.vars, grads)?;
        crate::memory::release_free_memory_if_large();
        Ok(stats)
    }

    /// Gradients of the trainable tensors by name (sorted; zeros where
    /// a tensor got no gradient).
    pub fn export_grads(&self, grads: &GradStore) -> Result<Vec<NamedGrad>> {
        self.vars
            .iter()
            .map(|(name, v)| {
                let shape = v.dims().to_vec();
                let values = match grads.get(v.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0; shape.iter().product()],
                };
                Ok(NamedGrad {
                    name: name.clone(),
                    shape,
                    values,
                })
            })
            .collect()
    }

    /// One optimizer step from exported gradients (e.g. [`sum_grads`] of
    /// several workers). Every trainable tensor must be present.
    pub(crate) fn step_with_grads(&mut self, grads: &[NamedGrad]) -> Result<StepStats> {
        let by_name: HashMap<&str, &NamedGrad> =
            grads.iter().map(|g| (g.name.as_str(), g)).collect();
        // A GradStore holding every trainable var (zero gradients), then
        // overwritten with the given values.
        let mut total = Tensor::zeros((), DType::F32, self.model.device())?;
        for (_, v) in &self.vars {
            total = (total + (v.as_tensor().sum_all()? * 0.0)?)?;
        }
        let mut store = total.backward()?;
        for (name, v) in &self.vars {
            let g = by_name.get(name.as_str()).ok_or_else(|| {
                ModelError::InvalidArgument(format!("gradient for {name} missing"))
            })?;
            if g.shape != v.dims() {
                return Err(ModelError::InvalidArgument(format!(
                    "gradient for {name}: shape {:?} != {:?}",
                    g.shape,
                    v.dims()
                )));
            }
            let t = Tensor::from_slice(&g.values, g.shape.as_slice(), self.model.device())?;
            store.insert(v.as_tensor(), t);
        }
        self.step(&mut store)
    }

    /// Writes an HF folder: all weights with HF names (no `lm_head` when
    /// tied), `config.json`, the optimizer state, and the tokenizer /
    /// generation files copied from the source folder. Atomic.
    ///
    /// Trained every weight: one `model.safetensors`. Trained some: the
    /// sharded HF layout (`model.safetensors.index.json`) with the frozen
    /// tensors in `FROZEN_SHARD` and the trained ones in `TRAINED_SHARD`; when
    /// the source folder has a frozen shard with exactly these tensors (the
    /// previous optimizer step's), it is hard-linked instead of written again,
    /// so a run's checkpoints share their untrained weights on disk.
    pub(crate) fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let sorted = |it: &mut dyn Iterator<Item = (String, Tensor)>| {
            let mut v: Vec<(String, Tensor)> = it.collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let trained = sorted(
            &mut self
                .vars
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone())),
        );
        let frozen = sorted(&mut self.frozen.iter().map(|(n, t)| (n.clone(), t.clone())));
        let stage = StagingDir::new(dir)?;
        if frozen.is_empty() {
            save_safetensors(&stage.path().join("model.safetensors"), &trained)?;
        } else {
            let frozen_names: Vec<&str> = frozen.iter().map(|(n, _)| n.as_str()).collect();
            let dest = stage.path().join(FROZEN_SHARD);
            let src = self.source_dir.join(FROZEN_SHARD);
            let reusable = frozen_shard_names(&self.source_dir)
                .is_some_and(|names| names == frozen_names)
                && src.is_file();
            if !(reusable && std::fs::hard_link(&src, &dest).is_ok()) {
                save_safetensors(&dest, &frozen)?;
            }
            save_safetensors(&stage.path().join(TRAINED_SHARD), &trained)?;
            let weight_map: std::collections::BTreeMap<&str, &str> = frozen
                .iter()
                .map(|(n, _)| (n.as_str(), FROZEN_SHARD))
                .chain(trained.iter().map(|(n, _)| (n.as_str(), TRAINED_SHARD)))
                .collect();
            let total: usize = frozen
                .iter()
                .chain(&trained)
                .map(|(_, t)| t.elem_count() * 4)
                .sum();
            write_json(
                &stage.path().join(SHARD_INDEX_FILE),
                &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
            )?;
        }
        self.opt.save(stage.path(), &self.vars)?;
        write_json(&stage.path().join("config.json"), &self.config)?;
        for f in TOKENIZER_FILES {
            let src = self.source_dir.join(f);
            if src.exists() {
                let dst = stage.path().join(f);
                std::fs::copy(&src, &dst).map_err(|e| ModelError::io(&dst, e))?;
            }
        }
        stage.publish()
    }
}

/// The files besides weights and config that a checkpoint carries from its source folder: the
/// tokenizer in every form transformers writes, and the chat template, which recent
/// transformers keep in `chat_template.jinja` (or `chat_template.json`) rather than in
/// `tokenizer_config.json`; without it a later round would prompt in the fallback template.
const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// The shard of a partly trained checkpoint that holds its untrained tensors.
pub const FROZEN_SHARD: &str = "model-00001-of-00002.safetensors";
/// The shard of a partly trained checkpoint that holds its trained tensors.
pub(crate) const TRAINED_SHARD: &str = "model-00002-of-00002.safetensors";
const SHARD_INDEX_FILE: &str = "model.safetensors.index.json";

/// The tensor names (sorted) a folder's index maps to [`FROZEN_SHARD`], when it has one.
fn frozen_shard_names(dir: &Path) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(dir.join(SHARD_INDEX_FILE)).ok()?;
    let index: Index = serde_json::from_str(&text).ok()?;
    Some(
        index
            .weight_map
            .into_iter()
            .filter(|(_, f)| f == FROZEN_SHARD)
            .map(|(n, _)| n)
            .collect(),
    )
}

/// Same dtype, shape and bits (f32 only: what the trainer and the KL reference load as).
fn bitwise_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.shape() != b.shape() {
        return Ok(false);
    }
    let (a, b) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// Sums gradients of several workers element-wise, in the given worker
/// order (deterministic). All parts must list the same names and shapes.
pub fn sum_grads(parts: &[Vec<NamedGrad>]) -> Result<Vec<NamedGrad>> {
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let mut out = first.clone();
    for part in &parts[1..] {
        if part.len() != out.len() {
            return Err(ModelError::InvalidArgument(
                "gradient sets differ in length".into(),
            ));
        }
        for (acc, g) in out.iter_mut().zip(part) {
            if acc.name != g.name || acc.shape != g.shape {
                return Err(ModelError::InvalidArgument(format!(
                    "gradient {} {:?} does not match {} {:?}",
                    g.name, g.shape, acc.name, acc.shape
                )));
            }
            for (a, b) in acc.values.iter_mut().zip(&g.values) {
                *a += *b;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scoring::{SeqBatch, build_batch, masked_mean, token_logprobs};
    use crate::model::test_util::tiny_model;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn target_batch(model: &Model) -> SeqBatch {
        let prompt = vec![1u32, 19556, 905];
        let completion = vec![520u32, 33, 34, 35, 2];
        let seqs = vec![
            (prompt.clone(), completion.clone(), vec![1u8; 5]),
            (vec![1u32, 11], vec![7u32, 8], vec![1u8, 0]),
        ];
        build_batch(&seqs, 2, model.device()).unwrap()
    }

    fn target_logp(model: &Model, b: &SeqBatch) -> f32 {
        let lp = token_logprobs(model, &b.input_ids, &b.attention_mask).unwrap();
        scalar(&masked_mean(&lp, &b.loss_mask).unwrap())
    }

    fn train_steps(trainer: &mut Trainer, b: &SeqBatch, steps: usize) {
        for _ in 0..steps {
            // A policy-gradient step with advantage 1 on every token: raise their log-probs.
            let lp = token_logprobs(trainer.model(), &b.input_ids, &b.attention_mask).unwrap();
            let loss = masked_mean(&lp.neg().unwrap(), &b.loss_mask).unwrap();
            let mut g = trainer.backward(&loss).unwrap();
            let st = trainer.step(&mut g).unwrap();
            assert!(st.grad_norm.is_finite() && st.grad_norm > 0.0);
        }
    }

    #[test]
    fn training_raises_target_logprob_and_checkpoint_roundtrips() {
        let Some(dir) = tiny_model(3) else { return };
        let cfg = TrainConfig {
            lr: 3e-3,
            warmup_steps: 2,
            ..Default::default()
        };
        let mut trainer = Trainer::load(&dir, &Device::Cpu, cfg).unwrap();
        let b = target_batch(trainer.model());
        assert_eq!(
            b.loss_mask.to_vec2::<f32>().unwrap(),
            vec![
                vec![0., 0., 1., 1., 1., 1., 1.],
                vec![0., 1., 0., 0., 0., 0., 0.]
            ]
        );
        let before = target_logp(trainer.model(), &b);
        train_steps(&mut trainer, &b, 4);
        let after = target_logp(trainer.model(), &b);
        eprintln!("full: target mean logp {before:.3} -> {after:.3}");
        assert!(after > before + 0.5, "{before} -> {after}");

        let out = std::env::temp_dir().join(format!("asl-ckpt-{}", std::process::id()));
        trainer.save_checkpoint(&out).unwrap();
        let reloaded = Model::load(&out, &Device::Cpu).unwrap();
        assert!((target_logp(&reloaded, &b) - after).abs() < 1e-5);
        let st =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(
            st.contains_key("model.layers.1.mlp.down_proj.weight")
                && !st.contains_key("lm_head.weight")
        );
        assert!(out.join("tokenizer.json").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// A chat template kept in `chat_template.jinja` travels with every checkpoint, so the
    /// rounds after the first prompt the way the base model was tuned to.
    #[test]
    fn a_checkpoint_keeps_the_chat_template_file() {
        let Some(tiny) = tiny_model(3) else { return };
        let base = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&tiny).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, base.path().join(path.file_name().unwrap())).unwrap();
        }
        let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n[{{ m.content }}]<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        std::fs::write(base.path().join("chat_template.jinja"), template).unwrap();
        let trainer = Trainer::load(base.path(), &Device::Cpu, TrainConfig::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let ckpt = out.path().join("ckpt");
        trainer.save_checkpoint(&ckpt).unwrap();
        let render = |dir: &Path| {
            crate::model::chat::ChatTemplate::load(dir)
                .unwrap()
                .render_pairs(&[("user", "hi")], true)
                .unwrap()
        };
        assert_eq!(render(&ckpt), render(base.path()));
        assert!(render(&ckpt).contains("[hi]"));
    }

    #[test]
    fn last_k_mode_trains_only_last_blocks() {
        let Some(dir) = tiny_model(3) else { return };
        let cfg = TrainConfig {
            lr: 3e-3,
            train_last_k: Some(1),
            ..Default::default()
        };
        let mut trainer = Trainer::load(&dir, &Device::Cpu, cfg).unwrap();
        let names = trainer.trainable_names();
        assert_eq!(names.len(), 10);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("model.layers.1.") || *n == "model.norm.weight")
        );
        let b = target_batch(trainer.model());
        let before = target_logp(trainer.model(), &b);
        let frozen_before = trainer.frozen["model.layers.0.mlp.up_proj.weight"]
            .sum_all()
            .unwrap();
        train_steps(&mut trainer, &b, 4);
        let after = target_logp(trainer.model(), &b);
        eprintln!("last-1: target mean logp {before:.3} -> {after:.3}");
        assert!(after > before + 0.3, "{before} -> {after}");
        let frozen_after = trainer.frozen["model.layers.0.mlp.up_proj.weight"]
            .sum_all()
            .unwrap();
        assert_eq!(scalar(&frozen_before), scalar(&frozen_after));
    }

    /// `train.precision = "amx_bf16"` (and `warmup.precision`): the frozen layer packed, the
    /// trained ones and the head through the differentiable AMX product, with the last block
    /// training and with every weight (the warm-up's full fine-tune: the tied head's weight is
    /// the trained embedding). Every trained tensor's gradient points where the f32 one does,
    /// training still raises the target, and the weights stepped stay f32.
    #[test]
    fn amx_training_follows_f32() {
        if !crate::model::amx::available() {
            eprintln!("no AMX-BF16 on this machine: train.precision refuses amx_bf16 (stage test)");
            return;
        }
        let Some(dir) = tiny_model(3) else { return };
        for (last_k, frozen) in [(Some(1), 1), (None, 0)] {
            amx_training_follows_f32_with(&dir, last_k, frozen);
        }
    }

    fn amx_training_follows_f32_with(dir: &Path, last_k: Option<usize>, frozen: usize) {
        let cfg = TrainConfig {
            lr: 3e-3,
            train_last_k: last_k,
            ..Default::default()
        };
        let f32_trainer = Trainer::load(dir, &Device::Cpu, cfg.clone()).unwrap();
        let mut amx = Trainer::load(dir, &Device::Cpu, cfg).unwrap();
        assert_eq!(amx.use_amx(true).unwrap(), frozen);
        let b = target_batch(amx.model());
        let grads = |t: &Trainer| {
            let lp = token_logprobs(t.model(), &b.input_ids, &b.attention_mask).unwrap();
            let loss = masked_mean(&lp.neg().unwrap(), &b.loss_mask).unwrap();
            t.export_grads(&t.backward(&loss).unwrap()).unwrap()
        };
        for (a, b) in grads(&f32_trainer).iter().zip(grads(&amx)) {
            assert_eq!(a.name, b.name);
            let dot: f64 = a
                .values
                .iter()
                .zip(&b.values)
                .map(|(x, y)| f64::from(x * y))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            let cos = dot / (norm(&a.values) * norm(&b.values));
            assert!(
                cos > 0.99,
                "{}: cosine {cos} with the f32 gradient (last_k {last_k:?})",
                a.name
            );
        }
        let before = target_logp(amx.model(), &b);
        train_steps(&mut amx, &b, 4);
        let after = target_logp(amx.model(), &b);
        assert!(after > before + 0.3, "{before} -> {after}");
        assert!(amx.vars.iter().all(|(_, v)| v.dtype() == DType::F32));
    }

    /// A trainer shares with a checkpoint the leading layers whose weights are the same bits,
    /// and none when the embeddings differ or train.
    #[test]
    fn layers_shared_with_counts_equal_frozen_layers() {
        let (Some(dir), Some(other)) = (tiny_model(3), tiny_model(4)) else {
            return;
        };
        let last = |k| TrainConfig {
            lr: 3e-3,
            train_last_k: k,
            ..Default::default()
        };
        let shared = |t: &Trainer, d: &Path| {
            let weights = load_safetensors_dir(d, &Device::Cpu).unwrap();
            t.layers_shared_with(&weights).unwrap()
        };
        let mut trainer = Trainer::load(&dir, &Device::Cpu, last(Some(1))).unwrap();
        assert_eq!(shared(&trainer, &dir), 1);
        assert_eq!(shared(&trainer, &other), 0);
        let b = target_batch(trainer.model());
        train_steps(&mut trainer, &b, 1);
        let out = std::env::temp_dir().join(format!("asl-shared-{}", std::process::id()));
        trainer.save_checkpoint(&out).unwrap();
        // The trained checkpoint against its start: the frozen layer is still shared.
        let again = Trainer::load(&out, &Device::Cpu, last(Some(1))).unwrap();
        assert_eq!(shared(&again, &dir), 1);
        // Training every layer (the embeddings too) shares nothing.
        let full = Trainer::load(&out, &Device::Cpu, last(None)).unwrap();
        assert_eq!(shared(&full, &dir), 0);
        // A start whose last layer is frozen but not the one trained: only what is equal.
        let two = Trainer::load(&out, &Device::Cpu, last(Some(0))).unwrap();
        assert_eq!(shared(&two, &dir), 1);
        assert_eq!(shared(&two, &out), 2);
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn summed_worker_grads_equal_full_batch_grads() {
        let Some(dir) = tiny_model(3) else { return };
        let cfg = TrainConfig {
            lr: 1e-3,
            train_last_k: Some(2),
            ..Default::default()
        };
        let trainer = Trainer::load(&dir, &Device::Cpu, cfg.clone()).unwrap();
        let b = target_batch(trainer.model());
        // Token-sum loss normalized by the global token count: additive over workers.
        let n_tok = scalar(&b.loss_mask.sum_all().unwrap());
        let loss_of = |rows: std::ops::Range<usize>| {
            let ids = b.input_ids.narrow(0, rows.start, rows.len()).unwrap();
            let att = b.attention_mask.narrow(0, rows.start, rows.len()).unwrap();
            let m = b.loss_mask.narrow(0, rows.start, rows.len()).unwrap();
            let lp = token_logprobs(trainer.model(), &ids, &att).unwrap();
            ((lp * m).unwrap().sum_all().unwrap() / (-(n_tok as f64))).unwrap()
        };
        let full = trainer
            .export_grads(&trainer.backward(&loss_of(0..2)).unwrap())
            .unwrap();
        let w0 = trainer
            .export_grads(&trainer.backward(&loss_of(0..1)).unwrap())
            .unwrap();
        let w1 = trainer
            .export_grads(&trainer.backward(&loss_of(1..2)).unwrap())
            .unwrap();
        let summed = sum_grads(&[w0, w1]).unwrap();
        assert_eq!(summed.len(), full.len());
        for (s, f) in summed.iter().zip(&full) {
            assert_eq!((&s.name, &s.shape), (&f.name, &f.shape));
            for (a, b) in s.values.iter().zip(&f.values) {
                assert!((a - b).abs() < 1e-5, "{}: {a} vs {b}", s.name);
            }
        }
        // One step from the summed gradients moves the weights like a
        // direct step on the full-batch gradients.
        let mut t1 = Trainer::load(&dir, &Device::Cpu, cfg.clone()).unwrap();
        let mut t2 = Trainer::load(&dir, &Device::Cpu, cfg).unwrap();
        t1.step_with_grads(&summed).unwrap();
        t2.step_with_grads(&full).unwrap();
        let w = |t: &Trainer| {
            t.vars[0]
                .1
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, c) = (w(&t1), w(&t2));
        assert!(a.iter().zip(&c).all(|(x, y)| (x - y).abs() < 1e-6));
        assert!(a != w(&Trainer::load(&dir, &Device::Cpu, TrainConfig::default()).unwrap()));
    }

    /// Backprop through the differentiable op variants matches central
    /// finite differences on the largest-gradient entries of a few tensors.
    #[test]
    fn gradients_match_finite_differences() {
        let Some(dir) = tiny_model(5) else { return };
        let trainer = Trainer::load(&dir, &Device::Cpu, TrainConfig::default()).unwrap();
        let b = target_batch(trainer.model());
        let f = |t: &Trainer| {
            let lp = token_logprobs(t.model(), &b.input_ids, &b.attention_mask).unwrap();
            masked_mean(&lp, &b.loss_mask).unwrap()
        };
        let grads = trainer
            .export_grads(&trainer.backward(&f(&trainer)).unwrap())
            .unwrap();
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.norm.weight",
        ] {
            let g = grads.iter().find(|g| g.name == name).unwrap();
            let (idx, &an) = g
                .values
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            let var = &trainer.vars.iter().find(|v| v.0 == name).unwrap().1;
            let orig = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let h = 1e-2f32;
            let eval = |delta: f32| {
                let mut w = orig.clone();
                w[idx] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                scalar(&f(&trainer)) as f64
            };
            let num = ((eval(h) - eval(-h)) / (2.0 * h as f64)) as f32;
            eval(0.0);
            eprintln!("{name}[{idx}]: backprop {an:.5}, finite diff {num:.5}");
            assert!(
                (an - num).abs() <= 0.05 * an.abs().max(1e-3),
                "{name}: {an} vs {num}"
            );
        }
    }

    /// One GRPO step on the imported SmolLM2 (run with `--ignored`).
    #[test]
    #[ignore]
    fn bench_train_step_smollm2() {
        let Some(dir) = crate::model::test_util::imported_smollm2() else {
            return;
        };
        let seqs: Vec<(Vec<u32>, Vec<u32>, Vec<u8>)> = (0..4u32)
            .map(|i| {
                (
                    (1..65).map(|t| 100 + t + i).collect(),
                    (0..64).map(|t| 500 + t).collect(),
                    vec![1; 64],
                )
            })
            .collect();
        for k in [Some(2), None] {
            let cfg = TrainConfig {
                lr: 1e-5,
                train_last_k: k,
                ..Default::default()
            };
            let mut tr = Trainer::load(&dir, &Device::Cpu, cfg).unwrap();
            let b = build_batch(&seqs, 2, &Device::Cpu).unwrap();
            for _ in 0..2 {
                let t0 = std::time::Instant::now();
                let lp = token_logprobs(tr.model(), &b.input_ids, &b.attention_mask).unwrap();
                let adv = Tensor::new(&[1f32, -1.0, 0.5, -0.5], &Device::Cpu).unwrap();
                let loss = masked_mean(
                    &lp.broadcast_mul(&adv.unsqueeze(1).unwrap())
                        .unwrap()
                        .neg()
                        .unwrap(),
                    &b.loss_mask,
                )
                .unwrap();
                let t1 = t0.elapsed().as_secs_f64();
                let mut g = tr.backward(&loss).unwrap();
                let t2 = t0.elapsed().as_secs_f64();
                let st = tr.step(&mut g).unwrap();
                let t3 = t0.elapsed().as_secs_f64();
                eprintln!(
                    "train_last_k {k:?}: 4x128 tokens: forward {t1:.2}s, backward {:.2}s, adamw {:.2}s (grad norm {:.3})",
                    t2 - t1,
                    t3 - t2,
                    st.grad_norm
                );
            }
        }
    }
}
