//! Attention's two products for a block of at most [`FEW_ROWS`] query rows: the scores
//! `scale · q·kᵀ` and the weighted sum `p·v`, for decoding steps.
//!
//! A decoding step asks each (sequence, head) for one query row against the whole cache. The
//! `gemm` crate packs its operands for a real matrix product first, and for one row that
//! packing and its dispatch cost more than the arithmetic: in a live profile of a bf16 rollout
//! these two products were about a quarter of the time (docs/model-bench.md). Here each is one
//! pass over the cache, in registers.
//!
//! The order of every operation is fixed, so the same row gives the same bits wherever it
//! falls: a dot product keeps 16 lane sums (lane `l` takes the elements `d ≡ l (mod 16)` in
//! order, each with one fused multiply-add; a short last chunk counts as zeros), which add up
//! as a tree: `l + (l + 8)`, then `+ 4`, `+ 2`, `+ 1`. A weighted sum takes the visible keys in
//! order, one fused multiply-add per key and value. The AVX-512 path and the portable loops
//! compute exactly that, so they agree bit for bit (tested); only the speed differs.
//!
//! Written by hand with `core::arch` intrinsics: the `gemm` crate has no small-row path, and
//! the two loops are short.

/// Blocks of at most this many query rows take these kernels instead of `gemm`.
pub(super) const FEW_ROWS: usize = 4;

const LANES: usize = 16;

/// `p[i·keys + j] = scale · (q_i · k_j)` for the `rows` rows of `q` and the first `keys` rows
/// of `k`, both dense with rows of `d` values.
pub(super) fn scores(
    q: &[f32],
    rows: usize,
    k: &[f32],
    keys: usize,
    d: usize,
    scale: f32,
    p: &mut [f32],
) {
    assert!(
        q.len() >= rows * d && k.len() >= keys * d && p.len() >= rows * keys,
        "few_rows::scores: {rows} rows and {keys} keys of {d} values"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; the assertion bounds every index.
        unsafe { avx512::scores(q, rows, k, keys, d, scale, p) };
        return;
    }
    for i in 0..rows {
        let qi = &q[i * d..(i + 1) * d];
        for j in 0..keys {
            p[i * keys + j] = scale * dot(qi, &k[j * d..(j + 1) * d]);
        }
    }
}

/// `out[i·d ..] = Σ_{j < visible(i)} p[i·keys + j] · v_j` for the `rows` rows of `p` (each
/// `keys` wide), `v` dense with rows of `d` values; `visible(i) ≤ keys`.
pub(super) fn weighted_sum(
    p: &[f32],
    rows: usize,
    keys: usize,
    visible: impl Fn(usize) -> usize,
    v: &[f32],
    d: usize,
    out: &mut [f32],
) {
    assert!(
        p.len() >= rows * keys && v.len() >= keys * d && out.len() >= rows * d,
        "few_rows::weighted_sum: {rows} rows and {keys} keys of {d} values"
    );
    for i in 0..rows {
        let seen = visible(i).min(keys);
        let (pi, oi) = (&p[i * keys..i * keys + seen], &mut out[i * d..(i + 1) * d]);
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512F detected; `seen ≤ keys` rows of `v` and `d` outputs are in bounds.
            unsafe { avx512::weighted_row(pi, v, d, oi) };
            continue;
        }
        oi.fill(0.0);
        for (j, &w) in pi.iter().enumerate() {
            for (o, &x) in oi.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *o = w.mul_add(x, *o);
            }
        }
    }
}

/// The dot product in the lane order above.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks(LANES).zip(b.chunks(LANES)) {
        for (l, sum) in acc.iter_mut().enumerate() {
            let (x, y) = (
                ca.get(l).copied().unwrap_or(0.0),
                cb.get(l).copied().unwrap_or(0.0),
            );
            *sum = x.mul_add(y, *sum);
        }
    }
    for width in [8, 4, 2, 1] {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// The mask of the `n mod 16` leading lanes of a short last chunk (all lanes when full).
    fn tail_mask(n: usize) -> __mmask16 {
        match n % LANES {
            0 => !0,
            r => (1u16 << r) - 1,
        }
    }

    /// # Safety
    /// AVX-512F; `q` holds `rows × d`, `k` `keys × d`, `p` `rows × keys` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(
        q: &[f32],
        rows: usize,
        k: &[f32],
        keys: usize,
        d: usize,
        scale: f32,
        p: &mut [f32],
    ) {
        let chunks = d.div_ceil(LANES);
        let last = tail_mask(d);
        for j in 0..keys {
            let kj = unsafe { k.as_ptr().add(j * d) };
            for i in 0..rows {
                let qi = unsafe { q.as_ptr().add(i * d) };
                let mut acc = _mm512_setzero_ps();
                for c in 0..chunks {
                    let m = if c + 1 == chunks { last } else { !0 };
                    // SAFETY: lanes outside `m` are not read; those inside lie in row i / j.
                    let (x, y) = unsafe {
                        (
                            _mm512_maskz_loadu_ps(m, qi.add(c * LANES)),
                            _mm512_maskz_loadu_ps(m, kj.add(c * LANES)),
                        )
                    };
                    acc = _mm512_fmadd_ps(x, y, acc);
                }
                p[i * keys + j] = scale * tree_sum(acc);
            }
        }
    }

    /// Lane 0 of `l + (l + 8)`, `+ 4`, `+ 2`, `+ 1`: the portable `dot`'s tree.
    #[target_feature(enable = "avx512f")]
    fn tree_sum(a: __m512) -> f32 {
        // 256-bit halves: lanes 8..16 onto 0..8.
        let s = _mm512_add_ps(a, _mm512_shuffle_f32x4::<0b11_10_11_10>(a, a));
        // 128-bit lane 1 onto lane 0: lanes 4..8 onto 0..4.
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b01_01_01_01>(s, s));
        // Within 128 bits: 2, 3 onto 0, 1; then 1 onto 0.
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b11_10_11_10>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_01_01_01>(s));
        _mm512_cvtss_f32(s)
    }

    /// `out = Σ_j p[j] · v_j` over the rows of `p`, keys in order; four chunks of the output
    /// at a time so four independent sums hide the multiply-add's latency.
    ///
    /// # Safety
    /// AVX-512F; `v` holds `p.len() × d` values, `out` `d`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_row(p: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
        let chunks = d.div_ceil(LANES);
        let last = tail_mask(d);
        let mask = |c: usize| if c + 1 == chunks { last } else { !0 };
        let mut c0 = 0;
        while c0 < chunks {
            let group = (chunks - c0).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, &w) in p.iter().enumerate() {
                let w = _mm512_set1_ps(w);
                let vj = unsafe { v.as_ptr().add(j * d) };
                for (g, sum) in acc.iter_mut().enumerate().take(group) {
                    let c = c0 + g;
                    // SAFETY: masked to the `d` values of row j.
                    let x = unsafe { _mm512_maskz_loadu_ps(mask(c), vj.add(c * LANES)) };
                    *sum = _mm512_fmadd_ps(w, x, *sum);
                }
            }
            for (g, sum) in acc.iter().enumerate().take(group) {
                let c = c0 + g;
                // SAFETY: masked to the `d` outputs.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(c * LANES), mask(c), *sum) };
            }
            c0 += group;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The kernels against the portable loops bit for bit (the same code when the CPU lacks
    /// AVX-512), and against plain f64 sums within rounding, at head sizes with and without a
    /// short last chunk.
    #[test]
    fn kernels_match_the_portable_order_and_the_exact_sums() {
        for d in [8, 16, 24, 64, 80, 128] {
            let (rows, keys) = (3, 37);
            let (q, k, v) = (
                values(rows * d, 1),
                values(keys * d, 2),
                values(keys * d, 3),
            );
            let mut p = vec![f32::NAN; rows * keys];
            scores(&q, rows, &k, keys, d, 0.125, &mut p);
            for i in 0..rows {
                for j in 0..keys {
                    let (qi, kj) = (&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d]);
                    let got = p[i * keys + j];
                    assert_eq!(got.to_bits(), (0.125 * dot(qi, kj)).to_bits(), "d {d}");
                    let exact: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    assert!(
                        (got as f64 - 0.125 * exact).abs() < 1e-4,
                        "d {d}: {got} vs {exact}"
                    );
                }
            }
            let visible = |i: usize| keys - 2 + i.min(2);
            let mut out = vec![f32::NAN; rows * d];
            weighted_sum(&p, rows, keys, visible, &v, d, &mut out);
            for i in 0..rows {
                for c in 0..d {
                    let seen = visible(i);
                    let want =
                        (0..seen).fold(0f32, |s, j| p[i * keys + j].mul_add(v[j * d + c], s));
                    assert_eq!(
                        out[i * d + c].to_bits(),
                        want.to_bits(),
                        "d {d}, row {i}, col {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_without_visible_keys_sums_to_zero() {
        let (p, v) = (vec![1.0; 4], vec![1.0; 4 * 16]);
        let mut out = vec![f32::NAN; 16];
        weighted_sum(&p, 1, 4, |_| 0, &v, 16, &mut out);
        assert!(out.iter().all(|&x| x == 0.0));
    }
}
