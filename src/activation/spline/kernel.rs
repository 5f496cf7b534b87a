//! The per-element work of the spline, in the precision of the batch and vectorised over
//! entries: a column-major batch holds each example's entries contiguously, and each
//! entry has its own bins, so the kernels run over a block of [`BLOCK`] entries of one
//! column, each lane selecting its bin's constants from the block geometry by a chain of
//! compares and blends (no gather, no branch; the number of bins is a compile-time
//! constant, so the chain unrolls), then doing the same arithmetic as every other lane.
//! The forward pass finds the value and the log-slope; the backward pass the input delta
//! and the per-bin parameter partials, summed over the batch per entry and bin. No
//! transcendental function but one `ln` per element in the forward pass (the
//! vectorisable polynomial for `f32`, [`ln_fast`]); everything that depends only on the
//! parameters comes precomputed in the geometry
//! ([`Knots::fill_block`](super::geometry::Knots::fill_block)). Formulas: `proofs/spline.md`.

use num_traits::Float;

use super::geometry::Knots;
use crate::real::{ln_fast, Real};

/// Entries per block: the block geometry (`field::N x KP x BLOCK`) stays in L1 while the
/// kernels sweep the batch.
pub(super) const BLOCK: usize = 32;

/// Fields of the block geometry, each `KP x BLOCK` (bin-major, entries contiguous).
pub(super) mod field {
    /// left knot $x_k$ (`+inf` for padding bins, so that no entry selects them)
    pub const XK: usize = 0;
    /// $1/\Delta x$
    pub const INV_DX: usize = 1;
    /// left knot height $y_k$
    pub const YK: usize = 2;
    /// $\Delta y$
    pub const DY: usize = 3;
    /// knot slope at the left end
    pub const A: usize = 4;
    /// knot slope at the right end
    pub const C: usize = 5;
    /// $s = \Delta y/\Delta x$
    pub const S: usize = 6;
    /// $2\log s$
    pub const TWO_LOG_S: usize = 7;
    /// $2/s$
    pub const TWO_INV_S: usize = 8;
    /// number of fields
    pub const N: usize = 9;
}

/// Number of per-bin parameter partials the backward pass accumulates
/// ($x_k$, $\Delta x$, $y_k$, $\Delta y$, $a$, $c$).
pub(super) const PARTIALS: usize = 6;

/// The padded bin count the kernels are compiled for: the smallest of 4, 5, 8, 16 that
/// holds `k` bins (the paper's splines have 5).
pub(super) const fn padded_bins(k: usize) -> usize {
    if k <= 4 {
        4
    } else if k <= 5 {
        5
    } else if k <= 8 {
        8
    } else {
        16
    }
}

/// Length of one block's geometry for `kp` (padded) bins.
pub(super) const fn block_len(kp: usize) -> usize {
    field::N * kp * BLOCK
}

/// One block's geometry: `[field][bin][entry]`.
pub(super) type Geometry<F, const KP: usize> = [[[F; BLOCK]; KP]; field::N];

/// One block's partial sums: `[partial][bin][entry]`.
pub(super) type Partials<F, const KP: usize> = [[[F; BLOCK]; KP]; PARTIALS];

/// The flat buffer `g` (at least `field::N x KP x BLOCK` long) as a block geometry.
#[inline(always)]
pub(super) fn geometry<F, const KP: usize>(g: &[F]) -> &Geometry<F, KP> {
    let (rows, _) = g.as_chunks::<BLOCK>();
    let (bins, _) = rows.as_chunks::<KP>();
    // unreachable: every caller passes a workspace block of `block_len(KP)` values or a
    // stack buffer of `N * MAX_BINS * BLOCK >= N * KP * BLOCK`
    bins[..field::N].try_into().expect("a block geometry holds N x KP x BLOCK values")
}

/// The flat buffer `acc` (at least `PARTIALS x KP x BLOCK` long) as block partials.
#[inline(always)]
pub(super) fn partials<F, const KP: usize>(acc: &mut [F]) -> &mut Partials<F, KP> {
    let (rows, _) = acc.as_chunks_mut::<BLOCK>();
    let (bins, _) = rows.as_chunks_mut::<KP>();
    // unreachable: the one caller passes a stack buffer of `PARTIALS * MAX_BINS * BLOCK`
    (&mut bins[..PARTIALS]).try_into().expect("block partials hold PARTIALS x KP x BLOCK values")
}

/// One entry's bin constants, selected from the block geometry `g` for input `v`: bin 0,
/// moved to bin `b` wherever $v \ge x_b$ (knots increase, so the last move is the bin).
/// Also returns the comparisons ($c_0$ = true).
#[inline(always)]
fn select<F: Real, const KP: usize, const NF: usize>(g: &Geometry<F, KP>, i: usize, v: F, fields: [usize; NF]) -> ([F; NF], [bool; KP]) {
    let mut out = fields.map(|f| g[f][0][i]);
    let mut c = [true; KP];
    for b in 1..KP {
        c[b] = v >= g[field::XK][b][i];
        for (o, &f) in out.iter_mut().zip(&fields) {
            let gv = g[f][b][i];
            *o = if c[b] { gv } else { *o };
        }
    }
    (out, c)
}

/// Forward over the entries of a block (`x.len()` of them) for one column: $z = f(x)$ inside
/// $(-B, B)$, $x$ outside; returns $\sum\log f'(x)$ over the entries inside (in `f64`).
/// `ld` is scratch for the per-entry log-slopes.
///
/// Inside a bin, $f = y_k + \Delta y\,N/D$ and $\log f' = 2\log s + \log(M/D^2)$. For
/// `f32` the logarithm's argument is floored at the smallest normal number (it is at least
/// $\min(a, s, c)/\max(a, s, c)^2$, so this matters only for slopes beyond $10^{17}$).
#[inline(always)]
pub(super) fn forward<F: Real, const KP: usize>(g: &Geometry<F, KP>, bound: F, x: &[F], z: &mut [F], ld: &mut [F; BLOCK]) -> f64 {
    forward_from(0, g, bound, x, z, ld);
    sum_lanes(&ld[..x.len().min(z.len()).min(BLOCK)])
}

/// $\sum_i v_i$ in `f64`, in eight independent lanes (a single running sum would not
/// vectorise).
#[inline(always)]
pub(super) fn sum_lanes<F: Real>(v: &[F]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for ch in &mut chunks {
        for (a, v) in lanes.iter_mut().zip(ch) {
            *a += v.as_f64();
        }
    }
    chunks.remainder().iter().map(|v| v.as_f64()).sum::<f64>() + lanes.iter().sum::<f64>()
}

/// [`forward`] of the entries `start ..` (the SIMD kernels do the ones before), writing
/// each entry's log-slope (0 outside the bound) into `ld`.
#[inline(always)]
pub(super) fn forward_from<F: Real, const KP: usize>(start: usize, g: &Geometry<F, KP>, bound: F, x: &[F], z: &mut [F], ld: &mut [F; BLOCK]) {
    use field::*;
    let n = x.len().min(z.len()).min(BLOCK);
    let (x, z) = (&x[..n], &mut z[..n]);
    let (one, two, zero) = (F::one(), F::one() + F::one(), F::zero());
    for i in start..n {
        let v = x[i];
        let ([xk, inv_dx, yk, dy, a, cs, s, tls], _) = select::<F, KP, 8>(g, i, v, [XK, INV_DX, YK, DY, A, C, S, TWO_LOG_S]);
        let xi = Float::min(Float::max((v - xk) * inv_dx, zero), one);
        let om = one - xi;
        let q = xi * om;
        let den = s + (a + cs - two * s) * q;
        let num = s * xi * xi + a * q;
        let id = one / den;
        let m = cs * xi * xi + two * s * q + a * om * om;
        let r = Float::max(m * id * id, F::min_positive_value());
        let inside = (v > -bound) & (v < bound);
        z[i] = if inside { yk + dy * num * id } else { v };
        ld[i] = if inside { tls + ln_fast(r) } else { zero };
    }
}

/// Backward over the entries `start ..` of a block (`x.len()` of them) for one column: $\delta_x = f'(x)\,g +
/// \frac{d}{dx}\log f'(x)$ inside $(-B, B)$ (`g` outside), and the partials of
/// $G = g\,f(x) + \log f'(x)$ with respect to each entry's bin's left knot $x_k$ (which
/// every bin left of it also receives, knots being prefix sums), its width $\Delta x$, its
/// left knot height $y_k$ (likewise), its height $\Delta y$ and its knot slopes $a$, $c$,
/// added to `acc` (`PARTIALS x KP x BLOCK`, partial-major) at the entry's bin.
#[inline(always)]
pub(super) fn backward<F: Real, const KP: usize>(start: usize, g: &Geometry<F, KP>, bound: F, x: &[F], gz: &[F], dx: &mut [F], acc: &mut Partials<F, KP>) {
    use field::*;
    let n = x.len().min(gz.len()).min(dx.len()).min(BLOCK);
    let (x, gz, dx) = (&x[..n], &gz[..n], &mut dx[..n]);
    let (one, two, zero) = (F::one(), F::one() + F::one(), F::zero());
    for i in start..n {
        let (v, gl) = (x[i], gz[i]);
        let ([xk, inv_dx, dyv, a, c, s, tis], cmp) = select::<F, KP, 7>(g, i, v, [XK, INV_DX, DY, A, C, S, TWO_INV_S]);
        let xi = Float::min(Float::max((v - xk) * inv_dx, zero), one);
        let om = one - xi;
        let q = xi * om;
        let w = a + c - two * s;
        let den = s + w * q;
        let num = s * xi * xi + a * q;
        let m = c * xi * xi + two * s * q + a * om * om;
        let (id, im) = (one / den, one / m);
        let id2 = id * id;
        let dq = one - two * xi;
        let num_xi = two * s * xi + a * dq;
        let den_xi = w * dq;
        let one_m2q = one - two * q;
        let u = num * id;
        let u_xi = (num_xi * den - num * den_xi) * id2;
        let u_s = (xi * xi * den - num * one_m2q) * id2;
        let u_a = q * (den - num) * id2;
        let u_c = -num * q * id2;
        let m_xi = two * (c * xi + s * dq - a * om);
        let two_q_id = two * q * id;
        let l_xi = m_xi * im - two * den_xi * id;
        let l_s = tis + two * q * im - two * one_m2q * id;
        let l_a = om * om * im - two_q_id;
        let l_c = xi * xi * im - two_q_id;
        let gdy = gl * dyv;
        let g_xi = gdy * u_xi + l_xi;
        let g_s = gdy * u_s + l_s;
        let inside = (v > -bound) & (v < bound);
        let p = [-g_xi * inv_dx, -(g_xi * xi + g_s * s) * inv_dx, gl, gl * u + g_s * inv_dx, gdy * u_a + l_a, gdy * u_c + l_c];
        dx[i] = if inside { g_xi * inv_dx } else { gl };
        for b in 0..KP {
            // the entry's bin is the last b with x >= x_b
            let here = inside & cmp[b] & !(b + 1 < KP && cmp[(b + 1) % KP]);
            for (a, &pv) in acc.iter_mut().zip(&p) {
                a[b][i] += if here { pv } else { zero };
            }
        }
    }
}

/// Inverse for one element inside $(-B, B)$ (in `f64`): the root in $[0, 1]$ of
/// $(\Delta y(s - a) + t(a + c - 2s))\xi^2 + (\Delta y\,a - t(a + c - 2s))\xi - st = 0$,
/// $t = y - y_k$, in the cancellation-free form.
pub(super) fn invert(kn: &Knots, y: f64) -> f64 {
    let mut j = 0;
    while j + 1 < kn.k && y >= kn.ys[j + 1] {
        j += 1;
    }
    let (xk, dx) = (kn.xs[j], kn.xs[j + 1] - kn.xs[j]);
    let (yk, dy) = (kn.ys[j], kn.ys[j + 1] - kn.ys[j]);
    let (a, c) = (kn.ds[j], kn.ds[j + 1]);
    let s = dy / dx;
    let t = y - yk;
    let qa = dy * (s - a) + t * (a + c - 2.0 * s);
    let qb = dy * a - t * (a + c - 2.0 * s);
    let qc = -s * t;
    let disc = (qb * qb - 4.0 * qa * qc).max(0.0);
    let xi = (2.0 * qc / (-qb - disc.sqrt())).clamp(0.0, 1.0);
    xk + xi * dx
}
