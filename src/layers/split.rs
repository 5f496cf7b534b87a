//! Factor-out with a learned conditional Gaussian prior (RealNVP, Glow): the multi-scale
//! step.
//!
//! The input $x = (x_1, x_2)$ is split by channels ($x_1$: the first $C - \lfloor C/2\rfloor$,
//! $x_2$: the rest). $x_1$ continues through the flow; $x_2$ is final, with the prior
//! $p(x_2\mid x_1) = \mathcal N(\mu, \mathrm{diag}\,e^{2s})$ where $(\mu, s) = \mathrm{conv}_{3\times3}(x_1) + c$
//! (zero-initialised, so the prior starts as $\mathcal N(0, I)$, as in Glow).
//!
//! As a transform it standardises the factored half, $y_2 = (x_2 - \mu)\odot e^{-s}$ with
//! log-det $-\sum s$, and leaves $y_1 = x_1$: the flow's standard normal base on $y_2$
//! then gives exactly $\log p(x_2\mid x_1) = \log\mathcal N(y_2; 0, I) - \sum s$. The output
//! shape is $x_1$'s; $y_2$ fills the last rows of the output and is not transformed further.
//!
//! **Backward** (derived in `proofs/split.md`): with $\delta_{y} = (\delta_{y_1}, \delta_{y_2})$,
//! $$\delta_{x_2} = e^{-s}\odot\delta_{y_2},\quad \delta_\mu = -\delta_{x_2},\quad
//! \delta_s = -y_2\odot\delta_{y_2} - 1,\quad \delta_{x_1} = \delta_{y_1} + \mathcal T(k)^T(\delta_\mu, \delta_s),$$
//! and the loss gradients $\partial\ell/\partial k = -\frac1B\sum_b P\big((\delta_\mu,\delta_s)_b\,x_{1,b}^T\big)$,
//! $\partial\ell/\partial c = -\frac1B\sum_{b,\text{pixels}}(\delta_\mu, \delta_s)$.

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use serde_json::json;

use crate::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
use crate::error::{check_shape, Error, Result};
use crate::layers::conv::{add_channel_bias, channel_sums};
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{BlocksMut, Grads, Param, Tape, Transform, Workspace};

/// Split off half the channels of a `C x H x W` input (`C >= 2`) under a learned
/// conditional Gaussian prior $p(x_2\mid x_1) = \mathcal N(\mu, \mathrm{diag}\,e^{2s})$,
/// $(\mu, s) = \mathrm{conv}_{3\times3}(x_1) + c$, zero-initialised (Glow): the transform
/// keeps $y_1 = x_1$ (the output shape) and standardises $y_2 = (x_2 - \mu)\odot e^{-s}$
/// (final rows, log-det $-\sum s$), so the flow's standard normal base on $y_2$ gives
/// exactly $\log p(x_2\mid x_1)$. Backward: `proofs/split.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<T: Real> {
    shape: Shape,
    geom: Conv2dGeometry,
    /// The prior network's kernel ($C_1 \to 2C_2$, 3x3, "same").
    k: Mat<T>,
    /// Its per-channel bias (`2 C_2 x 1`): first the means', then the log-scales'.
    c: Mat<T>,
}

struct SplitBuffers<T: Real> {
    conv: Conv2d<T>,
    /// $(\mu, s)$ of the last forward pass, then $(\delta_\mu, \delta_s)$ in backward.
    h: Mat<T>,
    chan: Vec<T>,
}

impl<T: Real> Split<T> {
    /// A split of `shape` with a zero-initialised prior network.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for fewer than 2 channels or an empty or oversized shape.
    pub fn new(shape: Shape) -> Result<Self> {
        const OP: &str = "Split::new";
        shape.checked_dim()?;
        if shape.c < 2 {
            return Err(Error::InvalidArgument { op: OP, reason: format!("needs at least 2 channels to split, got {shape}") });
        }
        let (c1, c2) = (shape.c - shape.c / 2, shape.c / 2);
        let geom = Conv2dGeometry::new(Conv2dSpec::new(c1, 2 * c2, [shape.h, shape.w], [3, 3]).with_padding([1, 1]))?;
        let (kr, kc) = geom.kernel_shape();
        Ok(Self { shape, geom, k: Mat::zeros(kr, kc), c: Mat::zeros(2 * c2, 1) })
    }

    /// A split with given prior parameters (kernel in the layout of [`Conv2dGeometry`], bias `2 C_2 x 1`).
    ///
    /// # Errors
    /// As [`new`](Self::new); shape mismatches; non-finite values.
    pub fn from_parts(shape: Shape, k: Mat<T>, c: Mat<T>) -> Result<Self> {
        const OP: &str = "Split::from_parts";
        let mut s = Self::new(shape)?;
        check_shape(OP, (s.k.nrows(), s.k.ncols()), (k.nrows(), k.ncols()))?;
        check_shape(OP, (s.c.nrows(), 1), (c.nrows(), c.ncols()))?;
        if !(crate::util::all_finite(k.as_ref()) && crate::util::all_finite(c.as_ref())) {
            return Err(Error::NonFinite { op: OP });
        }
        (s.k, s.c) = (k, c);
        Ok(s)
    }

    /// The input shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }
    fn hw(&self) -> usize {
        self.shape.h * self.shape.w
    }
    /// Rows of the kept half $x_1$.
    fn d1(&self) -> usize {
        (self.shape.c - self.shape.c / 2) * self.hw()
    }
    /// Rows of the factored half $x_2$.
    fn d2(&self) -> usize {
        (self.shape.c / 2) * self.hw()
    }

    /// $(\mu, s)$ of `x1` into `buf.h` (first `B` columns).
    fn prior(&self, x1: MatRef<'_, T>, buf: &mut SplitBuffers<T>) -> Result<()> {
        let b = x1.ncols();
        let mut h = buf.h.as_mut().subcols_mut(0, b);
        buf.conv.forward(self.k.as_ref(), x1, h.rb_mut())?;
        add_channel_bias(h, Some(self.c.as_ref()), self.hw(), T::from_f64(1.0));
        Ok(())
    }

    fn check(&self, op: &'static str, x: MatRef<'_, T>, other: (usize, usize), ws: &Workspace<T>) -> Result<usize> {
        crate::layers::check_batch_and(op, x, self.shape, other, ws.max_batch())
    }
}

impl<T: Real> Transform<T> for Split<T> {
    fn kind(&self) -> &'static str {
        "split"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input.fits(self.shape) {
            Ok(Shape::image(self.shape.c - self.shape.c / 2, self.shape.h, self.shape.w))
        } else {
            Err(shape_error("Split::output_shape", self.shape, input))
        }
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let buf = SplitBuffers { conv: Conv2d::new(self.geom, par), h: Mat::zeros(2 * self.d2(), max_batch), chan: vec![T::from_f64(0.0); self.c.nrows()] };
        Workspace::new(buf, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "Split::forward";
        let b = self.check(OP, x, (y.nrows(), y.ncols()), ws)?;
        check_shape(OP, (b, 1), (logdet.len(), 1))?;
        let (d1, d2) = (self.d1(), self.d2());
        let buf = ws.buffers_mut::<SplitBuffers<T>>()?;
        self.prior(x.subrows(0, d1), buf)?;
        let h = buf.h.as_ref().subcols(0, b);
        let mut y = y;
        y.rb_mut().subrows_mut(0, d1).copy_from(x.subrows(0, d1));
        for j in 0..b {
            let mut ld = 0.0;
            for i in 0..d2 {
                let (mu, s) = (h[(i, j)], h[(d2 + i, j)]);
                y[(d1 + i, j)] = (x[(d1 + i, j)] - mu) * num_traits::Float::exp(-s);
                ld -= s.as_f64();
            }
            logdet[j] += ld;
        }
        Ok(ws.record(x))
    }
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        _lambda: T,
    ) -> Result<f64> {
        const OP: &str = "Split::backward";
        ws.consume(tape, x)?;
        let b = self.check(OP, x, (dy.nrows(), dy.ncols()), ws)?;
        check_shape(OP, (self.shape.dim(), b), (dx.nrows(), dx.ncols()))?;
        let (d1, d2, hw) = (self.d1(), self.d2(), self.hw());
        let buf = ws.buffers_mut::<SplitBuffers<T>>()?;
        let mut dx = dx;
        // (mu, s) in h -> (delta_mu, delta_s) in place; delta_x2 into dx
        {
            let mut h = buf.h.as_mut().subcols_mut(0, b);
            for j in 0..b {
                for i in 0..d2 {
                    let (mu, s) = (h[(i, j)], h[(d2 + i, j)]);
                    let e = num_traits::Float::exp(-s);
                    let y2 = (x[(d1 + i, j)] - mu) * e;
                    let g = dy[(d1 + i, j)];
                    let dx2 = e * g;
                    dx[(d1 + i, j)] = dx2;
                    h[(i, j)] = -dx2;
                    h[(d2 + i, j)] = -y2 * g - T::from_f64(1.0);
                }
            }
        }
        let dh = buf.h.as_ref().subcols(0, b);
        let mut dx1 = dx.rb_mut().subrows_mut(0, d1);
        dx1.copy_from(dy.subrows(0, d1));
        buf.conv.input_grad(self.k.as_ref(), dh, dx1, T::from_f64(1.0), Accum::Add)?;
        let inv_b = T::from_f64(-1.0 / b as f64);
        let mut blocks = grads.blocks_mut().into_iter();
        let (Some(gk), Some(gc), None) = (blocks.next(), blocks.next(), blocks.next()) else {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another transform".into() });
        };
        check_shape(OP, (self.k.nrows(), self.k.ncols()), (gk.nrows(), gk.ncols()))?;
        check_shape(OP, (self.c.nrows(), 1), (gc.nrows(), gc.ncols()))?;
        buf.conv.weight_grad(x.subrows(0, d1), dh, gk, inv_b, Accum::Replace)?;
        channel_sums(&mut buf.chan, dh, hw, inv_b, false);
        let mut gc = gc;
        for (i, v) in buf.chan.iter().enumerate() {
            gc[(i, 0)] = *v;
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "Split::inverse";
        let b = self.check(OP, y, (x.nrows(), x.ncols()), ws)?;
        let (d1, d2) = (self.d1(), self.d2());
        let buf = ws.buffers_mut::<SplitBuffers<T>>()?;
        let mut x = x;
        x.rb_mut().subrows_mut(0, d1).copy_from(y.subrows(0, d1));
        self.prior(y.subrows(0, d1), buf)?;
        let h = buf.h.as_ref().subcols(0, b);
        for j in 0..b {
            for i in 0..d2 {
                x[(d1 + i, j)] = y[(d1 + i, j)] * num_traits::Float::exp(h[(d2 + i, j)]) + h[(i, j)];
            }
        }
        Ok(())
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        vec![Param { name: "k", value: self.k.as_ref() }, Param { name: "c", value: self.c.as_ref() }]
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        smallvec::smallvec![self.k.as_mut(), self.c.as_mut()]
    }
    fn spec(&self) -> serde_json::Value {
        json!({"kind": "split", "shape": self.shape.to_array()})
    }
}
