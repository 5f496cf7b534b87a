//! Base distributions of a flow: $\log p(z)$ per example, its gradient
//! $\partial\log p/\partial z$ (the delta that starts the backward sweep), and sampling.

use faer::{Mat, MatMut, MatRef};
use rand::RngCore;

use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// $\frac12\log 2\pi$.
pub(crate) const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// A distribution on $\mathbb R^D$ over `D x B` batches (one example per column).
pub trait Distribution<T: Real>: Send + Sync + std::fmt::Debug {
    /// $D$.
    fn dim(&self) -> usize;
    /// $\log p(z_b)$ of every column into `out` (length `B`), in `f64`.
    ///
    /// # Errors
    /// Shape errors.
    fn log_prob(&self, z: MatRef<'_, T>, out: &mut [f64]) -> Result<()>;
    /// $\partial\log p(z)/\partial z$ into `grad` (`D x B`).
    ///
    /// # Errors
    /// Shape errors.
    fn grad(&self, z: MatRef<'_, T>, grad: MatMut<'_, T>) -> Result<()>;
    /// Fill `out` (`D x B`) with independent draws.
    ///
    /// # Errors
    /// Shape errors.
    fn sample(&self, rng: &mut dyn RngCore, out: MatMut<'_, T>) -> Result<()>;
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn Distribution<T>>;
}

impl<T: Real> Clone for Box<dyn Distribution<T>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

fn check<T: Real>(op: &'static str, d: usize, z: MatRef<'_, T>, n: usize) -> Result<()> {
    check_shape(op, (d, z.ncols()), (z.nrows(), z.ncols()))?;
    check_shape(op, (z.ncols(), 1), (n, 1))
}

/// $\mathcal N(0, I_D)$: $\log p(z) = -\frac12\lVert z\rVert^2 - \frac D2\log 2\pi$, gradient $-z$.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardNormal {
    dim: usize,
}

impl StandardNormal {
    /// On $\mathbb R^{D}$.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `dim == 0`.
    pub fn new(dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidArgument { op: "StandardNormal::new", reason: "dim must be positive".into() });
        }
        Ok(Self { dim })
    }
}

/// $\log\mathcal N(z; 0, I)$ of one column, in `f64`.
pub(crate) fn log_standard_normal<T: Real>(z: faer::ColRef<'_, T>) -> f64 {
    let sq = crate::util::col_sum(z, |v| v * v);
    -0.5 * sq - HALF_LN_2PI * z.nrows() as f64
}

impl<T: Real> Distribution<T> for StandardNormal {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_prob(&self, z: MatRef<'_, T>, out: &mut [f64]) -> Result<()> {
        check("StandardNormal::log_prob", self.dim, z, out.len())?;
        for (j, o) in out.iter_mut().enumerate() {
            *o = log_standard_normal(z.col(j));
        }
        Ok(())
    }
    fn grad(&self, z: MatRef<'_, T>, grad: MatMut<'_, T>) -> Result<()> {
        check_shape("StandardNormal::grad", (self.dim, z.ncols()), (z.nrows(), z.ncols()))?;
        check_shape("StandardNormal::grad", (z.nrows(), z.ncols()), (grad.nrows(), grad.ncols()))?;
        faer::zip!(grad, z).for_each(|faer::unzip!(d, s)| *d = -*s);
        Ok(())
    }
    fn sample(&self, rng: &mut dyn RngCore, out: MatMut<'_, T>) -> Result<()> {
        check_shape("StandardNormal::sample", (self.dim, out.ncols()), (out.nrows(), out.ncols()))?;
        fill_standard_normal(rng, out);
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn Distribution<T>> {
        Box::new(*self)
    }
}

/// Independent $\mathcal N(0,1)$ draws, column by column.
fn fill_standard_normal<T: Real>(rng: &mut dyn RngCore, out: MatMut<'_, T>) {
    use rand::Rng;
    let mut out = out;
    for j in 0..out.ncols() {
        for i in 0..out.nrows() {
            out[(i, j)] = T::from_f64(rng.sample::<f64, _>(rand_distr::StandardNormal));
        }
    }
}

/// $\mathcal N(\mu, \mathrm{diag}\,e^{2s})$ with fixed mean $\mu$ and log-scales $s$ (`D x 1`):
/// $\log p(z) = \sum_i\big[-\frac12\epsilon_i^2 - s_i\big] - \frac D2\log 2\pi$ with
/// $\epsilon = (z - \mu)\odot e^{-s}$, gradient $-\epsilon\odot e^{-s}$.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagGaussian<T: Real> {
    mean: Mat<T>,
    log_scale: Mat<T>,
}

impl<T: Real> DiagGaussian<T> {
    /// With `mean` and `log_scale`, both `D x 1`.
    ///
    /// # Errors
    /// Shape errors, an empty distribution, non-finite values.
    pub fn new(mean: Mat<T>, log_scale: Mat<T>) -> Result<Self> {
        const OP: &str = "DiagGaussian::new";
        if mean.nrows() == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "dim must be positive".into() });
        }
        check_shape(OP, (mean.nrows(), 1), (mean.nrows(), mean.ncols()))?;
        check_shape(OP, (mean.nrows(), 1), (log_scale.nrows(), log_scale.ncols()))?;
        if !(crate::util::all_finite(mean.as_ref()) && crate::util::all_finite(log_scale.as_ref())) {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { mean, log_scale })
    }
    /// $\mu$.
    pub fn mean(&self) -> MatRef<'_, T> {
        self.mean.as_ref()
    }
    /// $s$.
    pub fn log_scale(&self) -> MatRef<'_, T> {
        self.log_scale.as_ref()
    }
}

impl<T: Real> Distribution<T> for DiagGaussian<T> {
    fn dim(&self) -> usize {
        self.mean.nrows()
    }
    fn log_prob(&self, z: MatRef<'_, T>, out: &mut [f64]) -> Result<()> {
        check("DiagGaussian::log_prob", self.dim(), z, out.len())?;
        let d = self.dim();
        for (j, o) in out.iter_mut().enumerate() {
            let mut acc = -HALF_LN_2PI * d as f64;
            for i in 0..d {
                let s = self.log_scale[(i, 0)].as_f64();
                let e = (z[(i, j)].as_f64() - self.mean[(i, 0)].as_f64()) * (-s).exp();
                acc -= 0.5 * e * e + s;
            }
            *o = acc;
        }
        Ok(())
    }
    fn grad(&self, z: MatRef<'_, T>, grad: MatMut<'_, T>) -> Result<()> {
        let d = self.dim();
        check_shape("DiagGaussian::grad", (d, z.ncols()), (z.nrows(), z.ncols()))?;
        check_shape("DiagGaussian::grad", (z.nrows(), z.ncols()), (grad.nrows(), grad.ncols()))?;
        let mut grad = grad;
        for j in 0..z.ncols() {
            for i in 0..d {
                let inv_var = (-2.0 * self.log_scale[(i, 0)].as_f64()).exp();
                grad[(i, j)] = T::from_f64(-(z[(i, j)].as_f64() - self.mean[(i, 0)].as_f64()) * inv_var);
            }
        }
        Ok(())
    }
    fn sample(&self, rng: &mut dyn RngCore, out: MatMut<'_, T>) -> Result<()> {
        let d = self.dim();
        check_shape("DiagGaussian::sample", (d, out.ncols()), (out.nrows(), out.ncols()))?;
        let mut out = out;
        fill_standard_normal(rng, out.as_mut());
        for j in 0..out.ncols() {
            for i in 0..d {
                out[(i, j)] = out[(i, j)] * num_traits::Float::exp(self.log_scale[(i, 0)]) + self.mean[(i, 0)];
            }
        }
        Ok(())
    }
    fn clone_box(&self) -> Box<dyn Distribution<T>> {
        Box::new(self.clone())
    }
}
