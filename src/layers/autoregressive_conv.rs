//! The autoregressive (masked) convolution of emerging convolutions (Hoogeboom et al.,
//! 2019), one of the Table 1 baselines: a convolution whose matrix is triangular, so its
//! log-det is a sum of log-diagonals and its inverse a substitution (proofs/baselines.md §2).

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::conv::forward::{add_channel_bias, channel_sums};
use crate::conv::chunk::{BatchMut, BatchRef};
use crate::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::{shape_error, Shape};
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, Tape, Transform, Workspace};

/// Which triangle of the convolution matrix the kernel fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Output pixel $(y, x)$ sees the taps at offsets $(a, b)$ with $a, b\le 0$ (the
    /// top-left quadrant of the kernel) and, at its own pixel, channels $i\le o$: lower
    /// triangular in the pixel-major raster order $(y, x, c)$.
    Lower,
    /// Offsets $a, b\ge0$ and channels $i\ge o$ at its own pixel: upper triangular.
    Upper,
}

/// The configuration of an [`AutoregressiveConv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AutoregressiveConv2dConfig {
    /// Channels $C$ (input = output).
    pub channels: usize,
    /// Image size `[H, W]`.
    pub input: [usize; 2],
    /// Odd kernel side $k\ge3$; the mask keeps a $(\frac{k+1}2)^2$ quadrant of it.
    pub kernel: usize,
    /// The triangle.
    pub direction: Direction,
    /// A per-channel bias.
    pub bias: bool,
}

impl AutoregressiveConv2dConfig {
    /// `channels x input` images, a 3x3 kernel (an effective 2x2 quadrant, as in the
    /// emerging convolutions of the paper's baseline), with bias.
    pub fn new(channels: usize, input: [usize; 2], direction: Direction) -> Self {
        Self { channels, input, kernel: 3, direction, bias: true }
    }
}

/// A masked "same" convolution $z = \mathcal T(k)x + b$ whose matrix $\mathcal T(k)$ is
/// triangular ([`Direction`]), with diagonal $k_{c,c,\text{centre}}$ repeated at every pixel:
///
/// $$\log|\det J| = HW\sum_c\log|k_{c,c,\text{centre}}|\quad\text{(static, Eqs. 6–7)},$$
/// $$\partial_k\ell = -\frac1B\,M\odot\sum_bP(\delta_{z,b}x_b^T) - \frac{HW}{k_{c,c,\text{centre}}}[\text{at the diagonal taps}],
///   \qquad \delta_x = \mathcal T(k)^T\delta_z,$$
/// with $M$ the mask. The layer always uses $M\odot k$: entries outside the mask are
/// initialised to zero, have zero gradient (so an optimiser never moves them) and are
/// ignored if set. Two of these, [`Direction::Lower`] then
/// [`Direction::Upper`], make one emerging convolution (their composition has the full
/// $k\times k$ receptive field).
///
/// # Example
/// ```
/// use faer::{Mat, Par};
/// use snf::layers::{AutoregressiveConv2d, AutoregressiveConv2dConfig, Direction};
/// use snf::transform::Transform;
/// let cfg = AutoregressiveConv2dConfig::new(3, [5, 5], Direction::Lower);
/// let layer = AutoregressiveConv2d::<f64>::new(cfg, &mut snf::init::rng(0))?;
/// let x = Mat::from_fn(75, 2, |i, j| ((i * 7 + j) % 11) as f64 - 5.0);
/// let mut ws = layer.workspace(2, Par::Seq)?;
/// let (mut z, mut back) = (Mat::zeros(75, 2), Mat::zeros(75, 2));
/// let _tape = layer.forward(x.as_ref(), z.as_mut(), &mut [0.0; 2], &mut ws)?;
/// layer.inverse(z.as_ref(), back.as_mut(), &mut ws)?; // forward substitution
/// assert!((&back - &x).norm_max() < 1e-10);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AutoregressiveConv2d<T: Real> {
    config: AutoregressiveConv2dConfig,
    geom: Conv2dGeometry,
    k: Mat<T>,
    b: Option<Mat<T>>,
}

/// Gradients of an [`AutoregressiveConv2d`].
#[derive(Debug, Clone, PartialEq)]
pub struct AutoregressiveConv2dGrads<T: Real> {
    /// $\partial\ell/\partial k$ (zero off the mask).
    pub k: Mat<T>,
    /// $\partial\ell/\partial b$, if the layer has a bias.
    pub b: Option<Mat<T>>,
}

impl<T: Real> GradBlocks<T> for AutoregressiveConv2dGrads<T> {
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
struct ArWorkspace<T: Real> {
    conv: Conv2d<T>,
    /// $M\odot k$.
    masked: Mat<T>,
    chan: Vec<T>,
}

fn geometry(op: &'static str, c: &AutoregressiveConv2dConfig) -> Result<Conv2dGeometry> {
    if c.kernel < 3 || c.kernel.is_multiple_of(2) {
        return Err(Error::InvalidArgument { op, reason: format!("the kernel side must be odd and at least 3, got {}", c.kernel) });
    }
    Shape::image(c.channels, c.input[0], c.input[1]).checked_dim().map_err(|e| match e {
        Error::InvalidArgument { reason, .. } => Error::InvalidArgument { op, reason },
        other => other,
    })?;
    Conv2dGeometry::new(Conv2dSpec::same(c.channels, c.input, [c.kernel, c.kernel]))
}

impl<T: Real> AutoregressiveConv2d<T> {
    /// Whether kernel entry `(o, i, h, w)` is inside the mask.
    pub fn in_mask(&self, o: usize, i: usize, h: usize, w: usize) -> bool {
        let p = (self.config.kernel / 2) as isize;
        let (a, b) = (h as isize - p, w as isize - p);
        let centre = a == 0 && b == 0;
        match self.config.direction {
            Direction::Lower => a <= 0 && b <= 0 && !(centre && i > o),
            Direction::Upper => a >= 0 && b >= 0 && !(centre && i < o),
        }
    }

    fn for_mask(&self, mut f: impl FnMut(usize, usize, usize, usize, bool)) {
        let (c, k) = (self.config.channels, self.config.kernel);
        for o in 0..c {
            for i in 0..c {
                for h in 0..k {
                    for w in 0..k {
                        f(o, i, h, w, self.in_mask(o, i, h, w));
                    }
                }
            }
        }
    }

    /// $M\odot k$ into `out`.
    fn masked_into(&self, out: &mut Mat<T>) {
        out.copy_from(self.k.as_ref());
        let geom = self.geom;
        self.for_mask(|o, i, h, w, inside| {
            if !inside {
                out[geom.kernel_index(o, i, h, w)] = T::from_f64(0.0);
            }
        });
    }

    fn diag_index(&self, c: usize) -> (usize, usize) {
        let p = self.config.kernel / 2;
        self.geom.kernel_index(c, c, p, p)
    }

    /// The identity (1 at the diagonal taps) plus Xavier-normal noise of gain 0.01 on the
    /// masked-in taps, zero bias: the initialisation of the crate's other convolutions
    /// ([`SelfNormConv2d::new`](crate::layers::SelfNormConv2d::new)), so that the Table 1
    /// rows start from the same near-identity map. (The authors' baseline draws the
    /// off-diagonal taps with standard deviation $1/(2C)$, which on MNIST starts the
    /// 9-layer model at a validation NLL of about $3\cdot10^8$ nats.)
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an even or too small kernel or an empty shape;
    /// [`Error::InvalidConv`] for a kernel larger than the padded image.
    pub fn new(config: AutoregressiveConv2dConfig, rng: &mut impl Rng) -> Result<Self> {
        let geom = geometry("AutoregressiveConv2d::new", &config)?;
        let (kr, kc) = geom.kernel_shape();
        let receptive = config.kernel * config.kernel;
        let std = crate::init::xavier_normal_std(config.channels * receptive, config.channels * receptive, 0.01);
        let mut layer = Self { config, geom, k: Mat::zeros(kr, kc), b: config.bias.then(|| Mat::zeros(config.channels, 1)) };
        let mut k = Mat::<T>::zeros(kr, kc);
        layer.for_mask(|o, i, h, w, inside| {
            if inside {
                let (r, col) = geom.kernel_index(o, i, h, w);
                let n: f64 = rng.sample(StandardNormal);
                k[(r, col)] = T::from_f64(std * n);
            }
        });
        for c in 0..config.channels {
            let at = layer.diag_index(c);
            k[at] += T::from_f64(1.0);
        }
        layer.k = k;
        Ok(layer)
    }

    /// A layer from an explicit kernel (layout of [`Conv2dGeometry`]) and bias.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::ShapeMismatch`] for wrong tensor shapes;
    /// [`Error::NonFinite`]. Entries outside the mask are kept but never used.
    pub fn from_parts(config: AutoregressiveConv2dConfig, k: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        const OP: &str = "AutoregressiveConv2d::from_parts";
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
    pub fn config(&self) -> &AutoregressiveConv2dConfig {
        &self.config
    }
    /// The masked kernel.
    pub fn kernel(&self) -> MatRef<'_, T> {
        self.k.as_ref()
    }
    fn shape(&self) -> Shape {
        Shape::image(self.config.channels, self.config.input[0], self.config.input[1])
    }
    fn pixels(&self) -> usize {
        self.config.input[0] * self.config.input[1]
    }

    /// $k_{c,c,\text{centre}}$.
    fn diag(&self, c: usize) -> f64 {
        self.k[self.diag_index(c)].as_f64()
    }

    /// [`Error::Singular`] if a diagonal tap is zero or not finite (allocates nothing).
    fn check_diagonal(&self, op: &'static str) -> Result<()> {
        let max = (0..self.config.channels).fold(0.0f64, |m, c| m.max(self.diag(c).abs()));
        match (0..self.config.channels).find(|&c| self.diag(c) == 0.0 || !self.diag(c).is_finite()) {
            Some(index) => Err(Error::Singular { op, index, pivot: self.diag(index).abs(), max_pivot: max }),
            None => Ok(()),
        }
    }

    /// Solve $\mathcal T(k)x = z - b$ for one example by substitution in the triangle's order.
    fn substitute(&self, taps: &[(usize, usize, isize, isize, T)], starts: &[usize], diag: &[T], z: &[T], x: &mut [T]) {
        let (c, [h, w]) = (self.config.channels, self.config.input);
        let hw = h * w;
        let lower = self.config.direction == Direction::Lower;
        for step in 0..hw {
            let pix = if lower { step } else { hw - 1 - step };
            let (y, xx) = ((pix / w) as isize, (pix % w) as isize);
            for ostep in 0..c {
                let o = if lower { ostep } else { c - 1 - ostep };
                let mut s = z[o * hw + pix];
                if let Some(b) = &self.b {
                    s -= b[(o, 0)];
                }
                for &(_, i, dy, dx, v) in &taps[starts[o]..starts[o + 1]] {
                    let (sy, sx) = (y + dy, xx + dx);
                    if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        s -= v * x[i * hw + (sy as usize) * w + sx as usize];
                    }
                }
                x[o * hw + pix] = s / diag[o];
            }
        }
    }
}

impl<T: Real> Transform<T> for AutoregressiveConv2d<T> {
    fn kind(&self) -> &'static str {
        "autoregressive-conv"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input.fits(self.shape()) {
            Ok(self.shape())
        } else {
            Err(shape_error("AutoregressiveConv2d::output_shape", self.shape(), input))
        }
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let (kr, kc) = self.geom.kernel_shape();
        Workspace::new(
            ArWorkspace { conv: Conv2d::new(self.geom, par), masked: Mat::zeros(kr, kc), chan: vec![T::from_f64(0.0); self.config.channels] },
            max_batch,
            par,
        )
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "AutoregressiveConv2d::forward";
        crate::layers::check_batch(OP, x, self.shape().dim(), ws.max_batch())?;
        let mut y = y;
        let bufs = ws.buffers_mut::<ArWorkspace<T>>()?;
        self.masked_into(&mut bufs.masked);
        bufs.conv.forward(bufs.masked.as_ref(), x, y.rb_mut())?;
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
        const OP: &str = "AutoregressiveConv2d::backward";
        ws.consume(tape, x)?;
        let (d, b) = (self.shape().dim(), x.ncols());
        crate::layers::check_backward_operands(OP, d, b, &[(dy.nrows(), dy.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        let g: &mut AutoregressiveConv2dGrads<T> = grads.downcast_mut()?;
        check_shape(OP, (self.k.nrows(), self.k.ncols()), (g.k.nrows(), g.k.ncols()))?;
        if g.b.is_some() != self.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        self.check_diagonal(OP)?;
        let bufs = ws.buffers_mut::<ArWorkspace<T>>()?;
        let inv_b = T::from_f64(-1.0 / b as f64);
        self.masked_into(&mut bufs.masked);
        bufs.conv.input_grad(bufs.masked.as_ref(), dy, dx, T::from_f64(1.0), Accum::Replace)?;
        bufs.conv.weight_grad(x, dy, g.k.as_mut(), inv_b, Accum::Replace)?;
        let geom = self.geom;
        let gk = &mut g.k;
        self.for_mask(|o, i, h, w, inside| {
            if !inside {
                gk[geom.kernel_index(o, i, h, w)] = T::from_f64(0.0);
            }
        });
        let hw = self.pixels() as f64;
        for c in 0..self.config.channels {
            gk[self.diag_index(c)] -= T::from_f64(hw / self.diag(c));
        }
        if let Some(gb) = g.b.as_mut() {
            channel_sums(&mut bufs.chan, dy, self.pixels(), inv_b, false);
            gb.col_as_slice_mut(0).copy_from_slice(&bufs.chan);
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "AutoregressiveConv2d::inverse";
        let b = crate::layers::check_batch(OP, y, self.shape().dim(), ws.max_batch())?;
        check_shape(OP, (self.shape().dim(), b), (x.nrows(), x.ncols()))?;
        self.check_diagonal(OP)?;
        let diag: Vec<T> = (0..self.config.channels).map(|c| T::from_f64(self.diag(c))).collect();
        // the off-diagonal taps of each output channel
        let p = (self.config.kernel / 2) as isize;
        let mut taps = Vec::new();
        self.for_mask(|o, i, h, w, inside| {
            let (a, bb) = (h as isize - p, w as isize - p);
            let v = self.k[self.geom.kernel_index(o, i, h, w)];
            if inside && !(a == 0 && bb == 0 && i == o) && v != T::from_f64(0.0) {
                taps.push((o, i, a, bb, v));
            }
        });
        let c = self.config.channels;
        let mut starts = vec![0usize; c + 1];
        for &(o, ..) in &taps {
            starts[o + 1] += 1;
        }
        for o in 0..c {
            starts[o + 1] += starts[o];
        }
        let mut x = x;
        let (y, xs) = (crate::conv::ops::contiguous(OP, y)?, crate::conv::ops::contiguous_mut(OP, x.rb_mut())?);
        crate::util::par_cols((y, xs), ws.par(), &|(y, mut x): (BatchRef<'_, T>, BatchMut<'_, T>)| {
            for j in 0..y.ncols() {
                self.substitute(&taps, &starts, &diag, y.col(j).as_slice(), x.rb_mut().col_mut(j).as_slice_mut());
            }
        });
        if crate::util::all_finite(x.rb()) {
            Ok(())
        } else {
            Err(Error::NonFinite { op: OP })
        }
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        self.check_diagonal("AutoregressiveConv2d::static_log_det")?;
        Ok(self.pixels() as f64 * (0..self.config.channels).map(|c| self.diag(c).abs().ln()).sum::<f64>())
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
        Grads::new(AutoregressiveConv2dGrads { k: Mat::zeros(self.k.nrows(), self.k.ncols()), b: self.b.as_ref().map(|b| Mat::zeros(b.nrows(), 1)) })
    }
    fn spec(&self) -> serde_json::Value {
        crate::transform::spec_with_kind("autoregressive-conv", &self.config)
    }
}
