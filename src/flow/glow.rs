//! Glow (Kingma & Dhariwal, 2018) with exact or self-normalizing mixing layers: the
//! paper's scalability experiments (§5, Table 1's Glow row, Tables 2 and 5, Appendix A.3).

use faer::Mat;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::models::PREPROCESS_ALPHA;
use super::Flow;
use crate::conv::{flip, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::layers::conv::{SelfNormConv2d, SelfNormConv2dConfig};
use crate::layers::linear::InverseFit;
use crate::layers::{random_orthogonal, ActNorm, AffineCoupling, AffineCouplingConfig, InvConv1x1, LuConv1x1, Preprocess, Split, Squeeze};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::Transform;

/// The channel-mixing layer of each Glow step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GlowMixing {
    /// Glow's invertible 1x1 convolution, trained with the exact gradient ($W^{-T}$ by LU
    /// of the `C x C` weight each step).
    Exact1x1,
    /// Glow's LU-parametrised 1x1 convolution $W = PL(U + \mathrm{diag}(s))$, exact
    /// gradients without an inverse ([`LuConv1x1`]).
    Lu1x1,
    /// A self-normalizing 1x1 convolution: a `C x C` SNF linear layer applied at every
    /// pixel (Eqs. 10–20 with multiplicity $HW$), no bias (ActNorm has it).
    Snf1x1,
    /// A self-normalizing `k x k` convolution (Table 5's "SNF 5x5"), odd `k`, inverse
    /// kernel of the same size, no bias.
    Snf(usize),
}

impl GlowMixing {
    /// Whether the mixing layers are self-normalizing.
    pub fn is_self_normalizing(self) -> bool {
        !matches!(self, GlowMixing::Exact1x1 | GlowMixing::Lu1x1)
    }
}

/// A Glow architecture: `levels` multi-scale levels of `steps` flow steps, conditioner
/// networks of `width` hidden channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GlowConfig {
    /// Levels $L$ (one squeeze each; a split between levels).
    pub levels: usize,
    /// Steps $K$ per level (ActNorm, mixing, affine coupling).
    pub steps: usize,
    /// Hidden channels of each coupling's conditioner.
    pub width: usize,
    /// The mixing layers.
    pub mixing: GlowMixing,
}

impl GlowConfig {
    /// `L` levels of `K` steps with conditioner `width` and `mixing`.
    pub fn new(levels: usize, steps: usize, width: usize, mixing: GlowMixing) -> Self {
        Self { levels, steps, width, mixing }
    }
    /// The paper's MNIST Glow (Table 1): 2 levels of 16 steps, width 512.
    pub fn mnist_2l_16k(mixing: GlowMixing) -> Self {
        Self::new(2, 16, 512, mixing)
    }
    /// Table 5's small Glow: 2 levels of 4 steps, width 16.
    pub fn table5_2l_4k(mixing: GlowMixing) -> Self {
        Self::new(2, 4, 16, mixing)
    }
    /// The paper's CIFAR-10 Glow (Table 2): 3 levels of 32 steps, width 512.
    pub fn cifar10_3l_32k(mixing: GlowMixing) -> Self {
        Self::new(3, 32, 512, mixing)
    }
}

/// A self-normalizing `k x k` mixing convolution on `c x h x w` whose kernel is a random
/// orthogonal `C x C` matrix $Q$ at the centre tap (zero elsewhere, A.3) and whose inverse
/// kernel is $\mathrm{flip}(w)$, i.e. $Q^T = Q^{-1}$ at the centre: $R = W^{-1}$ exactly at
/// initialisation.
///
/// # Errors
/// [`SelfNormConv2d::from_parts`]'s (even `k`, empty shapes).
pub fn snf_mixing_conv<T: Real>(shape: Shape, k: usize, rng: &mut impl Rng) -> Result<SelfNormConv2d<T>> {
    let cfg = SelfNormConv2dConfig::new(shape.c, [shape.h, shape.w], k).with_bias(false);
    if k.is_multiple_of(2) {
        return Err(Error::InvalidArgument { op: "snf_mixing_conv", reason: format!("the kernel size must be odd, got {k}") });
    }
    let geom = Conv2dGeometry::new(cfg.forward)?;
    let (kr, kc) = geom.kernel_shape();
    let q = random_orthogonal::<T>(shape.c, rng);
    let mut w = Mat::zeros(kr, kc);
    for o in 0..shape.c {
        for i in 0..shape.c {
            w[geom.kernel_index(o, i, k / 2, k / 2)] = q[(o, i)];
        }
    }
    let r = flip(&geom, w.as_ref())?;
    SelfNormConv2d::from_parts(cfg, w, r, None)
}

/// Glow on `C x H x W` images (`H`, `W` divisible by $2^L$): the logit preprocessing of
/// the other models, then per level a squeeze and $K$ steps of
/// ActNorm → mixing → affine coupling ([`AffineCoupling`], conditioner of `width`
/// channels), and between levels a [`Split`] that factors out half the channels under a
/// learned conditional Gaussian prior. The factored-out and final variables have the
/// flow's standard normal base (the prior of the top level is not learned).
///
/// The mixing layers start as random orthogonal matrices (A.3); ActNorms and the
/// conditioners' ActNorms are set from the first batch ([`Flow::data_init`], run by the
/// trainer), and each coupling's last layer starts at zero.
///
/// # Errors
/// [`Error::InvalidArgument`] for zero levels, steps or width, image sides not divisible
/// by $2^L$, or an even `k` for [`GlowMixing::Snf`]; the constructors' checks.
pub fn glow<T: Real, R: Rng>(shape: Shape, config: GlowConfig, rng: &mut R) -> Result<Flow<T>> {
    glow_with_fit(shape, config, InverseFit::Penalty, rng)
}

/// [`glow`] with the self-normalizing mixing layers' [`InverseFit`] chosen: the paper's
/// penalty ([`InverseFit::Penalty`], what [`glow`] builds, λ of A.3) or the projection fit
/// ([`InverseFit::Projection`]: the inverse kernel refitted to each batch by proximal least
/// squares, the likelihood trained with no penalty but a small pull on $w$ steered by
/// `Adaptive::pull`, as in the conv model; `proofs/projection.md`). A 1x1 inverse kernel can
/// equal $W^{-1}$ exactly, so for [`GlowMixing::Snf1x1`] the refit meets its constraint
/// without a λ to tune (`docs/reproduction.md`, "Glow with the projection fit"). The same
/// random draws for every `fit`; `fit` is ignored by exact mixing layers.
///
/// ```
/// use snf::flow::glow::{glow_with_fit, GlowConfig, GlowMixing};
/// use snf::layers::linear::InverseFit;
/// use snf::Shape;
/// let cfg = GlowConfig::new(1, 2, 8, GlowMixing::Snf1x1);
/// let flow = glow_with_fit::<f64, _>(Shape::image(1, 4, 4), cfg, InverseFit::projection(), &mut snf::init::rng(0))?;
/// assert_eq!(flow.self_normalizing().count(), 2);
/// # Ok::<(), snf::Error>(())
/// ```
///
/// # Errors
/// As [`glow`]; [`Error::InvalidArgument`] for settings [`InverseFit::validate`] rejects.
pub fn glow_with_fit<T: Real, R: Rng>(shape: Shape, config: GlowConfig, fit: InverseFit, rng: &mut R) -> Result<Flow<T>> {
    const OP: &str = "glow";
    fit.validate()?;
    shape.checked_dim()?;
    let GlowConfig { levels, steps, width, mixing } = config;
    if levels == 0 || steps == 0 || width == 0 {
        return Err(Error::InvalidArgument { op: OP, reason: format!("levels, steps and width must be positive, got {levels}, {steps}, {width}") });
    }
    let side = 1usize.checked_shl(levels as u32).filter(|s| *s <= shape.h.min(shape.w)).unwrap_or(0);
    if side == 0 || !shape.h.is_multiple_of(side) || !shape.w.is_multiple_of(side) {
        return Err(Error::InvalidArgument { op: OP, reason: format!("image sides must be divisible by 2^{levels} ({levels} squeezes), got {shape}") });
    }
    if let GlowMixing::Snf(k) = mixing {
        if k.is_multiple_of(2) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("the mixing kernel must be odd, got {k}") });
        }
    }
    let mut layers: Vec<Box<dyn Transform<T>>> = vec![Box::new(Preprocess::new(PREPROCESS_ALPHA)?)];
    let (mut c, mut h, mut w) = (shape.c, shape.h, shape.w);
    for level in 0..levels {
        layers.push(Box::new(Squeeze::new(c, h, w)?));
        (c, h, w) = (4 * c, h / 2, w / 2);
        let img = Shape::image(c, h, w);
        for _ in 0..steps {
            layers.push(Box::new(ActNorm::<T>::new(img)?));
            match mixing {
                GlowMixing::Exact1x1 => layers.push(Box::new(InvConv1x1::<T>::new(img, rng)?)),
                GlowMixing::Lu1x1 => layers.push(Box::new(LuConv1x1::<T>::new(img, rng)?)),
                GlowMixing::Snf1x1 => layers.push(Box::new(snf_mixing_conv::<T>(img, 1, rng)?.with_inverse_fit(fit)?)),
                GlowMixing::Snf(k) => layers.push(Box::new(snf_mixing_conv::<T>(img, k, rng)?.with_inverse_fit(fit)?)),
            }
            layers.push(Box::new(AffineCoupling::<T>::new(AffineCouplingConfig::new(img, width), rng)?));
        }
        if level + 1 < levels {
            layers.push(Box::new(Split::<T>::new(img)?));
            c -= c / 2;
        }
    }
    Flow::new(shape, layers)
}
