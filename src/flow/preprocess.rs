//! Preprocessing as a flow layer (its log-det counts in the reported likelihood):
//! dequantised pixels $y \in [0, 256)$ are scaled to $[0, 1)$, squeezed into
//! $(\alpha, 1 - \alpha)$ and mapped through the logit.

use faer::{MatMut, MatRef};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// $z = \mathrm{logit}(s)$, $s = \alpha + (1 - 2\alpha)\,y/256$, with per-pixel log-det
/// $$\log\Big|\frac{dz}{dy}\Big| = -\log 256 + \log(1 - 2\alpha) - \log s - \log(1 - s).$$
///
/// With uniform dequantisation $y = x + u$, $u\sim U[0,1)^D$, the flow's $-\log p(y)$ is the
/// usual continuous NLL of MNIST in nats, and $-\log p(y)/(D\log 2)$ its bits per dimension.
/// The paper (and the authors' code) use $\alpha = 10^{-6}$.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    alpha: f64,
}

impl Preprocess {
    /// The logit preprocessing with squeeze `alpha` in $[0, 1/2)$.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `alpha` outside $[0, 1/2)$.
    pub fn new(alpha: f64) -> Result<Self> {
        if !(0.0..0.5).contains(&alpha) {
            return Err(Error::InvalidArgument { op: "Preprocess::new", reason: format!("alpha must be in [0, 0.5), got {alpha}") });
        }
        Ok(Self { alpha })
    }
    /// $\alpha$.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// `z = logit(alpha + (1 - 2 alpha) y / 256)`, adding the log-det of each column to `logdet`.
    ///
    /// # Errors
    /// Shape errors; [`Error::InvalidArgument`] if a value lies outside $[0, 256]$ (or, with
    /// $\alpha = 0$, on its boundary), where the logit is infinite or undefined.
    pub fn forward<T: Real>(&self, y: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64]) -> Result<()> {
        const OP: &str = "Preprocess::forward";
        check_shape(OP, (y.nrows(), y.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (y.ncols(), 1), (logdet.len(), 1))?;
        let a = self.alpha;
        let base = -(256f64.ln()) + (1.0 - 2.0 * a).ln();
        let mut z = z;
        for j in 0..y.ncols() {
            let mut ld = 0.0;
            for i in 0..y.nrows() {
                let v = y[(i, j)].as_f64();
                let s = a + (1.0 - 2.0 * a) * v / 256.0;
                if !(s > 0.0 && s < 1.0) {
                    return Err(Error::InvalidArgument { op: OP, reason: format!("pixel value {v} outside (0, 256) after the alpha squeeze") });
                }
                let (ls, l1s) = (s.ln(), (-s).ln_1p());
                z[(i, j)] = T::from_f64(ls - l1s);
                ld += base - ls - l1s;
            }
            logdet[j] += ld;
        }
        Ok(())
    }

    /// The inverse: `y = 256 (sigmoid(z) - alpha) / (1 - 2 alpha)`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn inverse<T: Real>(&self, z: MatRef<'_, T>, y: MatMut<'_, T>) -> Result<()> {
        check_shape("Preprocess::inverse", (z.nrows(), z.ncols()), (y.nrows(), y.ncols()))?;
        let a = self.alpha;
        let mut y = y;
        for j in 0..z.ncols() {
            for i in 0..z.nrows() {
                let s = crate::activation::sigmoid(z[(i, j)].as_f64());
                y[(i, j)] = T::from_f64(256.0 * (s - a) / (1.0 - 2.0 * a));
            }
        }
        Ok(())
    }
}
