//! MNIST: the four IDX files, checked against their SHA-256 list, split as in the paper
//! (first 50 000 training images for training, the last 10 000 for validation, the
//! 10 000 test images for testing). A thin layer over [`super::idx_set::load_idx`]
//! that also checks MNIST's definition (28x28 images, labels 0–9).

use std::path::{Path, PathBuf};

use super::idx_set::{load_idx, Checksums, IdxOptions};
use crate::error::{DataError, Result};
use crate::shape::Shape;

pub use super::images::Images as Split;

/// Image side length.
pub const SIDE: usize = 28;
/// Pixels per image, $28\cdot28 = 784$.
pub const PIXELS: usize = SIDE * SIDE;
/// MNIST's image shape, 1x28x28.
pub const SHAPE: Shape = Shape::image(1, SIDE, SIDE);

/// How to load MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Verify every file against `SHA256SUMS` in the same folder (which must then exist
    /// and list each file). Default `true`.
    pub verify_checksums: bool,
    /// How many of the *last* training images form the validation split. Default 10 000
    /// (the paper's split); it must be smaller than the number of training images.
    pub validation: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { verify_checksums: true, validation: 10_000 }
    }
}

/// The three MNIST splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// The first `n_train - validation` training images.
    pub train: Split,
    /// The last `validation` training images.
    pub valid: Split,
    /// The test images.
    pub test: Split,
}

impl Mnist {
    /// The copy shipped in the repository (`data/mnist/`, not in the published crate).
    pub fn shipped_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join("mnist")
    }

    /// Load with the default options (checksums verified, the paper's split).
    ///
    /// # Errors
    /// See [`load_with`](Self::load_with).
    pub fn load(dir: &Path) -> Result<Mnist> {
        Self::load_with(dir, LoadOptions::default())
    }

    /// Load the four standard files from `dir`, each either gzip-compressed (`NAME.gz`,
    /// preferred) or raw (`NAME`).
    ///
    /// # Errors
    /// [`Error::Data`](crate::Error::Data): a missing or unreadable file, a bad checksum, a
    /// malformed IDX file, images and labels that disagree, images other than 28x28,
    /// missing labels or labels outside 0–9, or a validation size not smaller than the
    /// training set.
    pub fn load_with(dir: &Path, opts: LoadOptions) -> Result<Mnist> {
        let checksums = if opts.verify_checksums { Checksums::Required } else { Checksums::Skip };
        let s = load_idx(dir, IdxOptions { checksums, validation: Some(opts.validation) })?;
        for (split, name) in [(&s.train, "training"), (&s.test, "test")] {
            let path = dir.display().to_string();
            if split.shape() != SHAPE {
                return Err(DataError::Inconsistent { path, reason: format!("{name} image dimensions {}, expected [n, 28, 28]", split.shape()) }.into());
            }
            if split.labels().is_empty() {
                return Err(DataError::Inconsistent { path, reason: format!("no {name} labels") }.into());
            }
            if let Some(&l) = split.labels().iter().find(|&&l| l > 9) {
                return Err(DataError::Inconsistent { path, reason: format!("label {l} outside 0..=9") }.into());
            }
        }
        if let Some(&l) = s.valid.labels().iter().find(|&&l| l > 9) {
            return Err(DataError::Inconsistent { path: dir.display().to_string(), reason: format!("label {l} outside 0..=9") }.into());
        }
        Ok(Mnist { train: s.train, valid: s.valid, test: s.test })
    }
}
