//! Attention's two products for a block of at most [`FEW_ROWS`] query rows: the scores
//! `scale · q·kᵀ` and the weighted sum `p·v`, for decoding steps.
//!
//! A decoding step asks each (sequence, head) for one query row against the whole cache. The
//! `gemm` crate packs its operands for a real matrix product first, which for one row costs
//! about as much as the arithmetic, and reads the cache once per query head. Here a block is
//! one pass in registers, and the query heads that share a kv head run together, so each key
//! and value row is read once for all of them: 2.2× gemm for SmolLM2's three heads at 1,024
//! keys, 4–6 % of a bf16 rollout and judge (docs/model-bench.md).
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
    let mut i = 0;
    while i < rows {
        let seen = visible(i).min(keys);
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // Up to three rows that see the same keys share each value row's loads.
            let mut n = 1;
            while n < 3 && i + n < rows && visible(i + n).min(keys) == seen {
                n += 1;
            }
            // Slots past the `n` passed repeat the last row, only to stay in bounds.
            let rows_p: [&[f32]; 3] =
                std::array::from_fn(|r| &p[(i + r).min(rows - 1) * keys..][..seen]);
            // SAFETY: AVX-512F detected; `seen ≤ keys` rows of `v`, and rows i..i+n of `out`
            // (`d` values each) are in bounds.
            unsafe { avx512::weighted_rows(&rows_p[..n], v, d, &mut out[i * d..(i + n) * d]) };
            i += n;
            continue;
        }
        let (pi, oi) = (&p[i * keys..i * keys + seen], &mut out[i * d..(i + 1) * d]);
        oi.fill(0.0);
        for (j, &w) in pi.iter().enumerate() {
            for (o, &x) in oi.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *o = w.mul_add(x, *o);
            }
        }
        i += 1;
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
        let scale = _mm512_set1_ps(scale);
        // Four keys at a time, every row against them while they sit in the first-level cache
        // (the rows of one kv head's query heads share its keys): four independent sums,
        // reduced together.
        let mut j = 0;
        while j + 4 <= keys {
            for i in 0..rows {
                let qi = unsafe { q.as_ptr().add(i * d) };
                let mut acc = [_mm512_setzero_ps(); 4];
                for c in 0..chunks {
                    let m = if c + 1 == chunks { last } else { !0 };
                    // SAFETY: lanes outside `m` are not read; those inside lie in row i and keys j..j+4.
                    let x = unsafe { _mm512_maskz_loadu_ps(m, qi.add(c * LANES)) };
                    for (g, sum) in acc.iter_mut().enumerate() {
                        let y = unsafe {
                            _mm512_maskz_loadu_ps(m, k.as_ptr().add((j + g) * d + c * LANES))
                        };
                        *sum = _mm512_fmadd_ps(x, y, *sum);
                    }
                }
                let sums = _mm512_mul_ps(scale, tree_sum4(acc));
                // Lane 0 of each 128-bit block holds one key's sum.
                // SAFETY: four values at p[i·keys + j ..] lie within the row.
                unsafe {
                    _mm512_mask_compressstoreu_ps(p.as_mut_ptr().add(i * keys + j), 0x1111, sums)
                };
            }
            j += 4;
        }
        for j in j..keys {
            let kj = unsafe { k.as_ptr().add(j * d) };
            for i in 0..rows {
                let qi = unsafe { q.as_ptr().add(i * d) };
                let mut acc = _mm512_setzero_ps();
                for c in 0..chunks {
                    let m = if c + 1 == chunks { last } else { !0 };
                    // SAFETY: as above, for key j.
                    let (x, y) = unsafe {
                        (
                            _mm512_maskz_loadu_ps(m, qi.add(c * LANES)),
                            _mm512_maskz_loadu_ps(m, kj.add(c * LANES)),
                        )
                    };
                    acc = _mm512_fmadd_ps(x, y, acc);
                }
                p[i * keys + j] = _mm512_cvtss_f32(_mm512_mul_ps(scale, tree_sum4([acc; 4])));
            }
        }
    }

    /// The portable `dot`'s tree (`l + (l + 8)`, `+ 4`, `+ 2`, `+ 1`) of four sums at once:
    /// sum `g` ends in lane 0 of 128-bit block `g`.
    #[target_feature(enable = "avx512f")]
    fn tree_sum4([a0, a1, a2, a3]: [__m512; 4]) -> __m512 {
        // Blocks (0, 1) + (2, 3) of each sum: lanes l + (l + 8), two sums to a register.
        let s01 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a0, a1),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a0, a1),
        );
        let s23 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a2, a3),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a2, a3),
        );
        // Block 0 + block 1 of each half: lanes l + (l + 4), one sum a block.
        let s = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(s01, s23),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(s01, s23),
        );
        // Within each block: 2, 3 onto 0, 1; then 1 onto 0.
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b11_10_11_10>(s));
        _mm512_add_ps(s, _mm512_permute_ps::<0b01_01_01_01>(s))
    }

    /// `out[r] = Σ_j rows[r][j] · v_j` for one to three rows of weights of equal length, keys in
    /// order: each value chunk is loaded once for every row, and four chunks of the output go at
    /// a time so independent sums hide the multiply-add's latency (a chunk past the row's end is
    /// masked off entirely). Each output value takes the same operations as a row alone.
    ///
    /// # Safety
    /// AVX-512F; every row of weights has the same length `n`, `v` holds `n × d` values and
    /// `out` `rows.len() × d`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_rows(rows: &[&[f32]], v: &[f32], d: usize, out: &mut [f32]) {
        match rows {
            [a] => unsafe { weighted::<1>([a], v, d, out) },
            [a, b] => unsafe { weighted::<2>([a, b], v, d, out) },
            [a, b, c] => unsafe { weighted::<3>([a, b, c], v, d, out) },
            _ => unreachable!("one to three rows"),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn weighted<const R: usize>(rows: [&[f32]; R], v: &[f32], d: usize, out: &mut [f32]) {
        let chunks = d.div_ceil(LANES);
        let last = tail_mask(d);
        let mask = |c: usize| match c + 1 {
            n if n < chunks => !0,
            n if n == chunks => last,
            _ => 0,
        };
        let n = rows[0].len();
        let mut c0 = 0;
        while c0 < chunks {
            let m = [mask(c0), mask(c0 + 1), mask(c0 + 2), mask(c0 + 3)];
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for j in 0..n {
                // SAFETY: each load is masked to the `d` values of row j.
                let vj = v.as_ptr().wrapping_add(j * d + c0 * LANES);
                let x = unsafe {
                    [
                        _mm512_maskz_loadu_ps(m[0], vj),
                        _mm512_maskz_loadu_ps(m[1], vj.wrapping_add(LANES)),
                        _mm512_maskz_loadu_ps(m[2], vj.wrapping_add(2 * LANES)),
                        _mm512_maskz_loadu_ps(m[3], vj.wrapping_add(3 * LANES)),
                    ]
                };
                for (sums, row) in acc.iter_mut().zip(&rows) {
                    let w = _mm512_set1_ps(row[j]);
                    for (sum, &xg) in sums.iter_mut().zip(&x) {
                        *sum = _mm512_fmadd_ps(w, xg, *sum);
                    }
                }
            }
            for (r, sums) in acc.iter().enumerate() {
                let o = out.as_mut_ptr().wrapping_add(r * d + c0 * LANES);
                for (g, (&sum, &mg)) in sums.iter().zip(&m).enumerate() {
                    // SAFETY: masked to row r's `d` outputs.
                    unsafe { _mm512_mask_storeu_ps(o.wrapping_add(g * LANES), mg, sum) };
                }
            }
            c0 += 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_util::spread_values;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        spread_values(n, seed, 4.0)
    }

    /// The kernels against the portable loops bit for bit (the same code when the CPU lacks
    /// AVX-512), and against plain f64 sums within rounding, at head sizes with and without a
    /// short last chunk.
    #[test]
    fn kernels_match_the_portable_order_and_the_exact_sums() {
        for d in [8, 16, 24, 64, 80, 128] {
            let (rows, keys) = (5, 37);
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
            // Rows that each see a different number of keys, and rows that share it (which
            // the AVX-512 path sums together, one to three at a time).
            let visibility: [&dyn Fn(usize) -> usize; 2] =
                [&|i: usize| keys - 2 + i.min(2), &|_| keys - 1];
            for visible in visibility {
                let mut out = vec![f32::NAN; rows * d];
                weighted_sum(&p, rows, keys, visible, &v, d, &mut out);
                for i in 0..rows {
                    for c in 0..d {
                        let seen = visible(i);
                        let want =
                            (0..seen).fold(0f32, |s, j| p[i * keys + j].mul_add(v[j * d + c], s));
                        let got = out[i * d + c];
                        assert_eq!(got.to_bits(), want.to_bits(), "d {d}, row {i}, col {c}");
                    }
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

#[cfg(test)]
mod timing {
    use super::super::{MatView, gemm_into};
    use super::*;

    /// `cargo test --release --lib -- --ignored few_rows_timing --nocapture`: one decoding row
    /// against a cache, these kernels against gemm (prints microseconds per head).
    #[test]
    #[ignore]
    fn few_rows_timing() {
        let d = 64;
        for keys in [256usize, 1024, 2048] {
            let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
            let k: Vec<f32> = (0..keys * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut p = vec![0f32; keys];
            let mut out = vec![0f32; d];
            let reps = 2000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                scores(&q, 1, &k, keys, d, 0.125, &mut p);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                weighted_sum(&p, 1, keys, |_| keys, &k, d, &mut out);
            }
            let w = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
            eprintln!("keys {keys}: scores {s:.1} us, weighted sum {w:.1} us");
            let few = s + w;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                gemm_into(
                    &mut p,
                    MatView::dense(&q, 1, d),
                    MatView::dense(&k, keys, d).t(),
                    0.125,
                    false,
                );
                gemm_into(
                    &mut out,
                    MatView::dense(&p, 1, keys),
                    MatView::dense(&k, keys, d),
                    1.0,
                    false,
                );
            }
            let gemm = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
            eprintln!("keys {keys}: few_rows {few:.1} us, gemm {gemm:.1} us");
            // Three heads of one kv head at once, as a decoding step runs them.
            let q3: Vec<f32> = [q.clone(), q.clone(), q.clone()].concat();
            let mut p3 = vec![0f32; 3 * keys];
            let mut out3 = vec![0f32; 3 * d];
            let t = std::time::Instant::now();
            for _ in 0..reps {
                scores(&q3, 3, &k, keys, d, 0.125, &mut p3);
                weighted_sum(&p3, 3, keys, |_| keys, &k, d, &mut out3);
            }
            let three = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
            eprintln!(
                "keys {keys}: three rows together {three:.1} us (one at a time: {:.1})",
                3.0 * few
            );
        }
    }
}
