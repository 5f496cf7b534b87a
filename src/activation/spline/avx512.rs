//! The `f32` spline kernels with AVX-512F intrinsics, sixteen entries per vector: the
//! [`avx2`](super::avx2) kernels' operations, lane by lane in the same order (no fused
//! multiply-add), with mask registers for the compares. Results are bit for bit those of
//! the generic kernels (tested in `mod.rs`); entries past the last multiple of sixteen go
//! through those. On a CPU that splits 512-bit operations in two (AMD Zen 4) the gain is
//! not throughput but the latency of the division and the logarithm's polynomial, spread
//! over twice the entries.

use core::arch::x86_64::*;

use super::kernel::{self, field, Geometry, Partials, BLOCK};

/// Sixteen entries of a geometry row from `i` (`i + 16 <= BLOCK`: the callers' loop bound).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load(s: &[f32; BLOCK], i: usize) -> __m512 {
    _mm512_loadu_ps(s[i..i + 16].as_ptr())
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn neg(t: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(t), _mm512_set1_epi32(i32::MIN)))
}

/// $\ln r$ for positive normal `r` (the scalar `f32` polynomial's operations).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn ln(x: __m512) -> __m512 {
    let bits = _mm512_castps_si512(x);
    let e = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(0xff)), _mm512_set1_epi32(126));
    let m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x3f00_0000)));
    let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    // e - (small as i32), then to f32
    let e = _mm512_cvtepi32_ps(_mm512_mask_sub_epi32(e, small, e, _mm512_set1_epi32(1)));
    let one = _mm512_set1_ps(1.0);
    let r = _mm512_mask_blend_ps(small, _mm512_sub_ps(m, one), _mm512_sub_ps(_mm512_add_ps(m, m), one));
    let z = _mm512_mul_ps(r, r);
    let c = |p: __m512, k: f32| _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(k));
    let p = _mm512_set1_ps(7.037_683_6e-2);
    let p = c(p, -1.151_461e-1);
    let p = c(p, 1.167_699_9e-1);
    let p = c(p, -1.242_014_1e-1);
    let p = c(p, 1.424_932_3e-1);
    let p = c(p, -1.666_805_8e-1);
    let p = c(p, 2.000_071_5e-1);
    let p = c(p, -2.499_999_4e-1);
    let p = c(p, 0.333_333_3);
    let y = _mm512_mul_ps(_mm512_mul_ps(r, z), p);
    let y = _mm512_add_ps(_mm512_mul_ps(e, _mm512_set1_ps(-2.121_944_4e-4)), y);
    let y = _mm512_add_ps(_mm512_mul_ps(z, _mm512_set1_ps(-0.5)), y);
    _mm512_add_ps(_mm512_add_ps(r, y), _mm512_mul_ps(e, _mm512_set1_ps(0.693_359_4)))
}

/// The bin constants of sixteen lanes (`fields`) and the comparisons $v \ge x_b$ per bin.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn select<const KP: usize, const NF: usize>(g: &Geometry<f32, KP>, i: usize, v: __m512, fields: [usize; NF]) -> ([__m512; NF], [__mmask16; KP]) {
    let mut out = [_mm512_setzero_ps(); NF];
    for (o, &f) in out.iter_mut().zip(&fields) {
        *o = load(&g[f][0], i);
    }
    let mut c: [__mmask16; KP] = [0xffff; KP];
    for b in 1..KP {
        c[b] = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, load(&g[field::XK][b], i));
        for (o, &f) in out.iter_mut().zip(&fields) {
            *o = _mm512_mask_blend_ps(c[b], *o, load(&g[f][b], i));
        }
    }
    (out, c)
}

/// [`kernel::forward`] for `f32` on AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward<const KP: usize>(g: &Geometry<f32, KP>, bound: f32, x: &[f32], z: &mut [f32], ld: &mut [f32; BLOCK]) -> f64 {
    use field::*;
    let n = x.len().min(z.len()).min(BLOCK);
    let (one, two, zero) = (_mm512_set1_ps(1.0), _mm512_set1_ps(2.0), _mm512_setzero_ps());
    let (lo, hi) = (_mm512_set1_ps(-bound), _mm512_set1_ps(bound));
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        let ([xk, inv_dx, yk, dy, a, cs, s, tls], _) = select::<KP, 8>(g, i, v, [XK, INV_DX, YK, DY, A, C, S, TWO_LOG_S]);
        let xi = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(v, xk), inv_dx), zero), one);
        let om = _mm512_sub_ps(one, xi);
        let q = _mm512_mul_ps(xi, om);
        let w = _mm512_sub_ps(_mm512_add_ps(a, cs), _mm512_mul_ps(two, s));
        let den = _mm512_add_ps(s, _mm512_mul_ps(w, q));
        let num = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(s, xi), xi), _mm512_mul_ps(a, q));
        let id = _mm512_div_ps(one, den);
        let m = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(cs, xi), xi), _mm512_mul_ps(_mm512_mul_ps(two, s), q)),
            _mm512_mul_ps(_mm512_mul_ps(a, om), om),
        );
        let r = _mm512_max_ps(_mm512_mul_ps(_mm512_mul_ps(m, id), id), _mm512_set1_ps(f32::MIN_POSITIVE));
        let inside = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, lo) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hi);
        let zv = _mm512_add_ps(yk, _mm512_mul_ps(_mm512_mul_ps(dy, num), id));
        _mm512_storeu_ps(z.as_mut_ptr().add(i), _mm512_mask_blend_ps(inside, v, zv));
        _mm512_storeu_ps(ld.as_mut_ptr().add(i), _mm512_maskz_mov_ps(inside, _mm512_add_ps(tls, ln(r))));
        i += 16;
    }
    kernel::forward_from(i, g, bound, x, z, ld);
    kernel::sum_lanes(&ld[..n])
}

/// [`kernel::backward`] for `f32` on AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn backward<const KP: usize>(g: &Geometry<f32, KP>, bound: f32, x: &[f32], gz: &[f32], dx: &mut [f32], acc: &mut Partials<f32, KP>) {
    use field::*;
    let n = x.len().min(gz.len()).min(dx.len()).min(BLOCK);
    let (one, two, zero) = (_mm512_set1_ps(1.0), _mm512_set1_ps(2.0), _mm512_setzero_ps());
    let (lo, hi) = (_mm512_set1_ps(-bound), _mm512_set1_ps(bound));
    let (add, sub, mul) = (|a, b| _mm512_add_ps(a, b), |a, b| _mm512_sub_ps(a, b), |a, b| _mm512_mul_ps(a, b));
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        let gl = _mm512_loadu_ps(gz.as_ptr().add(i));
        let ([xk, inv_dx, dyv, a, c, s, tis], cmp) = select::<KP, 7>(g, i, v, [XK, INV_DX, DY, A, C, S, TWO_INV_S]);
        let xi = _mm512_min_ps(_mm512_max_ps(mul(sub(v, xk), inv_dx), zero), one);
        let om = sub(one, xi);
        let q = mul(xi, om);
        let w = sub(add(a, c), mul(two, s));
        let den = add(s, mul(w, q));
        let xi2 = mul(xi, xi);
        let num = add(mul(mul(s, xi), xi), mul(a, q));
        let m = add(add(mul(mul(c, xi), xi), mul(mul(two, s), q)), mul(mul(a, om), om));
        let (id, im) = (_mm512_div_ps(one, den), _mm512_div_ps(one, m));
        let id2 = mul(id, id);
        let dq = sub(one, mul(two, xi));
        let num_xi = add(mul(mul(two, s), xi), mul(a, dq));
        let den_xi = mul(w, dq);
        let one_m2q = sub(one, mul(two, q));
        let u = mul(num, id);
        let u_xi = mul(sub(mul(num_xi, den), mul(num, den_xi)), id2);
        let u_s = mul(sub(mul(xi2, den), mul(num, one_m2q)), id2);
        let u_a = mul(mul(q, sub(den, num)), id2);
        let u_c = mul(mul(neg(num), q), id2);
        let m_xi = mul(two, sub(add(mul(c, xi), mul(s, dq)), mul(a, om)));
        let two_q_id = mul(mul(two, q), id);
        let l_xi = sub(mul(m_xi, im), mul(mul(two, den_xi), id));
        let l_s = sub(add(tis, mul(mul(two, q), im)), mul(mul(two, one_m2q), id));
        let l_a = sub(mul(mul(om, om), im), two_q_id);
        let l_c = sub(mul(xi2, im), two_q_id);
        let gdy = mul(gl, dyv);
        let g_xi = add(mul(gdy, u_xi), l_xi);
        let g_s = add(mul(gdy, u_s), l_s);
        let inside = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, lo) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hi);
        let p = [
            mul(neg(g_xi), inv_dx),
            mul(neg(add(mul(g_xi, xi), mul(g_s, s))), inv_dx),
            gl,
            add(mul(gl, u), mul(g_s, inv_dx)),
            add(mul(gdy, u_a), l_a),
            add(mul(gdy, u_c), l_c),
        ];
        _mm512_storeu_ps(dx.as_mut_ptr().add(i), _mm512_mask_blend_ps(inside, gl, mul(g_xi, inv_dx)));
        for b in 0..KP {
            // the lane's bin is the last b with x >= x_b
            let next = if b + 1 < KP { cmp[b + 1] } else { 0 };
            let here = inside & cmp[b] & !next;
            if here == 0 {
                continue;
            }
            for (ap, &pv) in acc.iter_mut().zip(&p) {
                let dst = ap[b].as_mut_ptr().add(i);
                _mm512_storeu_ps(dst, add(_mm512_loadu_ps(dst), _mm512_maskz_mov_ps(here, pv)));
            }
        }
        i += 16;
    }
    kernel::backward(i, g, bound, x, gz, dx, acc);
}
