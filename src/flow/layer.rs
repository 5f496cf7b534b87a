//! One step of a flow: the layer kinds a [`Flow`](super::Flow) composes, with their
//! gradients and workspaces, behind one dispatching API.

use faer::{Mat, MatMut, MatRef, Par};

use super::{Preprocess, Squeeze};
use crate::activation::{self, LeakyRelu, SmoothLeakyRelu, SplineActivation, SplineGrads};
use crate::error::{Error, Result};
use crate::layers::conv::{Conv2dGrads, ConvWorkspace, ExactConv2d, ExactConv2dGrads, ExactConv2dWorkspace, SelfNormConv2d};
use crate::layers::linear::{ExactLinear, ExactLinearGrads, ExactLinearWorkspace, LinearGrads, LinearWorkspace, SelfNormLinear};
use crate::optim::Adam;
use crate::real::Real;

/// A transform in a flow. Every kind maps `D x B` batches to `D x B` batches.
// Layers live in a `Vec` built once per flow and are never moved in a hot loop, so the
// size gap between parameter-free and weighted variants costs nothing worth a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Layer<T: Real> {
    /// Dequantised pixels to logit space (no parameters; its log-det counts).
    Preprocess(Preprocess),
    /// Self-normalizing fully connected layer.
    Linear(SelfNormLinear<T>),
    /// Fully connected layer trained with the exact gradient (the baseline).
    ExactLinear(ExactLinear<T>),
    /// Self-normalizing convolution.
    Conv(SelfNormConv2d<T>),
    /// Convolution trained with the exact gradient (the baseline).
    ExactConv(ExactConv2d<T>),
    /// Smooth leaky ReLU.
    SmoothLeakyRelu(SmoothLeakyRelu),
    /// Leaky ReLU.
    LeakyRelu(LeakyRelu),
    /// Space-to-depth permutation (log-det 0).
    Squeeze(Squeeze),
    /// Rational-quadratic spline activation with per-entry parameters.
    Spline(SplineActivation<T>),
}

/// Gradients of one layer (parameter-free layers have none).
#[derive(Debug, Clone)]
pub enum LayerGrads<T: Real> {
    /// No parameters.
    None,
    /// Of a [`Layer::Linear`].
    Linear(LinearGrads<T>),
    /// Of a [`Layer::ExactLinear`].
    ExactLinear(ExactLinearGrads<T>),
    /// Of a [`Layer::Conv`].
    Conv(Conv2dGrads<T>),
    /// Of a [`Layer::ExactConv`].
    ExactConv(ExactConv2dGrads<T>),
    /// Of a [`Layer::Spline`].
    Spline(SplineGrads<T>),
}

impl<T: Real> LayerGrads<T> {
    /// The gradient blocks, in parameter order (for norms and angles).
    pub fn blocks(&self) -> Vec<MatRef<'_, T>> {
        match self {
            LayerGrads::None => Vec::new(),
            LayerGrads::Linear(g) => g.blocks().collect(),
            LayerGrads::ExactLinear(g) => [Some(g.w.as_ref()), g.b.as_ref().map(|b| b.as_ref())].into_iter().flatten().collect(),
            LayerGrads::Conv(g) => g.blocks().collect(),
            LayerGrads::ExactConv(g) => [Some(g.w.as_ref()), g.b.as_ref().map(|b| b.as_ref())].into_iter().flatten().collect(),
            LayerGrads::Spline(g) => vec![g.w.as_ref(), g.h.as_ref(), g.d.as_ref()],
        }
    }

    /// $\sum$ of squared entries, in `f64` (for gradient-norm clipping).
    pub fn sum_sq(&self) -> f64 {
        match self {
            LayerGrads::None => 0.0,
            LayerGrads::Linear(g) => g.blocks().map(crate::util::sum_sq).sum(),
            LayerGrads::Conv(g) => g.blocks().map(crate::util::sum_sq).sum(),
            LayerGrads::ExactLinear(g) => crate::util::sum_sq(g.w.as_ref()) + g.b.as_ref().map_or(0.0, |b| crate::util::sum_sq(b.as_ref())),
            LayerGrads::ExactConv(g) => crate::util::sum_sq(g.w.as_ref()) + g.b.as_ref().map_or(0.0, |b| crate::util::sum_sq(b.as_ref())),
            LayerGrads::Spline(g) => [&g.w, &g.h, &g.d].iter().map(|m| crate::util::sum_sq(m.as_ref())).sum(),
        }
    }
}

/// Buffers of one layer.
#[allow(clippy::large_enum_variant)] // built once per flow, like `Layer`
#[derive(Debug)]
pub enum LayerWorkspace<T: Real> {
    /// Parameter-free (element-wise) layers need only the parallelism.
    Elementwise(Par),
    /// For [`Layer::Linear`].
    Linear(LinearWorkspace<T>),
    /// For [`Layer::ExactLinear`].
    ExactLinear(ExactLinearWorkspace<T>),
    /// For [`Layer::Conv`].
    Conv(ConvWorkspace<T>),
    /// For [`Layer::ExactConv`].
    ExactConv(ExactConv2dWorkspace<T>),
}

/// The parallelism of an element-wise layer's workspace (sequential for any other kind).
fn par_of<T: Real>(ws: &LayerWorkspace<T>) -> Par {
    match ws {
        LayerWorkspace::Elementwise(p) => *p,
        _ => Par::Seq,
    }
}

fn mismatch(op: &'static str) -> Error {
    Error::InvalidArgument { op, reason: "workspace or gradients belong to another kind of layer".into() }
}

impl<T: Real> Layer<T> {
    /// The dimension $D$ of the examples it maps.
    pub fn dim(&self) -> Option<usize> {
        match self {
            Layer::Linear(l) => Some(l.dim()),
            Layer::ExactLinear(l) => Some(l.dim()),
            Layer::Conv(l) => Some(l.dim()),
            Layer::ExactConv(l) => Some(l.dim()),
            Layer::Squeeze(s) => Some(s.dim()),
            Layer::Spline(s) => Some(s.dim()),
            _ => None,
        }
    }

    /// A short name for logs ("linear", "slr", ...).
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Preprocess(_) => "preprocess",
            Layer::Linear(_) => "snf-linear",
            Layer::ExactLinear(_) => "exact-linear",
            Layer::Conv(_) => "snf-conv",
            Layer::ExactConv(_) => "exact-conv",
            Layer::SmoothLeakyRelu(_) => "smooth-leaky-relu",
            Layer::LeakyRelu(_) => "leaky-relu",
            Layer::Squeeze(_) => "squeeze",
            Layer::Spline(_) => "spline",
        }
    }

    /// The parameter blocks with short names, in the order of the gradient blocks and of
    /// the optimiser's state: `w`, `r`, `b` (linear and convolutional layers; the exact
    /// baselines have no `r`), `widths`, `heights`, `slopes` (splines).
    pub fn named_params(&self) -> Vec<(&'static str, MatRef<'_, T>)> {
        fn with_bias<'a, T: Real>(mut v: Vec<(&'static str, MatRef<'a, T>)>, b: Option<MatRef<'a, T>>) -> Vec<(&'static str, MatRef<'a, T>)> {
            v.extend(b.map(|b| ("b", b)));
            v
        }
        match self {
            Layer::Linear(l) => with_bias(vec![("w", l.w()), ("r", l.r())], l.bias()),
            Layer::ExactLinear(l) => with_bias(vec![("w", l.w())], l.bias()),
            Layer::Conv(l) => with_bias(vec![("w", l.w()), ("r", l.r())], l.bias()),
            Layer::ExactConv(l) => with_bias(vec![("w", l.w())], l.bias()),
            Layer::Spline(l) => {
                let [w, h, d] = l.parameters();
                vec![("widths", w), ("heights", h), ("slopes", d)]
            }
            _ => Vec::new(),
        }
    }

    /// True for layers with parameters trained by self-normalizing gradients.
    pub fn is_self_normalizing(&self) -> bool {
        matches!(self, Layer::Linear(_) | Layer::Conv(_))
    }

    /// Zeroed gradients for this layer.
    pub fn zero_grads(&self) -> LayerGrads<T> {
        match self {
            Layer::Linear(l) => LayerGrads::Linear(l.zero_grads()),
            Layer::ExactLinear(l) => LayerGrads::ExactLinear(l.zero_grads()),
            Layer::Conv(l) => LayerGrads::Conv(l.zero_grads()),
            Layer::ExactConv(l) => LayerGrads::ExactConv(l.zero_grads()),
            Layer::Spline(l) => LayerGrads::Spline(l.zero_grads()),
            _ => LayerGrads::None,
        }
    }

    /// A workspace for batches of up to `max_batch`; `exact` also allocates the exact
    /// path's buffers of self-normalizing layers (for gradient-angle monitoring).
    pub fn workspace(&self, max_batch: usize, par: Par, exact: bool) -> LayerWorkspace<T> {
        match self {
            Layer::Linear(l) => {
                let ws = LinearWorkspace::new(l.dim(), max_batch, par);
                LayerWorkspace::Linear(if exact { ws.with_exact() } else { ws })
            }
            Layer::ExactLinear(l) => LayerWorkspace::ExactLinear(ExactLinearWorkspace::new(l.dim(), max_batch, par)),
            Layer::Conv(l) => {
                let ws = ConvWorkspace::new(l, max_batch, par);
                LayerWorkspace::Conv(if exact { ws.with_exact() } else { ws })
            }
            Layer::ExactConv(l) => LayerWorkspace::ExactConv(ExactConv2dWorkspace::new(l, par)),
            _ => LayerWorkspace::Elementwise(par),
        }
    }

    /// $z = f(x)$, adding the *data-dependent* log-det of each example to `logdet`
    /// (linear and convolutional layers have none: theirs is data-independent, see
    /// [`static_log_det`](Self::static_log_det)).
    ///
    /// # Errors
    /// The layer's own errors; a workspace of another kind.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, ws: &mut LayerWorkspace<T>, logdet: &mut [f64]) -> Result<()> {
        const OP: &str = "Layer::forward";
        let par = par_of(ws);
        match (self, ws) {
            (Layer::Preprocess(p), _) => p.forward(x, z, logdet, par),
            (Layer::SmoothLeakyRelu(f), _) => activation::forward(f, x, z, logdet, par),
            (Layer::LeakyRelu(f), _) => activation::forward(f, x, z, logdet, par),
            (Layer::Squeeze(s), _) => s.forward(x, z),
            (Layer::Spline(s), _) => s.forward(x, z, logdet, par),
            (Layer::Linear(l), LayerWorkspace::Linear(ws)) => l.forward(x, z, ws),
            (Layer::ExactLinear(l), LayerWorkspace::ExactLinear(ws)) => l.forward(x, z, ws),
            (Layer::Conv(l), LayerWorkspace::Conv(ws)) => l.forward(x, z, ws),
            (Layer::ExactConv(l), LayerWorkspace::ExactConv(ws)) => l.forward(x, z, ws),
            _ => Err(mismatch(OP)),
        }
    }

    /// The training backward pass of this layer: $\delta_x$ from $\delta_z$, and the loss
    /// gradients (self-normalizing for [`Layer::Linear`] / [`Layer::Conv`], exact for the
    /// baselines). Returns the layer's reconstruction error (0 for other kinds).
    ///
    /// # Errors
    /// The layer's own errors; workspace or gradients of another kind;
    /// [`Error::InvalidArgument`] for [`Layer::Preprocess`], which has no input gradient
    /// (it is the first layer, applied to data).
    pub fn backward(
        &self,
        x: MatRef<'_, T>,
        dz: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut LayerGrads<T>,
        ws: &mut LayerWorkspace<T>,
        lambda: T,
    ) -> Result<f64> {
        const OP: &str = "Layer::backward";
        let par = par_of(ws);
        match (self, ws, grads) {
            (Layer::SmoothLeakyRelu(f), _, _) => activation::backward(f, x, dz, dx, par).map(|_| 0.0),
            (Layer::LeakyRelu(f), _, _) => activation::backward(f, x, dz, dx, par).map(|_| 0.0),
            // a permutation: the delta is permuted back, and there is no log-det term
            (Layer::Squeeze(s), _, _) => s.inverse(dz, dx).map(|_| 0.0),
            (Layer::Spline(s), _, LayerGrads::Spline(g)) => s.backward(x, dz, dx, g, par).map(|_| 0.0),
            (Layer::Linear(l), LayerWorkspace::Linear(ws), LayerGrads::Linear(g)) => {
                l.backward(x, dz, dx, g, ws, lambda).map(|s| s.reconstruction_error)
            }
            (Layer::ExactLinear(l), LayerWorkspace::ExactLinear(ws), LayerGrads::ExactLinear(g)) => l.backward(x, dz, dx, g, ws).map(|_| 0.0),
            (Layer::Conv(l), LayerWorkspace::Conv(ws), LayerGrads::Conv(g)) => l.backward(x, dz, dx, g, ws, lambda).map(|s| s.reconstruction_error),
            (Layer::ExactConv(l), LayerWorkspace::ExactConv(ws), LayerGrads::ExactConv(g)) => l.backward(x, dz, dx, g, ws).map(|_| 0.0),
            (Layer::Preprocess(_), _, _) => Err(Error::InvalidArgument { op: OP, reason: "preprocessing has no input gradient".into() }),
            _ => Err(mismatch(OP)),
        }
    }

    /// The g-chain forward of the exact objective (Eq. 3's $p^g$): $y = g^{-1}(x)$ for
    /// self-normalizing layers (exact inverse of the learned inverse), $f(x)$ for every
    /// other kind (they are their own exact inverses' inverses), with the data-dependent
    /// log-det added to `logdet`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), plus the LU's errors.
    pub fn g_forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, ws: &mut LayerWorkspace<T>, logdet: &mut [f64]) -> Result<()> {
        match (self, ws) {
            (Layer::Linear(l), LayerWorkspace::Linear(ws)) => l.g_inverse(x, y, ws),
            (Layer::Conv(l), LayerWorkspace::Conv(ws)) => l.g_inverse(x, y, ws),
            (layer, ws) => layer.forward(x, y, ws, logdet),
        }
    }

    /// The exact backward pass of Eq. 3 for self-normalizing layers (both chains:
    /// `dz_f` / `dx_f` along $f$, `dz_g` / `dx_g` along $g^{-1}$); for activations the
    /// ordinary backward on each chain (`x_g` is the layer's g-chain input).
    ///
    /// # Errors
    /// As [`backward`](Self::backward); [`Error::InvalidArgument`] for exact-baseline layers
    /// (their gradient is already exact, use [`backward`](Self::backward)).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_exact(
        &self,
        x: MatRef<'_, T>,
        x_g: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut LayerGrads<T>,
        ws: &mut LayerWorkspace<T>,
        lambda: T,
    ) -> Result<()> {
        const OP: &str = "Layer::backward_exact";
        let par = par_of(ws);
        match (self, ws, grads) {
            (Layer::SmoothLeakyRelu(f), _, _) => {
                activation::backward(f, x, dz_f, dx_f, par)?;
                activation::backward(f, x_g, dz_g, dx_g, par)
            }
            (Layer::LeakyRelu(f), _, _) => {
                activation::backward(f, x, dz_f, dx_f, par)?;
                activation::backward(f, x_g, dz_g, dx_g, par)
            }
            (Layer::Squeeze(s), _, _) => {
                s.inverse(dz_f, dx_f)?;
                s.inverse(dz_g, dx_g)
            }
            (Layer::Spline(s), _, LayerGrads::Spline(g)) => {
                // Eq. 3: the spline's parameters enter both halves, each with weight 1/2;
                // the f half along the f chain, the g half along the g^{-1} chain
                // (monitoring only, so the second gradient buffer may allocate)
                let mut gg = s.zero_grads();
                s.backward(x, dz_f, dx_f, g, par)?;
                s.backward(x_g, dz_g, dx_g, &mut gg, par)?;
                for (a, b) in [(&mut g.w, &gg.w), (&mut g.h, &gg.h), (&mut g.d, &gg.d)] {
                    faer::zip!(a.as_mut(), b.as_ref()).for_each(|faer::unzip!(a, b)| *a = (*a + *b) * T::from_f64(0.5));
                }
                Ok(())
            }
            (Layer::Linear(l), LayerWorkspace::Linear(ws), LayerGrads::Linear(g)) => {
                l.backward_exact(x, dz_f, dz_g, dx_f, dx_g, g, ws, lambda).map(|_| ())
            }
            (Layer::Conv(l), LayerWorkspace::Conv(ws), LayerGrads::Conv(g)) => l.backward_exact(x, dz_f, dz_g, dx_f, dx_g, g, ws, lambda).map(|_| ()),
            (Layer::Preprocess(_), _, _) => Err(Error::InvalidArgument { op: OP, reason: "preprocessing has no input gradient".into() }),
            _ => Err(Error::InvalidArgument { op: OP, reason: "only self-normalizing models have a separate exact gradient".into() }),
        }
    }

    /// The data-independent log-det $\log|\det W|$ (0 for layers without one), computed
    /// by LU (cached by the convolution until its kernel changes).
    ///
    /// # Errors
    /// The LU's errors.
    pub fn static_log_det(&self, ws: &mut LayerWorkspace<T>) -> Result<f64> {
        match (self, ws) {
            (Layer::Linear(l), _) => l.log_abs_det(),
            (Layer::ExactLinear(l), _) => l.log_abs_det(),
            (Layer::Conv(l), LayerWorkspace::Conv(ws)) => l.log_abs_det(ws),
            (Layer::ExactConv(l), LayerWorkspace::ExactConv(ws)) => l.log_abs_det(ws),
            (Layer::Conv(_) | Layer::ExactConv(_), _) => Err(mismatch("Layer::static_log_det")),
            _ => Ok(0.0),
        }
    }

    /// The inverse map for sampling: $x = f^{-1}(z)$ exactly (`learned = false`) or through
    /// the learned inverse $g$ of self-normalizing layers (`learned = true`; other kinds
    /// always invert exactly).
    ///
    /// # Errors
    /// The layer's errors.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut LayerWorkspace<T>, learned: bool) -> Result<()> {
        const OP: &str = "Layer::inverse";
        match (self, ws) {
            (Layer::Preprocess(p), _) => p.inverse(z, x),
            (Layer::SmoothLeakyRelu(f), _) => activation::inverse(f, z, x),
            (Layer::LeakyRelu(f), _) => activation::inverse(f, z, x),
            (Layer::Squeeze(s), _) => s.inverse(z, x),
            (Layer::Spline(s), _) => s.inverse(z, x),
            (Layer::Linear(l), LayerWorkspace::Linear(ws)) => {
                if learned {
                    l.inverse(z, x, ws)
                } else {
                    l.inverse_exact(z, x, ws)
                }
            }
            (Layer::ExactLinear(l), LayerWorkspace::ExactLinear(ws)) => l.inverse(z, x, ws),
            (Layer::ExactConv(l), LayerWorkspace::ExactConv(ws)) => l.inverse(z, x, ws),
            (Layer::Conv(l), LayerWorkspace::Conv(ws)) => {
                if learned {
                    l.inverse(z, x, ws)
                } else {
                    l.inverse_exact(z, x, ws)
                }
            }
            _ => Err(mismatch(OP)),
        }
    }

    /// One optimiser step on this layer's parameters (`adam` must have been made from
    /// this layer's gradient blocks). Layers without parameters are left alone.
    ///
    /// # Errors
    /// Shape errors from [`Adam::step`].
    pub fn adam_step(&mut self, grads: &LayerGrads<T>, adam: &mut Adam<T>) -> Result<()> {
        match (self, grads) {
            (Layer::Linear(l), LayerGrads::Linear(g)) => adam.step(l.params_with_grads(g)?),
            (Layer::ExactLinear(l), LayerGrads::ExactLinear(g)) => adam.step(l.params_with_grads(g)),
            (Layer::Conv(l), LayerGrads::Conv(g)) => adam.step(l.params_with_grads(g)?),
            (Layer::ExactConv(l), LayerGrads::ExactConv(g)) => adam.step(l.params_with_grads(g)?),
            (Layer::Spline(l), LayerGrads::Spline(g)) => adam.step(l.params_with_grads(g)?),
            (_, LayerGrads::None) => Ok(()),
            _ => Err(mismatch("Layer::adam_step")),
        }
    }
}

/// `D x B` zero matrices, one per entry.
pub(crate) fn buffers<T: Real>(n: usize, d: usize, b: usize) -> Vec<Mat<T>> {
    (0..n).map(|_| Mat::zeros(d, b)).collect()
}
