//! Data sets: the [`Dataset`] trait the trainer uses, 8-bit [`Images`] of any shape
//! (MNIST with the paper's split, any IDX set, CIFAR-10), continuous [`Tensor`] data and
//! toy densities, the IDX reader, SHA-256 checksums, and deterministic per-epoch
//! shuffling.
//!
//! ```no_run
//! use snf::data::mnist::Mnist;
//! let mnist = Mnist::load(&Mnist::shipped_dir())?; // checksums verified
//! assert_eq!((mnist.train.len(), mnist.valid.len(), mnist.test.len()), (50_000, 10_000, 10_000));
//! # Ok::<(), snf::Error>(())
//! ```

pub mod batches;
pub mod checksum;
pub mod cifar10;
mod dataset;
pub mod idx;
pub mod idx_set;
mod images;
pub mod mnist;
mod tensor;
pub mod toy;

pub use dataset::{Dataset, Dequantization, Splits};
pub use images::Images;
pub use tensor::Tensor;
