//! 8-bit images of any shape (MNIST, other IDX sets, CIFAR-10) with optional labels.

use faer::MatMut;

use super::dataset::{check_indices, Dataset, Dequantization};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::Shape;

/// Images of one shape, each `shape.dim()` bytes in channel-major, row-major order, and
/// their labels (empty for unlabelled data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    shape: Shape,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl Images {
    /// Images from raw bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `images` is not a whole number of `shape` images, or
    /// `labels` is neither empty nor one per image.
    pub fn new(shape: Shape, images: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        const OP: &str = "Images::new";
        let d = shape.checked_dim()?;
        if !images.len().is_multiple_of(d) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} bytes is not a whole number of {shape} images", images.len()) });
        }
        if !labels.is_empty() && labels.len() != images.len() / d {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} labels for {} images", labels.len(), images.len() / d) });
        }
        Ok(Self { shape, images, labels })
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len() / self.shape.dim().max(1)
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    /// The image shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// All images, `len() * shape().dim()` bytes.
    pub fn images(&self) -> &[u8] {
        &self.images
    }
    /// All labels (empty for unlabelled data).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let d = self.shape.dim();
        self.images.get(i.checked_mul(d)?..(i + 1).checked_mul(d)?)
    }
    /// The first `n` images (all of them if `n >= len()`), e.g. for quick runs.
    pub fn head(&self, n: usize) -> Images {
        self.range(0, n.min(self.len()))
    }
    /// Images `start..end` (clamped to the set).
    pub fn range(&self, start: usize, end: usize) -> Images {
        let (end, d) = (end.min(self.len()), self.shape.dim());
        let start = start.min(end);
        let labels = if self.labels.is_empty() { Vec::new() } else { self.labels[start..end].to_vec() };
        Images { shape: self.shape, images: self.images[start * d..end * d].to_vec(), labels }
    }
    /// Split off the last `n` images: `(first len - n, last n)`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `0 < n < len()`.
    pub fn split_last(self, n: usize) -> Result<(Images, Images)> {
        let len = self.len();
        if n == 0 || n >= len {
            return Err(Error::InvalidArgument { op: "Images::split_last", reason: format!("a validation split of {n} needs 0 < n < {len} images") });
        }
        Ok((self.range(0, len - n), self.range(len - n, len)))
    }

    /// Write the images `idx` (one per column, raw pixel values 0–255 as `T`) into `out`
    /// (`D x idx.len()`). Allocation-free.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `out` is not `D x idx.len()`,
    /// [`Error::InvalidArgument`] for an index past the end.
    pub fn fill_batch<T: Real>(&self, idx: &[usize], out: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "Images::fill_batch";
        let d = self.shape.dim();
        check_shape(OP, (d, idx.len()), (out.nrows(), out.ncols()))?;
        check_indices(OP, idx, self.len())?;
        let mut out = out;
        for (j, &i) in idx.iter().enumerate() {
            let px = &self.images[i * d..(i + 1) * d];
            for (r, &p) in px.iter().enumerate() {
                out[(r, j)] = T::from_f64(p as f64);
            }
        }
        Ok(())
    }
}

impl Dataset for Images {
    fn len(&self) -> usize {
        Images::len(self)
    }
    fn shape(&self) -> Shape {
        self.shape
    }
    fn dequantization(&self) -> Dequantization {
        Dequantization::Uniform
    }
    fn fill_batch<T: Real>(&self, idx: &[usize], out: MatMut<'_, T>) -> Result<()> {
        Images::fill_batch(self, idx, out)
    }
}
