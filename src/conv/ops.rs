//! The batched convolution and its two gradients, on faer GEMM, parallel over the batch.

use faer::reborrow::ReborrowMut;
use faer::{Accum, ContiguousFwd, Mat, MatMut, MatRef, Par};

use super::im2col::{col2im_add, im2col, im2col_stacked, is_flat_shift};
use super::Conv2dGeometry;
use crate::error::{check_shape, Error, Result};
use crate::real::Real;

type BatchRef<'a, T> = MatRef<'a, T, usize, usize, ContiguousFwd>;
type BatchMut<'a, T> = MatMut<'a, T, usize, usize, ContiguousFwd>;

/// A convolution "plan": a validated [`Conv2dGeometry`] plus the scratch buffers its
/// three operations need, so that none of them allocates.
///
/// With $\mathcal T(k)$ the `out_len x in_len` matrix of the convolution (see
/// [`conv_matrix`](super::conv_matrix)) and batches as matrices with one example per
/// column (unit row stride):
///
/// | method | computes |
/// |---|---|
/// | [`forward`](Self::forward) | $Z = \mathcal T(k)X$ |
/// | [`input_grad`](Self::input_grad) | $dX \mathrel{(+)}= \alpha\,\mathcal T(k)^T dZ$ |
/// | [`weight_grad`](Self::weight_grad) | $dk \mathrel{(+)}= \alpha\,\sum_b P(dZ_b X_b^T)$ |
///
/// where $P$ maps a matrix onto kernel space by summing the entries at the positions each
/// kernel element occupies in $\mathcal T$ ([`project_onto_kernel`](super::project_onto_kernel)),
/// so `weight_grad` is the gradient of $\sum_b dZ_b^T\mathcal T(k)X_b$ with respect to $k$.
///
/// **Scheme.** The batch is split into `par.degree()` contiguous chunks run with
/// `rayon::join`, each with its own scratch. A chunk is processed in blocks of $n_b$
/// examples ($n_b P\cdot C_gK_HK_W \approx 2^{17}$ scalars): im2col stacks the block into
/// one `n_b P x (C_g KH KW)` matrix per group, so each operation is **one** GEMM per group
/// and block (with $n_bP$ rows: large enough for faer's kernels even at 7x7 images), not
/// one small GEMM per example. For stride 1 with output size = input size ("same"), each
/// im2col column is a flat shift of an input channel (one `memcpy` plus border zeroing),
/// and when $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$ the input gradient is a forward
/// convolution with the flipped kernel, so no col2im scatter is needed. The kernel
/// gradient sums per-chunk partials at the end.
///
/// # Example
/// ```
/// use snf::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
/// use faer::{Mat, Par};
/// let geom = Conv2dGeometry::new(Conv2dSpec::same(1, [3, 3], [3, 3]))?;
/// let mut conv = Conv2d::<f64>::new(geom, Par::Seq);
/// // the Dirac kernel (a 1 at the centre tap) is the identity
/// let mut k = Mat::zeros(9, 1);
/// k[(4, 0)] = 1.0;
/// let x = Mat::from_fn(9, 2, |i, j| (i * 2 + j) as f64);
/// let mut z = Mat::zeros(9, 2);
/// conv.forward(k.as_ref(), x.as_ref(), z.as_mut())?;
/// assert_eq!(z, x);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv2d<T: Real> {
    geom: Conv2dGeometry,
    par: Par,
    /// Examples per im2col block.
    block: usize,
    chunks: Vec<Chunk<T>>,
    /// flip(k), for input gradients of self-transposing geometries.
    flipped: Option<Mat<T>>,
}

#[derive(Debug, Clone)]
struct Chunk<T: Real> {
    /// im2col (or its gradient) of a block of examples and one group, `n_b P x taps`.
    cols: Mat<T>,
    /// A block of outputs / output gradients stacked as `n_b P x C_out`.
    stacked: Mat<T>,
    /// A block of inputs stacked as `n_b HW x C_in` (flat-shift geometries only, else empty).
    xs: Mat<T>,
    /// This chunk's partial kernel gradient.
    dk: Mat<T>,
}

/// Target size (scalars) of one im2col block.
const BLOCK_ELEMS: usize = 1 << 17;

impl<T: Real> Conv2d<T> {
    /// Allocate the scratch for `geom`: per chunk (`par.degree()` of them) one im2col
    /// block, one stacked output block and one kernel-sized accumulator.
    pub fn new(geom: Conv2dGeometry, par: Par) -> Self {
        let n = par.degree().max(1);
        let (kr, kc) = geom.kernel_shape();
        let p = geom.out_positions();
        let block = (BLOCK_ELEMS / (p * geom.taps()).max(1)).max(1);
        let xs = if is_flat_shift(&geom) { Mat::zeros(block * p, geom.in_channels()) } else { Mat::zeros(0, 0) };
        let chunk = Chunk { cols: Mat::zeros(block * p, kr), stacked: Mat::zeros(block * p, kc), xs, dk: Mat::zeros(kr, kc) };
        let flipped = geom.is_self_transpose().then(|| Mat::zeros(kr, kc));
        Self { geom, par, block, chunks: vec![chunk; n], flipped }
    }

    /// The geometry.
    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geom
    }
    /// The parallelism.
    pub fn par(&self) -> Par {
        self.par
    }

    fn check_kernel(&self, op: &'static str, k: (usize, usize)) -> Result<()> {
        check_shape(op, self.geom.kernel_shape(), k)
    }

    /// $Z = \mathcal T(k)X$: `x` is `in_len x B`, `z` is `out_len x B`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] on wrong shapes, [`Error::InvalidArgument`] if `x` or `z`
    /// does not have unit row stride.
    pub fn forward(&mut self, k: MatRef<'_, T>, x: MatRef<'_, T>, z: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "Conv2d::forward";
        self.check_kernel(OP, (k.nrows(), k.ncols()))?;
        let b = x.ncols();
        check_shape(OP, (self.geom.in_len(), b), (x.nrows(), b))?;
        check_shape(OP, (self.geom.out_len(), b), (z.nrows(), z.ncols()))?;
        let x = contiguous(OP, x)?;
        let z = contiguous_mut(OP, z)?;
        forward_impl(&self.geom, self.block, &mut self.chunks, k, x, z, T::from_f64(1.0), Accum::Replace);
        Ok(())
    }

    /// $dX = \alpha\,\mathcal T(k)^T dZ$ (`accum = Replace`) or $dX \mathrel{+}= \alpha\,\mathcal T(k)^T dZ$
    /// (`Add`): the input gradient. `dz` is `out_len x B`, `dx` is `in_len x B`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn input_grad(
        &mut self,
        k: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        alpha: T,
        accum: Accum,
    ) -> Result<()> {
        const OP: &str = "Conv2d::input_grad";
        self.check_kernel(OP, (k.nrows(), k.ncols()))?;
        let b = dz.ncols();
        check_shape(OP, (self.geom.out_len(), b), (dz.nrows(), b))?;
        check_shape(OP, (self.geom.in_len(), b), (dx.nrows(), dx.ncols()))?;
        let dz = contiguous(OP, dz)?;
        let dx = contiguous_mut(OP, dx)?;
        let geom = &self.geom;
        if let Some(fk) = self.flipped.as_mut() {
            // T(k)^T = T(flip k) in this very geometry: a forward convolution.
            super::flip_into(geom, k, fk.as_mut())?;
            forward_impl(geom, self.block, &mut self.chunks, fk.as_ref(), dz, dx, alpha, accum);
            return Ok(());
        }
        let block = self.block;
        for_chunks((dz, dx), &mut self.chunks, &|(dz, mut dx): (BatchRef<'_, T>, BatchMut<'_, T>), c: &mut Chunk<T>| {
            let (p, og) = (geom.out_positions(), geom.out_per_group());
            let mut j0 = 0;
            while j0 < dz.ncols() {
                let nb = block.min(dz.ncols() - j0);
                stack(dz, j0, nb, p, &mut c.stacked);
                for j in j0..j0 + nb {
                    if matches!(accum, Accum::Replace) {
                        dx.rb_mut().col_mut(j).as_slice_mut().fill(T::from_f64(0.0));
                    }
                }
                for g in 0..geom.groups() {
                    // d(cols) = dZ_g k_g^T for the whole block, then im2col's adjoint per example
                    let rows = nb * p;
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
        });
        Ok(())
    }

    /// $dk = \alpha\sum_b P(dZ_b X_b^T)$ (`Replace`) or $dk \mathrel{+}= \ldots$ (`Add`): the
    /// kernel gradient of $\sum_b dZ_b^T\,\mathcal T(k)\,X_b$. `x` is `in_len x B`, `dz` is
    /// `out_len x B`, `dk` has the kernel shape.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn weight_grad(
        &mut self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dk: MatMut<'_, T>,
        alpha: T,
        accum: Accum,
    ) -> Result<()> {
        const OP: &str = "Conv2d::weight_grad";
        self.check_kernel(OP, (dk.nrows(), dk.ncols()))?;
        let b = x.ncols();
        check_shape(OP, (self.geom.in_len(), b), (x.nrows(), b))?;
        check_shape(OP, (self.geom.out_len(), b), (dz.nrows(), dz.ncols()))?;
        let x = contiguous(OP, x)?;
        let dz = contiguous(OP, dz)?;
        let geom = &self.geom;
        let block = self.block;
        let flat = is_flat_shift(geom);
        let used = for_chunks((x, dz), &mut self.chunks, &|(x, dz): (BatchRef<'_, T>, BatchRef<'_, T>), c: &mut Chunk<T>| {
            let (p, og) = (geom.out_positions(), geom.out_per_group());
            c.dk.fill(T::from_f64(0.0));
            let mut j0 = 0;
            while j0 < x.ncols() {
                let nb = block.min(x.ncols() - j0);
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
        });
        let mut dk = dk;
        for (n, c) in self.chunks[..used].iter().enumerate() {
            let first = n == 0 && matches!(accum, Accum::Replace);
            faer::zip!(dk.rb_mut(), c.dk.as_ref()).for_each(|faer::unzip!(d, s)| {
                *d = if first { alpha * *s } else { *d + alpha * *s }
            });
        }
        Ok(())
    }
}

/// `z = accum(z) + alpha * T(k) x` over all chunks and blocks.
#[allow(clippy::too_many_arguments)]
fn forward_impl<T: Real>(
    geom: &Conv2dGeometry,
    block: usize,
    chunks: &mut [Chunk<T>],
    k: MatRef<'_, T>,
    x: BatchRef<'_, T>,
    z: BatchMut<'_, T>,
    alpha: T,
    accum: Accum,
) {
    let flat = is_flat_shift(geom);
    for_chunks((x, z), chunks, &|(x, mut z): (BatchRef<'_, T>, BatchMut<'_, T>), c: &mut Chunk<T>| {
        let (p, og) = (geom.out_positions(), geom.out_per_group());
        let mut j0 = 0;
        while j0 < x.ncols() {
            let nb = block.min(x.ncols() - j0);
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
                        Accum::Add => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *d + alpha * *s),
                    }
                }
            }
            j0 += nb;
        }
    });
}

/// im2col of examples `j0 .. j0 + nb` of `x`, group `g`, into `c.cols` (from the stacked
/// block `c.xs` on flat-shift geometries, which `stack` must have filled).
fn lower<T: Real>(geom: &Conv2dGeometry, flat: bool, x: BatchRef<'_, T>, j0: usize, nb: usize, g: usize, c: &mut Chunk<T>) {
    if flat {
        im2col_stacked(geom, &c.xs, nb, g, &mut c.cols);
    } else {
        let p = geom.out_positions();
        for e in 0..nb {
            im2col(geom, x.col(j0 + e).as_slice(), g, &mut c.cols, e * p);
        }
    }
}

/// Copy examples `j0 .. j0 + nb` of `a` (each a `P x C` column-major block) into the rows
/// `0 .. nb * P` of `stacked` (`n x C`).
fn stack<T: Real>(a: BatchRef<'_, T>, j0: usize, nb: usize, p: usize, stacked: &mut Mat<T>) {
    for o in 0..stacked.ncols() {
        let dst = stacked.col_as_slice_mut(o);
        for e in 0..nb {
            dst[e * p..(e + 1) * p].copy_from_slice(&a.col(j0 + e).as_slice()[o * p..(o + 1) * p]);
        }
    }
}

#[inline]
fn gemm<T: Real>(dst: MatMut<'_, T>, accum: Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, alpha: T) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, Par::Seq);
}

fn contiguous<'a, T: Real>(op: &'static str, a: MatRef<'a, T>) -> Result<BatchRef<'a, T>> {
    a.try_as_col_major().ok_or_else(|| not_contiguous(op))
}

fn contiguous_mut<'a, T: Real>(op: &'static str, a: MatMut<'a, T>) -> Result<BatchMut<'a, T>> {
    a.try_as_col_major_mut().ok_or_else(|| not_contiguous(op))
}

fn not_contiguous(op: &'static str) -> Error {
    Error::InvalidArgument { op, reason: "batch matrices must have unit row stride (one contiguous column per example)".into() }
}

/// Column-splittable pairs of batch views.
trait Cols: Sized + Send {
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

/// Split the batch `s` into `chunks.len()` contiguous column blocks (the first
/// `min(len, ncols)` chunks get at least one column each) and run `f` on each with its
/// own chunk scratch, in parallel with `rayon::join` (no allocation). Returns how many
/// chunks ran (at least one, even for an empty batch).
fn for_chunks<S: Cols, C: Send>(s: S, chunks: &mut [C], f: &(impl Fn(S, &mut C) + Sync)) -> usize {
    let n = chunks.len();
    let used = if cfg!(feature = "rayon") { n.min(s.ncols().max(1)) } else { n.min(1) };
    split_run(s, &mut chunks[..used], f);
    used
}

fn split_run<S: Cols, C: Send>(s: S, chunks: &mut [C], f: &(impl Fn(S, &mut C) + Sync)) {
    #[cfg(feature = "rayon")]
    if chunks.len() > 1 {
        let left = chunks.len() / 2;
        let at = s.ncols() * left / chunks.len();
        let (a, b) = s.split(at);
        let (ca, cb) = chunks.split_at_mut(left);
        rayon::join(|| split_run(a, ca, f), || split_run(b, cb, f));
        return;
    }
    if let Some(c) = chunks.first_mut() {
        f(s, c)
    }
}
