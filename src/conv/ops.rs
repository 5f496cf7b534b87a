//! The batched convolution and its two gradients, on faer GEMM, parallel over the batch.

use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::chunk::{chunks_used, for_chunks, forward_chunk, input_grad_chunk, reduce_dk, weight_grad_chunk, BatchMut, BatchRef, Chunk, Plan};
use super::Conv2dGeometry;
use crate::error::{check_shape, Error, Result};
use crate::real::Real;

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

/// Target size (scalars) of one im2col block.
const BLOCK_ELEMS: usize = 1 << 16;

/// Disjoint borrows of a [`Conv2d`]'s parts, for a caller that runs the chunk kernels
/// inside its own parallel region.
pub(crate) struct Parts<'a, T: Real> {
    pub(crate) plan: Plan<'a>,
    pub(crate) chunks: &'a mut [Chunk<T>],
    pub(crate) flipped: Option<MatRef<'a, T>>,
}

impl<T: Real> Conv2d<T> {
    /// Allocate the scratch for `geom`: per chunk (`par.degree()` of them) one im2col
    /// block, one stacked output block and one kernel-sized accumulator.
    pub fn new(geom: Conv2dGeometry, par: Par) -> Self {
        let n = par.degree().max(1);
        let (kr, kc) = geom.kernel_shape();
        let p = geom.out_positions();
        let block = (BLOCK_ELEMS / (p * geom.taps()).max(1)).max(1);
        let chunk = Chunk::new(&geom, block);
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
    /// Examples per im2col block.
    pub(crate) fn block(&self) -> usize {
        self.block
    }
    /// How many scratch chunks (parallel jobs) this plan has.
    pub(crate) fn n_chunks(&self) -> usize {
        self.chunks.len()
    }
    /// The chunks' scratch (partial reductions after a parallel region).
    pub(crate) fn chunks(&self) -> &[Chunk<T>] {
        &self.chunks
    }

    /// Write `flip(k)` for the input-gradient fast path (when the geometry allows it) and
    /// hand out the parts the chunk kernels need.
    pub(crate) fn parts(&mut self, transpose_of: Option<MatRef<'_, T>>) -> Result<Parts<'_, T>> {
        if let (Some(k), Some(fk)) = (transpose_of, self.flipped.as_mut()) {
            super::flip_into(&self.geom, k, fk.as_mut())?;
        }
        Ok(Parts { plan: Plan { geom: &self.geom, block: self.block }, chunks: &mut self.chunks, flipped: self.flipped.as_ref().map(|f| f.as_ref()) })
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
        let (x, z) = (contiguous(OP, x)?, contiguous_mut(OP, z)?);
        let used = chunks_used(self.chunks.len(), b);
        let parts = self.parts(None)?;
        let plan = parts.plan;
        for_chunks((x, z), parts.chunks, used, &|(x, z), c: &mut [Chunk<T>]| {
            if let Some(c) = c.first_mut() {
                forward_chunk(plan, c, k, x, z, T::from_f64(1.0), Accum::Replace)
            }
        });
        Ok(())
    }

    /// $dX = \alpha\,\mathcal T(k)^T dZ$ (`accum = Replace`) or $dX \mathrel{+}= \alpha\,\mathcal T(k)^T dZ$
    /// (`Add`): the input gradient. `dz` is `out_len x B`, `dx` is `in_len x B`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn input_grad(&mut self, k: MatRef<'_, T>, dz: MatRef<'_, T>, dx: MatMut<'_, T>, alpha: T, accum: Accum) -> Result<()> {
        const OP: &str = "Conv2d::input_grad";
        self.check_kernel(OP, (k.nrows(), k.ncols()))?;
        let b = dz.ncols();
        check_shape(OP, (self.geom.out_len(), b), (dz.nrows(), b))?;
        check_shape(OP, (self.geom.in_len(), b), (dx.nrows(), dx.ncols()))?;
        let (dz, dx) = (contiguous(OP, dz)?, contiguous_mut(OP, dx)?);
        let used = chunks_used(self.chunks.len(), b);
        let parts = self.parts(Some(k))?;
        let (plan, flipped) = (parts.plan, parts.flipped);
        for_chunks((dz, dx), parts.chunks, used, &|(dz, dx), c: &mut [Chunk<T>]| {
            if let Some(c) = c.first_mut() {
                input_grad_chunk(plan, c, k, flipped, dz, dx, alpha, accum)
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
    pub fn weight_grad(&mut self, x: MatRef<'_, T>, dz: MatRef<'_, T>, dk: MatMut<'_, T>, alpha: T, accum: Accum) -> Result<()> {
        const OP: &str = "Conv2d::weight_grad";
        self.check_kernel(OP, (dk.nrows(), dk.ncols()))?;
        let b = x.ncols();
        check_shape(OP, (self.geom.in_len(), b), (x.nrows(), b))?;
        check_shape(OP, (self.geom.out_len(), b), (dz.nrows(), dz.ncols()))?;
        let (x, dz) = (contiguous(OP, x)?, contiguous(OP, dz)?);
        let used = chunks_used(self.chunks.len(), b);
        let parts = self.parts(None)?;
        let plan = parts.plan;
        for_chunks((x, dz), &mut parts.chunks[..], used, &|(x, dz), c: &mut [Chunk<T>]| {
            if let Some(c) = c.first_mut() {
                weight_grad_chunk(plan, c, x, dz)
            }
        });
        reduce_dk(&self.chunks[..used], dk, alpha, accum);
        Ok(())
    }
}

/// View a batch as unit-row-stride, or fail with a typed error.
pub(crate) fn contiguous<'a, T: Real>(op: &'static str, a: MatRef<'a, T>) -> Result<BatchRef<'a, T>> {
    a.try_as_col_major().ok_or_else(|| not_contiguous(op))
}

/// Mutable form of [`contiguous`].
pub(crate) fn contiguous_mut<'a, T: Real>(op: &'static str, a: MatMut<'a, T>) -> Result<BatchMut<'a, T>> {
    a.try_as_col_major_mut().ok_or_else(|| not_contiguous(op))
}

fn not_contiguous(op: &'static str) -> Error {
    Error::InvalidArgument { op, reason: "batch matrices must have unit row stride (one contiguous column per example)".into() }
}
