//! Deterministic random tiny llama models for tests, sharing the real
//! SmolLM2 tokenizer (vocab 49152) so prompts and stop strings behave as with
//! the shipped model.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Config, EosTokenId};
use super::error::{ModelError, Result};
use super::gguf::{CHATML_TEMPLATE, write_generation_config, write_tokenizer_config};
use super::io::{StagingDir, save_safetensors, write_json};

/// Shape and seed of a tiny model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyConfig {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub seed: u64,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            seed: 0,
        }
    }
}

/// The HF config of a tiny model with `vocab_size` tokens (tied
/// embeddings, SmolLM2 special ids: bos 1, eos 2).
pub(crate) fn tiny_config(tc: &TinyConfig, vocab_size: usize) -> Config {
    Config {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: "llama".into(),
        hidden_size: tc.hidden,
        intermediate_size: tc.intermediate,
        num_hidden_layers: tc.layers,
        num_attention_heads: tc.heads,
        num_key_value_heads: Some(tc.kv_heads),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        vocab_size,
        tie_word_embeddings: true,
        max_position_embeddings: 2048,
        bos_token_id: Some(1),
        eos_token_id: Some(EosTokenId::One(2)),
        pad_token_id: Some(2),
        hidden_act: candle_nn::Activation::Silu,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
        torch_dtype: Some("float32".into()),
        ..Config::default()
    }
}

/// [`init_tiny`] with the tokenizer rebuilt from a GGUF's metadata (the shipped SmolLM2's), by
/// way of a scratch `tokenizer.json` in `scratch_dir` that is removed afterwards.
pub fn init_tiny_from_gguf(
    out_dir: &Path,
    gguf_path: &Path,
    scratch_dir: &Path,
    tc: &TinyConfig,
) -> Result<Config> {
    let (content, _) = super::gguf::read_gguf(gguf_path)?;
    let json = super::gguf::tokenizer_json_from_gguf(gguf_path, &content)?;
    std::fs::create_dir_all(scratch_dir).map_err(|e| ModelError::Io {
        path: scratch_dir.to_path_buf(),
        source: e,
    })?;
    let tok = scratch_dir.join(format!(".tokenizer-{}.json", std::process::id()));
    super::io::write_json(&tok, &json)?;
    let result = init_tiny(out_dir, &tok, tc);
    let _ = std::fs::remove_file(&tok);
    result
}

/// Writes a random tiny model folder to `out_dir` (atomically): weights
/// uniform with std 0.02 (norms 1), drawn in name order from
/// ChaCha8(`seed`), `tokenizer.json` copied from `tokenizer_json`, a ChatML
/// `tokenizer_config.json`, `config.json`, `generation_config.json`.
pub fn init_tiny(out_dir: &Path, tokenizer_json: &Path, tc: &TinyConfig) -> Result<Config> {
    let tok =
        tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| ModelError::Tokenizer {
            path: tokenizer_json.to_path_buf(),
            msg: e.to_string(),
        })?;
    let cfg = tiny_config(tc, tok.get_vocab_size(true));
    cfg.validate()?;
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![nh * hd, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![nkv * hd, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![nkv * hd, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, nh * hd]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    shapes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = ChaCha8Rng::seed_from_u64(tc.seed);
    let bound = 0.02f32 * 3f32.sqrt();
    let mut tensors = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        tensors.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    let stage = StagingDir::new(out_dir)?;
    let dir = stage.path();
    save_safetensors(&dir.join("model.safetensors"), &tensors)?;
    write_json(&dir.join("config.json"), &cfg)?;
    let tok_dst = dir.join("tokenizer.json");
    std::fs::copy(tokenizer_json, &tok_dst).map_err(|e| ModelError::io(&tok_dst, e))?;
    write_tokenizer_config(dir, CHATML_TEMPLATE)?;
    write_generation_config(dir, &cfg)?;
    stage.publish()?;
    Ok(cfg)
}
