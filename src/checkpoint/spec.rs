//! The JSON description of a flow's layers: everything needed to rebuild a layer besides
//! its parameter tensors.

use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::activation::{LeakyRelu, SmoothLeakyRelu, SplineActivation, SplineConfig};
use crate::error::{Error, Result};
use crate::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use crate::layers::linear::{ExactLinear, InverseFit, RelativeLinear, SelfNormLinear};
use crate::layers::{
    ActNorm, AffineCoupling, AffineCouplingConfig, AutoregressiveConv2d, AutoregressiveConv2dConfig, ConvExp, ConvExpConfig, InvConv1x1, LuConv1x1, Preprocess,
    Split, Squeeze, Standardize,
};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::Transform;

/// A convolution's configuration as stored: [`SelfNormConv2dConfig`] (the forward
/// [`Conv2dSpec`](crate::conv::Conv2dSpec) flattened into the same JSON object).
pub type ConvSpec = SelfNormConv2dConfig;

/// The largest example size $D$ a checkpoint may declare for a layer whose exact path is
/// dense ($D\times D$ LU): 16 384 (a `D x D` f64 matrix of 2 GiB). A file declaring more
/// is refused before anything is allocated.
pub const MAX_DENSE_DIM: usize = 1 << 14;

/// One layer's kind and configuration, as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LayerSpec {
    /// [`Preprocess`].
    Preprocess {
        /// The logit squeeze α.
        alpha: f64,
    },
    /// [`SelfNormLinear`] (tensors `w`, `r`, `b`?).
    SnfLinear {
        /// Dimension.
        dim: usize,
        /// Has a bias.
        bias: bool,
        /// How its inverse is kept (absent in older checkpoints: the paper's penalty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inverse_fit: Option<InverseFit>,
    },
    /// [`ExactLinear`] (tensors `w`, `b`?).
    ExactLinear {
        /// Dimension.
        dim: usize,
        /// Has a bias.
        bias: bool,
    },
    /// [`RelativeLinear`] (tensors `w`, `b`?).
    RelativeLinear {
        /// Dimension.
        dim: usize,
        /// Has a bias.
        bias: bool,
    },
    /// [`SelfNormConv2d`] (tensors `w`, `r`, `b`?).
    SnfConv {
        /// The convolution.
        #[serde(flatten)]
        config: ConvSpec,
        /// How its inverse kernel is kept (absent in older checkpoints: the paper's penalty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inverse_fit: Option<InverseFit>,
    },
    /// [`ExactConv2d`] (tensors `w`, `b`?).
    ExactConv(ConvSpec),
    /// [`SmoothLeakyRelu`].
    SmoothLeakyRelu {
        /// Slope α.
        alpha: f64,
    },
    /// [`LeakyRelu`].
    LeakyRelu {
        /// Negative-side slope.
        slope: f64,
    },
    /// [`Squeeze`].
    Squeeze {
        /// Input shape `[C, H, W]`.
        shape: [usize; 3],
    },
    /// [`SplineActivation`] (tensors `widths`, `heights`, `slopes`).
    Spline {
        /// Entries per example.
        dim: usize,
        /// Bins, tail bound and floors.
        #[serde(flatten)]
        config: SplineConfig,
    },
    /// [`Split`] (tensors `k`, `c`).
    Split {
        /// Input shape `[C, H, W]`.
        shape: [usize; 3],
    },
    /// [`ActNorm`] (tensors `logs`, `b`).
    Actnorm {
        /// Image shape `[C, H, W]`.
        shape: [usize; 3],
        /// Whether its data-dependent initialisation has run.
        #[serde(default = "yes")]
        initialized: bool,
    },
    /// [`AffineCoupling`] (tensors `k1, logs1, b1, k2, logs2, b2, k3, c3`).
    AffineCoupling {
        /// Input shape and conditioner width.
        #[serde(flatten)]
        config: AffineCouplingConfig,
        /// Whether the conditioner's ActNorms were initialised from data.
        #[serde(default = "yes")]
        initialized: bool,
    },
    /// [`LuConv1x1`] (tensors `l`, `u`, `logs`).
    LuConv1x1 {
        /// Image shape `[C, H, W]`.
        shape: [usize; 3],
        /// The fixed permutation.
        perm: Vec<usize>,
        /// The fixed signs of the diagonal.
        sign: Vec<f64>,
    },
    /// [`InvConv1x1`] (tensor `w`).
    InvConv1x1 {
        /// Image shape `[C, H, W]`.
        shape: [usize; 3],
    },
    /// [`AutoregressiveConv2d`] (tensors `k`, `b`?).
    AutoregressiveConv(AutoregressiveConv2dConfig),
    /// [`ConvExp`] (tensors `k`, `b`?).
    ConvExp(ConvExpConfig),
    /// [`Standardize`] (no tensors: its fixed statistics are stored here).
    Standardize {
        /// Per-dimension mean.
        mean: Vec<f64>,
        /// Per-dimension standard deviation.
        std: Vec<f64>,
    },
}

impl LayerSpec {
    /// The names of the tensors this layer needs, in parameter order.
    pub fn tensor_names(&self) -> Vec<&'static str> {
        let bias = |b: bool, mut v: Vec<&'static str>| {
            if b {
                v.push("b");
            }
            v
        };
        match self {
            LayerSpec::SnfLinear { bias: b, .. } => bias(*b, vec!["w", "r"]),
            LayerSpec::ExactLinear { bias: b, .. } | LayerSpec::RelativeLinear { bias: b, .. } => bias(*b, vec!["w"]),
            LayerSpec::SnfConv { config: c, .. } => bias(c.bias, vec!["w", "r"]),
            LayerSpec::ExactConv(c) => bias(c.bias, vec!["w"]),
            LayerSpec::Spline { .. } => vec!["widths", "heights", "slopes"],
            LayerSpec::Split { .. } => vec!["k", "c"],
            LayerSpec::InvConv1x1 { .. } => vec!["w"],
            LayerSpec::Actnorm { .. } => vec!["logs", "b"],
            LayerSpec::LuConv1x1 { .. } => vec!["l", "u", "logs"],
            LayerSpec::AffineCoupling { .. } => vec!["k1", "logs1", "b1", "k2", "logs2", "b2", "k3", "c3"],
            LayerSpec::AutoregressiveConv(c) => bias(c.bias, vec!["k"]),
            LayerSpec::ConvExp(c) => bias(c.bias, vec!["k"]),
            _ => Vec::new(),
        }
    }

    /// Build the layer from its tensors (in the order of
    /// [`tensor_names`](Self::tensor_names)). Every constructor validates shapes and
    /// finiteness, so a layer built here is as valid as one built in code.
    ///
    /// # Errors
    /// The constructors' errors; [`Error::InvalidArgument`] for a wrong tensor count.
    pub fn build<T: Real>(&self, tensors: Vec<Mat<T>>) -> Result<Box<dyn Transform<T>>> {
        const OP: &str = "LayerSpec::build";
        self.check_size(OP)?;
        let want = self.tensor_names().len();
        if tensors.len() != want {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} tensors given, {want} needed", tensors.len()) });
        }
        let mut it = tensors.into_iter();
        let mut next = || it.next().ok_or(Error::InvalidArgument { op: OP, reason: "missing tensor".into() });
        Ok(match self {
            LayerSpec::Preprocess { alpha } => Box::new(Preprocess::new(*alpha)?),
            LayerSpec::Standardize { mean, std } => Box::new(Standardize::new(mean.clone(), std.clone())?),
            LayerSpec::SnfLinear { dim, bias, inverse_fit } => {
                let (w, r) = (next()?, next()?);
                let b = if *bias { Some(next()?) } else { None };
                let l = SelfNormLinear::from_parts(w, r, b)?.with_inverse_fit(inverse_fit.unwrap_or_default())?;
                check_dim(OP, l.dim(), *dim)?;
                Box::new(l)
            }
            LayerSpec::ExactLinear { dim, bias } => {
                let w = next()?;
                let b = if *bias { Some(next()?) } else { None };
                let l = ExactLinear::from_parts(w, b)?;
                check_dim(OP, l.dim(), *dim)?;
                Box::new(l)
            }
            LayerSpec::RelativeLinear { dim, bias } => {
                let w = next()?;
                let b = if *bias { Some(next()?) } else { None };
                let l = RelativeLinear::from_parts(w, b)?;
                check_dim(OP, l.dim(), *dim)?;
                Box::new(l)
            }
            LayerSpec::SnfConv { config: c, inverse_fit } => {
                let (w, r) = (next()?, next()?);
                let b = if c.bias { Some(next()?) } else { None };
                Box::new(SelfNormConv2d::<T>::from_parts(*c, w, r, b)?.with_inverse_fit(inverse_fit.unwrap_or_default())?)
            }
            LayerSpec::ExactConv(c) => {
                let w = next()?;
                let b = if c.bias { Some(next()?) } else { None };
                Box::new(ExactConv2d::<T>::from_parts(*c, w, b)?)
            }
            LayerSpec::SmoothLeakyRelu { alpha } => Box::new(SmoothLeakyRelu::new(*alpha)?),
            LayerSpec::LeakyRelu { slope } => Box::new(LeakyRelu::new(*slope)?),
            LayerSpec::Squeeze { shape: [c, h, w] } => Box::new(Squeeze::new(*c, *h, *w)?),
            LayerSpec::Spline { dim, config } => {
                let (w, h, d) = (next()?, next()?, next()?);
                let s = SplineActivation::from_parts(*config, w, h, d)?;
                check_dim(OP, s.dim(), *dim)?;
                Box::new(s)
            }
            LayerSpec::Split { shape } => {
                let (k, c) = (next()?, next()?);
                Box::new(Split::from_parts(Shape::from(*shape), k, c)?)
            }
            LayerSpec::InvConv1x1 { shape } => Box::new(InvConv1x1::from_parts(Shape::from(*shape), next()?)?),
            LayerSpec::Actnorm { shape, initialized } => {
                let (logs, b) = (next()?, next()?);
                Box::new(ActNorm::from_parts(Shape::from(*shape), logs, b, *initialized)?)
            }
            LayerSpec::LuConv1x1 { shape, perm, sign } => {
                let (l, u, logs) = (next()?, next()?, next()?);
                Box::new(LuConv1x1::from_parts(Shape::from(*shape), perm.clone(), sign.clone(), l, u, logs)?)
            }
            LayerSpec::AffineCoupling { config, initialized } => {
                let p = [next()?, next()?, next()?, next()?, next()?, next()?, next()?, next()?];
                Box::new(AffineCoupling::from_parts(*config, p, *initialized)?)
            }
            LayerSpec::AutoregressiveConv(c) => {
                let k = next()?;
                let b = if c.bias { Some(next()?) } else { None };
                Box::new(AutoregressiveConv2d::from_parts(*c, k, b)?)
            }
            LayerSpec::ConvExp(c) => {
                let k = next()?;
                let b = if c.bias { Some(next()?) } else { None };
                Box::new(ConvExp::from_parts(*c, k, b)?)
            }
        })
    }
}

impl LayerSpec {
    /// Refuse sizes no layer could be built for (checked arithmetic) and dense exact
    /// paths above [`MAX_DENSE_DIM`], before anything is allocated.
    fn check_size(&self, op: &'static str) -> Result<()> {
        let big = |d: Option<usize>, what: &str| match d {
            Some(d) if d <= MAX_DENSE_DIM => Ok(()),
            Some(d) => Err(Error::InvalidArgument { op, reason: format!("{what} of dimension {d} exceeds the checkpoint limit of {MAX_DENSE_DIM}") }),
            None => Err(Error::InvalidArgument { op, reason: format!("{what} has a size that overflows") }),
        };
        let conv_dim = |c: &ConvSpec| {
            let [h, w] = c.forward.input;
            c.forward.in_channels.checked_mul(h).and_then(|v| v.checked_mul(w))
        };
        match self {
            LayerSpec::SnfLinear { dim, .. } | LayerSpec::ExactLinear { dim, .. } | LayerSpec::RelativeLinear { dim, .. } => big(Some(*dim), "a linear layer"),
            LayerSpec::SnfConv { config: c, .. } | LayerSpec::ExactConv(c) => big(conv_dim(c), "a convolution"),
            LayerSpec::Squeeze { shape }
            | LayerSpec::Split { shape }
            | LayerSpec::InvConv1x1 { shape }
            | LayerSpec::Actnorm { shape, .. }
            | LayerSpec::LuConv1x1 { shape, .. } => Shape::from(*shape).checked_dim().map(|_| ()),
            LayerSpec::AutoregressiveConv(c) => Shape::image(c.channels, c.input[0], c.input[1]).checked_dim().map(|_| ()),
            LayerSpec::ConvExp(c) => Shape::image(c.channels, c.input[0], c.input[1]).checked_dim().map(|_| ()),
            LayerSpec::AffineCoupling { config, .. } => {
                let [_, h, w] = config.shape;
                Shape::from(config.shape).checked_dim()?;
                Shape::image(config.width, h, w).checked_dim().map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

fn check_dim(op: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op, reason: format!("tensors of dimension {got}, the configuration says {want}") })
    }
}

fn yes() -> bool {
    true
}
