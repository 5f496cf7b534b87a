//! Preallocated buffers for the convolutional layer: a training step allocates nothing.

use faer::{Mat, MatMut, MatRef, Par};

use super::fused::FusedChunk;
use super::projection::ConvProjectionBuffers;
use super::SelfNormConv2d;
use crate::conv::{Conv2d, Conv2dGeometry};
use crate::error::Result;
use crate::exact::Lu;
use crate::real::Real;

/// Buffers and convolution plans for [`SelfNormConv2d`] passes on batches of up to
/// `max_batch` examples. Made once per layer; after [`new`](Self::new) (and
/// [`with_exact`](Self::with_exact) for the exact path) no pass allocates.
#[derive(Debug)]
pub struct ConvWorkspace<T: Real> {
    pub(crate) par: Par,
    pub(crate) conv_w: Conv2d<T>,
    pub(crate) conv_r: Conv2d<T>,
    pub(crate) u: Mat<T>,
    pub(crate) e: Mat<T>,
    pub(crate) t: Mat<T>,
    /// $\mathrm{flip}(r)$ and its resize to $w$'s size; $\mathrm{flip}(w)$ and its resize to $r$'s.
    pub(crate) flip_r: Mat<T>,
    pub(crate) flip_r_w: Mat<T>,
    pub(crate) flip_w: Mat<T>,
    pub(crate) flip_w_r: Mat<T>,
    pub(crate) batch: Option<usize>,
    pub(crate) exact: Option<ConvExact<T>>,
    /// Per-chunk stacked buffers of the fused SNF backward pass, and its block size.
    pub(crate) fused: Vec<FusedChunk<T>>,
    pub(crate) block: usize,
    /// The projection fit's buffers ([`InverseFit::Projection`](crate::layers::linear::InverseFit::Projection)).
    pub(crate) proj: Option<ConvProjectionBuffers<T>>,
}

/// The exact path's dense buffers.
#[derive(Debug)]
pub(crate) struct ConvExact<T: Real> {
    /// A dense `D x D` convolution matrix, and a second one for inverses.
    pub(crate) dense: Mat<T>,
    pub(crate) inv: Mat<T>,
    pub(crate) lu_w: Lu<T>,
    pub(crate) lu_r: Lu<T>,
    /// The layer stamp each LU was factored for.
    pub(crate) lu_w_stamp: Option<u64>,
    pub(crate) lu_r_stamp: Option<u64>,
    /// $v = \mathcal T(r)^{-1}x_g$ from the last `g_inverse`, and its batch size.
    pub(crate) v: Mat<T>,
    pub(crate) g_batch: Option<usize>,
}

impl<T: Real> ConvWorkspace<T> {
    /// Buffers for `layer`'s self-normalizing path.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the size when the
    /// buffers cannot be allocated.
    pub fn new(layer: &SelfNormConv2d<T>, max_batch: usize, par: Par) -> crate::Result<Self> {
        let (gw, gr) = (layer.geom_w, layer.geom_r);
        let d = gw.in_len();
        let kw = gw.kernel_shape();
        let kr = gr.kernel_shape();
        let (conv_w, conv_r) = (Conv2d::new(gw, par), Conv2d::new(gr, par));
        let block = conv_w.block().min(conv_r.block());
        let fused = vec![FusedChunk::new(block * gw.out_positions(), gw.in_channels()); conv_w.n_chunks()];
        let z = || crate::util::try_zeros(d, max_batch);
        Ok(Self {
            par,
            conv_w,
            conv_r,
            u: z()?,
            e: z()?,
            t: z()?,
            flip_r: Mat::zeros(kr.0, kr.1),
            flip_r_w: Mat::zeros(kw.0, kw.1),
            flip_w: Mat::zeros(kw.0, kw.1),
            flip_w_r: Mat::zeros(kr.0, kr.1),
            batch: None,
            exact: None,
            fused,
            block,
            proj: None,
        })
    }

    /// Also allocate the exact path: two dense `D x D` matrices and two LU workspaces
    /// (about $4D^2$ scalars), so that the exact passes allocate nothing either.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the size when the
    /// dense matrices cannot be allocated (a `D x D` matrix: D = 1024² is 4 TiB in f32).
    pub fn with_exact(mut self) -> crate::Result<Self> {
        self.ensure_exact()?;
        Ok(self)
    }

    pub(crate) fn ensure_exact(&mut self) -> crate::Result<&mut ConvExact<T>> {
        let (d, max_batch, par) = (self.dim(), self.max_batch(), self.par);
        if self.exact.is_none() {
            self.exact = Some(ConvExact {
                dense: crate::util::try_zeros(d, d)?,
                inv: crate::util::try_zeros(d, d)?,
                lu_w: Lu::new(d, max_batch, par)?,
                lu_r: Lu::new(d, max_batch, par)?,
                lu_w_stamp: None,
                lu_r_stamp: None,
                v: crate::util::try_zeros(d, max_batch)?,
                g_batch: None,
            });
        }
        self.exact.as_mut().ok_or_else(|| crate::Error::InvalidArgument { op: "ConvWorkspace::ensure_exact", reason: "no exact buffers".into() })
    }

    /// Also allocate the projection fit's buffers (a chunk of patches, the $n\times n$ Gram
    /// matrix of the inverse kernel's $n$ taps per group, and a Cholesky scratch), so that a
    /// layer with [`InverseFit::Projection`](crate::layers::linear::InverseFit::Projection)
    /// allocates nothing in its passes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when they cannot be allocated.
    pub fn with_projection(mut self) -> crate::Result<Self> {
        self.ensure_projection()?;
        Ok(self)
    }

    /// [`with_projection`](Self::with_projection) gathering the patches of `per_chunk`
    /// examples per product (the default takes as many as fit in 4 MiB of f32): for tests of
    /// the chunked accumulation.
    ///
    /// # Errors
    /// As [`with_projection`](Self::with_projection).
    #[doc(hidden)]
    pub fn with_projection_chunk(mut self, per_chunk: usize) -> crate::Result<Self> {
        let geom_r = *self.conv_r.geometry();
        self.proj = Some(ConvProjectionBuffers::new(&geom_r, self.max_batch(), Some(per_chunk))?);
        Ok(self)
    }

    pub(crate) fn ensure_projection(&mut self) -> crate::Result<()> {
        if self.proj.is_none() {
            self.proj = Some(ConvProjectionBuffers::new(self.conv_r.geometry(), self.max_batch(), None)?);
        }
        Ok(())
    }

    /// Drop a pending projection step: `u` is about to be overwritten.
    pub(crate) fn void_projection(&mut self) {
        if let Some(p) = self.proj.as_mut() {
            p.pending = false;
        }
    }

    /// The example dimension $D$.
    pub fn dim(&self) -> usize {
        self.u.nrows()
    }
    /// The largest batch it holds.
    pub fn max_batch(&self) -> usize {
        self.u.ncols()
    }
    /// The parallelism.
    pub fn par(&self) -> Par {
        self.par
    }

    pub(crate) fn geometries(&self) -> (&Conv2dGeometry, &Conv2dGeometry) {
        (self.conv_w.geometry(), self.conv_r.geometry())
    }

    /// Check a `D x B` batch and return `B`.
    pub(crate) fn check_batch(&self, op: &'static str, a: MatRef<'_, T>) -> Result<usize> {
        crate::layers::check_batch(op, a, self.dim(), self.max_batch())
    }

    pub(crate) fn check_out(op: &'static str, out: &MatMut<'_, T>, d: usize, b: usize) -> Result<()> {
        crate::error::check_shape(op, (d, b), (out.nrows(), out.ncols()))
    }
}
