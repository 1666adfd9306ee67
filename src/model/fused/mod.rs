//! CPU kernels with their own backward, for the f32 training and scoring paths.
//!
//! candle's fused CPU ops (`softmax_last_dim`, `rms_norm`, `rope`) have no backward, so a
//! differentiable forward falls back to composites of 5–10 elementwise ops. Each of them
//! allocates, page-faults and keeps alive a full-size tensor for the backward pass, and on
//! the training step these composites cost more than the matmuls around them. The kernels
//! here compute the same functions in one pass each way. On other devices and dtypes, and
//! for inputs a kernel does not cover, callers keep candle's composite.
//!
//! - [`logprob`]: next-token log-prob and entropy of logits rows.
//! - [`attention`]: causal self-attention over right-padded rows.
//! - [`rms_norm`]: RMSNorm with a learned scale.
//! - [`rope`]: rotary position embedding.
//! - [`swiglu`]: the MLP's `silu(gate) · up`.
//! - `few_rows`: attention's two products for decoding's one-row blocks, without `gemm`'s packing.
//! - [`expf`]: `exp` over a slice on AVX-512, bit for bit the C library's (the softmax's).
//! - [`amx_linear`]: a projection in bf16 on the CPU's bf16 kernel (`train.precision = "amx_bf16"`).

pub mod amx_linear;
pub mod attention;
pub mod expf;
mod few_rows;
pub mod logprob;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

pub use amx_linear::amx_linear;
pub use attention::causal_attention;
pub use logprob::target_logprobs;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use swiglu::swiglu;

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};

/// Whether values of `dtype` on `device` are f32 on the CPU, the one case the kernels here cover.
fn runs_on(dtype: DType, device: &Device) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// [`runs_on`] for a tensor.
fn covers(t: &Tensor) -> bool {
    runs_on(t.dtype(), t.device())
}

/// The contiguous f32 slice of a storage, or an error naming `what`.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{what}: expected contiguous f32"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{what}: expected contiguous u32"),
    }
}

/// Runs `f` on the f32 values of CPU tensors, each in row-major order (made contiguous first):
/// how the backward passes read their saved inputs and the upstream gradient without copying
/// them out, and how the AMX projections read their input. `names` name each tensor in errors.
pub(crate) fn with_f32_values<const N: usize, R>(
    tensors: [&Tensor; N],
    names: [&str; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut values = Vec::with_capacity(N);
    for ((storage, layout), name) in guards.iter().zip(names) {
        values.push(match &**storage {
            Storage::Cpu(cpu) => f32_slice(cpu, layout, name)?,
            _ => candle_core::bail!("{name}: expected a CPU tensor"),
        });
    }
    let Ok(values) = <[&[f32]; N]>::try_from(values) else {
        unreachable!("one slice per tensor");
    };
    Ok(f(values))
}

/// A strided f32 matrix inside a slice: element `(r, c)` is `data[r * row_stride + c *
/// col_stride]`. Transposing swaps the strides, so no kernel copies to transpose.
#[derive(Clone, Copy)]
struct MatView<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatView<'a> {
    /// `rows × cols`, row-major and dense, starting at `data[0]`.
    fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data` (an empty matrix always does).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `dst = scale · a·b`, or `dst += scale · a·b` with `accumulate`, where `dst` is the dense
/// row-major `a.rows × b.cols` matrix at the start of the slice. Single-threaded: the kernels
/// parallelise over heads or rows around it.
fn gemm_into(dst: &mut [f32], a: MatView, b: MatView, scale: f32, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.len() >= m * n && a.in_bounds() && b.in_bounds(),
        "gemm_into: {m}x{k} · {}x{n} into {} values",
        b.rows,
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assertion above keeps every index gemm derives from (m, n, k) and the strides
    // inside the three slices, and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
