//! Forward pass, learned inverse, exact inverses and log-determinant.

use crate::util::gemm as matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, Accum, MatMut, MatRef};

use super::{LinearWorkspace, SelfNormLinear};
use crate::error::{Error, Result};
use crate::exact::Lu;
use crate::real::Real;

/// `out += b` for every column (`b` is `D x 1`).
pub(crate) fn add_bias<T: Real>(mut out: MatMut<'_, T>, b: Option<MatRef<'_, T>>) {
    if let Some(b) = b {
        for j in 0..out.ncols() {
            zip!(out.rb_mut().col_mut(j), b.col(0)).for_each(|unzip!(o, b)| *o += *b);
        }
    }
}

/// `out -= b` for every column (the inverse of [`add_bias`]).
pub(crate) fn sub_bias<T: Real>(mut out: MatMut<'_, T>, b: Option<MatRef<'_, T>>) {
    if let Some(b) = b {
        for j in 0..out.ncols() {
            zip!(out.rb_mut().col_mut(j), b.col(0)).for_each(|unzip!(o, b)| *o -= *b);
        }
    }
}

impl<T: Real> SelfNormLinear<T> {
    /// $z = f(x) = Wx + b$ for a `D x B` batch, writing `z` (`D x B`) and keeping
    /// $u = Wx$ in `ws` for the backward pass.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] on bad shapes or a batch
    /// larger than the workspace.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &mut LinearWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormLinear::forward";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        LinearWorkspace::check_out(OP, &z, self.dim(), b)?;
        let mut u = ws.u.as_mut().subcols_mut(0, b);
        matmul(u.rb_mut(), Accum::Replace, self.w.as_ref(), x, T::from_f64(1.0), ws.par);
        let mut z = z;
        z.copy_from(u.rb());
        add_bias(z, self.bias());
        ws.batch = Some(b);
        ws.void_projection(); // `u` now belongs to this batch
        Ok(())
    }

    /// The learned inverse $x = g(z) = R(z - b)$ (used for learned-inverse sampling).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut LinearWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormLinear::inverse";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, z)?;
        LinearWorkspace::check_out(OP, &x, self.dim(), b)?;
        ws.void_projection(); // `t` is overwritten below
        let mut t = ws.t.as_mut().subcols_mut(0, b);
        t.copy_from(z);
        sub_bias(t.rb_mut(), self.bias());
        matmul(x, Accum::Replace, self.rt.transpose(), t.rb(), T::from_f64(1.0), ws.par);
        Ok(())
    }

    /// The exact inverse of $f$: $x = f^{-1}(z) = W^{-1}(z - b)$ by LU.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), plus [`Error::Singular`] / [`Error::NonFinite`].
    pub fn inverse_exact(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut LinearWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormLinear::inverse_exact";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, z)?;
        LinearWorkspace::check_out(OP, &x, self.dim(), b)?;
        let mut x = x;
        x.copy_from(z);
        sub_bias(x.rb_mut(), self.bias());
        let ex = ws.ensure_exact()?;
        ex.lu_w.factor(self.w.as_ref())?;
        ex.lu_w.solve_in_place(x)
    }

    /// The exact inverse of the learned inverse, $y = g^{-1}(x) = R^{-1}x + b$: the map
    /// through which $\log p^g_X$ is defined (Eq. 3). Keeps $v = R^{-1}x$ and the LU of
    /// $R$ in `ws` for [`backward_exact`](Self::backward_exact).
    ///
    /// # Errors
    /// As [`inverse_exact`](Self::inverse_exact).
    pub fn g_inverse(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, ws: &mut LinearWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormLinear::g_inverse";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        LinearWorkspace::check_out(OP, &y, self.dim(), b)?;
        let ex = ws.ensure_exact()?;
        ex.g_batch = None;
        ex.lu_r.factor(self.rt.transpose())?;
        let mut v = ex.v.as_mut().subcols_mut(0, b);
        v.copy_from(x);
        ex.lu_r.solve_in_place(v.rb_mut())?;
        let mut y = y;
        y.copy_from(v.rb());
        add_bias(y, self.bias());
        ex.g_batch = Some(b);
        Ok(())
    }

    /// $\log|\det W|$ by LU: the layer's data-independent log-det (Eqs. 6–7), to be
    /// computed once per evaluation and cached by the caller.
    ///
    /// # Errors
    /// [`Error::Singular`] / [`Error::NonFinite`].
    pub fn log_abs_det(&self) -> Result<f64> {
        crate::exact::log_abs_det(self.w.as_ref())
    }

    /// $\log|\det W|$ reusing the caller's LU workspace (no allocation).
    ///
    /// # Errors
    /// As [`Lu::factor`].
    pub fn log_abs_det_with(&self, lu: &mut Lu<T>) -> Result<f64> {
        lu.factor(self.w.as_ref())?;
        lu.log_abs_det()
    }

    /// Batch mean of the reconstruction error $\lVert g(f(x)) - x\rVert^2 = \lVert RWx - x\rVert^2$.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn reconstruction_error(&self, x: MatRef<'_, T>, ws: &mut LinearWorkspace<T>) -> Result<f64> {
        const OP: &str = "SelfNormLinear::reconstruction_error";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        ws.void_projection(); // `u` is overwritten below
        let mut u = ws.u.as_mut().subcols_mut(0, b);
        matmul(u.rb_mut(), Accum::Replace, self.w.as_ref(), x, T::from_f64(1.0), ws.par);
        ws.batch = None; // `u` no longer matches a forward() output
        let mut e = ws.e.as_mut().subcols_mut(0, b);
        Ok(self.residual(x, u.rb(), e.rb_mut(), ws.par))
    }

    /// `e = R u - x`; returns the batch mean of `‖e_b‖²`.
    pub(crate) fn residual(&self, x: MatRef<'_, T>, u: MatRef<'_, T>, mut e: MatMut<'_, T>, par: faer::Par) -> f64 {
        zip!(e.rb_mut(), x).for_each(|unzip!(e, x)| *e = -*x);
        matmul(e.rb_mut(), Accum::Add, self.rt.transpose(), u, T::from_f64(1.0), par);
        crate::util::sum_sq(e.rb()) / e.ncols() as f64
    }

    pub(crate) fn check_ws(&self, op: &'static str, ws: &LinearWorkspace<T>) -> Result<()> {
        if ws.dim() != self.dim() {
            return Err(Error::ShapeMismatch { op, expected: (self.dim(), ws.max_batch()), got: (ws.dim(), ws.max_batch()) });
        }
        Ok(())
    }
}
