//! The matmul roof of this machine for `scripts/bench-rollout.sh`: GFLOP/s of candle's CPU
//! matmul (the one the model runs) at SmolLM2-135M's projection shapes, in f32 and bf16, for a
//! decode-sized and a prefill-sized batch of rows, and through `QMatMul` with q8_0 weights (the
//! `quant = "q8_0"` sampling path: f32 activations, int8 weights), and on a CPU with AMX or
//! AVX-512-BF16 through asl's bf16 kernel (the `amx_bf16` path: f32 activations rounded to bf16 in each call, timed
//! too). Prints one JSON object per
//! line: `{"bench": "matmul", "dtype", "m", "k", "n", "gflops"}` (best of `--repeats`).
//!
//! cargo run --release --example bench_matmul -- [--rows 32,512] [--repeats 5]

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use serde_json::json;

asl::use_jemalloc!();

fn main() -> anyhow::Result<()> {
    let mut rows = vec![32usize, 512];
    let mut repeats = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => {
                rows = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--repeats" => repeats = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("bench_matmul: unknown argument {other}"),
        }
    }
    // (in, out) of SmolLM2-135M's projections: q/o (576 -> 576), MLP up/gate and down.
    let shapes = [(576usize, 576usize), (576, 1536), (1536, 576)];
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::BF16] {
        for &m in &rows {
            for &(k, n) in &shapes {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?.to_dtype(dtype)?;
                let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?.to_dtype(dtype)?;
                let linear = candle_nn::Linear::new(w, None);
                let name = format!("{dtype:?}").to_lowercase();
                report(&name, (m, k, n), repeats, || linear.forward(&x))?;
            }
        }
    }
    for &m in &rows {
        for &(k, n) in &shapes {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            // Widths padded with zeros to whole 256-blocks, as the model does, so candle's
            // repacked int8 kernels apply; the activations' padding is timed too.
            let pad = k.next_multiple_of(256) - k;
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?.pad_with_zeros(1, 0, pad)?;
            let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
            report("q8_0", (m, k, n), repeats, || {
                q.forward(&x.pad_with_zeros(1, 0, pad)?)
            })?;
        }
    }
    if asl::model::amx::available() {
        for &m in &rows {
            for &(k, n) in &shapes {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
                let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
                let packed = asl::model::amx::PackedBf16::pack(&w.flatten_all()?.to_vec1()?, n, k);
                report("amx_bf16", (m, k, n), repeats, || {
                    let values = x.flatten_all()?.to_vec1::<f32>()?;
                    Tensor::from_vec(packed.matmul(&values, m), (m, n), &dev)
                })?;
            }
        }
    }
    Ok(())
}

/// Prints the best GFLOP/s of `repeats` calls of `matmul` (an `m × k` by `k × n` product),
/// after one warm-up call (which also pays one-off costs such as repacking weights).
fn report(
    dtype: &str,
    (m, k, n): (usize, usize, usize),
    repeats: usize,
    matmul: impl Fn() -> candle_core::Result<Tensor>,
) -> anyhow::Result<()> {
    matmul()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        matmul()?.dims();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (m * k * n) as f64 / best / 1e9;
    println!(
        "{}",
        json!({"bench": "matmul", "dtype": dtype, "m": m, "k": k, "n": n, "gflops": gflops})
    );
    Ok(())
}
