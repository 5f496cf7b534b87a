//! Element-wise invertible activations $z_i = f(x_i)$, with the per-example log-det
//! $\sum_i\log|f'(x_i)|$ and the backward rule of the layers' delta convention
//! ([`crate::layers`]): with $\delta_z = \partial\log p/\partial z$,
//! $$\delta_x = f'(x)\odot\delta_z + \frac{d}{dx}\log|f'(x)|,$$
//! the second term being the gradient of the activation's own log-det.
//!
//! | activation | $f(x)$ | inverse |
//! |---|---|---|
//! | [`SmoothLeakyRelu`] | $\alpha x + (1-\alpha)\log(1 + e^x)$ | safeguarded Newton |
//! | [`LeakyRelu`] | $x$ for $x \ge 0$, $s x$ otherwise | closed form |
//! | [`SplineActivation`] | rational-quadratic spline per entry, identity tails | closed form (a quadratic) |

mod leaky_relu;
mod smooth_leaky_relu;
pub mod spline;
mod transform;

pub use leaky_relu::LeakyRelu;
pub use smooth_leaky_relu::SmoothLeakyRelu;
pub use spline::{SplineActivation, SplineConfig, SplineGrads};
pub use transform::Elementwise;

use faer::reborrow::ReborrowMut;
use faer::{unzip, zip, MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::util::{col_map_sum, par_cols};

/// A scalar, strictly increasing, differentiable bijection of $\mathbb R$, evaluated in
/// the precision of the batch (`f32` or `f64`); the inverse always runs in `f64`.
pub trait ScalarBijection: Send + Sync {
    /// $f(x)$.
    fn value<F: Real>(&self, x: F) -> F;
    /// $f'(x) > 0$.
    fn derivative<F: Real>(&self, x: F) -> F;
    /// $\log f'(x)$.
    fn log_derivative<F: Real>(&self, x: F) -> F;
    /// $\frac{d}{dx}\log f'(x)$.
    fn log_derivative_grad<F: Real>(&self, x: F) -> F;
    /// $f^{-1}(y)$.
    fn inverse(&self, y: f64) -> f64;
    /// $(f(x), \log f'(x))$ together (override to share work between them).
    fn value_and_log_derivative<F: Real>(&self, x: F) -> (F, F) {
        (self.value(x), self.log_derivative(x))
    }
    /// $(f'(x), \frac{d}{dx}\log f'(x))$ together (override to share work between them).
    fn derivative_and_log_derivative_grad<F: Real>(&self, x: F) -> (F, F) {
        (self.derivative(x), self.log_derivative_grad(x))
    }
}

/// Apply `f` to a `D x B` batch: `z = f(x)`, and add $\sum_i\log f'(x_{ib})$ to `logdet[b]`.
/// Columns run in parallel under `par` (contiguous column blocks, no allocation).
///
/// # Errors
/// [`Error::ShapeMismatch`] on mismatched shapes or a `logdet` of the wrong length.
pub fn forward<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, z: MatMut<'_, T>, logdet: &mut [f64], par: Par) -> Result<()> {
    const OP: &str = "activation::forward";
    check_shape(OP, (x.nrows(), x.ncols()), (z.nrows(), z.ncols()))?;
    check_shape(OP, (x.ncols(), 1), (logdet.len(), 1))?;
    par_cols(((x, z), logdet), par, &|((x, z), ld): ((MatRef<'_, T>, MatMut<'_, T>), &mut [f64])| {
        #[cfg(target_arch = "x86_64")]
        if crate::util::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, all `forward_cols_avx2` requires
            return unsafe { forward_cols_avx2(f, x, z, ld) };
        }
        forward_cols(f, x, z, ld)
    });
    Ok(())
}

/// The forward pass over a range of columns.
#[inline(always)]
fn forward_cols<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, mut z: MatMut<'_, T>, ld: &mut [f64]) {
    for (j, l) in ld.iter_mut().enumerate() {
        *l += col_map_sum(x.col(j), z.rb_mut().col_mut(j), |xi| {
            let (v, d) = f.value_and_log_derivative(xi);
            (v, d.as_f64())
        });
    }
}

/// [`forward_cols`] compiled for AVX2 + FMA: the polynomial `exp`/`ln` and their selects
/// vectorise eight `f32` wide there (the baseline target's cost model keeps them scalar).
/// The same operations in the same order (Rust never fuses a multiply and an add by
/// itself), so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_cols_avx2<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, z: MatMut<'_, T>, ld: &mut [f64]) {
    forward_cols(f, x, z, ld)
}

/// Backward: $\delta_x = f'(x)\odot\delta_z + \frac{d}{dx}\log f'(x)$, columns in parallel.
///
/// # Errors
/// [`Error::ShapeMismatch`] on mismatched shapes.
pub fn backward<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, dz: MatRef<'_, T>, dx: MatMut<'_, T>, par: Par) -> Result<()> {
    const OP: &str = "activation::backward";
    check_shape(OP, (x.nrows(), x.ncols()), (dz.nrows(), dz.ncols()))?;
    check_shape(OP, (x.nrows(), x.ncols()), (dx.nrows(), dx.ncols()))?;
    par_cols(((x, dz), dx), par, &|((x, dz), dx): ((MatRef<'_, T>, MatRef<'_, T>), MatMut<'_, T>)| {
        #[cfg(target_arch = "x86_64")]
        if crate::util::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, all `backward_cols_avx2` requires
            return unsafe { backward_cols_avx2(f, x, dz, dx) };
        }
        backward_cols(f, x, dz, dx)
    });
    Ok(())
}

#[inline(always)]
fn backward_cols<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, dz: MatRef<'_, T>, dx: MatMut<'_, T>) {
    zip!(x, dz, dx).for_each(|unzip!(x, dz, dx)| {
        let (d, g) = f.derivative_and_log_derivative_grad(*x);
        *dx = d * *dz + g;
    })
}

/// [`backward_cols`] compiled for AVX2 + FMA (same results, as for the forward pass).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_cols_avx2<T: Real>(f: &impl ScalarBijection, x: MatRef<'_, T>, dz: MatRef<'_, T>, dx: MatMut<'_, T>) {
    backward_cols(f, x, dz, dx)
}

/// Inverse: `x = f^{-1}(z)`.
///
/// # Errors
/// [`Error::ShapeMismatch`] on mismatched shapes; [`Error::NonFinite`] if `z` holds a
/// non-finite value or an inverse falls outside the floating-point range.
pub fn inverse<T: Real>(f: &impl ScalarBijection, z: MatRef<'_, T>, x: MatMut<'_, T>) -> Result<()> {
    const OP: &str = "activation::inverse";
    check_shape(OP, (z.nrows(), z.ncols()), (x.nrows(), x.ncols()))?;
    let mut x = x;
    for j in 0..z.ncols() {
        for i in 0..z.nrows() {
            let v = f.inverse(z[(i, j)].as_f64());
            let t = T::from_f64(v);
            if !t.is_finite() {
                return Err(Error::NonFinite { op: OP });
            }
            x[(i, j)] = t;
        }
    }
    Ok(())
}

/// Numerically stable $\log(1 + e^x)$.
#[inline]
pub(crate) fn softplus<F: Real>(x: F) -> F {
    use num_traits::Float;
    Float::max(x, F::zero()) + Float::ln_1p(Float::exp(-Float::abs(x)))
}

/// Numerically stable logistic $\sigma(x) = 1/(1 + e^{-x})$.
#[inline]
pub(crate) fn sigmoid<F: Real>(x: F) -> F {
    use num_traits::Float;
    let one = F::one();
    if x >= F::zero() {
        one / (one + Float::exp(-x))
    } else {
        let e = Float::exp(x);
        e / (one + e)
    }
}
