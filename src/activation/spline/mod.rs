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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod geometry;
mod kernel;

use faer::{reborrow::ReborrowMut, Mat, MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use kernel::{block_len, field, padded_bins, BLOCK, PARTIALS};

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

    /// Number of [`BLOCK`]-entry blocks.
    fn blocks(&self) -> usize {
        self.dim().div_ceil(BLOCK)
    }

    /// Length of one block's geometry.
    fn block_len(&self) -> usize {
        block_len(padded_bins(self.cfg.bins))
    }

    /// Buffers for [`Transform::forward`](crate::transform::Transform::forward): the bin
    /// geometry of every entry, in blocks of [`BLOCK`] entries.
    pub(crate) fn workspace_buffers(&self) -> Result<SplineWorkspace<T>> {
        let n = self.blocks() * self.block_len();
        let mut geom = Vec::new();
        geom.try_reserve_exact(n).map_err(|_| Error::InvalidArgument {
            op: "SplineActivation::workspace",
            reason: format!("the geometry of {} entries cannot be allocated", self.dim()),
        })?;
        geom.resize(n, T::zero());
        let m = self.dim() * 3 * self.cfg.bins;
        let mut maps = Vec::new();
        maps.try_reserve_exact(m).map_err(|_| Error::InvalidArgument {
            op: "SplineActivation::workspace",
            reason: format!("the softmax weights of {} entries cannot be allocated", self.dim()),
        })?;
        maps.resize(m, 0.0);
        Ok(SplineWorkspace { geom, maps })
    }

    /// Fill the geometry of block `bi` (entries `BLOCK * bi ..`) into `block` and their
    /// [`Maps`] into `maps` (`3K` per entry); lanes past the last entry repeat the block's
    /// first.
    fn fill_block(&self, bi: usize, block: &mut [T], maps: &mut [f64]) {
        let (first, k, kp) = (bi * BLOCK, self.cfg.bins, padded_bins(self.cfg.bins));
        for lane in 0..BLOCK {
            let i = if first + lane < self.dim() { first + lane } else { first };
            let kn = self.knots(i);
            kn.fill_block(kp, lane, block);
            if let Some(m) = maps.get_mut(lane * 3 * k..(lane + 1) * 3 * k) {
                Maps::write(&kn, m);
            }
        }
    }

    /// Fill `geom` (blocks `b0 ..` in order) and `maps` from the parameters; blocks split
    /// over `threads`.
    fn fill_geometry(&self, b0: usize, geom: &mut [T], maps: &mut [f64], threads: usize) {
        let (bl, ml) = (self.block_len(), BLOCK * 3 * self.cfg.bins);
        #[cfg(feature = "rayon")]
        if threads > 1 && geom.len() / bl >= 2 {
            let mid = geom.len() / bl / 2;
            let (a, b) = geom.split_at_mut(mid * bl);
            let (ma, mb) = maps.split_at_mut((mid * ml).min(maps.len()));
            rayon::join(|| self.fill_geometry(b0, a, ma, threads / 2), || self.fill_geometry(b0 + mid, b, mb, threads - threads / 2));
            return;
        }
        let _ = threads;
        crate::util::clear_upper_simd_state();
        for (bi, block) in geom.chunks_exact_mut(bl).enumerate() {
            let m0 = (bi * ml).min(maps.len());
            let m1 = ((bi + 1) * ml).min(maps.len());
            self.fill_block(b0 + bi, block, &mut maps[m0..m1]);
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
        check_shape(OP, (self.blocks() * self.block_len(), 1), (ws.geom.len(), 1))?;
        self.fill_geometry(0, &mut ws.geom, &mut ws.maps, par.degree().max(1));
        let geom = &ws.geom[..];
        crate::util::par_cols(((x, z), logdet), par, &|((x, z), logdet): ((MatRef<'_, T>, MatMut<'_, T>), &mut [f64])| match padded_bins(self.cfg.bins) {
            4 => self.forward_cols::<4>(geom, x, z, logdet),
            5 => self.forward_cols::<5>(geom, x, z, logdet),
            8 => self.forward_cols::<8>(geom, x, z, logdet),
            _ => self.forward_cols::<16>(geom, x, z, logdet),
        });
        Ok(())
    }

    /// The forward pass over a range of columns: for each block of [`BLOCK`] entries
    /// (whose geometry stays in L1), every column.
    fn forward_cols<const KP: usize>(&self, geom: &[T], x: MatRef<'_, T>, mut z: MatMut<'_, T>, logdet: &mut [f64]) {
        crate::util::clear_upper_simd_state();
        let (d, bound) = (self.dim(), T::from_f64(self.cfg.tail_bound));
        let (mut xb, mut zb, mut ld) = ([T::zero(); BLOCK], [T::zero(); BLOCK], [T::zero(); BLOCK]);
        let fast = simd::<T>();
        let contiguous = x.row_stride() == 1 && z.row_stride() == 1;
        for (bi, g) in geom.chunks_exact(block_len(KP)).enumerate() {
            let g = kernel::geometry::<T, KP>(g);
            let (i0, n) = (bi * BLOCK, BLOCK.min(d - bi * BLOCK));
            for (j, lj) in logdet.iter_mut().enumerate() {
                if contiguous {
                    if j + PREFETCH < x.ncols() {
                        prefetch(&col_slice(x, j + PREFETCH)[i0..i0 + n]);
                    }
                    let (xs, zs) = (col_slice(x, j), col_slice_mut(z.rb_mut(), j));
                    *lj += forward_block(fast, g, bound, &xs[i0..i0 + n], &mut zs[i0..i0 + n], &mut ld);
                } else {
                    (0..n).for_each(|l| xb[l] = x[(i0 + l, j)]);
                    *lj += forward_block(fast, g, bound, &xb[..n], &mut zb[..n], &mut ld);
                    (0..n).for_each(|l| z[(i0 + l, j)] = zb[l]);
                }
            }
        }
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
        self.backward_with(x, dz, dx, grads, None, par)
    }

    /// [`backward`](Self::backward), reusing the geometry and softmax weights the last
    /// forward pass left in `ws` (same parameters) instead of recomputing them.
    pub(crate) fn backward_with(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut SplineGrads<T>,
        ws: Option<&SplineWorkspace<T>>,
        par: Par,
    ) -> Result<()> {
        const OP: &str = "SplineActivation::backward";
        if let Some(ws) = ws {
            check_shape(OP, (self.blocks() * self.block_len(), 1), (ws.geom.len(), 1))?;
            check_shape(OP, (self.dim() * 3 * self.cfg.bins, 1), (ws.maps.len(), 1))?;
        }
        let rows = Rows { x, dz, dx, gw: grads.w.as_mut(), gh: grads.h.as_mut(), gd: grads.d.as_mut() };
        self.backward_rows(0, rows, ws, par.degree().max(1));
        Ok(())
    }

    /// Entries `i0 ..` (a multiple of [`BLOCK`]), split over `threads` at block boundaries.
    fn backward_rows(&self, i0: usize, r: Rows<'_, T>, ws: Option<&SplineWorkspace<T>>, threads: usize) {
        let n = r.x.nrows();
        #[cfg(feature = "rayon")]
        if threads > 1 && n >= 2 * BLOCK {
            let mid = n.div_ceil(2 * BLOCK) * BLOCK;
            let (a, b) = r.split(mid);
            rayon::join(|| self.backward_rows(i0, a, ws, threads / 2), || self.backward_rows(i0 + mid, b, ws, threads - threads / 2));
            return;
        }
        let _ = threads;
        match padded_bins(self.cfg.bins) {
            4 => self.backward_leaf::<4>(i0, r, ws),
            5 => self.backward_leaf::<5>(i0, r, ws),
            8 => self.backward_leaf::<8>(i0, r, ws),
            _ => self.backward_leaf::<16>(i0, r, ws),
        }
    }

    /// The backward pass of the entries `i0 ..` in `r`, [`BLOCK`] at a time: the block's
    /// geometry on the stack, the per-bin partials summed over the batch per entry, then
    /// mapped through the softmaxes and sigmoids once per entry.
    fn backward_leaf<const KP: usize>(&self, i0: usize, r: Rows<'_, T>, ws: Option<&SplineWorkspace<T>>) {
        crate::util::clear_upper_simd_state();
        let n = r.x.nrows();
        let Rows { x, dz, mut dx, mut gw, mut gh, mut gd } = r;
        let cfg = &self.cfg;
        let (k, bound) = (cfg.bins, T::from_f64(cfg.tail_bound));
        let inv_b = -1.0 / x.ncols().max(1) as f64;
        let (fw, fh) = (2.0 * cfg.tail_bound * (1.0 - cfg.min_width * k as f64), 2.0 * cfg.tail_bound * (1.0 - cfg.min_height * k as f64));
        let mut gbuf = [T::zero(); field::N * MAX_BINS * BLOCK];
        let mut abuf = [T::zero(); PARTIALS * MAX_BINS * BLOCK];
        let acc = kernel::partials::<T, KP>(&mut abuf);
        let mut mbuf = [0.0; 3 * MAX_BINS * BLOCK];
        let (mut xb, mut zb, mut db) = ([T::zero(); BLOCK], [T::zero(); BLOCK], [T::zero(); BLOCK]);
        let fast = simd::<T>();
        let contiguous = x.row_stride() == 1 && dz.row_stride() == 1 && dx.row_stride() == 1;
        for r0 in (0..n).step_by(BLOCK) {
            let nb = BLOCK.min(n - r0);
            let (e0, ml) = (i0 + r0, 3 * k);
            let (g, maps) = match ws {
                // i0 and r0 are multiples of BLOCK: the forward pass's block (e0 / BLOCK)
                Some(ws) => (kernel::geometry::<T, KP>(&ws.geom[e0 / BLOCK * block_len(KP)..]), &ws.maps[e0 * ml..(e0 + nb) * ml]),
                None => {
                    for lane in 0..BLOCK {
                        let kn = self.knots(e0 + if lane < nb { lane } else { 0 });
                        kn.fill_block(KP, lane, &mut gbuf);
                        Maps::write(&kn, &mut mbuf[lane * ml..(lane + 1) * ml]);
                    }
                    (kernel::geometry::<T, KP>(&gbuf), &mbuf[..nb * ml])
                }
            };
            acc.iter_mut().flatten().flatten().for_each(|a| *a = T::zero());
            for j in 0..x.ncols() {
                if contiguous {
                    if j + PREFETCH < x.ncols() {
                        prefetch(&col_slice(x, j + PREFETCH)[r0..r0 + nb]);
                        prefetch(&col_slice(dz, j + PREFETCH)[r0..r0 + nb]);
                    }
                    let (xs, zs, ds) = (col_slice(x, j), col_slice(dz, j), col_slice_mut(dx.rb_mut(), j));
                    backward_block(fast, g, bound, &xs[r0..r0 + nb], &zs[r0..r0 + nb], &mut ds[r0..r0 + nb], acc);
                } else {
                    (0..nb).for_each(|l| (xb[l], zb[l]) = (x[(r0 + l, j)], dz[(r0 + l, j)]));
                    backward_block(fast, g, bound, &xb[..nb], &zb[..nb], &mut db[..nb], acc);
                    (0..nb).for_each(|l| dx[(r0 + l, j)] = db[l]);
                }
            }
            for (lane, m) in maps.chunks_exact(ml).enumerate() {
                let li = r0 + lane;
                let (sw, sh, sig) = (&m[..k], &m[k..2 * k], &m[2 * k..]);
                let part = |p: usize, b: usize| acc[p][b][lane].as_f64();
                // knots are prefix sums of the bin sizes: bin i's size moves every knot right
                // of it, so it collects the knot partials (x_k: 0, y_k: 2) of all bins j > i
                let (mut gdx, mut gdy) = ([0.0; MAX_BINS], [0.0; MAX_BINS]);
                let (mut right_x, mut right_y) = (0.0, 0.0);
                for i in (0..k).rev() {
                    gdx[i] = part(1, i) + right_x;
                    gdy[i] = part(3, i) + right_y;
                    right_x += part(0, i);
                    right_y += part(2, i);
                }
                // through size_i = 2B (min + (1 - K min) softmax_i)
                let dotw: f64 = (0..k).map(|i| gdx[i] * sw[i]).sum();
                let doth: f64 = (0..k).map(|i| gdy[i] * sh[i]).sum();
                for i in 0..k {
                    gw[(i, li)] = T::from_f64(inv_b * fw * sw[i] * (gdx[i] - dotw));
                    gh[(i, li)] = T::from_f64(inv_b * fh * sh[i] * (gdy[i] - doth));
                }
                // interior slope q (knot q + 1) is the right slope (c: 5) of bin q and the
                // left (a: 4) of bin q + 1
                for q in 0..k - 1 {
                    gd[(q, li)] = T::from_f64(inv_b * (part(5, q) + part(4, q + 1)) * sig[q]);
                }
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
    geom: Vec<T>,
    /// [`Maps`] of every entry, `3K` each
    maps: Vec<f64>,
}

/// What the backward pass needs of an entry's knots besides the geometry, to map the
/// per-bin partials to the parameters: the two softmaxes and the slopes' sigmoids, packed
/// `[sw (K), sh (K), sig (K - 1), unused]`.
struct Maps;

impl Maps {
    fn write(kn: &geometry::Knots, out: &mut [f64]) {
        let k = kn.k;
        out[..k].copy_from_slice(&kn.sw[..k]);
        out[k..2 * k].copy_from_slice(&kn.sh[..k]);
        out[2 * k..3 * k - 1].copy_from_slice(&kn.sig[..k - 1]);
    }
}

/// Which kernels a pass runs: the generic ones, or for `f32` the AVX2 or AVX-512 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Generic,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// The widest intrinsic kernels that apply: `T` is `f32` and the CPU has AVX-512F, or AVX2
/// and FMA.
fn simd<T: Real>() -> Simd {
    #[cfg(target_arch = "x86_64")]
    if is::<T, f32>() {
        if crate::util::has_avx512f() {
            return Simd::Avx512;
        }
        if crate::util::has_avx2_fma() {
            return Simd::Avx2;
        }
    }
    Simd::Generic
}

/// Whether `T` and `U` are the same type (a constant after monomorphisation, unlike a
/// downcast through `dyn Any`, which is a virtual call).
#[cfg(target_arch = "x86_64")]
fn is<T: 'static, U: 'static>() -> bool {
    core::any::TypeId::of::<T>() == core::any::TypeId::of::<U>()
}

/// `v` as a `&U` when `T` and `U` are the same type.
#[cfg(target_arch = "x86_64")]
fn same<T: 'static, U: 'static>(v: &T) -> Option<&U> {
    // SAFETY: T is U
    is::<T, U>().then(|| unsafe { &*(v as *const T).cast::<U>() })
}

/// `v` as a `&mut U` when `T` and `U` are the same type.
#[cfg(target_arch = "x86_64")]
fn same_mut<T: 'static, U: 'static>(v: &mut T) -> Option<&mut U> {
    // SAFETY: T is U
    is::<T, U>().then(|| unsafe { &mut *(v as *mut T).cast::<U>() })
}

/// `s` as an `f32` slice when `T` is `f32` (slices cannot go through `Any`).
#[cfg(target_arch = "x86_64")]
fn f32s<T: Real>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32, so this only renames the element type
    is::<T, f32>().then(|| unsafe { core::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
}

/// [`f32s`], mutable.
#[cfg(target_arch = "x86_64")]
fn f32s_mut<T: Real>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: T is f32, so this only renames the element type
    is::<T, f32>().then(|| unsafe { core::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
}

/// One block and column of the forward pass with the kernels `fast` names ([`simd`]).
#[inline(always)]
fn forward_block<T: Real, const KP: usize>(fast: Simd, g: &kernel::Geometry<T, KP>, bound: T, x: &[T], z: &mut [T], ld: &mut [T; BLOCK]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if fast != Simd::Generic {
        if let (Some(g), Some(&b), Some(x), Some(z), Some(ld)) = (same(g), same(&bound), f32s(x), f32s_mut(z), same_mut(ld)) {
            // SAFETY: `fast` names instructions the CPU has ([`simd`]), all the kernels require
            return unsafe {
                match fast {
                    Simd::Avx512 => avx512::forward::<KP>(g, b, x, z, ld),
                    _ => avx2::forward::<KP>(g, b, x, z, ld),
                }
            };
        }
    }
    let _ = fast;
    kernel::forward(g, bound, x, z, ld)
}

/// One block and column of the backward pass with the kernels `fast` names.
#[inline(always)]
fn backward_block<T: Real, const KP: usize>(
    fast: Simd,
    g: &kernel::Geometry<T, KP>,
    bound: T,
    x: &[T],
    gz: &[T],
    dx: &mut [T],
    acc: &mut kernel::Partials<T, KP>,
) {
    #[cfg(target_arch = "x86_64")]
    if fast != Simd::Generic {
        if let (Some(g), Some(&b), Some(x), Some(gz), Some(dx), Some(acc)) = (same(g), same(&bound), f32s(x), f32s(gz), f32s_mut(dx), same_mut(acc)) {
            // SAFETY: as in `forward_block`
            unsafe {
                match fast {
                    Simd::Avx512 => avx512::backward::<KP>(g, b, x, gz, dx, acc),
                    _ => avx2::backward::<KP>(g, b, x, gz, dx, acc),
                }
            }
            return;
        }
    }
    let _ = fast;
    kernel::backward(0, g, bound, x, gz, dx, acc)
}

/// Column `j` of a matrix whose columns are contiguous.
fn col_slice<T: Real>(m: MatRef<'_, T>, j: usize) -> &[T] {
    m.col(j).try_as_col_major().map(|c| c.as_slice()).unwrap_or(&[])
}

/// Column `j` of a matrix whose columns are contiguous, mutable.
fn col_slice_mut<T: Real>(m: MatMut<'_, T>, j: usize) -> &mut [T] {
    m.col_mut(j).try_as_col_major_mut().map(|c| c.as_slice_mut()).unwrap_or(&mut [])
}

/// How many columns ahead the spline kernels prefetch: a block reads a few cache lines per
/// column, one column's length apart, a stride the hardware prefetchers follow poorly
/// (the backward kernel spent 40 % of its time waiting on those loads).
const PREFETCH: usize = 4;

/// Hint the cache lines of `s` into L1.
#[inline(always)]
fn prefetch<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = core::mem::size_of_val(s);
        let p = s.as_ptr().cast::<i8>();
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch is a hint that never faults; the address lies inside `s`
            unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A deterministic value in `[-s, s]` for index `i`.
    fn val(i: usize, s: f64) -> f64 {
        s * ((i as f64 * 12.9898 + 0.5).sin() * 43758.5453).fract()
    }

    fn spline(k: usize, d: usize) -> SplineActivation<f32> {
        let cfg = SplineConfig { bins: k, ..SplineConfig::default() };
        let w = Mat::from_fn(k, d, |i, j| val(i * 131 + j, 1.5) as f32);
        let h = Mat::from_fn(k, d, |i, j| val(i * 137 + j + 7000, 1.5) as f32);
        let s = Mat::from_fn(k - 1, d, |i, j| (cfg.unit_derivative_param() + val(i * 139 + j + 9000, 1.0)) as f32);
        SplineActivation::from_parts(cfg, w, h, s).unwrap()
    }

    fn check<const KP: usize>(k: usize, level: Simd) {
        let d = 45; // a full block of 32 and a partial one of 13 (not a multiple of 8 or 16)
        let f = spline(k, d);
        assert_eq!(padded_bins(k), KP);
        let bound = f.cfg.tail_bound as f32;
        let mut ws = f.workspace_buffers().unwrap();
        f.fill_geometry(0, &mut ws.geom, &mut ws.maps, 1);
        for (bi, gflat) in ws.geom.chunks_exact(block_len(KP)).enumerate() {
            let g = kernel::geometry::<f32, KP>(gflat);
            let n = BLOCK.min(d - bi * BLOCK);
            for col in 0..6 {
                // inputs across the whole range, some outside the bound, and a NaN
                let x: Vec<f32> = (0..n).map(|i| if i == 5 && col == 1 { f32::NAN } else { val(bi * 1000 + col * 50 + i, 12.0) as f32 }).collect();
                let gz: Vec<f32> = (0..n).map(|i| val(bi * 3000 + col * 70 + i, 2.0) as f32).collect();
                let (mut z1, mut z2) = (vec![0.0f32; n], vec![0.0f32; n]);
                let (mut l1, mut l2) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
                let s1 = forward_block(level, g, bound, &x, &mut z1, &mut l1);
                let s2 = forward_block(Simd::Generic, g, bound, &x, &mut z2, &mut l2);
                assert_eq!(s1.to_bits(), s2.to_bits(), "log-det sum, k = {k}, {level:?}");
                assert!(z1.iter().zip(&z2).all(|(a, b)| a.to_bits() == b.to_bits()), "values, k = {k}, {level:?}");
                let (mut d1, mut d2) = (vec![0.0f32; n], vec![0.0f32; n]);
                let mut a1 = [[[0.0f32; BLOCK]; KP]; PARTIALS];
                let mut a2 = a1;
                backward_block(level, g, bound, &x, &gz, &mut d1, &mut a1);
                backward_block(Simd::Generic, g, bound, &x, &gz, &mut d2, &mut a2);
                assert!(d1.iter().zip(&d2).all(|(a, b)| a.to_bits() == b.to_bits()), "input deltas, k = {k}, {level:?}");
                let (f1, f2) = (a1.as_flattened().as_flattened(), a2.as_flattened().as_flattened());
                assert!(f1.iter().zip(f2).all(|(a, b)| a.to_bits() == b.to_bits()), "bin partials, k = {k}, {level:?}");
                // the partials are not all zero (the comparison means something)
                assert!(f1.iter().any(|v| *v != 0.0));
            }
        }
    }

    /// The AVX2 and AVX-512 `f32` kernels do the generic kernels' operations in the same
    /// order, so their results are identical to the bit (including NaN and out-of-bound
    /// inputs and a block whose length is not a multiple of eight or sixteen), for every
    /// padded bin count. Each runs where the CPU has its instructions; on a CPU with
    /// neither there is no second kernel and only the dispatch is checked.
    #[test]
    fn simd_kernels_equal_the_generic_ones_bit_for_bit() {
        assert_eq!(simd::<f64>(), Simd::Generic);
        let mut levels = vec![];
        if crate::util::has_avx2_fma() {
            levels.push(Simd::Avx2);
        }
        if crate::util::has_avx512f() {
            levels.push(Simd::Avx512);
        }
        if levels.is_empty() {
            assert_eq!(simd::<f32>(), Simd::Generic);
        }
        for level in levels {
            check::<4>(3, level);
            check::<5>(5, level);
            check::<8>(7, level);
            check::<16>(12, level);
        }
    }

    /// The transform path's backward (geometry and softmax weights from the forward pass's
    /// workspace) equals the stand-alone one (recomputed), including a dimension that
    /// splits into unequal halves over two threads.
    #[test]
    fn backward_from_the_workspace_equals_the_recomputed_one() {
        for (k, d) in [(5, 784), (3, 45), (12, 70)] {
            let f = spline(k, d);
            let b = 7;
            let x = Mat::from_fn(d, b, |i, j| val(i * 31 + j, 11.0) as f32);
            let gz = Mat::from_fn(d, b, |i, j| val(i * 37 + j + 500, 1.0) as f32);
            let mut ws = f.workspace_buffers().unwrap();
            let (mut z, mut ld) = (Mat::zeros(d, b), vec![0.0; b]);
            f.forward_in(x.as_ref(), z.as_mut(), &mut ld, &mut ws, Par::rayon(2)).unwrap();
            let (mut d1, mut d2) = (Mat::zeros(d, b), Mat::zeros(d, b));
            let (mut g1, mut g2) = (f.zero_grads(), f.zero_grads());
            f.backward_with(x.as_ref(), gz.as_ref(), d1.as_mut(), &mut g1, Some(&ws), Par::rayon(2)).unwrap();
            f.backward(x.as_ref(), gz.as_ref(), d2.as_mut(), &mut g2, Par::Seq).unwrap();
            assert_eq!(d1, d2);
            assert_eq!((&g1.w, &g1.h, &g1.d), (&g2.w, &g2.h, &g2.d));
        }
    }
}
