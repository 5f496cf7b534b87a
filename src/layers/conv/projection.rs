//! The projection fit for convolutions ([`InverseFit::Projection`]): the plain flow's
//! gradient with $\mathrm{flip}(r)\odot m$ in place of $P_w(\mathcal T(w)^{-T})$ (Eqs. 15, 28)
//! plus λ's pull $\lambda\lVert r\star(w\star x) - x\rVert^2$ on $w$ alone, and, after each
//! optimiser step, $r$ refitted to the batch by a proximal least-squares step
//! (`proofs/projection.md`, §4).
//!
//! Unlike the dense layer's, a convolution's inverse kernel has fewer unknowns
//! ($C_g K_H K_W$ per output channel) than the batch has equations ($B\cdot H W$ per output
//! channel), so no kernel reconstructs the batch exactly. The step is the proximal
//! least-squares update
//! $$r^\ast = \arg\min_r \lVert r\star u - x\rVert^2 + \rho\lVert r - r_{old}\rVert^2,
//!   \qquad r \leftarrow r_{old} + \mu(r^\ast - r_{old}),$$
//! with $u = w\star x$ from the forward pass. Per group it is one $n\times n$ Cholesky solve
//! ($n = C_g K_H K_W$) of the patches' Gram matrix $G = \sum_b \mathrm{im2col}(u_b)^T
//! \mathrm{im2col}(u_b)$, with $\rho$ = `ridge` times the mean diagonal of $G$ (so the step
//! does not depend on the data's scale).

use dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, Accum, Mat, MatMut, MatRef, Par};

use super::forward::channel_sums;
use super::{Conv2dGrads, ConvWorkspace, SelfNormConv2d};
use crate::conv::im2col::{im2col_stacked, is_flat_shift};
use crate::conv::{project_onto_kernel, Conv2d, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::layers::linear::{InverseFit, Projection};
use crate::layers::BackwardStats;
use crate::real::Real;
use crate::util::gemm as matmul;

/// The most entries of patches (rows times taps) gathered per product when accumulating the
/// Gram matrix: 4 MiB in f32, a whole MNIST batch of 100 for every layer of the conv model.
const PATCH_ENTRIES: usize = 1 << 20;

/// The conv projection fit's buffers: a chunk of patches and of targets, the Gram matrix,
/// the right-hand side, the fitted kernel and a Cholesky scratch.
pub(crate) struct ConvProjectionBuffers<T: Real> {
    cols: Mat<T>,
    /// A chunk of `u` stacked channel by channel (`nb * HW x C`), and of `x` likewise.
    stack: Mat<T>,
    tgt: Mat<T>,
    gram: Mat<T>,
    rhs: Mat<T>,
    next: Mat<T>,
    scratch: MemBuffer,
    /// Whether `next` holds a fitted kernel not yet applied.
    pub(crate) pending: bool,
}

impl<T: Real> core::fmt::Debug for ConvProjectionBuffers<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConvProjectionBuffers").field("taps", &self.gram.nrows()).field("pending", &self.pending).finish_non_exhaustive()
    }
}

impl<T: Real> ConvProjectionBuffers<T> {
    /// Buffers for batches of up to `max_batch`, gathering `per_chunk` examples per product
    /// (`None`: as many as [`PATCH_ENTRIES`] allows).
    pub(crate) fn new(geom_r: &Conv2dGeometry, max_batch: usize, per_chunk: Option<usize>) -> Result<Self> {
        // every self-transposing geometry (stride 1, "same" padding) is one, so the patches
        // of a stacked batch are flat shifts (`im2col_stacked`)
        if !is_flat_shift(geom_r) {
            return Err(Error::InvalidConv { op: "InverseFit::Projection", reason: "the refit needs a stride-1 'same' geometry".into() });
        }
        let taps = geom_r.taps();
        let p = geom_r.out_positions();
        let per = per_chunk.unwrap_or(PATCH_ENTRIES / taps.max(1) / p.max(1));
        let rows = per.clamp(1, max_batch.max(1)) * p;
        let req = llt::factor::cholesky_in_place_scratch::<T>(taps, Par::Seq, Default::default());
        let scratch = MemBuffer::try_new(StackReq::any_of(&[req])).map_err(|_| Error::InvalidArgument {
            op: "InverseFit::Projection",
            reason: format!("the Cholesky scratch for {taps} taps cannot be allocated"),
        })?;
        let (kr, kc) = geom_r.kernel_shape();
        Ok(Self {
            cols: crate::util::try_zeros(rows, taps)?,
            stack: crate::util::try_zeros(rows, geom_r.in_channels())?,
            tgt: crate::util::try_zeros(rows, geom_r.out_channels())?,
            gram: crate::util::try_zeros(taps, taps)?,
            rhs: crate::util::try_zeros(taps, geom_r.out_per_group())?,
            next: crate::util::try_zeros(kr, kc)?,
            scratch,
            pending: false,
        })
    }

    /// Fit `next` = $r_{old} + \mu(r^\ast - r_{old})$ to the pairs $(u_b, x_b)$ (module doc).
    ///
    /// # Errors
    /// [`Error::NonFinite`] for a non-finite batch or fit; [`Error::Singular`] when the Gram
    /// matrix is zero (all outputs zero) or not positive definite.
    pub(crate) fn fit(&mut self, geom: &Conv2dGeometry, u: MatRef<'_, T>, x: MatRef<'_, T>, r_old: MatRef<'_, T>, p: Projection, par: Par) -> Result<()> {
        const OP: &str = "InverseFit::Projection";
        let b = u.ncols();
        let pos = geom.out_positions();
        let taps = geom.taps();
        let opg = geom.out_per_group();
        let per = (self.cols.nrows() / pos.max(1)).max(1);
        let cg = geom.in_per_group();
        // example j's channel c of `src` into rows j*HW.. of column c of `dst`
        let stack = |dst: &mut Mat<T>, src: MatRef<'_, T>, start: usize, nb: usize, channels: core::ops::Range<usize>| {
            for j in 0..nb {
                let col = src.col(start + j);
                for c in channels.clone() {
                    let d = &mut dst.col_as_slice_mut(c)[j * pos..(j + 1) * pos];
                    for (d, v) in d.iter_mut().zip(col.subrows(c * pos, pos).iter()) {
                        *d = *v;
                    }
                }
            }
        };
        for g in 0..geom.groups() {
            let mut start = 0;
            while start < b {
                let nb = per.min(b - start);
                // stack this group's channels of the chunk: u for the patches, x for the targets
                stack(&mut self.stack, u, start, nb, g * cg..(g + 1) * cg);
                stack(&mut self.tgt, x, start, nb, g * opg..(g + 1) * opg);
                im2col_stacked(geom, &self.stack, nb, g, &mut self.cols, 0, 0);
                let acc = if start == 0 { Accum::Replace } else { Accum::Add };
                let c = self.cols.as_ref().subrows(0, nb * pos);
                let t = self.tgt.as_ref().subrows(0, nb * pos).subcols(g * opg, opg);
                matmul(self.gram.as_mut(), acc, c.transpose(), c, T::from_f64(1.0), par);
                matmul(self.rhs.as_mut(), acc, c.transpose(), t, T::from_f64(1.0), par);
                start += nb;
            }
            let trace: f64 = (0..taps).map(|i| self.gram[(i, i)].as_f64()).sum();
            if !trace.is_finite() {
                return Err(Error::NonFinite { op: OP });
            }
            let rho64 = p.ridge * trace / taps as f64;
            let rho = T::from_f64(rho64);
            if rho64.is_nan() || rho64 <= 0.0 || rho.as_f64() <= 0.0 {
                return Err(Error::Singular { op: OP, index: 0, pivot: 0.0, max_pivot: 0.0 });
            }
            let old = r_old.subcols(g * opg, opg);
            for i in 0..taps {
                self.gram[(i, i)] += rho;
            }
            zip!(self.rhs.as_mut(), old).for_each(|unzip!(h, o)| *h += rho * *o);
            let stack = MemStack::new(&mut self.scratch);
            llt::factor::cholesky_in_place(self.gram.as_mut(), Default::default(), Par::Seq, stack, Default::default()).map_err(|_| Error::Singular {
                op: OP,
                index: 0,
                pivot: 0.0,
                max_pivot: trace,
            })?;
            llt::solve::solve_in_place(self.gram.as_ref(), self.rhs.as_mut(), Par::Seq, MemStack::new(&mut self.scratch));
            if !crate::util::all_finite(self.rhs.as_ref()) {
                return Err(Error::NonFinite { op: OP });
            }
            let mu = T::from_f64(p.relax);
            zip!(self.next.as_mut().subcols_mut(g * opg, opg), old, self.rhs.as_ref()).for_each(|unzip!(n, o, s)| *n = *o + mu * (*s - *o));
        }
        Ok(())
    }
}

impl<T: Real> SelfNormConv2d<T> {
    /// $\partial_w\ell \mathrel{+}= \tfrac{2\lambda}B P_w(\mathcal T(r)^Te\,x^T)$: λ's pull on $w$
    /// with $r$ held (nothing for λ = 0), `t` as scratch.
    fn add_pull(
        &self,
        x: MatRef<'_, T>,
        e: MatRef<'_, T>,
        mut t: MatMut<'_, T>,
        dw: MatMut<'_, T>,
        convs: (&mut Conv2d<T>, &mut Conv2d<T>),
        lambda: T,
    ) -> Result<()> {
        if lambda == T::from_f64(0.0) {
            return Ok(());
        }
        let (conv_w, conv_r) = convs;
        conv_r.input_grad(self.r.as_ref(), e, t.rb_mut(), T::from_f64(2.0) * lambda, Accum::Replace)?;
        conv_w.weight_grad(x, t.rb(), dw, T::from_f64(1.0 / x.ncols() as f64), Accum::Add)
    }

    /// [`backward`](Self::backward) under [`InverseFit::Projection`]: $\delta_x = \mathcal T(w)^T\delta_z$,
    /// $\partial_w\ell = -\tfrac1B P_w(\delta_z x^T) - \mathrm{rs}_{r\to w}(\mathrm{flip}\,r)\odot m_w +
    /// \tfrac{2\lambda}B P_w(\mathcal T(r)^Te\,x^T)$ ($e = r\star(w\star x) - x$, $r$ held: the pull
    /// toward kernels $r$ can invert), $\partial_r\ell = 0$, $\partial_{b_c}\ell = -\tfrac1B\sum\delta_z$
    /// over the pixels of $c$, and the refitted kernel left in the workspace for
    /// [`apply_projection`](Self::apply_projection) (none when the batch is non-finite or zero).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_projected(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Conv2dGrads<T>,
        ws: &mut ConvWorkspace<T>,
        p: Projection,
        b: usize,
        lambda: T,
    ) -> Result<BackwardStats> {
        let inv_b = T::from_f64(1.0 / b as f64);
        let hw = self.pixels();
        let par = ws.par;
        ws.ensure_projection()?;
        self.surrogates(ws)?;
        let ConvWorkspace { conv_w, conv_r, u, e, t, flip_r_w, proj, .. } = ws;
        let u = u.as_ref().subcols(0, b);
        let mut dx = dx;
        conv_w.input_grad(self.w.as_ref(), dz, dx.rb_mut(), T::from_f64(1.0), Accum::Replace)?;
        let recon = self.residual(x, u, e.as_mut().subcols_mut(0, b), conv_r)?;
        // dw = -(1/B) P_w(dz x^T) - rs(flip r) . m_w [+ (2 lambda / B) P_w(T(r)^T e x^T)]
        conv_w.weight_grad(x, dz, grads.w.as_mut(), -inv_b, Accum::Replace)?;
        self.add_pull(x, e.as_ref().subcols(0, b), t.as_mut().subcols_mut(0, b), grads.w.as_mut(), (conv_w, conv_r), lambda)?;
        zip!(grads.w.as_mut(), flip_r_w.as_ref(), self.m_w.as_ref()).for_each(|unzip!(g, f, m)| *g -= *f * *m);
        zip!(grads.r.as_mut()).for_each(|unzip!(g)| *g = T::from_f64(0.0));
        if let Some(gb) = grads.b.as_mut() {
            channel_sums(gb.col_as_slice_mut(0), dz, hw, -inv_b, false);
        }
        let Some(proj) = proj.as_mut() else {
            return Err(Error::InvalidArgument { op: "SelfNormConv2d::backward", reason: "no projection buffers".into() });
        };
        // A batch with non-finite outputs (its loss and gradients are then non-finite too, and
        // a trainer skips the step) or with all outputs zero leaves r as it is.
        proj.pending = match proj.fit(&self.geom_r, u, x, self.r.as_ref(), p, par) {
            Ok(()) => true,
            Err(Error::NonFinite { .. } | Error::Singular { .. }) => false,
            Err(err) => return Err(err),
        };
        Ok(BackwardStats { reconstruction_error: recon })
    }

    /// Apply the refit that the last [`backward`](Self::backward) prepared in `ws`:
    /// $r \leftarrow r_{old} + \mu(r^\ast - r_{old})$. Returns whether a step was applied:
    /// `false` for an [`InverseFit::Penalty`] layer, or when no step is pending (none was
    /// prepared, it was applied already, or a [`forward`](Self::forward) on this workspace
    /// has since replaced the batch it was made for).
    ///
    /// A training loop calls it once per step, after the optimiser
    /// ([`Transform::after_step`](crate::transform::Transform::after_step) does it for flows).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a workspace made for another layer shape.
    pub fn apply_projection(&mut self, ws: &mut ConvWorkspace<T>) -> Result<bool> {
        self.check_ws("SelfNormConv2d::apply_projection", ws)?;
        let InverseFit::Projection(_) = self.fit else { return Ok(false) };
        let Some(proj) = ws.proj.as_mut().filter(|q| q.pending) else { return Ok(false) };
        proj.pending = false;
        self.r.copy_from(proj.next.as_ref());
        self.invalidate();
        Ok(true)
    }

    /// [`backward_exact`](Self::backward_exact) under [`InverseFit::Projection`]: the exact
    /// gradient of the same objective (the plain flow's loss and λ's pull on $w$),
    /// $\partial_w\ell = -\tfrac1BP_w(\delta^f_zx^T) - P_w(\mathcal T(w)^{-T}) + \tfrac{2\lambda}B P_w(\mathcal T(r)^Te\,x^T)$,
    /// $\partial_r\ell = 0$, $\partial_{b_c}\ell = -\tfrac1B\sum\delta^f_z$; the g chain's delta
    /// $\delta^g_x = \mathcal T(r)^{-T}\delta^g_z$ is still passed on for the layers below.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_exact_projected(
        &self,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut Conv2dGrads<T>,
        ws: &mut ConvWorkspace<T>,
        b: usize,
        lambda: T,
    ) -> Result<BackwardStats> {
        const OP: &str = "SelfNormConv2d::backward_exact";
        let inv_b = T::from_f64(1.0 / b as f64);
        let hw = self.pixels();
        let ConvWorkspace { conv_w, conv_r, u, e, t, exact, .. } = ws;
        let Some(ex) = exact.as_mut() else {
            return Err(Error::InvalidArgument { op: OP, reason: "call g_inverse() on this batch with this workspace first".into() });
        };
        let (mut dx_f, mut dx_g) = (dx_f, dx_g);
        conv_w.input_grad(self.w.as_ref(), dz_f, dx_f.rb_mut(), T::from_f64(1.0), Accum::Replace)?;
        self.ensure_lu_r(ex)?;
        dx_g.copy_from(dz_g);
        ex.lu_r.solve_transpose_in_place(dx_g.rb_mut())?;
        let recon = self.residual(x, u.as_ref().subcols(0, b), e.as_mut().subcols_mut(0, b), conv_r)?;
        // dw = -(1/B) P_w(dz x^T) - P_w(T(w)^{-T}) [+ (2 lambda / B) P_w(T(r)^T e x^T)]
        conv_w.weight_grad(x, dz_f, grads.w.as_mut(), -inv_b, Accum::Replace)?;
        self.add_pull(x, e.as_ref().subcols(0, b), t.as_mut().subcols_mut(0, b), grads.w.as_mut(), (conv_w, conv_r), lambda)?;
        self.ensure_lu_w(ex)?;
        ex.lu_w.inverse_transpose_into(ex.inv.as_mut())?;
        project_onto_kernel(&self.geom_w, ex.inv.as_ref(), grads.w.as_mut(), T::from_f64(-1.0), Accum::Add)?;
        zip!(grads.r.as_mut()).for_each(|unzip!(g)| *g = T::from_f64(0.0));
        if let Some(gb) = grads.b.as_mut() {
            channel_sums(gb.col_as_slice_mut(0), dz_f, hw, -inv_b, false);
        }
        Ok(BackwardStats { reconstruction_error: recon })
    }
}
