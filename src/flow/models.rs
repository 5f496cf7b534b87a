//! The paper's models (Section 5, Appendix A.3) and their exact-gradient twins, built
//! for any input shape (the paper uses MNIST's 1x28x28).

use rand::Rng;

use super::Flow;
use crate::activation::{SmoothLeakyRelu, SplineActivation, SplineConfig};
use crate::error::{Error, Result};
use crate::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use crate::layers::linear::{ExactLinear, InverseFit, RelativeLinear, SelfNormLinear};
use crate::layers::{AutoregressiveConv2d, AutoregressiveConv2dConfig, ConvExp, ConvExpConfig, Direction, InvConv1x1, Preprocess, Squeeze};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::Transform;

/// The logit squeeze of the preprocessing ($10^{-6}$, as in the authors' code).
pub const PREPROCESS_ALPHA: f64 = 1e-6;
/// The smooth leaky ReLU slope of the FC model.
pub const SLR_ALPHA: f64 = 0.3;
/// The starting λ of [`conv_nine_layer`]'s self-normalizing convolutions under the
/// projection fit, where λ weighs only the pull of $\lambda\lVert r\star(w\star x) - x\rVert^2$
/// on $w$ (the refit sets $r$), which keeps $\mathcal T(w)$ invertible by a kernel of $r$'s
/// size. Without a pull the surrogate drifts after ~60 epochs on MNIST. The CLI steers λ from
/// here with [`Adaptive::pull`](crate::train::Adaptive::pull) toward [`CONV_PULL_TARGET`];
/// as a fixed λ (`--lambda 0.02`, the previous default) it tracked the exact twin within
/// 0.2 % over 100 epochs on MNIST while the error rose (`proofs/projection.md` §4,
/// `docs/results.md`).
pub const CONV_PROJECTION_LAMBDA: f64 = 0.02;

/// The relative reconstruction error that the conv projection fit's adaptive pull holds
/// ([`Adaptive::pull`](crate::train::Adaptive::pull), the CLI's default): $3\cdot10^{-4}$.
/// With no pull the MNIST conv model tracked its exact twin while the error stayed under
/// about this and ran away above it (`proofs/lambda.md` §6). Scale-free: the error is
/// relative to each layer's input.
pub const CONV_PULL_TARGET: f64 = 3e-4;

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
/// The self-normalizing layers keep their inverses by the projection fit
/// ([`InverseFit::Projection`]), which tracks the exact twin without a λ to tune
/// (`docs/results.md`); [`fc_two_layer_with`] builds the paper's penalised layers instead.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty shape; the constructors' checks.
pub fn fc_two_layer<T: Real, R: Rng>(shape: Shape, gradient: Gradient, rng: &mut R) -> Result<Flow<T>> {
    fc_two_layer_with(shape, gradient, InverseFit::projection(), rng)
}

/// [`fc_two_layer`] with the self-normalizing layers' [`InverseFit`] chosen
/// ([`InverseFit::Penalty`]: the paper's Eq. 3, steered by λ). The same random draws as
/// [`fc_two_layer`] for every `fit`, so the models start from the same weights.
///
/// # Errors
/// As [`fc_two_layer`]; [`Error::InvalidArgument`] for settings [`InverseFit::validate`] rejects.
pub fn fc_two_layer_with<T: Real, R: Rng>(shape: Shape, gradient: Gradient, fit: InverseFit, rng: &mut R) -> Result<Flow<T>> {
    let d = shape.checked_dim()?;
    let linear = |rng: &mut R| -> Result<Box<dyn Transform<T>>> {
        Ok(match gradient {
            Gradient::SelfNormalizing => Box::new(SelfNormLinear::<T>::new(d, true, rng)?.with_inverse_fit(fit)?),
            Gradient::Exact => Box::new(ExactLinear::<T>::new(d, true, rng)?),
            Gradient::Relative => Box::new(RelativeLinear::<T>::new(d, true, rng)?),
        })
    };
    let l1 = linear(rng)?;
    let l2 = linear(rng)?;
    Flow::new(shape, vec![Box::new(Preprocess::new(PREPROCESS_ALPHA)?), l1, Box::new(SmoothLeakyRelu::new(SLR_ALPHA)?), l2])
}

/// The mixing layer of each of the conv model's nine steps (Table 1's conv rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvMixing {
    /// A 3x3 convolution, self-normalizing or exact as the [`Gradient`] says.
    Conv3x3(Gradient),
    /// An emerging convolution (Hoogeboom et al., 2019): an exact invertible 1x1
    /// convolution, then two autoregressive 3x3-masked convolutions (lower, then upper
    /// triangle; each an effective 2x2 kernel), as in the authors' baseline.
    Emerging,
    /// The convolution exponential (Hoogeboom et al., 2020): an exact invertible 1x1
    /// convolution, then $\exp(M)$ of a 3x3 convolution with $\lVert M\rVert_2\le0.9$, as in
    /// the authors' baseline.
    ConvExp,
}

/// "Conv. 9-Layer" (Table 1) on `C x H x W` images (`H`, `W` divisible by 4): the logit
/// preprocessing, then three blocks of three 3x3 convolutions (channel-preserving, "same"
/// padding, bias) on $C\times H\times W$, $4C\times\frac H2\times\frac W2$ and
/// $16C\times\frac H4\times\frac W4$, each followed by a per-entry rational-quadratic spline
/// (5 bins, tail bound 10) except the last, with a squeeze between blocks (Appendix A.3,
/// the authors' layout).
///
/// The self-normalizing convolutions keep their inverse kernels by the projection fit
/// ([`InverseFit::Projection`]: $r$ refitted to each batch by proximal least squares, $w$
/// trained on the plain likelihood plus a small pull toward kernels $r$ can invert); train
/// them with `Lambda::Adaptive(Adaptive::pull(CONV_PULL_TARGET, CONV_PROJECTION_LAMBDA))`
/// (the CLI's default), with which the model tracks its exact twin on MNIST and generated
/// shapes (`docs/results.md`, which also shows where it does not: generated colour images
/// past 20 epochs). [`conv_nine_layer_with_fit`] builds the paper's penalised layers.
///
/// # Errors
/// [`Error::InvalidArgument`] for a shape whose sides are not divisible by 4; the
/// constructors' checks.
pub fn conv_nine_layer<T: Real, R: Rng>(shape: Shape, gradient: Gradient, rng: &mut R) -> Result<Flow<T>> {
    conv_nine_layer_with(shape, ConvMixing::Conv3x3(gradient), rng)
}

/// [`conv_nine_layer`] with any of Table 1's conv mixing layers in its nine steps (same
/// preprocessing, splines and squeezes). The baselines' mixing layers are exact-likelihood
/// layers trained by their exact gradients.
///
/// # Errors
/// As [`conv_nine_layer`].
pub fn conv_nine_layer_with<T: Real, R: Rng>(shape: Shape, mixing: ConvMixing, rng: &mut R) -> Result<Flow<T>> {
    conv_nine_layer_with_fit(shape, mixing, InverseFit::projection(), rng)
}

/// [`conv_nine_layer_with`] with the self-normalizing convolutions' [`InverseFit`] chosen
/// ([`InverseFit::Penalty`]: the paper's Eq. 3, steered by λ). The same random draws for
/// every `fit`, so the models start from the same weights; `fit` is ignored by the other
/// mixing layers.
///
/// # Errors
/// As [`conv_nine_layer`]; [`Error::InvalidArgument`] for settings [`InverseFit::validate`] rejects.
pub fn conv_nine_layer_with_fit<T: Real, R: Rng>(shape: Shape, mixing: ConvMixing, fit: InverseFit, rng: &mut R) -> Result<Flow<T>> {
    conv_nine_layer_with_inverse_kernel(shape, mixing, fit, 3, rng)
}

/// [`conv_nine_layer_with_fit`] with self-normalizing convolutions whose inverse kernels $r$
/// are `inverse_kernel x inverse_kernel` (odd; the forward kernels stay 3x3). A larger $r$ can
/// follow forward kernels whose inverse reaches further: on generated colour images, where the
/// 3x3 model fell 1.4 % behind its exact twin, a 5x5 $r$ kept it within 1 % for longer
/// (`docs/results.md`), at 3–4 times the time per epoch there: the projection fit's refit, whose
/// normal equations grow with $(C k^2)^2$. The same random draws for every size; `inverse_kernel`
/// is ignored by the other mixing layers.
///
/// ```
/// use snf::flow::models::{conv_nine_layer_with_inverse_kernel, ConvMixing, Gradient};
/// use snf::layers::linear::InverseFit;
/// use snf::Shape;
/// let mixing = ConvMixing::Conv3x3(Gradient::SelfNormalizing);
/// let flow = conv_nine_layer_with_inverse_kernel::<f32, _>(Shape::image(1, 8, 8), mixing, InverseFit::projection(), 5, &mut snf::init::rng(0))?;
/// assert_eq!(flow.self_normalizing().count(), 9);
/// for k in flow.self_normalizing() {
///     let conv = flow.layer::<snf::layers::conv::SelfNormConv2d<f32>>(k);
///     let sizes = conv.map(|c| (c.geometry().kernel_size(), c.inverse_geometry().kernel_size()));
///     assert_eq!(sizes, Some(([3, 3], [5, 5])));
/// }
/// # Ok::<(), snf::Error>(())
/// ```
///
/// # Errors
/// As [`conv_nine_layer_with_fit`]; [`Error::InvalidArgument`] for an even or zero
/// `inverse_kernel`.
pub fn conv_nine_layer_with_inverse_kernel<T: Real, R: Rng>(
    shape: Shape,
    mixing: ConvMixing,
    fit: InverseFit,
    inverse_kernel: usize,
    rng: &mut R,
) -> Result<Flow<T>> {
    fit.validate()?;
    if inverse_kernel.is_multiple_of(2) {
        return Err(Error::InvalidArgument { op: "conv_nine_layer", reason: format!("the inverse kernel size must be odd, got {inverse_kernel}") });
    }
    shape.checked_dim()?;
    if mixing == ConvMixing::Conv3x3(Gradient::Relative) {
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
            let cfg = SelfNormConv2dConfig::new(c, [h, w], 3).with_inverse_kernel([inverse_kernel, inverse_kernel]);
            let img = Shape::image(c, h, w);
            match mixing {
                ConvMixing::Conv3x3(Gradient::SelfNormalizing) => layers.push(Box::new(SelfNormConv2d::<T>::new(cfg, rng)?.with_inverse_fit(fit)?)),
                ConvMixing::Conv3x3(_) => layers.push(Box::new(ExactConv2d::<T>::new(cfg, rng)?)),
                ConvMixing::Emerging => {
                    layers.push(Box::new(InvConv1x1::<T>::new(img, rng)?));
                    for dir in [Direction::Lower, Direction::Upper] {
                        layers.push(Box::new(AutoregressiveConv2d::<T>::new(AutoregressiveConv2dConfig::new(c, [h, w], dir), rng)?));
                    }
                }
                ConvMixing::ConvExp => {
                    layers.push(Box::new(InvConv1x1::<T>::new(img, rng)?));
                    layers.push(Box::new(ConvExp::<T>::new(ConvExpConfig::new(c, [h, w]), rng)?));
                }
            }
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
