//! The paper's exact-gradient baseline: a plain linear flow layer $z = Wx + b$
//! trained by maximum likelihood with $\partial\log|\det W|/\partial W = W^{-T}$ (Eq. 8
//! without the $g$ half and the reconstruction term).

use crate::util::gemm as matmul;
use faer::reborrow::ReborrowMut;
use faer::{unzip, zip, Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;

use super::forward::{add_bias, sub_bias};
use crate::error::{check_shape, Error, Result};
use crate::exact::Lu;
use crate::real::Real;
use crate::util::set_scaled_row_sums;

/// A plain square linear flow layer trained with the exact gradient.
///
/// Loss $\ell = -\frac1B\sum_b \log p^f_X(x_b)$; its gradients are
/// $\partial_W\ell = -\frac1B\delta_z x^T - W^{-T}$ and
/// $\partial_b\ell = -\frac1B\sum_b\delta_{z,b}$, with $W^{-T}$ from a partial-pivot LU
/// ($\approx 2D^3$ flops per step).
#[derive(Debug, Clone, PartialEq)]
pub struct ExactLinear<T: Real> {
    pub(crate) w: Mat<T>,
    pub(crate) b: Option<Mat<T>>,
}

/// Gradients of an [`ExactLinear`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExactLinearGrads<T: Real> {
    /// $\partial\ell/\partial W$.
    pub w: Mat<T>,
    /// $\partial\ell/\partial b$, if the layer has a bias.
    pub b: Option<Mat<T>>,
}

/// Buffers of an [`ExactLinear`] (its LU workspace).
#[derive(Debug)]
pub struct ExactLinearWorkspace<T: Real> {
    lu: Lu<T>,
    max_batch: usize,
    par: Par,
}

impl<T: Real> ExactLinearWorkspace<T> {
    /// Buffers for a `dim x dim` layer and batches up to `max_batch`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the size when the LU buffers cannot be allocated.
    pub fn new(dim: usize, max_batch: usize, par: Par) -> Result<Self> {
        Ok(Self { lu: Lu::new(dim, max_batch, par)?, max_batch, par })
    }
}

impl<T: Real> ExactLinear<T> {
    /// Same initialisation as [`SelfNormLinear::new`](super::SelfNormLinear::new)
    /// ($W = I$ + Xavier-normal noise, gain 0.01), so both start from the same $W$ under
    /// the same seed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `dim == 0`.
    pub fn new(dim: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        let rename = |e: Error| match e {
            Error::InvalidArgument { reason, .. } => Error::InvalidArgument { op: "ExactLinear::new", reason },
            other => other,
        };
        let l = super::SelfNormLinear::<T>::new(dim, bias, rng).map_err(rename)?;
        Ok(Self { w: l.w, b: l.b })
    }

    /// A layer from explicit parameters (e.g. a checkpoint).
    ///
    /// # Errors
    /// [`Error::NotSquare`] / [`Error::ShapeMismatch`] on bad shapes,
    /// [`Error::InvalidArgument`] for an empty layer, [`Error::NonFinite`] for NaN/inf.
    pub fn from_parts(w: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        // the self-normalizing constructor checks the same things; R is not kept
        let l = super::SelfNormLinear::from_parts(w.clone(), w, b)?;
        Ok(Self { w: l.w, b: l.b })
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.w.nrows()
    }
    /// The weight $W$.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// The bias, if any (`D x 1`).
    pub fn bias(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> ExactLinearGrads<T> {
        ExactLinearGrads { w: Mat::zeros(self.dim(), self.dim()), b: self.b.as_ref().map(|_| Mat::zeros(self.dim(), 1)) }
    }

    /// Parameter blocks paired with gradients, `[W, b?]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] if `g` was not made for this
    /// layer (another size, or a bias where the layer has none or the reverse).
    pub fn params_with_grads<'a>(&'a mut self, g: &'a ExactLinearGrads<T>) -> Result<impl Iterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>> {
        const OP: &str = "ExactLinear::params_with_grads";
        let d = self.dim();
        check_shape(OP, (d, d), (g.w.nrows(), g.w.ncols()))?;
        if self.b.is_some() != g.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        let b = self.b.as_mut().zip(g.b.as_ref()).map(|(p, g)| (p.as_mut(), g.as_ref()));
        Ok([Some((self.w.as_mut(), g.w.as_ref())), b].into_iter().flatten())
    }

    fn check(&self, op: &'static str, ws: &ExactLinearWorkspace<T>, x: MatRef<'_, T>) -> Result<usize> {
        let d = self.dim();
        check_shape(op, (d, x.ncols()), (x.nrows(), x.ncols()))?;
        if ws.lu.dim() != d || x.ncols() == 0 || x.ncols() > ws.max_batch {
            return Err(Error::InvalidArgument { op, reason: "workspace does not fit this layer/batch".into() });
        }
        Ok(x.ncols())
    }

    /// The checks of a backward pass (shared with [`RelativeLinear`](super::RelativeLinear),
    /// whose workspace holds one of these): `x`, `dz` and `dx` (its shape) are `D x B` with
    /// `B` fitting `ws`, and `grads` were made for this layer. Returns `B`.
    pub(super) fn check_backward(
        &self,
        op: &'static str,
        ws: &ExactLinearWorkspace<T>,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: (usize, usize),
        grads: &ExactLinearGrads<T>,
    ) -> Result<usize> {
        let b = self.check(op, ws, x)?;
        let d = self.dim();
        check_shape(op, (d, b), (dz.nrows(), dz.ncols()))?;
        check_shape(op, (d, b), dx)?;
        check_shape(op, (d, d), (grads.w.nrows(), grads.w.ncols()))?;
        if self.b.is_some() != grads.b.is_some() {
            return Err(Error::InvalidArgument { op, reason: "bias presence differs".into() });
        }
        Ok(b)
    }

    /// $z = Wx + b$.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &ExactLinearWorkspace<T>) -> Result<()> {
        const OP: &str = "ExactLinear::forward";
        let b = self.check(OP, ws, x)?;
        check_shape(OP, (self.dim(), b), (z.nrows(), z.ncols()))?;
        let mut z = z;
        matmul(z.rb_mut(), Accum::Replace, self.w.as_ref(), x, T::from_f64(1.0), ws.par);
        add_bias(z, self.b.as_ref().map(|b| b.as_ref()));
        Ok(())
    }

    /// Exact backward: $\delta_x = W^T\delta_z$ and the loss gradients (LU + inverse).
    ///
    /// # Errors
    /// Shape errors, [`Error::Singular`] / [`Error::NonFinite`] from the LU.
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut ExactLinearGrads<T>,
        ws: &mut ExactLinearWorkspace<T>,
    ) -> Result<()> {
        let b = self.check_backward("ExactLinear::backward", ws, x, dz, (dx.nrows(), dx.ncols()), grads)?;
        let one = T::from_f64(1.0);
        let mut dx = dx;
        matmul(dx.rb_mut(), Accum::Replace, self.w.transpose(), dz, one, ws.par);
        ws.lu.factor(self.w.as_ref())?;
        ws.lu.inverse_transpose_into(grads.w.as_mut())?;
        zip!(grads.w.as_mut()).for_each(|unzip!(g)| *g = -*g);
        matmul(grads.w.as_mut(), Accum::Add, dz, x.transpose(), T::from_f64(-1.0 / b as f64), ws.par);
        if let Some(gb) = grads.b.as_mut() {
            set_scaled_row_sums(gb.col_as_slice_mut(0), dz, T::from_f64(-1.0 / b as f64));
        }
        Ok(())
    }

    /// $\log|\det W|$ by LU.
    ///
    /// # Errors
    /// [`Error::Singular`] / [`Error::NonFinite`].
    pub fn log_abs_det(&self) -> Result<f64> {
        crate::exact::log_abs_det(self.w.as_ref())
    }

    /// The inverse $x = W^{-1}(z - b)$ by LU (sampling).
    ///
    /// # Errors
    /// Shape errors, [`Error::Singular`] / [`Error::NonFinite`] from the LU.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut ExactLinearWorkspace<T>) -> Result<()> {
        const OP: &str = "ExactLinear::inverse";
        let b = self.check(OP, ws, z)?;
        check_shape(OP, (self.dim(), b), (x.nrows(), x.ncols()))?;
        let mut x = x;
        x.copy_from(z);
        sub_bias(x.rb_mut(), self.b.as_ref().map(|b| b.as_ref()));
        ws.lu.factor(self.w.as_ref())?;
        ws.lu.solve_in_place(x)
    }
}
