//! The SwiGLU gate fused for the CPU: `silu(gate) · up`, with a backward that writes both
//! gradients in one pass.
//!
//! As candle ops this is `silu` then `mul`: two `(rows, intermediate)` tensors kept for the
//! backward pass, and about six more allocated in it (silu's derivative is a composite), at the
//! MLP's widest point.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{covers, f32_slice, with_f32_values};
use crate::model::error::{ModelError, Result};

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(gate) · up` elementwise, differentiable in both; CPU and f32 only: see [`applies`].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        return Err(ModelError::InvalidArgument(format!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        )));
    }
    if gate.elem_count() == 0 {
        return Ok(gate.clone());
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

/// Whether [`swiglu`] runs for `gate` and `up`.
pub(crate) fn applies(gate: &Tensor, up: &Tensor) -> bool {
    covers(gate) && covers(up)
}

/// `σ(x) = 1 / (1 + exp(−x))` given `e = exp(−x)`, which [`super::expf::exp_in_place`] computes
/// for a whole chunk first (the scalar call's bits, eight lanes at a time).
fn sigmoid_of(e: f32) -> f32 {
    1.0 / (1.0 + e)
}

/// `buf[i] = exp(−x[i])`.
fn exp_neg(x: &[f32], buf: &mut [f32]) {
    buf.iter_mut().zip(x).for_each(|(b, &x)| *b = -x);
    super::expf::exp_in_place(buf);
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = f32_slice(s1, l1, "swiglu gate")?;
        let up = f32_slice(s2, l2, "swiglu up")?;
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(out, (gate, up))| {
                exp_neg(gate, out);
                for ((y, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *y = g * sigmoid_of(*y) * u;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut d_gate = vec![0f32; gate.elem_count()];
        let mut d_up = vec![0f32; gate.elem_count()];
        let names = ["swiglu gate", "swiglu up", "swiglu gradient"];
        with_f32_values([gate, up, grad_res], names, |[gate, up, dy]| {
            // d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g))).
            d_gate
                .par_chunks_mut(CHUNK)
                .zip(d_up.par_chunks_mut(CHUNK))
                .zip(gate.par_chunks(CHUNK))
                .zip(up.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                .for_each(|(((dg, du), gate), (up, dy))| {
                    exp_neg(gate, du);
                    for i in 0..gate.len() {
                        let (g, s) = (gate[i], sigmoid_of(du[i]));
                        dg[i] = dy[i] * up[i] * s * (1.0 + g * (1.0 - s));
                        du[i] = dy[i] * g * s;
                    }
                });
        })?;
        Ok((
            Some(Tensor::from_vec(d_gate, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(d_up, up.shape(), up.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_same_grads, max_abs_diff, spread_values};
    use candle_core::{Device, Var};

    #[test]
    fn fused_swiglu_and_its_gradients_match_candles_ops() {
        let dev = Device::Cpu;
        // More values than one task holds, so chunk boundaries are crossed.
        let shape = (3, 50, 130);
        let vals = |seed| spread_values(3 * 50 * 130, seed, 12.0);
        let gate = Var::from_vec(vals(1), shape, &dev).unwrap();
        let up = Var::from_vec(vals(2), shape, &dev).unwrap();
        let fused = swiglu(&gate, &up).unwrap();
        let want = (gate.silu().unwrap() * up.as_tensor()).unwrap();
        let d = max_abs_diff(&fused, &want);
        assert!(d < 1e-4, "outputs differ by {d}");

        let weights = Tensor::from_vec(vals(3), shape, &dev).unwrap();
        assert_same_grads(
            &fused,
            &want,
            &weights,
            [("gate", &gate), ("up", &up)],
            1e-3,
        );
    }

    /// The lanes' `exp` leaves every bit where the scalar formula puts it, forward and backward,
    /// gates of either sign and beyond ±88 (the scalar call's own range) included.
    #[test]
    fn outputs_and_gradients_are_the_scalar_formulas_bits() {
        let dev = Device::Cpu;
        let n = 3 * CHUNK + 77;
        let mut gate = spread_values(n, 4, 12.0);
        gate[..8].copy_from_slice(&[-100.0, -88.5, 90.0, 0.0, -0.0, 1e-30, -1e-30, 87.9]);
        let up = spread_values(n, 5, 3.0);
        let dy = spread_values(n, 6, 2.0);
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let g = Var::from_vec(gate.clone(), n, &dev).unwrap();
        let u = Var::from_vec(up.clone(), n, &dev).unwrap();
        let out = swiglu(&g, &u).unwrap();
        let out: Vec<f32> = out.to_vec1().unwrap();
        let dy_t = Tensor::from_vec(dy.clone(), n, &dev).unwrap();
        let (Some(dg), Some(du)) = SwiGlu.bwd(&g, &u, &dy_t, &dy_t).unwrap() else {
            panic!("both gradients")
        };
        let (dg, du): (Vec<f32>, Vec<f32>) = (dg.to_vec1().unwrap(), du.to_vec1().unwrap());
        for i in 0..n {
            let (x, s) = (gate[i], sigmoid(gate[i]));
            assert_eq!(
                out[i].to_bits(),
                (x * s * up[i]).to_bits(),
                "forward at {x}"
            );
            let want_dg = dy[i] * up[i] * s * (1.0 + x * (1.0 - s));
            assert_eq!(dg[i].to_bits(), want_dg.to_bits(), "d gate at {x}");
            assert_eq!(du[i].to_bits(), (dy[i] * x * s).to_bits(), "d up at {x}");
        }
    }

    #[test]
    fn shapes_that_differ_are_refused() {
        let a = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(swiglu(&a, &b).unwrap_err().to_string().contains("swiglu"));
    }
}
