//! Forward pass, learned inverse and reconstruction error.

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, MatMut, MatRef};

use super::{ConvWorkspace, SelfNormConv2d};
use crate::conv::chunk::{chunks_used, for_chunks, forward_chunk, BatchMut, BatchRef, Chunk};
use crate::conv::ops::{contiguous, contiguous_mut};
use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::{par_cols, sum_sq};
use faer::Accum;

/// `out[c, ., .] += sign * b[c]` for every column (per-channel bias over `hw` pixels).
pub(crate) fn add_channel_bias<T: Real>(mut out: MatMut<'_, T>, b: Option<MatRef<'_, T>>, hw: usize, sign: T) {
    let Some(b) = b else { return };
    for j in 0..out.ncols() {
        let mut col = out.rb_mut().col_mut(j);
        for c in 0..b.nrows() {
            let v = sign * b[(c, 0)];
            col.rb_mut().subrows_mut(c * hw, hw).iter_mut().for_each(|o| *o += v);
        }
    }
}

/// `dst[c] = alpha * sum over columns and the `hw` pixels of channel `c` of `a`` (summed in `f64`).
pub(crate) fn channel_sums<T: Real>(dst: &mut [T], a: MatRef<'_, T>, hw: usize, alpha: T, accum_add: bool) {
    for (c, d) in dst.iter_mut().enumerate() {
        let s: f64 = (0..a.ncols()).map(|j| crate::util::col_sum(a.col(j).subrows(c * hw, hw), |v| v)).sum();
        let s = T::from_f64(s);
        *d = if accum_add { *d + alpha * s } else { alpha * s };
    }
}

impl<T: Real> SelfNormConv2d<T> {
    pub(crate) fn pixels(&self) -> usize {
        let [h, w] = self.geom_w.in_size();
        h * w
    }

    pub(crate) fn check_ws(&self, op: &'static str, ws: &ConvWorkspace<T>) -> Result<()> {
        if ws.geometries() != (&self.geom_w, &self.geom_r) {
            return Err(Error::InvalidArgument { op, reason: "workspace was made for a layer of another shape".into() });
        }
        Ok(())
    }

    /// $z = f(x) = w\star x + b$ for a `D x B` batch, keeping $u = w\star x$ in `ws`
    /// for the backward pass.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] on bad shapes, a batch larger
    /// than the workspace, or batch matrices without unit row stride.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormConv2d::forward";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        ConvWorkspace::check_out(OP, &z, self.dim(), b)?;
        ws.batch = None;
        ws.void_projection(); // `u` now belongs to this batch
        let (x, z) = (contiguous(OP, x)?, contiguous_mut(OP, z)?);
        let u = contiguous_mut(OP, ws.u.as_mut().subcols_mut(0, b))?;
        let (bias, hw, w) = (self.bias(), self.pixels(), self.w.as_ref());
        let used = chunks_used(ws.conv_w.n_chunks(), b);
        let parts = ws.conv_w.parts(None)?;
        let plan = parts.plan;
        // one fork-join: each chunk convolves its examples, then copies u and adds the bias
        for_chunks((x, (u, z)), parts.chunks, used, &|(x, (mut u, mut z)): (BatchRef<'_, T>, (BatchMut<'_, T>, BatchMut<'_, T>)), c: &mut [Chunk<T>]| {
            let Some(c) = c.first_mut() else { return };
            forward_chunk(plan, c, w, x, u.rb_mut(), T::from_f64(1.0), Accum::Replace);
            for j in 0..x.ncols() {
                z.rb_mut().col_mut(j).as_slice_mut().copy_from_slice(u.rb().col(j).as_slice());
            }
            add_channel_bias(z.as_dyn_stride_mut(), bias, hw, T::from_f64(1.0));
        });
        ws.batch = Some(b);
        Ok(())
    }

    /// The learned inverse $x = g(z) = r\star(z - b)$ (learned-inverse sampling).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<()> {
        const OP: &str = "SelfNormConv2d::inverse";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, z)?;
        ConvWorkspace::check_out(OP, &x, self.dim(), b)?;
        let mut t = ws.t.as_mut().subcols_mut(0, b);
        t.copy_from(z);
        add_channel_bias(t.rb_mut(), self.bias(), self.pixels(), T::from_f64(-1.0));
        ws.conv_r.forward(self.r.as_ref(), t.rb(), x)
    }

    /// $e = r\star u - x$ into `e`; returns the batch mean of $\lVert e\rVert^2$.
    pub(crate) fn residual(&self, x: MatRef<'_, T>, u: MatRef<'_, T>, mut e: MatMut<'_, T>, conv_r: &mut crate::conv::Conv2d<T>) -> Result<f64> {
        conv_r.forward(self.r.as_ref(), u, e.rb_mut())?;
        par_cols((e.rb_mut(), x), conv_r.par(), &|(e, x): (MatMut<'_, T>, MatRef<'_, T>)| zip!(e, x).for_each(|unzip!(e, x)| *e -= *x));
        Ok(sum_sq(e.rb()) / x.ncols() as f64)
    }

    /// Batch mean of the reconstruction error $\lVert g(f(x)) - x\rVert^2 = \lVert r\star(w\star x) - x\rVert^2$
    /// (the bias cancels).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn reconstruction_error(&self, x: MatRef<'_, T>, ws: &mut ConvWorkspace<T>) -> Result<f64> {
        const OP: &str = "SelfNormConv2d::reconstruction_error";
        self.check_ws(OP, ws)?;
        let b = ws.check_batch(OP, x)?;
        ws.batch = None;
        ws.void_projection(); // `u` is overwritten below
        let mut u = ws.u.as_mut().subcols_mut(0, b);
        ws.conv_w.forward(self.w.as_ref(), x, u.rb_mut())?;
        let e = ws.e.as_mut().subcols_mut(0, b);
        self.residual(x, u.rb(), e, &mut ws.conv_r)
    }
}
