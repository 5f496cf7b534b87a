//! The self-normalizing convolutional layer (Section 4.2, Appendices A.2 and A.4) and
//! the exact-gradient baseline.
//!
//! $f(x) = w \star x + b = \mathcal T(w)x + b$ and the learned inverse
//! $g(z) = r \star (z - b) = \mathcal T(r)(z - b)$, both channel-preserving, stride 1 and
//! "same"-padded, so every convolution matrix is square ($D = CHW$) and
//! $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$. The kernels may differ in size
//! (Appendix A.4: e.g. a 3x3 $w$ with a 7x7 $r$). With $P_w$, $P_r$ the adjoint maps onto
//! each kernel space ([`project_onto_kernel`](crate::conv::project_onto_kernel)), $m_w$,
//! $m_r$ the multiplicities (Eq. 27) and $\mathrm{rs}_{a\to b}$ the centred crop / zero-pad
//! (Eq. 30), the log-det gradients are
//!
//! | | exact | self-normalizing |
//! |---|---|---|
//! | $\partial\log\lvert\mathcal T(w)\rvert/\partial w$ | $P_w(\mathcal T(w)^{-T})$ | $\mathrm{rs}_{r\to w}(\mathrm{flip}\,r)\odot m_w$ (Eqs. 15, 28) |
//! | $\partial\log\lvert\mathcal T(r)^{-1}\rvert/\partial r$ | $-P_r(\mathcal T(r)^{-T})$ | $-\mathrm{rs}_{w\to r}(\mathrm{flip}\,w)\odot m_r$ (Eqs. 16, 29) |
//!
//! and every data and reconstruction term of the linear layer (see
//! [`linear`](crate::layers::linear)) carries over with $W = \mathcal T(w)$,
//! $R = \mathcal T(r)$, each product $a\,c^T$ becoming the kernel gradient
//! $P(a\,c^T)$ ([`Conv2d::weight_grad`](crate::conv::Conv2d::weight_grad)) and the bias
//! gradient summing over pixels. In other words the conv layer's gradients are exactly the
//! projections $P_w$, $P_r$ of the linear layer's gradients at $W = \mathcal T(w)$,
//! $R = \mathcal T(r)$ (tested). Derivations: `proofs/conv.md`, `proofs/asymmetric.md`.

mod backward;
mod exact;
mod exact_conv;
pub(crate) mod forward;
mod fused;
mod projection;
mod transform;
mod workspace;

pub use exact_conv::{ExactConv2d, ExactConv2dGrads, ExactConv2dWorkspace};
pub(crate) use forward::{add_channel_bias, channel_sums};
pub use workspace::ConvWorkspace;

use faer::{Mat, MatMut, MatRef};
use rand::Rng;
use rand_distr::StandardNormal;

use super::linear::InverseFit;
use super::next_stamp;
use crate::conv::{self, Conv2dGeometry, Conv2dSpec};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// How to build a [`SelfNormConv2d`].
///
/// # Example
/// ```
/// use snf::layers::conv::SelfNormConv2dConfig;
/// // 4 channels of 14x14, 3x3 forward kernel, 7x7 inverse kernel (Appendix A.4)
/// let cfg = SelfNormConv2dConfig::new(4, [14, 14], 3).with_inverse_kernel([7, 7]);
/// assert_eq!(cfg.forward.padding, [1, 1]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SelfNormConv2dConfig {
    /// The forward convolution $f$. Must be channel-preserving, stride 1, with odd
    /// kernel sizes and "same" padding $d(K-1)/2$: exactly the geometries for which
    /// Eq. 15 holds (see [`SelfNormConv2d::new`]). (Flattened into the same JSON object.)
    #[serde(flatten)]
    pub forward: Conv2dSpec,
    /// Kernel size of the inverse $g$ (odd). $g$ shares the channels, dilation and
    /// groups of $f$ and uses its own "same" padding.
    pub inverse_kernel: [usize; 2],
    /// Whether the layer has a per-channel bias.
    pub bias: bool,
}

impl SelfNormConv2dConfig {
    /// `channels` of `input` size, square `kernel x kernel` kernels for $f$ and $g$,
    /// stride 1, "same" padding, with bias.
    pub fn new(channels: usize, input: [usize; 2], kernel: usize) -> Self {
        Self { forward: Conv2dSpec::same(channels, input, [kernel, kernel]), inverse_kernel: [kernel, kernel], bias: true }
    }
    /// Use an inverse kernel of another (odd) size.
    pub fn with_inverse_kernel(mut self, kernel: [usize; 2]) -> Self {
        self.inverse_kernel = kernel;
        self
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// A self-normalizing convolution with forward kernel $w$, inverse kernel $r$ and an
/// optional per-channel bias. Batches are `D x B` (one `C x H x W` image per column).
///
/// # Example
/// ```
/// use snf::layers::conv::{ConvWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
/// use faer::{Mat, Par};
///
/// let mut rng = snf::init::rng(0);
/// let layer = SelfNormConv2d::<f64>::new(SelfNormConv2dConfig::new(2, [5, 5], 3), &mut rng)?;
/// let d = layer.dim(); // 2 * 5 * 5
/// let x = Mat::from_fn(d, 4, |i, j| ((i + 3 * j) % 7) as f64 / 7.0 - 0.5);
/// let mut ws = ConvWorkspace::new(&layer, 4, Par::Seq)?.with_exact()?;
/// let mut z = Mat::zeros(d, 4);
/// layer.forward(x.as_ref(), z.as_mut(), &mut ws)?;
/// let dz = Mat::from_fn(d, 4, |i, j| -z[(i, j)]); // standard normal base
/// let mut dx = Mat::zeros(d, 4);
/// let mut grads = layer.zero_grads();
/// let stats = layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut grads, &mut ws, 1.0)?;
/// assert!(stats.reconstruction_error < 1e-2);
/// // the exact log-det (its LU is kept in the workspace until the kernel changes)
/// let ld = layer.log_abs_det(&mut ws)?;
/// assert!(ld.abs() < 1.0);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug)]
pub struct SelfNormConv2d<T: Real> {
    pub(crate) config: SelfNormConv2dConfig,
    pub(crate) geom_w: Conv2dGeometry,
    pub(crate) geom_r: Conv2dGeometry,
    pub(crate) w: Mat<T>,
    pub(crate) r: Mat<T>,
    pub(crate) b: Option<Mat<T>>,
    /// Multiplicities (Eq. 27) of $w$ and $r$: data- and parameter-independent.
    pub(crate) m_w: Mat<T>,
    pub(crate) m_r: Mat<T>,
    /// Changes whenever the parameters may have changed (keys the workspace's LU caches).
    pub(crate) stamp: u64,
    /// How the inverse kernel is kept (penalty or projection fit).
    pub(crate) fit: InverseFit,
}

impl<T: Real> Clone for SelfNormConv2d<T> {
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            geom_w: self.geom_w,
            geom_r: self.geom_r,
            w: self.w.clone(),
            r: self.r.clone(),
            b: self.b.clone(),
            m_w: self.m_w.clone(),
            m_r: self.m_r.clone(),
            stamp: self.stamp,
            fit: self.fit,
        }
    }
}

impl<T: Real> PartialEq for SelfNormConv2d<T> {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.w == other.w && self.r == other.r && self.b == other.b && self.fit == other.fit
    }
}

/// Gradients of the loss with respect to a [`SelfNormConv2d`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads<T: Real> {
    pub(crate) w: Mat<T>,
    pub(crate) r: Mat<T>,
    pub(crate) b: Option<Mat<T>>,
}

impl<T: Real> Conv2dGrads<T> {
    /// $\partial\ell/\partial w$, in the kernel layout of [`Conv2dGeometry`].
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// $\partial\ell/\partial r$.
    pub fn r(&self) -> MatRef<'_, T> {
        self.r.as_ref()
    }
    /// $\partial\ell/\partial b$ (`C x 1`), present iff the layer has a bias.
    pub fn b(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }
    /// Multiply every block by `s` (gradient clipping).
    pub fn scale(&mut self, s: T) {
        for m in [Some(&mut self.w), Some(&mut self.r), self.b.as_mut()].into_iter().flatten() {
            faer::zip!(m.as_mut()).for_each(|faer::unzip!(v)| *v *= s);
        }
    }
    /// The blocks in parameter order `[w, r, b?]`, for [`angle_degrees`](crate::grad::angle_degrees).
    pub fn blocks(&self) -> impl Iterator<Item = MatRef<'_, T>> {
        [Some(self.w()), Some(self.r()), self.b()].into_iter().flatten()
    }
}

/// Validate a config and return the geometries of $f$ and $g$.
fn geometries(op: &'static str, config: &SelfNormConv2dConfig) -> Result<(Conv2dGeometry, Conv2dGeometry)> {
    let gw = Conv2dGeometry::new(config.forward).map_err(|e| match e {
        Error::InvalidConv { reason, .. } => Error::InvalidConv { op, reason },
        other => other,
    })?;
    if !gw.is_self_transpose() {
        return Err(Error::InvalidConv {
            op,
            reason: format!(
                "Eq. 15 needs a square convolution matrix with T(flip w) = T(w)^T: in_channels == out_channels, \
                 stride 1 and 'same' padding 2p = d(K-1); got {:?}",
                config.forward
            ),
        });
    }
    let odd = |k: [usize; 2]| k.iter().all(|v| v % 2 == 1);
    if !odd(config.forward.kernel) || !odd(config.inverse_kernel) {
        return Err(Error::InvalidConv {
            op,
            reason: format!(
                "kernel sizes must be odd (forward {:?}, inverse {:?}) for the Dirac initialisation and centred crops",
                config.forward.kernel, config.inverse_kernel
            ),
        });
    }
    let gr = gw.with_kernel_same(config.inverse_kernel).map_err(|e| match e {
        Error::InvalidConv { reason, .. } => Error::InvalidConv { op, reason: format!("inverse kernel: {reason}") },
        other => other,
    })?;
    Ok((gw, gr))
}

impl<T: Real> SelfNormConv2d<T> {
    /// A layer initialised as in the paper (Appendix A.3): $w$ = Dirac + Xavier-normal
    /// noise of gain 0.01, $r = \mathrm{flip}(w)$ (zero-padded or cropped to the inverse
    /// kernel size), $b = 0$.
    ///
    /// # Errors
    /// [`Error::InvalidConv`] if the configuration is not one for which the
    /// self-normalizing gradient (Eq. 15) is valid: the convolution matrix must be square
    /// ($C_{in} = C_{out}$, stride 1, output size = input size) and
    /// $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$ must hold, i.e. "same" padding
    /// $2p = d(K-1)$ (`proofs/conv.md` §2); kernel sizes must also be odd. Also any
    /// [`Conv2dGeometry::new`] error.
    pub fn new(config: SelfNormConv2dConfig, rng: &mut impl Rng) -> Result<Self> {
        const OP: &str = "SelfNormConv2d::new";
        let (gw, gr) = geometries(OP, &config)?;
        let mut w = conv::dirac::<T>(&gw)?;
        let [kh, kw] = gw.kernel_size();
        let receptive = kh * kw;
        // PyTorch's fans for a conv kernel [O, C/G, KH, KW]
        let std = crate::init::xavier_normal_std(gw.in_per_group() * receptive, gw.out_channels() * receptive, 0.01);
        for j in 0..w.ncols() {
            for i in 0..w.nrows() {
                let n: f64 = rng.sample(StandardNormal);
                w[(i, j)] += T::from_f64(std * n);
            }
        }
        let fw = conv::flip(&gw, w.as_ref())?;
        let (rr, rc) = gr.kernel_shape();
        let mut r = Mat::zeros(rr, rc);
        conv::resize_centered_into(fw.as_ref(), gw.in_per_group(), gw.kernel_size(), gr.kernel_size(), r.as_mut())?;
        let b = config.bias.then(|| Mat::zeros(gw.in_channels(), 1));
        Self::assemble(config, gw, gr, w, r, b)
    }

    /// A layer from explicit kernels (in the layout of [`Conv2dGeometry`]) and bias (`C x 1`).
    ///
    /// # Errors
    /// As [`new`](Self::new), plus [`Error::ShapeMismatch`] on wrong shapes and
    /// [`Error::NonFinite`] on NaN or infinite parameters.
    pub fn from_parts(config: SelfNormConv2dConfig, w: Mat<T>, r: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        const OP: &str = "SelfNormConv2d::from_parts";
        let (gw, gr) = geometries(OP, &config)?;
        check_shape(OP, gw.kernel_shape(), (w.nrows(), w.ncols()))?;
        check_shape(OP, gr.kernel_shape(), (r.nrows(), r.ncols()))?;
        match (&b, config.bias) {
            (Some(b), true) => check_shape(OP, (gw.in_channels(), 1), (b.nrows(), b.ncols()))?,
            (None, false) => {}
            _ => return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs from the config".into() }),
        }
        let finite =
            crate::util::all_finite(w.as_ref()) && crate::util::all_finite(r.as_ref()) && b.as_ref().is_none_or(|b| crate::util::all_finite(b.as_ref()));
        if !finite {
            return Err(Error::NonFinite { op: OP });
        }
        Self::assemble(config, gw, gr, w, r, b)
    }

    fn assemble(config: SelfNormConv2dConfig, geom_w: Conv2dGeometry, geom_r: Conv2dGeometry, w: Mat<T>, r: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        let m_w = conv::multiplicity(&geom_w)?;
        let m_r = conv::multiplicity(&geom_r)?;
        Ok(Self { config, geom_w, geom_r, w, r, b, m_w, m_r, stamp: next_stamp(), fit: InverseFit::Penalty })
    }

    /// The same layer with its inverse kernel kept by `fit`: [`InverseFit::Penalty`] (the
    /// paper's Eq. 3, steered by λ; what [`new`](Self::new) and [`from_parts`](Self::from_parts)
    /// build) or [`InverseFit::Projection`], under which $w$ and $b$ follow the plain flow's
    /// likelihood with $\mathrm{flip}(r)\odot m_w$ in place of $P_w(\mathcal T(w)^{-T})$, λ
    /// weighs only the reconstruction error's pull on $w$ (keeping $\mathcal T(w)$ invertible
    /// by a kernel of $r$'s size; the conv model's λ is steered by
    /// [`Adaptive::pull`](crate::train::Adaptive::pull)), and $r$ is
    /// refitted to each batch by proximal least squares after the optimiser step
    /// (`proofs/projection.md`, §4).
    ///
    /// ```
    /// use snf::layers::conv::{SelfNormConv2d, SelfNormConv2dConfig};
    /// use snf::layers::linear::InverseFit;
    /// let cfg = SelfNormConv2dConfig::new(2, [6, 6], 3);
    /// let layer = SelfNormConv2d::<f32>::new(cfg, &mut snf::init::rng(0))?.with_inverse_fit(InverseFit::projection())?;
    /// assert_eq!(layer.inverse_fit(), InverseFit::projection());
    /// # Ok::<(), snf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for settings [`InverseFit::validate`] rejects.
    pub fn with_inverse_fit(mut self, fit: InverseFit) -> Result<Self> {
        fit.validate()?;
        self.fit = fit;
        Ok(self)
    }

    /// How the inverse kernel is kept.
    pub fn inverse_fit(&self) -> InverseFit {
        self.fit
    }

    /// The configuration.
    pub fn config(&self) -> &SelfNormConv2dConfig {
        &self.config
    }
    /// Geometry of $f$.
    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geom_w
    }
    /// Geometry of $g$.
    pub fn inverse_geometry(&self) -> &Conv2dGeometry {
        &self.geom_r
    }
    /// The dimension $D = CHW$ of one example.
    pub fn dim(&self) -> usize {
        self.geom_w.in_len()
    }
    /// Channels $C$.
    pub fn channels(&self) -> usize {
        self.geom_w.in_channels()
    }
    /// The forward kernel $w$.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// The inverse kernel $r$.
    pub fn r(&self) -> MatRef<'_, T> {
        self.r.as_ref()
    }
    /// The per-channel bias (`C x 1`), if any.
    pub fn bias(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }
    /// The multiplicity $m_w$ of the forward kernel (Eq. 27).
    pub fn multiplicity(&self) -> MatRef<'_, T> {
        self.m_w.as_ref()
    }
    /// The multiplicity $m_r$ of the inverse kernel.
    pub fn inverse_multiplicity(&self) -> MatRef<'_, T> {
        self.m_r.as_ref()
    }

    /// Zeroed gradients shaped like the parameters.
    pub fn zero_grads(&self) -> Conv2dGrads<T> {
        Conv2dGrads {
            w: Mat::zeros(self.w.nrows(), self.w.ncols()),
            r: Mat::zeros(self.r.nrows(), self.r.ncols()),
            b: self.b.as_ref().map(|b| Mat::zeros(b.nrows(), 1)),
        }
    }

    /// Mutable parameter blocks paired with their gradients, `[w, r, b?]`, for an
    /// optimiser step. Marks the workspace's LU factors stale.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] if `grads` was not made for this layer.
    pub fn params_with_grads<'a>(&'a mut self, grads: &'a Conv2dGrads<T>) -> Result<impl Iterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>> {
        self.check_grads("SelfNormConv2d::params_with_grads", grads)?;
        self.invalidate();
        let b = self.b.as_mut().zip(grads.b.as_ref()).map(|(p, g)| (p.as_mut(), g.as_ref()));
        Ok([Some((self.w.as_mut(), grads.w.as_ref())), Some((self.r.as_mut(), grads.r.as_ref())), b].into_iter().flatten())
    }

    /// Mutable parameter blocks `[w, r, b?]`. Marks the workspace's LU factors stale.
    pub fn params_mut(&mut self) -> impl Iterator<Item = MatMut<'_, T>> {
        self.invalidate();
        [Some(self.w.as_mut()), Some(self.r.as_mut()), self.b.as_mut().map(|b| b.as_mut())].into_iter().flatten()
    }

    /// Take a new stamp: the workspace's LU factors of the old parameters become stale.
    pub(crate) fn invalidate(&mut self) {
        self.stamp = next_stamp();
    }

    pub(crate) fn check_grads(&self, op: &'static str, g: &Conv2dGrads<T>) -> Result<()> {
        check_shape(op, (self.w.nrows(), self.w.ncols()), (g.w.nrows(), g.w.ncols()))?;
        check_shape(op, (self.r.nrows(), self.r.ncols()), (g.r.nrows(), g.r.ncols()))?;
        match (&self.b, &g.b) {
            (Some(b), Some(gb)) => check_shape(op, (b.nrows(), 1), (gb.nrows(), gb.ncols())),
            (None, None) => Ok(()),
            _ => Err(Error::InvalidArgument { op, reason: "bias presence differs from the layer".into() }),
        }
    }
}
