//! MNIST: the four IDX files, checked against their SHA-256 list, split as in the paper
//! (first 50 000 training images for training, the last 10 000 for validation, the
//! 10 000 test images for testing).

use std::path::{Path, PathBuf};

use faer::MatMut;

use super::checksum::{parse_sums, verify};
use super::idx::{parse_idx, read_maybe_gz, IdxArray};
use crate::error::{check_shape, DataError, Result};
use crate::real::Real;

/// Image side length.
pub const SIDE: usize = 28;
/// Pixels per image, $28\cdot28 = 784$.
pub const PIXELS: usize = SIDE * SIDE;

/// Images and labels of one split; image `i` is `PIXELS` bytes in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// All images, `len() * PIXELS` bytes.
    pub fn images(&self) -> &[u8] {
        &self.images
    }
    /// All labels (0–9).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        self.images.get(i * PIXELS..(i + 1) * PIXELS)
    }
    /// The first `n` examples (all of them if `n >= len()`), e.g. for quick runs.
    pub fn head(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split { images: self.images[..n * PIXELS].to_vec(), labels: self.labels[..n].to_vec() }
    }

    /// Write the images `idx` (one per column, raw pixel values 0–255 as `T`) into `out`
    /// (`PIXELS x idx.len()`). Allocation-free.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `out` is not
    /// `PIXELS x idx.len()`, [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an
    /// index past the end.
    pub fn fill_batch<T: Real>(&self, idx: &[usize], out: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "Split::fill_batch";
        check_shape(OP, (PIXELS, idx.len()), (out.nrows(), out.ncols()))?;
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(crate::Error::InvalidArgument { op: OP, reason: format!("index {bad} >= {} examples", self.len()) });
        }
        let mut out = out;
        for (j, &i) in idx.iter().enumerate() {
            let px = &self.images[i * PIXELS..(i + 1) * PIXELS];
            for (r, &p) in px.iter().enumerate() {
                out[(r, j)] = T::from_f64(p as f64);
            }
        }
        Ok(())
    }

    fn from_arrays(images: IdxArray, labels: IdxArray, img_path: &str, lbl_path: &str) -> Result<Split, DataError> {
        let inconsistent = |path: &str, reason: String| DataError::Inconsistent { path: path.to_string(), reason };
        if images.dims.len() != 3 || images.dims[1..] != [SIDE, SIDE] {
            return Err(inconsistent(img_path, format!("image dimensions {:?}, expected [n, 28, 28]", images.dims)));
        }
        if labels.dims.len() != 1 {
            return Err(inconsistent(lbl_path, format!("label dimensions {:?}, expected [n]", labels.dims)));
        }
        if images.dims[0] != labels.dims[0] {
            return Err(inconsistent(img_path, format!("{} images but {} labels", images.dims[0], labels.dims[0])));
        }
        if let Some(&l) = labels.data.iter().find(|&&l| l > 9) {
            return Err(inconsistent(lbl_path, format!("label {l} outside 0..=9")));
        }
        Ok(Split { images: images.data, labels: labels.data })
    }
}

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

const FILES: [&str; 4] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

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
    /// malformed IDX file, images and labels that disagree, labels outside 0–9, or a
    /// validation size not smaller than the training set.
    pub fn load_with(dir: &Path, opts: LoadOptions) -> Result<Mnist> {
        let sums = if opts.verify_checksums {
            let path = dir.join("SHA256SUMS");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| DataError::Io { path: path.display().to_string(), reason: e.to_string() })?;
            Some(parse_sums(&text, &path.display().to_string())?)
        } else {
            None
        };
        let mut arrays = Vec::with_capacity(4);
        for name in FILES {
            let gz = dir.join(format!("{name}.gz"));
            let (path, file_name) = if gz.exists() { (gz, format!("{name}.gz")) } else { (dir.join(name), name.to_string()) };
            if let Some(sums) = &sums {
                let raw = std::fs::read(&path).map_err(|e| DataError::Io { path: path.display().to_string(), reason: e.to_string() })?;
                verify(&raw, &file_name, sums, &path)?;
            }
            let bytes = read_maybe_gz(&path)?;
            arrays.push((parse_idx(&bytes, &path.display().to_string())?, path.display().to_string()));
        }
        let mut it = arrays.into_iter();
        let (Some((ti, tip)), Some((tl, tlp)), Some((si, sip)), Some((sl, slp))) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(DataError::Inconsistent { path: dir.display().to_string(), reason: "expected four files".into() }.into());
        };
        let train_all = Split::from_arrays(ti, tl, &tip, &tlp)?;
        let test = Split::from_arrays(si, sl, &sip, &slp)?;
        let n = train_all.len();
        if opts.validation >= n {
            return Err(DataError::Inconsistent {
                path: tip,
                reason: format!("validation split of {} needs more than {n} training images", opts.validation),
            }
            .into());
        }
        let cut = n - opts.validation;
        let train = Split { images: train_all.images[..cut * PIXELS].to_vec(), labels: train_all.labels[..cut].to_vec() };
        let valid = Split { images: train_all.images[cut * PIXELS..].to_vec(), labels: train_all.labels[cut..].to_vec() };
        Ok(Mnist { train, valid, test })
    }
}
