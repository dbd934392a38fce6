//! CPU elementwise kernels of the forward, fused where candle makes several passes over memory
//! (these passes are bound by memory traffic, not arithmetic): the SwiGLU product
//! `silu(gate) ⊙ up` in f32 and bf16, a row softmax, e^x for f32 in a form the compiler
//! vectorizes, and a helper that splits a row-wise job over the cores. Also the two passes of
//! the Jensen–Shannon distance matrix (`analysis::distance`), with a vectorizable f64 ln: the
//! C library's scalar `log` was most of `cluster_heads`' time.
//!
//! The kernels that use [`exp_f32`] are written once as plain Rust and compiled twice: for
//! AVX-512 (chosen at run time when the CPU has it) and for the build's baseline target.
//! Accuracy is checked in the tests against f64 math; `tests/model_fused_ops.rs` checks the ops
//! built on them against candle's composed forms.
//!
//! Written here rather than taken from `rten-vecmath` (vectorized exp within 1 ulp, sigmoid and
//! silu within 4): the fused loops need e^x inlined per element (bf16 in, bf16 out, no scratch
//! buffer). The f32 SwiGLU keeps the C library's `expf` (see [`silu_mul`]): the f32 parity
//! tests against transformers sit close enough to their tolerance that last-bit differences in
//! the SwiGLU show there, through the massive activations of the middle layers.

use half::bf16;

/// e^x in f32 arithmetic, in a form the compiler vectorizes (16 lanes with AVX-512): x = n·ln 2 + r
/// (Cody–Waite, ln 2 in two parts so n·ln2_hi is exact), e^r by its Taylor series to degree 7
/// (truncation below 6e-9 relative at |r| ≤ ln 2 / 2), 2^n applied in two factors so that
/// subnormal results come out right. Within 1.5 ulp (1.09 measured; the tests bound it); 0 below
/// −103.98, +∞ above ln(f32::MAX), NaN for NaN. An earlier version computed in f64 and rounded
/// once (0.51 ulp) at twice the cost; the parity tests against transformers read the same
/// with either (SmolLM2 logits 7.93e-5 against 7.92e-5, the oracle model's 2.56e-6 against
/// 2.55e-6).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -103.972_08;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75; // 0x3f317200: 9 trailing zero bits, n·LN2_HI exact for |n| < 512
    const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 − LN2_HI
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // n as an integer from the bits (a float-to-int cast does not vectorize: Rust's saturating
    // `as` goes lane by lane)
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32; // n ∈ [−150, 128]
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / c;
    }
    let h = ni >> 1; // both factors 2^h and 2^(n−h) are normal: h, n − h ∈ [−75, 64]
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    let y = p * s1 * s2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y // NaN in, NaN out (the clamp keeps NaN)
    }
}

/// `out = silu(gate) ⊙ up = gate / (1 + e^(−gate)) · up`, element by element, with the C
/// library's `expf`: bit for bit candle's `silu` followed by its product (f32 models are checked
/// against transformers to 1e-4 on the logits, and a vectorized e^x's rare last-bit differences
/// from `expf`, even within 0.51 ulp, moved them by ~2e-5 through the massive activations of the
/// middle layers). The pass is bound by memory traffic either way.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// The bf16 bits of `v` rounded to nearest, ties to even (NaN stays NaN), as `half::bf16::from_f32`
/// rounds, without branches.
#[inline(always)]
pub fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    if (x & 0x7fff_ffff) > 0x7f80_0000 {
        ((x >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

/// [`silu_mul_body`] on bf16 operands: each product in f32, rounded once to bf16.
#[inline(always)]
fn silu_mul_bf16_body(gate: &[bf16], up: &[bf16], out: &mut [bf16]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        let g = f32::from_bits((g.to_bits() as u32) << 16);
        let u = f32::from_bits((u.to_bits() as u32) << 16);
        *o = bf16::from_bits(bf16_bits(g / (1.0 + exp_f32(-g)) * u));
    }
}

/// Softmax of one row: `y = e^(x − max x) / Σ` (divided, as candle's softmax does). The max and the sum run in 16 lanes so that they
/// vectorize (the sum's order differs from a sequential one by rounding only).
#[inline(always)]
fn softmax_row_body(x: &[f32], y: &mut [f32]) {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = chunks.remainder().iter().copied().fold(
        lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        f32::max,
    );
    let mut sums = [0f32; L];
    let mut yc = y.chunks_exact_mut(L);
    let mut xc = x.chunks_exact(L);
    for (yc, xc) in (&mut yc).zip(&mut xc) {
        for ((s, o), &v) in sums.iter_mut().zip(yc.iter_mut()).zip(xc) {
            *o = exp_f32(v - max);
            *s += *o;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (o, &v) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = exp_f32(v - max);
        sum += *o;
    }
    y.iter_mut().for_each(|v| *v /= sum); // one rounding (a reciprocal would add one)
}

/// ln x in f64 for positive normal x (the caller guarantees it; other inputs are clamped into
/// [`f64::MIN_POSITIVE`, `f64::MAX`]), in a form the compiler vectorizes: x = 2^e·m with
/// m ∈ [√½, √2), ln m = 2·atanh(s) with s = (m − 1)/(m + 1), |s| ≤ 0.1716, by its series to
/// s^21 (truncation below 1e-17 relative), and e·ln 2 in two parts. Within 1 ulp of `f64::ln`
/// (the tests bound it).
#[inline(always)]
pub fn ln_f64_pos(x: f64) -> f64 {
    // fdlibm's split of ln 2: LN2_HI has 32 trailing zero bits, so e·LN2_HI is exact
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // ln 2 − LN2_HI
    let x = x.clamp(f64::MIN_POSITIVE, f64::MAX);
    let bits = x.to_bits();
    let e = ((bits >> 52) as i64) - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000); // [1, 2)
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { 0.5 * m } else { m };
    let e = (e + big as i64) as f64;
    // ln(1 + f) = f − (f²/2 − s·(f²/2 + R)), f = m − 1 exact (fdlibm's arrangement: the
    // correction is small next to f, so its rounding hardly shows)
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    // R = Σ 2·z^k / (2k + 1) for 1 ≤ k ≤ 10, by Horner
    let mut r = 2.0 / 21.0;
    for d in [19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0] {
        r = r * z + 2.0 / d;
    }
    let r = r * z * z + (2.0 / 3.0) * z;
    let hfsq = 0.5 * f * f;
    let ln_m = f - (hfsq - s * (hfsq + r));
    e * LN2_HI + (e * LN2_LO + ln_m)
}

/// `Σ (p + q) · ln((p + q) / 2)` over two probability rows of one length (the cross term of the
/// Jensen–Shannon divergence), in f64 with 8 partial sums. Entries must be positive (the JS
/// distributions carry +1e-8 before renormalising).
#[inline(always)]
fn js_cross_sum_body(p: &[f32], q: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let (pc, qc) = (p.chunks_exact(L), q.chunks_exact(L));
    let (pr, qr) = (pc.remainder(), qc.remainder());
    for (a, b) in pc.zip(qc) {
        for k in 0..L {
            let sum = a[k] as f64 + b[k] as f64;
            acc[k] += sum * ln_f64_pos(0.5 * sum);
        }
    }
    let mut total: f64 = acc.iter().sum();
    for (&a, &b) in pr.iter().zip(qr) {
        let sum = a as f64 + b as f64;
        total += sum * ln_f64_pos(0.5 * sum);
    }
    total
}

/// One Jensen–Shannon row in place: `x + eps`, renormalised to sum 1 (the sum in f64, 8 partial
/// sums; each entry divided in f64 and rounded once to f32). Returns `Σ v ln v` of the result
/// (f64). Entries must be finite and non-negative, and `eps` positive, so every result is
/// positive.
#[inline(always)]
fn js_normalize_body(row: &mut [f32], eps: f32) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x += eps;
            *a += *x as f64;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x += eps;
        sum += *x as f64;
    }
    let mut ent = [0f64; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for (e, x) in ent.iter_mut().zip(c.iter_mut()) {
            let v = (*x as f64 / sum) as f32;
            *x = v;
            *e += v as f64 * ln_f64_pos(v as f64);
        }
    }
    let mut total: f64 = ent.iter().sum();
    for x in chunks.into_remainder() {
        let v = (*x as f64 / sum) as f32;
        *x = v;
        total += v as f64 * ln_f64_pos(v as f64);
    }
    total
}

/// Compiles `$body` for AVX-512 and for the baseline and picks one at run time.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        dispatch!($(#[$doc])* $name, $avx, $body, ($($arg: $ty),*) -> ());
    };
    ($(#[$doc:meta])* $name:ident, $avx:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512dq,avx512vl,fma")]
        fn $avx($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }

        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

dispatch!(
    /// `out = silu(gate) ⊙ up` on bf16 slices of one length (math in f32, one rounding).
    silu_mul_bf16, silu_mul_bf16_avx512, silu_mul_bf16_body,
    (gate: &[bf16], up: &[bf16], out: &mut [bf16])
);
dispatch!(
    /// Softmax of the row `x` into `y`.
    softmax_row, softmax_row_avx512, softmax_row_body, (x: &[f32], y: &mut [f32]));
dispatch!(
    /// A Jensen–Shannon row `x + eps` renormalised in place; returns `Σ v ln v` (f64).
    js_normalize, js_normalize_avx512, js_normalize_body, (row: &mut [f32], eps: f32) -> f64);
dispatch!(
    /// `Σ (p + q) · ln((p + q) / 2)` over two positive probability rows (f64, 8 partial sums).
    js_cross_sum, js_cross_sum_avx512, js_cross_sum_body, (p: &[f32], q: &[f32]) -> f64);

#[cfg(test)]
#[inline(always)]
fn exp_slice_body(x: &[f32], y: &mut [f32]) {
    for (o, &a) in y.iter_mut().zip(x) {
        *o = exp_f32(a);
    }
}

#[cfg(test)]
dispatch!(
    /// `y = e^x` element by element, by [`exp_f32`].
    exp_slice, exp_slice_avx512, exp_slice_body, (x: &[f32], y: &mut [f32]));

/// Runs `f(first_row, rows)` over the rows (`w` elements each) of `dst`, one contiguous share
/// of rows per core (on the calling thread alone for small jobs).
///
/// The shares run on candle's own CPU pool (`candle_core::utils::barrier_pool`), the threads
/// every candle op runs on. Work handed to a second pool (rayon's) had to share the cores with
/// candle's workers, which spin for a while after each op before they park: on the 2-core
/// development machine, moving the bf16 products and these passes onto candle's pool made the
/// bf16-weights forward of the 0.5B shape 10–25 % faster (docs/src/performance.md). A share is
/// taken by whichever thread is free first, and a call from inside the pool's workers runs
/// inline. `f` must not run candle ops: the calling thread takes a share while it holds the
/// pool, and a candle op would wait for the pool it holds.
pub fn par_rows<T: Send>(dst: &mut [T], w: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = dst.len().checked_div(w).unwrap_or(0);
    let pool = candle_core::utils::barrier_pool();
    // below ~64k elements a thread costs more than it saves
    let threads = if dst.len() < 1 << 16 {
        1
    } else {
        (pool.n_workers() + 1).min(rows)
    };
    if threads <= 1 {
        f(0, dst);
        return;
    }
    let per = rows.div_ceil(threads);
    // each share behind its own (never contended) lock: the pool's closure is `Fn + Sync`
    let shares: Vec<std::sync::Mutex<(usize, &mut [T])>> = dst
        .chunks_mut(per * w)
        .enumerate()
        .map(|(c, d)| std::sync::Mutex::new((c * per, d)))
        .collect();
    pool.execute_chunked(shares.len(), |range| {
        for share in &shares[range] {
            let mut g = share.lock().unwrap_or_else(|e| e.into_inner());
            let (first, ref mut d) = *g;
            f(first, d);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_matches_f64_within_one_and_a_half_ulp() {
        let mut worst = 0f64;
        let mut xs = Vec::new();
        let mut x = -87.0f32;
        while x < 88.7 {
            xs.extend([x, x + 1e-3, x - 0.3467]);
            x += 0.0137;
        }
        // vectorized (many elements per call) and scalar
        let mut out = vec![0f32; xs.len()];
        exp_slice(&xs, &mut out);
        for (&v, &o) in xs.iter().zip(&out) {
            let want = (v as f64).exp();
            for got in [exp_f32(v), o] {
                worst = worst.max(ulps(got, want));
            }
        }
        assert!(worst <= 1.5, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        let mut out = [0f32; 7];
        let xs = [
            0.0f32,
            f32::NEG_INFINITY,
            -1e30,
            -104.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
        ];
        exp_slice(&xs, &mut out);
        for got in [out, xs.map(exp_f32)] {
            assert_eq!(got[..6], [1.0, 0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
            assert!(got[6].is_nan());
        }
        for x in [-88.0f32, -95.0, -100.0, -103.0] {
            let want = (x as f64).exp();
            let step = f32::from_bits(1) as f64;
            assert!(
                ((exp_f32(x) as f64) - want).abs() <= step * 2.0 + want * 1e-6,
                "{x}"
            );
        }
        let x = 88.72f32;
        assert!(exp_f32(x).is_finite());
        assert!(ulps(exp_f32(x), (x as f64).exp()) <= 1.5);
    }

    #[test]
    fn ln_matches_the_library_within_one_ulp() {
        let mut worst = (0f64, 0f64);
        let mut check = |x: f64| {
            let (got, want) = (ln_f64_pos(x), x.ln());
            let ulp = f64::from_bits(want.abs().to_bits() + 1) - want.abs();
            let err = if want == 0.0 {
                got.abs() / f64::MIN_POSITIVE
            } else {
                (got - want).abs() / ulp
            };
            if err > worst.0 {
                worst = (err, x);
            }
        };
        let mut x = 1e-300f64;
        while x < 1e300 {
            let r2 = std::f64::consts::SQRT_2;
            for f in [
                1.0,
                1.000_001,
                r2 * (1.0 - 1e-12),
                r2 * (1.0 + 1e-12),
                1.7,
                0.999_999,
            ] {
                check(x * f);
            }
            x *= 1.37;
        }
        for k in 1..2000 {
            check(1.0 + k as f64 * 1e-6);
            check(1.0 - k as f64 * 1e-6);
        }
        check(1.0);
        check(f64::MIN_POSITIVE);
        check(f64::MAX);
        assert!(worst.0 <= 1.0, "worst error {} ulp at {}", worst.0, worst.1);
        assert_eq!(ln_f64_pos(1.0), 0.0);
    }

    #[test]
    fn js_cross_sum_matches_the_scalar_sum() {
        for len in [1usize, 7, 8, 9, 1000, 2644] {
            let p: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 + 0.5) / 5000.0)
                .collect();
            let q: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 + 0.25) / 4000.0)
                .collect();
            let want: f64 = p
                .iter()
                .zip(&q)
                .map(|(&a, &b)| {
                    let s = a as f64 + b as f64;
                    s * (0.5 * s).ln()
                })
                .sum();
            let got = js_cross_sum(&p, &q);
            assert!(
                (got - want).abs() <= 1e-13 * want.abs(),
                "{len}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn js_normalize_matches_f64() {
        for len in [1usize, 5, 8, 9, 2644] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 29 % 31) as f32) / 700.0).collect();
            let mut y = x.clone();
            let ent = js_normalize(&mut y, 1e-8);
            let w: Vec<f64> = x.iter().map(|&v| (v + 1e-8f32) as f64).collect();
            let sum: f64 = w.iter().sum();
            let mut want_ent = 0.0;
            for (k, &v) in w.iter().enumerate() {
                let p = v / sum;
                assert!(
                    (y[k] as f64 - p).abs() <= 6e-8 * p,
                    "{len}/{k}: {} vs {p}",
                    y[k]
                );
                want_ent += p * p.ln();
            }
            assert!(
                (ent - want_ent).abs() <= 1e-6 * want_ent.abs().max(1e-12),
                "{len}: {ent} vs {want_ent}"
            );
            assert!(y.iter().all(|&v| v > 0.0));
        }
    }

    #[test]
    fn silu_mul_matches_f64() {
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0)
            .collect();
        let mut out = vec![0f32; n];
        silu_mul(&g, &u, &mut out);
        for i in 0..n {
            let (gd, ud) = (g[i] as f64, u[i] as f64);
            let want = gd / (1.0 + (-gd).exp()) * ud;
            assert!(
                (out[i] as f64 - want).abs() <= 4e-7 * want.abs() + 1e-30,
                "{i}: {} vs {want}",
                out[i]
            );
        }
        // silu of large negative gates goes to −0 without NaN
        let mut o = [1f32; 2];
        silu_mul(&[-200.0, -1e30], &[1.0, 1.0], &mut o);
        assert!(o.iter().all(|v| *v == 0.0), "{o:?}");
    }

    #[test]
    fn bf16_rounding_matches_half() {
        // every exponent, mantissa patterns around the rounding bit, signs, NaN and infinities
        let mut state = 0x9e37_79b9u32;
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
        ];
        for e in 0..256u32 {
            for low in [0u32, 0x7fff, 0x8000, 0x8001, 0x1_8000, 0xffff, 0x7f_ffff] {
                bits.push((e << 23) | low);
                bits.push(0x8000_0000 | (e << 23) | low);
            }
        }
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            bits.push(state);
        }
        for b in bits {
            let v = f32::from_bits(b);
            let want = bf16::from_f32(v).to_bits();
            let got = bf16_bits(v);
            if v.is_nan() {
                assert!(bf16::from_bits(got).is_nan(), "{b:#x}");
            } else {
                assert_eq!(got, want, "{b:#x}");
            }
        }
    }

    #[test]
    fn silu_mul_bf16_rounds_the_f64_product_once() {
        let n = 1000;
        let g: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32((i as f32 - 500.0) * 0.037))
            .collect();
        let u: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32(((i * 7919) % 201) as f32 / 50.0 - 2.0))
            .collect();
        let mut out = vec![bf16::ZERO; n];
        silu_mul_bf16(&g, &u, &mut out);
        for i in 0..n {
            let (gd, ud) = (g[i].to_f64(), u[i].to_f64());
            let want = gd / (1.0 + (-gd).exp()) * ud;
            // one bf16 rounding: half an ulp of 2^-8 relative, plus the f32 math
            assert!(
                (out[i].to_f64() - want).abs() <= want.abs() * (1.0 / 256.0) + 1e-30,
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn softmax_row_matches_f64() {
        for len in [1usize, 5, 16, 17, 100, 601] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 23) as f32 * 0.71 - 8.0)
                .collect();
            let mut y = vec![0f32; len];
            softmax_row(&x, &mut y);
            let max = x
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
            let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (k, &v) in x.iter().enumerate() {
                let want = (v as f64 - max).exp() / z;
                assert!((y[k] as f64 - want).abs() <= 1e-6 * want, "{len}/{k}");
            }
        }
        // masked keys (−1e30) get exactly 0
        let mut y = [1f32; 3];
        softmax_row(&[0.5, -1e30, 1.5], &mut y);
        assert_eq!(y[1], 0.0);
        assert!((y[0] + y[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn par_rows_covers_every_row_once() {
        let (w, rows) = (7, 20_000);
        let mut dst = vec![0u32; rows * w];
        par_rows(&mut dst, w, |first, d| {
            for (r, row) in d.chunks_mut(w).enumerate() {
                row.iter_mut().for_each(|v| *v += (first + r) as u32 + 1);
            }
        });
        for (r, row) in dst.chunks(w).enumerate() {
            assert!(row.iter().all(|&v| v == r as u32 + 1), "row {r}");
        }
    }
}
