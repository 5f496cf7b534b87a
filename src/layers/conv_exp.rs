//! The convolution exponential (Hoogeboom et al., 2020), one of the Table 1 baselines:
//! $z = \exp(M)x + b$ with $M = \mathcal T(k)$ the matrix of a "same" convolution, so that
//! $\log|\det J| = \operatorname{tr} M$ and $x = \exp(-M)(z - b)$ (proofs/baselines.md §3).

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{unzip, zip, Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::conv::forward::{add_channel_bias, channel_sums};
use crate::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, Tape, Transform, Workspace};

/// The most series terms a configuration may need (at $\rho = $ `coeff`).
pub const MAX_TERMS: usize = 40;

/// The configuration of a [`ConvExp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConvExpConfig {
    /// Channels $C$ (input = output).
    pub channels: usize,
    /// Image size `[H, W]`.
    pub input: [usize; 2],
    /// Odd kernel side.
    pub kernel: usize,
    /// The bound $c$ on $\lVert M\rVert_2$ that the kernel is rescaled to respect (0.9 in
    /// the original), in $(0, 2]$.
    pub coeff: f64,
    /// The truncation tolerance: the series is cut after the first $n$ terms whose tail
    /// bound is at most this (relative to $\lVert x\rVert$), in $[10^{-15}, 10^{-2}]$.
    pub tolerance: f64,
    /// A per-channel bias after the exponential.
    pub bias: bool,
}

impl ConvExpConfig {
    /// `channels x input` images, a 3x3 kernel, $c = 0.9$, tolerance $10^{-6}$, with bias.
    pub fn new(channels: usize, input: [usize; 2]) -> Self {
        Self { channels, input, kernel: 3, coeff: 0.9, tolerance: 1e-6, bias: true }
    }
    /// Set the truncation tolerance.
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }
}

/// The number of terms $n\ge1$ after which the tail of $\sum_j M^j/j!$ is at most `tol`
/// for $\lVert M\rVert_2\le\rho$: the least $n$ with
/// $\frac{\rho^{n+1}}{(n+1)!}\big/\big(1 - \frac{\rho}{n+2}\big)\le$ `tol`
/// (the tail is dominated by a geometric series of ratio $\rho/(n+2)$), or `None` beyond
/// [`CONV_EXP_MAX_TERMS`](crate::layers::CONV_EXP_MAX_TERMS).
pub fn series_terms(rho: f64, tol: f64) -> Option<usize> {
    let mut term = rho; // rho^(n+1)/(n+1)! for n = 0
    for n in 1..=MAX_TERMS {
        term *= rho / (n + 1) as f64;
        let ratio = rho / (n + 2) as f64;
        if ratio < 1.0 && term / (1.0 - ratio) <= tol {
            return Some(n);
        }
    }
    None
}

/// $z = \exp(\mathcal T(\tilde k))\,x + b$ with $\tilde k = s(k)\,k$, evaluated as the
/// truncated series $\sum_{j=0}^n\mathcal T(\tilde k)^jx/j!$.
///
/// * **Norm control.** $\rho(k) = \big(\sum_{o,i}(\sum_t|k_{o,i,t}|)^2\big)^{1/2}$ bounds
///   $\lVert\mathcal T(k)\rVert_2$ for every image size (proofs/baselines.md §3), and
///   $s(k) = \min(1, c/\rho(k))$, so $\lVert\mathcal T(\tilde k)\rVert_2\le c$. The original
///   estimates the spectral norm by one power-iteration step per training step; this
///   bound is deterministic, needs no state, and has an exact gradient.
/// * **Truncation.** $n$ = [`series_terms`]$(\min(\rho, c), \text{tol})$, recomputed from the
///   parameters at every forward pass, so the map differs from $\exp(M)$ by at most
///   tol$\cdot\lVert x\rVert$.
/// * **Log-det** $\operatorname{tr}M = HW\sum_c\tilde k_{c,c,\text{centre}}$
///   (data-independent, the static part; exact for $\exp(M)$).
/// * **Gradients** of $\ell = -\frac1B\sum_b[\delta_b\cdot z_b + \log|\det J|]$ with
///   $u_j = M^jx$, $a_m = (M^T)^m\delta$:
///   $\delta_x = \sum_{m=0}^n a_m/m!$ and
///   $\partial_{\tilde k}\ell = -\frac1B\sum_{j=0}^{n-1}P(v_ju_j^T) - HW[\text{diagonal taps}]$,
///   $v_j = \sum_{m=0}^{n-1-j}a_m/(j+m+1)!$, then through $s(k)$ by the chain rule.
///   That is $3n$ convolutions per step against 3 for a plain one.
/// * **Inverse** $\exp(-M)(z - b)$ by the same series, refined twice by the residual of
///   the truncated forward map, so it inverts the map actually applied.
///
/// # Example
/// ```
/// use faer::{Mat, Par};
/// use snf::layers::{ConvExp, ConvExpConfig};
/// use snf::transform::Transform;
/// let layer = ConvExp::<f64>::new(ConvExpConfig::new(2, [4, 4]), &mut snf::init::rng(0))?;
/// assert!(layer.norm_bound() < 0.9 && layer.terms()? <= 9);
/// let x = Mat::from_fn(32, 3, |i, j| (i as f64 - 2.0 * j as f64) / 10.0);
/// let mut ws = layer.workspace(3, Par::Seq)?;
/// let (mut z, mut back) = (Mat::zeros(32, 3), Mat::zeros(32, 3));
/// let _tape = layer.forward(x.as_ref(), z.as_mut(), &mut [0.0; 3], &mut ws)?;
/// layer.inverse(z.as_ref(), back.as_mut(), &mut ws)?;
/// assert!((&back - &x).norm_max() < 1e-12);
/// // log|det J| = tr M, a property of the kernel alone
/// let logdet = layer.static_log_det(&mut ws)?;
/// assert!(logdet.is_finite());
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConvExp<T: Real> {
    config: ConvExpConfig,
    geom: Conv2dGeometry,
    k: Mat<T>,
    b: Option<Mat<T>>,
}

/// Gradients of a [`ConvExp`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConvExpGrads<T: Real> {
    /// $\partial\ell/\partial k$ (the raw kernel).
    pub k: Mat<T>,
    /// $\partial\ell/\partial b$, if the layer has a bias.
    pub b: Option<Mat<T>>,
}

impl<T: Real> GradBlocks<T> for ConvExpGrads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        [Some(self.k.as_ref()), self.b.as_ref().map(|b| b.as_ref())].into_iter().flatten().collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.k.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

#[derive(Debug)]
struct ConvExpWorkspace<T: Real> {
    conv: Conv2d<T>,
    /// $\tilde k$.
    ke: Mat<T>,
    /// $\partial\ell/\partial\tilde k$.
    gke: Mat<T>,
    /// $u_1..u_{n}$ of the last forward pass.
    u: Vec<Mat<T>>,
    /// $a_1..a_n$.
    a: Vec<Mat<T>>,
    v: Mat<T>,
    /// Terms used by the last forward pass.
    terms: usize,
    chan: Vec<T>,
}

fn geometry(op: &'static str, c: &ConvExpConfig) -> Result<Conv2dGeometry> {
    if c.kernel == 0 || c.kernel.is_multiple_of(2) {
        return Err(Error::InvalidArgument { op, reason: format!("the kernel side must be odd, got {}", c.kernel) });
    }
    if !(c.coeff > 0.0 && c.coeff <= 2.0) {
        return Err(Error::InvalidArgument { op, reason: format!("coeff must be in (0, 2], got {}", c.coeff) });
    }
    if !(1e-15..=1e-2).contains(&c.tolerance) {
        return Err(Error::InvalidArgument { op, reason: format!("tolerance must be in [1e-15, 1e-2], got {}", c.tolerance) });
    }
    Shape::image(c.channels, c.input[0], c.input[1]).checked_dim().map_err(|e| match e {
        Error::InvalidArgument { reason, .. } => Error::InvalidArgument { op, reason },
        other => other,
    })?;
    Conv2dGeometry::new(Conv2dSpec::same(c.channels, c.input, [c.kernel, c.kernel]))
}

impl<T: Real> ConvExp<T> {
    /// Xavier-normal kernel noise of gain 0.01 (so $\exp(M)\approx I$, the near-identity
    /// start of the crate's other convolutions), zero bias. (The authors' baseline draws
    /// the kernel with standard deviation $1/(Ck^2)$, which on MNIST starts the 9-layer
    /// model at a validation NLL of about $1.7\cdot10^5$ nats.)
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an even kernel, a coefficient or tolerance out of
    /// range, an empty shape; [`Error::InvalidConv`] for a kernel larger than the padded image.
    pub fn new(config: ConvExpConfig, rng: &mut impl Rng) -> Result<Self> {
        let geom = geometry("ConvExp::new", &config)?;
        let (kr, kc) = geom.kernel_shape();
        let receptive = config.kernel * config.kernel;
        let std = crate::init::xavier_normal_std(config.channels * receptive, config.channels * receptive, 0.01);
        let k = Mat::from_fn(kr, kc, |_, _| T::from_f64(std * rng.sample::<f64, _>(StandardNormal)));
        Ok(Self { config, geom, k, b: config.bias.then(|| Mat::zeros(config.channels, 1)) })
    }

    /// A layer from an explicit raw kernel (layout of [`Conv2dGeometry`]) and bias.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::ShapeMismatch`] for wrong tensor shapes; [`Error::NonFinite`].
    pub fn from_parts(config: ConvExpConfig, k: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        const OP: &str = "ConvExp::from_parts";
        let geom = geometry(OP, &config)?;
        check_shape(OP, geom.kernel_shape(), (k.nrows(), k.ncols()))?;
        if config.bias != b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs from the configuration".into() });
        }
        if let Some(b) = &b {
            check_shape(OP, (config.channels, 1), (b.nrows(), b.ncols()))?;
            if !crate::util::all_finite(b.as_ref()) {
                return Err(Error::NonFinite { op: OP });
            }
        }
        if !crate::util::all_finite(k.as_ref()) {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { config, geom, k, b })
    }

    /// The configuration.
    pub fn config(&self) -> &ConvExpConfig {
        &self.config
    }
    /// The raw kernel $k$.
    pub fn kernel(&self) -> MatRef<'_, T> {
        self.k.as_ref()
    }
    fn shape(&self) -> Shape {
        Shape::image(self.config.channels, self.config.input[0], self.config.input[1])
    }
    fn pixels(&self) -> usize {
        self.config.input[0] * self.config.input[1]
    }
    fn taps(&self) -> usize {
        self.config.kernel * self.config.kernel
    }

    /// $S_{o,i} = \sum_t|k_{o,i,t}|$ summed in `f64`, visited as `(o, i, S)`.
    fn for_pairs(&self, mut f: impl FnMut(usize, usize, f64)) {
        let t = self.taps();
        for o in 0..self.config.channels {
            for i in 0..self.config.channels {
                let s: f64 = (0..t).map(|r| self.k[(i * t + r, o)].as_f64().abs()).sum();
                f(o, i, s);
            }
        }
    }

    /// The norm bound $\rho(k)\ge\lVert\mathcal T(k)\rVert_2$.
    pub fn norm_bound(&self) -> f64 {
        let mut sq = 0.0;
        self.for_pairs(|_, _, s| sq += s * s);
        sq.sqrt()
    }

    /// $(s(k), \rho(k))$.
    fn scale(&self) -> (f64, f64) {
        let rho = self.norm_bound();
        (if rho <= self.config.coeff { 1.0 } else { self.config.coeff / rho }, rho)
    }

    /// The terms the series uses at the current parameters.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for a non-finite kernel.
    pub fn terms(&self) -> Result<usize> {
        let rho = self.norm_bound();
        if !rho.is_finite() {
            return Err(Error::NonFinite { op: "ConvExp::terms" });
        }
        series_terms(rho.min(self.config.coeff), self.config.tolerance)
            .ok_or_else(|| Error::InvalidArgument { op: "ConvExp::terms", reason: format!("more than {MAX_TERMS} terms needed") })
    }

    fn diag_index(&self, c: usize) -> (usize, usize) {
        let p = self.config.kernel / 2;
        self.geom.kernel_index(c, c, p, p)
    }

    /// $\tilde k$ into `ws.ke`; the terms into `ws.terms`.
    fn prepare(&self, ws: &mut ConvExpWorkspace<T>) -> Result<()> {
        let n = self.terms()?;
        if n > ws.u.len() {
            return Err(Error::InvalidArgument { op: "ConvExp::prepare", reason: "workspace holds fewer terms than needed".into() });
        }
        let (s, _) = self.scale();
        let s = T::from_f64(s);
        zip!(ws.ke.as_mut(), self.k.as_ref()).for_each(|unzip!(e, k)| *e = s * *k);
        ws.terms = n;
        Ok(())
    }

    /// `out = sum_{j<=n} (sign M)^j input / j!` with two scratch buffers.
    #[allow(clippy::too_many_arguments)]
    fn series(
        conv: &mut Conv2d<T>,
        ke: MatRef<'_, T>,
        sign: f64,
        n: usize,
        input: MatRef<'_, T>,
        mut out: MatMut<'_, T>,
        t0: MatMut<'_, T>,
        t1: MatMut<'_, T>,
    ) -> Result<()> {
        out.copy_from(input);
        let (mut prev, mut next) = (t0, t1);
        prev.copy_from(input);
        for j in 1..=n {
            conv.forward(ke, prev.rb(), next.rb_mut())?;
            let f = T::from_f64(sign / j as f64);
            zip!(next.rb_mut(), out.rb_mut()).for_each(|unzip!(t, o)| {
                *t *= f;
                *o += *t;
            });
            core::mem::swap(&mut prev, &mut next);
        }
        Ok(())
    }
}

impl<T: Real> Transform<T> for ConvExp<T> {
    fn kind(&self) -> &'static str {
        "conv-exp"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input.fits(self.shape()) {
            Ok(self.shape())
        } else {
            Err(shape_error("ConvExp::output_shape", self.shape(), input))
        }
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let n = series_terms(self.config.coeff, self.config.tolerance).ok_or_else(|| Error::InvalidArgument {
            op: "ConvExp::workspace",
            reason: format!("more than {MAX_TERMS} terms needed at the configured coeff and tolerance"),
        })?;
        let d = self.shape().dim();
        let (kr, kc) = self.geom.kernel_shape();
        let bufs = |count: usize| (0..count).map(|_| crate::util::try_zeros::<T>(d, max_batch)).collect::<Result<Vec<_>>>();
        let ws = ConvExpWorkspace {
            conv: Conv2d::new(self.geom, par),
            ke: Mat::zeros(kr, kc),
            gke: Mat::zeros(kr, kc),
            u: bufs(n.max(2))?,
            a: bufs(n.max(2))?,
            v: crate::util::try_zeros(d, max_batch)?,
            terms: 0,
            chan: vec![T::from_f64(0.0); self.config.channels],
        };
        Workspace::new(ws, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "ConvExp::forward";
        let b = crate::layers::check_batch(OP, x, self.shape().dim(), ws.max_batch())?;
        check_shape(OP, (self.shape().dim(), b), (y.nrows(), y.ncols()))?;
        let bufs = ws.buffers_mut::<ConvExpWorkspace<T>>()?;
        self.prepare(bufs)?;
        let mut y = y;
        y.copy_from(x);
        let mut fact = 1.0;
        for j in 0..bufs.terms {
            fact *= (j + 1) as f64;
            let (done, rest) = bufs.u.split_at_mut(j);
            let input = if j == 0 { x } else { done[j - 1].as_ref().subcols(0, b) };
            let u = rest[0].as_mut().subcols_mut(0, b);
            bufs.conv.forward(bufs.ke.as_ref(), input, u)?;
            let f = T::from_f64(1.0 / fact);
            zip!(y.rb_mut(), rest[0].as_ref().subcols(0, b)).for_each(|unzip!(y, u)| *y += f * *u);
        }
        add_channel_bias(y, self.b.as_ref().map(|b| b.as_ref()), self.pixels(), T::from_f64(1.0));
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
        const OP: &str = "ConvExp::backward";
        ws.consume(tape, x)?;
        let (d, b) = (self.shape().dim(), x.ncols());
        crate::layers::check_backward_operands(OP, d, b, &[(dy.nrows(), dy.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        let g: &mut ConvExpGrads<T> = grads.downcast_mut()?;
        check_shape(OP, (self.k.nrows(), self.k.ncols()), (g.k.nrows(), g.k.ncols()))?;
        if g.b.is_some() != self.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        let bufs = ws.buffers_mut::<ConvExpWorkspace<T>>()?;
        let n = bufs.terms;
        // a_m = (M^T)^m dy, m = 1..n, and dx = sum_m a_m / m!
        let mut dx = dx;
        dx.copy_from(dy);
        let mut fact = 1.0;
        for m in 1..=n {
            fact *= m as f64;
            let (done, rest) = bufs.a.split_at_mut(m - 1);
            let input = if m == 1 { dy } else { done[m - 2].as_ref().subcols(0, b) };
            bufs.conv.input_grad(bufs.ke.as_ref(), input, rest[0].as_mut().subcols_mut(0, b), T::from_f64(1.0), Accum::Replace)?;
            let f = T::from_f64(1.0 / fact);
            zip!(dx.rb_mut(), rest[0].as_ref().subcols(0, b)).for_each(|unzip!(d, a)| *d += f * *a);
        }
        // d loss / d ke = -1/B sum_j P(v_j u_j^T) - HW [diagonal taps]
        let inv_b = T::from_f64(-1.0 / b as f64);
        bufs.gke.as_mut().fill(T::from_f64(0.0));
        for j in 0..n {
            let mut v = bufs.v.as_mut().subcols_mut(0, b);
            v.fill(T::from_f64(0.0));
            let mut f = (1..=j + 1).map(|i| i as f64).product::<f64>(); // (j + m + 1)! at m = 0
            for m in 0..n - j {
                if m > 0 {
                    f *= (j + m + 1) as f64;
                }
                let a = if m == 0 { dy } else { bufs.a[m - 1].as_ref().subcols(0, b) };
                let c = T::from_f64(1.0 / f);
                zip!(v.rb_mut(), a).for_each(|unzip!(v, a)| *v += c * *a);
            }
            let u = if j == 0 { x } else { bufs.u[j - 1].as_ref().subcols(0, b) };
            bufs.conv.weight_grad(u, v.rb(), bufs.gke.as_mut(), inv_b, Accum::Add)?;
        }
        let hw = T::from_f64(self.pixels() as f64);
        for c in 0..self.config.channels {
            let at = self.diag_index(c);
            bufs.gke[at] -= hw;
        }
        // through ke = s(k) k
        let (s, rho) = self.scale();
        let mut gk = g.k.as_mut();
        zip!(gk.rb_mut(), bufs.gke.as_ref()).for_each(|unzip!(g, e)| *g = T::from_f64(s) * *e);
        if rho > self.config.coeff {
            // d s / d k_{oit} = -(c / rho^2) S_oi sign(k_oit) / rho
            let dot: f64 = {
                let mut acc = 0.0;
                zip!(bufs.gke.as_ref(), self.k.as_ref()).for_each(|unzip!(e, k)| acc += e.as_f64() * k.as_f64());
                acc
            };
            let coef = -self.config.coeff / (rho * rho * rho) * dot;
            let t = self.taps();
            self.for_pairs(|o, i, sum| {
                for r in 0..t {
                    let kv = self.k[(i * t + r, o)].as_f64();
                    let sign = if kv > 0.0 {
                        1.0
                    } else if kv < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    gk[(i * t + r, o)] += T::from_f64(coef * sum * sign);
                }
            });
        }
        if let Some(gb) = g.b.as_mut() {
            channel_sums(&mut bufs.chan, dy, self.pixels(), inv_b, false);
            gb.col_as_slice_mut(0).copy_from_slice(&bufs.chan);
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "ConvExp::inverse";
        let b = crate::layers::check_batch(OP, y, self.shape().dim(), ws.max_batch())?;
        check_shape(OP, (self.shape().dim(), b), (x.nrows(), x.ncols()))?;
        let bufs = ws.buffers_mut::<ConvExpWorkspace<T>>()?;
        self.prepare(bufs)?;
        let n = bufs.terms;
        let hw = self.pixels();
        let bias = self.b.as_ref().map(|b| b.as_ref());
        // target t = y - b (in a[0]); x0 = S_n(-M) t
        let (a0, a_rest) = bufs.a.split_at_mut(1);
        let mut t = a0[0].as_mut().subcols_mut(0, b);
        t.copy_from(y);
        add_channel_bias(t.rb_mut(), bias, hw, T::from_f64(-1.0));
        let (u0, u_rest) = bufs.u.split_at_mut(1);
        let (mut s0, mut s1) = (u0[0].as_mut().subcols_mut(0, b), u_rest[0].as_mut().subcols_mut(0, b));
        let mut r = a_rest[0].as_mut().subcols_mut(0, b);
        let mut v = bufs.v.as_mut().subcols_mut(0, b);
        let mut x = x;
        Self::series(&mut bufs.conv, bufs.ke.as_ref(), -1.0, n, t.rb(), x.rb_mut(), s0.rb_mut(), s1.rb_mut())?;
        for _ in 0..2 {
            // r = t - S_n(M) x; x += S_n(-M) r
            Self::series(&mut bufs.conv, bufs.ke.as_ref(), 1.0, n, x.rb(), v.rb_mut(), s0.rb_mut(), s1.rb_mut())?;
            zip!(r.rb_mut(), t.rb(), v.rb()).for_each(|unzip!(r, t, v)| *r = *t - *v);
            Self::series(&mut bufs.conv, bufs.ke.as_ref(), -1.0, n, r.rb(), v.rb_mut(), s0.rb_mut(), s1.rb_mut())?;
            zip!(x.rb_mut(), v.rb()).for_each(|unzip!(x, v)| *x += *v);
        }
        if crate::util::all_finite(x.rb()) {
            Ok(())
        } else {
            Err(Error::NonFinite { op: OP })
        }
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        let (s, _) = self.scale();
        let tr: f64 = (0..self.config.channels).map(|c| self.k[self.diag_index(c)].as_f64()).sum();
        let ld = self.pixels() as f64 * s * tr;
        if ld.is_finite() {
            Ok(ld)
        } else {
            Err(Error::NonFinite { op: "ConvExp::static_log_det" })
        }
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        let mut v = vec![Param { name: "k", value: self.k.as_ref() }];
        v.extend(self.b.as_ref().map(|b| Param { name: "b", value: b.as_ref() }));
        v
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [Some(self.k.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(ConvExpGrads { k: Mat::zeros(self.k.nrows(), self.k.ncols()), b: self.b.as_ref().map(|b| Mat::zeros(b.nrows(), 1)) })
    }
    fn spec(&self) -> serde_json::Value {
        crate::transform::spec_with_kind("conv-exp", &self.config)
    }
}
