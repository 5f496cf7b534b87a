//! The paper's models (Section 5, Appendix A.3) and their exact-gradient twins, built
//! for any input shape (the paper uses MNIST's 1x28x28).

use rand::Rng;

use super::Flow;
use crate::activation::{SmoothLeakyRelu, SplineActivation, SplineConfig};
use crate::error::{Error, Result};
use crate::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use crate::layers::linear::{ExactLinear, RelativeLinear, SelfNormLinear};
use crate::layers::{Preprocess, Squeeze};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::Transform;

/// The logit squeeze of the preprocessing ($10^{-6}$, as in the authors' code).
pub const PREPROCESS_ALPHA: f64 = 1e-6;
/// The smooth leaky ReLU slope of the FC model.
pub const SLR_ALPHA: f64 = 0.3;

/// How the mixing layers of a model are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gradient {
    /// Self-normalizing layers: $R^T$ in place of $W^{-T}$, no determinant.
    SelfNormalizing,
    /// The exact-gradient twin: plain flow layers trained with LU.
    Exact,
    /// Plain linear layers trained with the relative gradient (Gresele et al., 2020): the
    /// exact gradient times $W^TW$, no inverse (FC model only).
    Relative,
}

/// "FC 2-Layer" (Table 1) on examples of shape `shape` ($D = C\cdot H\cdot W$): the logit
/// preprocessing of 8-bit pixels, a $D\times D$ fully connected layer with bias, a smooth
/// leaky ReLU ($\alpha = 0.3$), and a second fully connected layer.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty shape; the constructors' checks.
pub fn fc_two_layer<T: Real, R: Rng>(shape: Shape, gradient: Gradient, rng: &mut R) -> Result<Flow<T>> {
    let d = shape.checked_dim()?;
    let linear = |rng: &mut R| -> Result<Box<dyn Transform<T>>> {
        Ok(match gradient {
            Gradient::SelfNormalizing => Box::new(SelfNormLinear::<T>::new(d, true, rng)?),
            Gradient::Exact => Box::new(ExactLinear::<T>::new(d, true, rng)?),
            Gradient::Relative => Box::new(RelativeLinear::<T>::new(d, true, rng)?),
        })
    };
    let l1 = linear(rng)?;
    let l2 = linear(rng)?;
    Flow::new(shape, vec![Box::new(Preprocess::new(PREPROCESS_ALPHA)?), l1, Box::new(SmoothLeakyRelu::new(SLR_ALPHA)?), l2])
}

/// "Conv. 9-Layer" (Table 1) on `C x H x W` images (`H`, `W` divisible by 4): the logit
/// preprocessing, then three blocks of three 3x3 convolutions (channel-preserving, "same"
/// padding, bias) on $C\times H\times W$, $4C\times\frac H2\times\frac W2$ and
/// $16C\times\frac H4\times\frac W4$, each followed by a per-entry rational-quadratic spline
/// (5 bins, tail bound 10) except the last, with a squeeze between blocks (Appendix A.3,
/// the authors' layout).
///
/// # Errors
/// [`Error::InvalidArgument`] for a shape whose sides are not divisible by 4; the
/// constructors' checks.
pub fn conv_nine_layer<T: Real, R: Rng>(shape: Shape, gradient: Gradient, rng: &mut R) -> Result<Flow<T>> {
    shape.checked_dim()?;
    if gradient == Gradient::Relative {
        return Err(Error::InvalidArgument {
            op: "conv_nine_layer",
            reason: "the relative gradient is defined for the FC model's dense layers, not for convolutions (use snf or exact)".into(),
        });
    }
    if !shape.h.is_multiple_of(4) || !shape.w.is_multiple_of(4) {
        return Err(Error::InvalidArgument { op: "conv_nine_layer", reason: format!("image sides must be divisible by 4 (two squeezes), got {shape}") });
    }
    let mut layers: Vec<Box<dyn Transform<T>>> = vec![Box::new(Preprocess::new(PREPROCESS_ALPHA)?)];
    let (mut c, mut h, mut w) = (shape.c, shape.h, shape.w);
    for block in 0..3 {
        for l in 0..3 {
            let cfg = SelfNormConv2dConfig::new(c, [h, w], 3);
            layers.push(match gradient {
                Gradient::SelfNormalizing => Box::new(SelfNormConv2d::<T>::new(cfg, rng)?),
                Gradient::Exact | Gradient::Relative => Box::new(ExactConv2d::<T>::new(cfg, rng)?),
            });
            if !(block == 2 && l == 2) {
                layers.push(Box::new(SplineActivation::<T>::new(c * h * w, SplineConfig::default())?));
            }
        }
        if block < 2 {
            layers.push(Box::new(Squeeze::new(c, h, w)?));
            (c, h, w) = (4 * c, h / 2, w / 2);
        }
    }
    Flow::new(shape, layers)
}
