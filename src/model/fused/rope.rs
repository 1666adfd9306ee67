//! Rotary position embedding fused for the CPU (Hugging Face's "rotate half" layout), with a
//! backward.
//!
//! candle-nn's `rope` kernel has no backward, and the differentiable composite (two
//! concatenations, two narrows, a negation, two multiplies and an add) keeps five full-size
//! tensors per call for the backward pass; a layer makes two calls. The rotation is
//! orthogonal, so the backward is the same kernel rotating the other way.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{covers, f32_slice};
use crate::model::error::{ModelError, Result};

/// Rotates `x` `(B, H, L, D)` by the angles whose cosines and sines are `cos`, `sin` `(L, D/2)`:
/// pairs `(x[i], x[i + D/2])` turn by the angle of position `l` and frequency `i`.
/// Differentiable in `x` (the tables are constants); CPU and f32 only: see [`applies`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, l, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims() != [l, d / 2] || sin.dims() != cos.dims() {
        return Err(ModelError::InvalidArgument(format!(
            "rope: x {:?} with tables {:?} and {:?}",
            x.dims(),
            cos.dims(),
            sin.dims()
        )));
    }
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let op = Rope {
        cos: cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
        sin: sin.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
        reverse: false,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Whether [`rope`] runs for `x`.
pub(crate) fn applies(x: &Tensor) -> bool {
    covers(x)
}

struct Rope {
    /// `(L, D/2)` row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Rotates by minus the angles: the backward.
    reverse: bool,
}

impl Rope {
    fn rotate(&self, x: &[f32], l: usize, d: usize) -> Vec<f32> {
        let half = d / 2;
        let sign = if self.reverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        // One task per (batch, head): L rows of D.
        out.par_chunks_mut(l * d)
            .zip(x.par_chunks(l * d))
            .for_each(|(out, x)| {
                for (pos, (y, x)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                    let (cos, sin) = (&self.cos[pos * half..], &self.sin[pos * half..]);
                    for i in 0..half {
                        let (c, s) = (cos[i], sign * sin[i]);
                        let (x1, x2) = (x[i], x[i + half]);
                        y[i] = x1 * c - x2 * s;
                        y[i + half] = x2 * c + x1 * s;
                    }
                }
            });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, len, d) = l.shape().dims4()?;
        let x = f32_slice(s, l, "rope x")?;
        Ok((CpuStorage::F32(self.rotate(x, len, d)), l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            reverse: !self.reverse,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_same_grads, max_abs_diff, spread_values};
    use candle_core::{D, Device, Var};

    /// The composite the kernel replaces: `x·cos + rotate_half(x)·sin`.
    fn composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.dim(D::Minus1).unwrap();
        let cos = Tensor::cat(&[cos, cos], D::Minus1).unwrap();
        let sin = Tensor::cat(&[sin, sin], D::Minus1).unwrap();
        let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
    }

    #[test]
    fn fused_rope_and_its_gradient_match_the_composite() {
        let dev = Device::Cpu;
        let (b, h, l, d) = (2, 3, 5, 8);
        let vals = |n, seed| spread_values(n, seed, 4.0);
        let x = Var::from_vec(vals(b * h * l * d, 1), (b, h, l, d), &dev).unwrap();
        let angles = Tensor::from_vec(vals(l * d / 2, 2), (l, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let fused = rope(&x, &cos, &sin).unwrap();
        let want = composite(&x, &cos, &sin);
        assert!(max_abs_diff(&fused, &want) < 1e-5);
        let inference = candle_nn::rotary_emb::rope(&x.as_tensor().detach(), &cos, &sin).unwrap();
        assert!(max_abs_diff(&fused, &inference) < 1e-5);

        let weights = Tensor::from_vec(vals(b * h * l * d, 3), (b, h, l, d), &dev).unwrap();
        assert_same_grads(&fused, &want, &weights, [("x", &x)], 1e-5);
    }

    #[test]
    fn tables_of_the_wrong_shape_are_refused() {
        let x = Tensor::zeros((1, 1, 4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(rope(&x, &t, &t).unwrap_err().to_string().contains("rope"));
        // Nothing to rotate is not an error.
        let empty = Tensor::zeros((1, 1, 0, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::zeros((0, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(rope(&empty, &t, &t).unwrap().dims(), &[1, 1, 0, 8]);
    }
}
