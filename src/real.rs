//! The scalar trait: `snf` is generic over `f32` and `f64`.

use core::fmt::{Debug, Display};

/// A real floating-point scalar usable by every layer: `f32` or `f64`.
///
/// It joins faer's [`RealField`](faer::traits::RealField) (so faer's GEMM and LU
/// accept it) with [`num_traits::Float`] (for `ln`, `exp`, `sqrt`, ...).
pub trait Real:
    faer::traits::RealField + num_traits::Float + Copy + Send + Sync + Debug + Display + Default + 'static
{
    /// Round an `f64` to this type.
    fn from_f64(x: f64) -> Self;
    /// Widen to `f64` (exact for both `f32` and `f64`).
    fn as_f64(self) -> f64;
    /// Unit roundoff (half the machine epsilon) of this type.
    fn unit_roundoff() -> f64 {
        <Self as num_traits::Float>::epsilon().as_f64() / 2.0
    }
}

impl Real for f32 {
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
}
