//! # snf — self-normalizing flows
//!
//! Normalizing flows trained **without differentiating a determinant**, after Keller
//! et al., *Self Normalizing Flows* (ICML 2021). A flow is a sequence of
//! [`Transform`](transform::Transform)s on shaped data plus a base distribution; train it
//! on any [`Dataset`](data::Dataset):
//!
//! ```
//! use snf::prelude::*;
//!
//! let mut rng = snf::init::rng(0);
//! let train = snf::data::toy::two_moons(1000, 0.1, &mut rng)?; // any Dataset: Images, Tensor, yours
//! let valid = snf::data::toy::two_moons(200, 0.1, &mut rng)?;
//! let flow = Flow::builder(Shape::flat(2))
//!     .then(SelfNormLinear::new(2, true, &mut rng)?)   // learns W and R ≈ W⁻¹: no determinant
//!     .then(SmoothLeakyRelu::new(0.3)?)
//!     // the paper's layer trains R with a penalty λ; the projection fit needs no λ
//!     .then(SelfNormLinear::new(2, true, &mut rng)?.with_inverse_fit(InverseFit::projection())?)
//!     .build()?;
//! let cfg = TrainConfig { epochs: 2, adam: AdamConfig { lr: 1e-2, ..Default::default() }, ..Default::default() };
//! let mut trainer = Trainer::<f64>::new(flow, cfg, faer::Par::Seq)?;
//! let epoch = trainer.epoch(&train, &valid)?;       // exact validation NLL, SNF-vs-exact angles
//! println!("{:.3} nats, angle on W per layer {:?}", epoch.val_nll, epoch.angles_w);
//! # Ok::<(), snf::Error>(())
//! ```
//!
//! A layer $f(x) = Wx$ has log-likelihood gradient $\delta_z x^T + W^{-T}$, and $W^{-T}$
//! costs $O(D^3)$. A self-normalizing layer also learns $g(z) = Rz$ with a reconstruction
//! penalty $\lambda\lVert RWx - x\rVert^2$ and uses $R^T$ in place of $W^{-T}$ (Eqs. 10, 11,
//! 17, 20): every step is a handful of matrix products. With
//! [`InverseFit::Projection`](layers::linear::InverseFit) (the FC model's default) $R$ is
//! instead fitted to each batch after the step, and $W$ feels no penalty (`proofs/projection.md`).
//! The exact log-det is only needed
//! to *report* likelihoods; the [`Flow`](flow::Flow) computes its data-independent part
//! once and caches it until a parameter changes (Eqs. 6–7).
//!
//! Every gradient is derived by hand (see `proofs/` in the repository) over
//! [faer](https://docs.rs/faer) matrices; an exact LU path ([`exact`]) runs side by side
//! so the angle between the two gradients ([`grad::angle_degrees`]) can be measured.
//!
//! ## The pieces
//! | module | what |
//! |---|---|
//! | [`transform`] | the [`Transform`](transform::Transform) trait (forward with log-det, backward with a [`Tape`](transform::Tape), inverse, named parameters) and [`SelfNormalizing`](transform::SelfNormalizing) for layers with an exact twin |
//! | [`layers`] | the built-in transforms: linear and convolutional layers (self-normalizing and exact), activations, splines, preprocessing, squeeze, split |
//! | [`flow`] | [`Flow`](flow::Flow): transforms + base, the backward sweep, exact log-likelihood, multi-scale bookkeeping, sampling; [`flow::models`]: the paper's models for any shape |
//! | [`distribution`] | base distributions: standard normal, diagonal Gaussian |
//! | [`data`] | [`Dataset`](data::Dataset); MNIST, any IDX set, CIFAR-10, in-memory tensors, toy densities |
//! | [`train`], [`optim`] | the [`Trainer`](train::Trainer) (warm-up, clipping, λ / GECO, angles, resume) and Adam over (parameter, gradient) pairs |
//! | [`checkpoint`] | safetensors checkpoints; a [`Registry`](checkpoint::Registry) rebuilds transforms by kind, yours included |
//! | [`conv`], [`exact`], [`grad`] | the convolution primitive, LU, gradient angles |
//!
//! `examples/custom_transform.rs` defines a transform outside the crate and trains it
//! next to self-normalizing layers; `docs/architecture.md` draws the layering.
//!
//! ## Conventions
//! Batches are `D x B` matrices, one column per example. Deltas are the paper's
//! $\delta = \partial\log p/\partial(\cdot)$ per example; parameter gradients are of the
//! *loss* (negated batch mean of Eq. 3). See [`layers`].
//!
//! ## One layer: a self-normalizing training step vs the exact gradient
//! ```
//! use faer::{Mat, Par};
//! use snf::layers::linear::{LinearWorkspace, SelfNormLinear};
//! use snf::optim::{Adam, AdamConfig};
//!
//! let (d, b) = (16, 32);
//! let mut rng = snf::init::rng(7);
//! let mut layer = SelfNormLinear::<f64>::new(d, true, &mut rng)?;
//! let x = Mat::from_fn(d, b, |i, j| ((i * 31 + j * 17) % 13) as f64 / 13.0 - 0.5);
//! let mut ws = LinearWorkspace::new(d, b, Par::Seq)?.with_exact()?;
//! let (mut z, mut y) = (Mat::zeros(d, b), Mat::zeros(d, b));
//! let (mut dx, mut dxg) = (Mat::zeros(d, b), Mat::zeros(d, b));
//!
//! // forward, standard-normal base: delta_z = -z
//! layer.forward(x.as_ref(), z.as_mut(), &mut ws)?;
//! let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
//!
//! // exact gradient of the same objective, for reference
//! layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws)?;
//! let dzg = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
//! let mut exact = layer.zero_grads();
//! layer.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dx.as_mut(), dxg.as_mut(), &mut exact, &mut ws, 1.0)?;
//!
//! // self-normalizing gradient: no inverse, no determinant
//! let mut snf_grad = layer.zero_grads();
//! layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut snf_grad, &mut ws, 1.0)?;
//!
//! let blocks_a: Vec<_> = exact.blocks().collect();
//! let blocks_b: Vec<_> = snf_grad.blocks().collect();
//! let deg = snf::grad::angle_degrees(&blocks_a, &blocks_b)?;
//! assert!(deg < 1.0, "angle {deg} degrees");
//!
//! let mut adam = Adam::new(AdamConfig::default(), snf_grad.blocks().map(|g| (g.nrows(), g.ncols())))?;
//! adam.step(layer.params_with_grads(&snf_grad)?)?;
//! # Ok::<(), snf::Error>(())
//! ```
//!
//! ## Convolutions
//! [`conv`] is a general batched 2-D convolution (stride, padding, dilation, groups) with
//! its gradients, the dense matrix $\mathcal T(k)$, `flip` and the multiplicity $m$;
//! [`layers::conv::SelfNormConv2d`] is the self-normalizing convolution, whose log-det
//! gradient surrogate is $\mathrm{flip}(r)\odot m$ (Eq. 15). The same side-by-side check:
//! ```
//! use faer::{Mat, Par};
//! use snf::layers::conv::{ConvWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
//!
//! // 2 channels of 6x6, 3x3 forward kernel, 5x5 learned-inverse kernel (Appendix A.4)
//! let cfg = SelfNormConv2dConfig::new(2, [6, 6], 3).with_inverse_kernel([5, 5]);
//! let layer = SelfNormConv2d::<f64>::new(cfg, &mut snf::init::rng(1))?;
//! let (d, b) = (layer.dim(), 8);
//! let x = Mat::from_fn(d, b, |i, j| ((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.5);
//! let mut ws = ConvWorkspace::new(&layer, b, Par::Seq)?.with_exact()?;
//! let (mut z, mut y, mut dx, mut dxg) = (Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b));
//! layer.forward(x.as_ref(), z.as_mut(), &mut ws)?;
//! layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws)?;
//! let (dz, dzg) = (Mat::from_fn(d, b, |i, j| -z[(i, j)]), Mat::from_fn(d, b, |i, j| -y[(i, j)]));
//! let (mut exact, mut approx) = (layer.zero_grads(), layer.zero_grads());
//! layer.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dx.as_mut(), dxg.as_mut(), &mut exact, &mut ws, 1.0)?;
//! layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut approx, &mut ws, 1.0)?;
//! let deg = snf::grad::angle_degrees(&exact.blocks().collect::<Vec<_>>(), &approx.blocks().collect::<Vec<_>>())?;
//! assert!(deg < 1.0, "angle {deg} degrees");
//! // the exact log-det: its LU stays in the workspace until the kernels change
//! let log_det = layer.log_abs_det(&mut ws)?;
//! assert_eq!(layer.log_abs_det(&mut ws)?, log_det);
//! # Ok::<(), snf::Error>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(rustdoc::broken_intra_doc_links)]

pub mod activation;
pub mod checkpoint;
pub mod conv;
#[cfg(feature = "cuda")]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
pub mod cuda;
pub mod data;
pub mod distribution;
pub mod error;
pub mod exact;
pub mod flow;
pub mod grad;
pub mod init;
pub mod layers;
pub mod optim;
pub mod real;
pub mod shape;
pub mod train;
pub mod transform;
mod util;

pub use error::{CheckpointError, DataError, Error, Result};
/// The `faer` this crate is built on (matrices, views, parallelism), re-exported so a
/// user does not have to pin a matching version.
pub use faer;
/// The `rand` this crate is built on, re-exported for the same reason.
pub use rand;
pub use real::Real;
pub use shape::Shape;

/// What most programs need: `use snf::prelude::*;`.
pub mod prelude {
    pub use crate::data::{Dataset, Dequantization, Images, Splits, Tensor};
    pub use crate::distribution::{DiagGaussian, Distribution, StandardNormal};
    pub use crate::flow::{Flow, FlowGrads, FlowWorkspace, Inverse};
    pub use crate::layers::linear::InverseFit;
    pub use crate::layers::{
        Elementwise, ExactConv2d, ExactLinear, LeakyRelu, Preprocess, SelfNormConv2d, SelfNormLinear, SmoothLeakyRelu, SplineActivation, Split, Squeeze,
    };
    pub use crate::optim::{Adam, AdamConfig};
    pub use crate::train::{Lambda, TrainConfig, Trainer};
    pub use crate::transform::{Grads, Param, SelfNormalizing, Tape, Transform, Workspace};
    pub use crate::{Error, Real, Result, Shape};
}

/// The README's Rust example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
