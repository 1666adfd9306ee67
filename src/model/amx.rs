//! bf16 matrix products on the CPU's bf16 units, for the `amx_bf16` paths (`dtype = "amx_bf16"`
//! sampling, `train.precision = "amx_bf16"` training): Intel AMX tiles where the CPU has them,
//! else AVX-512-BF16 registers ([`avx512`]: AMD Zen 4 on), chosen once per process ([`kernel`]).
//!
//! A projection's weight `(n, k)` is rounded to bf16 once, when the sampling model is built, and
//! stored as AMX B tiles: for every 16 output columns and 32 inputs one 1 KiB tile of 16 rows,
//! each row two inputs × 16 columns interleaved (the "VNNI" pair layout `TDPBF16PS` and
//! `VDPBF16PS` both read). A product `x · wᵀ` rounds the f32 activations to bf16 (nearest even),
//! multiplies in bf16 and accumulates in f32, as PyTorch's `autocast(bfloat16)` matmul does on
//! these CPUs through oneDNN. Everything around the projections (embeddings, norms, attention,
//! softmax, sampling) stays f32.
//!
//! Written by hand because no maintained crate exposes these instructions to candle: candle's own
//! bf16 path uses no AMX or AVX-512-BF16 kernel (slower than its f32 here, docs/model-bench.md),
//! oneDNN has no maintained Rust binding, and `core::arch`'s AMX intrinsics are nightly-only. The
//! tile kernel is a few instructions of inline assembly (`ldtilecfg`, `tileloadd`, `tdpbf16ps`,
//! `tilestored`); the rest is ordinary Rust. Linux hands AMX state to a process only when asked
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which [`kernel`] does once.

use rayon::prelude::*;

mod avx512;

/// Output columns per tile (16 f32 = 64 bytes a row).
const TILE_N: usize = 16;
/// Inputs per tile (32 bf16 = 64 bytes a row).
const TILE_K: usize = 32;
/// Rows per tile.
const TILE_M: usize = 16;
/// u16 values in one packed weight tile.
const TILE_LEN: usize = TILE_N * TILE_K;

/// Which bf16 product kernel this machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX-BF16 tiles (`TDPBF16PS`), Intel Xeons from Sapphire Rapids on.
    Tiles,
    /// AVX-512-BF16 dot products (`VDPBF16PS`) on 512-bit registers, from the same packed
    /// weights: AMD Zen 4 and later, Intel Cooper Lake, and any AMX CPU.
    Avx512,
}

impl Kernel {
    /// The name the round tables and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Tiles => "AMX tiles",
            Kernel::Avx512 => "AVX-512-BF16",
        }
    }
}

/// The bf16 kernel this CPU and OS run, the tiles first: `None` where neither exists. Chosen once
/// per process, so one machine always gives the same bits.
pub fn kernel() -> Option<Kernel> {
    static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        if tiles_available() {
            Some(Kernel::Tiles)
        } else if avx512_available() {
            Some(Kernel::Avx512)
        } else {
            None
        }
    })
}

/// Whether this machine has a bf16 product kernel ([`kernel`]): the `amx_bf16` paths need one.
pub fn available() -> bool {
    kernel().is_some()
}

/// Whether this CPU and OS run AMX-BF16 tiles: CPUID says AMX-TILE and AMX-BF16, and Linux
/// granted the process the tile state (asked once, on the first call).
fn tiles_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): process-wide, and
    // refused (non-zero) where the kernel or the hypervisor does not enable the tile state.
    let ret: i64;
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") 0x1023i64,
            in("rsi") 18i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether this CPU runs AVX-512-BF16 (and the OS saves the 512-bit registers).
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 → bf16 bits, rounded to nearest even (NaN stays a quiet NaN).
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return 0x7fc0;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32.
#[inline]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// A weight `(n, k)` in bf16 AMX B tiles, zero-padded to whole tiles (`k` to 32, `n` to 32: the
/// kernel computes two column tiles at a time).
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    n_pad: usize,
    k_pad: usize,
    /// Tiles in order (column tile, input tile), [`TILE_LEN`] values each.
    tiles: Vec<u16>,
}

impl PackedBf16 {
    /// Packs the row-major weight `w` of `n` rows (outputs) × `k` columns (inputs).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n} × {k}");
        Self::pack_view(w, n, k, k, 1)
    }

    /// Packs the transpose of the row-major `w` of `k` rows × `n` columns: the weight `wᵀ` of
    /// `n` outputs × `k` inputs, read in place (the backward passes' `dy · w` and `dyᵀ · x`).
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "transposed weight of {n} × {k}");
        Self::pack_view(w, n, k, 1, n)
    }

    /// Packs the weight whose element (`row`, `col`) is `w[row · row_stride + col · col_stride]`.
    fn pack_view(w: &[f32], n: usize, k: usize, row_stride: usize, col_stride: usize) -> Self {
        let n_pad = n.next_multiple_of(2 * TILE_N);
        let k_pad = k.next_multiple_of(TILE_K);
        let k_tiles = k_pad / TILE_K;
        let mut tiles = vec![0u16; n_pad * k_pad];
        tiles
            .par_chunks_mut(k_tiles * TILE_LEN)
            .enumerate()
            .for_each(|(nb, column)| {
                for (kb, tile) in column.chunks_mut(TILE_LEN).enumerate() {
                    for pair in 0..TILE_K / 2 {
                        for c in 0..TILE_N {
                            let row = nb * TILE_N + c;
                            for h in 0..2 {
                                let col = kb * TILE_K + 2 * pair + h;
                                if row < n && col < k {
                                    tile[pair * 2 * TILE_N + 2 * c + h] =
                                        bf16_bits(w[row * row_stride + col * col_stride]);
                                }
                            }
                        }
                    }
                }
            });
        Self {
            n,
            k,
            n_pad,
            k_pad,
            tiles,
        }
    }

    /// Outputs (rows of the weight).
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Inputs (columns of the weight).
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// The weight's value at (`row`, `col`), as packed (bf16): what the tests read back.
    #[cfg(test)]
    fn get(&self, row: usize, col: usize) -> f32 {
        let k_tiles = self.k_pad / TILE_K;
        let (nb, c) = (row / TILE_N, row % TILE_N);
        let (kb, kk) = (col / TILE_K, col % TILE_K);
        let tile = &self.tiles[(nb * k_tiles + kb) * TILE_LEN..][..TILE_LEN];
        bf16_value(tile[(kk / 2) * 2 * TILE_N + 2 * c + kk % 2])
    }

    /// `x · wᵀ` for `m` rows of `x` (row-major, `m × k`): `m × n`, row-major, on this machine's
    /// [`kernel`]. Panics where there is none (callers check [`available`] once, when they choose
    /// this path).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input of {m} × {}", self.k);
        self.matmul_view(machine_kernel(), x, m, self.k, 1)
    }

    /// `xᵀ · wᵀ` for the row-major `x` of `k` rows × `m` columns (read in place): `m × n`.
    pub fn matmul_transposed(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "transposed input of {} × {m}", self.k);
        self.matmul_view(machine_kernel(), x, m, 1, m)
    }

    /// The product on `kernel` for the input whose element (`row`, `col`) is
    /// `x[row · row_stride + col · col_stride]`.
    fn matmul_view(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Vec<f32> {
        let runs = match kernel {
            Kernel::Tiles => tiles_available(),
            Kernel::Avx512 => avx512_available(),
        };
        assert!(runs, "{} are not available on this machine", kernel.name());
        let (k, k_pad, n_pad) = (self.k, self.k_pad, self.n_pad);
        let m_pad = m.next_multiple_of(TILE_M);
        // The activations in bf16, zero-padded to whole tiles, one row tile per task. A
        // transposed input is read column by column: 16 neighbouring values of each.
        let mut a = vec![0u16; m_pad * k_pad];
        a.par_chunks_mut(TILE_M * k_pad)
            .enumerate()
            .for_each(|(rb, block)| {
                let rows = (rb * TILE_M..m).take(TILE_M);
                if col_stride == 1 {
                    for (dst, r) in block.chunks_mut(k_pad).zip(rows) {
                        let src = &x[r * row_stride..][..k];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = bf16_bits(s);
                        }
                    }
                } else {
                    for c in 0..k {
                        for (i, r) in rows.clone().enumerate() {
                            block[i * k_pad + c] = bf16_bits(x[r * row_stride + c * col_stride]);
                        }
                    }
                }
            });
        let mut out = vec![0f32; m_pad * n_pad];
        // Column-tile pairs split across threads: each writes its own columns of every row.
        let pairs = n_pad / (2 * TILE_N);
        let parts = rayon::current_num_threads().min(pairs).max(1);
        let per = pairs.div_ceil(parts);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..parts).into_par_iter().for_each(|part| {
            let first = part * per;
            let last = ((part + 1) * per).min(pairs);
            if first < last {
                // SAFETY: the kernel runs here (asserted above); every part writes the disjoint
                // columns [first, last) × 32 of `out`, within its m_pad × n_pad bounds; `a` and
                // the tiles are read within their padded bounds.
                unsafe {
                    match kernel {
                        Kernel::Tiles => tile_kernel(
                            &a,
                            m_pad,
                            k_pad,
                            &self.tiles,
                            first..last,
                            out_ptr.get(),
                            n_pad,
                        ),
                        Kernel::Avx512 => avx512::kernel(
                            &a,
                            m,
                            k_pad,
                            &self.tiles,
                            first..last,
                            out_ptr.get(),
                            n_pad,
                        ),
                    }
                };
            }
        });
        // Drop the padding: the rows past m, then the columns past n.
        out.truncate(m * n_pad);
        if n_pad != self.n {
            let n = self.n;
            for row in 1..m {
                out.copy_within(row * n_pad..row * n_pad + n, row * n);
            }
            out.truncate(m * n);
        }
        out
    }
}

/// This machine's kernel, or the panic [`PackedBf16::matmul`] documents.
fn machine_kernel() -> Kernel {
    kernel().expect("no bf16 kernel (AMX-BF16 tiles or AVX-512-BF16) on this machine")
}

/// A raw pointer the threads of one product share (they write disjoint columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The 64-byte tile configuration (palette 1): every tile 16 rows of 64 bytes. Tiles 0–3
/// accumulate a 32 × 32 block of the output, 4–5 hold two row tiles of the activations, 6–7 two
/// column tiles of the weight.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = TILE_M as u8;
        }
        Self(c)
    }
}

/// `out[.., pairs] = a · wᵀ` over whole tiles: `a` is `m_pad × k_pad` bf16 (row-major), `tiles`
/// the packed weight, `out` `m_pad × n_pad` f32.
///
/// # Safety
/// AMX tiles must be available; `a` holds `m_pad × k_pad` values, `tiles` the packed weight of
/// `n_pad` columns, `out` points at `m_pad × n_pad` writable f32, and no other thread writes the
/// columns of `pairs`.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_kernel(
    a: &[u16],
    m_pad: usize,
    k_pad: usize,
    tiles: &[u16],
    pairs: std::ops::Range<usize>,
    out: *mut f32,
    n_pad: usize,
) {
    use std::arch::asm;
    let config = TileConfig::new();
    let k_tiles = k_pad / TILE_K;
    let a_stride = k_pad * 2;
    let c_stride = n_pad * 4;
    let m_tiles = m_pad / TILE_M;
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack));
        for pair in pairs {
            let b0 = tiles.as_ptr().add(2 * pair * k_tiles * TILE_LEN);
            let b1 = b0.add(k_tiles * TILE_LEN);
            let mut mb = 0;
            while mb < m_tiles {
                let a0 = a.as_ptr().add(mb * TILE_M * k_pad);
                let c = out.add(mb * TILE_M * n_pad + 2 * pair * TILE_N);
                if mb + 1 < m_tiles {
                    // Two row tiles × two column tiles.
                    let a1 = a0.add(TILE_M * k_pad);
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    for kb in 0..k_tiles {
                        asm!(
                            "tileloadd tmm4, [{a0} + {s}*1]",
                            "tileloadd tmm5, [{a1} + {s}*1]",
                            "tileloadd tmm6, [{b0} + {t}*1]",
                            "tileloadd tmm7, [{b1} + {t}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb * TILE_K),
                            a1 = in(reg) a1.add(kb * TILE_K),
                            s = in(reg) a_stride,
                            b0 = in(reg) b0.add(kb * TILE_LEN),
                            b1 = in(reg) b1.add(kb * TILE_LEN),
                            t = in(reg) 2 * TILE_N * 2,
                            options(nostack)
                        );
                    }
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c0 = in(reg) c,
                        c1 = in(reg) c.add(TILE_N),
                        c2 = in(reg) c.add(TILE_M * n_pad),
                        c3 = in(reg) c.add(TILE_M * n_pad + TILE_N),
                        s = in(reg) c_stride,
                        options(nostack)
                    );
                    mb += 2;
                } else {
                    // The last row tile alone.
                    asm!("tilezero tmm0", "tilezero tmm1", options(nostack));
                    for kb in 0..k_tiles {
                        asm!(
                            "tileloadd tmm4, [{a0} + {s}*1]",
                            "tileloadd tmm6, [{b0} + {t}*1]",
                            "tileloadd tmm7, [{b1} + {t}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            a0 = in(reg) a0.add(kb * TILE_K),
                            s = in(reg) a_stride,
                            b0 = in(reg) b0.add(kb * TILE_LEN),
                            b1 = in(reg) b1.add(kb * TILE_LEN),
                            t = in(reg) 2 * TILE_N * 2,
                            options(nostack)
                        );
                    }
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        c0 = in(reg) c,
                        c1 = in(reg) c.add(TILE_N),
                        s = in(reg) c_stride,
                        options(nostack)
                    );
                    mb += 1;
                }
            }
        }
        asm!("tilerelease", options(nostack));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_kernel(
    _a: &[u16],
    _m_pad: usize,
    _k_pad: usize,
    _tiles: &[u16],
    _pairs: std::ops::Range<usize>,
    _out: *mut f32,
    _n_pad: usize,
) {
    unreachable!("AMX is x86-64 only; available() is false elsewhere")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        assert_eq!(bf16_bits(f32::NAN) & 0x7fc0, 0x7fc0);
        assert_eq!(bf16_value(bf16_bits(0.15625)), 0.15625);
    }

    /// The packed tiles hold every weight, rounded, at the right place, and zeros in the padding.
    #[test]
    fn packing_keeps_every_weight() {
        for (n, k) in [(64, 64), (40, 70), (3, 5)] {
            let w = values(n * k, 1);
            let p = PackedBf16::pack(&w, n, k);
            assert_eq!(p.tiles.len(), p.n_pad * p.k_pad);
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(
                        p.get(r, c),
                        bf16_value(bf16_bits(w[r * k + c])),
                        "({r}, {c})"
                    );
                }
            }
            let nonzero = p.tiles.iter().filter(|&&v| v != 0).count();
            let expected = w.iter().filter(|&&v| bf16_bits(v) != 0).count();
            assert_eq!(nonzero, expected, "padding is zero for {n} × {k}");
        }
    }

    /// On each bf16 kernel this CPU runs (the tiles, AVX-512-BF16): the product equals the
    /// bf16-rounded inputs' product summed in f64 (up to summation order), for row counts that
    /// fill, half-fill and overfill a row block and widths that need padding; a row alone gives
    /// the bits it gives in a batch. Without either kernel the test checks that the path says so.
    #[test]
    fn kernels_multiply_like_rounded_f32() {
        let kernels: Vec<Kernel> = [
            (Kernel::Tiles, tiles_available()),
            (Kernel::Avx512, avx512_available()),
        ]
        .into_iter()
        .filter_map(|(k, runs)| runs.then_some(k))
        .collect();
        if kernels.is_empty() {
            let r = std::panic::catch_unwind(|| {
                PackedBf16::pack(&[0.0; 32 * 32], 32, 32).matmul(&[0.0; 32], 1)
            });
            assert!(r.is_err(), "matmul without a bf16 kernel must refuse");
            eprintln!(
                "kernels_multiply_like_rounded_f32: no AMX-BF16 or AVX-512-BF16 on this CPU; checked the refusal only"
            );
            return;
        }
        for kernel in kernels {
            multiplies_like_rounded_f32(kernel);
        }
    }

    fn multiplies_like_rounded_f32(kernel: Kernel) {
        for (m, n, k) in [
            (1, 64, 64),
            (2, 576, 576),
            (17, 192, 576),
            (32, 1536, 576),
            (33, 40, 70),
            (70, 576, 1536),
        ] {
            let w = values(n * k, 2);
            let x = values(m * k, 3);
            let p = PackedBf16::pack(&w, n, k);
            let y = p.matmul_view(kernel, &x, m, k, 1);
            assert_eq!(y.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|q| {
                            bf16_value(bf16_bits(x[i * k + q])) as f64
                                * bf16_value(bf16_bits(w[j * k + q])) as f64
                        })
                        .sum();
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * k as f64,
                        "{kernel:?} {m}×{k}·{k}×{n} at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
            // A row computed alone gives the bits it gives in a batch.
            let alone = p.matmul_view(kernel, &x[(m - 1) * k..], 1, k, 1);
            assert_eq!(
                alone,
                y[(m - 1) * n..].to_vec(),
                "{kernel:?}: last row alone, {m}×{k}·{k}×{n}"
            );
        }
    }
}
