//! Any IDX data set laid out like MNIST (Fashion-MNIST, KMNIST, EMNIST, your own): the
//! four files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` in one folder, each raw or
//! gzip-compressed (`NAME.gz`, preferred). Label files are optional. Images may be
//! `[n, h, w]` (one channel), `[n, c, h, w]` or `[n, d]` (flat).

use std::path::{Path, PathBuf};

use super::checksum::{parse_sums, verify};
use super::dataset::Splits;
use super::idx::{read_idx_checked, IdxArray};
use super::images::Images;
use crate::error::{DataError, Result};
use crate::shape::Shape;

/// Whether to check the files against a `SHA256SUMS` list in the same folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checksums {
    /// `SHA256SUMS` must exist and list every file.
    Required,
    /// Verify when `SHA256SUMS` exists, else load unchecked.
    #[default]
    IfPresent,
    /// Never verify.
    Skip,
}

/// How to load an IDX data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdxOptions {
    /// Checksum policy.
    pub checksums: Checksums,
    /// How many of the *last* training images form the validation split (`None`: 10 000,
    /// or a sixth of the training images when there are fewer than 60 000).
    pub validation: Option<usize>,
}

/// The four file names, in the order train images, train labels, test images, test labels.
pub const FILES: [&str; 4] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// The default validation size for `n` training images.
pub fn default_validation(n: usize) -> usize {
    if n >= 60_000 {
        10_000
    } else {
        n / 6
    }
}

/// Where file `name` lives in `dir`: `NAME.gz` if present, else `NAME`; `None` if neither.
fn find(dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Some((gz, format!("{name}.gz")));
    }
    let raw = dir.join(name);
    raw.is_file().then(|| (raw, name.to_string()))
}

/// The `SHA256SUMS` list of `dir` as `policy` says: `None` to load unchecked.
pub(crate) fn checksum_list(dir: &Path, policy: Checksums) -> Result<Option<Vec<(String, String)>>> {
    let sums_path = dir.join("SHA256SUMS");
    Ok(match policy {
        Checksums::Skip => None,
        Checksums::IfPresent if !sums_path.is_file() => None,
        _ => {
            let text = std::fs::read_to_string(&sums_path).map_err(|e| DataError::Io {
                path: sums_path.display().to_string(),
                reason: format!("{e} (the checksum list; pass --no-checksums / Checksums::Skip to load without one)"),
            })?;
            Some(parse_sums(&text, &sums_path.display().to_string())?)
        }
    })
}

/// Load train/validation/test splits from `dir` (see the module docs).
///
/// # Errors
/// [`Error::Data`](crate::Error::Data): a missing image file (the message lists the
/// names looked for), a bad checksum, a malformed IDX file, images and labels that
/// disagree, or a validation size not smaller than the training set.
pub fn load_idx(dir: &Path, opts: IdxOptions) -> Result<Splits<Images>> {
    let sums = checksum_list(dir, opts.checksums)?;
    let read = |name: &str, required: bool| -> Result<Option<(IdxArray, String)>> {
        let Some((path, file_name)) = find(dir, name) else {
            if required {
                return Err(DataError::Io {
                    path: dir.join(name).display().to_string(),
                    reason: format!("not found (looked for {name}.gz and {name}; an IDX folder holds {})", FILES.join(", ")),
                }
                .into());
            }
            return Ok(None);
        };
        if let Some(sums) = &sums {
            let raw = std::fs::read(&path).map_err(|e| DataError::Io { path: path.display().to_string(), reason: e.to_string() })?;
            verify(&raw, &file_name, sums, &path)?;
        }
        Ok(Some((read_idx_checked(&path)?, path.display().to_string())))
    };
    let (ti, tip) = read(FILES[0], true)?.ok_or_else(|| missing(dir))?;
    let tl = read(FILES[1], false)?;
    let (si, sip) = read(FILES[2], true)?.ok_or_else(|| missing(dir))?;
    let sl = read(FILES[3], false)?;
    let train_all = images_from(ti, tl, &tip)?;
    let test = images_from(si, sl, &sip)?;
    if test.shape() != train_all.shape() {
        return Err(DataError::Inconsistent { path: sip, reason: format!("test images are {}, training images {}", test.shape(), train_all.shape()) }.into());
    }
    let n = train_all.len();
    let v = opts.validation.unwrap_or_else(|| default_validation(n));
    let (train, valid) = train_all
        .split_last(v)
        .map_err(|_| DataError::Inconsistent { path: tip, reason: format!("validation split of {v} needs more than {v} training images, there are {n}") })?;
    Ok(Splits { train, valid, test })
}

fn missing(dir: &Path) -> crate::Error {
    DataError::Io { path: dir.display().to_string(), reason: "image file not found".into() }.into()
}

/// The shape of the images of an IDX array `[n, ...]`.
fn image_shape(dims: &[usize], path: &str) -> Result<Shape, DataError> {
    let bad = |reason: String| DataError::BadHeader { path: path.to_string(), reason };
    let shape = match *dims {
        [_, d] => Shape::flat(d),
        [_, h, w] => Shape::image(1, h, w),
        [_, c, h, w] => Shape::image(c, h, w),
        _ => return Err(bad(format!("image dimensions {dims:?}, expected [n, d], [n, h, w] or [n, c, h, w]"))),
    };
    shape.checked_dim().map_err(|_| bad(format!("empty or oversized image shape {dims:?}")))?;
    Ok(shape)
}

fn images_from(images: IdxArray, labels: Option<(IdxArray, String)>, img_path: &str) -> Result<Images, DataError> {
    let shape = image_shape(&images.dims, img_path)?;
    let labels = match labels {
        None => Vec::new(),
        Some((l, lp)) => {
            if l.dims.len() != 1 {
                return Err(DataError::Inconsistent { path: lp, reason: format!("label dimensions {:?}, expected [n]", l.dims) });
            }
            if l.dims[0] != images.dims[0] {
                return Err(DataError::Inconsistent { path: img_path.to_string(), reason: format!("{} images but {} labels", images.dims[0], l.dims[0]) });
            }
            l.data
        }
    };
    Images::new(shape, images.data, labels).map_err(|e| DataError::Inconsistent { path: img_path.to_string(), reason: e.to_string() })
}
