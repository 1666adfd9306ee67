//! Model runtime benchmark of asl (candle, f32, CPU) on a converted HF folder, the asl side of
//! `scripts/bench-model.sh` (issue #5 item 6); `scripts/bench_model_torch.py` measures the same
//! with Hugging Face transformers on PyTorch.
//!
//! Prints one JSON object per line:
//! - `decode`: batch B of the same chat prompt, greedy, end-of-sequence and stop strings off, so
//!   every sequence decodes exactly N new tokens through `asl::model::generate::generate` (the
//!   path rollouts use; prefill included). tokens/s = B·N / wall time.
//! - `train`: one full fine-tuning step (forward + loss, backward, AdamW with grad-norm clipping)
//!   on B sequences of L random token ids, with the token-mean cross-entropy loss (the same loss
//!   transformers computes from `labels`) and, separately, with asl's GRPO loss
//!   (`rl::loss::policy_loss` over `selected_logprobs`, which projects only the loss positions
//!   through the vocabulary). One warm-up step first; the second step is reported.
//! - `peak_rss`: the process's peak resident set (`VmHWM`) after each phase. Phases run in order
//!   of growing memory, so the value after the last decode is the decode peak and the final one
//!   the overall peak.
//!
//! With `--check OUT.json` it instead writes what the transformers load check compares against:
//! the greedy chat answer to "What is the capital of France?", and for three prompts the prompt
//! ids, the last position's next-token logits and a greedy 20-token continuation.
//!
//! cargo run --release --example bench_model -- MODEL_DIR [--batches 1,8,32] [--new-tokens 128]
//!     [--train-batch 8] [--train-len 256] [--no-train] [--no-grpo]
//! cargo run --release --example bench_model -- MODEL_DIR --check OUT.json

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use asl::model::generate::generate;
use asl::model::hf::HfModel;
use asl::model::placement::Placement;
use asl::model::sample::{SamplingParams, SeqRequest};
use asl::model::scoring::{LossPositions, build_batch, selected_logprobs, token_logprobs};
use asl::model::train::{TrainConfig, Trainer};
use asl::rl::loss::{LossConfig, RoleCounts, TokenBatch, policy_loss, sequence_weight};
use candle_core::{D, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

// The same allocator and settings as the `asl` binary, so the benchmark measures what the
// stages run.
asl::use_jemalloc!();

/// Prompt of the decode benchmark (the Python side uses the same text and template).
const DECODE_PROMPT: &str = "Write a long story about a dragon who learns to cook.";
/// Prompts of the logits / continuation check.
const CHECK_PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
];
const FRANCE: &str = "What is the capital of France?";

struct Args {
    dir: PathBuf,
    check: Option<PathBuf>,
    batches: Vec<usize>,
    new_tokens: usize,
    train_batch: usize,
    train_len: usize,
    train: bool,
    grpo: bool,
    /// The decode's `dtype` (f32, bf16, f16, q8_0, amx_bf16): asl's side only.
    dtype: String,
    /// `cpu`, `cuda` or `cuda:N`: where every phase runs (training keeps f32 weights).
    device: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: bench_model MODEL_DIR [--check OUT.json] [--batches 1,8,32] \
                 [--new-tokens 128] [--train-batch 8] [--train-len 256] [--no-train] [--no-grpo] \
                 [--dtype f32|bf16|f16|q8_0|amx_bf16] [--device cpu|cuda|cuda:N]";
    let mut a = Args {
        dir: PathBuf::from(it.next().context(usage)?),
        check: None,
        batches: vec![1, 8, 32],
        new_tokens: 128,
        train_batch: 8,
        train_len: 256,
        train: true,
        grpo: true,
        dtype: "f32".into(),
        device: "cpu".into(),
    };
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {usage}"))
        };
        match flag.as_str() {
            "--check" => a.check = Some(PathBuf::from(val()?)),
            "--batches" => {
                a.batches = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--new-tokens" => a.new_tokens = val()?.parse()?,
            "--train-batch" => a.train_batch = val()?.parse()?,
            "--train-len" => a.train_len = val()?.parse()?,
            "--no-train" => a.train = false,
            "--no-grpo" => a.grpo = false,
            "--dtype" => a.dtype = val()?,
            "--device" => a.device = val()?,
            _ => bail!("unknown argument {flag:?}; {usage}"),
        }
    }
    Ok(a)
}

/// Peak resident set of this process in MiB (`VmHWM`), 0 where /proc is absent.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

fn chat_ids(hf: &HfModel, text: &str) -> anyhow::Result<Vec<u32>> {
    Ok(hf.encode_chat(&[("user", text)])?)
}

fn encode(hf: &HfModel, text: &str) -> anyhow::Result<Vec<u32>> {
    Ok(hf
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec())
}

fn greedy(max_new_tokens: usize, eos_ids: Vec<u32>, stop: Vec<String>) -> SamplingParams {
    SamplingParams {
        greedy: true,
        temperature: 0.0,
        max_new_tokens,
        stop_strings: stop,
        eos_ids,
        ..Default::default()
    }
}

fn bench_decode(hf: &HfModel, batch: usize, new_tokens: usize, dtype: &str) -> anyhow::Result<()> {
    let ids = chat_ids(hf, DECODE_PROMPT)?;
    let reqs: Vec<SeqRequest> = (0..batch)
        .map(|i| SeqRequest {
            prompt_ids: ids.clone(),
            seed: i as u64,
        })
        .collect();
    // Every row prefills its own copy of the prompt, as transformers does with a batch: this
    // measures the runtime, not prefix sharing (scripts/bench-rollout.sh measures that).
    let mut params = greedy(new_tokens, vec![], vec![]);
    params.batching.share_prefix = false;
    let started = Instant::now();
    let out = generate(&hf.model, &hf.tokenizer, &reqs, &params, |_, _| None)?;
    let secs = started.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|o| o.tokens.len()).sum();
    if tokens != batch * new_tokens {
        bail!(
            "decode batch {batch}: {tokens} tokens, expected {}",
            batch * new_tokens
        );
    }
    emit(json!({
        "side": "asl", "bench": "decode", "dtype": dtype, "batch": batch, "prompt_tokens": ids.len(),
        "new_tokens": new_tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs,
        "peak_rss_mib": peak_rss_mib(),
    }));
    Ok(())
}

/// What a low-precision `dtype` costs in log-probs: 16 sequences of 128 tokens sampled at
/// temperature 1 by the `dtype` model (8 from the decode prompt, 8 from a chat prompt), their
/// recorded log-probs against the f32 model's on the same tokens (what `train` recomputes):
/// mean and largest `|Δ log p|` and the spread of the PPO ratio `exp(Δ)` at step 1.
fn bench_gap(hf: &HfModel, dir: &Path, dtype: &str) -> anyhow::Result<()> {
    let device = hf.model.device().clone();
    let exact = HfModel::load(dir, &device)?;
    let mut reqs = Vec::new();
    for (p, text) in [DECODE_PROMPT, FRANCE].iter().enumerate() {
        let ids = chat_ids(hf, text)?;
        reqs.extend((0..8).map(|i| SeqRequest {
            prompt_ids: ids.clone(),
            seed: 1000 * p as u64 + i,
        }));
    }
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 128,
        stop_strings: vec![],
        eos_ids: vec![],
        ..Default::default()
    };
    let outs = generate(&hf.model, &hf.tokenizer, &reqs, &params, |_, _| None)?;
    let (mut n, mut sum, mut max, mut r_sum, mut r_sq) = (0usize, 0f64, 0f64, 0f64, 0f64);
    for (req, out) in reqs.iter().zip(&outs) {
        let ids: Vec<u32> = req.prompt_ids.iter().chain(&out.tokens).copied().collect();
        let t = Tensor::from_vec(ids, (1, req.prompt_ids.len() + out.tokens.len()), &device)?;
        // logp[t] scores token t + 1: the completion's start at the prompt's last position.
        let logp = token_logprobs(&exact.model, &t, &t.ones_like()?)?
            .squeeze(0)?
            .narrow(0, req.prompt_ids.len() - 1, out.tokens.len())?
            .to_vec1::<f32>()?;
        for (&f32_lp, &recorded) in logp.iter().zip(&out.logprobs) {
            let d = f64::from(f32_lp - recorded);
            n += 1;
            sum += d.abs();
            max = max.max(d.abs());
            r_sum += d.exp();
            r_sq += (2.0 * d).exp();
        }
    }
    let nf = n as f64;
    let mean_r = r_sum / nf;
    emit(json!({
        "side": "asl", "bench": "logprob_gap", "dtype": dtype, "tokens": n,
        "mean_abs_dlogp": sum / nf, "max_abs_dlogp": max, "ratio_mean": mean_r,
        "ratio_sd": (r_sq / nf - mean_r * mean_r).max(0.0).sqrt(),
    }));
    Ok(())
}

/// Two full fine-tuning steps on `b` random sequences of `l` tokens; the second is reported.
fn bench_train(dir: &Path, device: &Device, b: usize, l: usize, grpo: bool) -> anyhow::Result<()> {
    let device = device.clone();
    let loaded = Instant::now();
    let mut trainer = Trainer::load(
        dir,
        &device,
        TrainConfig {
            lr: 1e-5,
            ..Default::default()
        },
    )?;
    let load_s = loaded.elapsed().as_secs_f64();
    let vocab = trainer.model().config().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..b * l).map(|_| rng.random_range(0..vocab)).collect();
    let input_ids = Tensor::from_vec(ids.clone(), (b, l), &device)?;
    let mask = input_ids.ones_like()?;
    let loss_name = if grpo { "grpo" } else { "cross_entropy" };
    // GRPO inputs: a 32-token prompt and the rest as completion, advantages ±1.
    let grpo_in = if grpo {
        let p = 32.min(l - 1);
        let seqs: Vec<(Vec<u32>, Vec<u32>, Vec<u8>)> = ids
            .chunks(l)
            .map(|s| (s[..p].to_vec(), s[p..].to_vec(), vec![1u8; l - p]))
            .collect();
        let batch = build_batch(&seqs, 2, &device)?;
        let pos = LossPositions::of(&batch)?;
        let adv: Vec<f32> = (0..b)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        Some((batch, pos, adv))
    } else {
        None
    };
    for step in 0..2 {
        // Old log-probs of the current weights (ratio 1, so no token is clipped and every
        // weight gets a gradient), outside the timed step: rollouts record them.
        let old = match &grpo_in {
            Some((batch, pos, _)) => Some(
                selected_logprobs(trainer.model(), batch, pos, 1.0)?
                    .0
                    .detach(),
            ),
            None => None,
        };
        let t0 = Instant::now();
        let loss = match (&grpo_in, &old) {
            (Some((batch, pos, adv)), Some(old)) => {
                let cfg = LossConfig::default();
                let (logp, entropy) = selected_logprobs(trainer.model(), batch, pos, 1.0)?;
                let counts = RoleCounts {
                    weight: 1.0,
                    sequences: adv.len(),
                    tokens: pos.flat.len() as u64,
                };
                let weights: Vec<f64> = pos
                    .tokens
                    .iter()
                    .map(|&t| sequence_weight(&cfg, &counts, t))
                    .collect();
                let tokens = TokenBatch {
                    logp: &logp,
                    old_logp: old,
                    ref_logp: None,
                    entropy: &entropy,
                    is_weights: None,
                    seq: &pos.seq,
                    advantages: adv,
                    weights: &weights,
                };
                policy_loss(&cfg, &tokens)?.0
            }
            _ => {
                // Token-mean cross-entropy of every next token, as transformers' `labels`.
                let logp = token_logprobs(trainer.model(), &input_ids, &mask)?;
                logp.mean_all()?.neg()?
            }
        };
        let loss_val = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let mut grads = trainer.backward(&loss)?;
        let t2 = Instant::now();
        let stats = trainer.step(&mut grads)?;
        // A GPU queues its kernels: the step ends when the device has run them.
        device.synchronize()?;
        let t3 = Instant::now();
        drop(grads);
        if step == 1 {
            emit(json!({
                "side": "asl", "bench": "train", "loss": loss_name, "batch": b, "seq_len": l,
                "seconds": (t3 - t0).as_secs_f64(), "forward_s": (t1 - t0).as_secs_f64(),
                "backward_s": (t2 - t1).as_secs_f64(), "optimizer_s": (t3 - t2).as_secs_f64(),
                "loss_value": loss_val, "grad_norm": stats.grad_norm, "load_s": load_s,
                "peak_rss_mib": peak_rss_mib(),
            }));
        }
    }
    Ok(())
}

/// Writes the reference the transformers load check compares against.
fn check(hf: &HfModel, out: &Path) -> anyhow::Result<()> {
    let eos = hf.model.config().eos_ids();
    let ids = chat_ids(hf, FRANCE)?;
    let params = greedy(64, eos.clone(), vec!["<|im_end|>".into()]);
    let req = SeqRequest {
        prompt_ids: ids.clone(),
        seed: 0,
    };
    let answer = generate(&hf.model, &hf.tokenizer, &[req], &params, |_, _| None)?.remove(0);
    let mut prompts = Vec::new();
    for text in CHECK_PROMPTS {
        let pids = encode(hf, text)?;
        let n = pids.len();
        let t = Tensor::from_vec(pids.clone(), (1, n), hf.model.device())?;
        let logits = hf
            .model
            .forward_full(&t, &t.ones_like()?)?
            .narrow(1, n - 1, 1)?
            .flatten_all()?;
        let argmax = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
        let req = SeqRequest {
            prompt_ids: pids.clone(),
            seed: 0,
        };
        let cont = generate(
            &hf.model,
            &hf.tokenizer,
            &[req],
            &greedy(20, vec![], vec![]),
            |_, _| None,
        )?
        .remove(0);
        prompts.push(json!({
            "text": text, "ids": pids, "argmax": argmax,
            "logits": logits.to_vec1::<f32>()?,
            "greedy20": cont.tokens, "greedy20_text": cont.text,
        }));
    }
    let v = json!({
        "france": {
            "question": FRANCE, "prompt_ids": ids, "tokens": answer.tokens,
            "text": answer.text.trim_end_matches("<|im_end|>").trim(),
        },
        "prompts": prompts,
    });
    std::fs::write(out, serde_json::to_vec(&v)?).with_context(|| out.display().to_string())?;
    eprintln!("bench_model: asl answer: {}", v["france"]["text"]);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As `asl`'s main does. SAFETY: no other thread exists yet at the start of main.
    unsafe { asl::process::set_thread_count_from_cores() };
    let a = parse_args()?;
    let loaded = Instant::now();
    let placement = Placement::parse(&a.device, &a.dtype)?;
    let hf = HfModel::load_on(&a.dir, &placement)?;
    if let Some(out) = &a.check {
        return check(&hf, out);
    }
    emit(json!({
        "side": "asl", "bench": "load", "seconds": loaded.elapsed().as_secs_f64(),
        "threads": candle_core::utils::get_num_threads(), "peak_rss_mib": peak_rss_mib(),
    }));
    // Warm-up (page in the weights, size the thread pool).
    bench_decode_quiet(&hf)?;
    if a.dtype != "f32" {
        bench_gap(&hf, &a.dir, &a.dtype)?;
    }
    for &b in &a.batches {
        bench_decode(&hf, b, a.new_tokens, &a.dtype)?;
    }
    drop(hf);
    if a.train {
        let device = &placement.device;
        bench_train(&a.dir, device, a.train_batch, a.train_len, false)?;
        if a.grpo {
            bench_train(&a.dir, device, a.train_batch, a.train_len, true)?;
        }
    }
    emit(json!({"side": "asl", "bench": "peak_rss", "peak_rss_mib": peak_rss_mib()}));
    Ok(())
}

fn bench_decode_quiet(hf: &HfModel) -> anyhow::Result<()> {
    let req = SeqRequest {
        prompt_ids: chat_ids(hf, DECODE_PROMPT)?,
        seed: 0,
    };
    generate(
        &hf.model,
        &hf.tokenizer,
        &[req],
        &greedy(8, vec![], vec![]),
        |_, _| None,
    )?;
    Ok(())
}
