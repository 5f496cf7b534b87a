//! Glow's affine coupling (Kingma & Dhariwal, 2018; the paper's §5 and A.3) with a
//! hand-derived backward pass through its conditioner network (`proofs/glow.md` §2).

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
use crate::error::{check_shape, Error, Result};
use crate::layers::actnorm::init_from_batch;
use crate::layers::conv::{add_channel_bias, channel_sums};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{BlocksMut, Grads, Param, Tape, Transform, Workspace};

/// The offset inside the coupling's sigmoid scale, $\sigma(r + 2)$ (Glow's choice: the
/// scale starts at $\sigma(2)\approx0.88$).
pub const COUPLING_SCALE_OFFSET: f64 = 2.0;
/// Standard deviation of the normal initialisation of the conditioner's hidden kernels
/// (Glow's 0.05).
pub const CONDITIONER_INIT_STD: f64 = 0.05;

/// Shape of an [`AffineCoupling`]: its `C x H x W` input (`C >= 2`) and the conditioner's
/// hidden width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffineCouplingConfig {
    /// Input `[C, H, W]`.
    pub shape: [usize; 3],
    /// Channels of the conditioner's two hidden layers.
    pub width: usize,
}

impl AffineCouplingConfig {
    /// A coupling on `shape` with a conditioner of `width` hidden channels.
    pub fn new(shape: Shape, width: usize) -> Self {
        Self { shape: shape.to_array(), width }
    }
}

/// Glow's affine coupling on a `C x H x W` image: $x = (x_a, x_b)$ split by channels
/// ($x_a$: the first $C - \lfloor C/2\rfloor$, $x_b$: the rest),
/// $$y_a = x_a,\qquad y_b = (x_b + t)\odot\sigma(r + 2),\qquad (t, r) = \mathrm{NN}(x_a),$$
/// $\log|\det J| = \sum\log\sigma(r + 2)$, with the conditioner
/// $$\mathrm{NN}(x_a) = \mathrm{conv}_{3\times3}^{(3)}\big(\mathrm{relu}(\mathrm{AN}_2(\mathrm{conv}^{(2)}_{1\times1}(\mathrm{relu}(\mathrm{AN}_1(\mathrm{conv}^{(1)}_{3\times3}(x_a)))))) \big) + c_3,$$
/// where $\mathrm{AN}_i(u) = e^{s_i}u + b_i$ per channel (ActNorm, initialised from the
/// first batch by [`Transform::data_init`]), the hidden kernels start normal with standard
/// deviation [`CONDITIONER_INIT_STD`] and the last convolution and its bias start at zero,
/// so the coupling starts as $y_b = \sigma(2)x_b$. The first $\lfloor C/2\rfloor$ output
/// channels of the last convolution are $t$, the rest $r$. "Same" padding throughout.
///
/// **Backward** (`proofs/glow.md` §2), with $\delta$ the gradient of $\log p$ and
/// $q = x_b + t$, $\sigma = \sigma(r + 2)$:
/// $\delta_{x_b} = \delta_t = \sigma\odot\delta_{y_b}$,
/// $\delta_r = q\odot\delta_{y_b}\odot\sigma(1-\sigma) + (1 - \sigma)$, then back through the
/// conditioner ($\delta_{u} = e^{s}\,\mathbf 1_{n>0}\odot\delta_{a}$ at each ActNorm+ReLU,
/// transposed convolutions for the inputs, correlations for the kernels) and
/// $\delta_{x_a} = \delta_{y_a} + \mathrm{conv}^{(1)T}(\delta_{u_1})$.
///
/// # Example
/// ```
/// use faer::{Mat, Par};
/// use snf::layers::{AffineCoupling, AffineCouplingConfig};
/// use snf::{transform::Transform, Shape};
/// let shape = Shape::image(2, 4, 4);
/// let c = AffineCoupling::<f64>::new(AffineCouplingConfig::new(shape, 8), &mut snf::init::rng(0))?;
/// let x = Mat::from_fn(32, 3, |i, j| ((i * 7 + j * 3) % 5) as f64 - 2.0);
/// let mut ws = c.workspace(3, Par::Seq)?;
/// let (mut y, mut ld, mut back) = (Mat::zeros(32, 3), [0.0; 3], Mat::zeros(32, 3));
/// let _tape = c.forward(x.as_ref(), y.as_mut(), &mut ld, &mut ws)?;
/// c.inverse(y.as_ref(), back.as_mut(), &mut ws)?;
/// assert!((&back - &x).norm_max() < 1e-12);
/// // a zero last layer: the scale is sigmoid(2) on the 16 entries of x_b
/// assert!((ld[0] - 16.0 * (1.0 / (1.0 + (-2.0f64).exp())).ln()).abs() < 1e-12);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AffineCoupling<T: Real> {
    config: AffineCouplingConfig,
    shape: Shape,
    g1: Conv2dGeometry,
    g2: Conv2dGeometry,
    g3: Conv2dGeometry,
    /// k1, logs1, b1, k2, logs2, b2, k3, c3.
    p: [Mat<T>; 8],
    initialized: bool,
}

/// The parameter names, in order.
const NAMES: [&str; 8] = ["k1", "logs1", "b1", "k2", "logs2", "b2", "k3", "c3"];

struct CouplingBuffers<T: Real> {
    c1: Conv2d<T>,
    c2: Conv2d<T>,
    c3: Conv2d<T>,
    /// Pre-ActNorm outputs of the hidden convolutions and the hidden activations
    /// (`width*HW x B` each), then the deltas in backward.
    u1: Mat<T>,
    a1: Mat<T>,
    u2: Mat<T>,
    a2: Mat<T>,
    /// $(t, r)$ of the last forward pass, then $(\delta_t, \delta_r)$.
    h: Mat<T>,
    chan: Vec<T>,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// $\log\sigma(z) = -\mathrm{softplus}(-z)$, stable for every $z$.
fn log_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        -(-z).exp().ln_1p()
    } else {
        z - z.exp().ln_1p()
    }
}

impl<T: Real> AffineCoupling<T> {
    /// A coupling with normal hidden kernels (std [`CONDITIONER_INIT_STD`]), identity
    /// ActNorms (set by the first batch) and a zero last layer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for fewer than 2 channels, a zero width or an empty or
    /// oversized shape.
    pub fn new(config: AffineCouplingConfig, rng: &mut impl Rng) -> Result<Self> {
        let mut c = Self::zeroed(config)?;
        for k in [0, 3] {
            let m = &mut c.p[k];
            for j in 0..m.ncols() {
                for i in 0..m.nrows() {
                    let n: f64 = rng.sample(StandardNormal);
                    m[(i, j)] = T::from_f64(CONDITIONER_INIT_STD * n);
                }
            }
        }
        Ok(c)
    }

    fn zeroed(config: AffineCouplingConfig) -> Result<Self> {
        const OP: &str = "AffineCoupling::new";
        let shape = Shape::from(config.shape);
        shape.checked_dim()?;
        if shape.c < 2 {
            return Err(Error::InvalidArgument { op: OP, reason: format!("needs at least 2 channels to split, got {shape}") });
        }
        if config.width == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "the conditioner needs a width of at least 1".into() });
        }
        let (ca, cb, w, hw) = (shape.c - shape.c / 2, shape.c / 2, config.width, [shape.h, shape.w]);
        // the hidden buffers are width x H x W per example
        Shape::image(w, shape.h, shape.w).checked_dim()?;
        let g1 = Conv2dGeometry::new(Conv2dSpec::new(ca, w, hw, [3, 3]).with_padding([1, 1]))?;
        let g2 = Conv2dGeometry::new(Conv2dSpec::new(w, w, hw, [1, 1]))?;
        let g3 = Conv2dGeometry::new(Conv2dSpec::new(w, 2 * cb, hw, [3, 3]).with_padding([1, 1]))?;
        let z = |g: &Conv2dGeometry| {
            let (r, c) = g.kernel_shape();
            Mat::zeros(r, c)
        };
        let p = [z(&g1), Mat::zeros(w, 1), Mat::zeros(w, 1), z(&g2), Mat::zeros(w, 1), Mat::zeros(w, 1), z(&g3), Mat::zeros(2 * cb, 1)];
        Ok(Self { config, shape, g1, g2, g3, p, initialized: false })
    }

    /// A coupling from explicit parameters, in the order `k1, logs1, b1, k2, logs2, b2, k3,
    /// c3` (kernels in the layout of [`Conv2dGeometry`]; ActNorm log-scales and biases
    /// `width x 1`; `c3` is `2 floor(C/2) x 1`).
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::ShapeMismatch`]; [`Error::NonFinite`].
    pub fn from_parts(config: AffineCouplingConfig, params: [Mat<T>; 8], initialized: bool) -> Result<Self> {
        const OP: &str = "AffineCoupling::from_parts";
        let mut c = Self::zeroed(config)?;
        for (have, want) in params.iter().zip(c.p.iter()) {
            check_shape(OP, (want.nrows(), want.ncols()), (have.nrows(), have.ncols()))?;
            if !crate::util::all_finite(have.as_ref()) {
                return Err(Error::NonFinite { op: OP });
            }
        }
        c.p = params;
        c.initialized = initialized;
        Ok(c)
    }

    /// The configuration.
    pub fn config(&self) -> AffineCouplingConfig {
        self.config
    }
    /// Whether the conditioner's ActNorms have been initialised from data.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }
    fn hw(&self) -> usize {
        self.shape.h * self.shape.w
    }
    fn da(&self) -> usize {
        (self.shape.c - self.shape.c / 2) * self.hw()
    }
    fn db(&self) -> usize {
        (self.shape.c / 2) * self.hw()
    }
    fn hidden(&self) -> usize {
        self.config.width * self.hw()
    }

    fn buffers(&self, max_batch: usize, par: Par) -> CouplingBuffers<T> {
        let (hd, b) = (self.hidden(), max_batch);
        CouplingBuffers {
            c1: Conv2d::new(self.g1, par),
            c2: Conv2d::new(self.g2, par),
            c3: Conv2d::new(self.g3, par),
            u1: Mat::zeros(hd, b),
            a1: Mat::zeros(hd, b),
            u2: Mat::zeros(hd, b),
            a2: Mat::zeros(hd, b),
            h: Mat::zeros(2 * self.db(), b),
            chan: vec![T::from_f64(0.0); self.config.width.max(2 * (self.shape.c / 2))],
        }
    }

    /// `a = relu(e^s u + b)` channel by channel.
    fn actnorm_relu(&self, which: usize, u: MatRef<'_, T>, mut a: MatMut<'_, T>) {
        let (logs, bias, hw) = (&self.p[3 * which + 1], &self.p[3 * which + 2], self.hw());
        let zero = T::from_f64(0.0);
        for c in 0..self.config.width {
            let (e, bb) = (T::from_f64(logs[(c, 0)].as_f64().exp()), bias[(c, 0)]);
            for j in 0..u.ncols() {
                for p in c * hw..(c + 1) * hw {
                    let n = e * u[(p, j)] + bb;
                    a[(p, j)] = if n > zero { n } else { zero };
                }
            }
        }
    }

    /// The conditioner: $(t, r)$ of `xa` into `buf.h`, keeping `u1, a1, u2, a2`.
    fn conditioner(&self, xa: MatRef<'_, T>, buf: &mut CouplingBuffers<T>) -> Result<()> {
        let b = xa.ncols();
        buf.c1.forward(self.p[0].as_ref(), xa, buf.u1.as_mut().subcols_mut(0, b))?;
        self.actnorm_relu(0, buf.u1.as_ref().subcols(0, b), buf.a1.as_mut().subcols_mut(0, b));
        buf.c2.forward(self.p[3].as_ref(), buf.a1.as_ref().subcols(0, b), buf.u2.as_mut().subcols_mut(0, b))?;
        self.actnorm_relu(1, buf.u2.as_ref().subcols(0, b), buf.a2.as_mut().subcols_mut(0, b));
        let mut h = buf.h.as_mut().subcols_mut(0, b);
        buf.c3.forward(self.p[6].as_ref(), buf.a2.as_ref().subcols(0, b), h.rb_mut())?;
        add_channel_bias(h, Some(self.p[7].as_ref()), self.hw(), T::from_f64(1.0));
        Ok(())
    }

    /// In place: the hidden activation's delta `da` (in `d`) becomes the delta of the
    /// pre-ActNorm `u`; the ActNorm's loss gradients go to `gs`, `gb` (scaled by `alpha`).
    #[allow(clippy::too_many_arguments)]
    fn actnorm_relu_backward(&self, which: usize, u: MatRef<'_, T>, mut d: MatMut<'_, T>, mut gs: MatMut<'_, T>, mut gb: MatMut<'_, T>, alpha: f64) {
        let (logs, bias, hw) = (&self.p[3 * which + 1], &self.p[3 * which + 2], self.hw());
        let zero = T::from_f64(0.0);
        for c in 0..self.config.width {
            let ef = logs[(c, 0)].as_f64().exp();
            let (e, bb) = (T::from_f64(ef), bias[(c, 0)]);
            let (mut s_acc, mut b_acc) = (0.0, 0.0);
            for j in 0..u.ncols() {
                for p in c * hw..(c + 1) * hw {
                    let uv = u[(p, j)];
                    let dn = if e * uv + bb > zero { d[(p, j)] } else { zero };
                    s_acc += dn.as_f64() * uv.as_f64();
                    b_acc += dn.as_f64();
                    d[(p, j)] = e * dn;
                }
            }
            gs[(c, 0)] = T::from_f64(alpha * ef * s_acc);
            gb[(c, 0)] = T::from_f64(alpha * b_acc);
        }
    }

    fn check(&self, op: &'static str, x: MatRef<'_, T>, other: (usize, usize), ws: &Workspace<T>) -> Result<usize> {
        crate::layers::check_batch_and(op, x, self.shape, other, ws.max_batch())
    }
}

impl<T: Real> Transform<T> for AffineCoupling<T> {
    fn kind(&self) -> &'static str {
        "affine-coupling"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        crate::layers::same_shape("AffineCoupling::output_shape", self.shape, input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        crate::util::check_alloc::<T>("AffineCoupling::workspace", self.hidden(), max_batch, 4)?;
        Workspace::new(self.buffers(max_batch, par), max_batch, par)
    }
    /// Sets each hidden ActNorm from the batch statistics of its input (the first
    /// ActNorm's, then, through it, the second's), once.
    fn data_init(&mut self, x: MatRef<'_, T>, par: Par) -> Result<()> {
        const OP: &str = "AffineCoupling::data_init";
        if self.initialized {
            return Ok(());
        }
        check_shape(OP, (self.shape.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        if x.ncols() == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "empty batch".into() });
        }
        let mut buf = self.buffers(x.ncols(), par);
        let hw = self.hw();
        for which in 0..2 {
            if which == 0 {
                buf.c1.forward(self.p[0].as_ref(), x.subrows(0, self.da()), buf.u1.as_mut())?;
            } else {
                self.actnorm_relu(0, buf.u1.as_ref(), buf.a1.as_mut());
                buf.c2.forward(self.p[3].as_ref(), buf.a1.as_ref(), buf.u2.as_mut())?;
            }
            let u = if which == 0 { buf.u1.as_ref() } else { buf.u2.as_ref() };
            let (logs, bias) = self.p.split_at_mut(3 * which + 2);
            init_from_batch(OP, u, hw, logs[3 * which + 1].as_mut(), bias[0].as_mut())?;
        }
        self.initialized = true;
        Ok(())
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "AffineCoupling::forward";
        let b = self.check(OP, x, (y.nrows(), y.ncols()), ws)?;
        check_shape(OP, (b, 1), (logdet.len(), 1))?;
        let (da, db) = (self.da(), self.db());
        let buf = ws.buffers_mut::<CouplingBuffers<T>>()?;
        self.conditioner(x.subrows(0, da), buf)?;
        let h = buf.h.as_ref().subcols(0, b);
        let mut y = y;
        y.rb_mut().subrows_mut(0, da).copy_from(x.subrows(0, da));
        for j in 0..b {
            let mut ld = 0.0;
            for i in 0..db {
                let (t, r) = (h[(i, j)], h[(db + i, j)].as_f64() + COUPLING_SCALE_OFFSET);
                y[(da + i, j)] = (x[(da + i, j)] + t) * T::from_f64(sigmoid(r));
                ld += log_sigmoid(r);
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
        lambda: T,
    ) -> Result<f64> {
        const OP: &str = "AffineCoupling::backward";
        ws.consume(tape, x)?;
        let b = self.check(OP, x, (dy.nrows(), dy.ncols()), ws)?;
        crate::layers::check_backward_operands(OP, self.shape.dim(), b, &[(dx.nrows(), dx.ncols())], lambda)?;
        let (da, db, hw) = (self.da(), self.db(), self.hw());
        let mut g = grads.blocks_mut();
        if g.len() != 8 {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another transform".into() });
        }
        for (gm, p) in g.iter().zip(self.p.iter()) {
            check_shape(OP, (p.nrows(), p.ncols()), (gm.nrows(), gm.ncols()))?;
        }
        let buf = ws.buffers_mut::<CouplingBuffers<T>>()?;
        let mut dx = dx;
        // (t, r) -> (delta_t, delta_r) in place; delta_x_b into dx
        {
            let mut h = buf.h.as_mut().subcols_mut(0, b);
            for j in 0..b {
                for i in 0..db {
                    let (t, r) = (h[(i, j)].as_f64(), h[(db + i, j)].as_f64() + COUPLING_SCALE_OFFSET);
                    let s = sigmoid(r);
                    let q = x[(da + i, j)].as_f64() + t;
                    let gy = dy[(da + i, j)].as_f64();
                    let dt = s * gy;
                    dx[(da + i, j)] = T::from_f64(dt);
                    h[(i, j)] = T::from_f64(dt);
                    h[(db + i, j)] = T::from_f64(q * gy * s * (1.0 - s) + (1.0 - s));
                }
            }
        }
        let alpha = -1.0 / b as f64;
        let at = T::from_f64(alpha);
        let dh = buf.h.as_ref().subcols(0, b);
        // last layer: kernel, bias, then delta of a2 (into a2, no longer needed)
        buf.c3.weight_grad(buf.a2.as_ref().subcols(0, b), dh, g[6].rb_mut(), at, Accum::Replace)?;
        channel_sums(&mut buf.chan[..2 * (self.shape.c / 2)], dh, hw, at, false);
        for (i, v) in buf.chan[..2 * (self.shape.c / 2)].iter().enumerate() {
            g[7][(i, 0)] = *v;
        }
        buf.c3.input_grad(self.p[6].as_ref(), dh, buf.a2.as_mut().subcols_mut(0, b), T::from_f64(1.0), Accum::Replace)?;
        // second ActNorm + ReLU: a2's delta -> u2's delta (in a2)
        {
            let (g45, _) = g.split_at_mut(6);
            let (g4, g5) = g45[4..6].split_at_mut(1);
            self.actnorm_relu_backward(1, buf.u2.as_ref().subcols(0, b), buf.a2.as_mut().subcols_mut(0, b), g4[0].rb_mut(), g5[0].rb_mut(), alpha);
        }
        let du2 = buf.a2.as_ref().subcols(0, b);
        buf.c2.weight_grad(buf.a1.as_ref().subcols(0, b), du2, g[3].rb_mut(), at, Accum::Replace)?;
        buf.c2.input_grad(self.p[3].as_ref(), du2, buf.u2.as_mut().subcols_mut(0, b), T::from_f64(1.0), Accum::Replace)?;
        // first ActNorm + ReLU: a1's delta (in u2) -> u1's delta (in u2)
        {
            let (g12, _) = g.split_at_mut(3);
            let (g1, g2) = g12[1..3].split_at_mut(1);
            self.actnorm_relu_backward(0, buf.u1.as_ref().subcols(0, b), buf.u2.as_mut().subcols_mut(0, b), g1[0].rb_mut(), g2[0].rb_mut(), alpha);
        }
        let du1 = buf.u2.as_ref().subcols(0, b);
        buf.c1.weight_grad(x.subrows(0, da), du1, g[0].rb_mut(), at, Accum::Replace)?;
        let mut dxa = dx.rb_mut().subrows_mut(0, da);
        dxa.copy_from(dy.subrows(0, da));
        buf.c1.input_grad(self.p[0].as_ref(), du1, dxa, T::from_f64(1.0), Accum::Add)?;
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "AffineCoupling::inverse";
        let b = self.check(OP, y, (x.nrows(), x.ncols()), ws)?;
        let (da, db) = (self.da(), self.db());
        let buf = ws.buffers_mut::<CouplingBuffers<T>>()?;
        self.conditioner(y.subrows(0, da), buf)?;
        let h = buf.h.as_ref().subcols(0, b);
        let mut x = x;
        x.rb_mut().subrows_mut(0, da).copy_from(y.subrows(0, da));
        for j in 0..b {
            for i in 0..db {
                let (t, r) = (h[(i, j)], h[(db + i, j)].as_f64() + COUPLING_SCALE_OFFSET);
                x[(da + i, j)] = y[(da + i, j)] * T::from_f64(1.0 / sigmoid(r)) - t;
            }
        }
        Ok(())
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        NAMES.iter().zip(self.p.iter()).map(|(name, m)| Param { name, value: m.as_ref() }).collect()
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        self.p.iter_mut().map(|m| m.as_mut()).collect()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "affine-coupling", "shape": self.config.shape, "width": self.config.width, "initialized": self.initialized })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sigmoid_is_stable_and_right() {
        for z in [-800.0f64, -30.0, -1.0, 0.0, 0.5, 2.0, 40.0, 800.0] {
            let want = -(1.0 + (-z).exp()).ln();
            let got = log_sigmoid(z);
            assert!(got.is_finite(), "{z}");
            if want.is_finite() {
                assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{z}: {got} vs {want}");
            }
        }
        assert_eq!(log_sigmoid(-800.0), -800.0);
        assert!((sigmoid(-800.0)) >= 0.0 && sigmoid(800.0) == 1.0);
    }
}
