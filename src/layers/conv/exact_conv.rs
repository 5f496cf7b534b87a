//! The paper's exact-gradient baseline for convolutions: a plain convolutional flow layer
//! $z = w\star x + b$ trained by maximum likelihood with the log-det gradient
//! $P(\mathcal T(w)^{-T})$ from an LU of the dense `D x D` matrix.

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;

use super::forward::{add_channel_bias, channel_sums};
use super::{SelfNormConv2d, SelfNormConv2dConfig};
use crate::conv::{conv_matrix_into, project_onto_kernel, Conv2d, Conv2dGeometry};
use crate::error::{check_shape, Error, Result};
use crate::exact::Lu;
use crate::real::Real;

/// A plain convolutional flow layer trained with the exact gradient.
///
/// Loss $\ell = -\frac1B\sum_b\log p^f_X(x_b)$; gradients
/// $\partial_w\ell = -\frac1B P(\delta_z x^T) - P(\mathcal T(w)^{-T})$,
/// $\partial_{b_c}\ell = -\frac1B\sum\delta_z$ over the pixels of $c$. Each step builds
/// $\mathcal T(w)$ and factors and inverts it ($O(D^3)$).
#[derive(Debug, Clone, PartialEq)]
pub struct ExactConv2d<T: Real> {
    config: SelfNormConv2dConfig,
    geom: Conv2dGeometry,
    w: Mat<T>,
    b: Option<Mat<T>>,
}

/// Gradients of an [`ExactConv2d`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExactConv2dGrads<T: Real> {
    /// $\partial\ell/\partial w$.
    pub w: Mat<T>,
    /// $\partial\ell/\partial b$ (`C x 1`), if the layer has a bias.
    pub b: Option<Mat<T>>,
}

/// Buffers of an [`ExactConv2d`]: the conv plan, the dense matrix, its LU and inverse.
#[derive(Debug)]
pub struct ExactConv2dWorkspace<T: Real> {
    conv: Conv2d<T>,
    dense: Mat<T>,
    inv: Mat<T>,
    lu: Lu<T>,
    chan: Vec<T>,
}

impl<T: Real> ExactConv2dWorkspace<T> {
    /// Buffers for `layer`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the size when the dense `D x D` matrices cannot
    /// be allocated.
    pub fn new(layer: &ExactConv2d<T>, par: Par) -> Result<Self> {
        let d = layer.dim();
        Ok(Self {
            conv: Conv2d::new(layer.geom, par),
            dense: crate::util::try_zeros(d, d)?,
            inv: crate::util::try_zeros(d, d)?,
            lu: Lu::new(d, 1, par)?,
            chan: vec![T::from_f64(0.0); layer.geom.in_channels()],
        })
    }
}

impl<T: Real> ExactConv2d<T> {
    /// The forward half of a [`SelfNormConv2d`] built from `config` (same validation and
    /// initialisation; the inverse kernel size is ignored).
    ///
    /// # Errors
    /// As [`SelfNormConv2d::new`].
    pub fn new(config: SelfNormConv2dConfig, rng: &mut impl Rng) -> Result<Self> {
        let snf = SelfNormConv2d::<T>::new(config, rng)?;
        Ok(Self { config, geom: snf.geom_w, w: snf.w, b: snf.b })
    }

    /// A layer from an explicit kernel (in the layout of [`Conv2dGeometry`]) and bias
    /// (`C x 1`), e.g. from a checkpoint.
    ///
    /// # Errors
    /// As [`SelfNormConv2d::from_parts`].
    pub fn from_parts(config: SelfNormConv2dConfig, w: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        // validate through the self-normalizing constructor with r = w (r is not kept)
        let config = config.with_inverse_kernel(config.forward.kernel);
        let snf = SelfNormConv2d::from_parts(config, w.clone(), w, b)?;
        Ok(Self::from_self_normalizing(&snf))
    }

    /// The forward half of an existing self-normalizing layer.
    pub fn from_self_normalizing(layer: &SelfNormConv2d<T>) -> Self {
        Self { config: *layer.config(), geom: layer.geom_w, w: layer.w.clone(), b: layer.b.clone() }
    }

    /// The configuration it was built from (its inverse-kernel size is unused).
    pub fn config(&self) -> &SelfNormConv2dConfig {
        &self.config
    }

    /// The dimension $D = CHW$.
    pub fn dim(&self) -> usize {
        self.geom.in_len()
    }
    /// The kernel $w$.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// The bias, if any.
    pub fn bias(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }
    /// Zeroed gradients.
    pub fn zero_grads(&self) -> ExactConv2dGrads<T> {
        ExactConv2dGrads { w: Mat::zeros(self.w.nrows(), self.w.ncols()), b: self.b.as_ref().map(|b| Mat::zeros(b.nrows(), 1)) }
    }

    /// Parameter blocks with their gradients, `[w, b?]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] if `grads` does not fit.
    pub fn params_with_grads<'a>(&'a mut self, grads: &'a ExactConv2dGrads<T>) -> Result<impl Iterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>> {
        const OP: &str = "ExactConv2d::params_with_grads";
        check_shape(OP, (self.w.nrows(), self.w.ncols()), (grads.w.nrows(), grads.w.ncols()))?;
        if self.b.is_some() != grads.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        let b = self.b.as_mut().zip(grads.b.as_ref()).map(|(p, g)| (p.as_mut(), g.as_ref()));
        Ok([Some((self.w.as_mut(), grads.w.as_ref())), b].into_iter().flatten())
    }

    /// Mutable parameter blocks `[w, b?]`.
    pub fn params_mut(&mut self) -> Vec<MatMut<'_, T>> {
        [Some(self.w.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }

    fn pixels(&self) -> usize {
        let [h, w] = self.geom.in_size();
        h * w
    }

    /// $z = w\star x + b$.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &mut ExactConv2dWorkspace<T>) -> Result<()> {
        let mut z = z;
        ws.conv.forward(self.w.as_ref(), x, z.rb_mut())?;
        add_channel_bias(z, self.bias(), self.pixels(), T::from_f64(1.0));
        Ok(())
    }

    /// The exact step's backward pass: $\delta_x = \mathcal T(w)^T\delta_z$ into `dx` and the
    /// gradients above into `grads` (builds, factors and inverts $\mathcal T(w)$).
    ///
    /// # Errors
    /// Shape errors; [`Error::Singular`] / [`Error::NonFinite`] from the LU.
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut ExactConv2dGrads<T>,
        ws: &mut ExactConv2dWorkspace<T>,
    ) -> Result<()> {
        const OP: &str = "ExactConv2d::backward";
        check_shape(OP, (self.w.nrows(), self.w.ncols()), (grads.w.nrows(), grads.w.ncols()))?;
        if self.b.is_some() != grads.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        let b = x.ncols();
        if b == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "empty batch".into() });
        }
        let inv_b = T::from_f64(1.0 / b as f64);
        ws.conv.input_grad(self.w.as_ref(), dz, dx, T::from_f64(1.0), Accum::Replace)?;
        ws.conv.weight_grad(x, dz, grads.w.as_mut(), -inv_b, Accum::Replace)?;
        conv_matrix_into(&self.geom, self.w.as_ref(), ws.dense.as_mut())?;
        ws.lu.factor(ws.dense.as_ref())?;
        ws.lu.inverse_transpose_into(ws.inv.as_mut())?;
        project_onto_kernel(&self.geom, ws.inv.as_ref(), grads.w.as_mut(), T::from_f64(-1.0), Accum::Add)?;
        if let Some(gb) = grads.b.as_mut() {
            channel_sums(&mut ws.chan, dz, self.pixels(), -inv_b, false);
            gb.col_as_slice_mut(0).copy_from_slice(&ws.chan);
        }
        Ok(())
    }

    /// The exact inverse $x = \mathcal T(w)^{-1}(z - b)$ (dense LU; for sampling).
    ///
    /// # Errors
    /// Shape errors; [`Error::Singular`] / [`Error::NonFinite`] from the LU.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut ExactConv2dWorkspace<T>) -> Result<()> {
        const OP: &str = "ExactConv2d::inverse";
        let d = self.dim();
        check_shape(OP, (d, z.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (d, z.ncols()), (x.nrows(), x.ncols()))?;
        conv_matrix_into(&self.geom, self.w.as_ref(), ws.dense.as_mut())?;
        ws.lu.factor(ws.dense.as_ref())?;
        let mut x = x;
        x.copy_from(z);
        add_channel_bias(x.rb_mut(), self.bias(), self.pixels(), T::from_f64(-1.0));
        ws.lu.solve_in_place(x)
    }

    /// $\log\lvert\det\mathcal T(w)\rvert$ by LU.
    ///
    /// # Errors
    /// The LU's errors.
    pub fn log_abs_det(&self, ws: &mut ExactConv2dWorkspace<T>) -> Result<f64> {
        conv_matrix_into(&self.geom, self.w.as_ref(), ws.dense.as_mut())?;
        ws.lu.factor(ws.dense.as_ref())?;
        ws.lu.log_abs_det()
    }
}
