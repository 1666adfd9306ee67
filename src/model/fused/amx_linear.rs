//! `x · wᵀ` in bf16 (AMX tiles, or AVX-512-BF16 without them) with its backward, for training with `train.precision = "amx_bf16"`.
//!
//! Mixed precision as PyTorch's `autocast(bfloat16)` trains on these CPUs: the weight stays f32
//! (the optimizer's master copy), every product rounds its two operands to bf16 and accumulates
//! in f32 on the tiles or registers ([`crate::model::amx`]), forward and backward alike:
//! `dx = dy · w` and `dw = dyᵀ · x`. The weight is packed into tiles on each call, since it
//! trains; `dw` is computed only when `w` needs a gradient (not for the tied, frozen head), and
//! `dx` only when `x` does (not for the first trained layer's input).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::{f32_slice, with_f32_values};
use crate::model::amx::PackedBf16;

/// `x (m, k) · w (n, k)ᵀ → (m, n)`, both f32, on the bf16 kernel (bf16 operands, f32 accumulation).
/// `packed` holds `w` and `wᵀ` already packed when `w` is a constant (the tied, frozen head), so
/// they are not packed again for every micro-batch. Callers check
/// [`crate::model::amx::available`] first.
pub fn amx_linear(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&PackedWeight>,
) -> candle_core::Result<Tensor> {
    let op = AmxLinear {
        packed: packed.cloned(),
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// A constant weight packed both ways: `w` for the forward product, `wᵀ` for `dx = dy · w`.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    w: Arc<PackedBf16>,
    wt: Arc<PackedBf16>,
}

impl PackedWeight {
    /// Packs the f32 weight `(n, k)`.
    pub fn new(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        with_f32_values([w], ["amx-linear weight"], |[v]| Self {
            w: Arc::new(PackedBf16::pack(v, n, k)),
            wt: Arc::new(PackedBf16::pack_transposed(v, k, n)),
        })
    }
}

struct AmxLinear {
    packed: Option<PackedWeight>,
}

impl CustomOp2 for AmxLinear {
    fn name(&self) -> &'static str {
        "amx-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, kw) = l2.shape().dims2()?;
        if k != kw {
            candle_core::bail!("amx-linear: input of width {k}, weight of width {kw}");
        }
        let x = f32_slice(s1, l1, "amx-linear input")?;
        let y = match &self.packed {
            Some(p) => p.w.matmul(x, m),
            None => PackedBf16::pack(f32_slice(s2, l2, "amx-linear weight")?, n, k).matmul(x, m),
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let names = [
            "amx-linear input",
            "amx-linear weight",
            "amx-linear gradient",
        ];
        with_f32_values([x, w, dy], names, |[xs, ws, dys]| {
            // dx = dy · w: the tiles hold wᵀ as a (k, n) weight.
            let dx = x.track_op().then(|| match &self.packed {
                Some(p) => p.wt.matmul(dys, m),
                None => PackedBf16::pack_transposed(ws, k, n).matmul(dys, m),
            });
            // dw = dyᵀ · x: the rows of dyᵀ (n, m) against xᵀ packed as a (k, m) weight.
            let dw = w
                .track_op()
                .then(|| PackedBf16::pack_transposed(xs, k, m).matmul_transposed(dys, n));
            (dx, dw)
        })
        .and_then(|(dx, dw)| {
            Ok((
                dx.map(|v| Tensor::from_vec(v, (m, k), x.device()))
                    .transpose()?,
                dw.map(|v| Tensor::from_vec(v, (n, k), w.device()))
                    .transpose()?,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::amx::{available, bf16_bits, bf16_value};
    use crate::model::test_util::spread_values;
    use candle_core::{Device, Var};

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| bf16_value(bf16_bits(x))).collect()
    }

    /// `a (r, c) · b (c, s)` in f64.
    fn product(a: &[f32], b: &[f32], r: usize, c: usize, s: usize) -> Vec<f64> {
        let mut out = vec![0f64; r * s];
        for i in 0..r {
            for j in 0..s {
                out[i * s + j] = (0..c)
                    .map(|l| f64::from(a[i * c + l]) * f64::from(b[l * s + j]))
                    .sum();
            }
        }
        out
    }

    fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
        (0..c)
            .flat_map(|j| (0..r).map(move |i| v[i * c + j]))
            .collect()
    }

    fn assert_close(got: &Tensor, want: &[f64], what: &str) {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            // f32 accumulation of exact bf16 products: a few ulps of the sum's magnitude.
            assert!(
                (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} against {w}"
            );
        }
    }

    /// The forward product and both gradients equal the bf16-rounded operands multiplied in f64,
    /// at shapes that pad every tile dimension; a frozen weight gets no gradient.
    #[test]
    fn forward_and_gradients_are_the_bf16_products() {
        if !available() {
            eprintln!("no AMX-BF16 on this machine: amx-linear is refused where it is chosen");
            assert!(crate::model::placement::Placement::parse("cpu", "amx_bf16").is_err());
            return;
        }
        let dev = Device::Cpu;
        for (m, k, n) in [(3, 40, 20), (37, 64, 70), (16, 576, 32)] {
            let xs = spread_values(m * k, 1, 2.0);
            let ws = spread_values(n * k, 2, 0.5);
            let gs = spread_values(m * n, 3, 1.0);
            let x = Var::from_vec(xs.clone(), (m, k), &dev).unwrap();
            let w = Var::from_vec(ws.clone(), (n, k), &dev).unwrap();
            let y = amx_linear(&x, &w, None).unwrap();
            let (xr, wr, gr) = (round(&xs), round(&ws), round(&gs));
            assert_close(&y, &product(&xr, &transpose(&wr, n, k), m, k, n), "y");

            let g = Tensor::from_vec(gs.clone(), (m, n), &dev).unwrap();
            let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(x.as_tensor()).unwrap();
            let dw = grads.get(w.as_tensor()).unwrap();
            assert_close(dx, &product(&gr, &wr, m, n, k), "dx");
            assert_close(dw, &product(&transpose(&gr, m, n), &xr, n, m, k), "dw");

            // A constant weight, packed once: the same product and input gradient, and no
            // weight gradient.
            let frozen = Tensor::from_vec(ws, (n, k), &dev).unwrap();
            let packed = PackedWeight::new(&frozen).unwrap();
            let y2 = amx_linear(&x, &frozen, Some(&packed)).unwrap();
            assert_close(
                &y2,
                &product(&xr, &transpose(&wr, n, k), m, k, n),
                "y (packed)",
            );
            let g = Tensor::from_vec(gs, (m, n), &dev).unwrap();
            let grads = (y2 * g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&frozen).is_none());
            assert_close(
                grads.get(x.as_tensor()).unwrap(),
                &product(&gr, &wr, m, n, k),
                "dx (packed)",
            );
        }
    }
}
