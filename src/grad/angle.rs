//! The angle between two gradients (Fig. 3 of the paper).

use faer::MatRef;

use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::sum_sq;

/// The angle in degrees between two gradients, each given as a list of parameter
/// blocks (e.g. `[dW, dR, db]` of one layer, or every block of a whole model), viewed as
/// one concatenated vector.
///
/// Computed as Kahan's
/// $$\theta = 2\,\operatorname{atan2}\big(\lVert \hat a - \hat b\rVert,\ \lVert \hat a + \hat b\rVert\big),
/// \qquad \hat a = a/\lVert a\rVert,$$
/// with every sum in `f64`. Unlike $\arccos(\hat a\cdot\hat b)$, which cannot resolve
/// angles below about $10^{-4}$ degrees in `f64` because the cosine rounds to 1, this
/// keeps full relative accuracy near 0 and near 180 degrees.
///
/// # Errors
/// [`Error::InvalidArgument`] if the block lists differ in length, or a block pair in
/// shape ([`Error::ShapeMismatch`]), or either gradient is zero (its direction is
/// undefined); [`Error::NonFinite`] if either holds NaN/inf.
///
/// # Example
/// ```
/// let a = faer::mat![[1.0, 0.0]];
/// let b = faer::mat![[1.0, 1e-9]];
/// let deg = snf::grad::angle_degrees(&[a.as_ref()], &[b.as_ref()])?;
/// assert!((deg - 1e-9f64.to_degrees()).abs() < 1e-20);
/// # Ok::<(), snf::Error>(())
/// ```
pub fn angle_degrees<T: Real>(a: &[MatRef<'_, T>], b: &[MatRef<'_, T>]) -> Result<f64> {
    const OP: &str = "grad::angle_degrees";
    if a.len() != b.len() {
        return Err(Error::InvalidArgument { op: OP, reason: format!("{} blocks vs {} blocks", a.len(), b.len()) });
    }
    let (mut na2, mut nb2) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        crate::error::check_shape(OP, (x.nrows(), x.ncols()), (y.nrows(), y.ncols()))?;
        na2 += sum_sq(*x);
        nb2 += sum_sq(*y);
    }
    if !na2.is_finite() || !nb2.is_finite() {
        return Err(Error::NonFinite { op: OP });
    }
    if na2 == 0.0 || nb2 == 0.0 {
        return Err(Error::InvalidArgument { op: OP, reason: "a gradient is zero".into() });
    }
    let (ia, ib) = (1.0 / na2.sqrt(), 1.0 / nb2.sqrt());
    let (mut diff2, mut sum2) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        for j in 0..x.ncols() {
            for (&p, &q) in x.col(j).iter().zip(y.col(j).iter()) {
                let (p, q) = (p.as_f64() * ia, q.as_f64() * ib);
                diff2 += (p - q) * (p - q);
                sum2 += (p + q) * (p + q);
            }
        }
    }
    Ok((2.0 * diff2.sqrt().atan2(sum2.sqrt())).to_degrees())
}
