//! Training a [`Flow`] on any [`Dataset`]: Adam with linear learning-rate warm-up, global
//! gradient-norm clipping, the reconstruction penalty λ (fixed, or steered to a target by
//! a GECO-style multiplier that moves both ways), non-finite steps skipped and counted,
//! exact validation NLL after every epoch with the best epoch kept, and per-layer angles
//! between the self-normalizing and the exact gradient (Fig. 3). Deterministic under a seed.

mod json_f64;
mod lambda;

pub use lambda::{Adaptive, Geco, Lambda};

use std::time::Instant;

use faer::{Mat, Par};
use rand::Rng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::batches::epoch_order;
use crate::data::{Dataset, Dequantization};
use crate::error::{Error, Result};
use crate::flow::{Flow, FlowGrads, FlowWorkspace};
use crate::optim::{Adam, AdamConfig, AdamState};
use crate::real::Real;

/// Training settings. `Default` is the paper's FC setting (batch 100, Adam lr 1e-4, the
/// paper's 10-epoch learning-rate warm-up, no clipping) with the adaptive λ
/// ([`Lambda::default`]) in place of the paper's hand-set λ = 1, and the divergence
/// monitor on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs to run.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Adam settings (the learning rate is the peak after warm-up).
    pub adam: AdamConfig,
    /// Linear warm-up of the learning rate from 0 over this many epochs (0: none).
    pub warmup_epochs: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// The reconstruction penalty.
    pub lambda: Lambda,
    /// Seed for data order and dequantisation noise.
    pub seed: u64,
    /// Measure per-layer SNF-vs-exact gradient angles on this many batches per epoch
    /// (self-normalizing flows only; 0: never). Costs one exact backward pass each.
    pub angle_batches: usize,
    /// Stop (with an error) when the summed reconstruction error of a batch exceeds this:
    /// the paper's "training diverged" with too small a λ.
    pub max_reconstruction_error: f64,
    /// The divergence monitor: after every epoch past the warm-up, compare the relative
    /// reconstruction error and the SNF-vs-exact angle with the previous epoch's, record
    /// an [`Alert`] when either grew by more than this factor (the error only when it is
    /// also above an adaptive λ's target; the angle only above 1°), and let λ react
    /// ([`Lambda::react_to_divergence`]). `None`: off.
    #[serde(default)]
    pub divergence_factor: Option<f64>,
}

impl TrainConfig {
    /// Check every setting once (the CLI relies on this).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad setting: zero epochs or batch, a
    /// learning rate, clip norm, λ or GECO target that is not a positive finite number,
    /// a negative or NaN warm-up, or a divergence threshold that is not positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, v: f64| Err(Error::InvalidConfig { field, reason: format!("must be a positive finite number, got {v}") });
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if self.epochs == 0 {
            return Err(Error::InvalidConfig { field: "epochs", reason: "must be positive".into() });
        }
        if self.batch == 0 {
            return Err(Error::InvalidConfig { field: "batch", reason: "must be positive".into() });
        }
        if !pos(self.adam.lr) {
            return bad("lr", self.adam.lr);
        }
        if let Some(c) = self.clip_norm.filter(|c| !pos(*c)) {
            return bad("clip_norm", c);
        }
        match self.lambda {
            Lambda::Fixed(l) if !(l.is_finite() && l >= 0.0) => {
                return Err(Error::InvalidConfig { field: "lambda", reason: format!("must be a non-negative finite number, got {l}") })
            }
            Lambda::Geco(g) if !pos(g.target) => return bad("geco_target", g.target),
            Lambda::Geco(g) if !pos(g.rate) => return bad("geco_rate", g.rate),
            Lambda::Geco(g) if !pos(g.lambda) => return bad("lambda", g.lambda),
            Lambda::Geco(g) if !(pos(g.min) && g.max >= g.min && g.lambda >= g.min && g.lambda <= g.max) => {
                return Err(Error::InvalidConfig {
                    field: "geco_bounds",
                    reason: format!("need 0 < min <= lambda <= max, got {} <= {} <= {}", g.min, g.lambda, g.max),
                })
            }
            Lambda::Geco(g) if !(g.ema >= 0.0 && g.ema < 1.0) => {
                return Err(Error::InvalidConfig { field: "geco_ema", reason: format!("must be in [0, 1), got {}", g.ema) })
            }
            Lambda::Adaptive(a) if !pos(a.target) => return bad("recon_target", a.target),
            Lambda::Adaptive(a) if !(pos(a.min_target) && a.min_target <= a.target) => {
                return Err(Error::InvalidConfig {
                    field: "recon_target",
                    reason: format!("need 0 < min_target <= target, got {} <= {}", a.min_target, a.target),
                })
            }
            Lambda::Adaptive(a) if !(pos(a.gain_p) || a.gain_p == 0.0) || !pos(a.gain_i) || !pos(a.max_ratio_log) => {
                return Err(Error::InvalidConfig {
                    field: "lambda_gains",
                    reason: format!("need gain_p >= 0, gain_i > 0, max_ratio_log > 0, got {}, {}, {}", a.gain_p, a.gain_i, a.max_ratio_log),
                })
            }
            Lambda::Adaptive(a) if !(pos(a.lambda) && pos(a.min) && a.max >= a.min && a.lambda >= a.min && a.lambda <= a.max && a.integral.is_finite()) => {
                return Err(Error::InvalidConfig {
                    field: "lambda_bounds",
                    reason: format!("need 0 < min <= lambda <= max, got {} <= {} <= {}", a.min, a.lambda, a.max),
                })
            }
            Lambda::Adaptive(a) if !(a.ema >= 0.0 && a.ema < 1.0) => {
                return Err(Error::InvalidConfig { field: "lambda_ema", reason: format!("must be in [0, 1), got {}", a.ema) })
            }
            _ => {}
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::InvalidConfig {
                field: "warmup_epochs",
                reason: format!("must be a non-negative number of epochs, got {}", self.warmup_epochs),
            });
        }
        if self.max_reconstruction_error.is_nan() || self.max_reconstruction_error <= 0.0 {
            return bad("max_reconstruction_error", self.max_reconstruction_error);
        }
        if let Some(f) = self.divergence_factor.filter(|f| !(f.is_finite() && *f > 1.0)) {
            return Err(Error::InvalidConfig { field: "divergence_factor", reason: format!("must be a finite number above 1, got {f}") });
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch: 100,
            adam: AdamConfig { lr: 1e-4, ..Default::default() },
            warmup_epochs: 10.0,
            clip_norm: None,
            lambda: Lambda::default(),
            seed: 0,
            angle_batches: 1,
            max_reconstruction_error: 1e6,
            divergence_factor: Some(DEFAULT_DIVERGENCE_FACTOR),
        }
    }
}

/// The divergence monitor's default growth factor: an epoch-over-epoch rise of 25 %.
pub const DEFAULT_DIVERGENCE_FACTOR: f64 = 1.25;

/// Angles (degrees) below which a rising SNF-vs-exact angle is not reported: at that size
/// it is measurement noise of a single batch, not a drifting inverse.
const ANGLE_ALERT_FLOOR_DEG: f64 = 1.0;

/// Mean SNF-vs-exact angles (degrees) past which the gradient is too far from the exact one
/// whatever the trend: over all of a layer's blocks (the inverse's block dominates; 2–20° in
/// healthy MNIST runs, 50–85° while the likelihood stalled in the long run of
/// `docs/results.md`), and on the forward weights alone (under 1° on MNIST).
const ANGLE_LARGE_ALL_DEG: f64 = 30.0;
const ANGLE_LARGE_W_DEG: f64 = 5.0;

/// What the divergence monitor saw at the end of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    /// The epoch's mean relative reconstruction error grew by more than the configured
    /// factor over the previous epoch's.
    ReconstructionRising {
        /// The previous epoch's mean relative error.
        previous: f64,
        /// This epoch's.
        current: f64,
    },
    /// The mean SNF-vs-exact angle on the forward weights (over self-normalizing layers)
    /// grew by more than the factor and is above 1°.
    AngleRising {
        /// The previous epoch's mean angle, degrees.
        previous: f64,
        /// This epoch's.
        current: f64,
    },
    /// The mean angle over all blocks is above 30° or the one on the forward weights above
    /// 5°: the self-normalizing gradient is far from the exact one, rising or not.
    AngleLarge {
        /// Mean angle over all blocks, degrees.
        all_blocks: f64,
        /// Mean angle on the forward weights, degrees.
        w: f64,
    },
    /// λ reacted: an adaptive λ tightened its relative-error target to this value.
    LambdaTightened {
        /// The new target.
        target: f64,
    },
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::ReconstructionRising { previous, current } => {
                write!(f, "relative reconstruction error rising: {previous:.3e} -> {current:.3e}")
            }
            Alert::AngleRising { previous, current } => write!(f, "SNF-vs-exact angle on W rising: {previous:.2} -> {current:.2} deg"),
            Alert::AngleLarge { all_blocks, w } => {
                write!(f, "SNF-vs-exact angle large: {all_blocks:.1} deg over all blocks, {w:.2} deg on W")
            }
            Alert::LambdaTightened { target } => write!(f, "adaptive lambda tightened its target to {target:.3e}"),
        }
    }
}

/// The mean over layers of per-layer angle summaries `(layer, mean, sd)`, as in
/// [`EpochRecord::angles`] and [`EpochRecord::angles_w`]; `None` when no angle was measured.
pub fn mean_angle(angles: &[(usize, f64, f64)]) -> Option<f64> {
    if angles.is_empty() {
        None
    } else {
        Some(angles.iter().map(|a| a.1).sum::<f64>() / angles.len() as f64)
    }
}

/// The monitor's comparison of one epoch with the previous one: the relative error grew
/// by more than `factor` and is above `floor`, and/or the mean angle on the forward
/// weights grew by more than `factor` and is above 1°.
fn divergence_alerts(
    prev: Option<&EpochRecord>,
    relative: f64,
    angles: &[(usize, f64, f64)],
    angles_w: &[(usize, f64, f64)],
    factor: f64,
    floor: f64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if let Some(prev) = prev {
        let before = prev.relative_reconstruction_error;
        if relative.is_finite() && relative > floor && before > 0.0 && relative > factor * before {
            alerts.push(Alert::ReconstructionRising { previous: before, current: relative });
        }
        if let (Some(now), Some(before)) = (mean_angle(angles_w), mean_angle(&prev.angles_w)) {
            if now > ANGLE_ALERT_FLOOR_DEG && now > factor * before {
                alerts.push(Alert::AngleRising { previous: before, current: now });
            }
        }
    }
    let (all, w) = (mean_angle(angles).unwrap_or(0.0), mean_angle(angles_w).unwrap_or(0.0));
    if all > ANGLE_LARGE_ALL_DEG || w > ANGLE_LARGE_W_DEG {
        alerts.push(Alert::AngleLarge { all_blocks: all, w });
    }
    alerts
}

/// What one epoch measured. Serialises to JSON with non-finite values as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean summed reconstruction error over the epoch's batches.
    #[serde(with = "json_f64")]
    pub reconstruction_error: f64,
    /// Mean relative reconstruction error over the epoch's batches
    /// ([`StepStats::relative_reconstruction_error`](crate::flow::StepStats::relative_reconstruction_error)).
    #[serde(with = "json_f64", default)]
    pub relative_reconstruction_error: f64,
    /// λ at the end of the epoch.
    #[serde(with = "json_f64")]
    pub lambda: f64,
    /// Mean partial training log-likelihood (without the linear layers' log-dets).
    #[serde(with = "json_f64")]
    pub train_partial_log_prob: f64,
    /// Exact validation NLL in nats per example.
    #[serde(with = "json_f64")]
    pub val_nll: f64,
    /// The same in bits per dimension.
    #[serde(with = "json_f64")]
    pub val_bpd: f64,
    /// Seconds spent in training steps this epoch (evaluation excluded).
    pub train_seconds: f64,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
    /// Per self-normalizing layer (index in the flow): mean and standard deviation of the
    /// SNF-vs-exact gradient angle in degrees over the measured batches, all parameter
    /// blocks of the layer together ($W$, $R$, $b$).
    #[serde(with = "json_f64::triples")]
    pub angles: Vec<(usize, f64, f64)>,
    /// The same for the forward weight block alone ($W$ or $w$): the likelihood parts of the
    /// two gradients differ only by the log-det surrogate there (fc.md, Consequence 2).
    #[serde(with = "json_f64::triples")]
    pub angles_w: Vec<(usize, f64, f64)>,
    /// Per self-normalizing layer (index in the flow): mean and standard deviation over the
    /// epoch's steps of its relative reconstruction error
    /// ([`FlowWorkspace::layer_relative_errors`](crate::flow::FlowWorkspace::layer_relative_errors)),
    /// so the layer whose inverse fails can be told apart.
    #[serde(with = "json_f64::triples", default)]
    pub layer_relative_errors: Vec<(usize, f64, f64)>,
    /// Steps skipped because the loss or a gradient was not finite.
    pub skipped_steps: usize,
    /// What the divergence monitor reported after this epoch (empty: nothing).
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

/// What a training step reports to [`Trainer::epoch_with`]'s callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// The epoch (1-based).
    pub epoch: usize,
    /// Steps done in this epoch (1-based).
    pub step: usize,
    /// Steps in this epoch.
    pub steps: usize,
    /// This step's summed reconstruction error.
    pub reconstruction_error: f64,
    /// This step's batch-mean partial log-likelihood (without the data-independent log-dets).
    pub partial_log_prob: f64,
    /// λ after this step.
    pub lambda: f64,
    /// Steps skipped so far this epoch (non-finite loss or gradients).
    pub skipped: usize,
}

/// Everything a [`Trainer`] carries from one epoch to the next besides the flow itself:
/// enough to continue training bit for bit (data order and dequantisation noise are
/// functions of the seed and the epoch). Saved in checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerState<T: Real> {
    /// Optimiser steps taken.
    pub step: u64,
    /// The penalty, with a GECO multiplier's current value and moving average.
    pub lambda: Lambda,
    /// Adam's state, one per transform (parameter-free transforms have empty ones).
    pub adam: Vec<AdamState<T>>,
    /// Best epoch so far and its validation NLL.
    pub best: Option<(usize, f64)>,
    /// The records of the epochs run so far, in order.
    pub history: Vec<EpochRecord>,
}

/// Trains one flow; owns its optimiser state and buffers (allocated once).
pub struct Trainer<T: Real> {
    flow: Flow<T>,
    cfg: TrainConfig,
    adams: Vec<Adam<T>>,
    grads: FlowGrads<T>,
    exact_grads: Option<FlowGrads<T>>,
    ws: FlowWorkspace<T>,
    batch: Mat<T>,
    order: Vec<usize>,
    lambda: Lambda,
    step: u64,
    best: Option<(usize, f64, Flow<T>)>,
    history: Vec<EpochRecord>,
}

impl<T: Real> Trainer<T> {
    /// A trainer for `flow` with `cfg`, using `par` for the layers' products.
    ///
    /// # Errors
    /// [`TrainConfig::validate`]'s errors, an Adam config error, a batch too large to
    /// allocate.
    pub fn new(flow: Flow<T>, cfg: TrainConfig, par: Par) -> Result<Self> {
        cfg.validate()?;
        let grads = flow.zero_grads();
        let adams = grads
            .layers
            .iter()
            .map(|g| Adam::new(cfg.adam, g.blocks().into_iter().map(|b| (b.nrows(), b.ncols()))).map(|a| a.with_par(par)))
            .collect::<Result<Vec<_>>>()?;
        let snf = flow.self_normalizing().next().is_some();
        let exact_grads = (snf && cfg.angle_batches > 0).then(|| flow.zero_grads());
        let ws = if exact_grads.is_some() { flow.exact_workspace(cfg.batch, par)? } else { flow.workspace(cfg.batch, par)? };
        let batch = crate::util::try_zeros(flow.dim(), cfg.batch)?;
        Ok(Self { flow, cfg, adams, grads, exact_grads, ws, batch, order: Vec::new(), lambda: cfg.lambda, step: 0, best: None, history: Vec::new() })
    }

    /// Continue a run from a saved [`TrainerState`] (see [`state`](Self::state)), with
    /// `flow` the flow at the end of the last completed epoch and `best_flow` the flow
    /// of the state's best epoch (required when the state has one).
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::InvalidArgument`] when the optimiser state does
    /// not fit the flow, the history is not the epochs `1..=n` in order, or the best flow
    /// is missing or of another dimension.
    pub fn resume(flow: Flow<T>, cfg: TrainConfig, par: Par, state: TrainerState<T>, best_flow: Option<Flow<T>>) -> Result<Self> {
        const OP: &str = "Trainer::resume";
        let mut t = Self::new(flow, cfg, par)?;
        if state.adam.len() != t.adams.len() {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} optimiser states for {} layers", state.adam.len(), t.adams.len()) });
        }
        for (adam, s) in t.adams.iter_mut().zip(state.adam) {
            adam.set_state(s)?;
        }
        if state.history.iter().enumerate().any(|(i, r)| r.epoch != i + 1) {
            return Err(Error::InvalidArgument { op: OP, reason: "the history is not epochs 1, 2, ... in order".into() });
        }
        let same_model = |f: &Flow<T>| {
            f.shape() == t.flow.shape()
                && f.layers().len() == t.flow.layers().len()
                && f.layers()
                    .iter()
                    .zip(t.flow.layers())
                    .all(|(a, b)| a.spec() == b.spec() && a.params().iter().map(|p| p.value.shape()).eq(b.params().iter().map(|p| p.value.shape())))
        };
        t.best = match (state.best, best_flow) {
            (None, _) => None,
            (Some(_), Some(f)) if !same_model(&f) => {
                return Err(Error::InvalidArgument { op: OP, reason: "the best flow is another model than the one being resumed".into() })
            }
            (Some((e, nll)), Some(f)) if e >= 1 && e <= state.history.len() => Some((e, nll, f)),
            (Some(_), _) => return Err(Error::InvalidArgument { op: OP, reason: "the state's best epoch needs its flow".into() }),
        };
        t.step = state.step;
        t.lambda = state.lambda;
        t.history = state.history;
        Ok(t)
    }

    /// A snapshot of the training state (for checkpoints; see [`resume`](Self::resume)).
    pub fn state(&self) -> TrainerState<T> {
        TrainerState {
            step: self.step,
            lambda: self.lambda,
            adam: self.adams.iter().map(Adam::state).collect(),
            best: self.best.as_ref().map(|(e, n, _)| (*e, *n)),
            history: self.history.clone(),
        }
    }

    /// The records of the epochs run so far.
    pub fn history(&self) -> &[EpochRecord] {
        &self.history
    }
    /// The next epoch to run (1-based).
    pub fn next_epoch(&self) -> usize {
        self.history.len() + 1
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    /// The current λ.
    pub fn lambda(&self) -> f64 {
        self.lambda.value()
    }

    /// The flow being trained.
    pub fn flow(&self) -> &Flow<T> {
        &self.flow
    }
    /// The best flow so far by validation NLL, with its epoch and NLL.
    pub fn best(&self) -> Option<(usize, f64, &Flow<T>)> {
        self.best.as_ref().map(|(e, n, f)| (*e, *n, f))
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Run epoch [`next_epoch`](Self::next_epoch) over `train` (full batches only, in
    /// the order fixed by seed and epoch), then the exact NLL on `valid`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the reconstruction error passes the divergence
    /// threshold; the layers' errors.
    pub fn epoch<D: Dataset>(&mut self, train: &D, valid: &D) -> Result<EpochRecord> {
        self.epoch_with(train, valid, |_| {})
    }

    /// [`epoch`](Self::epoch), calling `progress` after every training step (for progress
    /// displays; it runs between steps, so it costs nothing inside them).
    ///
    /// # Errors
    /// As [`epoch`](Self::epoch).
    pub fn epoch_with<D: Dataset>(&mut self, train: &D, valid: &D, mut progress: impl FnMut(&StepProgress)) -> Result<EpochRecord> {
        const OP: &str = "Trainer::epoch";
        check_data(OP, train, self.flow.shape())?;
        check_data(OP, valid, self.flow.shape())?;
        let epoch = self.next_epoch();
        let n = train.len();
        let bsz = self.cfg.batch;
        let steps_per_epoch = n / bsz;
        if steps_per_epoch == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{n} training examples is less than one batch of {bsz}") });
        }
        let mut order = std::mem::take(&mut self.order);
        epoch_order(n, self.cfg.seed, epoch as u64, &mut order);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch as u64);
        let warmup_steps = (self.cfg.warmup_epochs * steps_per_epoch as f64).max(0.0);
        // a flow whose learned inverses carry no penalty has no constraint for λ to steer
        let steers_lambda = self.flow.uses_penalty();
        let (mut recon_sum, mut rel_sum, mut logp_sum, mut counted, mut skipped) = (0.0, 0.0, 0.0, 0usize, 0usize);
        let mut angle_samples: Vec<Vec<f64>> = vec![Vec::new(); self.flow.layers().len()];
        let mut angle_w_samples: Vec<Vec<f64>> = vec![Vec::new(); self.flow.layers().len()];
        // per layer: sum and sum of squares of the relative reconstruction error
        let mut layer_err = vec![(0.0f64, 0.0f64); self.flow.layers().len()];
        let t0 = Instant::now();
        let mut angle_time = 0.0;
        for s in 0..steps_per_epoch {
            let idx = &order[s * bsz..(s + 1) * bsz];
            load_dequantized(train, idx, &mut self.batch, &mut rng)?;
            if self.step == 0 && s == 0 {
                // data-dependent initialisation (ActNorm) from the very first batch only
                self.flow.data_init(self.batch.as_ref(), self.ws.par())?;
            }
            let penalty = self.lambda.penalty();
            let x = self.batch.as_ref();
            // the exact path only measures the angle: where it cannot (a singular or
            // non-finite exact gradient) the batch goes unmeasured and training goes on
            let mut measured = false;
            if s < self.cfg.angle_batches {
                if let Some(eg) = self.exact_grads.as_mut() {
                    let ta = Instant::now();
                    match self.flow.exact_gradients_with(x, eg, &mut self.ws, penalty) {
                        Ok(()) => measured = eg.all_finite(),
                        Err(Error::Singular { .. } | Error::NonFinite { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    angle_time += ta.elapsed().as_secs_f64();
                }
            }
            let stats = match self.flow.gradients_with(x, &mut self.grads, &mut self.ws, penalty) {
                Ok(s) => s,
                Err(e @ (Error::Singular { .. } | Error::NonFinite { .. })) => {
                    self.order = order;
                    return Err(Error::InvalidArgument {
                        op: OP,
                        reason: format!("training diverged at epoch {epoch}, step {s}: {e} (the learning rate {:e} is likely too large)", self.cfg.adam.lr),
                    });
                }
                Err(e) => return Err(e),
            };
            if let (true, Some(eg)) = (measured, self.exact_grads.as_ref()) {
                for k in self.flow.self_normalizing() {
                    let a = self.grads.layers[k].blocks();
                    let b = eg.layers[k].blocks();
                    // a zero or non-finite SNF gradient has no angle (the step is skipped below)
                    if let (Ok(all), Ok(w)) = (crate::grad::angle_degrees(&a, &b), crate::grad::angle_degrees(&a[..1], &b[..1])) {
                        angle_samples[k].push(all);
                        angle_w_samples[k].push(w);
                    }
                }
            }
            if !(stats.reconstruction_error.is_finite() && stats.partial_log_prob.is_finite() && self.grads.all_finite_with(self.ws.par())) {
                skipped += 1;
                continue;
            }
            if stats.reconstruction_error > self.cfg.max_reconstruction_error {
                self.order = order;
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: format!(
                        "training diverged: reconstruction error {:.3e} > {:.1e} at epoch {epoch}, step {s} (increase lambda, or lower the learning rate {:e})",
                        stats.reconstruction_error, self.cfg.max_reconstruction_error, self.cfg.adam.lr
                    ),
                });
            }
            if let Some(c) = self.cfg.clip_norm {
                let norm = self.grads.norm();
                if norm > c {
                    self.grads.scale(T::from_f64(c / norm));
                }
            }
            self.step += 1;
            let lr = if warmup_steps > 0.0 { self.cfg.adam.lr * (self.step as f64 / warmup_steps).min(1.0) } else { self.cfg.adam.lr };
            for ((layer, g), adam) in self.flow.layers_mut().iter_mut().zip(&self.grads.layers).zip(&mut self.adams) {
                adam.set_lr(lr);
                adam.step(layer.params_mut().into_iter().zip(g.blocks()))?;
            }
            self.flow.after_step(&mut self.ws)?;
            if steers_lambda {
                self.lambda.update(stats.reconstruction_error, stats.relative_reconstruction_error);
            }
            recon_sum += stats.reconstruction_error;
            rel_sum += stats.relative_reconstruction_error;
            for (acc, &e) in layer_err.iter_mut().zip(self.ws.layer_relative_errors()) {
                acc.0 += e;
                acc.1 += e * e;
            }
            logp_sum += stats.partial_log_prob;
            counted += 1;
            progress(&StepProgress {
                epoch,
                step: s + 1,
                steps: steps_per_epoch,
                reconstruction_error: stats.reconstruction_error,
                partial_log_prob: stats.partial_log_prob,
                lambda: self.lambda.value(),
                skipped,
            });
        }
        self.order = order;
        let train_seconds = t0.elapsed().as_secs_f64() - angle_time;
        let t1 = Instant::now();
        let (val_nll, val_bpd) = self.evaluate(valid)?;
        let eval_seconds = t1.elapsed().as_secs_f64();
        if self.best.as_ref().is_none_or(|(_, b, _)| val_nll < *b) {
            self.best = Some((epoch, val_nll, self.flow.clone()));
        }
        let summarise = |samples: &[Vec<f64>]| -> Vec<(usize, f64, f64)> {
            samples
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| {
                    let m = v.iter().sum::<f64>() / v.len() as f64;
                    let sd = (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len() as f64).sqrt();
                    (k, m, sd)
                })
                .collect()
        };
        let (angles, angles_w) = (summarise(&angle_samples), summarise(&angle_w_samples));
        let c = counted.max(1) as f64;
        let relative_reconstruction_error = rel_sum / c;
        let layer_relative_errors = if counted == 0 {
            Vec::new()
        } else {
            self.flow.self_normalizing().filter_map(|k| layer_err.get(k).map(|&(s1, s2)| (k, s1 / c, (s2 / c - (s1 / c) * (s1 / c)).max(0.0).sqrt()))).collect()
        };
        let alerts = self.monitor(epoch, relative_reconstruction_error, &angles, &angles_w);
        let record = EpochRecord {
            epoch,
            reconstruction_error: recon_sum / c,
            relative_reconstruction_error,
            lambda: self.lambda.value(),
            train_partial_log_prob: logp_sum / c,
            val_nll,
            val_bpd,
            train_seconds,
            eval_seconds,
            angles,
            angles_w,
            layer_relative_errors,
            skipped_steps: skipped,
            alerts,
        };
        self.history.push(record.clone());
        Ok(record)
    }

    /// The divergence monitor (see [`TrainConfig::divergence_factor`]): compares this
    /// epoch with the previous one once both are past the warm-up, and lets λ react.
    fn monitor(&mut self, epoch: usize, relative: f64, angles: &[(usize, f64, f64)], angles_w: &[(usize, f64, f64)]) -> Vec<Alert> {
        let warm = self.cfg.warmup_epochs.ceil();
        let Some(factor) = self.cfg.divergence_factor else {
            return Vec::new();
        };
        if (epoch as f64) <= warm || self.flow.self_normalizing().next().is_none() {
            return Vec::new();
        }
        let prev = self.history.last().filter(|p| p.epoch as f64 > warm);
        // an adaptive λ lets the error rise toward its target on purpose: only a rise past it counts
        let floor = self.lambda.relative_target().unwrap_or(0.0);
        let mut alerts = divergence_alerts(prev, relative, angles, angles_w, factor, floor);
        // the controller already answers a rising error; what it cannot see is the angle
        let angle = alerts.iter().any(|a| matches!(a, Alert::AngleRising { .. } | Alert::AngleLarge { .. }));
        if angle && self.lambda.react_to_divergence() {
            if let Some(target) = self.lambda.relative_target() {
                alerts.push(Alert::LambdaTightened { target });
            }
        }
        alerts
    }

    /// Exact NLL of `data` (nats per example, and bits per dimension) under the current
    /// flow: the data-independent log-dets once (Eqs. 6–7), then batched forward passes,
    /// with dequantisation noise from a fixed seed so that epochs are comparable.
    ///
    /// # Errors
    /// The LU's errors (a singular layer), the layers' errors.
    pub fn evaluate<D: Dataset>(&mut self, data: &D) -> Result<(f64, f64)> {
        evaluate(&self.flow, data, self.cfg.batch, self.cfg.seed, &mut self.ws, &mut self.batch)
    }
}

/// Fill the first `idx.len()` columns of `batch` with examples `idx` of `data`, dequantised
/// as the data set says (pixel values plus $U[0, 1)$ noise from `rng`, or as they are).
fn load_dequantized<T: Real, D: Dataset>(data: &D, idx: &[usize], batch: &mut Mat<T>, rng: &mut impl Rng) -> Result<()> {
    let b = idx.len();
    data.fill_batch(idx, batch.as_mut().subcols_mut(0, b))?;
    if data.dequantization() == Dequantization::Uniform {
        for j in 0..b {
            for v in batch.col_mut(j).iter_mut() {
                *v += T::from_f64(rng.random::<f64>());
            }
        }
    }
    Ok(())
}

/// A data set the flow can take, with at least one example.
fn check_data<D: Dataset>(op: &'static str, data: &D, shape: crate::shape::Shape) -> Result<()> {
    if !(data.shape().fits(shape) || shape.fits(data.shape())) {
        return Err(Error::InvalidArgument { op, reason: format!("examples of shape {}, the flow takes {shape}", data.shape()) });
    }
    if data.is_empty() {
        return Err(Error::InvalidArgument { op, reason: "the data set is empty".into() });
    }
    Ok(())
}

/// Exact NLL of `data` under `flow` in nats per example and bits per dimension (see
/// [`Trainer::evaluate`]); `ws` and `batch` must hold `batch_size` columns.
///
/// # Errors
/// As [`Trainer::evaluate`].
pub fn evaluate<T: Real, D: Dataset>(
    flow: &Flow<T>,
    data: &D,
    batch_size: usize,
    seed: u64,
    ws: &mut FlowWorkspace<T>,
    batch: &mut Mat<T>,
) -> Result<(f64, f64)> {
    let static_ld = flow.static_log_det(ws)?;
    evaluate_given(flow, static_ld, data, batch_size, seed, ws, batch)
}

/// [`evaluate`] with the data-independent log-det $\sum_k\log|\det W_k|$ given (e.g. the
/// value cached in a checkpoint) instead of computed.
///
/// # Errors
/// Shape errors, the layers' errors.
pub fn evaluate_given<T: Real, D: Dataset>(
    flow: &Flow<T>,
    static_ld: f64,
    data: &D,
    batch_size: usize,
    seed: u64,
    ws: &mut FlowWorkspace<T>,
    batch: &mut Mat<T>,
) -> Result<(f64, f64)> {
    const OP: &str = "train::evaluate";
    check_data(OP, data, flow.shape())?;
    if batch_size == 0 || batch_size > ws.max_batch() || batch.ncols() < batch_size || batch.nrows() != flow.dim() {
        return Err(Error::InvalidArgument {
            op: OP,
            reason: format!(
                "batch size {batch_size} must be positive and fit the workspace ({}) and the {}x{} buffer",
                ws.max_batch(),
                batch.nrows(),
                batch.ncols()
            ),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_E7A1);
    let mut lp = vec![0.0; batch_size];
    let (mut total, mut n) = (0.0, 0usize);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size) {
        let b = chunk.len();
        load_dequantized(data, chunk, batch, &mut rng)?;
        flow.log_prob_given(batch.as_ref().subcols(0, b), static_ld, ws, &mut lp[..b])?;
        total -= lp[..b].iter().sum::<f64>();
        n += b;
    }
    let nll = total / n as f64;
    Ok((nll, nll / (flow.dim() as f64 * std::f64::consts::LN_2)))
}

#[cfg(test)]
mod monitor_tests {
    use super::*;

    fn record(relative: f64, angle: f64) -> EpochRecord {
        EpochRecord {
            epoch: 5,
            reconstruction_error: 0.0,
            relative_reconstruction_error: relative,
            lambda: 1.0,
            train_partial_log_prob: 0.0,
            val_nll: 0.0,
            val_bpd: 0.0,
            train_seconds: 0.0,
            eval_seconds: 0.0,
            angles: vec![],
            angles_w: vec![(1, angle, 0.0), (3, angle, 0.0)],
            layer_relative_errors: vec![],
            skipped_steps: 0,
            alerts: vec![],
        }
    }

    #[test]
    fn reports_a_rise_past_the_factor_and_nothing_below_it() {
        let prev = record(1e-3, 2.0);
        let all = [(1, 10.0, 0.0)];
        // 24 % more error and angle: under the 25 % factor, nothing
        assert!(divergence_alerts(Some(&prev), 1.24e-3, &all, &[(1, 2.48, 0.0)], 1.25, 0.0).is_empty());
        // 26 %: both reported, with the numbers
        let a = divergence_alerts(Some(&prev), 1.26e-3, &all, &[(1, 2.52, 0.0)], 1.25, 0.0);
        assert_eq!(a, vec![Alert::ReconstructionRising { previous: 1e-3, current: 1.26e-3 }, Alert::AngleRising { previous: 2.0, current: 2.52 }]);
    }

    #[test]
    fn ignores_rises_below_the_target_and_below_one_degree() {
        let prev = record(1e-4, 0.3);
        // the error tripled but is still under the adaptive target 1e-3; the angle tripled to 0.9 deg
        assert!(divergence_alerts(Some(&prev), 3e-4, &[], &[(1, 0.9, 0.0)], 1.25, 1e-3).is_empty());
        // past the target it counts
        assert_eq!(divergence_alerts(Some(&prev), 2e-3, &[], &[], 1.25, 1e-3).len(), 1);
    }

    #[test]
    fn large_angles_are_reported_without_a_previous_epoch() {
        // 29 deg over all blocks and 4.9 deg on W: healthy enough, nothing
        assert!(divergence_alerts(None, 1e-3, &[(1, 29.0, 0.0)], &[(1, 4.9, 0.0)], 1.25, 0.0).is_empty());
        // 31 deg over all blocks: reported, with both means
        assert_eq!(
            divergence_alerts(None, 1e-3, &[(1, 31.0, 0.0), (3, 31.0, 0.0)], &[(1, 1.0, 0.0)], 1.25, 0.0),
            vec![Alert::AngleLarge { all_blocks: 31.0, w: 1.0 }]
        );
        // 5.1 deg on W alone is enough
        assert_eq!(divergence_alerts(None, 1e-3, &[(1, 10.0, 0.0)], &[(1, 5.1, 0.0)], 1.25, 0.0).len(), 1);
    }
}
