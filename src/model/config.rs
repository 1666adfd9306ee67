//! A Hugging Face `config.json` for the decoder families asl runs (Llama, Qwen2, Qwen3), as
//! `transformers` 4 and 5 write it: what each field means for the math, and the refusal of a
//! field that would change the math but is not understood.

use candle_nn::Activation;
use std::path::Path;

use super::error::{ModelError, Result};
use super::io::read_json;

/// The longest context a config may declare: the rotary tables (2 × positions × head_dim / 2
/// f32) are precomputed at load, 512 MiB at head_dim 128.
pub(crate) const MAX_POSITIONS: usize = 1 << 20;

/// `eos_token_id` of a HF config: one id or a list.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokenId {
    /// All end-of-sequence ids.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".to_string()]
}
fn default_model_type() -> String {
    "llama".to_string()
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> Activation {
    Activation::Silu
}

/// The decoder families asl computes, by `model_type`. They share this file: they differ only
/// in projection biases, a per-head RMSNorm on q and k, and how RoPE frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 1–3.x, SmolLM, Mistral-style dense llama folders (`attention_bias`, `mlp_bias`).
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k and v (not o).
    Qwen2,
    /// Qwen3 (dense): RMSNorm over each head of q and k before RoPE; `head_dim` of its own.
    Qwen3,
}

/// The `model_type`s [`Family::of`] accepts, for error messages.
pub(crate) const SUPPORTED_MODEL_TYPES: &str = "llama, qwen2, qwen3";

impl Family {
    pub fn of(model_type: &str) -> Option<Family> {
        match model_type {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }
}

/// How RoPE's frequencies are scaled (`rope_scaling` in transformers 4, `rope_parameters` in 5).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type = "default"` or none).
    Default,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear { factor: f64 },
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// `config.json` fields of other families that change the math: a folder that sets one is
/// refused rather than computed wrong (their `model_type` usually refuses it first).
const MATH_FIELDS_NOT_UNDERSTOOD: [&str; 12] = [
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "partial_rotary_factor",
    "num_experts",
    "num_local_experts",
    "moe_intermediate_size",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "no_rope_layers",
];

/// Model hyper-parameters with HF `config.json` field names, as `transformers` 4 and 5 write
/// them (5 says `dtype` for `torch_dtype` and keeps RoPE settings in `rope_parameters`). Fields
/// not named here are kept in `extra` and written back unchanged with a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA) when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// The MLP's activation; asl computes SwiGLU (`silu`) only and refuses the others at load.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// transformers 4's RoPE scaling: `null`, or `{"rope_type" (or "type"), "factor", …}`.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5's RoPE settings: `{"rope_theta", "rope_type", "factor", …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Biases on q, k, v and o (Llama, Qwen3). Qwen2 has q, k, v biases whatever this says.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Qwen's sliding-window attention: refused when on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_sliding_window: bool,
    /// transformers 5's per-layer attention kinds: every one must be `full_attention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// transformers 4's name; 5 writes `dtype` (kept in `extra`). Informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Every other field, kept so a checkpoint's `config.json` says what its source said.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    /// Key/value heads (GQA groups).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head dimension.
    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids from the config (may be empty).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(|e| e.ids())
            .unwrap_or_default()
    }

    /// The family of `model_type` (validated configs always have one).
    pub fn family(&self) -> Family {
        Family::of(&self.model_type).unwrap_or(Family::Llama)
    }

    /// Whether q, k and v have biases; o has one only with `attention_bias` (Qwen2 never).
    pub(crate) fn qkv_bias(&self) -> bool {
        self.family() == Family::Qwen2 || self.attention_bias
    }

    pub(crate) fn o_bias(&self) -> bool {
        self.family() != Family::Qwen2 && self.attention_bias
    }

    /// RoPE's base and scaling, from `rope_parameters` (transformers 5) or `rope_theta` and
    /// `rope_scaling` (4). Kinds that depend on the sequence length (`dynamic`, `yarn`,
    /// `longrope`) are refused.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let bad = |m: String| Err(ModelError::Unsupported(m));
        let (theta, params) = match &self.rope_parameters {
            Some(p) if !p.is_null() => (
                p.get("rope_theta")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(self.rope_theta),
                Some(p),
            ),
            _ => (
                self.rope_theta,
                self.rope_scaling.as_ref().filter(|v| !v.is_null()),
            ),
        };
        let Some(p) = params else {
            return Ok((theta, RopeScaling::Default));
        };
        if !p.is_object() {
            return bad(format!("rope_scaling {p} is not an object"));
        }
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |key: &str| -> Result<f64> {
            match p.get(key).and_then(|v| v.as_f64()) {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(ModelError::Unsupported(format!(
                    "rope type {kind:?} needs a positive number `{key}`"
                ))),
            }
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return bad(format!(
                    "rope type {other:?} (supported: default, linear, llama3)"
                ));
            }
        };
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = scaling
            && high_freq_factor <= low_freq_factor
        {
            return bad("llama3 rope: high_freq_factor must exceed low_freq_factor".into());
        }
        Ok((theta, scaling))
    }

    /// Refuses configurations this implementation does not compute exactly.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(m));
        if Family::of(&self.model_type).is_none() {
            return bad(format!(
                "model_type {:?} (supported: {SUPPORTED_MODEL_TYPES})",
                self.model_type
            ));
        }
        if self.hidden_act != Activation::Silu {
            return bad(format!("hidden_act {:?} (only \"silu\")", self.hidden_act));
        }
        self.rope()?;
        if self.use_sliding_window {
            return bad(
                "use_sliding_window = true (sliding-window attention is not supported)".into(),
            );
        }
        if let Some(kind) = self
            .layer_types
            .iter()
            .flatten()
            .find(|k| k.as_str() != "full_attention")
        {
            return bad(format!(
                "layer_types has {kind:?} (only full_attention layers are supported)"
            ));
        }
        for key in MATH_FIELDS_NOT_UNDERSTOOD {
            match self.extra.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Number(n))
                    if key == "partial_rotary_factor" && n.as_f64() == Some(1.0) => {}
                Some(v) => {
                    return bad(format!(
                        "{key} = {v} changes the model's math and is not supported"
                    ));
                }
            }
        }
        if self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.vocab_size == 0
            || self.max_position_embeddings == 0
        {
            return bad("a size in config.json is zero".into());
        }
        // The rotary tables are computed for every position when the model loads.
        if self.max_position_embeddings > MAX_POSITIONS {
            return bad(format!(
                "max_position_embeddings {} is above {MAX_POSITIONS}, the most whose rotary \
                 tables are precomputed",
                self.max_position_embeddings
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return bad(format!("head_dim {hd} must be even and > 0"));
        }
        if self.head_dim.is_none()
            && hd.checked_mul(self.num_attention_heads) != Some(self.hidden_size)
        {
            return bad(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return bad("rms_norm_eps and rope_theta must be > 0".into());
        }
        Ok(())
    }
}

/// Reads `dir/config.json`.
pub fn load_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let cfg: Config = read_json(&path, "model config.json")?;
    cfg.validate().map_err(|e| match e {
        ModelError::Unsupported(msg) => ModelError::UnsupportedFile { path, msg },
        other => other,
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(act: &str) -> std::result::Result<Config, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                "rms_norm_eps": 1e-5, "vocab_size": 32, "hidden_act": "{act}"}}"#
        ))
    }

    #[test]
    fn the_activation_is_typed_and_only_silu_is_computed() {
        assert_eq!(config("silu").unwrap().hidden_act, Activation::Silu);
        config("silu").unwrap().validate().unwrap();
        let gelu = config("gelu").unwrap().validate().unwrap_err().to_string();
        assert!(
            gelu.contains("hidden_act") && gelu.contains("silu"),
            "{gelu}"
        );
        assert!(config("no_such_activation").is_err());
    }
}
