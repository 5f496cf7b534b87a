//! Flows: a standard normal base distribution and a sequence of [`Layer`]s, with one
//! backward sweep that carries $\delta$ through the stack and collects every layer's
//! gradients, exact log-likelihood evaluation with the data-independent log-dets computed
//! once per evaluation (Eqs. 6–7), and sampling through the exact or the learned inverse
//! (Fig. 2).
//!
//! **Objective.** For a flow $f = f_K\circ\dots\circ f_1$ with self-normalizing layers, the
//! training loss is Eq. 3 averaged over the batch: every self-normalizing layer $k$ adds
//! $\lambda\lVert g_k(f_k(h_k)) - h_k\rVert^2$ with its input $h_k$ treated as a constant
//! (stop-gradient), which is exactly what the layers' backward passes compute, and
//! $\delta$ is carried through the $f$ chain: $\delta_K = \partial\log p_Z/\partial z = -z$,
//! $\delta_{k} = $ the layer's input delta. `proofs/flow.md` derives it, including why the
//! same sweep gives the $p^g$ half under the self-normalizing approximation.

mod layer;
pub mod models;
mod preprocess;
mod squeeze;

pub use layer::{Layer, LayerGrads, LayerWorkspace};
pub use preprocess::Preprocess;
pub use squeeze::Squeeze;

use faer::{Mat, MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// $\frac12\log 2\pi$.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// A normalizing flow on $\mathbb R^D$ with a standard normal base.
#[derive(Debug, Clone)]
pub struct Flow<T: Real> {
    layers: Vec<Layer<T>>,
    dim: usize,
}

/// Gradients of every layer of a [`Flow`], in layer order.
#[derive(Debug, Clone)]
pub struct FlowGrads<T: Real> {
    /// One entry per layer.
    pub layers: Vec<LayerGrads<T>>,
}

impl<T: Real> FlowGrads<T> {
    /// Global gradient norm $\sqrt{\sum\lVert g\rVert^2}$ (for clipping).
    pub fn norm(&self) -> f64 {
        self.layers.iter().map(|g| g.sum_sq()).sum::<f64>().sqrt()
    }
    /// Multiply every gradient by `s` (e.g. to clip the norm).
    pub fn scale(&mut self, s: T) {
        for g in &mut self.layers {
            match g {
                LayerGrads::None => {}
                LayerGrads::Linear(g) => g.scale(s),
                LayerGrads::ExactLinear(g) => {
                    scale_mat(g.w.as_mut(), s);
                    if let Some(b) = g.b.as_mut() {
                        scale_mat(b.as_mut(), s);
                    }
                }
                LayerGrads::Conv(g) => g.scale(s),
                LayerGrads::ExactConv(g) => {
                    scale_mat(g.w.as_mut(), s);
                    if let Some(b) = g.b.as_mut() {
                        scale_mat(b.as_mut(), s);
                    }
                }
                LayerGrads::Spline(g) => {
                    for m in [&mut g.w, &mut g.h, &mut g.d] {
                        scale_mat(m.as_mut(), s);
                    }
                }
            }
        }
    }
    /// True when every gradient entry is finite.
    pub fn all_finite(&self) -> bool {
        self.layers.iter().all(|g| g.blocks().into_iter().all(crate::util::all_finite))
    }
}

/// `dst = -src`: the standard normal base's delta $\partial\log\mathcal N(z)/\partial z$.
fn set_neg<T: Real>(dst: MatMut<'_, T>, src: MatRef<'_, T>) {
    faer::zip!(dst, src).for_each(|faer::unzip!(d, s)| *d = -*s);
}

pub(crate) fn scale_mat<T: Real>(m: MatMut<'_, T>, s: T) {
    faer::zip!(m).for_each(|faer::unzip!(v)| *v *= s);
}

/// Buffers for a [`Flow`]: every layer's workspace, the activations $h_0..h_K$ of the
/// last forward pass, two delta buffers and the per-example log-dets. Allocated once.
#[derive(Debug)]
pub struct FlowWorkspace<T: Real> {
    layers: Vec<LayerWorkspace<T>>,
    h: Vec<Mat<T>>,
    delta: [Mat<T>; 2],
    /// g-chain activations and deltas (exact-gradient monitoring only).
    g: Option<GChain<T>>,
    logdet: Vec<f64>,
    batch: Option<usize>,
    max_batch: usize,
}

#[derive(Debug)]
struct GChain<T: Real> {
    y: Vec<Mat<T>>,
    delta: [Mat<T>; 2],
}

/// What one training pass measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Sum over self-normalizing layers of their batch-mean reconstruction error.
    pub reconstruction_error: f64,
    /// Batch mean of $\log p_Z(z) + \sum$ data-dependent log-dets: the log-likelihood up to
    /// the (constant in $x$) log-dets of the linear layers, which training never computes.
    pub partial_log_prob: f64,
}

impl<T: Real> Flow<T> {
    /// A flow on $\mathbb R^{D}$ made of `layers` (applied in order).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty flow, a `dim` of 0, or a layer of another
    /// dimension.
    pub fn new(dim: usize, layers: Vec<Layer<T>>) -> Result<Self> {
        const OP: &str = "Flow::new";
        if layers.is_empty() || dim == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "a flow needs a positive dimension and at least one layer".into() });
        }
        if let Some((k, d)) = layers.iter().enumerate().find_map(|(k, l)| l.dim().filter(|&d| d != dim).map(|d| (k, d))) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("layer {k} maps dimension {d}, the flow has {dim}") });
        }
        Ok(Self { layers, dim })
    }

    /// The dimension $D$.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The layers.
    pub fn layers(&self) -> &[Layer<T>] {
        &self.layers
    }
    /// Zeroed gradients for every layer.
    pub fn zero_grads(&self) -> FlowGrads<T> {
        FlowGrads { layers: self.layers.iter().map(Layer::zero_grads).collect() }
    }

    /// Buffers for batches of up to `max_batch`; `exact` adds what exact-gradient
    /// monitoring of a self-normalizing flow needs ([`exact_gradients`](Self::exact_gradients)).
    pub fn workspace(&self, max_batch: usize, par: Par, exact: bool) -> FlowWorkspace<T> {
        let k = self.layers.len();
        let (d, b) = (self.dim, max_batch);
        FlowWorkspace {
            layers: self.layers.iter().map(|l| l.workspace(max_batch, par, exact)).collect(),
            h: layer::buffers(k + 1, d, b),
            delta: [Mat::zeros(d, b), Mat::zeros(d, b)],
            g: exact.then(|| GChain { y: layer::buffers(k + 1, d, b), delta: [Mat::zeros(d, b), Mat::zeros(d, b)] }),
            logdet: vec![0.0; b],
            batch: None,
            max_batch,
        }
    }

    fn check_batch(&self, op: &'static str, x: MatRef<'_, T>, ws: &FlowWorkspace<T>) -> Result<usize> {
        crate::layers::check_batch(op, x, self.dim, ws.max_batch)
    }

    /// Forward pass through every layer, keeping the activations in `ws`; returns the batch
    /// mean of $\log p_Z(z) + \sum$ data-dependent log-dets.
    fn forward_keep(&self, x: MatRef<'_, T>, ws: &mut FlowWorkspace<T>) -> Result<f64> {
        const OP: &str = "Flow::forward";
        let b = self.check_batch(OP, x, ws)?;
        ws.batch = None;
        ws.h[0].as_mut().subcols_mut(0, b).copy_from(x);
        let logdet = &mut ws.logdet[..b];
        logdet.iter_mut().for_each(|v| *v = 0.0);
        for (k, layer) in self.layers.iter().enumerate() {
            let (lo, hi) = ws.h.split_at_mut(k + 1);
            layer.forward(lo[k].as_ref().subcols(0, b), hi[0].as_mut().subcols_mut(0, b), &mut ws.layers[k], logdet)?;
        }
        let z = ws.h[self.layers.len()].as_ref().subcols(0, b);
        let mean = (0..b).map(|j| log_normal(z.col(j)) + logdet[j]).sum::<f64>() / b as f64;
        ws.batch = Some(b);
        Ok(mean)
    }

    /// One training pass: forward, then the backward sweep with $\delta_K = -z$, writing
    /// every layer's loss gradient (self-normalizing or exact, by layer kind) into `grads`.
    ///
    /// # Errors
    /// Shape errors, workspace/gradient mismatches, the layers' own errors (e.g. a
    /// singular matrix in an exact-baseline layer).
    pub fn gradients(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, lambda: T) -> Result<StepStats> {
        const OP: &str = "Flow::gradients";
        if grads.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another flow".into() });
        }
        let partial = self.forward_keep(x, ws)?;
        let b = x.ncols();
        let k_top = self.layers.len();
        // delta at the top: d log N(z) / dz = -z
        set_neg(ws.delta[0].as_mut().subcols_mut(0, b), ws.h[k_top].as_ref().subcols(0, b));
        let mut recon = 0.0;
        let mut cur = 0;
        for k in (0..k_top).rev() {
            if matches!(self.layers[k], Layer::Preprocess(_)) {
                // data has no gradient: the sweep ends at the preprocessing
                if k == 0 {
                    break;
                }
                return Err(Error::InvalidArgument { op: OP, reason: "preprocessing must be the first layer".into() });
            }
            let [d0, d1] = &mut ws.delta;
            let (din, dout) = if cur == 0 { (&*d0, d1) } else { (&*d1, d0) };
            recon += self.layers[k].backward(
                ws.h[k].as_ref().subcols(0, b),
                din.as_ref().subcols(0, b),
                dout.as_mut().subcols_mut(0, b),
                &mut grads.layers[k],
                &mut ws.layers[k],
                lambda,
            )?;
            cur ^= 1;
        }
        Ok(StepStats { reconstruction_error: recon, partial_log_prob: partial })
    }

    /// The *exact* gradient of Eq. 3 for a self-normalizing flow, on the same batch: the
    /// reference for gradient-angle monitoring (Fig. 3). Runs the $f$ chain and the $g^{-1}$
    /// chain and sweeps both deltas down ($\delta^f_K = -z$, $\delta^g_K = -y_K$).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `ws` was made without `exact`, or the flow holds
    /// exact-baseline layers; the LU's errors.
    pub fn exact_gradients(&self, x: MatRef<'_, T>, grads: &mut FlowGrads<T>, ws: &mut FlowWorkspace<T>, lambda: T) -> Result<()> {
        const OP: &str = "Flow::exact_gradients";
        if grads.layers.len() != self.layers.len() {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another flow".into() });
        }
        self.forward_keep(x, ws)?;
        let b = x.ncols();
        let k_top = self.layers.len();
        let Some(gc) = ws.g.as_mut() else {
            return Err(Error::InvalidArgument { op: OP, reason: "make the workspace with exact = true".into() });
        };
        gc.y[0].as_mut().subcols_mut(0, b).copy_from(x);
        let logdet = &mut ws.logdet[..b];
        for (k, layer) in self.layers.iter().enumerate() {
            let (lo, hi) = gc.y.split_at_mut(k + 1);
            layer.g_forward(lo[k].as_ref().subcols(0, b), hi[0].as_mut().subcols_mut(0, b), &mut ws.layers[k], logdet)?;
        }
        set_neg(ws.delta[0].as_mut().subcols_mut(0, b), ws.h[k_top].as_ref().subcols(0, b));
        set_neg(gc.delta[0].as_mut().subcols_mut(0, b), gc.y[k_top].as_ref().subcols(0, b));
        let mut cur = 0;
        for k in (0..k_top).rev() {
            if matches!(self.layers[k], Layer::Preprocess(_)) && k == 0 {
                break;
            }
            let [d0, d1] = &mut ws.delta;
            let (fin, fout) = if cur == 0 { (&*d0, d1) } else { (&*d1, d0) };
            let [g0, g1] = &mut gc.delta;
            let (gin, gout) = if cur == 0 { (&*g0, g1) } else { (&*g1, g0) };
            self.layers[k].backward_exact(
                ws.h[k].as_ref().subcols(0, b),
                gc.y[k].as_ref().subcols(0, b),
                fin.as_ref().subcols(0, b),
                gin.as_ref().subcols(0, b),
                fout.as_mut().subcols_mut(0, b),
                gout.as_mut().subcols_mut(0, b),
                &mut grads.layers[k],
                &mut ws.layers[k],
                lambda,
            )?;
            cur ^= 1;
        }
        Ok(())
    }

    /// $\sum_k\log|\det W_k|$: the data-independent part of the log-likelihood (Eq. 7),
    /// by LU. Compute it once per evaluation and pass it to [`log_prob`](Self::log_prob).
    ///
    /// # Errors
    /// The LU's errors (a singular layer).
    pub fn static_log_det(&self, ws: &mut FlowWorkspace<T>) -> Result<f64> {
        self.layers.iter().zip(ws.layers.iter_mut()).map(|(l, w)| l.static_log_det(w)).sum()
    }

    /// Exact $\log p(x)$ of every column of `x` into `out`, given the flow's
    /// [`static_log_det`](Self::static_log_det): $\log p_Z(f(x)) + \sum$ data-dependent
    /// log-dets $+$ `static_log_det` (Eqs. 6–7).
    ///
    /// # Errors
    /// Shape errors, the layers' errors.
    pub fn log_prob(&self, x: MatRef<'_, T>, static_log_det: f64, ws: &mut FlowWorkspace<T>, out: &mut [f64]) -> Result<()> {
        let b = x.ncols();
        check_shape("Flow::log_prob", (b, 1), (out.len(), 1))?;
        self.forward_keep(x, ws)?;
        let z = ws.h[self.layers.len()].as_ref().subcols(0, b);
        for (j, o) in out.iter_mut().enumerate() {
            *o = log_normal(z.col(j)) + ws.logdet[j] + static_log_det;
        }
        Ok(())
    }

    /// Map base samples `z` back to data space through every layer's inverse: exact
    /// (`learned = false`, LU solves) or the learned inverses $g_k$ of self-normalizing
    /// layers (`learned = true`) (Fig. 2).
    ///
    /// # Errors
    /// Shape errors, the layers' errors.
    pub fn inverse(&self, z: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut FlowWorkspace<T>, learned: bool) -> Result<()> {
        const OP: &str = "Flow::inverse";
        let b = self.check_batch(OP, z, ws)?;
        check_shape(OP, (self.dim, b), (x.nrows(), x.ncols()))?;
        ws.batch = None;
        let k_top = self.layers.len();
        ws.h[k_top].as_mut().subcols_mut(0, b).copy_from(z);
        for k in (0..k_top).rev() {
            let (lo, hi) = ws.h.split_at_mut(k + 1);
            self.layers[k].inverse(hi[0].as_ref().subcols(0, b), lo[k].as_mut().subcols_mut(0, b), &mut ws.layers[k], learned)?;
        }
        let mut x = x;
        x.copy_from(ws.h[0].as_ref().subcols(0, b));
        Ok(())
    }

    /// Draw `out.ncols()` samples: $z\sim\mathcal N(0, I)$ mapped through the exact
    /// (`learned = false`) or learned (`learned = true`) inverse (Fig. 2). With a
    /// [`Preprocess`] first layer the samples are in pixel units, $[0, 256)$.
    ///
    /// # Errors
    /// As [`inverse`](Self::inverse).
    pub fn sample(&self, rng: &mut impl rand::Rng, out: MatMut<'_, T>, ws: &mut FlowWorkspace<T>, learned: bool) -> Result<()> {
        let z = Mat::from_fn(self.dim, out.ncols(), |_, _| T::from_f64(rng.sample::<f64, _>(rand_distr::StandardNormal)));
        self.inverse(z.as_ref(), out, ws, learned)
    }

    /// Mutable access to the layers for an optimiser step (see [`Layer::adam_step`]).
    pub fn layers_mut(&mut self) -> &mut [Layer<T>] {
        &mut self.layers
    }
}

/// $\log\mathcal N(z; 0, I)$ of one column, in `f64`.
fn log_normal<T: Real>(z: faer::ColRef<'_, T>) -> f64 {
    let sq = crate::util::col_sum(z, |v| v * v);
    -0.5 * sq - HALF_LN_2PI * z.nrows() as f64
}
