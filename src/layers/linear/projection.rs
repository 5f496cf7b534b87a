//! The projection fit ([`InverseFit::Projection`]): the plain flow's gradient with $R^T$ in
//! place of $W^{-T}$ (Eq. 10), and the per-batch projection of $R$ (`proofs/projection.md`).

use crate::util::gemm as matmul;
use faer::reborrow::ReborrowMut;
use faer::{unzip, zip, Accum, MatMut, MatRef};

use super::{BackwardStats, InverseFit, LinearGrads, LinearWorkspace, Projection, SelfNormLinear};
use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::{par_cols, set_scaled_row_sums};

impl<T: Real> SelfNormLinear<T> {
    /// [`backward`](Self::backward) under [`InverseFit::Projection`]: $\delta_x = W^T\delta_z$,
    /// $\partial_W\ell = -\tfrac1B\delta_zx^T - R^T$, $\partial_R\ell = 0$,
    /// $\partial_b\ell = -\tfrac1B\sum_b\delta_{z,b}$, and the projection's
    /// $T = E(U^TU + \rho I)^{-1}$ left in the workspace for [`apply_projection`](Self::apply_projection)
    /// (none when the batch's outputs are non-finite or all zero).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_projected(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        mut dx: MatMut<'_, T>,
        grads: &mut LinearGrads<T>,
        ws: &mut LinearWorkspace<T>,
        p: Projection,
        b: usize,
    ) -> Result<BackwardStats> {
        let par = ws.par;
        let inv_b = T::from_f64(1.0 / b as f64);
        matmul(dx.rb_mut(), Accum::Replace, self.w.transpose(), dz, T::from_f64(1.0), par);
        let u = ws.u.as_ref().subcols(0, b);
        let mut e = ws.e.as_mut().subcols_mut(0, b);
        let recon = self.residual(x, u, e.rb_mut(), par);
        // dW = -(1/B) dz x^T - R^T
        par_cols((grads.w.as_mut(), self.rt.as_ref()), par, &|(g, rt)| zip!(g, rt).for_each(|unzip!(g, rt)| *g = -*rt));
        matmul(grads.w.as_mut(), Accum::Add, dz, x.transpose(), -inv_b, par);
        // dR = 0: it stays zero from step to step, so it is written only when it is not
        // (reading it costs half of writing it)
        if !crate::util::all_zero_par(grads.rt.as_ref(), par) {
            par_cols(grads.rt.as_mut(), par, &|g| zip!(g).for_each(|unzip!(g)| *g = T::from_f64(0.0)));
        }
        if let Some(gb) = grads.b.as_mut() {
            set_scaled_row_sums(gb.col_as_slice_mut(0), dz, -inv_b);
        }
        ws.ensure_projection()?;
        let u = ws.u.as_ref().subcols(0, b);
        let e = ws.e.as_ref().subcols(0, b);
        let t = ws.t.as_mut().subcols_mut(0, b);
        let proj = ws.proj.as_mut().ok_or_else(|| Error::InvalidArgument { op: "SelfNormLinear::backward", reason: "no projection buffers".into() })?;
        // A batch with non-finite outputs (its loss and gradients are then non-finite too, and a
        // trainer skips the step) or with all outputs zero leaves R as it is.
        proj.pending = match proj.solve(u, e, t, p.ridge, par) {
            Ok(()) => Some(b),
            Err(Error::NonFinite { .. } | Error::Singular { .. }) => None,
            Err(err) => return Err(err),
        };
        Ok(BackwardStats { reconstruction_error: recon })
    }

    /// Apply the projection step that the last [`backward`](Self::backward) prepared in
    /// `ws`: $R \leftarrow R - \mu\,E(U^TU + \rho I)^{-1}U^T$, one $D\times D\times B$ product.
    /// Returns whether a step was applied: `false` for an [`InverseFit::Penalty`] layer, or
    /// when no step is pending (none was prepared, it was applied already, or a
    /// [`forward`](Self::forward) on this workspace has since replaced the batch it was made for).
    ///
    /// A training loop calls it once per step, after the optimiser
    /// ([`Transform::after_step`](crate::transform::Transform::after_step) does it for flows).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a workspace of another dimension.
    pub fn apply_projection(&mut self, ws: &mut LinearWorkspace<T>) -> Result<bool> {
        self.check_ws("SelfNormLinear::apply_projection", ws)?;
        let InverseFit::Projection(p) = self.fit else { return Ok(false) };
        let Some(b) = ws.proj.as_mut().and_then(|q| q.pending.take()) else { return Ok(false) };
        // R^T -= mu U T^T
        matmul(self.rt.as_mut(), Accum::Add, ws.u.as_ref().subcols(0, b), ws.t.as_ref().subcols(0, b).transpose(), T::from_f64(-p.relax), ws.par);
        Ok(true)
    }

    /// [`backward_exact`](Self::backward_exact) under [`InverseFit::Projection`]: the exact
    /// gradient of the plain flow's loss, $\partial_W\ell = -\tfrac1B\delta^f_zx^T - W^{-T}$,
    /// $\partial_R\ell = 0$, $\partial_b\ell = -\tfrac1B\sum_b\delta^f_{z,b}$; the g chain's
    /// delta $\delta^g_x = R^{-T}\delta^g_z$ is still passed on for the layers below.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_exact_projected(
        &self,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        mut dx_f: MatMut<'_, T>,
        mut dx_g: MatMut<'_, T>,
        grads: &mut LinearGrads<T>,
        ws: &mut LinearWorkspace<T>,
        b: usize,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormLinear::backward_exact";
        let par = ws.par;
        let inv_b = T::from_f64(1.0 / b as f64);
        let u = ws.u.as_ref().subcols(0, b);
        let e = ws.e.as_mut().subcols_mut(0, b);
        let ex = ws.exact.as_mut().ok_or_else(|| Error::InvalidArgument { op: OP, reason: "no exact buffers".into() })?;
        matmul(dx_f.rb_mut(), Accum::Replace, self.w.transpose(), dz_f, T::from_f64(1.0), par);
        dx_g.copy_from(dz_g);
        ex.lu_r.solve_transpose_in_place(dx_g.rb_mut())?;
        let recon = self.residual(x, u, e, par);
        ex.lu_w.factor(self.w.as_ref())?;
        ex.lu_w.inverse_transpose_into(grads.w.as_mut())?;
        zip!(grads.w.as_mut()).for_each(|unzip!(g)| *g = -*g);
        matmul(grads.w.as_mut(), Accum::Add, dz_f, x.transpose(), -inv_b, par);
        zip!(grads.rt.as_mut()).for_each(|unzip!(g)| *g = T::from_f64(0.0));
        if let Some(gb) = grads.b.as_mut() {
            set_scaled_row_sums(gb.col_as_slice_mut(0), dz_f, -inv_b);
        }
        ex.g_batch = None;
        Ok(BackwardStats { reconstruction_error: recon })
    }
}
