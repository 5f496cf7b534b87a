//! The reconstruction penalty λ: fixed, or a GECO-style Lagrange multiplier.

/// λ of Eq. 3.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Lambda {
    /// A constant λ.
    Fixed(f64),
    /// A multiplier steered so that the reconstruction error tracks a target.
    Geco(Geco),
}

/// A GECO-style multiplier (Rezende & Viola, 2018): with $C_t$ an exponential moving
/// average of the summed reconstruction error, $\log\lambda \mathrel{+}= \eta\,\log(C_t/c^\ast)$
/// (at most $\pm0.1$ per step), clamped to $[\lambda_{min}, \lambda_{max}]$. Unlike the
/// authors' version, which only ever grows λ, this one moves both ways: λ shrinks while the
/// error is below the target, so the likelihood is not penalised more than the constraint
/// needs. The update is symmetric in log space (an error $k$ times the target grows λ as
/// fast as an error $k$ times below shrinks it): a linear rule $\eta(C_t/c^\ast - 1)$ lets one
/// spike of the error inflate λ by orders of magnitude that it then takes epochs to undo
/// (seen on MNIST, `docs/results.md`).
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

impl Lambda {
    /// The current λ.
    pub fn value(&self) -> f64 {
        match self {
            Lambda::Fixed(l) => *l,
            Lambda::Geco(g) => g.lambda,
        }
    }

    /// Feed one step's reconstruction error.
    pub fn update(&mut self, reconstruction_error: f64) {
        if let Lambda::Geco(g) = self {
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
