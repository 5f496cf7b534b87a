//! Flow layers with hand-derived gradients, each a [`Transform`](crate::transform::Transform):
//!
//! | layer | what | parameters |
//! |---|---|---|
//! | [`SelfNormLinear`] / [`ExactLinear`] | $Wx + b$, self-normalizing (Eqs. 10–20) / exact (Eqs. 8–9) | `w`, `r`, `b` / `w`, `b` |
//! | [`SelfNormConv2d`] / [`ExactConv2d`] | $w\star x + b$, self-normalizing (Eqs. 13–16) / exact | `w`, `r`, `b` / `w`, `b` |
//! | [`ActNorm`] | per-channel $e^sx + b$, initialised from the first batch (Glow) | `logs`, `b` |
//! | [`InvConv1x1`] | Glow's invertible 1x1 convolution, exact gradient | `w` |
//! | [`LuConv1x1`] | Glow's LU-parametrised 1x1 convolution $PL(U + \mathrm{diag}\,s)$, exact gradient, no inverse | `l`, `u`, `logs` |
//! | [`AffineCoupling`] | Glow's affine coupling, conditioner conv–ActNorm–ReLU ×2 → zero conv (hand-derived backward) | `k1`, `logs1`, `b1`, `k2`, `logs2`, `b2`, `k3`, `c3` |
//! | [`AutoregressiveConv2d`] | masked convolution with a triangular matrix (two make an emerging convolution) | `k`, `b` |
//! | [`ConvExp`] | the convolution exponential $\exp(M)x + b$ | `k`, `b` |
//! | [`SmoothLeakyRelu`], [`LeakyRelu`], [`Elementwise`] | entry-wise bijections | none |
//! | [`SplineActivation`] | per-entry rational-quadratic splines | `widths`, `heights`, `slopes` |
//! | [`Preprocess`] | dequantised pixels to logit space | none |
//! | [`Standardize`] | fixed per-dimension $(x-\mu)/\sigma$ (for unscaled tabular data) | none |
//! | [`Squeeze`] | space-to-depth, $C\times H\times W\to 4C\times\frac H2\times\frac W2$ | none |
//! | [`Split`] | factor out half the channels under a learned conditional Gaussian prior | `k`, `c` |
//!
//! Conventions shared by every layer:
//! - **Batch layout.** A batch is a `D x B` matrix: one *column* per example
//!   (faer is column-major, so `z = W x` is a single GEMM).
//! - **Deltas** `dz` passed *into* a backward pass are the paper's
//!   $\delta_z = \partial \log p(\cdot)/\partial z$, one column per example, **not**
//!   divided by the batch size (for a standard normal base, $\delta_z = -z$). Deltas
//!   returned (`dx`) follow the same convention, so layers chain.
//! - **Parameter gradients** are gradients of the *loss* that an optimiser minimises,
//!   the negated batch mean of the objective of Eq. 3:
//!   $$\ell = -\frac1B \sum_{b=1}^B \Big[\tfrac12 \log p^f_X(x_b) + \tfrac12 \log p^g_X(x_b)
//!   - \lambda \lVert g(f(x_b)) - x_b \rVert^2\Big].$$

mod actnorm;
mod autoregressive_conv;
pub mod conv;
mod conv1x1;
mod conv_exp;
mod coupling;
pub mod linear;
mod lu_conv1x1;
mod preprocess;
mod split;
mod squeeze;
mod standardize;

pub use crate::activation::{Elementwise, LeakyRelu, SmoothLeakyRelu, SplineActivation};
pub use actnorm::{ActNorm, ACTNORM_EPS};
pub use autoregressive_conv::{AutoregressiveConv2d, AutoregressiveConv2dConfig, AutoregressiveConv2dGrads, Direction};
pub use conv::{ExactConv2d, SelfNormConv2d};
pub use conv1x1::{random_orthogonal, InvConv1x1, InvConv1x1Grads};
pub use conv_exp::{series_terms, ConvExp, ConvExpConfig, ConvExpGrads, MAX_TERMS as CONV_EXP_MAX_TERMS};
pub use coupling::{AffineCoupling, AffineCouplingConfig, CONDITIONER_INIT_STD, COUPLING_SCALE_OFFSET};
pub use linear::{ExactLinear, SelfNormLinear};
pub use lu_conv1x1::LuConv1x1;
pub use preprocess::Preprocess;
pub use split::Split;
pub use squeeze::Squeeze;
pub use standardize::Standardize;

/// What a backward pass measured on the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardStats {
    /// Batch mean of the reconstruction error $\lVert g(f(x)) - x\rVert^2$.
    pub reconstruction_error: f64,
}

/// A fresh parameter "stamp": layers take a new one whenever their parameters may have
/// changed, so caches keyed by it (LU factors, log-dets) can tell they are stale.
pub(crate) fn next_stamp() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The output shape of a shape-preserving image layer built for `shape`.
pub(crate) fn same_shape(op: &'static str, shape: crate::Shape, input: crate::Shape) -> crate::Result<crate::Shape> {
    if input.fits(shape) {
        Ok(shape)
    } else {
        Err(crate::shape::shape_error(op, shape, input))
    }
}

/// [`check_batch`] for a layer of `shape`, plus a second operand of the same `dim x B`.
pub(crate) fn check_batch_and<T: crate::Real>(
    op: &'static str,
    x: faer::MatRef<'_, T>,
    shape: crate::Shape,
    other: (usize, usize),
    max_batch: usize,
) -> crate::Result<usize> {
    let d = shape.dim();
    let b = check_batch(op, x, d, max_batch)?;
    crate::error::check_shape(op, (d, b), other)?;
    Ok(b)
}

/// Check a `dim x B` batch against a workspace holding `1..=max_batch` columns; return `B`.
pub(crate) fn check_batch<T: crate::Real>(op: &'static str, a: faer::MatRef<'_, T>, dim: usize, max_batch: usize) -> crate::Result<usize> {
    let b = a.ncols();
    if a.nrows() != dim {
        return Err(crate::Error::ShapeMismatch { op, expected: (dim, b), got: (a.nrows(), b) });
    }
    if b == 0 || b > max_batch {
        return Err(crate::Error::InvalidArgument { op, reason: format!("batch of {b} columns; this workspace holds 1..={max_batch}") });
    }
    Ok(b)
}

/// The operand checks every backward pass makes: each of `shapes` (incoming deltas and
/// outgoing buffers, as `(rows, cols)`) is `d x b`, and λ is finite.
pub(crate) fn check_backward_operands<T: crate::Real>(op: &'static str, d: usize, b: usize, shapes: &[(usize, usize)], lambda: T) -> crate::Result<()> {
    for &got in shapes {
        crate::error::check_shape(op, (d, b), got)?;
    }
    if !lambda.is_finite() {
        return Err(crate::Error::NonFinite { op });
    }
    Ok(())
}
