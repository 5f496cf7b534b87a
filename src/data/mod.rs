//! Data sets: the IDX reader, SHA-256 checksums, MNIST with the paper's split, and
//! deterministic per-epoch shuffling.
//!
//! ```no_run
//! use snf::data::mnist::Mnist;
//! let mnist = Mnist::load(&Mnist::shipped_dir())?; // checksums verified
//! assert_eq!((mnist.train.len(), mnist.valid.len(), mnist.test.len()), (50_000, 10_000, 10_000));
//! # Ok::<(), snf::Error>(())
//! ```

pub mod batches;
pub mod checksum;
pub mod idx;
pub mod mnist;
