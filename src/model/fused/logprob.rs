//! Next-token log-probs fused for the CPU: per row of logits, the log-softmax at the target token
//! and the row's entropy in one pass, with a backward that writes the logits' gradient in one
//! pass.
//!
//! Written by hand because candle has no such kernel: its composite (max, sub, exp, sum, log,
//! sub, gather) materialises about eight `(N, V)` tensors forward and as many backward, each
//! 200 MB per 1,000 positions with SmolLM2's 49,152-token vocabulary, and every one of them is
//! freshly allocated and page-faulted. On other devices and dtypes the composite runs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, u32_slice};
use crate::model::error::Result;

/// Log-probs `(N,)` of `targets` (u32 `(N,)`) under `logits` `(N, V)`, differentiable with
/// respect to the logits, and each row's entropy `(N,)`, detached.
pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let out = logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TargetLogprob)?; // (N, 2)
        let logp = out.narrow(1, 0, 1)?.squeeze(1)?;
        let entropy = out.narrow(1, 1, 1)?.squeeze(1)?.detach();
        return Ok((logp, entropy));
    }
    let logp_all = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let logp = logp_all.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let detached = logp_all.detach();
    let entropy = (detached.exp()? * &detached)?.sum(D::Minus1)?.neg()?;
    Ok((logp, entropy))
}

/// `(max, sum of exp(x - max), sum of exp(x - max) * x)` of one row.
fn row_moments(row: &[f32]) -> (f32, f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0f32, 0f32);
    let mut buf = [0f32; 512];
    for part in row.chunks(buf.len()) {
        let e = &mut buf[..part.len()];
        shifted_exps(part, max, e);
        for (&e, &x) in e.iter().zip(part) {
            sum += e;
            weighted += e * x;
        }
    }
    (max, sum, weighted)
}

/// `out[i] = exp(row[i] − max)`, the scalar call's bits eight lanes at a time.
fn shifted_exps(row: &[f32], max: f32, out: &mut [f32]) {
    out.iter_mut().zip(row).for_each(|(e, &x)| *e = x - max);
    super::expf::exp_in_place(out);
}

struct TargetLogprob;

impl CustomOp2 for TargetLogprob {
    fn name(&self) -> &'static str {
        "target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let logits = f32_slice(s1, l1, "target-logprob logits")?;
        let targets = u32_slice(s2, l2, "target-logprob targets")?;
        if targets.len() != n || targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!(
                "target-logprob: {} targets for {n} rows of {v}",
                targets.len()
            );
        }
        let mut out = vec![0f32; n * 2];
        out.par_chunks_mut(2)
            .zip(logits.par_chunks(v))
            .zip(targets.par_iter())
            .for_each(|((o, row), &t)| {
                let (max, sum, weighted) = row_moments(row);
                let lse = max + sum.ln();
                o[0] = row[t as usize] - lse;
                // H = -sum p (x - lse) = lse - E_p[x]
                o[1] = lse - weighted / sum;
            });
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Only the log-prob column carries a gradient; the entropy is detached.
        let upstream = grad_res.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let targets = targets.flatten_all()?.to_vec1::<u32>()?;
        let grad = logits.apply_op1_no_bwd(&TargetLogprobGrad { upstream, targets })?;
        Ok((Some(grad), None))
    }
}

/// d logp[n] / d logits[n, v] = 1[v = target] - softmax(logits[n])[v], scaled by the upstream
/// gradient of row n.
struct TargetLogprobGrad {
    upstream: Vec<f32>,
    targets: Vec<u32>,
}

impl CustomOp1 for TargetLogprobGrad {
    fn name(&self) -> &'static str {
        "target-logprob-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let logits = f32_slice(s, l, "target-logprob-grad logits")?;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v)
            .zip(logits.par_chunks(v))
            .zip(self.upstream.par_iter().zip(self.targets.par_iter()))
            .for_each(|((o, row), (&g, &t))| {
                if g == 0.0 {
                    return;
                }
                // The row's exps once, summed in the order `row_moments` sums them (same bits).
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                shifted_exps(row, max, o);
                let sum = o.iter().fold(0f32, |sum, &e| sum + e);
                let scale = -g / sum;
                o.iter_mut().for_each(|d| *d *= scale);
                o[t as usize] += g;
            });
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    fn composite(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        let logp_all = candle_nn::ops::log_softmax(logits, D::Minus1).unwrap();
        let logp = logp_all
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let entropy = (logp_all.exp().unwrap() * &logp_all)
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .neg()
            .unwrap();
        (logp, entropy)
    }

    #[test]
    fn fused_log_probs_entropy_and_gradient_match_the_composite() {
        let dev = Device::Cpu;
        let (n, v) = (5, 37);
        let values: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 6.0)
            .collect();
        let logits = Var::from_vec(values, (n, v), &dev).unwrap();
        let targets = Tensor::new(&[0u32, 36, 5, 5, 20], &dev).unwrap();
        let weights = Tensor::new(&[1f32, -2.0, 0.5, 0.0, 3.0], &dev).unwrap();

        let (fused, fused_h) = target_logprobs(logits.as_tensor(), &targets).unwrap();
        let (want, want_h) = composite(logits.as_tensor(), &targets);
        assert!(max_abs_diff(&fused, &want) < 1e-5);
        assert!(max_abs_diff(&fused_h, &want_h) < 1e-5);
        assert!(!fused_h.track_op(), "entropy is detached");

        let grad_of = |logp: &Tensor| {
            let loss = (logp * &weights).unwrap().sum_all().unwrap();
            loss.backward()
                .unwrap()
                .get(logits.as_tensor())
                .unwrap()
                .clone()
        };
        let d = max_abs_diff(&grad_of(&fused), &grad_of(&want));
        assert!(d < 1e-5, "gradient differs by {d}");
    }

    #[test]
    fn out_of_range_targets_are_refused() {
        let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32, 4], &Device::Cpu).unwrap();
        let e = target_logprobs(&logits, &targets).unwrap_err().to_string();
        assert!(e.contains("target-logprob"), "{e}");
    }
}
