//! Backward passes: self-normalizing (Eqs. 15, 16, 28, 29 with the λ terms) and exact.
//!
//! Both return gradients of the loss $\ell = -\frac1B\sum_b\mathcal L(x_b)$ (Eq. 3).
//! Derivations: `proofs/conv.md`, `proofs/asymmetric.md`.

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, Accum, MatMut, MatRef};

use super::forward::channel_sums;
use super::fused::{snf_backward_chunk, Fused, FusedChunk};
use super::{Conv2dGrads, ConvWorkspace, SelfNormConv2d};
use crate::conv::chunk::{chunks_used, for_chunks, reduce_dk, BatchMut, BatchRef, Chunk};
use crate::conv::ops::{contiguous, contiguous_mut};
use crate::conv::{flip_into, project_onto_kernel, resize_centered_into};
use crate::error::{Error, Result};
use crate::layers::check_backward_operands;
use crate::layers::linear::InverseFit;
use crate::layers::BackwardStats;
use crate::real::Real;

/// The batch views a chunk of the SNF backward pass works on: `((x, dz), (u, dx))`.
type Views<'a, T> = ((BatchRef<'a, T>, BatchRef<'a, T>), (BatchRef<'a, T>, BatchMut<'a, T>));
/// Its scratch: `((conv_w chunk, conv_r chunk), fused buffers)`.
type Scr<'a, T> = ((&'a mut [Chunk<T>], &'a mut [Chunk<T>]), &'a mut [FusedChunk<T>]);

impl<T: Real> SelfNormConv2d<T> {
    fn check_after_forward(&self, op: &'static str, x: MatRef<'_, T>, ws: &ConvWorkspace<T>) -> Result<usize> {
        let b = ws.check_batch(op, x)?;
        if ws.batch != Some(b) {
            return Err(Error::InvalidArgument { op, reason: "call forward() on this batch with this workspace first".into() });
        }
        Ok(b)
    }

    /// The self-normalizing log-det surrogates, written into `ws`:
    /// `flip_r_w` $= \mathrm{rs}_{r\to w}(\mathrm{flip}\,r)$ and `flip_w_r` $= \mathrm{rs}_{w\to r}(\mathrm{flip}\,w)$.
    pub(super) fn surrogates(&self, ws: &mut ConvWorkspace<T>) -> Result<()> {
        let cg = self.geom_w.in_per_group();
        flip_into(&self.geom_r, self.r.as_ref(), ws.flip_r.as_mut())?;
        resize_centered_into(ws.flip_r.as_ref(), cg, self.geom_r.kernel_size(), self.geom_w.kernel_size(), ws.flip_r_w.as_mut())?;
        flip_into(&self.geom_w, self.w.as_ref(), ws.flip_w.as_mut())?;
        resize_centered_into(ws.flip_w.as_ref(), cg, self.geom_w.kernel_size(), self.geom_r.kernel_size(), ws.flip_w_r.as_mut())
    }

    /// Self-normalizing backward pass.
    ///
    /// Given the layer input `x` (`D x B`, the batch of the last [`forward`](Self::forward))
    /// and $\delta_z$ = `dz`, writes $\delta_x = \mathcal T(w)^T\delta_z$ into `dx` and
    /// $$\partial_w\ell = \tfrac1B P_w\big[(-\tfrac12\delta_z + 2\lambda\,\mathcal T(r)^Te)\,x^T\big]
    ///   {}- \tfrac12\,\mathrm{rs}_{r\to w}(\mathrm{flip}\,r)\odot m_w,$$
    /// $$\partial_r\ell = \tfrac1B P_r\big[(\tfrac12\delta_x + 2\lambda e)\,u^T\big]
    ///   {}+ \tfrac12\,\mathrm{rs}_{w\to r}(\mathrm{flip}\,w)\odot m_r,\qquad
    ///   \partial_{b_c}\ell = -\tfrac1B\textstyle\sum_{b,\text{pixels of }c}\delta_z$$
    /// into `grads` ($u = w\star x$, $e = r\star u - x$). Six convolutions (two forward, two
    /// input-gradient, two kernel-gradient), no matrix, no inverse, no determinant, no allocation.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] on bad shapes or when `forward`
    /// was not called on this batch; [`Error::NonFinite`] if `lambda` is not finite.
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Conv2dGrads<T>,
        ws: &mut ConvWorkspace<T>,
        lambda: T,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormConv2d::backward";
        self.check_ws(OP, ws)?;
        self.check_grads(OP, grads)?;
        let b = self.check_after_forward(OP, x, ws)?;
        let d = self.dim();
        check_backward_operands(OP, d, b, &[(dz.nrows(), dz.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        if let InverseFit::Projection(p) = self.fit {
            return self.backward_projected(x, dz, dx, grads, ws, p, b, lambda);
        }
        let half = T::from_f64(0.5);
        let inv_b = T::from_f64(1.0 / b as f64);
        let two_lambda = T::from_f64(2.0) * lambda;
        self.surrogates(ws)?;
        let ConvWorkspace { conv_w, conv_r, u, flip_r_w, flip_w_r, fused, block, .. } = ws;
        let (x, dz) = (contiguous(OP, x)?, contiguous(OP, dz)?);
        let dx = contiguous_mut(OP, dx)?;
        let u = contiguous(OP, u.as_ref().subcols(0, b))?;
        let used = chunks_used(conv_w.n_chunks().min(conv_r.n_chunks()).min(fused.len()), b);
        let pw = conv_w.parts(Some(self.w.as_ref()))?;
        let pr = conv_r.parts(Some(self.r.as_ref()))?;
        let (Some(w_flip), Some(r_flip)) = (pw.flipped, pr.flipped) else {
            return Err(Error::InvalidConv { op: OP, reason: "geometry is not self-transposing".into() });
        };
        let k = Fused { plan_w: pw.plan, plan_r: pr.plan, w_flip, r: self.r.as_ref(), r_flip, block: *block, two_lambda };
        // One fork-join for the whole pass (see `fused`): each chunk of the batch runs all
        // six convolutions on its own examples and scratch; partial kernel gradients, the
        // squared residual and the per-channel sums of delta_z are reduced after the join.
        for_chunks(((x, dz), (u, dx)), ((pw.chunks, pr.chunks), &mut fused[..]), used, &|((x, dz), (u, dx)): Views<'_, T>, ((cw, cr), fc): Scr<'_, T>| {
            if let (Some(cw), Some(cr), Some(fc)) = (cw.first_mut(), cr.first_mut(), fc.first_mut()) {
                snf_backward_chunk(k, x, dz, u, dx, cw, cr, fc);
            }
        });

        let (cw, cr) = (&conv_w.chunks()[..used], &conv_r.chunks()[..used]);
        // dw = (1/B) P_w(t x^T) - 1/2 rs(flip r) . m_w
        reduce_dk(cw, grads.w.as_mut(), inv_b, Accum::Replace);
        zip!(grads.w.as_mut(), flip_r_w.as_ref(), self.m_w.as_ref()).for_each(|unzip!(g, f, m)| *g -= half * *f * *m);
        // dr = (1/B) P_r(s u^T) + 1/2 rs(flip w) . m_r
        reduce_dk(cr, grads.r.as_mut(), inv_b, Accum::Replace);
        zip!(grads.r.as_mut(), flip_w_r.as_ref(), self.m_r.as_ref()).for_each(|unzip!(g, f, m)| *g += half * *f * *m);
        let recon = cw.iter().map(|c| c.scalar).sum::<f64>() / b as f64;
        // db_c = -(1/B) sum of delta_z over the batch and the pixels of channel c
        if let Some(gb) = grads.b.as_mut() {
            for (c, d) in gb.col_as_slice_mut(0).iter_mut().enumerate() {
                *d = -inv_b * T::from_f64(cw.iter().map(|ch| ch.sums[c]).sum::<f64>());
            }
        }
        Ok(BackwardStats { reconstruction_error: recon })
    }

    /// Exact backward pass of the same objective: $P_w(\mathcal T(w)^{-T})$ and
    /// $P_r(\mathcal T(r)^{-T})$ by LU of the dense matrices in place of the surrogates,
    /// and the true $\delta^g$.
    ///
    /// Needs, on the same workspace, [`forward`](Self::forward) on `x` and
    /// [`g_inverse`](Self::g_inverse) on the g-chain input (for a single layer, `x`).
    /// `dz_f` is $\delta^f_z$ at $f(x)$ and `dz_g` is $\delta^g_z$ at $g^{-1}(x)$. Writes
    /// $\delta^f_x = \mathcal T(w)^T\delta^f_z$ into `dx_f`,
    /// $\delta^g_x = \mathcal T(r)^{-T}\delta^g_z$ into `dx_g`, and
    /// $$\partial_w\ell = \tfrac1B P_w\big[(-\tfrac12\delta^f_z + 2\lambda\,\mathcal T(r)^Te)x^T\big] - \tfrac12P_w(\mathcal T(w)^{-T}),$$
    /// $$\partial_r\ell = \tfrac1B P_r\big[\tfrac12\delta^g_x v^T + 2\lambda e u^T\big] + \tfrac12 P_r(\mathcal T(r)^{-T}),$$
    /// $\partial_{b_c}\ell = -\frac1{2B}\sum(\delta^f_z + \delta^g_z)$ over the pixels of $c$,
    /// with $v = \mathcal T(r)^{-1}x_g$.
    ///
    /// # Errors
    /// As [`backward`](Self::backward), plus the LU's [`Error::Singular`] /
    /// [`Error::NonFinite`], and [`Error::InvalidArgument`] if `g_inverse` was not called.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_exact(
        &self,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut Conv2dGrads<T>,
        ws: &mut ConvWorkspace<T>,
        lambda: T,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormConv2d::backward_exact";
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
            return self.backward_exact_projected(x, dz_f, dz_g, dx_f, dx_g, grads, ws, b, lambda);
        }
        let half = T::from_f64(0.5);
        let inv_b = T::from_f64(1.0 / b as f64);
        let two_lambda = T::from_f64(2.0) * lambda;
        let hw = self.pixels();
        let ConvWorkspace { conv_w, conv_r, u, e, t, exact, .. } = ws;
        let Some(ex) = exact.as_mut() else {
            return Err(Error::InvalidArgument { op: OP, reason: "call g_inverse() on this batch with this workspace first".into() });
        };
        let u = u.as_ref().subcols(0, b);
        let mut e = e.as_mut().subcols_mut(0, b);
        let mut t = t.as_mut().subcols_mut(0, b);
        let (mut dx_f, mut dx_g) = (dx_f, dx_g);

        // f side: delta_x^f, residual, t, data + reconstruction part of dw
        conv_w.input_grad(self.w.as_ref(), dz_f, dx_f.rb_mut(), T::from_f64(1.0), Accum::Replace)?;
        let recon = self.residual(x, u, e.rb_mut(), conv_r)?;
        zip!(t.rb_mut(), dz_f).for_each(|unzip!(t, dz)| *t = -half * *dz);
        conv_r.input_grad(self.r.as_ref(), e.rb(), t.rb_mut(), two_lambda, Accum::Add)?;
        conv_w.weight_grad(x, t.rb(), grads.w.as_mut(), inv_b, Accum::Replace)?;
        // dw -= 1/2 P_w(T(w)^{-T})
        self.ensure_lu_w(ex)?;
        ex.lu_w.inverse_transpose_into(ex.inv.as_mut())?;
        project_onto_kernel(&self.geom_w, ex.inv.as_ref(), grads.w.as_mut(), -half, Accum::Add)?;

        // g side: delta_x^g = T(r)^{-T} delta_z^g (LU of T(r) from g_inverse)
        self.ensure_lu_r(ex)?;
        dx_g.copy_from(dz_g);
        ex.lu_r.solve_transpose_in_place(dx_g.rb_mut())?;
        // dr = (1/2B) P_r(delta_x^g v^T) + (2 lambda / B) P_r(e u^T) + 1/2 P_r(T(r)^{-T})
        let v = ex.v.as_ref().subcols(0, b);
        conv_r.weight_grad(v, dx_g.rb(), grads.r.as_mut(), half * inv_b, Accum::Replace)?;
        conv_r.weight_grad(u, e.rb(), grads.r.as_mut(), two_lambda * inv_b, Accum::Add)?;
        ex.lu_r.inverse_transpose_into(ex.inv.as_mut())?;
        project_onto_kernel(&self.geom_r, ex.inv.as_ref(), grads.r.as_mut(), half, Accum::Add)?;

        // db_c = -(1/2B) sum (delta_z^f + delta_z^g)
        if let Some(gb) = grads.b.as_mut() {
            let gb = gb.col_as_slice_mut(0);
            channel_sums(gb, dz_f, hw, -half * inv_b, false);
            channel_sums(gb, dz_g, hw, -half * inv_b, true);
        }
        Ok(BackwardStats { reconstruction_error: recon })
    }
}
