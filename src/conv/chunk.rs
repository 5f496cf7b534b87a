//! The sequential per-chunk kernels behind [`Conv2d`](super::Conv2d), and the fork-join
//! that runs them on contiguous column blocks of a batch.
//!
//! They are crate-visible so that a layer can run *all* of its convolutions for a chunk
//! of examples inside one parallel region (one fork-join per pass instead of one per
//! convolution), each chunk with its own scratch.

use faer::reborrow::ReborrowMut;
use faer::{Accum, ContiguousFwd, Mat, MatMut, MatRef, Par};

use super::im2col::{col2im_add, im2col, im2col_stacked, is_flat_shift};
use super::Conv2dGeometry;
use crate::real::Real;

pub(crate) type BatchRef<'a, T> = MatRef<'a, T, usize, usize, ContiguousFwd>;
pub(crate) type BatchMut<'a, T> = MatMut<'a, T, usize, usize, ContiguousFwd>;

/// Scratch of one chunk (one thread's share of the batch).
#[derive(Debug, Clone)]
pub(crate) struct Chunk<T: Real> {
    /// im2col (or its gradient) of a block of examples and one group, `n_b P x taps`.
    pub(crate) cols: Mat<T>,
    /// A block of outputs / output gradients stacked as `n_b P x C_out`.
    pub(crate) stacked: Mat<T>,
    /// A block of inputs stacked as `n_b HW x C_in` (flat-shift geometries only, else empty).
    pub(crate) xs: Mat<T>,
    /// This chunk's partial kernel gradient.
    pub(crate) dk: Mat<T>,
    /// Per-chunk partial reductions for callers (e.g. a squared norm, per-channel sums).
    pub(crate) scalar: f64,
    pub(crate) sums: Vec<f64>,
}

impl<T: Real> Chunk<T> {
    pub(crate) fn new(geom: &Conv2dGeometry, block: usize) -> Self {
        let (kr, kc) = geom.kernel_shape();
        let p = geom.out_positions();
        let xs = if is_flat_shift(geom) { Mat::zeros(block * p, geom.in_channels()) } else { Mat::zeros(0, 0) };
        Self { cols: Mat::zeros(block * p, kr), stacked: Mat::zeros(block * p, kc), xs, dk: Mat::zeros(kr, kc), scalar: 0.0, sums: vec![0.0; kc] }
    }
}

/// The plan-level constants every chunk kernel needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan<'a> {
    pub(crate) geom: &'a Conv2dGeometry,
    /// Examples per im2col block.
    pub(crate) block: usize,
}

#[inline]
pub(crate) fn gemm<T: Real>(dst: MatMut<'_, T>, accum: Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, alpha: T) {
    crate::util::gemm(dst, accum, lhs, rhs, alpha, Par::Seq);
}

/// im2col of examples `j0 .. j0 + nb` of `x`, group `g`, into `c.cols` (from the stacked
/// block `c.xs` on flat-shift geometries, which [`stack`] must have filled).
fn lower<T: Real>(geom: &Conv2dGeometry, flat: bool, x: BatchRef<'_, T>, j0: usize, nb: usize, g: usize, c: &mut Chunk<T>) {
    if flat {
        im2col_stacked(geom, &c.xs, nb, g, &mut c.cols, 0, 0);
    } else {
        let p = geom.out_positions();
        for e in 0..nb {
            im2col(geom, x.col(j0 + e).as_slice(), g, &mut c.cols, e * p);
        }
    }
}

/// Copy examples `j0 .. j0 + nb` of `a` (each a `P x C` column-major block) into the rows
/// `0 .. nb * P` of `stacked` (`n x C`).
pub(crate) fn stack<T: Real>(a: BatchRef<'_, T>, j0: usize, nb: usize, p: usize, stacked: &mut Mat<T>) {
    for o in 0..stacked.ncols() {
        let dst = stacked.col_as_slice_mut(o);
        for e in 0..nb {
            dst[e * p..(e + 1) * p].copy_from_slice(&a.col(j0 + e).as_slice()[o * p..(o + 1) * p]);
        }
    }
}

/// The inverse of [`stack`]: copy rows `0 .. nb * P` of `stacked` (`n x C`) into
/// examples `j0 .. j0 + nb` of `out`.
pub(crate) fn unstack<T: Real>(stacked: &Mat<T>, j0: usize, nb: usize, p: usize, mut out: BatchMut<'_, T>) {
    for e in 0..nb {
        let oj = out.rb_mut().col_mut(j0 + e).as_slice_mut();
        for o in 0..stacked.ncols() {
            oj[o * p..(o + 1) * p].copy_from_slice(&stacked.col_as_slice(o)[e * p..(e + 1) * p]);
        }
    }
}

/// im2col of group `g` of a block of `nb` stacked examples (`xs`, `nb * P x C_in`) into
/// rows `row0..` and columns `col0..` of `cols`, for flat-shift geometries
/// ([`Conv2dGeometry::is_self_transpose`] implies one).
pub(crate) fn lower_stacked<T: Real>(plan: Plan<'_>, xs: &Mat<T>, nb: usize, g: usize, cols: &mut Mat<T>, row0: usize, col0: usize) {
    im2col_stacked(plan.geom, xs, nb, g, cols, row0, col0);
}

/// `z = accum(z) + alpha * T(k) x` for the columns of one chunk.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_chunk<T: Real>(plan: Plan<'_>, c: &mut Chunk<T>, k: MatRef<'_, T>, x: BatchRef<'_, T>, mut z: BatchMut<'_, T>, alpha: T, accum: Accum) {
    let geom = plan.geom;
    let flat = is_flat_shift(geom);
    let (p, og) = (geom.out_positions(), geom.out_per_group());
    let mut j0 = 0;
    while j0 < x.ncols() {
        let nb = plan.block.min(x.ncols() - j0);
        let rows = nb * p;
        if flat {
            stack(x, j0, nb, p, &mut c.xs);
        }
        for g in 0..geom.groups() {
            lower(geom, flat, x, j0, nb, g, c);
            gemm(
                c.stacked.as_mut().subrows_mut(0, rows).subcols_mut(g * og, og),
                Accum::Replace,
                c.cols.as_ref().subrows(0, rows),
                k.subcols(g * og, og),
                T::from_f64(1.0),
            );
        }
        // unstack: example e, channel o is rows e*P.. of column o
        for e in 0..nb {
            let zj = z.rb_mut().col_mut(j0 + e).as_slice_mut();
            for o in 0..geom.out_channels() {
                let src = &c.stacked.col_as_slice(o)[e * p..(e + 1) * p];
                let dst = &mut zj[o * p..(o + 1) * p];
                match accum {
                    Accum::Replace => dst.iter_mut().zip(src).for_each(|(d, s)| *d = alpha * *s),
                    Accum::Add => dst.iter_mut().zip(src).for_each(|(d, s)| *d += alpha * *s),
                }
            }
        }
        j0 += nb;
    }
}

/// `dx = accum(dx) + alpha * T(k)^T dz` for one chunk. `flipped` is `flip(k)` when the
/// geometry is self-transposing (then this is a forward convolution), else `None` and
/// the general GEMM + col2im path runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grad_chunk<T: Real>(
    plan: Plan<'_>,
    c: &mut Chunk<T>,
    k: MatRef<'_, T>,
    flipped: Option<MatRef<'_, T>>,
    dz: BatchRef<'_, T>,
    mut dx: BatchMut<'_, T>,
    alpha: T,
    accum: Accum,
) {
    if let Some(fk) = flipped {
        return forward_chunk(plan, c, fk, dz, dx, alpha, accum);
    }
    let geom = plan.geom;
    let (p, og) = (geom.out_positions(), geom.out_per_group());
    let mut j0 = 0;
    while j0 < dz.ncols() {
        let nb = plan.block.min(dz.ncols() - j0);
        let rows = nb * p;
        stack(dz, j0, nb, p, &mut c.stacked);
        if matches!(accum, Accum::Replace) {
            for j in j0..j0 + nb {
                dx.rb_mut().col_mut(j).as_slice_mut().fill(T::from_f64(0.0));
            }
        }
        for g in 0..geom.groups() {
            // d(cols) = dZ_g k_g^T for the whole block, then im2col's adjoint per example
            gemm(
                c.cols.as_mut().subrows_mut(0, rows),
                Accum::Replace,
                c.stacked.as_ref().subrows(0, rows).subcols(g * og, og),
                k.subcols(g * og, og).transpose(),
                alpha,
            );
            for (e, j) in (j0..j0 + nb).enumerate() {
                col2im_add(geom, &c.cols, e * p, g, dx.rb_mut().col_mut(j).as_slice_mut());
            }
        }
        j0 += nb;
    }
}

/// `c.dk = sum over the chunk's examples of P(dz_b x_b^T)` (unscaled; see [`reduce_dk`]).
pub(crate) fn weight_grad_chunk<T: Real>(plan: Plan<'_>, c: &mut Chunk<T>, x: BatchRef<'_, T>, dz: BatchRef<'_, T>) {
    let geom = plan.geom;
    let flat = is_flat_shift(geom);
    let (p, og) = (geom.out_positions(), geom.out_per_group());
    c.dk.fill(T::from_f64(0.0));
    let mut j0 = 0;
    while j0 < x.ncols() {
        let nb = plan.block.min(x.ncols() - j0);
        let rows = nb * p;
        stack(dz, j0, nb, p, &mut c.stacked);
        if flat {
            stack(x, j0, nb, p, &mut c.xs);
        }
        for g in 0..geom.groups() {
            lower(geom, flat, x, j0, nb, g, c);
            gemm(
                c.dk.as_mut().subcols_mut(g * og, og),
                Accum::Add,
                c.cols.as_ref().subrows(0, rows).transpose(),
                c.stacked.as_ref().subrows(0, rows).subcols(g * og, og),
                T::from_f64(1.0),
            );
        }
        j0 += nb;
    }
}

/// `dk = accum(dk) + alpha * sum of the chunks' partial kernel gradients`.
pub(crate) fn reduce_dk<T: Real>(chunks: &[Chunk<T>], dk: MatMut<'_, T>, alpha: T, accum: Accum) {
    let mut dk = dk;
    for (n, c) in chunks.iter().enumerate() {
        let first = n == 0 && matches!(accum, Accum::Replace);
        faer::zip!(dk.rb_mut(), c.dk.as_ref()).for_each(|faer::unzip!(d, s)| *d = if first { alpha * *s } else { *d + alpha * *s });
    }
    if chunks.is_empty() && matches!(accum, Accum::Replace) {
        dk.fill(T::from_f64(0.0));
    }
}

/// Column-splittable bundles of batch views.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) trait Cols: Sized + Send {
    fn ncols(&self) -> usize;
    fn split(self, at: usize) -> (Self, Self);
}

impl<T: Real> Cols for BatchRef<'_, T> {
    fn ncols(&self) -> usize {
        MatRef::ncols(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col(at)
    }
}

impl<T: Real> Cols for BatchMut<'_, T> {
    fn ncols(&self) -> usize {
        MatMut::ncols(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col_mut(at)
    }
}

impl<A: Cols, B: Cols> Cols for (A, B) {
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn split(self, at: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(at);
        let (b0, b1) = self.1.split(at);
        ((a0, b0), (a1, b1))
    }
}

/// Splittable scratch: one slice of chunks, or a pair of equally long slices.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) trait Scratch: Sized + Send {
    fn len(&self) -> usize;
    fn split(self, at: usize) -> (Self, Self);
}

impl<C: Send> Scratch for &mut [C] {
    fn len(&self) -> usize {
        <[C]>::len(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_mut(at)
    }
}

impl<A: Scratch, B: Scratch> Scratch for (A, B) {
    fn len(&self) -> usize {
        self.0.len().min(self.1.len())
    }
    fn split(self, at: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(at);
        let (b0, b1) = self.1.split(at);
        ((a0, b0), (a1, b1))
    }
}

/// How many chunks a batch of `ncols` examples uses with `available` scratch chunks: at
/// most one per example, at least one; one without the `rayon` feature.
pub(crate) fn chunks_used(available: usize, ncols: usize) -> usize {
    if cfg!(feature = "rayon") {
        available.min(ncols.max(1))
    } else {
        available.min(1)
    }
}

/// Split the batch `s` into `used` contiguous column blocks and run `f` on each with its
/// own scratch (the first `used` entries of `scratch`), in parallel with `rayon::join`
/// (jobs on the stack, no allocation).
pub(crate) fn for_chunks<S: Cols, C: Scratch>(s: S, scratch: C, used: usize, f: &(impl Fn(S, C) + Sync)) {
    let (scratch, _) = scratch.split(used);
    split_run(s, scratch, f);
}

fn split_run<S: Cols, C: Scratch>(s: S, scratch: C, f: &(impl Fn(S, C) + Sync)) {
    #[cfg(feature = "rayon")]
    if scratch.len() > 1 {
        let n = scratch.len();
        let left = n / 2;
        let at = s.ncols() * left / n;
        let (a, b) = s.split(at);
        let (ca, cb) = scratch.split(left);
        rayon::join(|| split_run(a, ca, f), || split_run(b, cb, f));
        return;
    }
    crate::util::clear_upper_simd_state();
    f(s, scratch)
}
