//! Backward passes: self-normalizing (Eqs. 10, 11, 17, 20) and exact (Eqs. 8, 9).
//!
//! Both return gradients of the loss $\ell = -\frac1B\sum_b \mathcal L(x_b)$ (Eq. 3).
//! Derivations: `proofs/fc.md`.

use crate::util::gemm as matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, Accum, MatMut, MatRef};

use super::{BackwardStats, InverseFit, LinearGrads, LinearWorkspace, SelfNormLinear};
use crate::error::{check_shape, Error, Result};
use crate::layers::check_backward_operands;
use crate::real::Real;
use crate::util::{par_cols, set_scaled_row_sums};

impl<T: Real> SelfNormLinear<T> {
    fn check_grads(&self, op: &'static str, g: &LinearGrads<T>) -> Result<()> {
        let d = self.dim();
        check_shape(op, (d, d), (g.w.nrows(), g.w.ncols()))?;
        check_shape(op, (d, d), (g.rt.nrows(), g.rt.ncols()))?;
        match (&self.b, &g.b) {
            (Some(_), Some(gb)) => check_shape(op, (d, 1), (gb.nrows(), gb.ncols())),
            (None, None) => Ok(()),
            _ => Err(Error::InvalidArgument { op, reason: "bias presence differs from the layer".into() }),
        }
    }

    /// Check that `x` is the batch of the last [`forward`](Self::forward) and return `B`.
    fn check_after_forward(&self, op: &'static str, x: MatRef<'_, T>, ws: &LinearWorkspace<T>) -> Result<usize> {
        let b = ws.check_batch(op, x)?;
        if ws.batch != Some(b) {
            return Err(Error::InvalidArgument { op, reason: "call forward() on this batch with this workspace first".into() });
        }
        Ok(b)
    }

    /// Self-normalizing backward pass (Eqs. 17, 20 with the bias term).
    ///
    /// Given the layer input `x` (`D x B`, the batch passed to the last
    /// [`forward`](Self::forward)) and $\delta_z$ = `dz`, writes
    /// $\delta_x = W^T\delta_z$ into `dx` and the loss gradients
    /// $$\partial_W\ell = \tfrac1B\big(-\tfrac12\delta_z + 2\lambda R^T e\big)x^T - \tfrac12 R^T,\quad
    /// \partial_R\ell = \tfrac1B\big(\tfrac12\delta_x + 2\lambda e\big)u^T + \tfrac12 W^T,\quad
    /// \partial_b\ell = -\tfrac1B\textstyle\sum_b \delta_{z,b}$$
    /// into `grads` ($u = Wx$, $e = RWx - x$). Six $D\times D\times B$ products, no
    /// inverse, no determinant, no allocation.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] on bad shapes or when
    /// `forward` was not called on this batch; [`Error::NonFinite`] if `lambda` is not finite.
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut LinearGrads<T>,
        ws: &mut LinearWorkspace<T>,
        lambda: T,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormLinear::backward";
        self.check_ws(OP, ws)?;
        self.check_grads(OP, grads)?;
        let b = self.check_after_forward(OP, x, ws)?;
        let d = self.dim();
        check_backward_operands(OP, d, b, &[(dz.nrows(), dz.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        if let InverseFit::Projection(p) = self.fit {
            return self.backward_projected(x, dz, dx, grads, ws, p, b);
        }
        let par = ws.par;
        let (one, half) = (T::from_f64(1.0), T::from_f64(0.5));
        let inv_b = T::from_f64(1.0 / b as f64);
        let two_lambda = T::from_f64(2.0) * lambda;
        let u = ws.u.as_ref().subcols(0, b);
        let mut e = ws.e.as_mut().subcols_mut(0, b);
        let mut t = ws.t.as_mut().subcols_mut(0, b);
        let mut dx = dx;

        // delta_x = W^T delta_z
        matmul(dx.rb_mut(), Accum::Replace, self.w.transpose(), dz, one, par);
        // e = R u - x
        let recon = self.residual(x, u, e.rb_mut(), par);
        // t = -1/2 delta_z + 2 lambda R^T e
        zip!(t.rb_mut(), dz).for_each(|unzip!(t, dz)| *t = -half * *dz);
        matmul(t.rb_mut(), Accum::Add, self.rt.as_ref(), e.rb(), two_lambda, par);
        // dW = (1/B) t x^T - 1/2 R^T   (R^T is stored: a contiguous scaled copy)
        par_cols((grads.w.as_mut(), self.rt.as_ref()), par, &|(g, rt)| zip!(g, rt).for_each(|unzip!(g, rt)| *g = -half * *rt));
        matmul(grads.w.as_mut(), Accum::Add, t.rb(), x.transpose(), inv_b, par);
        // s = 1/2 delta_x + 2 lambda e  (in place of e)
        zip!(e.rb_mut(), dx.rb()).for_each(|unzip!(e, dx)| *e = two_lambda * *e + half * *dx);
        // dR = (1/B) s u^T + 1/2 W^T, stored transposed: dR^T = (1/B) u s^T + 1/2 W
        par_cols((grads.rt.as_mut(), self.w.as_ref()), par, &|(g, w)| zip!(g, w).for_each(|unzip!(g, w)| *g = half * *w));
        matmul(grads.rt.as_mut(), Accum::Add, u, e.rb().transpose(), inv_b, par);
        // db = -(1/B) sum_b delta_z
        if let Some(gb) = grads.b.as_mut() {
            set_scaled_row_sums(gb.col_as_slice_mut(0), dz, -inv_b);
        }
        Ok(BackwardStats { reconstruction_error: recon })
    }

    /// Exact backward pass of the same objective (Eqs. 8, 9 with the bias and the
    /// reconstruction terms): $W^{-T}$ and $R^{-T}$ from LU in place of the learned
    /// inverse, and the true $\delta^g$.
    ///
    /// Needs, on the same workspace: [`forward`](Self::forward) on `x` (the f-chain input)
    /// and [`g_inverse`](Self::g_inverse) on the g-chain input $x_g$ (for a single layer,
    /// $x_g = x$), which yields $y = R^{-1}x_g + b$. `dz_f` is $\delta^f_z$ at $z = f(x)$,
    /// `dz_g` is $\delta^g_z$ at $y$. Writes $\delta^f_x = W^T\delta^f_z$ into `dx_f`,
    /// $\delta^g_x = R^{-T}\delta^g_z$ into `dx_g`, and
    /// $$\partial_W\ell = \tfrac1B\big(-\tfrac12\delta^f_z + 2\lambda R^Te\big)x^T - \tfrac12 W^{-T},\quad
    /// \partial_R\ell = \tfrac1B\big(\tfrac12\delta^g_x v^T + 2\lambda e u^T\big) + \tfrac12 R^{-T},$$
    /// $\partial_b\ell = -\frac1{2B}\sum_b(\delta^f_{z,b} + \delta^g_{z,b})$, with $v = R^{-1}x_g$.
    ///
    /// # Errors
    /// As [`backward`](Self::backward), plus [`Error::Singular`] / [`Error::NonFinite`]
    /// from the LU of $W$, and [`Error::InvalidArgument`] if `g_inverse` was not called.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_exact(
        &self,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut LinearGrads<T>,
        ws: &mut LinearWorkspace<T>,
        lambda: T,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormLinear::backward_exact";
        self.check_ws(OP, ws)?;
        self.check_grads(OP, grads)?;
        let b = self.check_after_forward(OP, x, ws)?;
        let d = self.dim();
        let shapes = [(dz_f.nrows(), dz_f.ncols()), (dz_g.nrows(), dz_g.ncols()), (dx_f.nrows(), dx_f.ncols()), (dx_g.nrows(), dx_g.ncols())];
        check_backward_operands(OP, d, b, &shapes, lambda)?;
        if ws.exact.as_ref().and_then(|e| e.g_batch) != Some(b) {
            return Err(Error::InvalidArgument { op: OP, reason: "call g_inverse() on this batch with this workspace first".into() });
        }
        if let InverseFit::Projection(_) = self.fit {
            return self.backward_exact_projected(x, dz_f, dz_g, dx_f, dx_g, grads, ws, b);
        }
        let par = ws.par;
        let (one, half) = (T::from_f64(1.0), T::from_f64(0.5));
        let inv_b = T::from_f64(1.0 / b as f64);
        let two_lambda = T::from_f64(2.0) * lambda;
        let u = ws.u.as_ref().subcols(0, b);
        let mut e = ws.e.as_mut().subcols_mut(0, b);
        let mut t = ws.t.as_mut().subcols_mut(0, b);
        let ex = ws.exact.as_mut().ok_or_else(|| Error::InvalidArgument { op: OP, reason: "no exact buffers".into() })?;
        let v = ex.v.as_ref().subcols(0, b);
        let (mut dx_f, mut dx_g) = (dx_f, dx_g);

        matmul(dx_f.rb_mut(), Accum::Replace, self.w.transpose(), dz_f, one, par);
        dx_g.copy_from(dz_g);
        ex.lu_r.solve_transpose_in_place(dx_g.rb_mut())?;
        let recon = self.residual(x, u, e.rb_mut(), par);
        zip!(t.rb_mut(), dz_f).for_each(|unzip!(t, dz)| *t = -half * *dz);
        matmul(t.rb_mut(), Accum::Add, self.rt.as_ref(), e.rb(), two_lambda, par);
        // dW = -1/2 W^{-T} + (1/B) t x^T
        ex.lu_w.factor(self.w.as_ref())?;
        ex.lu_w.inverse_transpose_into(grads.w.as_mut())?;
        zip!(grads.w.as_mut()).for_each(|unzip!(g)| *g = -half * *g);
        matmul(grads.w.as_mut(), Accum::Add, t.rb(), x.transpose(), inv_b, par);
        // dR = 1/2 R^{-T} + (1/B)(1/2 dx_g v^T + 2 lambda e u^T), stored transposed:
        // dR^T = 1/2 R^{-1} + (1/B)(1/2 v dx_g^T + 2 lambda u e^T)
        ex.lu_r.inverse_into(grads.rt.as_mut())?;
        zip!(grads.rt.as_mut()).for_each(|unzip!(g)| *g = half * *g);
        matmul(grads.rt.as_mut(), Accum::Add, v, dx_g.rb().transpose(), half * inv_b, par);
        matmul(grads.rt.as_mut(), Accum::Add, u, e.rb().transpose(), two_lambda * inv_b, par);
        if let Some(gb) = grads.b.as_mut() {
            // t is free again: t = dz_f + dz_g
            zip!(t.rb_mut(), dz_f, dz_g).for_each(|unzip!(t, f, g)| *t = *f + *g);
            set_scaled_row_sums(gb.col_as_slice_mut(0), t.rb(), -half * inv_b);
        }
        ex.g_batch = None;
        Ok(BackwardStats { reconstruction_error: recon })
    }
}
