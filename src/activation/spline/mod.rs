//! The monotonic rational-quadratic spline activation (Durkan et al., 2019) with
//! per-element parameters, linear (identity) tails, an analytic inverse and hand-derived
//! gradients with respect to its input and its parameters. Derivation: `proofs/spline.md`.
//!
//! Cost: the bin geometry (softmax widths and heights, softplus slopes, knots) depends
//! only on the parameters, so each pass computes it once per entry (`geometry.rs`); the
//! per-element work (`kernel.rs`) runs in the batch's precision with one logarithm per
//! element in the forward pass (a vectorisable polynomial for `f32`) and none in the
//! backward pass, whose parameter partials are summed per bin over the batch and mapped
//! through the softmax once per entry.

mod geometry;
mod kernel;

use faer::{Mat, MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use geometry::Bin;
use kernel::BinPartials;

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

    /// The knots of entry `i`.
    fn knots(&self, i: usize) -> geometry::Knots {
        let mut p = [0.0; 3 * MAX_BINS];
        let (k, kd) = self.entry_params(i, &mut p);
        self.cfg.knots(&p[..k], &p[MAX_BINS..MAX_BINS + k], &p[2 * MAX_BINS..2 * MAX_BINS + kd])
    }

    /// Buffers for [`Transform::forward`](crate::transform::Transform::forward): the bin
    /// geometry of every entry (`K * D` bins).
    pub(crate) fn workspace_buffers(&self) -> Result<SplineWorkspace<T>> {
        let n = self.cfg.bins * self.dim();
        let mut bins = Vec::new();
        bins.try_reserve_exact(n).map_err(|_| Error::InvalidArgument {
            op: "SplineActivation::workspace",
            reason: format!("the geometry of {} entries cannot be allocated", self.dim()),
        })?;
        bins.resize(n, Bin::default());
        Ok(SplineWorkspace { bins })
    }

    /// Fill `bins` (`K` per entry, entries in order) from the parameters; entries split
    /// over `threads`.
    fn fill_geometry(&self, i0: usize, bins: &mut [Bin<T>], threads: usize) {
        let k = self.cfg.bins;
        #[cfg(feature = "rayon")]
        if threads > 1 && bins.len() / k >= 64 {
            let n = bins.len() / k;
            let mid = n / 2;
            let (a, b) = bins.split_at_mut(mid * k);
            rayon::join(|| self.fill_geometry(i0, a, threads / 2), || self.fill_geometry(i0 + mid, b, threads - threads / 2));
            return;
        }
        let _ = threads;
        crate::util::clear_upper_simd_state();
        for (li, chunk) in bins.chunks_exact_mut(k).enumerate() {
            self.knots(i0 + li).bins(chunk);
        }
    }

    /// `z = f(x)` entry-wise, adding each column's $\sum\log f'$ to `logdet`. Columns run in
    /// parallel under `par`. (Allocates the `K x D` bin geometry; the
    /// [`Transform`](crate::transform::Transform) path keeps it in its workspace.)
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], par: Par) -> Result<()> {
        let mut ws = self.workspace_buffers()?;
        self.forward_in(x, z, logdet, &mut ws, par)
    }

    /// [`forward`](Self::forward) with the geometry buffer given.
    pub(crate) fn forward_in(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], ws: &mut SplineWorkspace<T>, par: Par) -> Result<()> {
        const OP: &str = "SplineActivation::forward";
        check_shape(OP, (self.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (x.ncols(), 1), (logdet.len(), 1))?;
        check_shape(OP, (self.cfg.bins * self.dim(), 1), (ws.bins.len(), 1))?;
        self.fill_geometry(0, &mut ws.bins, par.degree().max(1));
        let (k, bins, bound) = (self.cfg.bins, &ws.bins[..], T::from_f64(self.cfg.tail_bound));
        crate::util::par_cols(((x, z), logdet), par, &|((x, mut z), logdet): ((MatRef<'_, T>, MatMut<'_, T>), &mut [f64])| {
            for (j, ld) in logdet.iter_mut().enumerate() {
                let (xc, mut zc) = (x.col(j), z.as_mut().col_mut(j));
                let mut acc = 0.0f64;
                for (i, eb) in bins.chunks_exact(k).enumerate() {
                    let v = xc[i];
                    if v > -bound && v < bound {
                        let (zv, l) = kernel::value(&eb[kernel::find(eb, v)], v);
                        zc[i] = zv;
                        acc += l.as_f64();
                    } else {
                        zc[i] = v;
                    }
                }
                *ld += acc;
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
        crate::util::clear_upper_simd_state();
        let Rows { x, dz, mut dx, mut gw, mut gh, mut gd } = r;
        let cfg = &self.cfg;
        let (k, bound) = (cfg.bins, T::from_f64(cfg.tail_bound));
        let inv_b = -1.0 / x.ncols().max(1) as f64;
        let (fw, fh) = (2.0 * cfg.tail_bound * (1.0 - cfg.min_width * k as f64), 2.0 * cfg.tail_bound * (1.0 - cfg.min_height * k as f64));
        let mut bins = [Bin::<T>::default(); MAX_BINS];
        for li in 0..n {
            let kn = self.knots(i0 + li);
            kn.bins(&mut bins);
            let eb = &bins[..k];
            let mut acc = [BinPartials::default(); MAX_BINS];
            for j in 0..x.ncols() {
                let (v, g) = (x[(li, j)], dz[(li, j)]);
                dx[(li, j)] = if v > -bound && v < bound {
                    let b = kernel::find(eb, v);
                    kernel::grad(&eb[b], v, g, &mut acc[b])
                } else {
                    g
                };
            }
            // knots are prefix sums of the bin sizes: bin i's size moves every knot right
            // of it, so it collects the knot partials of all bins j > i
            let (mut gdx, mut gdy) = ([0.0; MAX_BINS], [0.0; MAX_BINS]);
            let (mut right_x, mut right_y) = (0.0, 0.0);
            for i in (0..k).rev() {
                gdx[i] = acc[i].dx + right_x;
                gdy[i] = acc[i].dy + right_y;
                right_x += acc[i].xk;
                right_y += acc[i].yk;
            }
            // through size_i = 2B (min + (1 - K min) softmax_i)
            let dotw: f64 = (0..k).map(|i| gdx[i] * kn.sw[i]).sum();
            let doth: f64 = (0..k).map(|i| gdy[i] * kn.sh[i]).sum();
            for i in 0..k {
                gw[(i, li)] = T::from_f64(inv_b * fw * kn.sw[i] * (gdx[i] - dotw));
                gh[(i, li)] = T::from_f64(inv_b * fh * kn.sh[i] * (gdy[i] - doth));
            }
            // interior slope q (knot q + 1) is the right slope of bin q and the left of q + 1
            for q in 0..k - 1 {
                gd[(q, li)] = T::from_f64(inv_b * (acc[q].c + acc[q + 1].a) * kn.sig[q]);
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
        let b = self.cfg.tail_bound;
        for i in 0..self.dim() {
            let kn = self.knots(i);
            for j in 0..z.ncols() {
                let y = z[(i, j)].as_f64();
                x[(i, j)] = T::from_f64(if y > -b && y < b { kernel::invert(&kn, y) } else { y });
            }
        }
        Ok(())
    }
}

/// The forward pass's buffer: every entry's bin geometry (`K x D` bins).
#[derive(Debug, Clone)]
pub(crate) struct SplineWorkspace<T> {
    bins: Vec<Bin<T>>,
}
