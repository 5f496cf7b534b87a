//! The self-normalizing backward pass as one fused, per-block pipeline.
//!
//! Every quantity of the SNF backward pass is per example except the kernel gradients
//! (sums over examples). So each batch chunk runs the whole pass on blocks of $n_b$
//! examples kept *stacked* (`n_b P x C`, see `conv::chunk`), and only $\delta_x$ goes back
//! to the batch layout:
//!
//! | step | computes (per block, per group) | lowers |
//! |---|---|---|
//! | A | $\delta_x = \mathcal T(\mathrm{flip}\,w)\,\delta_z$ | $\delta_z$ |
//! | B | $e = r\star u - x$, $s = 2\lambda e + \tfrac12\delta_x$, $dr \mathrel{+}= \mathrm{cols}(u)^Ts$ | $u$ |
//! | C | $t = -\tfrac12\delta_z + 2\lambda\,\mathcal T(\mathrm{flip}\,r)\,e$ | $e$ |
//! | D | $dw \mathrel{+}= \mathrm{cols}(x)^Tt$ | $x$ |
//!
//! Four im2col lowerings instead of six (`cols(u)` serves both $r\star u$ and $dr$), and the
//! intermediates never leave the chunk's cache-sized scratch.

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatRef};

use crate::conv::chunk::{gemm, lower_stacked, stack, unstack, BatchMut, BatchRef, Chunk, Plan};
use crate::real::Real;

/// Stacked per-block buffers of one chunk (`block * P x C` each).
#[derive(Debug, Clone)]
pub(crate) struct FusedChunk<T: Real> {
    s_dz: Mat<T>,
    s_x: Mat<T>,
    s_u: Mat<T>,
    g_dx: Mat<T>,
    g_e: Mat<T>,
    g_t: Mat<T>,
}

impl<T: Real> FusedChunk<T> {
    pub(crate) fn new(rows: usize, channels: usize) -> Self {
        let m = Mat::zeros(rows, channels);
        Self { s_dz: m.clone(), s_x: m.clone(), s_u: m.clone(), g_dx: m.clone(), g_e: m.clone(), g_t: m }
    }
}

/// The constants of one fused pass.
#[derive(Clone, Copy)]
pub(crate) struct Fused<'a, T: Real> {
    pub(crate) plan_w: Plan<'a>,
    pub(crate) plan_r: Plan<'a>,
    pub(crate) w_flip: MatRef<'a, T>,
    pub(crate) r: MatRef<'a, T>,
    pub(crate) r_flip: MatRef<'a, T>,
    pub(crate) block: usize,
    pub(crate) two_lambda: T,
}

/// Run the pass on one chunk: writes `dx`, leaves $\sum P(t x^T)$ in `cw.dk`,
/// $\sum P(s u^T)$ in `cr.dk`, $\sum\lVert e\rVert^2$ in `cw.scalar` and the per-channel sums
/// of $\delta_z$ in `cw.sums`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn snf_backward_chunk<T: Real>(
    k: Fused<'_, T>,
    x: BatchRef<'_, T>,
    dz: BatchRef<'_, T>,
    u: BatchRef<'_, T>,
    mut dx: BatchMut<'_, T>,
    cw: &mut Chunk<T>,
    cr: &mut Chunk<T>,
    f: &mut FusedChunk<T>,
) {
    let geom = k.plan_w.geom;
    let p = geom.out_positions();
    let og = geom.out_per_group();
    let (zero, one, half) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(0.5));
    cw.dk.fill(zero);
    cr.dk.fill(zero);
    cw.scalar = 0.0;
    cw.sums.iter_mut().for_each(|s| *s = 0.0);
    let mut j0 = 0;
    while j0 < x.ncols() {
        let nb = k.block.min(x.ncols() - j0);
        let rows = nb * p;
        stack(dz, j0, nb, p, &mut f.s_dz);
        stack(x, j0, nb, p, &mut f.s_x);
        stack(u, j0, nb, p, &mut f.s_u);
        for g in 0..geom.groups() {
            // A: delta_x = T(w)^T delta_z = T(flip w) delta_z
            lower_stacked(k.plan_w, &f.s_dz, nb, g, &mut cw.cols, 0, 0);
            gemm(
                f.g_dx.as_mut().subrows_mut(0, rows).subcols_mut(g * og, og),
                Accum::Replace,
                cw.cols.as_ref().subrows(0, rows),
                k.w_flip.subcols(g * og, og),
                one,
            );
        }
        unstack(&f.g_dx, j0, nb, p, dx.rb_mut());
        for g in 0..geom.groups() {
            // B: e = r * u - x; s = 2 lambda e + delta_x / 2 (into s_u, whose lowering is
            // in cr.cols); dr += cols(u)^T s
            lower_stacked(k.plan_r, &f.s_u, nb, g, &mut cr.cols, 0, 0);
            gemm(f.g_e.as_mut().subrows_mut(0, rows).subcols_mut(g * og, og), Accum::Replace, cr.cols.as_ref().subrows(0, rows), k.r.subcols(g * og, og), one);
            for c in g * og..(g + 1) * og {
                let e = &mut f.g_e.col_as_slice_mut(c)[..rows];
                let xs = &f.s_x.col_as_slice(c)[..rows];
                e.iter_mut().zip(xs).for_each(|(e, x)| *e -= *x);
                cw.scalar += crate::util::col_sum(MatRef::from_column_major_slice(e, rows, 1).col(0), |v| v * v);
                let dxs = &f.g_dx.col_as_slice(c)[..rows];
                let s = &mut f.s_u.col_as_slice_mut(c)[..rows];
                for ((s, e), d) in s.iter_mut().zip(e.iter()).zip(dxs) {
                    *s = k.two_lambda * *e + half * *d;
                }
            }
            gemm(
                cr.dk.as_mut().subcols_mut(g * og, og),
                Accum::Add,
                cr.cols.as_ref().subrows(0, rows).transpose(),
                f.s_u.as_ref().subrows(0, rows).subcols(g * og, og),
                one,
            );
        }
        for g in 0..geom.groups() {
            // C: t = -delta_z / 2 + 2 lambda T(flip r) e
            lower_stacked(k.plan_r, &f.g_e, nb, g, &mut cr.cols, 0, 0);
            gemm(
                f.g_t.as_mut().subrows_mut(0, rows).subcols_mut(g * og, og),
                Accum::Replace,
                cr.cols.as_ref().subrows(0, rows),
                k.r_flip.subcols(g * og, og),
                k.two_lambda,
            );
            for c in g * og..(g + 1) * og {
                let t = &mut f.g_t.col_as_slice_mut(c)[..rows];
                let d = &f.s_dz.col_as_slice(c)[..rows];
                t.iter_mut().zip(d).for_each(|(t, d)| *t -= half * *d);
            }
            // D: dw += cols(x)^T t
            lower_stacked(k.plan_w, &f.s_x, nb, g, &mut cw.cols, 0, 0);
            gemm(
                cw.dk.as_mut().subcols_mut(g * og, og),
                Accum::Add,
                cw.cols.as_ref().subrows(0, rows).transpose(),
                f.g_t.as_ref().subrows(0, rows).subcols(g * og, og),
                one,
            );
        }
        // per-channel sums of delta_z for the bias
        for (c, s) in cw.sums.iter_mut().enumerate() {
            *s += crate::util::col_sum(MatRef::from_column_major_slice(&f.s_dz.col_as_slice(c)[..rows], rows, 1).col(0), |v| v);
        }
        j0 += nb;
    }
}
