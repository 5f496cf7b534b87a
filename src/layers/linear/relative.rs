//! The relative-gradient baseline of Table 1 (Gresele et al., 2020): a plain linear flow
//! layer whose weight update is the likelihood gradient right-multiplied by $W^TW$, which
//! turns the $W^{-T}$ of the log-det into $W$ (proofs/relative.md).

use crate::util::gemm as matmul;
use faer::reborrow::ReborrowMut;
use faer::{unzip, zip, Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;

use super::exact_linear::{ExactLinear, ExactLinearGrads, ExactLinearWorkspace};
use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::set_scaled_row_sums;

/// A square linear flow layer $z = Wx + b$ trained with the **relative gradient**:
///
/// $$\tilde\nabla_W\ell = (\partial_W\ell)\,W^TW
///   = -\frac1B\sum_b\delta_{z,b}\,(W^TWx_b)^T - W,\qquad
///   \tilde\nabla_b\ell = \partial_b\ell = -\frac1B\sum_b\delta_{z,b},$$
///
/// four $D\times D\times B$ products per step and no inverse, determinant or
/// factorisation. It is a descent direction of the exact loss whenever $W$ is invertible
/// ($\langle\partial_W\ell, (\partial_W\ell)W^TW\rangle = \lVert(\partial_W\ell)W^T\rVert_F^2 > 0$).
/// The exact log-det (LU) is used only to report likelihoods, as for the other layers;
/// the inverse is the exact one. Same initialisation as [`ExactLinear::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelativeLinear<T: Real> {
    inner: ExactLinear<T>,
}

/// Buffers of a [`RelativeLinear`]: the exact layer's (for the inverse and log-det) and
/// two `D x B` products.
#[derive(Debug)]
pub struct RelativeLinearWorkspace<T: Real> {
    exact: ExactLinearWorkspace<T>,
    u: Mat<T>,
    v: Mat<T>,
    par: Par,
}

impl<T: Real> RelativeLinearWorkspace<T> {
    /// Buffers for a `dim x dim` layer and batches up to `max_batch`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the size when the buffers cannot be allocated.
    pub fn new(dim: usize, max_batch: usize, par: Par) -> Result<Self> {
        Ok(Self {
            exact: ExactLinearWorkspace::new(dim, max_batch, par)?,
            u: crate::util::try_zeros(dim, max_batch)?,
            v: crate::util::try_zeros(dim, max_batch)?,
            par,
        })
    }
}

impl<T: Real> RelativeLinear<T> {
    /// $W = I$ + Xavier-normal noise (gain 0.01) and a zero bias, as
    /// [`ExactLinear::new`] under the same seed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `dim == 0`.
    pub fn new(dim: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        ExactLinear::new(dim, bias, rng).map(|inner| Self { inner }).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::InvalidArgument { op: "RelativeLinear::new", reason },
            other => other,
        })
    }

    /// A layer from explicit parameters (e.g. a checkpoint).
    ///
    /// # Errors
    /// As [`ExactLinear::from_parts`].
    pub fn from_parts(w: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        ExactLinear::from_parts(w, b).map(|inner| Self { inner })
    }

    /// The same parameters as an [`ExactLinear`] (the exact-gradient twin).
    pub fn as_exact(&self) -> &ExactLinear<T> {
        &self.inner
    }
    /// The dimension.
    pub fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Zeroed gradients (the same blocks as [`ExactLinear`]'s).
    pub fn zero_grads(&self) -> ExactLinearGrads<T> {
        self.inner.zero_grads()
    }

    /// $z = Wx + b$.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &RelativeLinearWorkspace<T>) -> Result<()> {
        self.inner.forward(x, z, &ws.exact)
    }

    /// $\delta_x = W^T\delta_z$ and the relative gradients (see the type's docs).
    ///
    /// # Errors
    /// Shape errors; [`Error::InvalidArgument`] for gradients or a workspace made for another layer.
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut ExactLinearGrads<T>,
        ws: &mut RelativeLinearWorkspace<T>,
    ) -> Result<()> {
        // ws.u and ws.v were sized with ws.exact, so its checks cover them
        let b = self.inner.check_backward("RelativeLinear::backward", &ws.exact, x, dz, (dx.nrows(), dx.ncols()), grads)?;
        let (one, par) = (T::from_f64(1.0), ws.par);
        let w = self.inner.w.as_ref();
        let mut dx = dx;
        matmul(dx.rb_mut(), Accum::Replace, w.transpose(), dz, one, par);
        let mut u = ws.u.as_mut().subcols_mut(0, b);
        matmul(u.rb_mut(), Accum::Replace, w, x, one, par);
        let mut v = ws.v.as_mut().subcols_mut(0, b);
        matmul(v.rb_mut(), Accum::Replace, w.transpose(), u.as_ref(), one, par);
        zip!(grads.w.as_mut(), w).for_each(|unzip!(g, w)| *g = -*w);
        matmul(grads.w.as_mut(), Accum::Add, dz, v.as_ref().transpose(), T::from_f64(-1.0 / b as f64), par);
        if let Some(gb) = grads.b.as_mut() {
            set_scaled_row_sums(gb.col_as_slice_mut(0), dz, T::from_f64(-1.0 / b as f64));
        }
        Ok(())
    }

    /// The exact inverse $x = W^{-1}(z - b)$ by LU.
    ///
    /// # Errors
    /// As [`ExactLinear::inverse`].
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut RelativeLinearWorkspace<T>) -> Result<()> {
        self.inner.inverse(z, x, &mut ws.exact)
    }

    pub(crate) fn as_exact_mut(&mut self) -> &mut ExactLinear<T> {
        &mut self.inner
    }
}
