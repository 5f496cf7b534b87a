//! Per-dimension standardisation as a flow layer: a fixed affine map whose log-det counts in
//! the reported likelihood.

use faer::{MatMut, MatRef, Par};

use crate::data::Dataset;
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{Grads, Tape, Transform, Workspace};

/// $y_i = (x_i - \mu_i)/\sigma_i$ with $\mu$, $\sigma$ fixed (not trained), typically the
/// training data's per-dimension mean and standard deviation ([`fit`](Self::fit)).
/// $\log|\det J| = -\sum_i\log\sigma_i$, the same for every example: it is reported as the
/// data-independent part (Eqs. 6–7), so the NLL stays that of the raw data.
///
/// Why a self-normalizing flow wants it in front of unscaled data: a layer whose input
/// has scale $c$ must learn $W\approx c^{-1}$ and its inverse $R\approx c$, and Adam moves
/// each parameter by about the learning rate per step, so for $c = 100$ the inverse needs
/// tens of thousands of steps to catch up while the reconstruction error and λ climb. The
/// exact twin never learns $R$. Images need none of this: the logit preprocessing fixes
/// their scale (`docs/results.md`, "Toy densities").
///
/// ```
/// use snf::prelude::*;
/// use snf::layers::Standardize;
/// let data = snf::data::Tensor::flat(snf::faer::mat![[100.0, 300.0, 200.0], [-1.0, 1.0, 0.0]])?;
/// let s = Standardize::fit(&data)?;
/// assert_eq!(s.mean(), &[200.0, 0.0]);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Standardize {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Standardize {
    /// From a mean and a standard deviation per dimension.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for empty or unequal lengths, a non-finite mean, or a
    /// standard deviation that is not a positive finite number.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        const OP: &str = "Standardize::new";
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::InvalidArgument { op: OP, reason: format!("need equal, non-zero lengths, got {} and {}", mean.len(), std.len()) });
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("mean {m} is not finite") });
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("standard deviation {s} is not a positive finite number") });
        }
        Ok(Self { mean, std })
    }

    /// The per-dimension mean and standard deviation of `data` (population formula, in
    /// f64). A dimension with zero spread gets $\sigma = 1$ (it is only centred).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty data set or non-finite values; the data
    /// set's errors.
    pub fn fit<D: Dataset>(data: &D) -> Result<Self> {
        let (n, d) = (data.len(), data.shape().dim());
        if n == 0 || d == 0 {
            return Err(Error::InvalidArgument { op: "Standardize::fit", reason: "empty data set".into() });
        }
        let chunk = 256.min(n);
        let mut buf = crate::util::try_zeros::<f64>(d, chunk)?;
        let (mut sum, mut sq) = (vec![0.0; d], vec![0.0; d]);
        // two passes (mean, then spread about it): no cancellation for data far from 0
        for pass in 0..2 {
            let mut start = 0;
            while start < n {
                let idx: Vec<usize> = (start..(start + chunk).min(n)).collect();
                data.fill_batch(idx.as_slice(), buf.as_mut().subcols_mut(0, idx.len()))?;
                for j in 0..idx.len() {
                    for i in 0..d {
                        let v = buf[(i, j)];
                        if pass == 0 {
                            sum[i] += v;
                        } else {
                            let c = v - sum[i];
                            sq[i] += c * c;
                        }
                    }
                }
                start += idx.len();
            }
            if pass == 0 {
                sum.iter_mut().for_each(|s| *s /= n as f64);
            }
        }
        let std = sq.iter().map(|s| if *s > 0.0 { (s / n as f64).sqrt() } else { 1.0 }).collect();
        Self::new(sum, std)
    }

    /// $\mu$.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// $\sigma$.
    pub fn std(&self) -> &[f64] {
        &self.std
    }
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

impl<T: Real> Transform<T> for Standardize {
    fn kind(&self) -> &'static str {
        "standardize"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if input.dim() != self.dim() {
            return Err(Error::InvalidArgument { op: "Standardize", reason: format!("fitted to {} dimensions, got input {input}", self.dim()) });
        }
        Ok(input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new((), max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "Standardize::forward";
        check_shape(OP, (self.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (y.nrows(), y.ncols()))?;
        check_shape(OP, (x.ncols(), 1), (logdet.len(), 1))?;
        let mut y = y;
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                y[(i, j)] = T::from_f64((x[(i, j)].as_f64() - self.mean[i]) / self.std[i]);
            }
        }
        Ok(ws.record(x))
    }
    /// $\delta_x = \delta_y/\sigma$: the log-det does not depend on $x$.
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        _grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        _lambda: T,
    ) -> Result<f64> {
        const OP: &str = "Standardize::backward";
        ws.consume(tape, x)?;
        check_shape(OP, (x.nrows(), x.ncols()), (dy.nrows(), dy.ncols()))?;
        check_shape(OP, (x.nrows(), x.ncols()), (dx.nrows(), dx.ncols()))?;
        let mut dx = dx;
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                dx[(i, j)] = T::from_f64(dy[(i, j)].as_f64() / self.std[i]);
            }
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, _ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "Standardize::inverse";
        check_shape(OP, (self.dim(), y.ncols()), (y.nrows(), y.ncols()))?;
        check_shape(OP, (y.nrows(), y.ncols()), (x.nrows(), x.ncols()))?;
        let mut x = x;
        for j in 0..y.ncols() {
            for i in 0..y.nrows() {
                x[(i, j)] = T::from_f64(y[(i, j)].as_f64() * self.std[i] + self.mean[i]);
            }
        }
        Ok(())
    }
    /// $-\sum_i\log\sigma_i$.
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        Ok(-self.std.iter().map(|s| s.ln()).sum::<f64>())
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({"kind": "standardize", "mean": self.mean, "std": self.std})
    }
}
