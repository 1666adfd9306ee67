//! Causal self-attention fused for the CPU, with grouped key/value heads and right-padded rows.
//!
//! The composite it replaces (`q·kᵀ`, scale, additive mask, five-op softmax, `·v`) keeps about
//! six `(B, H, L, L)` tensors per layer alive for the backward pass and allocates as many again
//! in it. Here the scores live only in a per-task scratch block of 64 query rows: the forward
//! keeps nothing but its inputs, and the backward recomputes each block's probabilities (as
//! flash attention does), so a layer's attention costs no `L × L` memory beyond that scratch.
//! Each block multiplies only by the keys its rows can see, which skips most of the masked half.
//!
//! The result equals the composite's with the mask `causal + padding` of a right-padded batch:
//! query `i` of row `b` sees keys `j ≤ i` with `j < key_lens[b]`. A query that sees no key gets
//! zeros.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{MatView, f32_slice, few_rows, gemm_into, runs_on, with_f32_values};
use crate::model::error::{ModelError, Result};

/// Query rows per scratch block. A chunk's blocks start at its first token, so a prompt
/// prefilled from a cache cut at a multiple of this computes every query in the same block
/// shape as a prefill from position 0: bit for bit the same keys, values and logits
/// ([`crate::model::generate`] cuts shared prefixes there).
pub(crate) const BLOCK_ROWS: usize = 64;

/// Attention of q `(B, H, L, D)` over k, v `(B, KV, L, D)` (`H` a multiple of `KV`; query head
/// `h` reads kv head `h / (H / KV)`), scores scaled by `scale`; returns `(B, H, L, D)`.
/// Differentiable in all three inputs. CPU and f32 only: see [`applies`].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_lens: Arc<[usize]>,
    scale: f32,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let (kb, kv, kl, kd) = k.dims4()?;
    if (kb, kl, kd) != (b, l, d)
        || v.dims() != k.dims()
        || kv == 0
        || h % kv != 0
        || key_lens.len() != b
        || key_lens.iter().any(|&n| n > l)
    {
        return Err(ModelError::InvalidArgument(format!(
            "causal_attention: q {:?}, k {:?}, v {:?}, {} key lengths",
            q.dims(),
            k.dims(),
            v.dims(),
            key_lens.len()
        )));
    }
    if q.elem_count() == 0 {
        return Ok(q.zeros_like()?);
    }
    let op = CausalAttention {
        key_lens,
        scale,
        shape: Dims {
            heads: h,
            kv_heads: kv,
            len: l,
            head_dim: d,
        },
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// Whether [`causal_attention`] and [`cached_attention`] run for a model in `dtype` on `device`.
pub(crate) fn applies(dtype: DType, device: &Device) -> bool {
    runs_on(dtype, device)
}

/// Attention of a packed decoding step over each sequence's KV cache (no backward). `q`
/// `(1, H, N, D)` holds the new tokens of several sequences back to back, sequence `i` at rows
/// `segs[i] = (offset, len)`. `caches[i]` holds its keys and values `(1, KV, T, D)`, the new
/// tokens included, so its query `j` sits at position `T − len + j` and sees the keys up to
/// there. Returns `(1, N, H·D)`, the layout the output projection takes.
///
/// One parallel pass per layer replaces candle's eight or so small ops per sequence, whose
/// dispatch and thread wake-ups dominate a decoding step at batch 8 and beyond.
pub(crate) fn cached_attention(
    q: &Tensor,
    segs: &[(usize, usize)],
    caches: &[(Tensor, Tensor)],
    scale: f32,
) -> Result<Tensor> {
    let (one, h, n, d) = q.dims4()?;
    let bad = |why: String| ModelError::InvalidArgument(format!("cached_attention: {why}"));
    // Segments must tile the N queries in order, each with at least one token.
    let back_to_back = segs.iter().try_fold(0, |at, &(off, len)| {
        (off == at && len > 0).then_some(at + len)
    }) == Some(n);
    if one != 1 || d == 0 || segs.len() != caches.len() || !back_to_back {
        return Err(bad(format!(
            "q {:?} for segments {segs:?} and {} caches",
            q.dims(),
            caches.len()
        )));
    }
    let guards: Vec<_> = caches
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    let mut views = Vec::with_capacity(caches.len());
    for (((k_s, k_l), (v_s, v_l)), &(_, len)) in guards.iter().zip(segs) {
        let (k, v) = (cache_view(k_s, k_l, d)?, cache_view(v_s, v_l, d)?);
        if k.kv_heads != v.kv_heads || k.rows != v.rows || k.rows < len || h % k.kv_heads != 0 {
            return Err(bad(format!(
                "{} query heads and {len} new tokens over keys {:?} and values {:?}",
                h,
                k_l.dims(),
                v_l.dims()
            )));
        }
        views.push((k, v));
    }
    // One layer's caches: every sequence has the same kv heads (a task reads one of them).
    let kv_heads = views.first().map_or(1, |(k, _)| k.kv_heads);
    if views.iter().any(|(k, _)| k.kv_heads != kv_heads) {
        return Err(bad(format!(
            "caches with different kv heads: {:?}",
            views.iter().map(|(k, _)| k.kv_heads).collect::<Vec<_>>()
        )));
    }
    let blocks = with_f32_values([q], ["cached_attention q"], |[q]| {
        cached_blocks(q, &views, segs, (h, kv_heads, n, d), scale)
    })?;
    drop(guards);
    // Scatter the (seq, head) blocks into token-major rows: (N, H, D).
    let mut out = vec![0f32; n * h * d];
    for (task, block) in blocks.iter().enumerate() {
        let (seq, head) = (task / h, task % h);
        let off = segs[seq].0;
        for (i, row) in block.chunks(d).enumerate() {
            let at = ((off + i) * h + head) * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
    Ok(Tensor::from_vec(out, (1, n, h * d), q.device())?)
}

/// The attention output of every (sequence, head) of a decoding step, `len × D` each, in
/// (sequence, head) order; `q` holds the step's queries `(H, N, D)` row-major, and every cache
/// has `KV` heads.
///
/// One task per (sequence, kv head) runs the query heads that read that kv head one after the
/// other, so its keys and values come from memory once and stay in the core's cache for the
/// others (SmolLM2: three query heads per kv head). While decoding, reading the caches is most
/// of attention's time. A step of at most `few_rows::FEW_ROWS` new tokens (decoding) runs
/// the heads as one block through [`few_rows_group`], which reads each key once for all of them.
/// Each head's arithmetic is what a task of its own would do.
fn cached_blocks(
    q: &[f32],
    views: &[(CacheView, CacheView)],
    segs: &[(usize, usize)],
    (h, kv_heads, n, d): (usize, usize, usize, usize),
    scale: f32,
) -> Vec<Vec<f32>> {
    let group = h / kv_heads;
    let grouped: Vec<Vec<Vec<f32>>> = (0..segs.len() * kv_heads)
        .into_par_iter()
        .map(|task| {
            let (seq, kv_head) = (task / kv_heads, task % kv_heads);
            let (off, len) = segs[seq];
            let (k, v) = &views[seq];
            let (k, v) = (k.head(kv_head, d), v.head(kv_head, d));
            let past = k.len() / d - len;
            if len <= few_rows::FEW_ROWS {
                return few_rows_group(
                    q,
                    (off, len),
                    n,
                    group * kv_head..group * (kv_head + 1),
                    (k, v),
                    d,
                    scale,
                );
            }
            let mut p = vec![0f32; BLOCK_ROWS.min(len) * (past + len)];
            (kv_head * group..(kv_head + 1) * group)
                .map(|head| {
                    let q_rows = &q[(head * n + off) * d..(head * n + off + len) * d];
                    let mut out = vec![0f32; len * d];
                    for r0 in (0..len).step_by(BLOCK_ROWS) {
                        let rows = BLOCK_ROWS.min(len - r0);
                        let keys = past + r0 + rows;
                        let visible = |i| past + r0 + i + 1;
                        let out_block = &mut out[r0 * d..(r0 + rows) * d];
                        if rows <= few_rows::FEW_ROWS {
                            // A chunk's short last block: as a decoding step's.
                            let q_block = &q_rows[r0 * d..(r0 + rows) * d];
                            let kv = (&k[..keys * d], &v[..keys * d]);
                            few_rows_attend(q_block, kv, d, scale, visible, &mut p, out_block);
                            continue;
                        }
                        let q_block = MatView::dense(&q_rows[r0 * d..], rows, d);
                        block_probabilities(q_block, k, keys, scale, visible, &mut p);
                        gemm_into(
                            out_block,
                            MatView::dense(&p, rows, keys),
                            MatView::dense(v, keys, d),
                            1.0,
                            false,
                        );
                    }
                    out
                })
                .collect()
        })
        .collect();
    grouped.into_iter().flatten().collect()
}

/// The outputs of the query `heads` of one kv head for a step of `len ≤ FEW_ROWS` new tokens
/// at `off` (a decoding step: one), one `len × D` block a head. The heads' rows go through the
/// few-row kernels together, ordered (token, head) so the rows that see the same keys sit side by
/// side: the kernels then read each key and value row once for all of them. Each row's
/// arithmetic is what it would be alone, so the result is the per-head blocks' bit for bit.
fn few_rows_group(
    q: &[f32],
    (off, len): (usize, usize),
    n: usize,
    heads: std::ops::Range<usize>,
    (k, v): (&[f32], &[f32]),
    d: usize,
    scale: f32,
) -> Vec<Vec<f32>> {
    let group = heads.len();
    let keys = k.len() / d;
    let past = keys - len;
    let rows = len * group;
    let mut qg = Vec::with_capacity(rows * d);
    for i in 0..len {
        for head in heads.clone() {
            let at = (head * n + off + i) * d;
            qg.extend_from_slice(&q[at..at + d]);
        }
    }
    let visible = |r: usize| past + r / group + 1;
    let (mut p, mut out) = (vec![0f32; rows * keys], vec![0f32; rows * d]);
    few_rows_attend(&qg, (k, v), d, scale, visible, &mut p, &mut out);
    (0..group)
        .map(|g| {
            (0..len)
                .flat_map(|i| {
                    out[(i * group + g) * d..(i * group + g + 1) * d]
                        .iter()
                        .copied()
                })
                .collect()
        })
        .collect()
}

/// Attention of the query rows `q` over all the keys and values of `k`, `v` (each dense, `d`
/// wide), row `i` seeing the first `visible(i)`: the few-row kernels' scores, the softmax, and
/// the weighted sum into `out`; `p` is scratch of at least rows × keys values.
fn few_rows_attend(
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    d: usize,
    scale: f32,
    visible: impl Fn(usize) -> usize + Copy,
    p: &mut [f32],
    out: &mut [f32],
) {
    let (rows, keys) = (q.len() / d, k.len() / d);
    few_rows::scores(q, rows, k, keys, d, scale, p);
    softmax_visible(p, rows, keys, visible);
    few_rows::weighted_sum(p, rows, keys, visible, v, d, out);
}

/// One sequence's cached keys or values `(1, KV, T, D)` inside a larger buffer: kv head `h`'s
/// `T` rows of `D` values start at `data[h * head_stride]`.
struct CacheView<'a> {
    data: &'a [f32],
    kv_heads: usize,
    rows: usize,
    head_stride: usize,
}

impl<'a> CacheView<'a> {
    fn head(&self, h: usize, d: usize) -> &'a [f32] {
        &self.data[h * self.head_stride..h * self.head_stride + self.rows * d]
    }
}

/// Reads a cache tensor whose rows of `d` values are contiguous (what candle-nn's `KvCache`
/// returns: a narrow of its buffer along the sequence).
fn cache_view<'a>(s: &'a Storage, l: &Layout, d: usize) -> Result<CacheView<'a>> {
    let bad = || {
        ModelError::InvalidArgument(format!(
            "cached_attention: cache {:?} with strides {:?} is not f32 (1, KV, T, {d}) on the CPU with contiguous rows",
            l.dims(),
            l.stride()
        ))
    };
    let Storage::Cpu(CpuStorage::F32(all)) = s else {
        return Err(bad());
    };
    let (dims, stride) = (l.dims(), l.stride());
    if dims.len() != 4 || dims[0] != 1 || dims[3] != d || stride[3] != 1 || stride[2] != d {
        return Err(bad());
    }
    let (kv_heads, rows, head_stride) = (dims[1], dims[2], stride[1]);
    let data = &all[l.start_offset()..];
    if kv_heads == 0 || (kv_heads - 1) * head_stride + rows * d > data.len() {
        return Err(bad());
    }
    Ok(CacheView {
        data,
        kv_heads,
        rows,
        head_stride,
    })
}

#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    kv_heads: usize,
    len: usize,
    head_dim: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Values of one head's `(L, D)` matrix.
    fn head_size(&self) -> usize {
        self.len * self.head_dim
    }
}

struct CausalAttention {
    key_lens: Arc<[usize]>,
    scale: f32,
    shape: Dims,
}

/// Fills `p` (`rows × keys`, dense) with the softmax of `scale · q_rows · kᵀ` over the first
/// `keys` rows of `k` (dense, `q_rows.cols` wide), where row `i` sees only the first
/// `visible(i)` keys: masked entries are 0, and a row that sees no key is all 0.
fn block_probabilities(
    q_rows: MatView,
    k: &[f32],
    keys: usize,
    scale: f32,
    visible: impl Fn(usize) -> usize,
    p: &mut [f32],
) {
    let rows = q_rows.rows;
    gemm_into(
        p,
        q_rows,
        MatView::dense(k, keys, q_rows.cols).t(),
        scale,
        false,
    );
    softmax_visible(p, rows, keys, visible);
}

/// The softmax of each of the `rows` rows of `p` (`keys` wide) over its first `visible(i)`
/// entries; the rest become 0, and a row that sees no key is all 0.
fn softmax_visible(p: &mut [f32], rows: usize, keys: usize, visible: impl Fn(usize) -> usize) {
    for (i, row) in p[..rows * keys].chunks_mut(keys).enumerate() {
        let (seen, masked) = row.split_at_mut(visible(i).min(keys));
        masked.fill(0.0);
        if seen.is_empty() {
            continue;
        }
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        seen.iter_mut().for_each(|x| *x -= max);
        // The scalar call's bits, eight lanes at a time; summed in order as candle's softmax.
        super::expf::exp_in_place(seen);
        let sum = seen.iter().fold(0f32, |sum, x| sum + x);
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|x| *x *= inv);
    }
}

/// One head's view of the problem: its queries, its kv head's keys and values (each `(L, D)`),
/// and how many keys its batch row has.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    key_len: usize,
}

impl CausalAttention {
    /// The query blocks of a head: `(first row, rows, keys any of them sees)`.
    fn blocks(&self, key_len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let len = self.shape.len;
        (0..len).step_by(BLOCK_ROWS).map(move |r0| {
            let rows = BLOCK_ROWS.min(len - r0);
            (r0, rows, (r0 + rows).min(key_len))
        })
    }

    /// Fills `p` with the attention probabilities of query rows `r0..r0 + rows` of a head.
    fn probabilities(&self, head: &Head, r0: usize, rows: usize, keys: usize, p: &mut [f32]) {
        let d = self.shape.head_dim;
        let q_rows = MatView::dense(&head.q[r0 * d..], rows, d);
        let visible = |i: usize| (r0 + i + 1).min(head.key_len);
        block_probabilities(q_rows, head.k, keys, self.scale, visible, p);
    }

    /// Output `(L, D)` of one head.
    fn forward_head(&self, head: &Head, out: &mut [f32]) {
        let d = self.shape.head_dim;
        let mut p = vec![0f32; BLOCK_ROWS * self.shape.len];
        for (r0, rows, keys) in self.blocks(head.key_len) {
            let out_rows = &mut out[r0 * d..(r0 + rows) * d];
            if keys == 0 {
                out_rows.fill(0.0);
                continue;
            }
            self.probabilities(head, r0, rows, keys, &mut p);
            gemm_into(
                out_rows,
                MatView::dense(&p, rows, keys),
                MatView::dense(head.v, keys, d),
                1.0,
                false,
            );
        }
    }

    /// Gradients of one query head: writes `dq` `(L, D)`, adds into its kv head's `dk`, `dv`.
    fn backward_head(
        &self,
        head: &Head,
        d_out: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let d = self.shape.head_dim;
        let mut p = vec![0f32; BLOCK_ROWS * self.shape.len];
        let mut ds = vec![0f32; BLOCK_ROWS * self.shape.len];
        for (r0, rows, keys) in self.blocks(head.key_len) {
            let dq_rows = &mut dq[r0 * d..(r0 + rows) * d];
            if keys == 0 {
                dq_rows.fill(0.0);
                continue;
            }
            let d_out_rows = MatView::dense(&d_out[r0 * d..], rows, d);
            self.probabilities(head, r0, rows, keys, &mut p);
            // dP = dO·vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale.
            gemm_into(
                &mut ds,
                d_out_rows,
                MatView::dense(head.v, keys, d).t(),
                1.0,
                false,
            );
            for (p_row, ds_row) in p[..rows * keys]
                .chunks(keys)
                .zip(ds[..rows * keys].chunks_mut(keys))
            {
                let dot: f32 = p_row.iter().zip(ds_row.iter()).map(|(a, b)| a * b).sum();
                for (g, &pr) in ds_row.iter_mut().zip(p_row) {
                    *g = pr * (*g - dot) * self.scale;
                }
            }
            let ds_view = MatView::dense(&ds, rows, keys);
            gemm_into(
                dq_rows,
                ds_view,
                MatView::dense(head.k, keys, d),
                1.0,
                false,
            );
            let q_rows = MatView::dense(&head.q[r0 * d..], rows, d);
            gemm_into(&mut dk[..keys * d], ds_view.t(), q_rows, 1.0, true);
            let p_view = MatView::dense(&p, rows, keys);
            gemm_into(&mut dv[..keys * d], p_view.t(), d_out_rows, 1.0, true);
        }
    }

    fn head<'a>(&self, q: &'a [f32], k: &'a [f32], v: &'a [f32], b: usize, h: usize) -> Head<'a> {
        let s = self.shape;
        let size = s.head_size();
        let qi = b * s.heads + h;
        let ki = b * s.kv_heads + h / s.group();
        Head {
            q: &q[qi * size..(qi + 1) * size],
            k: &k[ki * size..(ki + 1) * size],
            v: &v[ki * size..(ki + 1) * size],
            key_len: self.key_lens[b],
        }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, "causal-attention q")?;
        let k = f32_slice(s2, l2, "causal-attention k")?;
        let v = f32_slice(s3, l3, "causal-attention v")?;
        let s = self.shape;
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(s.head_size())
            .enumerate()
            .for_each(|(i, out)| {
                let head = self.head(q, k, v, i / s.heads, i % s.heads);
                self.forward_head(&head, out);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self.shape;
        let size = s.head_size();
        let (g, b) = (s.group(), self.key_lens.len());
        let mut dq = vec![0f32; b * s.heads * size];
        let mut dk = vec![0f32; b * s.kv_heads * size];
        let mut dv = vec![0f32; b * s.kv_heads * size];
        let names = [
            "causal-attention q",
            "causal-attention k",
            "causal-attention v",
        ];
        let names = [names[0], names[1], names[2], "causal-attention gradient"];
        with_f32_values([q, k, v, grad_res], names, |[q, k, v, d_out]| {
            // One task per kv head: it owns that head's dk, dv and the dq of the query heads
            // that read it, so no two tasks write the same value.
            dq.par_chunks_mut(g * size)
                .zip(dk.par_chunks_mut(size))
                .zip(dv.par_chunks_mut(size))
                .enumerate()
                .for_each(|(task, ((dq, dk), dv))| {
                    let (bi, kv) = (task / s.kv_heads, task % s.kv_heads);
                    for (gi, dq) in dq.chunks_mut(size).enumerate() {
                        let h = kv * g + gi;
                        let head = self.head(q, k, v, bi, h);
                        let qi = bi * s.heads + h;
                        let d_out = &d_out[qi * size..(qi + 1) * size];
                        self.backward_head(&head, d_out, dq, dk, dv);
                    }
                });
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_same_grads, max_abs_diff, spread_values};
    use candle_core::{D, Var};

    /// The composite the kernel replaces: scores, additive causal + padding mask, softmax, ·v,
    /// with kv heads repeated for the query heads that share them.
    fn composite(q: &Tensor, k: &Tensor, v: &Tensor, key_lens: &[usize], scale: f64) -> Tensor {
        let (b, h, l, _) = q.dims4().unwrap();
        let g = h / k.dim(1).unwrap();
        let repeat = |t: &Tensor| {
            let (b, kv, l, d) = t.dims4().unwrap();
            t.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, kv, g, l, d))
                .unwrap()
                .reshape((b, kv * g, l, d))
                .unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let mask: Vec<f32> = (0..b)
            .flat_map(|bi| {
                (0..l).flat_map(move |i| {
                    (0..l).map(move |j| {
                        if j > i || j >= key_lens[bi] {
                            -1e9
                        } else {
                            0.0
                        }
                    })
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, l, l), q.device()).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(&v).unwrap()
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        spread_values(n, seed, 2.0)
    }

    #[test]
    fn fused_attention_and_its_gradients_match_the_composite() {
        let dev = Device::Cpu;
        // 70 rows: two query blocks, the second partial; row 1 padded after 45 keys.
        let (b, h, kv, l, d) = (2, 4, 2, 70, 8);
        let key_lens: Arc<[usize]> = Arc::from(vec![70, 45]);
        let q = Var::from_vec(values(b * h * l * d, 1), (b, h, l, d), &dev).unwrap();
        let k = Var::from_vec(values(b * kv * l * d, 2), (b, kv, l, d), &dev).unwrap();
        let v = Var::from_vec(values(b * kv * l * d, 3), (b, kv, l, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let fused = causal_attention(&q, &k, &v, key_lens.clone(), scale as f32).unwrap();
        let want = composite(&q, &k, &v, &key_lens, scale);
        let dv = max_abs_diff(&fused, &want);
        assert!(dv < 1e-5, "outputs differ by {dv}");

        // A loss that weighs every output differently, so each gradient entry is checked.
        let weights = Tensor::from_vec(values(b * h * l * d, 4), (b, h, l, d), &dev).unwrap();
        let vars = [("q", &q), ("k", &k), ("v", &v)];
        assert_same_grads(&fused, &want, &weights, vars, 1e-5);
    }

    #[test]
    fn cached_attention_matches_the_composite_per_sequence() {
        let dev = Device::Cpu;
        let (h, kv, d) = (4, 2, 8);
        let scale = 1.0 / (d as f64).sqrt();
        // (cached before, new tokens): a decode step, a short chunk, a chunk of two blocks.
        let shapes = [(5, 1), (0, 3), (9, 70)];
        let n: usize = shapes.iter().map(|s| s.1).sum();
        let q = Tensor::from_vec(values(h * n * d, 5), (1, h, n, d), &dev).unwrap();
        let mut caches = Vec::new();
        let mut segs = Vec::new();
        let mut want = Vec::new();
        let mut off = 0;
        for (seq, &(past, len)) in shapes.iter().enumerate() {
            let total = past + len;
            let k =
                Tensor::from_vec(values(kv * total * d, 6 + seq), (1, kv, total, d), &dev).unwrap();
            let v =
                Tensor::from_vec(values(kv * total * d, 9 + seq), (1, kv, total, d), &dev).unwrap();
            // Through candle-nn's cache, as the model stores them: a narrow of a larger buffer.
            let mut cache = candle_nn::kv_cache::KvCache::new(2, 16);
            if past > 0 {
                cache
                    .append(
                        &k.narrow(2, 0, past).unwrap().contiguous().unwrap(),
                        &v.narrow(2, 0, past).unwrap().contiguous().unwrap(),
                    )
                    .unwrap();
            }
            let kept = cache
                .append(
                    &k.narrow(2, past, len).unwrap().contiguous().unwrap(),
                    &v.narrow(2, past, len).unwrap().contiguous().unwrap(),
                )
                .unwrap();
            caches.push(kept);
            segs.push((off, len));
            // The composite with query i at position past + i: a right-padded row of length
            // `total` whose first `past` queries are dropped.
            let q_seq = q.narrow(2, off, len).unwrap();
            let q_full = Tensor::zeros((1, h, past, d), DType::F32, &dev).unwrap();
            let q_full = Tensor::cat(&[&q_full, &q_seq], 2).unwrap();
            let out = composite(&q_full, &k, &v, &[total], scale)
                .narrow(2, past, len)
                .unwrap();
            want.push(
                out.transpose(1, 2)
                    .unwrap()
                    .reshape((1, len, h * d))
                    .unwrap(),
            );
            off += len;
        }
        let got = cached_attention(&q, &segs, &caches, scale as f32).unwrap();
        let want = Tensor::cat(&want, 1).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "cached attention differs by {diff}");
    }

    #[test]
    fn a_query_without_visible_keys_gets_zeros() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 3, 2), DType::F32, &dev).unwrap();
        let k = Tensor::ones((1, 1, 3, 2), DType::F32, &dev).unwrap();
        let out = causal_attention(&q, &k, &k, Arc::from(vec![0]), 1.0).unwrap();
        assert_eq!(out.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 3, 4, 2), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 2), DType::F32, &dev).unwrap();
        let e = causal_attention(&q, &k, &k, Arc::from(vec![4]), 1.0).unwrap_err();
        assert!(e.to_string().contains("causal_attention"), "{e}");
        let k = Tensor::zeros((1, 3, 4, 2), DType::F32, &dev).unwrap();
        let e = causal_attention(&q, &k, &k, Arc::from(vec![5]), 1.0).unwrap_err();
        assert!(e.to_string().contains("1 key lengths"), "{e}");
        // Segments that do not tile the queries back to back.
        let q = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let cache = (k.narrow(2, 0, 2).unwrap(), k.narrow(2, 0, 2).unwrap());
        for segs in [vec![(1, 1), (0, 1)], vec![(0, 2), (2, 0)]] {
            let caches = vec![cache.clone(); segs.len()];
            let e = cached_attention(&q, &segs, &caches, 1.0).unwrap_err();
            assert!(e.to_string().contains("cached_attention"), "{e}");
        }
    }
}
