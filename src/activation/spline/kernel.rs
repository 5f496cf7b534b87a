//! The per-element work of the spline, in the precision of the batch: find the bin, the
//! value and log-slope (forward), the input delta and the bin-level parameter partials
//! (backward), the inverse. No transcendental function but one `ln` per element in the
//! forward pass (the vectorisable polynomial for `f32`, [`ln_fast`]); everything that
//! depends only on the parameters comes precomputed in the [`Bin`].
//! Formulas: `proofs/spline.md`.

use num_traits::Float;

use super::geometry::{Bin, Knots};
use crate::real::{ln_fast, Real};

/// Index of the bin of `x` among `bins` (`bins[0].xk <= x`): the number of interior
/// knots at or left of `x`, branch-free.
#[inline(always)]
pub(super) fn find<F: Real>(bins: &[Bin<F>], x: F) -> usize {
    let mut j = 0;
    for b in &bins[1..] {
        j += (x >= b.xk) as usize;
    }
    j
}

/// $(f(x), \log f'(x))$ for `x` inside the bin `b`:
/// $f = y_k + \Delta y\,N/D$, $\log f' = 2\log s + \log(M/D^2)$.
///
/// For `f32` the logarithm's argument is floored at the smallest normal number (it is at
/// least $\min(a, s, c)/\max(a, s, c)^2$, so this matters only for slopes beyond $10^{17}$).
#[inline(always)]
pub(super) fn value<F: Real>(b: &Bin<F>, x: F) -> (F, F) {
    let (one, two) = (F::one(), F::one() + F::one());
    let xi = Float::min(Float::max((x - b.xk) * b.inv_dx, F::zero()), one);
    let om = one - xi;
    let q = xi * om;
    let den = b.s + (b.a + b.c - two * b.s) * q;
    let num = b.s * xi * xi + b.a * q;
    let id = one / den;
    let m = b.c * xi * xi + two * b.s * q + b.a * om * om;
    let r = Float::max(m * id * id, F::min_positive_value());
    (b.yk + b.dy * num * id, b.two_log_s + ln_fast(r))
}

/// The partials of $G = g\,f(x) + \log f'(x)$ a bin accumulates over the batch: with
/// respect to its left knot $x_k$ (which every bin left of it also receives, knots being
/// prefix sums), its width $\Delta x$, its left knot height $y_k$ (likewise), its height
/// $\Delta y$, and its knot slopes $a$ and $c$.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BinPartials {
    pub xk: f64,
    pub dx: f64,
    pub yk: f64,
    pub dy: f64,
    pub a: f64,
    pub c: f64,
}

/// $\partial G/\partial x = f'(x)\,g + \frac{d}{dx}\log f'(x)$ for `x` inside the bin `b`,
/// adding the bin's parameter partials to `acc`.
#[inline(always)]
pub(super) fn grad<F: Real>(b: &Bin<F>, x: F, g: F, acc: &mut BinPartials) -> F {
    let (one, two) = (F::one(), F::one() + F::one());
    let xi = Float::min(Float::max((x - b.xk) * b.inv_dx, F::zero()), one);
    let om = one - xi;
    let q = xi * om;
    let w = b.a + b.c - two * b.s;
    let den = b.s + w * q;
    let num = b.s * xi * xi + b.a * q;
    let m = b.c * xi * xi + two * b.s * q + b.a * om * om;
    let (id, im) = (one / den, one / m);
    let id2 = id * id;
    let dq = one - two * xi;
    let num_xi = two * b.s * xi + b.a * dq;
    let den_xi = w * dq;
    let one_m2q = one - two * q;
    let u = num * id;
    let u_xi = (num_xi * den - num * den_xi) * id2;
    let u_s = (xi * xi * den - num * one_m2q) * id2;
    let u_a = q * (den - num) * id2;
    let u_c = -num * q * id2;
    let m_xi = two * (b.c * xi + b.s * dq - b.a * om);
    let two_q_id = two * q * id;
    let l_xi = m_xi * im - two * den_xi * id;
    let l_s = b.two_inv_s + two * q * im - two * one_m2q * id;
    let l_a = om * om * im - two_q_id;
    let l_c = xi * xi * im - two_q_id;
    let gdy = g * b.dy;
    let g_xi = gdy * u_xi + l_xi;
    let g_s = gdy * u_s + l_s;
    acc.xk += (-g_xi * b.inv_dx).as_f64();
    acc.dx += (-(g_xi * xi + g_s * b.s) * b.inv_dx).as_f64();
    acc.yk += g.as_f64();
    acc.dy += (g * u + g_s * b.inv_dx).as_f64();
    acc.a += (gdy * u_a + l_a).as_f64();
    acc.c += (gdy * u_c + l_c).as_f64();
    g_xi * b.inv_dx
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
