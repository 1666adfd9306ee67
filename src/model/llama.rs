//! Dense llama-architecture decoder (Llama, Qwen2, Qwen3) on candle, in f32, bf16 or f16, with
//! q8_0 or AMX-bf16 projections for sampling. The config is [`super::config`], a whole folder
//! [`super::hf`].
//!
//! Weight names mirror Hugging Face `LlamaForCausalLM` one-to-one
//! (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`,
//! `model.layers.N.mlp.gate_proj.weight`, `model.norm.weight`, `lm_head.weight`
//! unless `tie_word_embeddings`), so a HF checkpoint folder loads directly and
//! a checkpoint written by [`crate::model::train`] loads in `transformers`.
//!
//! Two forward paths share the same modules:
//! - [`Model::forward_full`]: a right-padded batch `(B, L)` with a causal +
//!   padding mask, no cache, differentiable (training, log-probs). When any
//!   weight or activation is tracked for backprop, the differentiable
//!   (slower) RMSNorm, RoPE and softmax are used; otherwise candle's fused
//!   kernels.
//! - [`Model::forward_step`]: incremental decoding for a batch of sequences,
//!   each with its own [`SeqCache`]. The new tokens of all sequences (one
//!   sampled token, or a whole prompt / tool-text chunk) are packed into one
//!   `(1, N, hidden)` activation, so every weight-heavy projection runs once
//!   per step for the whole batch, while attention runs per sequence over
//!   its own cache. This needs no padding, gives each sequence exact
//!   positions `0..len`, lets sequences grow by different amounts in a step
//!   (tool text for one, a sampled token for another), and finished
//!   sequences simply drop out of the batch.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Init, Linear, VarBuilder};

use super::amx::PackedBf16;
use super::config::{Config, Family, RopeScaling, load_config};
use super::error::{ModelError, Result};
use super::fused;
use super::fused::amx_linear::PackedWeight;
use super::io::load_safetensors_dir_as;
use super::placement::{Placement, Quant};

/// Additive mask value of blocked attention entries (finite, so a fully
/// masked padding row yields a uniform distribution instead of NaN).
const MASK_NEG: f64 = -1e9;

/// Rotary position embedding (HF "rotate half" layout), precomputed tables.
#[derive(Debug, Clone)]
pub(crate) struct RotaryEmbedding {
    /// (max_position_embeddings, head_dim / 2)
    cos: Tensor,
    /// (max_position_embeddings, head_dim / 2)
    sin: Tensor,
}

impl RotaryEmbedding {
    /// Tables in `dtype` (computed in f32).
    pub fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let (theta, scaling) = cfg.rope()?;
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| {
                scaled_frequency(1.0 / theta.powf(2.0 * i as f64 / hd as f64), &scaling) as f32
            })
            .collect();
        let max = cfg.max_position_embeddings;
        let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
        let t = Tensor::arange(0u32, max as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        // (max, 1) x (1, hd/2) -> (max, hd/2)
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Number of positions the tables cover.
    pub(crate) fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Tables for positions `0..len`: two `(len, head_dim/2)` tensors.
    fn prefix(&self, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, 0, len)?, self.sin.narrow(0, 0, len)?))
    }

    /// Tables gathered at `positions` (u32, `(N,)`): two `(N, head_dim/2)`.
    fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    /// Rotates `x` `(B, H, L, D)` with tables `(L, D/2)`.
    fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if fused::rope::applies(x) {
            return fused::rope(x, cos, sin);
        }
        let x = x.contiguous()?;
        if x.track_op() {
            // Differentiable version: x*cos + rotate_half(x)*sin.
            let d = x.dim(D::Minus1)?;
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?; // (L, D)
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
            let x1 = x.narrow(D::Minus1, 0, d / 2)?;
            let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
            let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
        } else {
            Ok(candle_nn::rotary_emb::rope(&x, cos, sin)?)
        }
    }
}

/// One RoPE frequency after `scaling` (transformers' `_compute_*_parameters`, in f64).
fn scaled_frequency(inv_freq: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::Default => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        } => {
            let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
            let (low_wavelen, high_wavelen) =
                (old_len / low_freq_factor, old_len / high_freq_factor);
            if wavelen < high_wavelen {
                inv_freq
            } else if wavelen > low_wavelen {
                inv_freq / factor
            } else {
                let smooth =
                    (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}

/// A linear layer of `i` → `o`, with a bias when `bias`.
fn projection(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Proj> {
    Ok(Proj::Dense(if bias {
        candle_nn::linear(i, o, vb)?
    } else {
        candle_nn::linear_no_bias(i, o, vb)?
    }))
}

/// A projection's weights: dense (training, and sampling in f32/bf16/f16), quantized for the
/// `dtype = "q8_0"` sampling path (int8 blocks through candle's `QMatMul`, activations in f32),
/// or packed bf16 for the `dtype = "amx_bf16"` one (AMX tiles or AVX-512-BF16, activations in
/// f32, [`super::amx`]).
#[derive(Debug, Clone)]
enum Proj {
    Dense(Linear),
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        /// Zero columns appended to the weight (and to each input) so the input width is a
        /// whole number of [`QUANT_WIDTH`]s.
        pad: usize,
    },
    Tiles {
        weight: Arc<PackedBf16>,
        bias: Option<Tensor>,
    },
    /// The f32 weight multiplied in bf16 (AMX tiles or AVX-512-BF16), forward and backward
    /// ([`fused::amx_linear`]): training with `train.precision = "amx_bf16"`. A weight that
    /// does not train (the tied head) is packed once, in `packed`.
    TilesTrained {
        linear: Linear,
        packed: Option<PackedWeight>,
    },
}

/// The input width candle's repacked int8 kernels (AVX-512 VNNI) need: a multiple of 256.
/// SmolLM2's 576-wide projections are padded to 768: `examples/bench_matmul.rs` measured 200–250
/// GFLOP/s at 8–32 rows padded, against 25–35 unpadded and 24–67 in f32 (docs/model-bench.md).
const QUANT_WIDTH: usize = 256;

impl Proj {
    /// This projection with its weight stored as `q` says: q8_0 (blocks of 32 int8 with an f16
    /// scale, the input width padded with zeros to a multiple of [`QUANT_WIDTH`]) or bf16 AMX
    /// tiles.
    fn quantized(&self, q: Quant) -> Result<Proj> {
        let Proj::Dense(l) = self else {
            return Ok(self.clone());
        };
        let bias = l.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
        if q == Quant::AmxBf16 {
            let (n, k) = l.weight().dims2()?;
            let w = l
                .weight()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            return Ok(Proj::Tiles {
                weight: Arc::new(PackedBf16::pack(&w, n, k)),
                bias,
            });
        }
        let k = l.weight().dim(1)?;
        let pad = k.next_multiple_of(QUANT_WIDTH) - k;
        let w = l.weight().to_dtype(DType::F32)?.pad_with_zeros(1, 0, pad)?;
        Ok(Proj::Quantized {
            weight: QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?,
            bias,
            pad,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, bias) = match self {
            Proj::Dense(l) => return Ok(l.forward(x)?),
            Proj::TilesTrained { linear: l, packed } => {
                let (n, k) = l.weight().dims2()?;
                let mut out_dims = x.dims().to_vec();
                *out_dims
                    .last_mut()
                    .expect("a projection's input has a last dim") = n;
                let y = fused::amx_linear(&x.reshape(((), k))?, l.weight(), packed.as_ref())?
                    .reshape(out_dims)?;
                (y, l.bias())
            }
            Proj::Quantized { weight, bias, pad } => {
                let x = match pad {
                    0 => x.contiguous()?,
                    &p => x.pad_with_zeros(D::Minus1, 0, p)?,
                };
                (weight.forward(&x)?, bias.as_ref())
            }
            Proj::Tiles { weight, bias } => {
                let m = x.elem_count() / weight.in_dim();
                let mut out_dims = x.dims().to_vec();
                *out_dims
                    .last_mut()
                    .expect("a projection's input has a last dim") = weight.out_dim();
                // The input's values read in place (no copy); activations are f32 on this path.
                let y =
                    fused::with_f32_values([x], ["projection input"], |[v]| weight.matmul(v, m))?;
                (Tensor::from_vec(y, out_dims, x.device())?, bias.as_ref())
            }
        };
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// RMSNorm with a learned scale (`weight`).
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The same kernel for inference and training on the CPU, so scoring and training
        // normalise alike (decoding's attention still sums in another order than training's).
        if fused::rms_norm::applies(x, &self.weight) {
            fused::rms_norm(x, &self.weight, self.eps as f32)
        } else if x.track_op() || self.weight.track_op() {
            Ok(candle_nn::ops::rms_norm_slow(
                x,
                &self.weight,
                self.eps as f32,
            )?)
        } else {
            Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &self.weight,
                self.eps as f32,
            )?)
        }
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: projection(h, i, bias, vb.pp("gate_proj"))?,
            up_proj: projection(h, i, bias, vb.pp("up_proj"))?,
            down_proj: projection(i, h, bias, vb.pp("down_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = linear(&self.gate_proj, x)?;
        let up = linear(&self.up_proj, x)?;
        let hidden = if fused::swiglu::applies(&gate, &up) {
            fused::swiglu(&gate, &up)?
        } else {
            (gate.silu()? * up)?
        };
        linear(&self.down_proj, &hidden)
    }
}

/// `l` applied to `x` `(.., rows, in)`, every output row computed the same way whatever the
/// number of rows. candle's CPU matmul (the `gemm` crate) takes a matrix-vector path for a
/// single row, and a dot-product path when rows × outputs ≤ 256, each rounding differently
/// from the matrix-matrix path of larger products (measured: one row differs in the last bit,
/// two to 600 agree for SmolLM2's widths; a 64-wide projection differs from 1–4 rows to 5 on).
/// Fewer rows than [`min_rows`] are therefore padded with zero rows, so a sequence decoding
/// alone gives bit for bit what it gives in a batch, for narrow models too.
fn linear(l: &Proj, x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    let need = match l {
        Proj::Dense(lin) => min_rows(lin.weight().dim(0)?),
        // candle's quantized matmul: only its single-row path is apart.
        Proj::Quantized { .. } => 2,
        // AMX tiles compute each row alike whatever the number of rows (a test in `amx`).
        Proj::Tiles { .. } | Proj::TilesTrained { .. } => return l.forward(x),
    };
    if rank < 2 || !x.device().is_cpu() {
        return l.forward(x);
    }
    let rows = x.dim(rank - 2)?;
    if rows >= need {
        return l.forward(x);
    }
    let mut pad = x.dims().to_vec();
    pad[rank - 2] = need - rows;
    let padded = Tensor::cat(&[x, &Tensor::zeros(pad, x.dtype(), x.device())?], rank - 2)?;
    Ok(l.forward(&padded)?.narrow(rank - 2, 0, rows)?)
}

/// The fewest rows that take the `gemm` crate's matrix-matrix kernels for a product with
/// `outputs` columns.
fn min_rows(outputs: usize) -> usize {
    (16 * 16 / outputs.max(1) + 1).max(2)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// Multi-head self-attention with grouped key/value heads.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    /// Qwen3's RMSNorm over each head of q and of k (before RoPE).
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let (qkv_bias, o_bias) = (cfg.qkv_bias(), cfg.o_bias());
        let head_norm = |name: &str| -> Result<Option<RmsNorm>> {
            match cfg.family() {
                Family::Qwen3 => Ok(Some(RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp(name))?)),
                Family::Llama | Family::Qwen2 => Ok(None),
            }
        };
        Ok(Self {
            q_proj: projection(h, nh * hd, qkv_bias, vb.pp("q_proj"))?,
            k_proj: projection(h, nkv * hd, qkv_bias, vb.pp("k_proj"))?,
            v_proj: projection(h, nkv * hd, qkv_bias, vb.pp("v_proj"))?,
            o_proj: projection(nh * hd, h, o_bias, vb.pp("o_proj"))?,
            q_norm: head_norm("q_norm")?,
            k_norm: head_norm("k_norm")?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// The attention scores' scale, `1/√D`.
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// Projects `x` `(B, L, hidden)` to rotated q `(B, H, L, D)`, rotated k
    /// and v `(B, KV, L, D)`.
    fn qkv(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // (B, L, H*D) -> (B, L, H, D) [-> per-head norm] -> (B, H, L, D)
        let head_norm = |t: Tensor, norm: &Option<RmsNorm>| match norm {
            Some(n) => n.forward(&t),
            None => Ok(t),
        };
        let q = head_norm(
            linear(&self.q_proj, x)?.reshape((b, l, nh, hd))?,
            &self.q_norm,
        )?
        .transpose(1, 2)?;
        let k = head_norm(
            linear(&self.k_proj, x)?.reshape((b, l, nkv, hd))?,
            &self.k_norm,
        )?
        .transpose(1, 2)?;
        let v = linear(&self.v_proj, x)?
            .reshape((b, l, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = RotaryEmbedding::apply(&q, cos, sin)?;
        let k = RotaryEmbedding::apply(&k, cos, sin)?;
        Ok((q, k, v))
    }

    /// Attention of q `(B, H, Lq, D)` over k, v `(B, KV, Lk, D)` with an
    /// additive mask broadcastable to `(B, 1, 1, Lq, Lk)`; returns
    /// `(B, H, Lq, D)`. Query heads are grouped per kv head instead of
    /// repeating k/v.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, nh, lq, hd) = q.dims4()?;
        let lk = k.dim(2)?;
        let (nkv, g) = (self.num_kv_heads, nh / self.num_kv_heads);
        // (B, H, Lq, D) -> (B, KV, G*Lq, D): heads h = kv*G + g share kv head `kv`.
        let q = q.contiguous()?.reshape((b, nkv, g * lq, hd))?;
        // (B, KV, G*Lq, D) x (B, KV, D, Lk) -> (B, KV, G*Lq, Lk)
        let att = (q.matmul(&k.t()?)? * self.scale())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                // (B, KV, G*Lq, Lk) -> (B, KV, G, Lq, Lk) + mask -> back
                att.reshape((b, nkv, g, lq, lk))?
                    .broadcast_add(mask)?
                    .reshape((b, nkv, g * lq, lk))?
            }
        };
        let att = softmax_last(&att)?;
        // (B, KV, G*Lq, Lk) x (B, KV, Lk, D) -> (B, KV, G*Lq, D) -> (B, H, Lq, D)
        Ok(att.matmul(&v.contiguous()?)?.reshape((b, nh, lq, hd))?)
    }

    /// Padded batch: `x` `(B, L, hidden)`, tables `(L, D/2)`; returns `(B, L, hidden)`.
    fn forward_padded(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &PaddedMask,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x, cos, sin)?;
        let y = match mask {
            PaddedMask::Lengths(lens) => {
                fused::causal_attention(&q, &k, &v, lens.clone(), self.scale() as f32)?
            }
            PaddedMask::Additive(mask) => self.attend(&q, &k, &v, Some(mask))?,
        };
        // (B, H, L, D) -> (B, L, H, D) -> (B, L, H*D)
        let y = y
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.head_dim))?;
        linear(&self.o_proj, &y)
    }

    /// Packed step: `x` `(1, N, hidden)` holds the new tokens of several
    /// sequences back to back (`segs[i] = (offset, len)`), tables `(N, D/2)`
    /// at each token's own position; `caches[i]` is sequence i's cache of
    /// this layer. Returns `(1, N, hidden)`.
    fn forward_packed(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segs: &[(usize, usize)],
        caches: &mut [&mut candle_nn::kv_cache::KvCache],
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, cos, sin)?; // (1, H|KV, N, D)
        // Each sequence's new keys and values join its cache: (1, KV, past+len, D).
        let mut kv = Vec::with_capacity(segs.len());
        for (&(off, len), cache) in segs.iter().zip(caches.iter_mut()) {
            let ki = k.narrow(2, off, len)?.contiguous()?; // (1, KV, len, D)
            let vi = v.narrow(2, off, len)?.contiguous()?;
            kv.push(cache.append(&ki, &vi)?);
        }
        if fused::attention::applies(x.dtype(), x.device()) {
            let y = fused::attention::cached_attention(&q, segs, &kv, self.scale() as f32)?;
            return linear(&self.o_proj, &y);
        }
        let y = self.cached_attention(&q, segs, &kv)?;
        linear(&self.o_proj, &y)
    }

    /// The composite path of [`Self::forward_packed`] (any device and dtype the fused kernel
    /// does not cover: a GPU, bf16): q `(1, H, N, D)` packed as `segs`, each sequence's keys and
    /// values `(1, KV, past+len, D)`; returns `(1, N, H*D)`.
    ///
    /// Rows that add one token (decoding) attend in one padded batch: a GPU pays per kernel
    /// launch, and a loop over sequences launches about ten kernels per row and layer, which
    /// at batch 128 would cost more than reading the weights. Rows that add a chunk (a prompt,
    /// a tool result) are few and long, and each attends on its own with a causal mask.
    fn cached_attention(
        &self,
        q: &Tensor,
        segs: &[(usize, usize)],
        kv: &[(Tensor, Tensor)],
    ) -> Result<Tensor> {
        let n = q.dim(2)?;
        let width = self.num_heads * self.head_dim;
        let single: Vec<usize> = (0..segs.len()).filter(|&i| segs[i].1 == 1).collect();
        let batched = if single.len() > 1 {
            Some(self.attend_single_rows(q, segs, kv, &single)?) // (R, H, 1, D)
        } else {
            None
        };
        if let Some(y) = &batched
            && single.len() == segs.len()
        {
            // Every row decodes: (N, H, 1, D) is already token-major.
            return Ok(y.reshape((1, n, width))?);
        }
        let mut ys = Vec::with_capacity(segs.len());
        let mut next_single = 0;
        for (&(off, len), (k_all, v_all)) in segs.iter().zip(kv) {
            if let (Some(y), true) = (&batched, len == 1) {
                ys.push(y.narrow(0, next_single, 1)?); // (1, H, 1, D)
                next_single += 1;
                continue;
            }
            let past = k_all.dim(2)? - len;
            let qi = q.narrow(2, off, len)?; // (1, H, len, D)
            let mask = if len > 1 {
                // (len, past+len): query j sees keys 0..=past+j.
                let total = past + len;
                let m: Vec<f32> = (0..len)
                    .flat_map(|j| {
                        (0..total).map(move |kk| {
                            if kk > past + j {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                    })
                    .collect();
                Some(Tensor::from_vec(m, (len, total), q.device())?.to_dtype(q.dtype())?)
            } else {
                None
            };
            ys.push(self.attend(&qi, k_all, v_all, mask.as_ref())?);
        }
        // n x (1, H, len_i, D) -> (1, H, N, D) -> (1, N, H, D) -> (1, N, H*D)
        Ok(Tensor::cat(&ys, 2)?
            .transpose(1, 2)?
            .reshape((1, n, width))?)
    }

    /// The one-token rows `rows` (indices into `segs`) of q `(1, H, N, D)` against their caches,
    /// padded with zero keys to the longest and masked: `(R, H, 1, D)`.
    fn attend_single_rows(
        &self,
        q: &Tensor,
        segs: &[(usize, usize)],
        kv: &[(Tensor, Tensor)],
        rows: &[usize],
    ) -> Result<Tensor> {
        let (_, nh, n, hd) = q.dims4()?;
        let r = rows.len();
        let q = if r == n {
            q.clone()
        } else {
            let at: Vec<u32> = rows.iter().map(|&i| segs[i].0 as u32).collect();
            q.index_select(&Tensor::new(at, q.device())?, 2)?
        };
        // (1, H, R, D) -> (R, H, 1, D)
        let q = q.transpose(1, 2)?.contiguous()?.reshape((r, nh, 1, hd))?;
        let lens: Vec<usize> = rows
            .iter()
            .map(|&i| kv[i].0.dim(2))
            .collect::<candle_core::Result<_>>()?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        let pad = |t: &Tensor, len: usize| -> candle_core::Result<Tensor> {
            if len == longest {
                Ok(t.clone())
            } else {
                t.pad_with_zeros(2, 0, longest - len)
            }
        };
        let mut ks = Vec::with_capacity(r);
        let mut vs = Vec::with_capacity(r);
        for (&i, &len) in rows.iter().zip(&lens) {
            ks.push(pad(&kv[i].0, len)?);
            vs.push(pad(&kv[i].1, len)?);
        }
        let (k, v) = (Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?); // (R, KV, longest, D)
        // Row i sees its own keys 0..lens[i]; the padding none.
        let mask: Vec<f32> = lens
            .iter()
            .flat_map(|&len| {
                (0..longest).map(move |kk| if kk < len { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask =
            Tensor::from_vec(mask, (r, 1, 1, 1, longest), q.device())?.to_dtype(q.dtype())?;
        self.attend(&q, &k, &v, Some(&mask))
    }
}

/// Pre-norm decoder block: attention and MLP, each with a residual.
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// The layer's seven projections (attention q, k, v, o; MLP gate, up, down), for changing how
    /// they are stored.
    fn projections_mut(&mut self) -> [&mut Proj; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    fn mlp_residual(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(x)?)?;
        Ok((x + h)?)
    }

    fn forward_padded(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &PaddedMask,
    ) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward_padded(&self.input_layernorm.forward(x)?, cos, sin, mask)?;
        self.mlp_residual(&(x + h)?)
    }

    fn forward_packed(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segs: &[(usize, usize)],
        caches: &mut [&mut candle_nn::kv_cache::KvCache],
    ) -> Result<Tensor> {
        let h = self.self_attn.forward_packed(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            segs,
            caches,
        )?;
        self.mlp_residual(&(x + h)?)
    }
}

/// How the rows of a padded batch are masked.
#[derive(Debug)]
enum PaddedMask {
    /// Every row is tokens then padding, with these token counts: the fused causal kernel.
    Lengths(Arc<[usize]>),
    /// Additive `(B, 1, 1, L, L)`: causal plus padded keys, for candle's composite.
    Additive(Tensor),
}

/// Each row's token count when every row of `attention_mask` `(B, L)` is ones then zeros.
fn right_padded_lengths(attention_mask: &Tensor) -> Result<Option<Arc<[usize]>>> {
    let rows = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let len = row.iter().take_while(|&&m| m != 0.0).count();
            row[len..].iter().all(|&m| m == 0.0).then_some(len)
        })
        .collect::<Option<Vec<_>>>()
        .map(Arc::from))
}

/// KV cache of one sequence (all layers). Not `Clone`: candle's `KvCache` clones share their
/// buffers, so two copies appending would write over each other; [`SeqCache::fork`] copies.
#[derive(Debug)]
pub(crate) struct SeqCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl SeqCache {
    const GROW: usize = 256;

    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers)
                .map(|_| candle_nn::kv_cache::KvCache::new(2, Self::GROW))
                .collect(),
            len: 0,
        }
    }

    /// Tokens cached so far (= position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache of its own (new buffers) holding the first `len` positions of this one: a
    /// sequence that begins like this one starts from it instead of recomputing them.
    pub(crate) fn fork(&self, len: usize) -> Result<SeqCache> {
        if len > self.len {
            return Err(ModelError::InvalidArgument(format!(
                "fork of {len} positions from a cache of {}",
                self.len
            )));
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut fresh = candle_nn::kv_cache::KvCache::new(2, len.max(Self::GROW));
            if let (Some(k), Some(v), true) = (l.k()?, l.v()?, len > 0) {
                // (1, KV, T, D) -> the first `len` positions, copied into the new buffers.
                let k = k.narrow(2, 0, len)?.contiguous()?;
                let v = v.narrow(2, 0, len)?.contiguous()?;
                fresh.append(&k, &v)?;
            }
            layers.push(fresh);
        }
        Ok(SeqCache { layers, len })
    }

    /// Forgets everything (the buffers are released).
    #[cfg(test)]
    fn clear(&mut self) {
        for l in &mut self.layers {
            l.reset();
        }
        self.len = 0;
    }
}

/// A padded batch part-way up the decoder stack: the residual stream `(B, L, hidden)` after the
/// embeddings and the first `layers` layers, with the rotary tables and the mask the rest of the
/// stack reads. Two models whose embeddings and first `layers` layers are equal bit for bit (a
/// trainer and its KL reference when only the last blocks train) can both finish one partial,
/// so the layers they share run once ([`Model::forward_partial`], [`Model::finish_hidden`]).
#[derive(Debug)]
pub(crate) struct Partial {
    x: Tensor,
    layers: usize,
    cos: Tensor,
    sin: Tensor,
    mask: PaddedMask,
}

/// The causal LM: embeddings, decoder stack, final norm, LM head.
#[derive(Debug, Clone)]
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    rotary: RotaryEmbedding,
    cfg: Config,
    device: Device,
}

impl Model {
    /// Builds the model from `vb` with HF names (`model.*`, `lm_head`).
    /// Refuses unsupported configurations.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vb_m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb_m.pp("embed_tokens"))?;
        let vb_l = vb_m.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb_l.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb_m.pp("norm"))?;
        let lm_head = Proj::Dense(if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        });
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(cfg, vb.dtype(), vb.device())?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    /// Loads a HF folder (`config.json`, `model.safetensors` or a sharded
    /// index) as f32 on `device`, for inference.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_on(dir, &Placement::f32_on(device))
    }

    /// [`Model::load`] from the weights of `dir` already read (`io::load_safetensors_dir`, f32
    /// on `device`), for a caller that needs them too: `train` compares its KL reference's with
    /// the trainer's frozen ones ([`crate::model::train::Trainer::layers_shared_with`]).
    pub fn from_tensors(
        dir: &Path,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let cfg = load_config(dir)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(&cfg, vb).map_err(|e| weights_error(dir, e))
    }

    /// Loads a HF folder with weights and activations in `placement.dtype` on its device.
    /// Logits come back in f32 whatever the dtype.
    pub fn load_on(dir: &Path, placement: &Placement) -> Result<Self> {
        let cfg = load_config(dir)?;
        let tensors = load_safetensors_dir_as(dir, &placement.device, placement.dtype)?;
        let vb = VarBuilder::from_tensors(tensors, placement.dtype, &placement.device);
        let model = Self::new(&cfg, vb).map_err(|e| weights_error(dir, e))?;
        match placement.quant {
            Some(q) => model.quantized(q),
            None => Ok(model),
        }
    }

    /// This model with every projection and the LM head stored as `q` (the embeddings and norms
    /// stay as they are): an inference-only copy for sampling, never trained.
    pub fn quantized(&self, q: Quant) -> Result<Self> {
        let mut model = self.clone();
        model.quantize_layers(0..model.layers.len(), q)?;
        model.quantize_head(q)?;
        Ok(model)
    }

    /// Every projection and the head computed in bf16 on AMX tiles for training
    /// (`train.precision = "amx_bf16"`): the first `frozen` decoder layers, which nothing in trains
    /// and no gradient flows through, packed once ([`Quant::AmxBf16`]); the others and the head
    /// through the differentiable [`fused::amx_linear`], their weights staying the f32 tensors
    /// the optimizer steps. Norms, attention and the loss stay f32.
    pub(crate) fn train_on_amx(&mut self, frozen: usize) -> Result<()> {
        let n = self.layers.len();
        self.quantize_layers(0..frozen.min(n), Quant::AmxBf16)?;
        let trained = |p: &mut Proj| -> Result<()> {
            if let Proj::Dense(l) = p {
                // A constant weight (no Var: the tied, frozen head) is packed once.
                let packed = match l.weight().track_op() {
                    true => None,
                    false => Some(PackedWeight::new(l.weight())?),
                };
                *p = Proj::TilesTrained {
                    linear: l.clone(),
                    packed,
                };
            }
            Ok(())
        };
        for layer in &mut self.layers[frozen.min(n)..] {
            for p in layer.projections_mut() {
                trained(p)?;
            }
        }
        trained(&mut self.lm_head)
    }

    /// The LM head stored as `q`, in place.
    pub(crate) fn quantize_head(&mut self, q: Quant) -> Result<()> {
        self.lm_head = self.lm_head.quantized(q)?;
        Ok(())
    }

    /// The projections of decoder layers `layers` stored as `q`, in place; nothing else changes.
    /// Such a layer has no gradient: the trainer does this to the leading layers nothing in it
    /// trains (`train.precision`), never to one a gradient must flow through.
    pub(crate) fn quantize_layers(&mut self, layers: Range<usize>, q: Quant) -> Result<()> {
        let n = self.layers.len();
        let layers = self.layers.get_mut(layers.clone()).ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "quantize_layers: layers {layers:?} of a model with {n}"
            ))
        })?;
        for layer in layers {
            for p in layer.projections_mut() {
                *p = p.quantized(q)?;
            }
        }
        Ok(())
    }

    /// The dtype of weights and activations.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh, empty cache for one sequence.
    pub(crate) fn new_cache(&self) -> SeqCache {
        SeqCache::new(&self.cfg)
    }

    /// Logits `(B, L, V)` of a right-padded batch: `input_ids` `(B, L)` u32,
    /// `attention_mask` `(B, L)` (1 = token, 0 = padding, any dtype).
    /// Row positions are `0..L`; keys at padding are masked. Differentiable.
    pub fn forward_full(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?;
        self.project(&h)
    }

    /// Logits (f32) of final-norm hidden states `(.., hidden)`.
    pub(crate) fn project(&self, h: &Tensor) -> Result<Tensor> {
        Ok(linear(&self.lm_head, h)?.to_dtype(DType::F32)?)
    }

    /// Final-norm hidden states `(B, L, hidden)` of a padded batch.
    pub(crate) fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        self.finish_hidden(&self.forward_partial(input_ids, attention_mask, 0)?)
    }

    /// A padded batch through the embeddings and the first `layers` decoder layers (see
    /// [`Partial`]): `input_ids` `(B, L)` u32, `attention_mask` `(B, L)` as in
    /// [`Model::forward_full`].
    pub(crate) fn forward_partial(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        layers: usize,
    ) -> Result<Partial> {
        if layers > self.layers.len() {
            return Err(ModelError::InvalidArgument(format!(
                "forward_partial: {layers} layers asked of a model with {}",
                self.layers.len()
            )));
        }
        let (b, l) = input_ids.dims2()?;
        if attention_mask.dims2()? != (b, l) {
            return Err(ModelError::InvalidArgument(format!(
                "attention_mask shape {:?} != input_ids shape {:?}",
                attention_mask.dims(),
                input_ids.dims()
            )));
        }
        if b == 0 || l == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "empty batch: input_ids shape {:?}",
                input_ids.dims()
            )));
        }
        if l > self.rotary.max_positions() {
            return Err(ModelError::InvalidArgument(format!(
                "sequence length {l} exceeds max_position_embeddings {}",
                self.rotary.max_positions()
            )));
        }
        let (cos, sin) = self.rotary.prefix(l)?;
        let mask = self.padded_mask(attention_mask, b, l)?;
        let mut x = self.embed_tokens.forward(input_ids)?; // (B, L, hidden)
        for layer in &self.layers[..layers] {
            x = layer.forward_padded(&x, &cos, &sin, &mask)?;
        }
        Ok(Partial {
            x,
            layers,
            cos,
            sin,
            mask,
        })
    }

    /// Final-norm hidden states `(B, L, hidden)` of a [`Partial`]: this model's layers from
    /// `partial.layers` on, then the final norm. The partial may come from another model whose
    /// embeddings and first layers equal this one's (the caller's promise); it must have been
    /// made with this model's dtype and device, since its mask is chosen for them.
    pub(crate) fn finish_hidden(&self, partial: &Partial) -> Result<Tensor> {
        let x = &partial.x;
        if partial.layers > self.layers.len()
            || x.dtype() != self.dtype()
            || !x.device().same_device(&self.device)
        {
            return Err(ModelError::InvalidArgument(format!(
                "finish_hidden: a {:?} partial after {} layers on {:?} does not fit a {:?} model of {} layers on {:?}",
                x.dtype(),
                partial.layers,
                x.device().location(),
                self.dtype(),
                self.layers.len(),
                self.device.location()
            )));
        }
        let mut x = x.clone();
        for layer in &self.layers[partial.layers..] {
            x = layer.forward_padded(&x, &partial.cos, &partial.sin, &partial.mask)?;
        }
        self.norm.forward(&x)
    }

    /// The mask of a padded batch: the rows' lengths for the fused CPU kernel when every row is
    /// right-padded, else an additive mask `(B, 1, 1, L, L)`: causal plus padded keys.
    fn padded_mask(&self, attention_mask: &Tensor, b: usize, l: usize) -> Result<PaddedMask> {
        if fused::attention::applies(self.dtype(), &self.device)
            && let Some(lens) = right_padded_lengths(attention_mask)?
        {
            return Ok(PaddedMask::Lengths(lens));
        }
        let causal: Vec<f32> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { MASK_NEG as f32 } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, 1, l, l), &self.device)?;
        // (B, L) -> 0 where token, MASK_NEG where padding -> (B, 1, 1, 1, L)
        let pad = ((attention_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)?) * MASK_NEG)?
            .reshape((b, 1, 1, 1, l))?;
        Ok(PaddedMask::Additive(
            causal.broadcast_add(&pad)?.to_dtype(self.dtype())?,
        ))
    }

    /// Incremental decoding for several sequences at once: feeds `chunks[i]`
    /// (one or more new tokens) to the sequence whose cache is `caches[i]`
    /// (positions continue at `caches[i].len()`), appends to the caches and
    /// returns the logits of each chunk's last token, `(chunks.len(), V)`.
    pub(crate) fn forward_step(
        &self,
        chunks: &[&[u32]],
        caches: &mut [&mut SeqCache],
    ) -> Result<Tensor> {
        if chunks.len() != caches.len() || chunks.is_empty() {
            return Err(ModelError::InvalidArgument(format!(
                "forward_step: {} chunks for {} caches",
                chunks.len(),
                caches.len()
            )));
        }
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut segs = Vec::with_capacity(chunks.len());
        for (chunk, cache) in chunks.iter().zip(caches.iter()) {
            if chunk.is_empty() {
                return Err(ModelError::InvalidArgument(
                    "forward_step: empty chunk".into(),
                ));
            }
            if cache.len + chunk.len() > self.rotary.max_positions() {
                return Err(ModelError::InvalidArgument(format!(
                    "sequence would exceed max_position_embeddings {}",
                    self.rotary.max_positions()
                )));
            }
            segs.push((ids.len(), chunk.len()));
            ids.extend_from_slice(chunk);
            pos.extend((cache.len..cache.len + chunk.len()).map(|p| p as u32));
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, (1, n), &self.device)?;
        let pos = Tensor::from_vec(pos, n, &self.device)?;
        let (cos, sin) = self.rotary.at(&pos)?; // (N, D/2)
        let mut x = self.embed_tokens.forward(&ids)?; // (1, N, hidden)
        for (li, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut candle_nn::kv_cache::KvCache> =
                caches.iter_mut().map(|c| &mut c.layers[li]).collect();
            x = layer.forward_packed(&x, &cos, &sin, &segs, &mut layer_caches)?;
        }
        for (cache, chunk) in caches.iter_mut().zip(chunks) {
            cache.len += chunk.len();
        }
        let last: Vec<u32> = segs.iter().map(|&(o, l)| (o + l - 1) as u32).collect();
        let last = Tensor::from_vec(last, segs.len(), &self.device)?;
        // (1, N, hidden) -> (N, hidden) -> (n_seq, hidden) -> (n_seq, V)
        let x = x.squeeze(0)?.index_select(&last, 0)?;
        let x = self.norm.forward(&x)?;
        self.project(&x)
    }
}

fn weights_error(dir: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::Candle(c) => ModelError::Weights {
            path: dir.to_path_buf(),
            msg: c.to_string(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hf::load_tokenizer;
    use crate::model::io::load_safetensors_dir;
    use crate::model::test_util::{max_abs_diff, tiny_model};
    use std::collections::HashMap;

    fn padded(seqs: &[Vec<u32>]) -> (Tensor, Tensor) {
        let l = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for s in seqs {
            for j in 0..l {
                ids.push(s.get(j).copied().unwrap_or(2));
                mask.push(u32::from(j < s.len()));
            }
        }
        let b = seqs.len();
        (
            Tensor::from_vec(ids, (b, l), &Device::Cpu).unwrap(),
            Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap(),
        )
    }

    #[test]
    fn full_forward_matches_incremental_and_ignores_padding() {
        let Some(dir) = tiny_model(7) else { return };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 520, 33, 34, 905, 19556, 2],
            vec![1, 11, 12],
            vec![100, 200, 300, 400, 500],
        ];
        let (ids, mask) = padded(&seqs);
        let full = model.forward_full(&ids, &mask).unwrap(); // (3, 7, V)
        assert_eq!(full.dims(), &[3, 7, model.config().vocab_size]);

        // Each row alone (no padding) gives the same logits on its tokens.
        for (i, s) in seqs.iter().enumerate() {
            let (ids1, mask1) = padded(std::slice::from_ref(s));
            let alone = model.forward_full(&ids1, &mask1).unwrap();
            let row = full.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let d = max_abs_diff(&row, &alone.get(0).unwrap());
            assert!(d < 1e-4, "row {i} padding changed logits by {d}");
        }

        // Packed incremental decoding: a 2-token prefix for each row in one
        // step, then ragged chunks, one token at a time for the rest.
        let mut caches: Vec<SeqCache> = seqs.iter().map(|_| model.new_cache()).collect();
        let mut fed = vec![0usize; seqs.len()];
        let mut step = 0;
        while fed.iter().zip(&seqs).any(|(f, s)| f < &s.len()) {
            let mut chunks: Vec<&[u32]> = Vec::new();
            let mut rows = Vec::new();
            for (i, s) in seqs.iter().enumerate() {
                if fed[i] < s.len() {
                    let take = if step == 0 { 2 } else { 1 + (i + step) % 2 };
                    let end = (fed[i] + take).min(s.len());
                    chunks.push(&s[fed[i]..end]);
                    rows.push((i, end));
                }
            }
            let mut cs: Vec<&mut SeqCache> = caches
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| rows.iter().any(|r| r.0 == *i))
                .map(|(_, c)| c)
                .collect();
            let logits = model.forward_step(&chunks, &mut cs).unwrap();
            for (k, &(i, end)) in rows.iter().enumerate() {
                let want = full.get(i).unwrap().get(end - 1).unwrap();
                let d = max_abs_diff(&logits.get(k).unwrap(), &want);
                assert!(d < 1e-4, "row {i} pos {} step {step}: diff {d}", end - 1);
                fed[i] = end;
                assert_eq!(caches[i].len(), end);
            }
            step += 1;
        }
        caches[0].clear();
        assert!(caches[0].is_empty());
    }

    /// A sequence's decoding step gives the same bits alone and packed with 2–12 others: the
    /// tiny model's 64-wide projections are narrow enough to take the `gemm` crate's
    /// dot-product path at a few rows, which [`linear`]'s padding keeps them off.
    #[test]
    fn a_decoding_step_is_the_same_alone_and_in_a_batch() {
        let Some(dir) = tiny_model(11) else { return };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let step = |n: usize| -> Vec<f32> {
            let mut caches: Vec<SeqCache> = (0..n).map(|_| model.new_cache()).collect();
            let prompts: Vec<Vec<u32>> = (0..n).map(|i| vec![1, 520 + i as u32, 33]).collect();
            let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let mut cs: Vec<&mut SeqCache> = caches.iter_mut().collect();
            model.forward_step(&chunks, &mut cs).unwrap();
            let next: Vec<[u32; 1]> = (0..n).map(|i| [905 + i as u32]).collect();
            let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            let logits = model.forward_step(&chunks, &mut cs).unwrap();
            logits.get(0).unwrap().to_vec1().unwrap()
        };
        let alone = step(1);
        for n in 2..=12 {
            assert!(
                step(n) == alone,
                "{n} sequences change the first one's logits"
            );
        }
    }

    #[test]
    fn fused_attention_agrees_with_the_composite_in_the_model() {
        // A mask with a hole is not right-padded, so that batch runs candle's composite
        // attention; the fused kernels' batch of the hole-free row alone must agree with it.
        let Some(dir) = tiny_model(7) else { return };
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let row = vec![1u32, 520, 33, 34, 905, 19556, 2];
        let ids =
            Tensor::from_vec([row.clone(), row.clone()].concat(), (2, 7), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32; 7], [1, 1, 0, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        assert!(right_padded_lengths(&mask).unwrap().is_none());
        let composite = model.forward_full(&ids, &mask).unwrap().get(0).unwrap();
        let (ids1, mask1) = padded(std::slice::from_ref(&row));
        assert!(right_padded_lengths(&mask1).unwrap().is_some());
        let fused = model.forward_full(&ids1, &mask1).unwrap().get(0).unwrap();
        let d = max_abs_diff(&fused, &composite);
        assert!(d < 1e-4, "fused and composite logits differ by {d}");
        let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
        let e = model.forward_full(&empty, &empty).unwrap_err().to_string();
        assert!(e.contains("empty batch"), "{e}");
        // The hole does mask: the second row differs once it is past the hole.
        let holed = model.forward_full(&ids, &mask).unwrap().get(1).unwrap();
        assert!(max_abs_diff(&holed.get(6).unwrap(), &fused.get(6).unwrap()) > 1e-4);
    }

    /// Largest |logit| of `t`, the scale half-precision errors are measured against.
    fn max_abs(t: &Tensor) -> f32 {
        max_abs_diff(t, &t.zeros_like().unwrap())
    }

    #[test]
    fn half_precision_runs_close_to_f32_and_caches_agree() {
        let Some(dir) = tiny_model(7) else { return };
        let seqs: Vec<Vec<u32>> = vec![vec![1, 520, 33, 34, 905, 19556, 2], vec![1, 11, 12]];
        let (ids, mask) = padded(&seqs);
        let exact = Model::load(&dir, &Device::Cpu).unwrap();
        let want = exact.forward_full(&ids, &mask).unwrap();
        let scale = max_abs(&want);
        let amx = super::super::amx::available().then_some("amx_bf16");
        for name in ["bf16", "f16", "q8_0"].into_iter().chain(amx) {
            let placement = Placement::parse("cpu", name).unwrap();
            let dtype = placement.dtype;
            let model = Model::load_on(&dir, &placement).unwrap();
            assert_eq!(model.dtype(), dtype);
            match placement.quant {
                // The tiny model's widths are whole q8_0 blocks, so every projection is quantized.
                Some(Quant::Q8_0) => assert!(matches!(model.lm_head, Proj::Quantized { .. })),
                Some(Quant::AmxBf16) => assert!(matches!(model.lm_head, Proj::Tiles { .. })),
                None => {}
            }
            let got = model.forward_full(&ids, &mask).unwrap();
            assert_eq!(got.dtype(), DType::F32, "logits come back in f32");
            let row0 = |t: &Tensor| t.get(0).unwrap();
            let d = max_abs_diff(&row0(&got), &row0(&want));
            assert!(d < 0.05 * scale + 0.02, "{name}: {d} against scale {scale}");
            // The cached decoding path in the same dtype gives the full pass's last logits.
            let mut cache = model.new_cache();
            let step = model.forward_step(&[&seqs[0]], &mut [&mut cache]).unwrap();
            let last = row0(&got).get(seqs[0].len() - 1).unwrap();
            let d = max_abs_diff(&step.get(0).unwrap(), &last);
            assert!(d < 0.05 * scale + 0.02, "{name} cache: {d}");
            // Two sequences decoding one token each in one step (bf16 and f16 attend through
            // the composite path's batch of single rows) agree with the full pass too.
            let (a, b) = (&seqs[0][..4], &seqs[1][..2]);
            let mut caches = [model.new_cache(), model.new_cache()];
            let [ca, cb] = &mut caches;
            model
                .forward_step(&[a, b], &mut [&mut *ca, &mut *cb])
                .unwrap();
            let step = model
                .forward_step(&[&seqs[0][4..5], &seqs[1][2..3]], &mut [ca, cb])
                .unwrap();
            for (row, at) in [(0, 4), (1, 2)] {
                let full = got.get(row).unwrap().get(at).unwrap();
                let d = max_abs_diff(&step.get(row).unwrap(), &full);
                assert!(
                    d < 0.05 * scale + 0.02,
                    "{name} batched decode row {row}: {d}"
                );
            }
        }
    }

    #[test]
    fn loads_a_checkpoint_stored_in_bf16() {
        let Some(dir) = tiny_model(7) else { return };
        let tmp = std::env::temp_dir().join(format!("asl-bf16-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let halves: HashMap<String, Tensor> = load_safetensors_dir(&dir, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
            .collect();
        candle_core::safetensors::save(&halves, tmp.join("model.safetensors")).unwrap();
        std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let mask = ids.ones_like().unwrap();
        let want = Model::load(&dir, &Device::Cpu)
            .unwrap()
            .forward_full(&ids, &mask)
            .unwrap();
        let got = Model::load(&tmp, &Device::Cpu)
            .unwrap()
            .forward_full(&ids, &mask)
            .unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d > 0.0 && d < 0.05 * max_abs(&want) + 0.02, "{d}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    /// Deterministic values in [-1, 1] for a tensor of `shape`, different per `salt`.
    fn wavy(shape: &[usize], salt: f32) -> Tensor {
        let count: usize = shape.iter().product();
        let v: Vec<f32> = (0..count).map(|i| (i as f32 * 0.37 + salt).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn decode_rows_attend_in_one_batch_as_they_do_one_by_one() {
        let Some(dir) = tiny_model(7) else { return };
        let cfg = load_config(&dir).unwrap();
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let attn = Attention::new(&cfg, vb).unwrap();
        let (nh, nkv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        // One step of the composite path: three rows decode, one adds a 3-token chunk, and
        // the caches (new keys included) have different lengths; then a step that only decodes.
        for (segs, totals) in [
            (vec![(0, 1), (1, 3), (4, 1), (5, 1)], vec![5, 9, 1, 12]),
            (vec![(0, 1), (1, 1), (2, 1)], vec![7, 2, 30]),
        ] {
            let n: usize = segs.iter().map(|s| s.1).sum();
            let q = wavy(&[1, nh, n, hd], 0.0);
            let kv: Vec<(Tensor, Tensor)> = totals
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let k = wavy(&[1, nkv, t, hd], 1.0 + i as f32);
                    (k, wavy(&[1, nkv, t, hd], 7.0 + i as f32))
                })
                .collect();
            let got = attn.cached_attention(&q, &segs, &kv).unwrap(); // (1, N, H*D)
            assert_eq!(got.dims(), &[1, n, nh * hd]);
            for (i, &(off, len)) in segs.iter().enumerate() {
                // A step of one sequence never takes the batched path.
                let qi = q.narrow(2, off, len).unwrap();
                let want = attn
                    .cached_attention(&qi, &[(0, len)], &kv[i..i + 1])
                    .unwrap();
                let d = max_abs_diff(&got.narrow(1, off, len).unwrap(), &want);
                assert!(d < 1e-5, "row {i} of {segs:?}: {d}");
            }
        }
    }

    #[test]
    fn refuses_unsupported_config() {
        let Some(dir) = tiny_model(7) else { return };
        let mut cfg = load_config(&dir).unwrap();
        // Dynamic NTK scaling depends on the sequence length: refused, not approximated.
        cfg.rope_scaling = Some(serde_json::json!({"type": "dynamic", "factor": 2.0}));
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = Model::new(&cfg, vb)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"dynamic\""), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let tmp = std::env::temp_dir().join(format!("asl-empty-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let err = Model::load(&tmp, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("config.json"), "{err}");
        let err = load_tokenizer(&tmp).err().unwrap().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        std::fs::write(tmp.join("model.safetensors"), b"garbage").unwrap();
        let err = load_safetensors_dir(&tmp, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn loads_sharded_checkpoint() {
        let Some(dir) = tiny_model(7) else { return };
        let tensors = load_safetensors_dir(&dir, &Device::Cpu).unwrap();
        let tmp = std::env::temp_dir().join(format!("asl-sharded-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let mut map = serde_json::Map::new();
        let (a, b) = names.split_at(names.len() / 2);
        for (file, part) in [
            ("model-00001-of-00002.safetensors", a),
            ("model-00002-of-00002.safetensors", b),
        ] {
            let ts: Vec<(String, Tensor)> = part
                .iter()
                .map(|n| ((*n).clone(), tensors[*n].clone()))
                .collect();
            crate::model::io::save_safetensors(&tmp.join(file), &ts).unwrap();
            for n in part {
                map.insert((*n).clone(), serde_json::json!(file));
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        crate::model::io::write_json(&tmp.join("model.safetensors.index.json"), &index).unwrap();
        std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
        let m1 = Model::load(&dir, &Device::Cpu).unwrap();
        let m2 = Model::load(&tmp, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let mask = ids.ones_like().unwrap();
        let d = max_abs_diff(
            &m1.forward_full(&ids, &mask).unwrap(),
            &m2.forward_full(&ids, &mask).unwrap(),
        );
        assert_eq!(d, 0.0);
        std::fs::remove_file(tmp.join("model-00002-of-00002.safetensors")).unwrap();
        let err = Model::load(&tmp, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
