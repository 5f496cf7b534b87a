//! The per-entry geometry of a spline: knots from the softmax of the width and height
//! parameters, interior slopes from a softplus, and the per-bin constants the element
//! kernels read. It depends on the parameters only, so it is computed once per entry per
//! pass (not per example): $O(DK)$ transcendental calls per pass instead of $O(DBK)$.

use super::kernel::{field, BLOCK};
use super::{SplineConfig, MAX_BINS};
use crate::real::Real;

/// Knots of one entry's spline, in `f64`, with what the parameter gradients need.
#[derive(Debug, Clone, Copy)]
pub(super) struct Knots {
    pub k: usize,
    pub xs: [f64; MAX_BINS + 1],
    pub ys: [f64; MAX_BINS + 1],
    pub ds: [f64; MAX_BINS + 1],
    /// softmax of the width parameters
    pub sw: [f64; MAX_BINS],
    /// softmax of the height parameters
    pub sh: [f64; MAX_BINS],
    /// `sigmoid(theta_d[j])`, the derivative of interior slope `j + 1`
    pub sig: [f64; MAX_BINS],
}

fn softmax(theta: &[f64], out: &mut [f64]) {
    let m = theta.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for (o, &t) in out.iter_mut().zip(theta) {
        *o = (t - m).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

impl SplineConfig {
    /// The knots from one entry's unnormalised widths `tw`, heights `th` (`K` each) and
    /// interior slopes `td` (`K - 1`).
    pub(super) fn knots(&self, tw: &[f64], th: &[f64], td: &[f64]) -> Knots {
        let k = self.bins;
        let b = self.tail_bound;
        let mut kn = Knots {
            k,
            xs: [0.0; MAX_BINS + 1],
            ys: [0.0; MAX_BINS + 1],
            ds: [1.0; MAX_BINS + 1],
            sw: [0.0; MAX_BINS],
            sh: [0.0; MAX_BINS],
            sig: [0.0; MAX_BINS],
        };
        softmax(tw, &mut kn.sw[..k]);
        softmax(th, &mut kn.sh[..k]);
        let (fw, fh) = (1.0 - self.min_width * k as f64, 1.0 - self.min_height * k as f64);
        kn.xs[0] = -b;
        kn.ys[0] = -b;
        for j in 0..k {
            kn.xs[j + 1] = kn.xs[j] + 2.0 * b * (self.min_width + fw * kn.sw[j]);
            kn.ys[j + 1] = kn.ys[j] + 2.0 * b * (self.min_height + fh * kn.sh[j]);
        }
        kn.xs[k] = b;
        kn.ys[k] = b;
        for j in 1..k {
            // softplus and sigmoid from one exponential, t = e^{-|x|}:
            // softplus = max(x, 0) + ln(1 + t), sigmoid = 1/(1 + t) or t/(1 + t)
            let x = td[j - 1];
            let t = (-x.abs()).exp();
            kn.ds[j] = self.min_derivative + x.max(0.0) + t.ln_1p();
            kn.sig[j - 1] = if x >= 0.0 { 1.0 / (1.0 + t) } else { t / (1.0 + t) };
        }
        kn
    }
}

impl Knots {
    /// Write this entry's `K` bins into entry `lane` of a block geometry
    /// (`field::N x kp x BLOCK`, see [`kernel`](super::kernel)) in precision `F`: each bin's
    /// left knot, size, slopes and the constants of $\log f' = 2\log s + \log(M/D^2)$ and
    /// $\partial\log f'/\partial s \ni 2/s$ (see `proofs/spline.md`). Bins `K .. kp` are
    /// padding: a left knot at $+\infty$ (never selected) and the last bin's other values.
    pub(super) fn fill_block<F: Real>(&self, kp: usize, lane: usize, block: &mut [F]) {
        let k = self.k;
        let mut vals = [0.0; field::N];
        for j in 0..kp {
            if j < k {
                let (dx, dy) = (self.xs[j + 1] - self.xs[j], self.ys[j + 1] - self.ys[j]);
                let s = dy / dx;
                vals = [self.xs[j], 1.0 / dx, self.ys[j], dy, self.ds[j], self.ds[j + 1], s, 2.0 * s.ln(), 2.0 / s];
            } else {
                vals[field::XK] = f64::INFINITY;
            }
            for (f, &v) in vals.iter().enumerate() {
                block[(f * kp + j) * BLOCK + lane] = F::from_f64(v);
            }
        }
    }
}
