//! CIFAR-10 in its binary format: `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin` (optionally under `cifar-10-batches-bin/`), each a sequence of
//! 3073-byte records: one label byte (0–9), then the 32x32 red, green and blue planes
//! (row-major), exactly the crate's channel-major `3x32x32` layout.

use std::path::{Path, PathBuf};

use super::checksum::verify;
use super::dataset::Splits;
use super::idx_set::Checksums;
use super::images::Images;
use crate::error::{DataError, Result};
use crate::shape::Shape;

/// CIFAR-10's image shape.
pub const SHAPE: Shape = Shape::image(3, 32, 32);
/// Bytes per record: a label and 3072 pixels.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// The training files.
pub const TRAIN_FILES: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// The folder holding the `.bin` files: `dir` or `dir/cifar-10-batches-bin`.
fn batches_dir(dir: &Path) -> PathBuf {
    let sub = dir.join("cifar-10-batches-bin");
    if !dir.join(TEST_FILE).is_file() && sub.join(TEST_FILE).is_file() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// Parse one batch file's bytes.
///
/// # Errors
/// [`DataError::WrongLength`] for a size that is not a whole number of records,
/// [`DataError::Inconsistent`] for a label above 9.
pub fn parse_batch(bytes: &[u8], path: &str) -> Result<Images, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        let n = (bytes.len() / RECORD).max(1) as u64;
        return Err(DataError::WrongLength { path: path.to_string(), expected: n * RECORD as u64, got: bytes.len() as u64 });
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact(RECORD) {
        if rec[0] > 9 {
            return Err(DataError::Inconsistent { path: path.to_string(), reason: format!("label {} outside 0..=9", rec[0]) });
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Images::new(SHAPE, images, labels).map_err(|e| DataError::Inconsistent { path: path.to_string(), reason: e.to_string() })
}

/// Load CIFAR-10 from `dir`: training = the first `50 000 - validation` images of the five
/// training batches, validation = the last `validation`, test = `test_batch.bin`.
/// Training batches that are missing are an error; checksums as `checksums` says (a
/// `SHA256SUMS` list beside the files).
///
/// # Errors
/// [`Error::Data`](crate::Error::Data) for a missing, unreadable, mis-sized or
/// mis-checksummed file, or a validation split not smaller than the training set.
pub fn load_cifar10(dir: &Path, validation: usize, checksums: Checksums) -> Result<Splits<Images>> {
    let dir = batches_dir(dir);
    let sums = super::idx_set::checksum_list(&dir, checksums)?;
    let read = |name: &str| -> Result<Images> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| DataError::Io {
            path: path.display().to_string(),
            reason: format!("{e} (a CIFAR-10 folder holds {} and {TEST_FILE})", TRAIN_FILES.join(", ")),
        })?;
        if let Some(s) = &sums {
            verify(&bytes, name, s, &path)?;
        }
        Ok(parse_batch(&bytes, &path.display().to_string())?)
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in TRAIN_FILES {
        let b = read(name)?;
        images.extend_from_slice(b.images());
        labels.extend_from_slice(b.labels());
    }
    let train_all = Images::new(SHAPE, images, labels)?;
    let n = train_all.len();
    let (train, valid) = train_all.split_last(validation).map_err(|_| DataError::Inconsistent {
        path: dir.display().to_string(),
        reason: format!("validation split of {validation} needs more than {validation} training images, there are {n}"),
    })?;
    Ok(Splits { train, valid, test: read(TEST_FILE)? })
}
