//! GGUF (llama architecture) → Hugging Face folder conversion.
//!
//! Every tensor is dequantized to f32 and renamed to its HF name; the rows
//! of `attn_q`/`attn_k`, which llama.cpp's converter permutes for its
//! interleaved RoPE, are put back in HF's rotate-half order. The tokenizer,
//! stored only as GGUF metadata (`tokenizer.ggml.*`, GPT-2 byte-level BPE),
//! is rebuilt as a `tokenizers` JSON. Output files: `model.safetensors`
//! (no `lm_head.weight` when embeddings are tied), `config.json`,
//! `tokenizer.json`, `tokenizer_config.json` (ChatML template),
//! `generation_config.json`. The folder is written under a temporary name
//! and renamed into place when complete.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use super::config::{Config, EosTokenId};
use super::error::{ModelError, Result};
use super::io::{StagingDir, save_safetensors, write_json};

/// SmolLM2's ChatML chat template (used when the GGUF carries none).
pub use super::chat::CHATML_TEMPLATE;

/// What [`import_gguf`] did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub config: Config,
    pub tensors: usize,
    pub seconds: f64,
}

fn gguf_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.md
            .get(key)
            .ok_or_else(|| gguf_err(self.path, format!("metadata key {key} missing")))
    }
    fn u32(&self, key: &str) -> Result<u32> {
        self.get(key)?
            .to_u32()
            .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.md.get(key).and_then(|v| v.to_u32().ok())
    }
    fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)?
            .to_f32()
            .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))
    }
    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))
            })
            .collect()
    }
    fn i32s(&self, key: &str) -> Result<Vec<i32>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))?;
        arr.iter()
            .map(|v| {
                v.to_i32()
                    .map_err(|e| gguf_err(self.path, format!("{key}: {e}")))
            })
            .collect()
    }
}

/// The HF config described by a llama GGUF's metadata.
pub fn config_from_gguf(path: &Path, ct: &gguf_file::Content) -> Result<Config> {
    let m = Meta {
        path,
        md: &ct.metadata,
    };
    let arch = m.string("general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture {arch:?} (only llama)",
            path.display()
        )));
    }
    if m.opt_u32("llama.expert_count").unwrap_or(0) > 1 {
        return Err(ModelError::Unsupported(format!(
            "{}: mixture-of-experts GGUF",
            path.display()
        )));
    }
    let heads = m.u32("llama.attention.head_count")? as usize;
    let hidden = m.u32("llama.embedding_length")? as usize;
    let vocab = match m.opt_u32("llama.vocab_size") {
        Some(v) => v as usize,
        None => m.strings("tokenizer.ggml.tokens")?.len(),
    };
    let cfg = Config {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: "llama".into(),
        hidden_size: hidden,
        intermediate_size: m.u32("llama.feed_forward_length")? as usize,
        num_hidden_layers: m.u32("llama.block_count")? as usize,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            m.opt_u32("llama.attention.head_count_kv")
                .unwrap_or(heads as u32) as usize,
        ),
        head_dim: None,
        rms_norm_eps: m.f32("llama.attention.layer_norm_rms_epsilon")? as f64,
        rope_theta: m
            .md
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10_000.0) as f64,
        vocab_size: vocab,
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        max_position_embeddings: m.opt_u32("llama.context_length").unwrap_or(2048) as usize,
        bos_token_id: m.opt_u32("tokenizer.ggml.bos_token_id"),
        eos_token_id: m
            .opt_u32("tokenizer.ggml.eos_token_id")
            .map(EosTokenId::One),
        pad_token_id: m.opt_u32("tokenizer.ggml.padding_token_id"),
        hidden_act: candle_nn::Activation::Silu,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
        torch_dtype: Some("float32".into()),
        ..Config::default()
    };
    cfg.validate()?;
    if let Some(rd) = m.opt_u32("llama.rope.dimension_count")
        && rd as usize != cfg.head_dim()
    {
        return Err(ModelError::Unsupported(format!(
            "{}: partial RoPE (rope dimension {rd} != head_dim {})",
            path.display(),
            cfg.head_dim()
        )));
    }
    Ok(cfg)
}

/// Rebuilds the HF `tokenizer.json` from `tokenizer.ggml.*` metadata:
/// byte-level BPE with the GGUF vocab and merges; control (type 3) and
/// user-defined (type 4) tokens become added tokens (control ones special).
/// For `tokenizer.ggml.pre = "smollm"` digits are split individually
/// before the byte-level split, as in SmolLM2's own tokenizer.
pub fn tokenizer_json_from_gguf(path: &Path, ct: &gguf_file::Content) -> Result<serde_json::Value> {
    let m = Meta {
        path,
        md: &ct.metadata,
    };
    let model = m.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "{}: tokenizer model {model:?} (only gpt2 byte-level BPE)",
            path.display()
        )));
    }
    let tokens = m.strings("tokenizer.ggml.tokens")?;
    let types = m
        .i32s("tokenizer.ggml.token_type")
        .unwrap_or_else(|_| vec![1; tokens.len()]);
    let merges = m.strings("tokenizer.ggml.merges")?;
    let pre = m.string("tokenizer.ggml.pre").unwrap_or_default();

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let merges = merges
        .iter()
        .map(|s| {
            s.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| gguf_err(path, format!("merge {s:?} has no space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let pre_tokenizer = if pre == "smollm" {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level,
        ]})
    } else {
        byte_level
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// Writes `tokenizer_config.json` for SmolLM2's special tokens with
/// `chat_template`.
pub(crate) fn write_tokenizer_config(dir: &Path, chat_template: &str) -> Result<()> {
    let specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<repo_name>",
        "<reponame>",
        "<file_sep>",
        "<filename>",
        "<gh_stars>",
        "<issue_start>",
        "<issue_comment>",
        "<issue_closed>",
        "<jupyter_start>",
        "<jupyter_text>",
        "<jupyter_code>",
        "<jupyter_output>",
        "<jupyter_script>",
        "<empty_output>",
    ];
    let mut decoder = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        decoder.insert(
            i.to_string(),
            json!({"content": s, "lstrip": false, "normalized": false,
                   "rstrip": false, "single_word": false, "special": true}),
        );
    }
    let v = json!({
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": 49152,
    });
    write_json(&dir.join("tokenizer_config.json"), &v)
}

/// Writes `generation_config.json` (bos/eos/pad ids of `cfg`).
pub(crate) fn write_generation_config(dir: &Path, cfg: &Config) -> Result<()> {
    let v = json!({
        "_from_model_config": true,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    });
    write_json(&dir.join("generation_config.json"), &v)
}

/// GGUF rows `(n_head * hd, in)` in llama.cpp order back to HF order:
/// `(n_head, hd/2, 2, in) -> (n_head, 2, hd/2, in)`.
fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

fn hf_name(path: &Path, name: &str) -> Result<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(f.to_string());
    }
    let rest = name
        .strip_prefix("blk.")
        .ok_or_else(|| gguf_err(path, format!("unexpected tensor {name}")))?;
    let (layer, leaf) = rest
        .split_once('.')
        .ok_or_else(|| gguf_err(path, format!("unexpected tensor {name}")))?;
    let hf_leaf = match leaf {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return Err(gguf_err(path, format!("unsupported tensor {name}"))),
    };
    Ok(format!("model.layers.{layer}.{hf_leaf}"))
}

/// Reads a GGUF's header (metadata and tensor table). candle's reader bounds every length by
/// the file's size; what it leaves unchecked is checked here: an alignment of 0 (a division by
/// zero in candle) and tensor shapes whose element count overflows (a panic in candle when a
/// tensor is read).
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, std::fs::File)> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    if let Some(alignment) = gguf_alignment(&mut file).map_err(|e| ModelError::io(path, e))?
        && alignment == 0
    {
        return Err(gguf_err(path, "general.alignment is 0".to_string()));
    }
    let ct = gguf_file::Content::read(&mut file).map_err(|e| gguf_err(path, e.to_string()))?;
    for (name, info) in &ct.tensor_infos {
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        let bytes = elems.and_then(|n| n.checked_mul(info.ggml_dtype.type_size()));
        if bytes.is_none() {
            return Err(gguf_err(
                path,
                format!("tensor {name}: shape {:?} is too large", info.shape.dims()),
            ));
        }
    }
    Ok((ct, file))
}

/// The `general.alignment` value of a GGUF header, read before candle's reader divides by it:
/// the header is scanned key by key with every length bounded by the file's size. `None` when
/// the key is absent or the header ends first (candle's reader then reports what is wrong).
fn gguf_alignment(file: &mut std::fs::File) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let size = file.metadata()?.len();
    let mut r = std::io::BufReader::new(&mut *file);
    let u32_ = |r: &mut std::io::BufReader<&mut std::fs::File>| -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    };
    let u64_ = |r: &mut std::io::BufReader<&mut std::fs::File>| -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let found = (|| -> std::io::Result<Option<u64>> {
        let magic = u32_(&mut r)?;
        let version = u32_(&mut r)?;
        if magic != 0x4655_4747 || !(2..=3).contains(&version) {
            return Ok(None);
        }
        let _tensors = u64_(&mut r)?;
        let kvs = u64_(&mut r)?;
        for _ in 0..kvs.min(size) {
            let len = u64_(&mut r)?;
            if len > size {
                return Ok(None);
            }
            let mut key = vec![0u8; len as usize];
            r.read_exact(&mut key)?;
            let ty = u32_(&mut r)?;
            let scalar = |ty: u32| -> Option<u64> {
                Some(match ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    _ => return None,
                })
            };
            if key == b"general.alignment" {
                let value = match ty {
                    0 | 1 => {
                        let mut b = [0u8; 1];
                        r.read_exact(&mut b)?;
                        b[0] as u64
                    }
                    2 | 3 => {
                        let mut b = [0u8; 2];
                        r.read_exact(&mut b)?;
                        u16::from_le_bytes(b) as u64
                    }
                    4..=6 => u32_(&mut r)? as u64,
                    _ => return Ok(None),
                };
                return Ok(Some(value));
            }
            match ty {
                8 => {
                    let len = u64_(&mut r)?;
                    if len > size {
                        return Ok(None);
                    }
                    r.seek_relative(len as i64)?;
                }
                9 => {
                    let item = u32_(&mut r)?;
                    let n = u64_(&mut r)?;
                    if item == 8 {
                        for _ in 0..n.min(size) {
                            let len = u64_(&mut r)?;
                            if len > size {
                                return Ok(None);
                            }
                            r.seek_relative(len as i64)?;
                        }
                    } else {
                        let Some(w) = scalar(item) else {
                            return Ok(None);
                        };
                        match n.checked_mul(w) {
                            Some(skip) if skip <= size => r.seek_relative(skip as i64)?,
                            _ => return Ok(None),
                        }
                    }
                }
                ty => {
                    let Some(w) = scalar(ty) else {
                        return Ok(None);
                    };
                    r.seek_relative(w as i64)?;
                }
            }
        }
        Ok(None)
    })();
    drop(r);
    file.seek(SeekFrom::Start(0))?;
    match found {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Converts a llama GGUF into a HF folder at `out_dir` (see module doc).
pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<ImportReport> {
    let start = Instant::now();
    let (ct, mut file) = read_gguf(gguf_path)?;
    let cfg = config_from_gguf(gguf_path, &ct)?;
    let tok_json = tokenizer_json_from_gguf(gguf_path, &ct)?;
    // Validate the rebuilt tokenizer before writing anything.
    let tok_bytes = serde_json::to_vec(&tok_json).map_err(|source| ModelError::Json {
        path: gguf_path.to_path_buf(),
        source,
    })?;
    tokenizers::Tokenizer::from_bytes(&tok_bytes).map_err(|e| ModelError::Tokenizer {
        path: gguf_path.to_path_buf(),
        msg: format!("rebuilt tokenizer does not load: {e}"),
    })?;
    let template = ct
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| CHATML_TEMPLATE.to_string());

    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let hf = hf_name(gguf_path, name)?;
        let q = ct
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| gguf_err(gguf_path, format!("{name}: {e}")))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if name.ends_with("attn_q.weight") {
            t = unpermute(&t, cfg.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute(&t, cfg.kv_heads())?;
        }
        tensors.push((hf, t));
    }
    let n = tensors.len();

    let stage = StagingDir::new(out_dir)?;
    let dir = stage.path();
    save_safetensors(&dir.join("model.safetensors"), &tensors)?;
    drop(tensors);
    write_json(&dir.join("config.json"), &cfg)?;
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, &tok_bytes).map_err(|e| ModelError::io(&tok_path, e))?;
    write_tokenizer_config(dir, &template)?;
    write_generation_config(dir, &cfg)?;
    stage.publish()?;
    Ok(ImportReport {
        config: cfg,
        tensors: n,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{D, DType, Device, IndexOp, Tensor};
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    use super::*;
    use crate::model::hf::load_tokenizer;
    use crate::model::llama::Model;
    use crate::model::test_util::{gguf_asset, imported_smollm2, max_abs_diff, tokenizer_json};

    /// Plain reference BPE over one byte-level pre-token: repeatedly merge
    /// the adjacent pair of lowest GGUF merge rank.
    fn reference_bpe(
        word: &str,
        ranks: &HashMap<(String, String), usize>,
        ids: &HashMap<String, u32>,
    ) -> Vec<u32> {
        let mut syms: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|i| {
                    ranks
                        .get(&(syms[i].clone(), syms[i + 1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", syms[i], syms[i + 1]);
            syms.splice(i..i + 2, [merged]);
        }
        syms.iter().map(|s| ids[s]).collect()
    }

    #[test]
    fn rebuilt_tokenizer_matches_gguf_vocab_and_merges() {
        let (Some(g), Some(tj)) = (gguf_asset(), tokenizer_json()) else {
            return;
        };
        let (ct, _) = read_gguf(&g).unwrap();
        let m = Meta {
            path: &g,
            md: &ct.metadata,
        };
        let tokens = m.strings("tokenizer.ggml.tokens").unwrap();
        let merges = m.strings("tokenizer.ggml.merges").unwrap();
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let ranks: HashMap<(String, String), usize> = merges
            .iter()
            .enumerate()
            .filter_map(|(r, s)| s.split_once(' ').map(|(a, b)| ((a.into(), b.into()), r)))
            .collect();
        let tok = tokenizers::Tokenizer::from_file(&tj).unwrap();
        let pre = tok.get_pre_tokenizer().unwrap();

        // Known ids from the GGUF vocab.
        let enc = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
        assert_eq!(enc("Hello world"), vec![ids["Hello"], ids["Ġworld"]]);
        assert_eq!(enc("Hello world"), vec![19556, 905]);
        assert_eq!(enc("2024"), vec![ids["2"], ids["0"], ids["2"], ids["4"]]);
        assert_eq!(
            enc("<|im_start|>user\nHi<|im_end|>\n<|endoftext|>"),
            vec![1, ids["user"], ids["Ċ"], ids["Hi"], 2, ids["Ċ"], 0]
        );

        let texts = [
            "Hello world",
            "The quick brown fox jumps over the lazy dog.",
            "In 1969, Apollo 11 landed; 3.14159 and 1,000,000!",
            "  leading spaces\n\n\ttabs and\r\nCRLF  trailing  ",
            "héllo wörld — naïve café, 東京 and emojis 🎉🚀",
            "fn main() { println!(\"{}\", x[0] + y_1); } // it's we'll they're",
            "<search>capital of France</search><answer>Paris</answer>",
            "don't DON'T I'm you've 'quoted'",
        ];
        for text in texts {
            let got = enc(text);
            let mut pts = PreTokenizedString::from(text);
            pre.pre_tokenize(&mut pts).unwrap();
            let want: Vec<u32> = pts
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .iter()
                .flat_map(|(w, _, _)| reference_bpe(w, &ranks, &ids))
                .collect();
            assert_eq!(got, want, "ids differ for {text:?}");
            // Round trip.
            assert_eq!(
                tok.decode(&got, false).unwrap(),
                text,
                "round trip of {text:?}"
            );
        }
        // Special tokens survive decoding unless skipped.
        assert_eq!(
            tok.decode(&[1, 2], false).unwrap(),
            "<|im_start|><|im_end|>"
        );
        assert_eq!(tok.decode(&[1, 19556, 2], true).unwrap(), "Hello");
    }

    fn probs_last(logits: &Tensor) -> Tensor {
        candle_nn::ops::softmax(&logits.to_dtype(DType::F32).unwrap(), D::Minus1).unwrap()
    }

    /// Next-token distributions of the converted dense model against candle's
    /// `quantized_llama` on the GGUF: (a) with the reference's weights
    /// dequantized to f32 (`CANDLE_DEQUANTIZE_ALL`, same arithmetic up to
    /// RoPE layout: checks renaming and the q/k un-permutation exactly), and
    /// (b) the stock Q4_1 × Q8_1 kernels (activation quantization adds ~0.01).
    #[test]
    fn imported_model_matches_quantized_reference() {
        let (Some(g), Some(dir)) = (gguf_asset(), imported_smollm2()) else {
            return;
        };
        let dev = Device::Cpu;
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            assert!(dir.join(f).exists(), "{f} missing");
        }
        let st = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
        assert!(!st.contains_key("lm_head.weight"));
        assert_eq!(st.len(), 2 + 9 * 30);
        let model = Model::load(&dir, &dev).unwrap();
        let tok = load_tokenizer(&dir).unwrap();
        let prompts = [
            "The capital of France is",
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            "def fibonacci(n):\n    ",
            "Once upon a time, in a small village,",
        ];
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| tok.encode(*p, false).unwrap().get_ids().to_vec())
            .collect();
        let run_reference = |encoded: Vec<Vec<u32>>| -> Vec<Tensor> {
            let (ct, mut file) = read_gguf(&g).unwrap();
            let mut r = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                ct, &mut file, &dev,
            )
            .unwrap();
            encoded
                .iter()
                .map(|ids| {
                    r.clear_kv_cache();
                    let x = Tensor::new(ids.as_slice(), &dev)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    probs_last(&r.forward(&x, 0).unwrap().i(0).unwrap())
                })
                .collect()
        };
        let quant = run_reference(encoded.clone());
        // SAFETY: only this test reads CANDLE_DEQUANTIZE_ALL, on a thread
        // spawned after the write (candle caches it per thread).
        unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
        let enc2 = encoded.clone();
        let deq = std::thread::scope(|s| s.spawn(|| run_reference(enc2)).join().unwrap());
        unsafe { std::env::remove_var("CANDLE_DEQUANTIZE_ALL") };

        let (mut worst_q, mut worst_d) = (0f32, 0f32);
        for (i, ids) in encoded.iter().enumerate() {
            let x = Tensor::new(ids.as_slice(), &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let full = model.forward_full(&x, &x.ones_like().unwrap()).unwrap();
            let got = probs_last(&full.i((0, ids.len() - 1)).unwrap());
            let (dq, dd) = (max_abs_diff(&got, &quant[i]), max_abs_diff(&got, &deq[i]));
            let top = got.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            let top_d = deq[i].argmax(0).unwrap().to_scalar::<u32>().unwrap();
            eprintln!(
                "parity {:?}: max|Δp| vs Q4_1xQ8_1 {dq:.4}, vs dequantized {dd:.2e}; top {top} {:?}",
                prompts[i],
                tok.decode(&[top], false).unwrap()
            );
            assert!(
                dd < 1e-4,
                "dequantized reference differs by {dd} for {:?}",
                prompts[i]
            );
            assert_eq!(top, top_d);
            assert!(
                dq < 0.03,
                "quantized reference differs by {dq} for {:?}",
                prompts[i]
            );
            worst_q = worst_q.max(dq);
            worst_d = worst_d.max(dd);
        }
        eprintln!("parity worst: {worst_q:.4} (quantized kernels), {worst_d:.2e} (dequantized)");
    }
}
