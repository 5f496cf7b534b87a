//! Parameter initialisation (seeded, deterministic across platforms).

use faer::Mat;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::real::Real;

/// The deterministic generator used across `snf` (ChaCha8: the same stream on every
/// platform and every `rand` release that keeps ChaCha8).
pub type SnfRng = rand_chacha::ChaCha8Rng;

/// A seeded [`SnfRng`].
pub fn rng(seed: u64) -> SnfRng {
    <SnfRng as rand::SeedableRng>::seed_from_u64(seed)
}

/// The Xavier (Glorot) normal standard deviation, $\text{gain}\cdot\sqrt{2/(\text{fan\_in}+\text{fan\_out})}$.
pub fn xavier_normal_std(fan_in: usize, fan_out: usize, gain: f64) -> f64 {
    gain * (2.0 / (fan_in + fan_out).max(1) as f64).sqrt()
}

/// `I + N(0, std^2)` noise: the paper's initialisation of self-normalizing weights
/// (identity plus Xavier-normal noise with gain 0.01).
pub fn identity_plus_noise<T: Real>(dim: usize, std: f64, rng: &mut impl Rng) -> Mat<T> {
    Mat::from_fn(dim, dim, |i, j| {
        let n: f64 = rng.sample(StandardNormal);
        T::from_f64(if i == j { 1.0 } else { 0.0 } + std * n)
    })
}
