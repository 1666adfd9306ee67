//! Parity with `transformers` for every family asl loads: the tiny random models of
//! `tests/fixtures/parity/FAMILY` (made by `scripts/make-parity-fixtures.py`, committed with
//! `transformers`' logits and greedy tokens) must give the same logits within 1e-4 on the
//! padded path, the cached decode path and the training path, and the same greedy tokens.
//! Each folder's config is read in transformers 5's spelling (`config.json`) and 4's
//! (`config.v4.json`), and a checkpoint the trainer writes loads back to the same logits.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::config::Family;
use super::llama::Model;
use super::test_util::max_abs_diff;
use super::train::{TrainConfig, Trainer};

const FAMILIES: [(&str, Family); 3] = [
    ("llama3", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
];

/// The largest logit difference allowed (f32 on both sides; sums in another order).
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

struct Reference {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Tensor>,
    greedy: Vec<Vec<u32>>,
}

fn reference(dir: &Path) -> Reference {
    let prompts: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let logits = (0..prompts.len())
        .map(|i| tensors[&format!("logits_{i}")].clone())
        .collect();
    let greedy = (0..prompts.len())
        .map(|i| {
            tensors[&format!("greedy_{i}")]
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
        })
        .collect();
    Reference {
        prompts,
        logits,
        greedy,
    }
}

/// Logits `(L, V)` of one prompt through the padded (training and scoring) path.
fn full_logits(model: &Model, prompt: &[u32]) -> Tensor {
    let ids = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = ids.ones_like().unwrap();
    model.forward_full(&ids, &mask).unwrap().squeeze(0).unwrap()
}

/// The prompt's last-token logits and `n` greedy tokens through the KV-cache decode path.
fn decode(model: &Model, prompt: &[u32], n: usize) -> (Tensor, Vec<u32>) {
    let mut cache = model.new_cache();
    let mut logits = model.forward_step(&[prompt], &mut [&mut cache]).unwrap();
    let first = logits.squeeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        out.push(next);
        logits = model.forward_step(&[&[next]], &mut [&mut cache]).unwrap();
    }
    (first, out)
}

/// Every check on one family; returns the largest logit difference seen.
fn check(name: &str, family: Family) -> f32 {
    let dir = fixture(name);
    let r = reference(&dir);
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config().family(), family, "{name}");
    let mut worst = 0f32;
    for (i, prompt) in r.prompts.iter().enumerate() {
        let full = full_logits(&model, prompt);
        let d = max_abs_diff(&full, &r.logits[i]);
        assert!(
            d < TOLERANCE,
            "{name} prompt {i}: padded logits differ by {d}"
        );
        worst = worst.max(d);
        let (last, greedy) = decode(&model, prompt, r.greedy[i].len());
        let want_last = r.logits[i].get(prompt.len() - 1).unwrap();
        let d = max_abs_diff(&last, &want_last);
        assert!(
            d < TOLERANCE,
            "{name} prompt {i}: decode logits differ by {d}"
        );
        worst = worst.max(d);
        assert_eq!(greedy, r.greedy[i], "{name} prompt {i}: greedy tokens");
    }

    // transformers 4's spelling of the same config gives the same model.
    let v4 = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(f), v4.path().join(f)).unwrap();
    }
    std::fs::copy(dir.join("config.v4.json"), v4.path().join("config.json")).unwrap();
    let old = Model::load(v4.path(), &Device::Cpu).unwrap();
    assert_eq!(old.config().rope().unwrap(), model.config().rope().unwrap());
    let d = max_abs_diff(
        &full_logits(&old, &r.prompts[0]),
        &full_logits(&model, &r.prompts[0]),
    );
    assert_eq!(d, 0.0, "{name}: the v4 config computes another model");

    // The training path (tracked weights, composite kernels) and the checkpoint it writes.
    let trainer = Trainer::load(
        &dir,
        &Device::Cpu,
        TrainConfig {
            train_last_k: Some(1),
            ..TrainConfig::default()
        },
    )
    .unwrap();
    let d = max_abs_diff(&full_logits(trainer.model(), &r.prompts[1]), &r.logits[1]);
    assert!(d < TOLERANCE, "{name}: training-path logits differ by {d}");
    worst = worst.max(d);
    let out = tempfile::tempdir().unwrap();
    let ckpt = out.path().join("ckpt");
    trainer.save_checkpoint(&ckpt).unwrap();
    let back = Model::load(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(
        back.config(),
        model.config(),
        "{name}: config changed on save"
    );
    let d = max_abs_diff(&full_logits(&back, &r.prompts[1]), &r.logits[1]);
    assert!(
        d < TOLERANCE,
        "{name}: saved checkpoint's logits differ by {d}"
    );
    worst
}

#[test]
fn every_family_matches_transformers() {
    for (name, family) in FAMILIES {
        let worst = check(name, family);
        println!("{name}: max |Δlogit| vs transformers {worst:.2e}");
    }
}

/// A copy of `name`'s fixture with `edit` applied to its config.json.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    Model::load(dir, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn what_is_not_computed_exactly_is_refused_with_the_file_and_the_reason() {
    let gemma = edited("qwen2", |c| c["model_type"] = "gemma2".into());
    let e = load_error(gemma.path());
    assert!(
        e.contains("config.json") && e.contains("\"gemma2\"") && e.contains("qwen3"),
        "{e}"
    );
    let window = edited("qwen2", |c| c["use_sliding_window"] = true.into());
    assert!(load_error(window.path()).contains("use_sliding_window"));
    let layers = edited("qwen3", |c| {
        c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"])
    });
    assert!(load_error(layers.path()).contains("sliding_attention"));
    let yarn = edited("llama3", |c| {
        c["rope_parameters"]["rope_type"] = "yarn".into()
    });
    assert!(load_error(yarn.path()).contains("\"yarn\""));
    let softcap = edited("llama3", |c| c["final_logit_softcapping"] = 30.0.into());
    assert!(load_error(softcap.path()).contains("final_logit_softcapping"));
    // A template whose turn markers the tokenizer lacks.
    let odd = edited("qwen2", |_| {});
    for f in ["tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixture("qwen2").join(f), odd.path().join(f)).unwrap();
    }
    let template = std::fs::read_to_string(odd.path().join("tokenizer_config.json"))
        .unwrap()
        .replace("<|im_start|>", "<|turn_start|>");
    std::fs::write(odd.path().join("tokenizer_config.json"), template).unwrap();
    let e = super::hf::HfModel::load(odd.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("<|turn_start|>"),
        "{e}"
    );
    // Llama with biases expects them in the weights: a missing one names the folder.
    let biased = edited("llama3", |c| c["attention_bias"] = true.into());
    let e = load_error(biased.path());
    assert!(
        e.contains("bias") && e.contains(&*biased.path().to_string_lossy()),
        "{e}"
    );
}

#[test]
fn chat_templates_render_what_transformers_renders() {
    #[derive(serde::Deserialize)]
    struct Chat {
        messages: Vec<serde_json::Value>,
        #[serde(default)]
        tools: Option<serde_json::Value>,
        add_generation_prompt: bool,
        rendered: String,
        ids: Vec<u32>,
    }
    for (name, end) in [
        ("llama3", "<|eot_id|>"),
        ("qwen2", "<|im_end|>"),
        ("qwen3", "<|im_end|>"),
    ] {
        let dir = fixture(name);
        let hf = super::hf::HfModel::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(hf.chat.end_of_turn(), end, "{name}");
        let chats: Vec<Chat> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("chat.json")).unwrap()).unwrap();
        for (i, c) in chats.iter().enumerate() {
            let text = hf
                .chat
                .render(&c.messages, c.tools.as_ref(), c.add_generation_prompt)
                .unwrap();
            assert_eq!(text, c.rendered, "{name} conversation {i}");
            let ids = hf.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(ids, c.ids, "{name} conversation {i}: token ids");
        }
        // Qwen's own templates wrap a tool result in <tool_response> in a user turn.
        if name != "llama3" {
            let (before, after) = hf.chat.tool_turn("tool_response").unwrap();
            assert_eq!(
                before, "<|im_end|>\n<|im_start|>user\n<tool_response>\n",
                "{name}"
            );
            assert_eq!(
                after, "\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
                "{name}"
            );
        }
        // Stop ids: config.json's and generation_config.json's.
        let eos = super::config::load_config(&dir).unwrap().eos_ids();
        assert!(eos.iter().all(|id| hf.eos_ids().contains(id)), "{name}");
    }
}
