//! RBF kernel evaluation: a branch-free, auto-vectorisable `exp` and the two hot loops built on
//! it (one row of the training kernel matrix, and the decision sum over support vectors).
//!
//! Every loop body is written once as an `#[inline(always)]` generic function and instantiated
//! twice: a portable build, and (on x86-64 CPUs that have them, detected at run time) an AVX2+FMA
//! build. The two agree to within a few ulps; on a given machine results are deterministic.

/// Columns processed per block when computing squared distances for multi-feature data (the
/// block's scratch lives on the stack and stays in L1).
const BLOCK: usize = 256;

/// `exp(x)` for `x <= 0` (any finite or infinite non-positive input), accurate to about 1 ulp in
/// the normal range; returns 0 below -708 (where `exp` leaves the normal range).
///
/// Range reduction `x = k ln 2 + r`, `|r| <= ln(2)/2`, then a degree-13 Taylor polynomial for
/// `exp(r)` (truncation error < 5e-18) and `2^k` assembled in the exponent bits. No branches or
/// table look-ups, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_nonpos<const FMA: bool>(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split into a part with trailing zero bits (so `k * LN2_HI` is exact) and the rest.
    // (0.693147180369123816490 and 1.90821492927058770002e-10, bit-exact.)
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    // Adding 1.5 * 2^52 rounds to the nearest integer and leaves it in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // 1/n! for n = 13 down to 0.
    const C: [f64; 14] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    #[inline(always)]
    fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
        if FMA { a.mul_add(b, c) } else { a * b + c }
    }
    let xc = if x < -708.0 { -708.0 } else { x };
    let t = madd::<FMA>(xc, LOG2E, SHIFT);
    let kf = t - SHIFT;
    let r = madd::<FMA>(-kf, LN2_HI, xc);
    let r = madd::<FMA>(-kf, LN2_LO, r);
    let mut p = C[0];
    for &c in &C[1..] {
        p = madd::<FMA>(p, r, c);
    }
    // k is in [-1022, 0] here, so k + 1023 is a valid biased exponent.
    let k = (t.to_bits() as i64).wrapping_sub(SHIFT.to_bits() as i64);
    let scale = f64::from_bits((k + 1023).wrapping_shl(52) as u64);
    let v = p * scale;
    if x < -708.0 { 0.0 } else { v }
}

#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Training points stored feature-major (one contiguous column per feature) so that a kernel
/// row vectorises across samples. The sample order is the solver's (permuted) order.
pub(crate) struct KernelData {
    gamma: f64,
    /// f32 as given (half the memory traffic of f64); differences are taken in f64.
    cols: Vec<Vec<f32>>,
}

impl KernelData {
    /// `x` row-major `n x d` (already validated).
    pub(crate) fn new(x: &[f32], d: usize, order: &[usize], gamma: f64) -> KernelData {
        let cols = (0..d)
            .map(|f| order.iter().map(|&s| x[s * d + f]).collect())
            .collect();
        KernelData { gamma, cols }
    }

    pub(crate) fn swap(&mut self, i: usize, j: usize) {
        for c in &mut self.cols {
            c.swap(i, j);
        }
    }

    /// `out[k] = K(x_i, x_{start + k})` rounded to f32.
    pub(crate) fn row(&self, i: usize, start: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { row_avx2(self, i, start, out) };
            return;
        }
        row_impl::<false>(self, i, start, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(k: &KernelData, i: usize, start: usize, out: &mut [f32]) {
    row_impl::<true>(k, i, start, out)
}

#[inline(always)]
fn row_impl<const FMA: bool>(k: &KernelData, i: usize, start: usize, out: &mut [f32]) {
    let ng = -k.gamma;
    let end = start + out.len();
    if k.cols.len() == 1 {
        let col = &k.cols[0][start..end];
        let xi = f64::from(k.cols[0][i]);
        for (o, &v) in out.iter_mut().zip(col) {
            let d = f64::from(v) - xi;
            *o = exp_nonpos::<FMA>(ng * (d * d)) as f32;
        }
        return;
    }
    let mut d2 = [0.0f64; BLOCK];
    for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
        let lo = start + b * BLOCK;
        let n = chunk.len();
        let d2 = &mut d2[..n];
        d2.fill(0.0);
        for col in &k.cols {
            let xi = f64::from(col[i]);
            for (s, &v) in d2.iter_mut().zip(&col[lo..lo + n]) {
                let d = f64::from(v) - xi;
                *s += d * d;
            }
        }
        for (o, &s) in chunk.iter_mut().zip(d2.iter()) {
            *o = exp_nonpos::<FMA>(ng * s) as f32;
        }
    }
}

/// Support vectors of a fitted model, feature-major, with their dual coefficients.
#[derive(Clone, Debug)]
pub(crate) struct SupportSet {
    pub(crate) gamma: f64,
    pub(crate) cols: Vec<Vec<f32>>,
    pub(crate) coef: Vec<f64>,
}

impl SupportSet {
    /// `sum_s coef_s * K(sv_s, q)` for one query point `q` (length d), in f64.
    pub(crate) fn weighted_sum(&self, q: &[f64]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { sum_avx2(self, q) };
        }
        sum_impl::<false>(self, q)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(s: &SupportSet, q: &[f64]) -> f64 {
    sum_impl::<true>(s, q)
}

#[inline(always)]
fn sum_impl<const FMA: bool>(s: &SupportSet, q: &[f64]) -> f64 {
    let ng = -s.gamma;
    let n = s.coef.len();
    // Eight independent partial sums so the reduction vectorises (fixed order: deterministic).
    let mut acc = [0.0f64; 8];
    let mut d2 = [0.0f64; BLOCK];
    let mut lo = 0;
    while lo < n {
        let m = BLOCK.min(n - lo);
        let d2 = &mut d2[..m];
        d2.fill(0.0);
        for (col, &qf) in s.cols.iter().zip(q) {
            for (t, &v) in d2.iter_mut().zip(&col[lo..lo + m]) {
                let d = f64::from(v) - qf;
                *t += d * d;
            }
        }
        let coef = &s.coef[lo..lo + m];
        let mut cs = coef.chunks_exact(8);
        let mut ds = d2.chunks_exact(8);
        for (c8, t8) in (&mut cs).zip(&mut ds) {
            for k in 0..8 {
                acc[k] += c8[k] * exp_nonpos::<FMA>(ng * t8[k]);
            }
        }
        for (k, (&c, &t)) in cs.remainder().iter().zip(ds.remainder()).enumerate() {
            acc[k] += c * exp_nonpos::<FMA>(ng * t);
        }
        lo += m;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<const FMA: bool>() {
        let mut worst = 0.0f64;
        let mut x = 0.0f64;
        while x > -700.0 {
            let want = x.exp();
            let got = exp_nonpos::<FMA>(x);
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_731_3 * (1.0 + x.abs());
        }
        assert!(worst < 1e-15, "relative error {worst}");
        assert_eq!(exp_nonpos::<FMA>(0.0), 1.0);
        assert_eq!(exp_nonpos::<FMA>(-0.0), 1.0);
        assert_eq!(exp_nonpos::<FMA>(-710.0), 0.0);
        assert_eq!(exp_nonpos::<FMA>(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn exp_matches_std() {
        check::<false>();
        check::<true>();
    }

    #[test]
    fn rows_match_direct_formula() {
        let d = 3;
        let n = 600;
        let x: Vec<f32> = (0..n * d).map(|k| ((k * 37 % 101) as f32) / 50.0).collect();
        let order: Vec<usize> = (0..n).collect();
        let kd = KernelData::new(&x, d, &order, 0.4);
        let mut out = vec![0.0f32; n - 5];
        kd.row(7, 5, &mut out);
        for (k, &o) in out.iter().enumerate() {
            let j = k + 5;
            let s: f64 = (0..d)
                .map(|f| {
                    let a = f64::from(x[7 * d + f]) - f64::from(x[j * d + f]);
                    a * a
                })
                .sum();
            assert!((f64::from(o) - (-0.4 * s).exp()).abs() <= 1e-7);
        }
    }

    #[test]
    fn portable_and_fma_builds_agree() {
        for d in [1usize, 4] {
            let n = 700;
            let x: Vec<f32> = (0..n * d).map(|k| ((k * 53 % 97) as f32) / 30.0).collect();
            let order: Vec<usize> = (0..n).collect();
            let kd = KernelData::new(&x, d, &order, 0.3);
            let (mut a, mut b) = (vec![0.0f32; n - 3], vec![0.0f32; n - 3]);
            row_impl::<false>(&kd, 11, 3, &mut a);
            row_impl::<true>(&kd, 11, 3, &mut b);
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-7);
            }
            let sv = SupportSet {
                gamma: 0.3,
                cols: kd.cols.clone(),
                coef: (0..n).map(|k| (k % 7) as f64 - 3.0).collect(),
            };
            let q: Vec<f64> = (0..d).map(|f| 0.5 + f as f64).collect();
            let (u, v) = (sum_impl::<false>(&sv, &q), sum_impl::<true>(&sv, &q));
            let want: f64 = (0..n)
                .map(|k| {
                    let d2: f64 = (0..d)
                        .map(|f| (f64::from(x[k * d + f]) - q[f]).powi(2))
                        .sum();
                    sv.coef[k] * (-0.3 * d2).exp()
                })
                .sum();
            assert!(
                (u - want).abs() <= 1e-10 && (v - want).abs() <= 1e-10,
                "{u} {v} {want}"
            );
        }
    }
}
