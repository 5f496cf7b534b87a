//! Leaky ReLU.

use super::ScalarBijection;
use crate::real::Real;

/// $f(x) = x$ for $x \ge 0$ and $s x$ for $x < 0$, with slope $s > 0$.
///
/// $\log f'$ is $0$ or $\log s$: piecewise constant, so its gradient is 0 (everywhere but
/// at 0, a null set). The log-det therefore counts the negative inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakyRelu {
    slope: f64,
}

impl LeakyRelu {
    /// The activation with negative-side slope `slope`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless `slope` is finite and positive.
    pub fn new(slope: f64) -> crate::Result<Self> {
        if !(slope > 0.0 && slope.is_finite()) {
            return Err(crate::Error::InvalidArgument { op: "LeakyRelu::new", reason: format!("slope must be positive and finite, got {slope}") });
        }
        Ok(Self { slope })
    }
    /// The negative-side slope.
    pub fn slope(&self) -> f64 {
        self.slope
    }
}

impl ScalarBijection for LeakyRelu {
    fn value<F: Real>(&self, x: F) -> F {
        if x >= F::zero() {
            x
        } else {
            F::from_f64(self.slope) * x
        }
    }
    fn derivative<F: Real>(&self, x: F) -> F {
        if x >= F::zero() {
            F::one()
        } else {
            F::from_f64(self.slope)
        }
    }
    fn log_derivative<F: Real>(&self, x: F) -> F {
        if x >= F::zero() {
            F::zero()
        } else {
            F::from_f64(self.slope.ln())
        }
    }
    fn log_derivative_grad<F: Real>(&self, _x: F) -> F {
        F::zero()
    }
    fn inverse(&self, y: f64) -> f64 {
        if y >= 0.0 {
            y
        } else {
            y / self.slope
        }
    }
}
