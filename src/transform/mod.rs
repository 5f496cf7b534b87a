//! The [`Transform`] trait: one step of a flow, with hand-derived gradients.
//!
//! Every built-in layer implements it, and so can a type outside the crate
//! (`examples/custom_transform.rs`). A transform maps a batch `x` (`D_in x B`, one column
//! per example, rows laid out as its input [`Shape`]) to `y` of the same size, adds each
//! example's $\log|\det J|$ to `logdet`, and on the way back turns the output delta
//! $\delta_y = \partial\log p/\partial y$ into the input delta and its parameter gradients
//! (see [`crate::layers`] for the sign and averaging conventions).
//!
//! What autograd hides is explicit here:
//! * **State.** What `backward` needs from `forward` lives in a [`Workspace`] made by the
//!   transform itself (sized once, so a training step allocates nothing). `forward` returns
//!   a [`Tape`], and `backward` consumes it: a tape from another forward, another workspace
//!   or another input batch is a typed error, never a silently wrong gradient.
//! * **Parameters** are named blocks in one fixed order ([`Transform::params`]); their
//!   gradients ([`Grads`]) come in the same order, and an optimiser sees only
//!   `(parameter, gradient)` pairs ([`crate::optim::Adam`]).
//! * **Self-normalizing** layers also expose their exact twin through
//!   [`SelfNormalizing`]: the exact gradient of Eq. 3, the learned inverse and the
//!   g-chain map, so the SNF-vs-exact gradient angle can be measured for any flow.
//! * A transform may **factor out** part of its output (a multi-scale split): its output
//!   shape is smaller than its input shape, the first `out.dim()` rows of `y` continue
//!   through the flow, and the rest are final (they go to the base distribution).

mod grads;
mod workspace;

pub use grads::{GradBlocks, Grads};

/// Parameter or gradient blocks of one transform, in parameter order (inline up to 4, so
/// the training step does not allocate for them).
pub type Blocks<'a, T> = smallvec::SmallVec<[MatRef<'a, T>; 8]>;
/// The same, mutable.
pub type BlocksMut<'a, T> = smallvec::SmallVec<[MatMut<'a, T>; 8]>;
pub use workspace::{Tape, Workspace};

use faer::{MatMut, MatRef, Par};

use crate::error::Result;
use crate::real::Real;
use crate::shape::Shape;

/// A named parameter block (a view into the transform).
#[derive(Debug, Clone, Copy)]
pub struct Param<'a, T: Real> {
    /// Short name, unique within the transform (`w`, `r`, `b`, ...): the checkpoint tensor name.
    pub name: &'static str,
    /// The values.
    pub value: MatRef<'a, T>,
}

/// Object-safe cloning for boxed transforms: implemented for every `Clone` transform.
pub trait CloneTransform<T: Real> {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn Transform<T>>;
}

impl<T: Real, X: Transform<T> + Clone> CloneTransform<T> for X {
    fn clone_box(&self) -> Box<dyn Transform<T>> {
        Box::new(self.clone())
    }
}

/// One invertible step of a flow (see the [module docs](self)).
///
/// Implement it for your own layer (derive `Clone` and `Debug`), put it in a
/// [`Flow`](crate::flow::Flow) next to the built-ins, and train it with the same
/// [`Trainer`](crate::train::Trainer); to save it in checkpoints, register its
/// [`spec`](Self::spec) kind with a [`Registry`](crate::checkpoint::Registry).
pub trait Transform<T: Real>: CloneTransform<T> + std::any::Any + Send + Sync + std::fmt::Debug {
    /// A short name for logs and checkpoints (`"snf-linear"`, `"squeeze"`, ...).
    fn kind(&self) -> &'static str;

    /// The shape of the continuing output for an input of shape `input`, or an error if
    /// the transform cannot take it. Element-wise transforms accept any shape.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an input it cannot take.
    fn output_shape(&self, input: Shape) -> Result<Shape>;

    /// Buffers for batches of up to `max_batch` columns, using `par` for its products.
    ///
    /// # Errors
    /// Invalid sizes.
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>>;

    /// $y = f(x)$ (`x` and `y` both `D_in x B`), adding each example's
    /// $\log|\det \partial y/\partial x|$ to `logdet` **except** a data-independent part,
    /// which [`static_log_det`](Self::static_log_det) reports instead (Eqs. 6–7).
    ///
    /// # Errors
    /// Shape errors, the layer's own errors.
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape>;

    /// The training backward pass: from $\delta_y$ (`dy`) and the input `x` of the
    /// forward pass that made `tape`, write $\delta_x$ into `dx` and the loss gradients into
    /// `grads` (self-normalizing where the layer is, exact otherwise). Returns the layer's
    /// batch-mean reconstruction error (0 for layers without a learned inverse).
    ///
    /// # Errors
    /// A stale or foreign `tape`; shape errors; the layer's own errors.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        lambda: T,
    ) -> Result<f64>;

    /// The exact inverse $x = f^{-1}(y)$.
    ///
    /// # Errors
    /// Shape errors, the layer's own errors (e.g. a singular matrix).
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()>;

    /// Data-dependent initialisation from a first batch `x` of this transform's inputs,
    /// before training (ActNorm sets its scale and bias from it). Nothing by default.
    /// [`Flow::data_init`](crate::flow::Flow::data_init) calls it on each transform with
    /// the output of the ones before; the trainer runs that on its first batch.
    ///
    /// # Errors
    /// Shape errors; the transform's own errors.
    fn data_init(&mut self, x: MatRef<'_, T>, par: Par) -> Result<()> {
        let _ = (x, par);
        Ok(())
    }

    /// The data-independent part of $\log|\det J|$ (Eqs. 6–7), 0 by default. The
    /// [`Flow`](crate::flow::Flow) caches the sum over its transforms until a parameter
    /// changes.
    ///
    /// # Errors
    /// The layer's errors (a singular matrix).
    fn static_log_det(&self, ws: &mut Workspace<T>) -> Result<f64> {
        let _ = ws;
        Ok(0.0)
    }

    /// Updates a transform makes to itself once per training step, after the optimiser has
    /// applied the gradients of the last [`backward`](Self::backward) on `ws` (a
    /// [`SelfNormLinear`](crate::layers::linear::SelfNormLinear) or
    /// [`SelfNormConv2d`](crate::layers::conv::SelfNormConv2d) with the projection fit
    /// moves its learned inverse here). Nothing by default. The trainer calls
    /// [`Flow::after_step`](crate::flow::Flow::after_step); a hand-written loop must too.
    ///
    /// # Errors
    /// A workspace of another transform; the transform's own errors.
    fn after_step(&mut self, ws: &mut Workspace<T>) -> Result<()> {
        let _ = ws;
        Ok(())
    }

    /// The parameter blocks with their names, in the one order used by [`Grads`], the
    /// optimiser and checkpoints. None by default.
    fn params(&self) -> Vec<Param<'_, T>> {
        Vec::new()
    }

    /// The same blocks, mutable, in the same order.
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        BlocksMut::new()
    }

    /// Zeroed gradients for this transform's parameters.
    fn zero_grads(&self) -> Grads<T> {
        Grads::zeros_like(&self.params())
    }

    /// Everything besides the parameter tensors needed to rebuild it, as a JSON object
    /// with a `"kind"` field (what checkpoints store); `Null` for a transform that cannot
    /// be saved.
    fn spec(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The self-normalizing view of this transform, if it has a learned inverse.
    fn as_self_normalizing(&self) -> Option<&dyn SelfNormalizing<T>> {
        None
    }
}

/// `config` serialised as a JSON object with a `"kind"` field added: a
/// [`Transform::spec`] for a transform whose configuration is `Serialize`.
pub fn spec_with_kind(kind: &str, config: &impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), kind.into());
    }
    v
}

impl<T: Real> Clone for Box<dyn Transform<T>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A layer with a learned inverse $g \approx f^{-1}$ trained by the reconstruction loss:
/// the exact twin of its gradient (Eqs. 8, 9, 13), for the reference path and the
/// SNF-vs-exact angle (Fig. 3).
pub trait SelfNormalizing<T: Real>: Transform<T> {
    /// Allocate the exact path's buffers in `ws` (LU workspaces), so that
    /// [`backward_exact`](Self::backward_exact) allocates nothing either.
    ///
    /// # Errors
    /// A workspace of another layer.
    fn prepare_exact(&self, ws: &mut Workspace<T>) -> Result<()>;

    /// Whether this layer's gradient carries the reconstruction penalty $\lambda\mathcal E$
    /// (Eq. 3) or part of it, i.e. whether λ means anything to it. `true` by default (so
    /// for `SelfNormConv2d` under either fit: its projection fit keeps λ's pull on $w$); a
    /// layer whose gradient has no λ term returns `false` (`SelfNormLinear`'s projection
    /// fit), and a flow made only of such layers has no λ to steer.
    fn uses_penalty(&self) -> bool {
        true
    }

    /// The learned inverse $x = g(y)$ (sampling through it is Fig. 2's left column).
    ///
    /// # Errors
    /// Shape errors.
    fn inverse_learned(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()>;

    /// The g-chain forward of Eq. 3's $p^g$: $y = g^{-1}(x)$ (an exact solve), kept in `ws`
    /// for [`backward_exact`](Self::backward_exact).
    ///
    /// # Errors
    /// Shape errors, the LU's errors.
    fn g_forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()>;

    /// The exact gradient of Eq. 3 on both chains: `dz_f`/`dx_f` along $f$ at the input
    /// of the forward that made `tape`, `dz_g`/`dx_g` along $g^{-1}$ at the input of the last
    /// [`g_forward`](Self::g_forward). Returns the reconstruction error.
    ///
    /// # Errors
    /// As [`Transform::backward`], plus the LU's errors.
    #[allow(clippy::too_many_arguments)]
    fn backward_exact(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dz_f: MatRef<'_, T>,
        dz_g: MatRef<'_, T>,
        dx_f: MatMut<'_, T>,
        dx_g: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        lambda: T,
    ) -> Result<f64>;
}
