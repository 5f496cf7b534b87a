//! The `f32` spline kernels written with AVX2 intrinsics, eight entries per vector: the
//! compiler's vectoriser judges the per-lane bin selection (a chain of compares and
//! blends) unprofitable and leaves the generic kernels scalar. Every operation is the one
//! the generic kernel does on each lane, in the same order and without fused
//! multiply-adds, so the results are bit for bit those of
//! [`kernel::forward`](super::kernel::forward) and [`kernel::backward`](super::kernel::backward)
//! (tested below); entries past the last multiple of eight go through those.

use core::arch::x86_64::*;

use super::kernel::{self, field, Geometry, Partials, BLOCK};

// The helpers carry the kernels' target features, so that the intrinsics inline into them
// and they into the kernels (`#[inline(always)]` cannot be combined with those).

/// Eight entries of a geometry row from `i` (`i + 8 <= BLOCK`: the callers' loop bound).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load(s: &[f32; BLOCK], i: usize) -> __m256 {
    _mm256_loadu_ps(s[i..i + 8].as_ptr())
}

/// $\ln r$ for positive normal `r`, lane by lane the operations of the scalar `f32`
/// polynomial ([`ln_fast`](crate::real::ln_fast)).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn ln(x: __m256) -> __m256 {
    let bits = _mm256_castps_si256(x);
    let e = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)), _mm256_set1_epi32(126));
    let m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x3f00_0000)));
    let small = _mm256_cmp_ps::<_CMP_LT_OQ>(m, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    // e - (small as i32), then to f32: the mask is -1 where small
    let e = _mm256_cvtepi32_ps(_mm256_add_epi32(e, _mm256_castps_si256(small)));
    let one = _mm256_set1_ps(1.0);
    let r = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), small);
    let z = _mm256_mul_ps(r, r);
    let c = |p: __m256, k: f32| _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(k));
    let p = _mm256_set1_ps(7.037_683_6e-2);
    let p = c(p, -1.151_461e-1);
    let p = c(p, 1.167_699_9e-1);
    let p = c(p, -1.242_014_1e-1);
    let p = c(p, 1.424_932_3e-1);
    let p = c(p, -1.666_805_8e-1);
    let p = c(p, 2.000_071_5e-1);
    let p = c(p, -2.499_999_4e-1);
    let p = c(p, 0.333_333_3);
    let y = _mm256_mul_ps(_mm256_mul_ps(r, z), p);
    let y = _mm256_add_ps(_mm256_mul_ps(e, _mm256_set1_ps(-2.121_944_4e-4)), y);
    let y = _mm256_add_ps(_mm256_mul_ps(z, _mm256_set1_ps(-0.5)), y);
    _mm256_add_ps(_mm256_add_ps(r, y), _mm256_mul_ps(e, _mm256_set1_ps(0.693_359_4)))
}

/// The bin constants of eight lanes (`fields`) and the comparisons $v \ge x_b$ per bin.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn select<const KP: usize, const NF: usize>(g: &Geometry<f32, KP>, i: usize, v: __m256, fields: [usize; NF]) -> ([__m256; NF], [__m256; KP]) {
    let mut out = [_mm256_setzero_ps(); NF];
    for (o, &f) in out.iter_mut().zip(&fields) {
        *o = load(&g[f][0], i);
    }
    let mut c = [_mm256_castsi256_ps(_mm256_set1_epi32(-1)); KP];
    for b in 1..KP {
        c[b] = _mm256_cmp_ps::<_CMP_GE_OQ>(v, load(&g[field::XK][b], i));
        for (o, &f) in out.iter_mut().zip(&fields) {
            *o = _mm256_blendv_ps(*o, load(&g[f][b], i), c[b]);
        }
    }
    (out, c)
}

/// Eight lanes of the forward pass from entry `i`: the output and the log-slope (0 outside
/// the bound).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn forward8<const KP: usize>(g: &Geometry<f32, KP>, i: usize, v: __m256, lo: __m256, hi: __m256) -> (__m256, __m256) {
    use field::*;
    let (one, two, zero) = (_mm256_set1_ps(1.0), _mm256_set1_ps(2.0), _mm256_setzero_ps());
    let ([xk, inv_dx, yk, dy, a, cs, s, tls], _) = select::<KP, 8>(g, i, v, [XK, INV_DX, YK, DY, A, C, S, TWO_LOG_S]);
    let xi = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(v, xk), inv_dx), zero), one);
    let om = _mm256_sub_ps(one, xi);
    let q = _mm256_mul_ps(xi, om);
    let w = _mm256_sub_ps(_mm256_add_ps(a, cs), _mm256_mul_ps(two, s));
    let den = _mm256_add_ps(s, _mm256_mul_ps(w, q));
    // (s xi) xi and (c xi) xi, as the scalar kernel associates them
    let num = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(s, xi), xi), _mm256_mul_ps(a, q));
    let id = _mm256_div_ps(one, den);
    let m = _mm256_add_ps(
        _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(cs, xi), xi), _mm256_mul_ps(_mm256_mul_ps(two, s), q)),
        _mm256_mul_ps(_mm256_mul_ps(a, om), om),
    );
    let r = _mm256_max_ps(_mm256_mul_ps(_mm256_mul_ps(m, id), id), _mm256_set1_ps(f32::MIN_POSITIVE));
    let inside = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, lo), _mm256_cmp_ps::<_CMP_LT_OQ>(v, hi));
    let zv = _mm256_add_ps(yk, _mm256_mul_ps(_mm256_mul_ps(dy, num), id));
    (_mm256_blendv_ps(v, zv, inside), _mm256_and_ps(_mm256_add_ps(tls, ln(r)), inside))
}

/// [`kernel::forward`] for `f32` on AVX2, two groups of eight lanes per iteration (their
/// dependency chains, a division and the logarithm's polynomial, then overlap).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward<const KP: usize>(g: &Geometry<f32, KP>, bound: f32, x: &[f32], z: &mut [f32], ld: &mut [f32; BLOCK]) -> f64 {
    let n = x.len().min(z.len()).min(BLOCK);
    let (lo, hi) = (_mm256_set1_ps(-bound), _mm256_set1_ps(bound));
    let mut i = 0;
    while i + 16 <= n {
        let (va, vb) = (_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(x.as_ptr().add(i + 8)));
        let (za, la) = forward8(g, i, va, lo, hi);
        let (zb, lb) = forward8(g, i + 8, vb, lo, hi);
        _mm256_storeu_ps(z.as_mut_ptr().add(i), za);
        _mm256_storeu_ps(z.as_mut_ptr().add(i + 8), zb);
        _mm256_storeu_ps(ld.as_mut_ptr().add(i), la);
        _mm256_storeu_ps(ld.as_mut_ptr().add(i + 8), lb);
        i += 16;
    }
    if i + 8 <= n {
        let (za, la) = forward8(g, i, _mm256_loadu_ps(x.as_ptr().add(i)), lo, hi);
        _mm256_storeu_ps(z.as_mut_ptr().add(i), za);
        _mm256_storeu_ps(ld.as_mut_ptr().add(i), la);
        i += 8;
    }
    kernel::forward_from(i, g, bound, x, z, ld);
    kernel::sum_lanes(&ld[..n])
}

/// [`kernel::backward`] for `f32` on AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward<const KP: usize>(g: &Geometry<f32, KP>, bound: f32, x: &[f32], gz: &[f32], dx: &mut [f32], acc: &mut Partials<f32, KP>) {
    use field::*;
    let n = x.len().min(gz.len()).min(dx.len()).min(BLOCK);
    let (one, two, zero) = (_mm256_set1_ps(1.0), _mm256_set1_ps(2.0), _mm256_setzero_ps());
    let (lo, hi) = (_mm256_set1_ps(-bound), _mm256_set1_ps(bound));
    let (add, sub, mul) = (|a, b| _mm256_add_ps(a, b), |a, b| _mm256_sub_ps(a, b), |a, b| _mm256_mul_ps(a, b));
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        let gl = _mm256_loadu_ps(gz.as_ptr().add(i));
        let ([xk, inv_dx, dyv, a, c, s, tis], cmp) = select::<KP, 7>(g, i, v, [XK, INV_DX, DY, A, C, S, TWO_INV_S]);
        let xi = _mm256_min_ps(_mm256_max_ps(mul(sub(v, xk), inv_dx), zero), one);
        let om = sub(one, xi);
        let q = mul(xi, om);
        let w = sub(add(a, c), mul(two, s));
        let den = add(s, mul(w, q));
        let xi2 = mul(xi, xi);
        // (s xi) xi and (c xi) xi, as the scalar kernel associates them
        let num = add(mul(mul(s, xi), xi), mul(a, q));
        let m = add(add(mul(mul(c, xi), xi), mul(mul(two, s), q)), mul(mul(a, om), om));
        let (id, im) = (_mm256_div_ps(one, den), _mm256_div_ps(one, m));
        let id2 = mul(id, id);
        let dq = sub(one, mul(two, xi));
        let num_xi = add(mul(mul(two, s), xi), mul(a, dq));
        let den_xi = mul(w, dq);
        let one_m2q = sub(one, mul(two, q));
        let u = mul(num, id);
        let u_xi = mul(sub(mul(num_xi, den), mul(num, den_xi)), id2);
        let u_s = mul(sub(mul(xi2, den), mul(num, one_m2q)), id2);
        let u_a = mul(mul(q, sub(den, num)), id2);
        let u_c = mul(mul(_mm256_xor_ps(num, _mm256_set1_ps(-0.0)), q), id2);
        let m_xi = mul(two, sub(add(mul(c, xi), mul(s, dq)), mul(a, om)));
        let two_q_id = mul(mul(two, q), id);
        let l_xi = sub(mul(m_xi, im), mul(mul(two, den_xi), id));
        let l_s = sub(add(tis, mul(mul(two, q), im)), mul(mul(two, one_m2q), id));
        let l_a = sub(mul(mul(om, om), im), two_q_id);
        let l_c = sub(mul(xi2, im), two_q_id);
        let gdy = mul(gl, dyv);
        let g_xi = add(mul(gdy, u_xi), l_xi);
        let g_s = add(mul(gdy, u_s), l_s);
        let inside = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, lo), _mm256_cmp_ps::<_CMP_LT_OQ>(v, hi));
        let neg = |t| _mm256_xor_ps(t, _mm256_set1_ps(-0.0));
        let p = [
            mul(neg(g_xi), inv_dx),
            mul(neg(add(mul(g_xi, xi), mul(g_s, s))), inv_dx),
            gl,
            add(mul(gl, u), mul(g_s, inv_dx)),
            add(mul(gdy, u_a), l_a),
            add(mul(gdy, u_c), l_c),
        ];
        _mm256_storeu_ps(dx.as_mut_ptr().add(i), _mm256_blendv_ps(gl, mul(g_xi, inv_dx), inside));
        for b in 0..KP {
            // the lane's bin is the last b with x >= x_b
            let next = if b + 1 < KP { cmp[b + 1] } else { zero };
            let here = _mm256_andnot_ps(next, _mm256_and_ps(inside, cmp[b]));
            // most vectors of eight entries fall into two or three of the bins
            if _mm256_movemask_ps(here) == 0 {
                continue;
            }
            for (ap, &pv) in acc.iter_mut().zip(&p) {
                let dst = ap[b].as_mut_ptr().add(i);
                _mm256_storeu_ps(dst, add(_mm256_loadu_ps(dst), _mm256_and_ps(here, pv)));
            }
        }
        i += 8;
    }
    kernel::backward(i, g, bound, x, gz, dx, acc);
}
