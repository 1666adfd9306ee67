//! RMSNorm with a learned scale, fused for the CPU: `y = x / sqrt(mean(x²) + eps) · w` per row
//! of the last dimension, with a backward that writes both gradients in one pass over the rows.
//!
//! candle-nn's fused `rms_norm` has no backward, and its differentiable `rms_norm_slow` is six
//! ops (square, sum, divide, add, sqrt, divide, multiply), each keeping a full `(rows, hidden)`
//! tensor for the backward pass and allocating more inside it; a model runs two per layer.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{covers, f32_slice, with_f32_values};
use crate::model::error::{ModelError, Result};

/// Rows per task of the backward; a fixed count, so the weight gradient's partial sums are
/// added in the same order whatever the thread count.
const ROWS_PER_TASK: usize = 64;

/// RMSNorm of `x` `(.., H)` with scale `weight` `(H,)`, differentiable in both. CPU and f32
/// only: see [`applies`].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [hidden] {
        return Err(ModelError::InvalidArgument(format!(
            "rms_norm: weight {:?} for rows of {hidden}",
            weight.dims()
        )));
    }
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })?)
}

/// Whether [`rms_norm`] runs for `x` and `weight`.
pub(crate) fn applies(x: &Tensor, weight: &Tensor) -> bool {
    covers(x) && covers(weight)
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x²) + eps)` of one row.
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl RmsNorm {
    /// `(dx, dw)` for rows `xs` with scale `w` and upstream gradient `dy`:
    /// `dx = r·(w⊙dy − x·r²·mean(w⊙dy⊙x))`, `dw = Σ_rows dy⊙x·r`, `r = 1/rms(x)`.
    fn gradients(&self, xs: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hidden = w.len();
        let mut dx = vec![0f32; xs.len()];
        let partial_dw: Vec<Vec<f32>> = dx
            .par_chunks_mut(hidden * ROWS_PER_TASK)
            .zip(xs.par_chunks(hidden * ROWS_PER_TASK))
            .zip(dy.par_chunks(hidden * ROWS_PER_TASK))
            .map(|((dx, xs), dy)| {
                let mut dw = vec![0f32; hidden];
                for ((dx, x), dy) in dx
                    .chunks_mut(hidden)
                    .zip(xs.chunks(hidden))
                    .zip(dy.chunks(hidden))
                {
                    let r = self.inv_rms(x);
                    let mut dot = 0f32;
                    for i in 0..hidden {
                        dot += w[i] * dy[i] * x[i];
                        dw[i] += dy[i] * x[i] * r;
                    }
                    let c = r * r * dot / hidden as f32;
                    for i in 0..hidden {
                        dx[i] = r * (w[i] * dy[i] - x[i] * c);
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; hidden];
        for part in &partial_dw {
            dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        (dx, dw)
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms-norm x")?;
        let w = f32_slice(s2, l2, "rms-norm weight")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(w.len())
            .zip(x.par_chunks(w.len()))
            .for_each(|(y, x)| {
                let r = self.inv_rms(x);
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let names = ["rms-norm x", "rms-norm weight", "rms-norm gradient"];
        let (dx, dw) = with_f32_values([x, weight, grad_res], names, |[xs, w, dy]| {
            self.gradients(xs, w, dy)
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_same_grads, max_abs_diff, spread_values};
    use candle_core::{Device, Var};

    #[test]
    fn fused_rms_norm_and_its_gradients_match_candles_composite() {
        let dev = Device::Cpu;
        // 130 rows: three backward tasks, the last partial.
        let (rows, hidden) = (130, 24);
        let vals = |n, seed| spread_values(n, seed, 4.0);
        let x = Var::from_vec(vals(rows * hidden, 1), (2, rows / 2, hidden), &dev).unwrap();
        let w = Var::from_vec(vals(hidden, 2), hidden, &dev).unwrap();
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let want = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
        let d = max_abs_diff(&fused, &want);
        assert!(d < 1e-5, "outputs differ by {d}");

        let weights =
            Tensor::from_vec(vals(rows * hidden, 3), (2, rows / 2, hidden), &dev).unwrap();
        assert_same_grads(&fused, &want, &weights, [("x", &x), ("weight", &w)], 1e-4);
    }

    #[test]
    fn a_weight_of_the_wrong_size_is_refused() {
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = rms_norm(&x, &w, 1e-5).unwrap_err().to_string();
        assert!(e.contains("rms_norm"), "{e}");
    }
}
