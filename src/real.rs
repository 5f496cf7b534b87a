//! The scalar trait: `snf` is generic over `f32` and `f64`.

use core::fmt::{Debug, Display};

/// A real floating-point scalar usable by every layer: `f32` or `f64`.
///
/// It joins faer's [`RealField`](faer::traits::RealField) (so faer's GEMM and LU
/// accept it) with [`num_traits::Float`] (for `ln`, `exp`, `sqrt`, ...).
pub trait Real: faer::traits::RealField + num_traits::Float + Copy + Send + Sync + Debug + Display + Default + 'static {
    /// Round an `f64` to this type.
    fn from_f64(x: f64) -> Self;
    /// Widen to `f64` (exact for both `f32` and `f64`).
    fn as_f64(self) -> f64;
    /// Unit roundoff (half the machine epsilon) of this type.
    fn unit_roundoff() -> f64 {
        <Self as num_traits::Float>::epsilon().as_f64() / 2.0
    }
}

impl Real for f32 {
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
}

/// $e^x$ in the precision of `F`, written so that loops over it vectorise: for `f32` a
/// branch-free range reduction $x = n\ln2 + r$, $|r|\le\frac12\ln 2$, and a degree-7
/// polynomial for $e^r$ (Cephes' `expf` coefficients), relative error below 2 ulp
/// (tested); inputs are clamped to $[-87.3, 88.7]$, so results below $2^{-126}$ come
/// out as about $10^{-38}$ instead of subnormals or 0 and large inputs saturate at
/// $\approx 3.4\cdot10^{38}$. NaN propagates. For `f64`, the standard library's `exp`.
#[inline(always)]
pub(crate) fn exp_fast<F: Real>(x: F) -> F {
    if core::mem::size_of::<F>() == 4 {
        F::from_f64(expf_poly(x.as_f64() as f32) as f64)
    } else {
        num_traits::Float::exp(x)
    }
}

/// $\ln x$ for positive normal `x`, vectorisable: for `f32` the exponent and a mantissa
/// in $[\sqrt{1/2}, \sqrt2)$, then Cephes' `logf` polynomial, relative error below 2 ulp
/// away from $x = 1$ and absolute error below $10^{-7}$ near it (tested). Outside the
/// positive normal range the `f32` result is meaningless: callers guarantee the domain.
/// For `f64`, the standard library's `ln`.
#[inline(always)]
pub(crate) fn ln_fast<F: Real>(x: F) -> F {
    if core::mem::size_of::<F>() == 4 {
        F::from_f64(lnf_poly(x.as_f64() as f32) as f64)
    } else {
        num_traits::Float::ln(x)
    }
}

// Plain multiply-adds, not `mul_add`: without a target feature enabling FMA, `mul_add`
// is a call into libm's exact software emulation.
#[inline(always)]
fn expf_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // round to nearest by the 1.5 * 2^23 trick (`round` is a libm call without SSE4.1)
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = (p * r) * r + r + 1.0;
    // 2^n by building exponent fields; n is in [-126, 128] after the clamp, split as
    // 2^h 2^(n-h) with h = n/2 so that both factors are normal numbers
    // the integer n sits in the low mantissa bits of `shifted` (1.5 * 2^23 + n): read it
    // from the bits instead of a float-to-int cast, whose saturating semantics block
    // vectorisation
    let n = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let h = n >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - h + 127) as u32) << 23);
    e * s1 * s2
}

#[inline(always)]
fn lnf_poly(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    // x = m 2^e with m in [0.5, 1)
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    // move m into [sqrt(1/2), sqrt(2)) and r = m - 1
    let small = m < SQRT_HALF;
    let e = (e - small as i32) as f32;
    let r = if small { m + m - 1.0 } else { m - 1.0 };
    let z = r * r;
    let p = 7.037_683_6e-2_f32;
    let p = p * r + -1.151_461e-1;
    let p = p * r + 1.167_699_9e-1;
    let p = p * r + -1.242_014_1e-1;
    let p = p * r + 1.424_932_3e-1;
    let p = p * r + -1.666_805_8e-1;
    let p = p * r + 2.000_071_5e-1;
    let p = p * r + -2.499_999_4e-1;
    let p = p * r + 0.333_333_3;
    let y = r * z * p;
    let y = e * -2.121_944_4e-4 + y;
    let y = z * -0.5 + y;
    (r + y) + e * 0.693_359_4
}

#[cfg(test)]
mod tests {
    use super::{exp_fast, ln_fast};

    fn ulps(a: f32, b: f64) -> f64 {
        ((a as f64 - b) / b).abs() / f32::EPSILON as f64
    }

    /// A dense sweep against f64 references: the bound (2 ulp) is what Cephes documents
    /// for these polynomials; a wrong coefficient or a broken reduction gives thousands.
    #[test]
    fn fast_f32_exp_and_ln_are_within_two_ulp() {
        let mut worst = (0.0f64, 0.0f64);
        let mut x = -87.0f64;
        while x < 88.0 {
            let u = ulps(exp_fast(x as f32), (x as f32 as f64).exp());
            worst.0 = worst.0.max(u);
            x += 0.000_37;
        }
        let mut y = 1e-30f64;
        while y < 1e30 {
            let v = y as f32;
            let r = (v as f64).ln();
            let got = ln_fast(v) as f64;
            // near x = 1 the result is tiny: hold it to an absolute bound instead
            let err = if r.abs() < 0.5 { (got - r).abs() / 1.2e-7 } else { ulps(got as f32, r) };
            worst.1 = worst.1.max(err);
            y *= 1.000_13;
        }
        assert!(worst.0 <= 2.0, "exp: {} ulp", worst.0);
        assert!(worst.1 <= 2.0, "ln: {} ulp", worst.1);
        // the clamps and NaN
        assert!(exp_fast(-200.0f32) > 0.0 && exp_fast(-200.0f32) < 1e-37);
        assert!(exp_fast(100.0f32).is_finite() && exp_fast(100.0f32) > 3e38);
        assert!(exp_fast(f32::NAN).is_nan());
        // f64 is the standard library
        assert_eq!(exp_fast(0.3f64), 0.3f64.exp());
        assert_eq!(ln_fast(0.3f64), 0.3f64.ln());
    }
}
