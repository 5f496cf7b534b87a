//! The exact path: dense $\mathcal T(w)$, its LU, the cached log-det (Eqs. 6–7), the exact
//! log-det gradient $P(\mathcal T(w)^{-T})$ and the exact inverses.

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef};

use super::forward::add_channel_bias;
use super::workspace::ConvExact;
use super::{ConvWorkspace, SelfNormConv2d};
use crate::conv::{conv_matrix_into, project_onto_kernel};
use crate::error::{check_shape, Result};
use crate::real::Real;

impl<T: Real> SelfNormConv2d<T> {
    /// Factor $\mathcal T(w)$ into `ex.lu_w` unless it already holds this layer's current one.
    pub(crate) fn ensure_lu_w(&self, ex: &mut ConvExact<T>) -> Result<()> {
        if ex.lu_w_stamp != Some(self.stamp) {
            ex.lu_w_stamp = None;
            conv_matrix_into(&self.geom_w, self.w.as_ref(), ex.dense.as_mut())?;
            ex.lu_w.factor(ex.dense.as_ref())?;
            ex.lu_w_stamp = Some(self.stamp);
        }
        Ok(())
    }

    pub(crate) fn ensure_lu_r(&self, ex: &mut ConvExact<T>) -> Result<()> {
        if ex.lu_r_stamp != Some(self.stamp) {
            ex.lu_r_stamp = None;
            conv_matrix_into(&self.geom_r, self.r.as_ref(), ex.dense.as_mut())?;
            ex.lu_r.factor(ex.dense.as_ref())?;
            ex.lu_r_stamp = Some(self.stamp);
        }
        Ok(())
    }

    /// The dense convolution matrix $\mathcal T(w)$ (`D x D`, Eq. 12).
    ///
    /// # Errors
    /// None for a valid layer; carries [`conv_matrix_into`]'s checks.
    pub fn conv_matrix(&self) -> Result<Mat<T>> {
        crate::conv::conv_matrix(&self.geom_w, self.w.as_ref())
    }

    /// $\log\lvert\det\mathcal T(w)\rvert$, the layer's data-independent log-det (the same
    /// for every example, Eqs. 6–7). Computed by LU of the dense `D x D` matrix the first
    /// time and kept (as the LU, keyed by the parameters' stamp) in the workspace until the parameters change
    /// ([`params_with_grads`](Self::params_with_grads) / [`params_mut`](Self::params_mut)
    /// set the dirty flag), so evaluation pays the $O(D^3)$ once.
    ///
    /// # Errors
    /// [`Error::Singular`](crate::Error::Singular) / [`Error::NonFinite`](crate::Error::NonFinite)
    /// from the LU; workspace mismatch.
    pub fn log_abs_det(&self, ws: &mut ConvWorkspace<T>) -> Result<f64> {
        const OP: &str = "SelfNormConv2d::log_abs_det";
        self.check_ws(OP, ws)?;
        let ex = ws.ensure_exact()?;
        self.ensure_lu_w(ex)?;
        ex.lu_w.log_abs_det()
    }

    /// The exact log-det gradient $\partial\log\lvert\det\mathcal T(w)\rvert/\partial w
    /// = P_w(\mathcal T(w)^{-T})$ (Eq. 13's second term), into `out` (kernel-shaped).
    ///
    /// # Errors
    /// As [`log_abs_det`](Self::log_abs_det), plus [`Error::ShapeMismatch`](crate::Error::ShapeMismatch).
    pub fn log_abs_det_grad(&self, out: MatMut<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormConv2d::log_abs_det_grad";
        self.check_ws(OP, ws)?;
        check_shape(OP, (self.w.nrows(), self.w.ncols()), (out.nrows(), out.ncols()))?;
        let ex = ws.ensure_exact()?;
        self.ensure_lu_w(ex)?;
        ex.lu_w.inverse_transpose_into(ex.inv.as_mut())?;
        project_onto_kernel(&self.geom_w, ex.inv.as_ref(), out, T::from_f64(1.0), Accum::Replace)
    }

    /// The exact inverse of $f$, $x = \mathcal T(w)^{-1}(z - b)$, by the (cached) LU of the
    /// dense matrix: exact-inverse sampling (Fig. 2).
    ///
    /// # Errors
    /// As [`forward`](Self::forward), plus the LU's errors.
    pub fn inverse_exact(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormConv2d::inverse_exact";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, z)?;
        ConvWorkspace::check_out(OP, &x, self.dim(), b)?;
        let mut x = x;
        x.copy_from(z);
        add_channel_bias(x.rb_mut(), self.bias(), self.pixels(), T::from_f64(-1.0));
        let ex = ws.ensure_exact()?;
        self.ensure_lu_w(ex)?;
        ex.lu_w.solve_in_place(x)
    }

    /// The exact inverse of the learned inverse, $y = g^{-1}(x) = \mathcal T(r)^{-1}x + b$:
    /// the map that defines $\log p^g_X$ (Eq. 3). Keeps $v = \mathcal T(r)^{-1}x$ and the LU of
    /// $\mathcal T(r)$ in `ws` for [`backward_exact`](Self::backward_exact).
    ///
    /// # Errors
    /// As [`inverse_exact`](Self::inverse_exact).
    pub fn g_inverse(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormConv2d::g_inverse";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        ConvWorkspace::check_out(OP, &y, self.dim(), b)?;
        let hw = self.pixels();
        let ex = ws.ensure_exact()?;
        ex.g_batch = None;
        self.ensure_lu_r(ex)?;
        let mut v = ex.v.as_mut().subcols_mut(0, b);
        v.copy_from(x);
        ex.lu_r.solve_in_place(v.rb_mut())?;
        let mut y = y;
        y.copy_from(v.rb_mut());
        add_channel_bias(y, self.bias(), hw, T::from_f64(1.0));
        ex.g_batch = Some(b);
        Ok(())
    }

    /// $\log\lvert\det\mathcal T(r)\rvert$ by LU (not cached; $\log p^g_X$ uses its negative).
    ///
    /// # Errors
    /// As [`log_abs_det`](Self::log_abs_det).
    pub fn inverse_log_abs_det(&self, ws: &mut ConvWorkspace<T>) -> Result<f64> {
        self.check_ws("SelfNormConv2d::inverse_log_abs_det", ws)?;
        let ex = ws.ensure_exact()?;
        self.ensure_lu_r(ex)?;
        ex.lu_r.log_abs_det()
    }
}
