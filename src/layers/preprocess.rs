//! Preprocessing as a flow layer (its log-det counts in the reported likelihood):
//! dequantised pixels $y \in [0, 256)$ are scaled to $[0, 1)$, squeezed into
//! $(\alpha, 1 - \alpha)$ and mapped through the logit.

use faer::reborrow::ReborrowMut;
use faer::{MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::{ln_fast, Real};
use crate::util::{col_map_sum, par_cols};

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
    pub fn forward<T: Real>(&self, y: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], par: Par) -> Result<()> {
        const OP: &str = "Preprocess::forward";
        check_shape(OP, (y.nrows(), y.ncols()), (z.nrows(), z.ncols()))?;
        check_shape(OP, (y.ncols(), 1), (logdet.len(), 1))?;
        let a = self.alpha;
        if let Some(v) = (0..y.ncols()).flat_map(|j| y.col(j).iter().copied()).find(|v| {
            let s = a + (1.0 - 2.0 * a) * v.as_f64() / 256.0;
            !(s > 0.0 && s < 1.0)
        }) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("pixel value {} outside (0, 256) after the alpha squeeze", v.as_f64()) });
        }
        let base = -(256f64.ln()) + (1.0 - 2.0 * a).ln();
        par_cols(((y, z), logdet), par, &|((y, mut z), ld): ((MatRef<'_, T>, MatMut<'_, T>), &mut [f64])| {
            for (j, l) in ld.iter_mut().enumerate() {
                let mut acc = 0.0;
                if core::mem::size_of::<T>() == 4 {
                    // f32 batches: the vectorisable logarithm in f32, whose absolute error
                    // (about 1e-6 per entry, 1e-7 after the squeeze's clamp) is far below
                    // what f32 activations carry anyway
                    let (ta, tc) = (T::from_f64(a), T::from_f64((1.0 - 2.0 * a) / 256.0));
                    let logs = col_map_sum(y.col(j), z.rb_mut().col_mut(j), |yi| {
                        let s = ta + tc * yi;
                        let (ls, l1s) = (ln_fast(s), ln_fast(T::one() - s));
                        (ls - l1s, (ls + l1s).as_f64())
                    });
                    acc = base * y.nrows() as f64 - logs;
                } else {
                    for (zi, yi) in z.rb_mut().col_mut(j).iter_mut().zip(y.col(j).iter()) {
                        let s = a + (1.0 - 2.0 * a) * yi.as_f64() / 256.0;
                        let (ls, l1s) = (s.ln(), (-s).ln_1p());
                        *zi = T::from_f64(ls - l1s);
                        acc += base - ls - l1s;
                    }
                }
                *l += acc;
            }
        });
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

impl<T: Real> crate::transform::Transform<T> for Preprocess {
    fn kind(&self) -> &'static str {
        "preprocess"
    }
    fn output_shape(&self, input: crate::shape::Shape) -> Result<crate::shape::Shape> {
        Ok(input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<crate::transform::Workspace<T>> {
        crate::transform::Workspace::new((), max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, logdet: &mut [f64], ws: &mut crate::transform::Workspace<T>) -> Result<crate::transform::Tape> {
        Preprocess::forward(self, x, y, logdet, ws.par())?;
        Ok(ws.record(x))
    }
    /// $\delta_y = c\,\delta_z/(s(1-s)) + c\,(2s - 1)/(s(1-s))$ with $c = (1-2\alpha)/256$:
    /// the chain rule through the logit plus the gradient of its own log-det.
    fn backward(
        &self,
        tape: crate::transform::Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        _grads: &mut crate::transform::Grads<T>,
        ws: &mut crate::transform::Workspace<T>,
        _lambda: T,
    ) -> Result<f64> {
        ws.consume(tape, x)?;
        check_shape("Preprocess::backward", (x.nrows(), x.ncols()), (dy.nrows(), dy.ncols()))?;
        check_shape("Preprocess::backward", (x.nrows(), x.ncols()), (dx.nrows(), dx.ncols()))?;
        let a = self.alpha;
        let c = (1.0 - 2.0 * a) / 256.0;
        let mut dx = dx;
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                let s = a + c * x[(i, j)].as_f64();
                let q = c / (s * (1.0 - s));
                dx[(i, j)] = T::from_f64(q * dy[(i, j)].as_f64() + q * (2.0 * s - 1.0));
            }
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, _ws: &mut crate::transform::Workspace<T>) -> Result<()> {
        Preprocess::inverse(self, y, x)
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({"kind": "preprocess", "alpha": self.alpha})
    }
}
