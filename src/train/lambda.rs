//! The reconstruction penalty λ: fixed, a GECO-style multiplier on the absolute error, or
//! (the default) an adaptive multiplier on the scale-free relative error.

use crate::flow::Penalty;

/// λ of Eq. 3.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Lambda {
    /// A constant λ.
    Fixed(f64),
    /// A multiplier steered so that the summed (absolute) reconstruction error tracks a target.
    Geco(Geco),
    /// A multiplier steered so that the *relative* reconstruction error tracks a target: the
    /// default, needs no tuning per data set (`proofs/lambda.md`).
    Adaptive(Adaptive),
}

impl Default for Lambda {
    /// [`Adaptive::default`].
    fn default() -> Self {
        Lambda::Adaptive(Adaptive::default())
    }
}

/// A GECO-style multiplier (Rezende & Viola, 2018): with $C_t$ an exponential moving
/// average of the summed reconstruction error, $\log\lambda \mathrel{+}= \eta\,\log(C_t/c^\ast)$
/// (at most $\pm0.1$ per step), clamped to $[\lambda_{min}, \lambda_{max}]$. Unlike the
/// authors' version, which only ever grows λ, this one moves both ways: λ shrinks while the
/// error is below the target, so the likelihood is not penalised more than the constraint
/// needs. The update is symmetric in log space (an error $k$ times the target grows λ as
/// fast as an error $k$ times below shrinks it): a linear rule $\eta(C_t/c^\ast - 1)$ lets one
/// spike of the error inflate λ by orders of magnitude that it then takes epochs to undo
/// (seen on MNIST, `docs/results.md`). Its target is in the data's units: prefer
/// [`Adaptive`], whose target is not.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Geco {
    /// Target reconstruction error $c^\ast$ (sum over layers, batch mean).
    pub target: f64,
    /// Step size $\eta$ on $\log\lambda$.
    pub rate: f64,
    /// EMA factor of the constraint (e.g. 0.99).
    pub ema: f64,
    /// Bounds on λ.
    pub min: f64,
    /// Upper bound on λ.
    pub max: f64,
    /// Current λ.
    pub lambda: f64,
    /// Current moving average of the error (`None` before the first update).
    pub avg: Option<f64>,
}

impl Geco {
    /// A multiplier starting at `lambda` that steers the error to `target`, with step size
    /// $\eta = 10^{-3}$ per training step: with 500 steps per epoch, a sustained 5× error
    /// grows λ by at most $e^{0.8}$ per epoch. A rate of $10^{-2}$ (the first default) let
    /// one error spike inflate λ by $e^{8}$ within an epoch and stall the likelihood
    /// (`docs/results.md`, runs D and F).
    pub fn new(target: f64, lambda: f64) -> Self {
        Self { target, rate: 1e-3, ema: 0.99, min: 1e-3, max: 1e6, lambda, avg: None }
    }
}

/// A proportional-integral controller on $\log\lambda$ that holds the **relative**
/// reconstruction error $e_t$ ([`StepStats::relative_reconstruction_error`]: each
/// self-normalizing layer's $\lVert g(f(x))-x\rVert^2$ over its input's $\lVert x\rVert^2$,
/// averaged over layers) at a target $e^\ast$. With
/// $u_t = \operatorname{clamp}(\log(e_t/e^\ast), -u_{max}, u_{max})$ and
/// $m_t = \beta m_{t-1} + (1-\beta)u_t$ its moving average,
///
/// $$I_t = \operatorname{clamp}(I_{t-1} + k_i m_t),\qquad
///   \log\lambda_t = \operatorname{clamp}(I_t + k_p m_t),$$
///
/// both clamped to $[\log\lambda_{min}, \log\lambda_{max}]$ (the integral's clamp is the
/// anti-windup). It is dual ascent on the constraint $\log\bar e\le\log e^\ast$ plus a
/// proportional term that reacts within the EMA's time constant instead of waiting for
/// the integral, after ControlVAE (Shao et al., 2020). It lowers λ as readily as it raises
/// it. Derivation, stability argument and what it guarantees: `proofs/lambda.md`.
///
/// [`StepStats::relative_reconstruction_error`]: crate::flow::StepStats::relative_reconstruction_error
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adaptive {
    /// The target relative error $e^\ast$.
    pub target: f64,
    /// The smallest target the divergence monitor may tighten to.
    pub min_target: f64,
    /// Proportional gain $k_p$ on $\log\lambda$.
    pub gain_p: f64,
    /// Integral gain $k_i$ per training step.
    pub gain_i: f64,
    /// Clamp $u_{max}$ on the log error ratio.
    pub max_ratio_log: f64,
    /// EMA factor $\beta$ of the log error ratio.
    pub ema: f64,
    /// Lower bound on λ.
    pub min: f64,
    /// Upper bound on λ.
    pub max: f64,
    /// Current λ.
    pub lambda: f64,
    /// The integral state $I_t$ ($\log\lambda$ without the proportional part).
    pub integral: f64,
    /// Current moving average $m_t$ of the clamped log error ratio (`None` before the
    /// first update).
    pub avg: Option<f64>,
    /// Weigh each layer's penalty by its input's second moment ([`Penalty::Relative`]: a
    /// dimensionless λ) instead of the paper's Eq. 3. Off by default: on MNIST it made λ
    /// climb after the warm-up and the likelihood fall behind (proofs/lambda.md, §5).
    #[serde(default)]
    pub relative_penalty: bool,
}

/// The adaptive λ's default target for the relative reconstruction error.
pub const DEFAULT_RELATIVE_TARGET: f64 = 3e-3;

impl Default for Adaptive {
    /// Target relative error $3\cdot10^{-3}$, λ starting at 1 (the paper's), $k_p = 0.5$,
    /// $k_i = 2\cdot10^{-3}$, EMA 0.98, $u_{max} = 1$, $\lambda\in[10^{-3}, 10^{6}]$; the monitor may tighten the target to
    /// $1/16$ of its start. Chosen from the analysis in `proofs/lambda.md` and the runs in
    /// `docs/results.md` (MNIST, generated shapes, toy densities), not per data set.
    fn default() -> Self {
        Self::new(DEFAULT_RELATIVE_TARGET, 1.0)
    }
}

impl Adaptive {
    /// A controller holding the relative error at `target`, starting from `lambda`.
    pub fn new(target: f64, lambda: f64) -> Self {
        Self {
            target,
            min_target: target / 16.0,
            gain_p: 0.5,
            gain_i: 2e-3,
            max_ratio_log: 1.0,
            ema: 0.98,
            min: 1e-3,
            max: 1e6,
            lambda,
            integral: lambda.max(f64::MIN_POSITIVE).ln(),
            avg: None,
            relative_penalty: false,
        }
    }

    /// The controller for the conv projection fit's pull on $w$ (`proofs/projection.md` §4,
    /// `proofs/lambda.md` §6): it holds the relative error at `target` starting from
    /// `lambda`, with λ in $[10^{-3}, 1]$, an integral gain $k_i = 10^{-2}$ per step (five
    /// times [`new`](Self::new)'s) and one halving of the target by the divergence monitor
    /// at most.
    ///
    /// Why not [`new`](Self::new)'s settings: the pull acts on $w$ alone while the refit
    /// moves $r$, and above λ ≈ 1 the two chased each other on MNIST (the error spiked
    /// 30-fold within an epoch, the likelihood fell 13 % behind); every angle alert halving
    /// the target drove λ there; and at the slower rate the error ran away before λ rose.
    ///
    /// ```
    /// use snf::train::{Adaptive, Lambda};
    /// use snf::flow::models::{CONV_PROJECTION_LAMBDA, CONV_PULL_TARGET};
    /// let mut lambda = Lambda::Adaptive(Adaptive::pull(CONV_PULL_TARGET, CONV_PROJECTION_LAMBDA));
    /// for _ in 0..5_000 {
    ///     lambda.update(f64::NAN, 1e-2); // an error 30x the target, every step
    /// }
    /// assert_eq!(lambda.value(), 1.0); // λ stops at its bound
    /// ```
    pub fn pull(target: f64, lambda: f64) -> Self {
        Self { min_target: target / 2.0, max: 1.0, gain_i: 1e-2, ..Self::new(target, lambda) }
    }

    fn update(&mut self, relative: f64) {
        if !relative.is_finite() || self.target.is_nan() || self.target <= 0.0 {
            return;
        }
        let u = (relative.max(f64::MIN_POSITIVE) / self.target).ln().clamp(-self.max_ratio_log, self.max_ratio_log);
        // the average starts at 0 (no evidence either way), so no single step moves λ far
        let m = self.ema * self.avg.unwrap_or(0.0) + (1.0 - self.ema) * u;
        self.avg = Some(m);
        let (lo, hi) = (self.min.ln(), self.max.ln());
        self.integral = (self.integral + self.gain_i * m).clamp(lo, hi);
        self.lambda = (self.integral + self.gain_p * m).clamp(lo, hi).exp();
    }

    /// The divergence monitor's reaction: halve the target (not below `min_target`); the
    /// integral then raises λ at its usual bounded rate (a sudden jump in the loss's scale
    /// makes Adam's steps jump too). Returns whether anything changed.
    fn tighten(&mut self) -> bool {
        if self.target <= self.min_target {
            return false;
        }
        self.target = (self.target / 2.0).max(self.min_target);
        true
    }
}

impl Lambda {
    /// The current λ.
    pub fn value(&self) -> f64 {
        match self {
            Lambda::Fixed(l) => *l,
            Lambda::Geco(g) => g.lambda,
            Lambda::Adaptive(a) => a.lambda,
        }
    }

    /// Feed one step's reconstruction error: the absolute (summed) one and the relative
    /// one. Non-finite errors are ignored.
    pub fn update(&mut self, reconstruction_error: f64, relative_reconstruction_error: f64) {
        match self {
            Lambda::Fixed(_) => {}
            Lambda::Adaptive(a) => a.update(relative_reconstruction_error),
            Lambda::Geco(g) => {
                if !reconstruction_error.is_finite() || g.target.is_nan() || g.target <= 0.0 {
                    return;
                }
                let avg = match g.avg {
                    None => reconstruction_error,
                    Some(a) => g.ema * a + (1.0 - g.ema) * reconstruction_error,
                };
                g.avg = Some(avg);
                let step = g.rate * (avg.max(f64::MIN_POSITIVE) / g.target).ln();
                g.lambda = (g.lambda * step.clamp(-0.1, 0.1).exp()).clamp(g.min, g.max);
            }
        }
    }

    /// React to a divergence alert: an [`Adaptive`] λ tightens its target (halves it, at
    /// most down to its `min_target`); a fixed or GECO λ is the user's choice and is left
    /// alone. Returns whether the target changed.
    pub fn react_to_divergence(&mut self) -> bool {
        match self {
            Lambda::Adaptive(a) => a.tighten(),
            _ => false,
        }
    }

    /// How the current λ weighs the reconstruction errors: the paper's Eq. 3
    /// ([`Penalty::Absolute`]), or each layer's error relative to its input
    /// ([`Penalty::Relative`]) for an adaptive λ with `relative_penalty` set.
    pub fn penalty(&self) -> Penalty {
        match self {
            Lambda::Adaptive(a) if a.relative_penalty => Penalty::Relative(a.lambda),
            other => Penalty::Absolute(other.value()),
        }
    }

    /// The relative-error target of an adaptive λ.
    pub fn relative_target(&self) -> Option<f64> {
        match self {
            Lambda::Adaptive(a) => Some(a.target),
            _ => None,
        }
    }
}
