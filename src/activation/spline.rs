//! The monotonic rational-quadratic spline activation (Durkan et al., 2019) with
//! per-element parameters, linear (identity) tails, an analytic inverse and hand-derived
//! gradients with respect to its input and its parameters. Derivation: `proofs/spline.md`.

use faer::{Mat, MatMut, MatRef, Par};

use super::{sigmoid, softplus};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// Most bins supported (the paper uses 5).
pub const MAX_BINS: usize = 16;

/// Shape of a rational-quadratic spline: `bins` bins on $[-B, B]$ ($B$ = `tail_bound`),
/// identity outside, and the floors that keep every bin and slope positive.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplineConfig {
    /// Number of bins $K$ (the paper: 5).
    pub bins: usize,
    /// Tail bound $B$ (the paper: 10).
    pub tail_bound: f64,
    /// Floor on a bin's share of the width.
    pub min_width: f64,
    /// Floor on a bin's share of the height.
    pub min_height: f64,
    /// Floor on the interior knot slopes.
    pub min_derivative: f64,
}

impl Default for SplineConfig {
    fn default() -> Self {
        Self { bins: 5, tail_bound: 10.0, min_width: 1e-3, min_height: 1e-3, min_derivative: 1e-3 }
    }
}

/// Knots of one element's spline.
struct Knots {
    k: usize,
    xs: [f64; MAX_BINS + 1],
    ys: [f64; MAX_BINS + 1],
    ds: [f64; MAX_BINS + 1],
    sw: [f64; MAX_BINS],
    sh: [f64; MAX_BINS],
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
    fn check(&self) -> Result<()> {
        let k = self.bins as f64;
        let ok = (1..=MAX_BINS).contains(&self.bins)
            && self.tail_bound > 0.0
            && self.tail_bound.is_finite()
            && self.min_width >= 0.0
            && self.min_width * k < 1.0
            && self.min_height >= 0.0
            && self.min_height * k < 1.0
            && self.min_derivative > 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument { op: "SplineConfig", reason: format!("invalid spline configuration {self:?}") })
        }
    }

    /// The unnormalised derivative parameter that makes a knot slope exactly 1.
    pub fn unit_derivative_param(&self) -> f64 {
        (1.0 - self.min_derivative).exp_m1().ln()
    }

    fn knots(&self, tw: &[f64], th: &[f64], td: &[f64]) -> Knots {
        let k = self.bins;
        let b = self.tail_bound;
        let mut kn = Knots { k, xs: [0.0; MAX_BINS + 1], ys: [0.0; MAX_BINS + 1], ds: [1.0; MAX_BINS + 1], sw: [0.0; MAX_BINS], sh: [0.0; MAX_BINS] };
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
            kn.ds[j] = self.min_derivative + softplus(td[j - 1]);
        }
        kn
    }
}

/// Index of the bin of `v` among the knots `t[0..=k]` (`t[0] <= v < t[k]`).
fn bin(t: &[f64], k: usize, v: f64) -> usize {
    let mut j = 0;
    while j + 1 < k && v >= t[j + 1] {
        j += 1;
    }
    j
}

/// Value, log-slope and their partial derivatives for one element inside $[-B, B]$.
struct Eval {
    z: f64,
    log_d: f64,
    /// d z / d x and d log f' / d x
    dz_dx: f64,
    dl_dx: f64,
}

/// The gradient request of [`eval`]: the output delta $g$ and accumulators for the
/// width, height and slope parameters of the element.
type GradSink<'a> = (f64, &'a mut [f64], &'a mut [f64], &'a mut [f64]);

/// Per-element gradient of `g_z * z + log f'` with respect to the element's parameters
/// (written into `gw`, `gh`, `gd`), and its input derivative. Returns `None` in the tails.
#[allow(clippy::too_many_arguments)]
fn eval(cfg: &SplineConfig, kn: &Knots, x: f64, td: &[f64], grads: Option<GradSink<'_>>) -> Option<Eval> {
    let b = cfg.tail_bound;
    if !(x > -b && x < b) {
        return None;
    }
    let k = kn.k;
    let j = bin(&kn.xs, k, x);
    let (xk, dx) = (kn.xs[j], kn.xs[j + 1] - kn.xs[j]);
    let (yk, dy) = (kn.ys[j], kn.ys[j + 1] - kn.ys[j]);
    let (a, c) = (kn.ds[j], kn.ds[j + 1]);
    let s = dy / dx;
    let xi = ((x - xk) / dx).clamp(0.0, 1.0);
    let q = xi * (1.0 - xi);
    let num = s * xi * xi + a * q;
    let den = s + (a + c - 2.0 * s) * q;
    let u = num / den;
    let z = yk + dy * u;
    let m = c * xi * xi + 2.0 * s * q + a * (1.0 - xi) * (1.0 - xi);
    // log f' = 2 log s + log M - 2 log D, as one logarithm (all factors are positive and
    // moderate: s, M, D are bounded below by the floors); the backward pass does not need it
    let log_d = if grads.is_none() { (s * s * m / (den * den)).ln() } else { 0.0 };
    // partials with respect to (xi, s, a, c)
    let dq = 1.0 - 2.0 * xi;
    let num_xi = 2.0 * s * xi + a * dq;
    let den_xi = (a + c - 2.0 * s) * dq;
    let u_xi = (num_xi * den - num * den_xi) / (den * den);
    let u_s = (xi * xi * den - num * (1.0 - 2.0 * q)) / (den * den);
    let u_a = (q * den - num * q) / (den * den);
    let u_c = -num * q / (den * den);
    let m_xi = 2.0 * c * xi + 2.0 * s * dq - 2.0 * a * (1.0 - xi);
    let l_xi = m_xi / m - 2.0 * den_xi / den;
    let l_s = 2.0 / s + 2.0 * q / m - 2.0 * (1.0 - 2.0 * q) / den;
    let l_a = (1.0 - xi) * (1.0 - xi) / m - 2.0 * q / den;
    let l_c = xi * xi / m - 2.0 * q / den;
    let out = Eval { z, log_d, dz_dx: dy * u_xi / dx, dl_dx: l_xi / dx };
    if let Some((gz, gw, gh, gd)) = grads {
        // G = gz * z + log f', as a function of (xi, s, dy, yk, a, c)
        let g_xi = gz * dy * u_xi + l_xi;
        let g_s = gz * dy * u_s + l_s;
        let g_dy = gz * u;
        let g_yk = gz;
        let g_a = gz * dy * u_a + l_a;
        let g_c = gz * dy * u_c + l_c;
        // to knots and bin sizes: xi = (x - xk)/dx, s = dy/dx
        let g_xk = -g_xi / dx;
        let g_dx = -g_xi * xi / dx - g_s * s / dx;
        let g_dyy = g_dy + g_s / dx;
        // bin sizes: knot k is the sum of the sizes of bins < k
        let mut gdx = [0.0; MAX_BINS];
        let mut gdyv = [0.0; MAX_BINS];
        for i in 0..j {
            gdx[i] = g_xk;
            gdyv[i] = g_yk;
        }
        gdx[j] += g_dx;
        gdyv[j] += g_dyy;
        // through size_i = 2B (min + (1 - K min) softmax_i)
        let (fw, fh) = (2.0 * b * (1.0 - cfg.min_width * k as f64), 2.0 * b * (1.0 - cfg.min_height * k as f64));
        let dotw: f64 = (0..k).map(|i| gdx[i] * kn.sw[i]).sum();
        let doth: f64 = (0..k).map(|i| gdyv[i] * kn.sh[i]).sum();
        for i in 0..k {
            gw[i] += fw * kn.sw[i] * (gdx[i] - dotw);
            gh[i] += fh * kn.sh[i] * (gdyv[i] - doth);
        }
        // interior slopes d_i = min + softplus(theta_{i-1}), i = 1..K-1
        if j >= 1 {
            gd[j - 1] += g_a * sigmoid(td[j - 1]);
        }
        if j + 1 < k {
            gd[j] += g_c * sigmoid(td[j]);
        }
    }
    Some(out)
}

/// Inverse for one element.
fn invert(cfg: &SplineConfig, kn: &Knots, y: f64) -> f64 {
    let b = cfg.tail_bound;
    if !(y > -b && y < b) {
        return y;
    }
    let j = bin(&kn.ys, kn.k, y);
    let (xk, dx) = (kn.xs[j], kn.xs[j + 1] - kn.xs[j]);
    let (yk, dy) = (kn.ys[j], kn.ys[j + 1] - kn.ys[j]);
    let (a, c) = (kn.ds[j], kn.ds[j + 1]);
    let s = dy / dx;
    let t = y - yk;
    // (dy (s - a) + t (a + c - 2s)) xi^2 + (dy a - t (a + c - 2s)) xi - s t = 0
    let qa = dy * (s - a) + t * (a + c - 2.0 * s);
    let qb = dy * a - t * (a + c - 2.0 * s);
    let qc = -s * t;
    let disc = (qb * qb - 4.0 * qa * qc).max(0.0);
    // the root in [0, 1], in the cancellation-free form
    let xi = (2.0 * qc / (-qb - disc.sqrt())).clamp(0.0, 1.0);
    xk + xi * dx
}

/// A rational-quadratic spline activation with its own parameters for each of the `D`
/// entries of an example: unnormalised widths and heights (`K x D`) and interior slopes
/// (`(K-1) x D`). At initialisation every spline is the identity (equal bins, unit slopes).
#[derive(Debug, Clone, PartialEq)]
pub struct SplineActivation<T: Real> {
    cfg: SplineConfig,
    w: Mat<T>,
    h: Mat<T>,
    d: Mat<T>,
}

/// The rows (entries) of a backward pass: batch rows and the matching parameter columns.
struct Rows<'a, T: Real> {
    x: MatRef<'a, T>,
    dz: MatRef<'a, T>,
    dx: MatMut<'a, T>,
    gw: MatMut<'a, T>,
    gh: MatMut<'a, T>,
    gd: MatMut<'a, T>,
}

impl<'a, T: Real> Rows<'a, T> {
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    fn split(self, at: usize) -> (Self, Self) {
        let (x0, x1) = self.x.split_at_row(at);
        let (z0, z1) = self.dz.split_at_row(at);
        let (d0, d1) = self.dx.split_at_row_mut(at);
        let (w0, w1) = self.gw.split_at_col_mut(at);
        let (h0, h1) = self.gh.split_at_col_mut(at);
        let (g0, g1) = self.gd.split_at_col_mut(at);
        (Rows { x: x0, dz: z0, dx: d0, gw: w0, gh: h0, gd: g0 }, Rows { x: x1, dz: z1, dx: d1, gw: w1, gh: h1, gd: g1 })
    }
}

/// Gradients of the loss with respect to a [`SplineActivation`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SplineGrads<T: Real> {
    /// Of the unnormalised widths, `K x D`.
    pub w: Mat<T>,
    /// Of the unnormalised heights, `K x D`.
    pub h: Mat<T>,
    /// Of the unnormalised interior slopes, `(K-1) x D`.
    pub d: Mat<T>,
}

impl<T: Real> SplineActivation<T> {
    /// Identity splines for `dim` entries.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid configuration or `dim == 0`.
    pub fn new(dim: usize, cfg: SplineConfig) -> Result<Self> {
        cfg.check()?;
        if dim == 0 {
            return Err(Error::InvalidArgument { op: "SplineActivation::new", reason: "dim must be positive".into() });
        }
        let k = cfg.bins;
        let ud = T::from_f64(cfg.unit_derivative_param());
        Ok(Self { cfg, w: Mat::zeros(k, dim), h: Mat::zeros(k, dim), d: Mat::from_fn(k - 1, dim, |_, _| ud) })
    }
    /// Splines from explicit parameters.
    ///
    /// # Errors
    /// Shape errors, [`Error::NonFinite`], invalid configuration.
    pub fn from_parts(cfg: SplineConfig, w: Mat<T>, h: Mat<T>, d: Mat<T>) -> Result<Self> {
        const OP: &str = "SplineActivation::from_parts";
        cfg.check()?;
        let n = w.ncols();
        check_shape(OP, (cfg.bins, n), (w.nrows(), w.ncols()))?;
        check_shape(OP, (cfg.bins, n), (h.nrows(), h.ncols()))?;
        check_shape(OP, (cfg.bins - 1, n), (d.nrows(), d.ncols()))?;
        if ![&w, &h, &d].iter().all(|m| crate::util::all_finite(m.as_ref())) {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { cfg, w, h, d })
    }
    /// The configuration.
    pub fn config(&self) -> &SplineConfig {
        &self.cfg
    }
    /// The parameters `[widths, heights, slopes]` (`K x D`, `K x D`, `(K-1) x D`),
    /// unnormalised, as [`from_parts`](Self::from_parts) takes them.
    pub fn parameters(&self) -> [MatRef<'_, T>; 3] {
        [self.w.as_ref(), self.h.as_ref(), self.d.as_ref()]
    }
    /// Entries per example.
    pub fn dim(&self) -> usize {
        self.w.ncols()
    }
    /// Zeroed gradients.
    pub fn zero_grads(&self) -> SplineGrads<T> {
        SplineGrads {
            w: Mat::zeros(self.w.nrows(), self.w.ncols()),
            h: Mat::zeros(self.h.nrows(), self.h.ncols()),
            d: Mat::zeros(self.d.nrows(), self.d.ncols()),
        }
    }
    /// Parameter blocks with their gradients, `[widths, heights, slopes]`.
    ///
    /// # Errors
    /// Shape errors if `grads` was not made for this layer.
    pub fn params_with_grads<'a>(&'a mut self, grads: &'a SplineGrads<T>) -> Result<impl Iterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>> {
        const OP: &str = "SplineActivation::params_with_grads";
        check_shape(OP, (self.w.nrows(), self.w.ncols()), (grads.w.nrows(), grads.w.ncols()))?;
        check_shape(OP, (self.d.nrows(), self.d.ncols()), (grads.d.nrows(), grads.d.ncols()))?;
        Ok([(self.w.as_mut(), grads.w.as_ref()), (self.h.as_mut(), grads.h.as_ref()), (self.d.as_mut(), grads.d.as_ref())].into_iter())
    }

    /// Mutable parameter blocks `[widths, heights, slopes]`.
    pub fn params_mut(&mut self) -> [MatMut<'_, T>; 3] {
        [self.w.as_mut(), self.h.as_mut(), self.d.as_mut()]
    }

    fn entry_params(&self, i: usize, buf: &mut [f64; 3 * MAX_BINS]) -> (usize, usize) {
        let k = self.cfg.bins;
        for r in 0..k {
            buf[r] = self.w[(r, i)].as_f64();
            buf[MAX_BINS + r] = self.h[(r, i)].as_f64();
        }
        for r in 0..k - 1 {
            buf[2 * MAX_BINS + r] = self.d[(r, i)].as_f64();
        }
        (k, k - 1)
    }

    /// `z = f(x)` entry-wise, adding each column's $\sum\log f'$ to `logdet`. Columns run in
    /// parallel under `par`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], par: Par) -> Result<()> {
        const OP: &str = "SplineActivation::forward";
        check_shape(OP, (self.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (x.ncols(), 1), (logdet.len(), 1))?;
        crate::util::par_cols(((x, z), logdet), par, &|((x, mut z), logdet): ((MatRef<'_, T>, MatMut<'_, T>), &mut [f64])| {
            let mut p = [0.0; 3 * MAX_BINS];
            for i in 0..self.dim() {
                let (k, kd) = self.entry_params(i, &mut p);
                let kn = self.cfg.knots(&p[..k], &p[MAX_BINS..MAX_BINS + k], &p[2 * MAX_BINS..2 * MAX_BINS + kd]);
                for j in 0..x.ncols() {
                    let v = x[(i, j)].as_f64();
                    match eval(&self.cfg, &kn, v, &p[2 * MAX_BINS..2 * MAX_BINS + kd], None) {
                        Some(e) => {
                            z[(i, j)] = T::from_f64(e.z);
                            logdet[j] += e.log_d;
                        }
                        None => z[(i, j)] = x[(i, j)],
                    }
                }
            }
        });
        Ok(())
    }

    /// Backward: $\delta_x = f'(x)\delta_z + \frac{d}{dx}\log f'(x)$ into `dx`, and the loss
    /// gradients $-\frac1B\sum_b\big(\delta_z\,\partial f/\partial\theta + \partial\log f'/\partial\theta\big)$
    /// into `grads` (overwritten). Entries (rows) run in parallel under `par`: each entry's
    /// parameters and gradients are its own.
    ///
    /// # Errors
    /// Shape errors.
    pub fn backward(&self, x: MatRef<'_, T>, dz: MatRef<'_, T>, dx: MatMut<'_, T>, grads: &mut SplineGrads<T>, par: Par) -> Result<()> {
        const OP: &str = "SplineActivation::backward";
        check_shape(OP, (self.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (dz.nrows(), dz.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (dx.nrows(), dx.ncols()))?;
        check_shape(OP, (self.w.nrows(), self.w.ncols()), (grads.w.nrows(), grads.w.ncols()))?;
        check_shape(OP, (self.d.nrows(), self.d.ncols()), (grads.d.nrows(), grads.d.ncols()))?;
        let rows = Rows { x, dz, dx, gw: grads.w.as_mut(), gh: grads.h.as_mut(), gd: grads.d.as_mut() };
        self.backward_rows(0, rows, par.degree().max(1));
        Ok(())
    }

    fn backward_rows(&self, i0: usize, r: Rows<'_, T>, threads: usize) {
        let n = r.x.nrows();
        #[cfg(feature = "rayon")]
        if threads > 1 && n >= 32 {
            let mid = n / 2;
            let (a, b) = r.split(mid);
            rayon::join(|| self.backward_rows(i0, a, threads / 2), || self.backward_rows(i0 + mid, b, threads - threads / 2));
            return;
        }
        let _ = threads;
        let Rows { x, dz, mut dx, mut gw, mut gh, mut gd } = r;
        let inv_b = -1.0 / x.ncols().max(1) as f64;
        let mut p = [0.0; 3 * MAX_BINS];
        for li in 0..n {
            let i = i0 + li;
            let (k, kd) = self.entry_params(i, &mut p);
            let (mut sw, mut sh, mut sd) = ([0.0; MAX_BINS], [0.0; MAX_BINS], [0.0; MAX_BINS]);
            let kn = self.cfg.knots(&p[..k], &p[MAX_BINS..MAX_BINS + k], &p[2 * MAX_BINS..2 * MAX_BINS + kd]);
            for j in 0..x.ncols() {
                let v = x[(li, j)].as_f64();
                let g = dz[(li, j)].as_f64();
                let e = eval(&self.cfg, &kn, v, &p[2 * MAX_BINS..2 * MAX_BINS + kd], Some((g, &mut sw[..k], &mut sh[..k], &mut sd[..kd])));
                dx[(li, j)] = T::from_f64(match e {
                    Some(e) => e.dz_dx * g + e.dl_dx,
                    None => g,
                });
            }
            for q in 0..k {
                gw[(q, li)] = T::from_f64(inv_b * sw[q]);
                gh[(q, li)] = T::from_f64(inv_b * sh[q]);
            }
            for q in 0..kd {
                gd[(q, li)] = T::from_f64(inv_b * sd[q]);
            }
        }
    }

    /// The analytic inverse `x = f^{-1}(z)`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "SplineActivation::inverse";
        check_shape(OP, (self.dim(), z.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (z.nrows(), z.ncols()), (x.nrows(), x.ncols()))?;
        let mut x = x;
        let mut p = [0.0; 3 * MAX_BINS];
        for i in 0..self.dim() {
            let (k, kd) = self.entry_params(i, &mut p);
            let kn = self.cfg.knots(&p[..k], &p[MAX_BINS..MAX_BINS + k], &p[2 * MAX_BINS..2 * MAX_BINS + kd]);
            for j in 0..z.ncols() {
                let v = invert(&self.cfg, &kn, z[(i, j)].as_f64());
                x[(i, j)] = T::from_f64(v);
            }
        }
        Ok(())
    }
}
