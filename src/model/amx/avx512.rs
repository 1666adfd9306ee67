//! The same bf16 products on AVX-512-BF16 registers, for CPUs without AMX tiles (AMD Zen 4 on).
//!
//! `VDPBF16PS` multiplies 16 pairs of bf16 by 16 pairs and adds each pair's two products to one
//! f32 lane. A row of an AMX B tile is exactly such a register: 16 output columns, each with two
//! neighbouring inputs. So the packed weights serve both kernels unchanged: for one column tile,
//! pair `p` of the inputs is the 64 bytes at `p × 32` values from the tile's start, whatever the
//! input tile.
//!
//! Each output value is one lane of one accumulator that starts at zero and takes the input pairs
//! in order, one instruction per pair: the same operations whatever the number of rows and
//! whichever block the row falls in, so a row computed alone gives the bits it gives in a batch.
//!
//! Written by hand with `core::arch` intrinsics (stable since Rust 1.89) because candle's bf16
//! path does not use the instruction and no maintained crate offers it for these packed weights.

use super::{TILE_K, TILE_LEN, TILE_N};
use std::ops::Range;

/// Rows of the output per register block: 6 rows × 4 column tiles = 24 accumulators, 4 weight
/// registers and one broadcast, within the 32 registers.
const MR: usize = 6;

/// `out[.., tile pairs] = a · wᵀ` for the `m` rows of `a` (`k_pad` bf16 a row), the packed
/// weight `tiles`, into `out` (`n_pad` f32 a row).
///
/// # Safety
/// The CPU runs AVX-512F and AVX-512-BF16; `a` holds `m × k_pad` values, `tiles` the packed
/// weight of `n_pad` columns and `k_pad` inputs, `out` points at `m × n_pad` writable f32, and no
/// other thread writes the columns of `pairs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn kernel(
    a: &[u16],
    m: usize,
    k_pad: usize,
    tiles: &[u16],
    pairs: Range<usize>,
    out: *mut f32,
    n_pad: usize,
) {
    let tile_stride = (k_pad / TILE_K) * TILE_LEN;
    let geometry = Geometry {
        k_pad,
        k_pairs: k_pad / 2,
        tile_stride,
        n_pad,
    };
    let mut tile = 2 * pairs.start;
    let end = 2 * pairs.end;
    while tile < end {
        let wide = end - tile >= 4;
        let b = unsafe { tiles.as_ptr().add(tile * tile_stride) };
        let mut row = 0;
        while row < m {
            let rows = (m - row).min(MR);
            let a_row = unsafe { a.as_ptr().add(row * k_pad) };
            let c = unsafe { out.add(row * n_pad + tile * TILE_N) };
            // SAFETY: `rows` rows from `row` and 2 or 4 column tiles from `tile` lie within the
            // bounds the caller guarantees.
            unsafe {
                match (rows, wide) {
                    (6, true) => block::<6, 4>(a_row, b, c, geometry),
                    (5, true) => block::<5, 4>(a_row, b, c, geometry),
                    (4, true) => block::<4, 4>(a_row, b, c, geometry),
                    (3, true) => block::<3, 4>(a_row, b, c, geometry),
                    (2, true) => block::<2, 4>(a_row, b, c, geometry),
                    (1, true) => block::<1, 4>(a_row, b, c, geometry),
                    (6, false) => block::<6, 2>(a_row, b, c, geometry),
                    (5, false) => block::<5, 2>(a_row, b, c, geometry),
                    (4, false) => block::<4, 2>(a_row, b, c, geometry),
                    (3, false) => block::<3, 2>(a_row, b, c, geometry),
                    (2, false) => block::<2, 2>(a_row, b, c, geometry),
                    _ => block::<1, 2>(a_row, b, c, geometry),
                }
            }
            row += rows;
        }
        tile += if wide { 4 } else { 2 };
    }
}

/// The strides one block reads and writes with.
#[derive(Clone, Copy)]
struct Geometry {
    /// bf16 values per row of `a`.
    k_pad: usize,
    /// Input pairs per row.
    k_pairs: usize,
    /// bf16 values per column tile of the packed weight.
    tile_stride: usize,
    /// f32 values per row of `out`.
    n_pad: usize,
}

/// One `R × (C × 16)` block of the output: `R` rows of `a` from `a`, `C` column tiles from `b`,
/// written at `c`.
///
/// # Safety
/// As [`kernel`], for these rows and column tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn block<const R: usize, const C: usize>(
    a: *const u16,
    b: *const u16,
    c: *mut f32,
    g: Geometry,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for p in 0..g.k_pairs {
        let mut w = [_mm512_setzero_si512(); C];
        for (j, w) in w.iter_mut().enumerate() {
            // SAFETY: pair p of column tile j lies within the packed weight.
            *w = unsafe { _mm512_loadu_si512(b.add(j * g.tile_stride + p * 2 * TILE_N).cast()) };
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: pair p of row i lies within `a`.
            let pair = unsafe { a.add(i * g.k_pad + 2 * p).cast::<i32>().read_unaligned() };
            let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
            for (acc, &w) in acc.iter_mut().zip(&w) {
                let w: __m512bh = unsafe { std::mem::transmute(w) };
                *acc = _mm512_dpbf16_ps(*acc, x, w);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, &v) in acc.iter().enumerate() {
            // SAFETY: row i, column tile j of the block lies within `out`.
            unsafe { _mm512_storeu_ps(c.add(i * g.n_pad + j * TILE_N), v) };
        }
    }
}

/// Off x86-64 the kernel is never chosen ([`super::kernel`] is `None` there).
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn kernel(
    _a: &[u16],
    _m: usize,
    _k_pad: usize,
    _tiles: &[u16],
    _pairs: Range<usize>,
    _out: *mut f32,
    _n_pad: usize,
) {
    unreachable!("AVX-512-BF16 is x86-64 only; kernel() is never Avx512 elsewhere")
}
