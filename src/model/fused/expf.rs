//! `f32::exp` over a slice, eight lanes at a time on AVX-512, with the bits of the scalar call.
//!
//! The attention's softmax calls `exp` once per (query, key) pair, and one scalar call per
//! value was 13 % of a bf16 rollout (docs/model-bench.md). Every f32 result of the model must
//! stay the bits candle's own softmax gives (the fused paths are checked against it byte for
//! byte), and candle calls the C library's `expf`. On x86-64 glibc (2.28 on) that is the
//! ARM optimized-routines algorithm, built with FMA where the CPU has it (`__expf_fma`, the
//! variant every AVX-512 CPU gets): `x·N/ln 2 = k + r` in f64, `2^(k/N)` from a 32-entry table,
//! a cubic in `r`, one rounding to f32. [`exp_in_place`] runs the same f64 operations, fused
//! the same way (read off the disassembly of glibc 2.36's `__expf_fma`), on eight lanes, so each
//! lane rounds exactly as the scalar call does. Inputs the scalar code treats apart (|x| ≥ 88,
//! infinities, NaN) go to `f32::exp` itself.
//!
//! A C library that computes `expf` otherwise (musl, an older glibc, a future algorithm) would
//! break that identity, so the first call compares the lanes with `f32::exp` on inputs spread
//! over the range the softmax uses and keeps the scalar loop if any differs. The test
//! `lanes_equal_the_scalar_call` compares a million inputs; the ignored `every_value_down_to_minus_88`
//! every f32 in [-88, 0] (`cargo test --release --lib -- --ignored every_value_down`).
//!
//! Written by hand with `core::arch` intrinsics: no maintained crate computes glibc's `expf`
//! bit for bit (vectorized exp crates round differently).

use std::sync::OnceLock;

/// `xs[i] = xs[i].exp()`, bit for bit, for every value.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if lanes_usable() {
        // SAFETY: lanes_usable checked AVX-512F.
        unsafe { avx512::exp_in_place(xs) };
        return;
    }
    xs.iter_mut().for_each(|x| *x = x.exp());
}

/// Whether the lanes run here: AVX-512F, and the C library's `expf` gives their bits.
fn lanes_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let probes = probes();
            let mut lanes = probes.clone();
            // SAFETY: AVX-512F detected just above.
            unsafe { avx512::exp_in_place(&mut lanes) };
            return probes
                .iter()
                .zip(&lanes)
                .all(|(x, y)| x.exp().to_bits() == y.to_bits());
        }
        false
    })
}

/// 16 384 inputs over [-100, 0] and a few beyond (the softmax's `x − max`), on a fixed grid
/// jittered by a hash so the low mantissa bits vary.
fn probes() -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out: Vec<f32> = (0..16_384)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let jitter = (state >> 40) as f32 / (1u64 << 24) as f32;
            -100.0 * (i as f32 + jitter) / 16_384.0
        })
        .collect();
    out.extend([
        0.0,
        -0.0,
        -1e-30,
        -87.9,
        -88.0,
        -88.7,
        -103.5,
        -104.0,
        -f32::INFINITY,
    ]);
    out.extend([f32::NAN, 1.0, 20.0, 89.0, f32::MIN_POSITIVE]);
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `2^(i/32)` as f64 bits, less `i << 47` (what `ki << 47` adds back): glibc's
    /// `__exp2f_data.tab`.
    const TABLE: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// `32 / ln 2` (`invln2_scaled`).
    const INV_LN2_N: u64 = 0x40471547652b82fe;
    /// `0x1.8p52`: adding it rounds to an integer, kept in the low bits (`shift`).
    const SHIFT: u64 = 0x4338000000000000;
    /// The cubic's coefficients for `r` scaled by 32 (`poly_scaled`).
    const C0: u64 = 0x3ebc6af84b912394;
    const C1: u64 = 0x3f2ebfce50fac4f3;
    const C2: u64 = 0x3f962e42ff0c52d6;
    /// `top12(88.0f)`: from this exponent up (and infinities, NaN) glibc leaves its main path.
    const SPECIAL_TOP12: i32 = 0x42b;

    /// # Safety
    /// The CPU runs AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(16);
        for chunk in &mut chunks {
            // SAFETY: 16 values; AVX-512F by the caller.
            unsafe {
                let p = chunk.as_mut_ptr();
                let bits = _mm512_loadu_si512(p as *const __m512i);
                let top = _mm512_and_si512(_mm512_srli_epi32::<20>(bits), _mm512_set1_epi32(0x7ff));
                let special = _mm512_cmpge_epi32_mask(top, _mm512_set1_epi32(SPECIAL_TOP12));
                if special != 0 {
                    chunk.iter_mut().for_each(|x| *x = x.exp());
                    continue;
                }
                let lo = exp8(_mm256_loadu_ps(p));
                let hi = exp8(_mm256_loadu_ps(p.add(8)));
                _mm256_storeu_ps(p, lo);
                _mm256_storeu_ps(p.add(8), hi);
            }
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|x| *x = x.exp());
    }

    /// glibc's main path on eight values, each fused multiply-add where `__expf_fma` has one.
    #[target_feature(enable = "avx512f")]
    fn exp8(x: __m256) -> __m256 {
        let f = |bits: u64| _mm512_set1_pd(f64::from_bits(bits));
        let xd = _mm512_cvtps_pd(x);
        let inv_ln2_n = f(INV_LN2_N);
        let shift = f(SHIFT);
        // kd = round(x·N/ln2) + shift, one rounding; its low bits are the integer ki.
        let kd_shifted = _mm512_fmadd_pd(inv_ln2_n, xd, shift);
        let ki = _mm512_castpd_si512(kd_shifted);
        let kd = _mm512_sub_pd(kd_shifted, shift);
        let r = _mm512_fmsub_pd(inv_ln2_n, xd, kd);
        // s = 2^(k/N): the table entry for ki mod 32, with ki added to its exponent bits.
        let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
        let t = |i: usize| {
            // SAFETY: TABLE has 32 entries; i ≤ 24 reads 8 of them.
            unsafe { _mm512_loadu_si512(TABLE.as_ptr().add(i) as *const __m512i) }
        };
        let low = _mm512_permutex2var_epi64(t(0), idx, t(8));
        let high = _mm512_permutex2var_epi64(t(16), idx, t(24));
        let upper = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(16));
        let tab = _mm512_mask_blend_epi64(upper, low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(tab, _mm512_slli_epi64::<47>(ki)));
        // y = s · (C0 r³ + C1 r² + C2 r + 1), as (C0 r + C1) r² + (C2 r + 1).
        let z = _mm512_fmadd_pd(r, f(C0), f(C1));
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(r, f(C2), _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million inputs over the softmax's range and beyond, every lane against `f32::exp`, and
    /// slices of every length up to 40 (the scalar remainder). Where the lanes do not run (no
    /// AVX-512F, or a C library whose `expf` differs) this checks the scalar loop instead.
    #[test]
    fn lanes_equal_the_scalar_call() {
        eprintln!("expf lanes in use: {}", lanes_usable());
        let mut state = 1u64;
        let inputs: Vec<f32> = (0..1_000_000)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                match i % 4 {
                    // Any bit pattern of a value ≤ 0 down to -128.
                    0 => -f32::from_bits((state >> 33) as u32 % 0x4300_0000),
                    // Uniform in the usual softmax range.
                    1 => -30.0 * ((state >> 40) as f32 / (1u64 << 24) as f32),
                    // Any f32 at all, NaN and infinities included.
                    2 => f32::from_bits((state >> 32) as u32),
                    _ => -((state >> 40) as f32 / (1u64 << 30) as f32),
                }
            })
            .collect();
        let mut out = inputs.clone();
        exp_in_place(&mut out);
        for (x, y) in inputs.iter().zip(&out) {
            assert_eq!(
                x.exp().to_bits(),
                y.to_bits(),
                "exp({x:e}) = {} vs {y}",
                x.exp()
            );
        }
        for len in 0..40 {
            let mut part: Vec<f32> = inputs[..len].to_vec();
            exp_in_place(&mut part);
            for (x, y) in inputs[..len].iter().zip(&part) {
                assert_eq!(x.exp().to_bits(), y.to_bits(), "length {len}: exp({x:e})");
            }
        }
    }

    /// Every f32 from 0 down to -88 (1.1 billion values, ~10 s), the softmax's whole range.
    #[test]
    #[ignore = "exhaustive: run with --ignored"]
    fn every_value_down_to_minus_88() {
        let last = (-88.0f32).to_bits();
        let mut buf = Vec::with_capacity(1 << 20);
        let mut bits = 0x8000_0000u32;
        let mut checked = 0u64;
        while bits <= last {
            buf.clear();
            let end = last.min(bits.saturating_add((1 << 20) - 1));
            buf.extend((bits..=end).map(f32::from_bits));
            let mut out = buf.clone();
            exp_in_place(&mut out);
            for (x, y) in buf.iter().zip(&out) {
                assert_eq!(x.exp().to_bits(), y.to_bits(), "exp({x:e})");
            }
            checked += buf.len() as u64;
            bits = end + 1;
        }
        eprintln!("{checked} values equal (lanes in use: {})", lanes_usable());
    }

    /// On an x86-64 glibc machine with AVX-512F the lanes must be in use: were the probe to
    /// reject them there, the speed-up would vanish without a word.
    #[test]
    fn lanes_run_on_avx512_glibc() {
        #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(lanes_usable(), "the lanes differ from this glibc's expf");
        }
    }
}
