//! The JSON description of a flow's layers: everything needed to rebuild a layer besides
//! its parameter tensors.

use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::activation::{LeakyRelu, SmoothLeakyRelu, SplineActivation, SplineConfig};
use crate::conv::Conv2dSpec;
use crate::error::{Error, Result};
use crate::flow::{Layer, Preprocess, Squeeze};
use crate::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use crate::layers::linear::{ExactLinear, SelfNormLinear};
use crate::real::Real;

/// A convolution's configuration: the fields of [`SelfNormConv2dConfig`], with the forward
/// [`Conv2dSpec`] flattened into the same JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// The forward convolution.
    #[serde(flatten)]
    pub forward: Conv2dSpec,
    /// Inverse kernel size.
    pub inverse_kernel: [usize; 2],
    /// Per-channel bias.
    pub bias: bool,
}

impl From<&SelfNormConv2dConfig> for ConvSpec {
    fn from(c: &SelfNormConv2dConfig) -> Self {
        Self { forward: c.forward, inverse_kernel: c.inverse_kernel, bias: c.bias }
    }
}

impl From<&ConvSpec> for SelfNormConv2dConfig {
    fn from(s: &ConvSpec) -> Self {
        SelfNormConv2dConfig { forward: s.forward, inverse_kernel: s.inverse_kernel, bias: s.bias }
    }
}

/// One layer's kind and configuration, as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LayerSpec {
    /// [`Layer::Preprocess`].
    Preprocess {
        /// The logit squeeze α.
        alpha: f64,
    },
    /// [`Layer::Linear`] (tensors `w`, `r`, `b`?).
    SnfLinear {
        /// Dimension.
        dim: usize,
        /// Has a bias.
        bias: bool,
    },
    /// [`Layer::ExactLinear`] (tensors `w`, `b`?).
    ExactLinear {
        /// Dimension.
        dim: usize,
        /// Has a bias.
        bias: bool,
    },
    /// [`Layer::Conv`] (tensors `w`, `r`, `b`?).
    SnfConv(ConvSpec),
    /// [`Layer::ExactConv`] (tensors `w`, `b`?).
    ExactConv(ConvSpec),
    /// [`Layer::SmoothLeakyRelu`].
    SmoothLeakyRelu {
        /// Slope α.
        alpha: f64,
    },
    /// [`Layer::LeakyRelu`].
    LeakyRelu {
        /// Negative-side slope.
        slope: f64,
    },
    /// [`Layer::Squeeze`].
    Squeeze {
        /// Input shape `[C, H, W]`.
        shape: [usize; 3],
    },
    /// [`Layer::Spline`] (tensors `widths`, `heights`, `slopes`).
    Spline {
        /// Entries per example.
        dim: usize,
        /// Bins, tail bound and floors.
        #[serde(flatten)]
        config: SplineConfig,
    },
}

impl LayerSpec {
    /// The description of `layer`.
    pub fn of<T: Real>(layer: &Layer<T>) -> Self {
        match layer {
            Layer::Preprocess(p) => LayerSpec::Preprocess { alpha: p.alpha() },
            Layer::Linear(l) => LayerSpec::SnfLinear { dim: l.dim(), bias: l.bias().is_some() },
            Layer::ExactLinear(l) => LayerSpec::ExactLinear { dim: l.dim(), bias: l.bias().is_some() },
            Layer::Conv(l) => LayerSpec::SnfConv(l.config().into()),
            Layer::ExactConv(l) => LayerSpec::ExactConv(l.config().into()),
            Layer::SmoothLeakyRelu(f) => LayerSpec::SmoothLeakyRelu { alpha: f.alpha() },
            Layer::LeakyRelu(f) => LayerSpec::LeakyRelu { slope: f.slope() },
            Layer::Squeeze(s) => LayerSpec::Squeeze { shape: s.in_shape() },
            Layer::Spline(s) => LayerSpec::Spline { dim: s.dim(), config: *s.config() },
        }
    }

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
            LayerSpec::ExactLinear { bias: b, .. } => bias(*b, vec!["w"]),
            LayerSpec::SnfConv(c) => bias(c.bias, vec!["w", "r"]),
            LayerSpec::ExactConv(c) => bias(c.bias, vec!["w"]),
            LayerSpec::Spline { .. } => vec!["widths", "heights", "slopes"],
            _ => Vec::new(),
        }
    }

    /// Build the layer from its tensors (in the order of
    /// [`tensor_names`](Self::tensor_names)). Every constructor validates shapes and
    /// finiteness, so a layer built here is as valid as one built in code.
    ///
    /// # Errors
    /// The constructors' errors; [`Error::InvalidArgument`] for a wrong tensor count.
    pub fn build<T: Real>(&self, tensors: Vec<Mat<T>>) -> Result<Layer<T>> {
        const OP: &str = "LayerSpec::build";
        let want = self.tensor_names().len();
        if tensors.len() != want {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} tensors given, {want} needed", tensors.len()) });
        }
        let mut it = tensors.into_iter();
        let mut next = || it.next().ok_or(Error::InvalidArgument { op: OP, reason: "missing tensor".into() });
        Ok(match self {
            LayerSpec::Preprocess { alpha } => Layer::Preprocess(Preprocess::new(*alpha)?),
            LayerSpec::SnfLinear { dim, bias } => {
                let (w, r) = (next()?, next()?);
                let b = if *bias { Some(next()?) } else { None };
                let l = SelfNormLinear::from_parts(w, r, b)?;
                check_dim(OP, l.dim(), *dim)?;
                Layer::Linear(l)
            }
            LayerSpec::ExactLinear { dim, bias } => {
                let w = next()?;
                let b = if *bias { Some(next()?) } else { None };
                let l = ExactLinear::from_parts(w, b)?;
                check_dim(OP, l.dim(), *dim)?;
                Layer::ExactLinear(l)
            }
            LayerSpec::SnfConv(c) => {
                let (w, r) = (next()?, next()?);
                let b = if c.bias { Some(next()?) } else { None };
                Layer::Conv(SelfNormConv2d::from_parts(c.into(), w, r, b)?)
            }
            LayerSpec::ExactConv(c) => {
                let w = next()?;
                let b = if c.bias { Some(next()?) } else { None };
                Layer::ExactConv(ExactConv2d::from_parts(c.into(), w, b)?)
            }
            LayerSpec::SmoothLeakyRelu { alpha } => Layer::SmoothLeakyRelu(SmoothLeakyRelu::new(*alpha)?),
            LayerSpec::LeakyRelu { slope } => Layer::LeakyRelu(LeakyRelu::new(*slope)?),
            LayerSpec::Squeeze { shape: [c, h, w] } => Layer::Squeeze(Squeeze::new(*c, *h, *w)?),
            LayerSpec::Spline { dim, config } => {
                let (w, h, d) = (next()?, next()?, next()?);
                let s = SplineActivation::from_parts(*config, w, h, d)?;
                check_dim(OP, s.dim(), *dim)?;
                Layer::Spline(s)
            }
        })
    }
}

fn check_dim(op: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op, reason: format!("tensors of dimension {got}, the configuration says {want}") })
    }
}
