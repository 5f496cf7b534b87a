//! Preallocated buffers for the linear layer: a training step allocates nothing.

use faer::{Mat, MatMut, MatRef, Par};

use super::inverse_fit::ProjectionBuffers;
use crate::error::Result;
use crate::exact::Lu;
use crate::real::Real;

/// Buffers for [`SelfNormLinear`](super::SelfNormLinear) forward/backward passes on
/// batches of up to `max_batch` columns, plus the parallelism to use.
///
/// Made once per layer and reused: after [`LinearWorkspace::new`] (and
/// [`with_exact`](Self::with_exact) for the exact path) no pass allocates.
#[derive(Debug)]
pub struct LinearWorkspace<T: Real> {
    pub(crate) par: Par,
    pub(crate) u: Mat<T>,
    pub(crate) e: Mat<T>,
    pub(crate) t: Mat<T>,
    pub(crate) batch: Option<usize>,
    pub(crate) exact: Option<ExactBuffers<T>>,
    /// The projection fit's buffers ([`InverseFit::Projection`](super::InverseFit::Projection)).
    pub(crate) proj: Option<ProjectionBuffers<T>>,
}

#[derive(Debug)]
pub(crate) struct ExactBuffers<T: Real> {
    pub(crate) lu_w: Lu<T>,
    pub(crate) lu_r: Lu<T>,
    /// $v = R^{-1} x_g$ from the last [`g_inverse`](super::SelfNormLinear::g_inverse).
    pub(crate) v: Mat<T>,
    /// Batch size of `v`, when `lu_r`/`v` are current.
    pub(crate) g_batch: Option<usize>,
}

impl<T: Real> LinearWorkspace<T> {
    /// Buffers for the self-normalizing path of a `dim x dim` layer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the size when the
    /// buffers cannot be allocated (a batch of 2^40 columns, say).
    pub fn new(dim: usize, max_batch: usize, par: Par) -> Result<Self> {
        let z = || crate::util::try_zeros(dim, max_batch);
        Ok(Self { par, u: z()?, e: z()?, t: z()?, batch: None, exact: None, proj: None })
    }

    /// Also allocate the exact path's buffers (two LU workspaces, `R^{-1}x`), so that
    /// [`backward_exact`](super::SelfNormLinear::backward_exact) and the exact inverses
    /// allocate nothing either.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_exact(mut self) -> Result<Self> {
        self.ensure_exact()?;
        Ok(self)
    }

    pub(crate) fn ensure_exact(&mut self) -> Result<&mut ExactBuffers<T>> {
        let (dim, max_batch, par) = (self.dim(), self.max_batch(), self.par);
        if self.exact.is_none() {
            self.exact = Some(ExactBuffers {
                lu_w: Lu::new(dim, max_batch, par)?,
                lu_r: Lu::new(dim, max_batch, par)?,
                v: crate::util::try_zeros(dim, max_batch)?,
                g_batch: None,
            });
        }
        self.exact.as_mut().ok_or_else(|| crate::Error::InvalidArgument { op: "LinearWorkspace::ensure_exact", reason: "no exact buffers".into() })
    }

    /// Also allocate the projection fit's buffers (two `B x B` matrices and a Cholesky
    /// scratch), so that a layer with [`InverseFit::Projection`](super::InverseFit::Projection)
    /// allocates nothing in its steps. Layers made as transforms do this themselves.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_projection(mut self) -> Result<Self> {
        self.ensure_projection()?;
        Ok(self)
    }

    pub(crate) fn ensure_projection(&mut self) -> Result<&mut ProjectionBuffers<T>> {
        if self.proj.is_none() {
            self.proj = Some(ProjectionBuffers::new(self.max_batch())?);
        }
        self.proj.as_mut().ok_or_else(|| crate::Error::InvalidArgument { op: "LinearWorkspace::ensure_projection", reason: "no projection buffers".into() })
    }

    /// Drop a pending projection step: `u` or `t` is about to be overwritten.
    pub(crate) fn void_projection(&mut self) {
        if let Some(p) = self.proj.as_mut() {
            p.pending = None;
        }
    }

    /// The layer dimension this workspace serves.
    pub fn dim(&self) -> usize {
        self.u.nrows()
    }
    /// The largest batch it holds.
    pub fn max_batch(&self) -> usize {
        self.u.ncols()
    }
    /// The parallelism used by every product.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Check a `D x B` batch against this workspace and return `B`.
    pub(crate) fn check_batch(&self, op: &'static str, a: MatRef<'_, T>) -> Result<usize> {
        crate::layers::check_batch(op, a, self.dim(), self.max_batch())
    }

    /// Check an output buffer has exactly the shape `(d, b)`.
    pub(crate) fn check_out(op: &'static str, out: &MatMut<'_, T>, d: usize, b: usize) -> Result<()> {
        crate::error::check_shape(op, (d, b), (out.nrows(), out.ncols()))
    }
}
