//! The exact reference path: LU log-determinants, inverses and solves.
//!
//! Self-normalizing training never needs these; they exist to
//! - *report* exact likelihoods (Eqs. 6–7: the data-independent $\log|\det W|$ is
//!   computed once and cached by the caller),
//! - provide the exact gradient $W^{-T}$ (Eq. 8) that the self-normalizing gradient
//!   $R^{T}$ (Eq. 10) approximates, so the two can be compared on the same batch,
//! - train the paper's "exact gradient" baselines.
//!
//! This module is a leaf: it depends only on faer and the crate's error and scalar types.
//! All functions return [`Error::Singular`] or [`Error::NonFinite`] rather than panicking.

mod denormals;
mod lu;

pub use lu::Lu;

use faer::{Mat, MatRef, Par};

use crate::error::{Error, Result};
use crate::real::Real;

fn square(op: &'static str, a: MatRef<'_, impl Real>) -> Result<usize> {
    if a.nrows() != a.ncols() {
        return Err(Error::NotSquare { op, rows: a.nrows(), cols: a.ncols() });
    }
    Ok(a.nrows())
}

/// $\log|\det A|$ by partial-pivot LU, summed in `f64`. Allocates an [`Lu`]; reuse one
/// in loops.
///
/// # Errors
/// [`Error::NotSquare`], [`Error::NonFinite`], [`Error::Singular`].
///
/// # Example
/// ```
/// let a = faer::mat![[0.0, 2.0], [3.0, 0.0]];
/// let ld = snf::exact::log_abs_det(a.as_ref())?;
/// assert!((ld - 6f64.ln()).abs() < 1e-14);
/// # Ok::<(), snf::Error>(())
/// ```
pub fn log_abs_det<T: Real>(a: MatRef<'_, T>) -> Result<f64> {
    let n = square("exact::log_abs_det", a)?;
    let mut lu = Lu::new(n, 1, Par::Seq)?;
    lu.factor(a)?;
    lu.log_abs_det()
}

/// $A^{-T}$, the gradient of $\log|\det A|$ with respect to $A$.
///
/// # Errors
/// [`Error::NotSquare`], [`Error::NonFinite`], [`Error::Singular`].
pub fn inverse_transpose<T: Real>(a: MatRef<'_, T>) -> Result<Mat<T>> {
    let n = square("exact::inverse_transpose", a)?;
    let mut lu = Lu::new(n, 1, Par::Seq)?;
    lu.factor(a)?;
    let mut out = Mat::zeros(n, n);
    lu.inverse_transpose_into(out.as_mut())?;
    Ok(out)
}

/// Solve $AX = B$.
///
/// # Errors
/// [`Error::NotSquare`], [`Error::ShapeMismatch`] if `b` has not `n` rows,
/// [`Error::NonFinite`], [`Error::Singular`].
pub fn solve<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Result<Mat<T>> {
    let n = square("exact::solve", a)?;
    let mut lu = Lu::new(n, b.ncols(), Par::Seq)?;
    lu.factor(a)?;
    let mut x = b.to_owned();
    lu.solve_in_place(x.as_mut())?;
    Ok(x)
}
