//! Batched 2-D convolution (NCHW cross-correlation, as PyTorch's `conv2d`) with its
//! input and kernel gradients, the explicit convolution matrix $\mathcal T(k)$ (Eq. 12),
//! and the kernel-space maps of the self-normalizing convolution: `flip` (Eq. 26), the
//! multiplicity $m$ (Eq. 27), the adjoint map $P$ (Eqs. 23–25) and the centred
//! crop / pad of Appendix A.4 (Eq. 30).
//!
//! This is a general primitive (stride, zero padding, dilation, groups), used by
//! [`SelfNormConv2d`](crate::layers::conv::SelfNormConv2d) and reusable elsewhere.
//! Derivations: `proofs/conv.md`.
//!
//! | item | what |
//! |---|---|
//! | [`Conv2dSpec`], [`Conv2dGeometry`] | parameters and their validated shapes, kernel layout |
//! | [`Conv2d`] | forward, input gradient, kernel gradient (im2col + faer GEMM, batch-parallel) |
//! | [`conv_matrix`], [`project_onto_kernel`] | $\mathcal T(k)$ and its adjoint $P$ |
//! | [`flip`], [`multiplicity`], [`resize_centered_into`], [`dirac`] | kernel maps |

pub(crate) mod chunk;
mod geometry;
pub(crate) mod im2col;
mod kernel;
pub(crate) mod ops;
mod toeplitz;

pub use geometry::{Conv2dGeometry, Conv2dSpec};
pub use kernel::{dirac, flip, flip_into, multiplicity, resize_centered_into};
pub use ops::Conv2d;
pub use toeplitz::{conv_matrix, conv_matrix_into, project_onto_kernel};
