//! The batched convolution and its two gradients, on faer GEMM, parallel over the batch.

use faer::reborrow::ReborrowMut;
use faer::{Accum, ContiguousFwd, Mat, MatMut, MatRef, Par};

use super::im2col::{col2im_add, im2col};
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
/// Each example is lowered with im2col to a `P x (C_g KH KW)` matrix per group and
/// multiplied by that group's kernel columns with faer's GEMM; the batch is split into
/// `par.degree()` contiguous chunks run with `rayon::join`, each with its own scratch
/// (and, for `weight_grad`, its own partial kernel gradient, summed at the end).
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
    chunks: Vec<Chunk<T>>,
}

#[derive(Debug, Clone)]
struct Chunk<T: Real> {
    /// im2col (or its gradient) of one example and group, `P x taps`.
    cols: Mat<T>,
    /// This chunk's partial kernel gradient.
    dk: Mat<T>,
}

impl<T: Real> Conv2d<T> {
    /// Allocate the scratch for `geom`: `par.degree()` chunks of one `P x (C_g KH KW)`
    /// im2col buffer and one kernel-sized accumulator each.
    pub fn new(geom: Conv2dGeometry, par: Par) -> Self {
        let n = par.degree().max(1);
        let (kr, kc) = geom.kernel_shape();
        let chunk = Chunk { cols: Mat::zeros(geom.out_positions(), geom.taps()), dk: Mat::zeros(kr, kc) };
        Self { geom, par, chunks: vec![chunk; n] }
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
        let geom = &self.geom;
        for_chunks((x, z), &mut self.chunks, &|(x, mut z): (BatchRef<'_, T>, BatchMut<'_, T>), c: &mut Chunk<T>| {
            let (p, og) = (geom.out_positions(), geom.out_per_group());
            for j in 0..x.ncols() {
                let mut zt = MatMut::from_column_major_slice_mut(z.rb_mut().col_mut(j).as_slice_mut(), p, geom.out_channels());
                for g in 0..geom.groups() {
                    im2col(geom, x.col(j).as_slice(), g, &mut c.cols);
                    gemm(zt.rb_mut().subcols_mut(g * og, og), Accum::Replace, c.cols.as_ref(), k.subcols(g * og, og), T::from_f64(1.0));
                }
            }
        });
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
        for_chunks((dz, dx), &mut self.chunks, &|(dz, mut dx): (BatchRef<'_, T>, BatchMut<'_, T>), c: &mut Chunk<T>| {
            let (p, og) = (geom.out_positions(), geom.out_per_group());
            for j in 0..dz.ncols() {
                let dzt = MatRef::from_column_major_slice(dz.col(j).as_slice(), p, geom.out_channels());
                let dxj = dx.rb_mut().col_mut(j).as_slice_mut();
                if matches!(accum, Accum::Replace) {
                    dxj.fill(T::from_f64(0.0));
                }
                for g in 0..geom.groups() {
                    // d(cols) = dZ^T_g k_g^T, then scatter it back through im2col's adjoint
                    gemm(c.cols.as_mut(), Accum::Replace, dzt.subcols(g * og, og), k.subcols(g * og, og).transpose(), alpha);
                    col2im_add(geom, &c.cols, g, dxj);
                }
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
        let used = for_chunks((x, dz), &mut self.chunks, &|(x, dz): (BatchRef<'_, T>, BatchRef<'_, T>), c: &mut Chunk<T>| {
            let (p, og) = (geom.out_positions(), geom.out_per_group());
            c.dk.fill(T::from_f64(0.0));
            for j in 0..x.ncols() {
                let dzt = MatRef::from_column_major_slice(dz.col(j).as_slice(), p, geom.out_channels());
                for g in 0..geom.groups() {
                    im2col(geom, x.col(j).as_slice(), g, &mut c.cols);
                    gemm(c.dk.as_mut().subcols_mut(g * og, og), Accum::Add, c.cols.as_ref().transpose(), dzt.subcols(g * og, og), T::from_f64(1.0));
                }
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
