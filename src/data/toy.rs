//! Toy densities generated in code, for validation away from images.

use faer::Mat;
use rand::Rng;
use rand_distr::{Distribution as _, StandardNormal};

use super::tensor::Tensor;
use crate::error::{Error, Result};

/// `n` points of the two-moons density (two interleaved half circles of radius 1, the
/// second shifted by (1, −0.5)), with Gaussian noise of standard deviation `noise`.
///
/// # Errors
/// [`Error::InvalidArgument`] for `n == 0` or a negative or non-finite `noise`.
pub fn two_moons(n: usize, noise: f64, rng: &mut impl Rng) -> Result<Tensor> {
    if n == 0 || !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::InvalidArgument { op: "two_moons", reason: format!("needs n > 0 and noise >= 0, got {n}, {noise}") });
    }
    let mut m = Mat::zeros(2, n);
    for j in 0..n {
        let t = std::f64::consts::PI * rng.random::<f64>();
        let (x, y) = if rng.random::<bool>() { (t.cos(), t.sin()) } else { (1.0 - t.cos(), 0.5 - t.sin()) };
        let (ex, ey): (f64, f64) = (StandardNormal.sample(rng), StandardNormal.sample(rng));
        m[(0, j)] = x + noise * ex;
        m[(1, j)] = y + noise * ey;
    }
    Tensor::flat(m)
}

/// `n` points of an equal-weight mixture of `k` isotropic Gaussians in `dim` dimensions
/// (standard deviation `std`), with means drawn once from $\mathcal N(0, 4I)$.
///
/// # Errors
/// [`Error::InvalidArgument`] for a zero size or a non-positive `std`.
pub fn gaussian_mixture(n: usize, dim: usize, k: usize, std: f64, rng: &mut impl Rng) -> Result<Tensor> {
    if n == 0 || dim == 0 || k == 0 || !(std.is_finite() && std > 0.0) {
        return Err(Error::InvalidArgument { op: "gaussian_mixture", reason: format!("needs positive sizes and std, got n {n}, dim {dim}, k {k}, std {std}") });
    }
    let means = Mat::<f64>::from_fn(dim, k, |_, _| {
        let e: f64 = StandardNormal.sample(&mut *rng);
        2.0 * e
    });
    let mut m = Mat::zeros(dim, n);
    for j in 0..n {
        let c = rng.random_range(0..k);
        for i in 0..dim {
            let e: f64 = StandardNormal.sample(&mut *rng);
            m[(i, j)] = means[(i, c)] + std * e;
        }
    }
    Tensor::flat(m)
}
