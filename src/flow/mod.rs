//! Flows: a base [`Distribution`] and a sequence of [`Transform`]s on shaped data, with
//! one backward sweep that carries $\delta$ through the stack and collects every
//! transform's gradients, exact log-likelihood evaluation with the data-independent
//! log-dets computed once and cached until a parameter changes (Eqs. 6–7), multi-scale
//! factoring-out ([`Split`](crate::layers::Split)), and sampling through the exact or the
//! learned inverse (Fig. 2).
//!
//! ```
//! use snf::prelude::*;
//!
//! let mut rng = snf::init::rng(0);
//! let flow = Flow::<f64>::builder(Shape::flat(2))
//!     .then(SelfNormLinear::new(2, true, &mut rng)?)
//!     .then(SmoothLeakyRelu::new(0.3)?)
//!     .then(SelfNormLinear::new(2, true, &mut rng)?)
//!     .build()?;
//! let x = faer::Mat::from_fn(2, 4, |i, j| (i + j) as f64 * 0.1);
//! let mut ws = flow.workspace(4, faer::Par::Seq)?;
//! let mut logp = [0.0; 4];
//! flow.log_prob(x.as_ref(), &mut ws, &mut logp)?; // exact log p(x), in nats
//! assert!(logp.iter().all(|v| v.is_finite()));
//! # Ok::<(), snf::Error>(())
//! ```
//!
//! **Objective.** For a flow $f = f_K\circ\dots\circ f_1$ with self-normalizing layers, the
//! training loss is Eq. 3 averaged over the batch: every self-normalizing layer $k$ adds
//! $\lambda\lVert g_k(f_k(h_k)) - h_k\rVert^2$ with its input $h_k$ treated as a constant
//! (stop-gradient), which is exactly what the layers' backward passes compute, and
//! $\delta$ is carried through the $f$ chain: $\delta_K = \partial\log p_Z/\partial z$,
//! $\delta_{k} = $ the layer's input delta. `proofs/flow.md` derives it, including why the
//! same sweep gives the $p^g$ half under the self-normalizing approximation.
//!
//! **Layout with factored-out parts.** Transform $k$ maps $D_k$ rows to $D_k$ rows, of
//! which the first $D_{k+1}$ continue; rows $[D_{k+1}, D_k)$ are final. So the latent
//! $z\in\mathbb R^D$ is: rows $[0, D_K)$ from the last transform, rows $[D_{k+1}, D_k)$
//! from transform $k$; the base distribution scores all of $z$.

pub mod glow;
pub mod models;

pub use crate::layers::{Preprocess, Squeeze};

use std::sync::{Mutex, PoisonError};

use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};

use crate::distribution::{Distribution, StandardNormal};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{Grads, Tape, Transform, Workspace};

/// Which inverse to sample through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inverse {
    /// The exact inverse of every transform ($f^{-1}$, LU solves for linear layers).
    Exact,
    /// The learned inverses $g$ of self-normalizing layers (exact for the others).
    Learned,
}

/// A normalizing flow on shaped data: transforms applied in order, then a base
/// distribution on the latent $z$.
pub struct Flow<T: Real> {
    shapes: Vec<Shape>,
    layers: Vec<Box<dyn Transform<T>>>,
    base: Box<dyn Distribution<T>>,
    /// Layers below this one have no parameters: the backward sweep stops there.
    first_trainable: usize,
    /// Changes whenever a parameter may have changed (keys the log-det cache).
    version: u64,
    log_det: Mutex<Option<(u64, f64)>>,
}

impl<T: Real> Clone for Flow<T> {
    fn clone(&self) -> Self {
        Self {
            shapes: self.shapes.clone(),
            layers: self.layers.clone(),
            base: self.base.clone(),
            first_trainable: self.first_trainable,
            version: self.version,
            log_det: Mutex::new(*self.log_det.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }
}

impl<T: Real> std::fmt::Debug for Flow<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("shapes", &self.shapes).field("layers", &self.layers).field("base", &self.base).finish_non_exhaustive()
    }
}

fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Builds a [`Flow`] one transform at a time (see [`Flow::builder`]).
#[derive(Debug)]
pub struct FlowBuilder<T: Real> {
    shape: Shape,
    layers: Vec<Box<dyn Transform<T>>>,
}

impl<T: Real> FlowBuilder<T> {
    /// Append a transform.
    pub fn then(mut self, t: impl Transform<T>) -> Self {
        self.layers.push(Box::new(t));
        self
    }
    /// Append a boxed transform.
    pub fn then_boxed(mut self, t: Box<dyn Transform<T>>) -> Self {
        self.layers.push(t);
        self
    }
    /// The flow, with a standard normal base.
    ///
    /// # Errors
    /// As [`Flow::new`].
    pub fn build(self) -> Result<Flow<T>> {
        Flow::new(self.shape, self.layers)
    }
}

/// Gradients of every transform of a [`Flow`], in order.
#[derive(Debug, Clone)]
pub struct FlowGrads<T: Real> {
    /// One entry per transform.
    pub layers: Vec<Grads<T>>,
}

impl<T: Real> FlowGrads<T> {
    /// Global gradient norm $\sqrt{\sum\lVert g\rVert^2}$ (for clipping).
    pub fn norm(&self) -> f64 {
        self.layers.iter().map(Grads::sum_sq).sum::<f64>().sqrt()
    }
    /// Multiply every gradient by `s` (e.g. to clip the norm).
    pub fn scale(&mut self, s: T) {
        self.layers.iter_mut().for_each(|g| g.scale(s));
    }
    /// True when every gradient entry is finite.
    pub fn all_finite(&self) -> bool {
        self.layers.iter().all(Grads::all_finite)
    }
    /// [`all_finite`](Self::all_finite), each large block read by `par`'s threads (the
    /// trainer's check before every step).
    pub fn all_finite_with(&self, par: Par) -> bool {
        self.layers.iter().all(|g| g.all_finite_with(par))
    }
}

/// How λ weighs each self-normalizing layer's reconstruction error $\lVert r_k\rVert^2 =
/// \lVert g_k(f_k(h_k)) - h_k\rVert^2$ in the loss (Eq. 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Penalty {
    /// $\lambda\sum_k\lVert r_k\rVert^2$: the paper's Eq. 3. λ has the units of
    /// nats per squared data unit, so the same λ means more or less at another data scale.
    Absolute(f64),
    /// $\lambda\sum_k D_k\,\overline{\lVert r_k\rVert^2}/\overline{\lVert h_k\rVert^2}$, the
    /// batch means' ratio with the denominator held constant: each layer's error relative to
    /// its input's second moment per dimension, so λ is dimensionless and means the same at
    /// any data scale. It is Eq. 3 with the per-layer weight $\lambda_k =
    /// \lambda D_k/\overline{\lVert h_k\rVert^2}$ (`proofs/lambda.md`, §2). What the adaptive λ uses.
    Relative(f64),
}

impl Penalty {
    /// λ for a layer of dimension `d` whose batch-mean squared input norm is `energy`.
    fn weight(self, d: usize, energy: f64) -> f64 {
        match self {
            Penalty::Absolute(l) => l,
            Penalty::Relative(l) if energy > 0.0 && energy.is_finite() => l * d as f64 / energy,
            Penalty::Relative(l) => l,
        }
    }
}

/// What one training pass measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Sum over self-normalizing layers of their batch-mean reconstruction error.
    pub reconstruction_error: f64,
    /// The scale-free version: the mean over self-normalizing layers of
    /// $\sum_j\lVert g(f(x_j)) - x_j\rVert^2 / \sum_j\lVert x_j\rVert^2$, each layer's
    /// error relative to the second moment of its own input (0 without such layers). For a
    /// linear layer with $RW = I + \Delta$ this is $\operatorname{tr}(\Delta\Sigma\Delta^T)/
    /// \operatorname{tr}\Sigma$ ($\Sigma$ the input's second moment): unchanged when the data
    /// are rescaled, what the adaptive λ steers (`proofs/lambda.md`).
    pub relative_reconstruction_error: f64,
    /// Batch mean of $\log p_Z(z) + \sum$ data-dependent log-dets: the log-likelihood up to
    /// the (constant in $x$) data-independent log-dets, which training never computes.
    pub partial_log_prob: f64,
}

/// Buffers for a [`Flow`]: every transform's workspace and pending tape, the activations
/// of the last forward pass, the latent and delta buffers and per-example log-dets.
/// Allocated once.
#[derive(Debug)]
pub struct FlowWorkspace<T: Real> {
    layers: Vec<Workspace<T>>,
    tapes: Vec<Option<Tape>>,
    h: Vec<Mat<T>>,
    z: Mat<T>,
    dz: Mat<T>,
    delta: [Mat<T>; 2],
    g: Option<GChain<T>>,
    logdet: Vec<f64>,
    lp: Vec<f64>,
    /// Per layer: the relative reconstruction error of the last gradient pass.
    layer_rel: Vec<f64>,
    max_batch: usize,
    par: Par,
}

/// The g-chain of the exact objective (gradient-angle monitoring only).
#[derive(Debug)]
struct GChain<T: Real> {
    y: Vec<Mat<T>>,
    z: Mat<T>,
    dz: Mat<T>,
    delta: [Mat<T>; 2],
    scratch: Mat<T>,
    grads: Vec<Grads<T>>,
}

impl<T: Real> FlowWorkspace<T> {
    /// Per layer of the flow, the relative reconstruction error
    /// $\lVert g(f(x)) - x\rVert^2 / \lVert x\rVert^2$ (batch means) of the last
    /// [`Flow::gradients`] pass: what
    /// [`StepStats::relative_reconstruction_error`] averages over the self-normalizing
    /// layers, layer by layer, so a user can see which inverse fails. 0 for layers without a
    /// learned inverse, and before the first pass.
    pub fn layer_relative_errors(&self) -> &[f64] {
        &self.layer_rel
    }
    /// The largest batch it holds.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// The parallelism its transforms use.
    pub fn par(&self) -> Par {
        self.par
    }
    /// Transform `k`'s workspace.
    pub fn layer(&mut self, k: usize) -> Option<&mut Workspace<T>> {
        self.layers.get_mut(k)
    }
}

/// $\frac1B\sum_j\lVert x_j\rVert^2$ over the columns of `x`, in f64.
fn mean_square_norm<T: Real>(x: MatRef<'_, T>) -> f64 {
    let mut s = 0.0;
    for j in 0..x.ncols() {
        s += x.col(j).iter().map(|v| v.as_f64() * v.as_f64()).sum::<f64>();
    }
    s / x.ncols().max(1) as f64
}

fn zeros<T: Real>(d: usize, b: usize) -> Result<Mat<T>> {
    crate::util::try_zeros(d, b)
}

impl<T: Real> Flow<T> {
    /// A flow on examples of shape `input` made of `layers` (applied in order), with a
    /// standard normal base.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty flow or shape, or a transform that cannot
    /// take the shape its predecessor produces.
    pub fn new(input: Shape, layers: Vec<Box<dyn Transform<T>>>) -> Result<Self> {
        const OP: &str = "Flow::new";
        let dim = input.checked_dim()?;
        if layers.is_empty() {
            return Err(Error::InvalidArgument { op: OP, reason: "a flow needs at least one transform".into() });
        }
        let mut shapes = vec![input];
        for (k, l) in layers.iter().enumerate() {
            let cur = shapes[k];
            let next = l.output_shape(cur).map_err(|e| Error::InvalidArgument { op: OP, reason: format!("transform {k} ({}): {e}", l.kind()) })?;
            if next.dim() > cur.dim() || next.dim() == 0 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: format!("transform {k} ({}) maps {cur} to {next}: a transform may only keep or factor out rows", l.kind()),
                });
            }
            shapes.push(next);
        }
        let first_trainable = layers.iter().position(|l| !l.params().is_empty()).unwrap_or(layers.len());
        Ok(Self { shapes, layers, base: Box::new(StandardNormal::new(dim)?), first_trainable, version: next_version(), log_det: Mutex::new(None) })
    }

    /// Start a flow on examples of shape `input`.
    pub fn builder(input: Shape) -> FlowBuilder<T> {
        FlowBuilder { shape: input, layers: Vec::new() }
    }

    /// Replace the base distribution.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a base of another dimension.
    pub fn with_base(mut self, base: Box<dyn Distribution<T>>) -> Result<Self> {
        if base.dim() != self.dim() {
            return Err(Error::InvalidArgument { op: "Flow::with_base", reason: format!("base of dimension {}, the flow has {}", base.dim(), self.dim()) });
        }
        self.base = base;
        Ok(self)
    }

    /// The input shape.
    pub fn shape(&self) -> Shape {
        self.shapes[0]
    }
    /// $D$, the size of one example (and of the latent).
    pub fn dim(&self) -> usize {
        self.shapes[0].dim()
    }
    /// The shape entering transform `k` (`k = len` gives the last output's).
    pub fn shape_at(&self, k: usize) -> Option<Shape> {
        self.shapes.get(k).copied()
    }
    /// The transforms.
    pub fn layers(&self) -> &[Box<dyn Transform<T>>] {
        &self.layers
    }
    /// Transform `k` as its concrete type, if it is an `L`.
    pub fn layer<L: Transform<T>>(&self, k: usize) -> Option<&L> {
        let any: &dyn std::any::Any = &**self.layers.get(k)?;
        any.downcast_ref()
    }
    /// Transform `k` as its concrete type, mutable, if it is an `L`. Marks the cached
    /// log-det stale.
    pub fn layer_mut<L: Transform<T>>(&mut self, k: usize) -> Option<&mut L> {
        self.version = next_version();
        let any: &mut dyn std::any::Any = &mut **self.layers.get_mut(k)?;
        any.downcast_mut()
    }
    /// The base distribution.
    pub fn base(&self) -> &dyn Distribution<T> {
        &*self.base
    }
    /// Mutable access to the transforms (an optimiser step). Marks the cached log-det stale.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Transform<T>>] {
        self.version = next_version();
        &mut self.layers
    }
    /// Indices of the self-normalizing transforms.
    pub fn self_normalizing(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().enumerate().filter(|(_, l)| l.as_self_normalizing().is_some()).map(|(k, _)| k)
    }
    /// Zeroed gradients for every transform.
    pub fn zero_grads(&self) -> FlowGrads<T> {
        FlowGrads { layers: self.layers.iter().map(|l| l.zero_grads()).collect() }
    }

    /// Buffers for batches of up to `max_batch`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero or unallocatable size; the transforms' errors.
    pub fn workspace(&self, max_batch: usize, par: Par) -> Result<FlowWorkspace<T>> {
        let (d, k) = (self.dim(), self.layers.len());
        if max_batch == 0 {
            return Err(Error::InvalidArgument { op: "Flow::workspace", reason: "max_batch must be positive".into() });
        }
        let h = (0..=k).map(|_| zeros(d, max_batch)).collect::<Result<Vec<_>>>()?;
        Ok(FlowWorkspace {
            layers: self.layers.iter().map(|l| l.workspace(max_batch, par)).collect::<Result<_>>()?,
            tapes: (0..k).map(|_| None).collect(),
            h,
            z: zeros(d, max_batch)?,
            dz: zeros(d, max_batch)?,
            delta: [zeros(d, max_batch)?, zeros(d, max_batch)?],
            g: None,
            logdet: vec![0.0; max_batch],
            lp: vec![0.0; max_batch],
            layer_rel: vec![0.0; k],
            max_batch,
            par,
        })
    }

    /// [`workspace`](Self::workspace) plus what [`exact_gradients`](Self::exact_gradients)
    /// needs (the g-chain buffers and the exact path's LU workspaces), so that measuring
    /// the SNF-vs-exact angle allocates nothing either.
    ///
    /// # Errors
    /// As [`workspace`](Self::workspace).
    pub fn exact_workspace(&self, max_batch: usize, par: Par) -> Result<FlowWorkspace<T>> {
        let mut ws = self.workspace(max_batch, par)?;
        let (d, k) = (self.dim(), self.layers.len());
        for (l, w) in self.layers.iter().zip(&mut ws.layers) {
            if let Some(s) = l.as_self_normalizing() {
                s.prepare_exact(w)?;
            }
        }
        ws.g = Some(GChain {
            y: (0..=k).map(|_| zeros(d, max_batch)).collect::<Result<Vec<_>>>()?,
            z: zeros(d, max_batch)?,
            dz: zeros(d, max_batch)?,
            delta: [zeros(d, max_batch)?, zeros(d, max_batch)?],
            scratch: zeros(d, max_batch)?,
            grads: self.layers.iter().map(|l| l.zero_grads()).collect(),
        });
        Ok(ws)
    }

    fn check_batch(&self, op: &'static str, x: MatRef<'_, T>, ws: &FlowWorkspace<T>) -> Result<usize> {
        if ws.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op, reason: "workspace made for another flow".into() });
        }
        crate::layers::check_batch(op, x, self.dim(), ws.max_batch)
    }

    /// Copy the final rows of every transform's output into `z` (rows $[D_{k+1}, D_k)$ from
    /// transform $k$, rows $[0, D_K)$ from the last).
    fn assemble(shapes: &[Shape], h: &[Mat<T>], z: MatMut<'_, T>, b: usize) {
        let mut z = z;
        let k_top = shapes.len() - 1;
        for k in 0..k_top {
            let (lo, hi) = (shapes[k + 1].dim(), shapes[k].dim());
            if hi > lo {
                z.rb_mut().subrows_mut(lo, hi - lo).subcols_mut(0, b).copy_from(h[k + 1].as_ref().subrows(lo, hi - lo).subcols(0, b));
            }
        }
        let top = shapes[k_top].dim();
        z.subrows_mut(0, top).subcols_mut(0, b).copy_from(h[k_top].as_ref().subrows(0, top).subcols(0, b));
    }

    /// Forward pass through every transform, keeping the activations and tapes in `ws`,
    /// the latent in `ws.z` and the data-dependent log-dets in `ws.logdet`.
    fn forward_keep(&self, x: MatRef<'_, T>, ws: &mut FlowWorkspace<T>) -> Result<usize> {
        let b = self.check_batch("Flow::forward", x, ws)?;
        ws.h[0].as_mut().subcols_mut(0, b).copy_from(x);
        let logdet = &mut ws.logdet[..b];
        logdet.iter_mut().for_each(|v| *v = 0.0);
        for (k, layer) in self.layers.iter().enumerate() {
            let d = self.shapes[k].dim();
            let (lo, hi) = ws.h.split_at_mut(k + 1);
            ws.tapes[k] = None;
            let tape =
                layer.forward(lo[k].as_ref().subrows(0, d).subcols(0, b), hi[0].as_mut().subrows_mut(0, d).subcols_mut(0, b), logdet, &mut ws.layers[k])?;
            ws.tapes[k] = Some(tape);
        }
        Self::assemble(&self.shapes, &ws.h, ws.z.as_mut(), b);
        Ok(b)
    }

    /// Let every transform make its own once-per-step updates ([`Transform::after_step`])
    /// from what the last [`gradients_with`](Self::gradients_with) on `ws` left there: the
    /// projection fit of a [`SelfNormLinear`](crate::layers::linear::SelfNormLinear) or a
    /// [`SelfNormConv2d`](crate::layers::conv::SelfNormConv2d) moves its learned inverse here. Call it once per training step, after the optimiser step
    /// (the trainer does). Never allocates.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a workspace of another flow; the transforms' errors.
    pub fn after_step(&mut self, ws: &mut FlowWorkspace<T>) -> Result<()> {
        if ws.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: "Flow::after_step", reason: "workspace made for another flow".into() });
        }
        self.version = next_version();
        let (layers, par) = (&mut self.layers, ws.par);
        crate::util::in_pool(par, || layers.iter_mut().zip(&mut ws.layers).try_for_each(|(layer, w)| layer.after_step(w)))
    }

    /// Whether λ means anything to this flow: some self-normalizing transform carries the
    /// reconstruction penalty ([`SelfNormalizing::uses_penalty`](crate::transform::SelfNormalizing::uses_penalty)).
    pub fn uses_penalty(&self) -> bool {
        self.layers.iter().any(|l| l.as_self_normalizing().is_some_and(|s| s.uses_penalty()))
    }

    /// Data-dependent initialisation ([`Transform::data_init`]) of every transform, in
    /// order, each from the output of the ones before it on the batch `x` (ActNorm's
    /// first-batch statistics). Allocates its own buffers once; transforms without such an
    /// initialisation pass the batch through unchanged. The trainer runs it before its
    /// first step.
    ///
    /// # Errors
    /// Shape errors; the transforms' errors.
    pub fn data_init(&mut self, x: MatRef<'_, T>, par: Par) -> Result<()> {
        const OP: &str = "Flow::data_init";
        let b = x.ncols();
        if x.nrows() != self.dim() || b == 0 {
            return Err(Error::ShapeMismatch { op: OP, expected: (self.dim(), b.max(1)), got: (x.nrows(), b) });
        }
        self.version = next_version();
        let mut cur = x.to_owned();
        let mut next = zeros::<T>(self.dim(), b)?;
        let mut logdet = vec![0.0; b];
        for (k, layer) in self.layers.iter_mut().enumerate() {
            let d = self.shapes[k].dim();
            layer.data_init(cur.as_ref().subrows(0, d), par)?;
            let mut ws = layer.workspace(b, par)?;
            let _tape = layer.forward(cur.as_ref().subrows(0, d), next.as_mut().subrows_mut(0, d), &mut logdet, &mut ws)?;
            cur.as_mut().subrows_mut(0, d).copy_from(next.as_ref().subrows(0, d));
        }
        Ok(())
    }

    /// $z = f(x)$ (data to noise) with each example's full $\log|\det J_f(x)|$ (the
    /// data-independent part included, from the cache).
    ///
    /// # Errors
    /// Shape errors, the transforms' errors.
    pub fn forward(&self, x: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], ws: &mut FlowWorkspace<T>) -> Result<()> {
        const OP: &str = "Flow::forward";
        let b = x.ncols();
        check_shape(OP, (self.dim(), b), (z.nrows(), z.ncols()))?;
        check_shape(OP, (b, 1), (logdet.len(), 1))?;
        let stat = self.static_log_det(ws)?;
        self.forward_keep(x, ws)?;
        let mut z = z;
        z.copy_from(ws.z.as_ref().subcols(0, b));
        for (o, l) in logdet.iter_mut().zip(&ws.logdet) {
            *o = l + stat;
        }
        Ok(())
    }

    /// One training pass: forward, then the backward sweep from
    /// $\delta_z = \partial\log p_Z/\partial z$, writing every transform's loss gradient
    /// (self-normalizing or exact, by transform) into `grads`.
    ///
    /// # Errors
    /// Shape errors, workspace/gradient mismatches, the transforms' own errors.
    pub fn gradients(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, lambda: T) -> Result<StepStats> {
        self.gradients_with(x, grads, ws, Penalty::Absolute(lambda.as_f64()))
    }

    /// [`gradients`](Self::gradients) with the reconstruction penalty weighted as `penalty` says.
    ///
    /// # Errors
    /// As [`gradients`](Self::gradients).
    pub fn gradients_with(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, penalty: Penalty) -> Result<StepStats> {
        crate::util::in_pool(ws.par, || self.gradients_in_pool(x, grads, ws, penalty))
    }

    fn gradients_in_pool(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, penalty: Penalty) -> Result<StepStats> {
        const OP: &str = "Flow::gradients";
        if grads.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another flow".into() });
        }
        let b = self.forward_keep(x, ws)?;
        let z = ws.z.as_ref().subcols(0, b);
        self.base.log_prob(z, &mut ws.lp[..b])?;
        let partial = ws.lp[..b].iter().zip(&ws.logdet[..b]).map(|(a, l)| a + l).sum::<f64>() / b as f64;
        self.base.grad(z, ws.dz.as_mut().subcols_mut(0, b))?;
        let k_top = self.layers.len();
        let top = self.shapes[k_top].dim();
        ws.delta[0].as_mut().subrows_mut(0, top).subcols_mut(0, b).copy_from(ws.dz.as_ref().subrows(0, top).subcols(0, b));
        let (mut recon, mut relative, mut n_snf) = (0.0, 0.0, 0usize);
        let mut cur = 0;
        for k in (self.first_trainable..k_top).rev() {
            let (d, dn) = (self.shapes[k].dim(), self.shapes[k + 1].dim());
            let [d0, d1] = &mut ws.delta;
            let (din, dout) = if cur == 0 { (d0, d1) } else { (d1, d0) };
            if d > dn {
                din.as_mut().subrows_mut(dn, d - dn).subcols_mut(0, b).copy_from(ws.dz.as_ref().subrows(dn, d - dn).subcols(0, b));
            }
            let tape = ws.tapes[k].take().ok_or(Error::StaleTape { reason: "no forward pass recorded" })?;
            let xk = ws.h[k].as_ref().subrows(0, d).subcols(0, b);
            let snf = self.layers[k].as_self_normalizing().is_some();
            let energy = if snf { mean_square_norm(xk) } else { 0.0 };
            let rk = self.layers[k].backward(
                tape,
                xk,
                din.as_ref().subrows(0, d).subcols(0, b),
                dout.as_mut().subrows_mut(0, d).subcols_mut(0, b),
                &mut grads.layers[k],
                &mut ws.layers[k],
                T::from_f64(penalty.weight(d, energy)),
            )?;
            recon += rk;
            if snf {
                let rel = if energy > 0.0 { rk / energy } else { rk };
                relative += rel;
                n_snf += 1;
                if let Some(slot) = ws.layer_rel.get_mut(k) {
                    *slot = rel;
                }
            }
            cur ^= 1;
        }
        let relative_reconstruction_error = if n_snf > 0 { relative / n_snf as f64 } else { 0.0 };
        Ok(StepStats { reconstruction_error: recon, relative_reconstruction_error, partial_log_prob: partial })
    }

    /// The *exact* gradient of Eq. 3 for a flow with self-normalizing layers, on the same
    /// batch: the reference for gradient-angle monitoring (Fig. 3). Runs the $f$ chain and
    /// the $g^{-1}$ chain (self-normalizing layers replaced by the exact inverses of their
    /// learned inverses) and sweeps both deltas down. Every other transform gets the
    /// average of its gradients on the two chains (its parameters enter both halves of
    /// Eq. 3 with weight ½).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `ws` was not made by
    /// [`exact_workspace`](Self::exact_workspace); the transforms' and the LU's errors.
    pub fn exact_gradients(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, lambda: T) -> Result<()> {
        self.exact_gradients_with(x, grads, ws, Penalty::Absolute(lambda.as_f64()))
    }

    /// [`exact_gradients`](Self::exact_gradients) with the reconstruction penalty weighted as
    /// `penalty` says (the same weights as [`gradients_with`](Self::gradients_with) on the
    /// same batch, so the two gradients are of one objective).
    ///
    /// # Errors
    /// As [`exact_gradients`](Self::exact_gradients).
    pub fn exact_gradients_with(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, penalty: Penalty) -> Result<()> {
        crate::util::in_pool(ws.par, || self.exact_gradients_in_pool(x, grads, ws, penalty))
    }

    fn exact_gradients_in_pool(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, penalty: Penalty) -> Result<()> {
        const OP: &str = "Flow::exact_gradients";
        if grads.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another flow".into() });
        }
        if ws.g.is_none() {
            return Err(Error::InvalidArgument { op: OP, reason: "make the workspace with Flow::exact_workspace".into() });
        }
        let b = self.forward_keep(x, ws)?;
        let Some(gc) = ws.g.as_mut() else { return Err(Error::InvalidArgument { op: OP, reason: "no g-chain buffers".into() }) };
        // the g chain
        gc.y[0].as_mut().subcols_mut(0, b).copy_from(x);
        let scratch_ld = &mut ws.lp[..b];
        for (k, layer) in self.layers.iter().enumerate() {
            let d = self.shapes[k].dim();
            let (lo, hi) = gc.y.split_at_mut(k + 1);
            let (xin, yout) = (lo[k].as_ref().subrows(0, d).subcols(0, b), hi[0].as_mut().subrows_mut(0, d).subcols_mut(0, b));
            match layer.as_self_normalizing() {
                Some(s) => s.g_forward(xin, yout, &mut ws.layers[k])?,
                None => {
                    // a forward of its own on the g chain; the f-chain tape is re-made below
                    let t = layer.forward(xin, yout, scratch_ld, &mut ws.layers[k])?;
                    drop(t);
                }
            }
        }
        Self::assemble(&self.shapes, &gc.y, gc.z.as_mut(), b);
        self.base.grad(ws.z.as_ref().subcols(0, b), ws.dz.as_mut().subcols_mut(0, b))?;
        self.base.grad(gc.z.as_ref().subcols(0, b), gc.dz.as_mut().subcols_mut(0, b))?;
        let k_top = self.layers.len();
        let top = self.shapes[k_top].dim();
        ws.delta[0].as_mut().subrows_mut(0, top).subcols_mut(0, b).copy_from(ws.dz.as_ref().subrows(0, top).subcols(0, b));
        gc.delta[0].as_mut().subrows_mut(0, top).subcols_mut(0, b).copy_from(gc.dz.as_ref().subrows(0, top).subcols(0, b));
        let half = T::from_f64(0.5);
        let mut cur = 0;
        for k in (self.first_trainable..k_top).rev() {
            let (d, dn) = (self.shapes[k].dim(), self.shapes[k + 1].dim());
            let [d0, d1] = &mut ws.delta;
            let (fin, fout) = if cur == 0 { (d0, d1) } else { (d1, d0) };
            let [g0, g1] = &mut gc.delta;
            let (gin, gout) = if cur == 0 { (g0, g1) } else { (g1, g0) };
            if d > dn {
                fin.as_mut().subrows_mut(dn, d - dn).subcols_mut(0, b).copy_from(ws.dz.as_ref().subrows(dn, d - dn).subcols(0, b));
                gin.as_mut().subrows_mut(dn, d - dn).subcols_mut(0, b).copy_from(gc.dz.as_ref().subrows(dn, d - dn).subcols(0, b));
            }
            let (xf, xg) = (ws.h[k].as_ref().subrows(0, d).subcols(0, b), gc.y[k].as_ref().subrows(0, d).subcols(0, b));
            let layer = &self.layers[k];
            let snf = layer.as_self_normalizing().is_some();
            let lambda = T::from_f64(penalty.weight(d, if snf { mean_square_norm(xf) } else { 0.0 }));
            let lw = &mut ws.layers[k];
            match layer.as_self_normalizing() {
                Some(s) => {
                    // the f-chain tape (g_forward does not touch it)
                    let tape = ws.tapes[k].take().ok_or(Error::StaleTape { reason: "no forward pass recorded" })?;
                    s.backward_exact(
                        tape,
                        xf,
                        fin.as_ref().subrows(0, d).subcols(0, b),
                        gin.as_ref().subrows(0, d).subcols(0, b),
                        fout.as_mut().subrows_mut(0, d).subcols_mut(0, b),
                        gout.as_mut().subrows_mut(0, d).subcols_mut(0, b),
                        &mut grads.layers[k],
                        lw,
                        lambda,
                    )?;
                }
                None => {
                    // its f-chain tape was replaced by the g-chain forward: forward again on
                    // each chain (monitoring only) and backward right after
                    ws.tapes[k] = None;
                    let scratch = gc.scratch.as_mut().subrows_mut(0, d).subcols_mut(0, b);
                    let fout = fout.as_mut().subrows_mut(0, d).subcols_mut(0, b);
                    forward_backward(&**layer, xf, fin.as_ref().subrows(0, d).subcols(0, b), fout, scratch, scratch_ld, &mut grads.layers[k], lw, lambda)?;
                    let scratch = gc.scratch.as_mut().subrows_mut(0, d).subcols_mut(0, b);
                    let gout = gout.as_mut().subrows_mut(0, d).subcols_mut(0, b);
                    forward_backward(&**layer, xg, gin.as_ref().subrows(0, d).subcols(0, b), gout, scratch, scratch_ld, &mut gc.grads[k], lw, lambda)?;
                    for (mut a, bb) in grads.layers[k].blocks_mut().into_iter().zip(gc.grads[k].blocks()) {
                        faer::zip!(a.rb_mut(), bb).for_each(|faer::unzip!(a, b)| *a = (*a + *b) * half);
                    }
                }
            }
            cur ^= 1;
        }
        Ok(())
    }

    /// $\sum_k$ of the transforms' data-independent log-dets (Eq. 7), computed (by LU) the
    /// first time after a parameter change and cached in the flow until the next one:
    /// every mutable access ([`layers_mut`](Self::layers_mut)) marks it stale.
    ///
    /// # Errors
    /// The transforms' errors (a singular layer).
    pub fn static_log_det(&self, ws: &mut FlowWorkspace<T>) -> Result<f64> {
        if let Some((v, ld)) = *self.log_det.lock().unwrap_or_else(PoisonError::into_inner) {
            if v == self.version {
                return Ok(ld);
            }
        }
        if ws.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: "Flow::static_log_det", reason: "workspace made for another flow".into() });
        }
        let ld = self.layers.iter().zip(ws.layers.iter_mut()).map(|(l, w)| l.static_log_det(w)).sum::<Result<f64>>()?;
        *self.log_det.lock().unwrap_or_else(PoisonError::into_inner) = Some((self.version, ld));
        Ok(ld)
    }

    /// Exact $\log p(x)$ of every column of `x` into `out` (nats):
    /// $\log p_Z(f(x)) + \sum$ data-dependent log-dets $+$ the cached
    /// [`static_log_det`](Self::static_log_det) (Eqs. 6–7).
    ///
    /// # Errors
    /// Shape errors, the transforms' errors.
    pub fn log_prob(&self, x: MatRef<'_, T>, ws: &mut FlowWorkspace<T>, out: &mut [f64]) -> Result<()> {
        let stat = self.static_log_det(ws)?;
        self.log_prob_given(x, stat, ws, out)
    }

    /// [`log_prob`](Self::log_prob) with the data-independent log-det given (e.g. the value
    /// a checkpoint stores) instead of computed.
    ///
    /// # Errors
    /// Shape errors, the transforms' errors.
    pub fn log_prob_given(&self, x: MatRef<'_, T>, static_log_det: f64, ws: &mut FlowWorkspace<T>, out: &mut [f64]) -> Result<()> {
        crate::util::in_pool(ws.par, || self.log_prob_in_pool(x, static_log_det, ws, out))
    }

    fn log_prob_in_pool(&self, x: MatRef<'_, T>, static_log_det: f64, ws: &mut FlowWorkspace<T>, out: &mut [f64]) -> Result<()> {
        let b = x.ncols();
        check_shape("Flow::log_prob", (b, 1), (out.len(), 1))?;
        self.forward_keep(x, ws)?;
        self.base.log_prob(ws.z.as_ref().subcols(0, b), out)?;
        for (o, l) in out.iter_mut().zip(&ws.logdet) {
            *o = *o + l + static_log_det;
        }
        Ok(())
    }

    /// Map latents `z` back to data space through every transform's inverse (Fig. 2).
    ///
    /// # Errors
    /// Shape errors, the transforms' errors.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut FlowWorkspace<T>, how: Inverse) -> Result<()> {
        const OP: &str = "Flow::inverse";
        let b = self.check_batch(OP, z, ws)?;
        check_shape(OP, (self.dim(), b), (x.nrows(), x.ncols()))?;
        let k_top = self.layers.len();
        let top = self.shapes[k_top].dim();
        ws.h[k_top].as_mut().subrows_mut(0, top).subcols_mut(0, b).copy_from(z.subrows(0, top));
        for k in (0..k_top).rev() {
            let (d, dn) = (self.shapes[k].dim(), self.shapes[k + 1].dim());
            let (lo, hi) = ws.h.split_at_mut(k + 1);
            if d > dn {
                hi[0].as_mut().subrows_mut(dn, d - dn).subcols_mut(0, b).copy_from(z.subrows(dn, d - dn));
            }
            ws.tapes[k] = None;
            let (y, xo) = (hi[0].as_ref().subrows(0, d).subcols(0, b), lo[k].as_mut().subrows_mut(0, d).subcols_mut(0, b));
            match (how, self.layers[k].as_self_normalizing()) {
                (Inverse::Learned, Some(s)) => s.inverse_learned(y, xo, &mut ws.layers[k])?,
                _ => self.layers[k].inverse(y, xo, &mut ws.layers[k])?,
            }
        }
        let mut x = x;
        x.copy_from(ws.h[0].as_ref().subcols(0, b));
        Ok(())
    }

    /// Draw `out.ncols()` samples: $z$ from the base, mapped through the chosen inverse
    /// (Fig. 2). With a [`Preprocess`] first transform the samples are in pixel units.
    ///
    /// # Errors
    /// As [`inverse`](Self::inverse).
    pub fn sample(&self, rng: &mut dyn rand::RngCore, out: MatMut<'_, T>, ws: &mut FlowWorkspace<T>, how: Inverse) -> Result<()> {
        let b = out.ncols();
        let mut z = zeros(self.dim(), b)?;
        self.base.sample(rng, z.as_mut())?;
        self.inverse(z.as_ref(), out, ws, how)
    }
}

/// A forward pass of `layer` on `x` (output into `scratch`) and the backward pass of its
/// tape: how the exact sweep reaches a transform whose workspace the other chain used.
#[allow(clippy::too_many_arguments)]
fn forward_backward<T: Real>(
    layer: &dyn Transform<T>,
    x: MatRef<'_, T>,
    dy: MatRef<'_, T>,
    dx: MatMut<'_, T>,
    scratch: MatMut<'_, T>,
    logdet: &mut [f64],
    grads: &mut Grads<T>,
    ws: &mut Workspace<T>,
    lambda: T,
) -> Result<f64> {
    let tape = layer.forward(x, scratch, logdet, ws)?;
    layer.backward(tape, x, dy, dx, grads, ws, lambda)
}
