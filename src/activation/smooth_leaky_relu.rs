//! The smooth leaky ReLU of Gresele et al. (2020), used between the FC layers.

use num_traits::Float;

use super::{sigmoid, softplus, ScalarBijection};
use crate::real::{exp_fast, ln_fast, Real};

/// $f(x) = \alpha x + (1-\alpha)\,\mathrm{softplus}(x)$ with $0 < \alpha < 1$ (the paper uses
/// $\alpha = 0.3$).
///
/// $f'(x) = \alpha + (1-\alpha)\sigma(x) \in (\alpha, 1)$, and
/// $\frac{d}{dx}\log f'(x) = (1-\alpha)\sigma(x)(1-\sigma(x))/f'(x)$. $f$ is strictly increasing
/// and convex, so its inverse is found by Newton's method started at an upper bound of the
/// root (which then converges monotonically from above), safeguarded by the bracket
/// $$\ell(y) \le f^{-1}(y) \le u(y),\quad u = \begin{cases}y & y\ge0\\ y/\alpha & y<0\end{cases},\quad
/// \ell = \begin{cases}y - c & y - c\ge0\\ (y - c)/\alpha & y-c<0\end{cases},\quad c = (1-\alpha)\log 2,$$
/// from $\max(0,x) \le \mathrm{softplus}(x) \le \max(0,x) + \log 2$.
///
/// # Example
/// ```
/// use snf::activation::{ScalarBijection, SmoothLeakyRelu};
/// let f = SmoothLeakyRelu::new(0.3)?;
/// let y = f.value(-2.5);
/// assert!((f.inverse(y) + 2.5).abs() < 1e-12);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothLeakyRelu {
    alpha: f64,
}

impl SmoothLeakyRelu {
    /// The activation with slope `alpha` at $-\infty$.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) unless $0 < \alpha < 1$.
    pub fn new(alpha: f64) -> crate::Result<Self> {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(crate::Error::InvalidArgument { op: "SmoothLeakyRelu::new", reason: format!("alpha must be in (0, 1), got {alpha}") });
        }
        Ok(Self { alpha })
    }
    /// $\alpha$.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

/// $t = e^{-|x|} \in (0, 1]$ and $\sigma(x) = 1/(1 + t)$ for $x \ge 0$, $t/(1 + t)$
/// otherwise: the one exponential both passes need, branch-free (a select) so that batches
/// vectorise, and without overflow for any $x$.
#[inline(always)]
fn exp_neg_abs_and_sigmoid<F: Real>(x: F) -> (F, F) {
    let one = F::one();
    let t = exp_fast(-Float::abs(x));
    let num = if x >= F::zero() { one } else { t };
    (t, num / (one + t))
}

impl ScalarBijection for SmoothLeakyRelu {
    fn value<F: Real>(&self, x: F) -> F {
        let a = F::from_f64(self.alpha);
        a * x + (F::one() - a) * softplus(x)
    }
    fn derivative<F: Real>(&self, x: F) -> F {
        let a = F::from_f64(self.alpha);
        a + (F::one() - a) * sigmoid(x)
    }
    fn log_derivative<F: Real>(&self, x: F) -> F {
        Float::ln(self.derivative(x))
    }
    fn log_derivative_grad<F: Real>(&self, x: F) -> F {
        self.derivative_and_log_derivative_grad(x).1
    }
    #[inline(always)]
    fn value_and_log_derivative<F: Real>(&self, x: F) -> (F, F) {
        // one exp and two logs, branch-free so that batches vectorise:
        // t = e^{-|x|} in (0, 1], softplus = max(x, 0) + ln(1 + t) (1 + t in (1, 2]: no
        // cancellation, so ln rather than ln_1p is accurate to the absolute error of f),
        // sigma = 1/(1 + t) for x >= 0 and t/(1 + t) otherwise; a + (1 - a) sigma is in
        // [a, 1], inside the domain of the fast ln
        let (a, one) = (F::from_f64(self.alpha), F::one());
        let (t, s) = exp_neg_abs_and_sigmoid(x);
        let sp = Float::max(x, F::zero()) + ln_fast(one + t);
        (a * x + (one - a) * sp, ln_fast(a + (one - a) * s))
    }
    #[inline(always)]
    fn derivative_and_log_derivative_grad<F: Real>(&self, x: F) -> (F, F) {
        let (a, one) = (F::from_f64(self.alpha), F::one());
        let (_, s) = exp_neg_abs_and_sigmoid(x);
        let d = a + (one - a) * s;
        (d, (one - a) * s * (one - s) / d)
    }
    fn inverse(&self, y: f64) -> f64 {
        if !y.is_finite() {
            return y;
        }
        let a = self.alpha;
        let c = (1.0 - a) * std::f64::consts::LN_2;
        let hi = if y >= 0.0 { y } else { y / a };
        let lo = if y - c >= 0.0 { y - c } else { (y - c) / a };
        if !hi.is_finite() || !lo.is_finite() {
            // the preimage lies outside the f64 range
            return hi;
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut x = hi;
        for _ in 0..200 {
            let r = self.value(x) - y;
            if r == 0.0 {
                return x;
            }
            // keep the bracket: f is increasing
            if r > 0.0 {
                hi = hi.min(x);
            } else {
                lo = lo.max(x);
            }
            let step = r / self.derivative(x);
            if step.abs() <= 2.0 * f64::EPSILON * x.abs().max(f64::MIN_POSITIVE) {
                return x - step;
            }
            let mut next = x - step;
            if !(next >= lo && next <= hi) {
                next = 0.5 * (lo + hi);
            }
            x = next;
        }
        x
    }
}
