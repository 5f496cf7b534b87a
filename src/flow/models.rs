//! The paper's MNIST models (Section 5, Appendix A.3) and their exact-gradient twins.

use rand::Rng;

use super::{Flow, Layer, Preprocess};
use crate::activation::SmoothLeakyRelu;
use crate::data::mnist::PIXELS;
use crate::error::Result;
use crate::layers::linear::{ExactLinear, SelfNormLinear};
use crate::real::Real;

/// The logit squeeze of the preprocessing ($10^{-6}$, as in the authors' code).
pub const PREPROCESS_ALPHA: f64 = 1e-6;
/// The smooth leaky ReLU slope of the FC model.
pub const SLR_ALPHA: f64 = 0.3;

/// "FC 2-Layer" (Table 1): preprocessing, a $784\times784$ fully connected layer with bias,
/// a smooth leaky ReLU ($\alpha = 0.3$), and a second fully connected layer. With
/// `self_normalizing = false`, the exact-gradient twin (plain flow layers trained with LU).
///
/// # Errors
/// None in practice (the sizes are fixed); carries the constructors' checks.
pub fn fc_two_layer<T: Real, R: Rng>(self_normalizing: bool, rng: &mut R) -> Result<Flow<T>> {
    let linear = |rng: &mut R| -> Result<Layer<T>> {
        Ok(if self_normalizing {
            Layer::Linear(SelfNormLinear::new(PIXELS, true, rng)?)
        } else {
            Layer::ExactLinear(ExactLinear::new(PIXELS, true, rng)?)
        })
    };
    let l1 = linear(rng)?;
    let l2 = linear(rng)?;
    Flow::new(
        PIXELS,
        vec![Layer::Preprocess(Preprocess::new(PREPROCESS_ALPHA)?), l1, Layer::SmoothLeakyRelu(SmoothLeakyRelu::new(SLR_ALPHA)?), l2],
    )
}

/// "Conv. 9-Layer" (Table 1): preprocessing, then three blocks of three 3x3 convolutions
/// (channel-preserving, "same" padding, bias) on 1x28x28, 4x14x14 and 16x7x7, each
/// convolution followed by a per-entry rational-quadratic spline (5 bins, tail bound 10)
/// except the last, with a squeeze between blocks (Appendix A.3, the authors' layout).
/// With `self_normalizing = false`, the exact-gradient twin (plain convolutions trained
/// with the exact log-det gradient).
///
/// # Errors
/// None in practice (the sizes are fixed); carries the constructors' checks.
pub fn conv_nine_layer<T: Real, R: Rng>(self_normalizing: bool, rng: &mut R) -> Result<Flow<T>> {
    use super::Squeeze;
    use crate::activation::{SplineActivation, SplineConfig};
    use crate::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
    let mut layers = vec![Layer::Preprocess(Preprocess::new(PREPROCESS_ALPHA)?)];
    let (mut c, mut hw) = (1usize, 28usize);
    for block in 0..3 {
        for l in 0..3 {
            let cfg = SelfNormConv2dConfig::new(c, [hw, hw], 3);
            layers.push(if self_normalizing {
                Layer::Conv(SelfNormConv2d::new(cfg, rng)?)
            } else {
                Layer::ExactConv(ExactConv2d::new(cfg, rng)?)
            });
            if !(block == 2 && l == 2) {
                layers.push(Layer::Spline(SplineActivation::new(c * hw * hw, SplineConfig::default())?));
            }
        }
        if block < 2 {
            layers.push(Layer::Squeeze(Squeeze::new(c, hw, hw)?));
            c *= 4;
            hw /= 2;
        }
    }
    Flow::new(PIXELS, layers)
}
