//! Continuous data held in memory (tabular sets, 2-D toy densities).

use faer::{Mat, MatMut};

use super::dataset::{check_indices, Dataset, Dequantization};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::Shape;

/// Continuous examples, one per column of a `D x N` matrix, used as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Shape,
    data: Mat<f64>,
}

impl Tensor {
    /// Examples `data` (`D x N`, one per column) of shape `shape`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `shape.dim()` is not `D`; [`Error::NonFinite`] for
    /// NaN or infinite values.
    pub fn new(shape: Shape, data: Mat<f64>) -> Result<Self> {
        if shape.checked_dim()? != data.nrows() {
            return Err(Error::InvalidArgument { op: "Tensor::new", reason: format!("{} rows for examples of shape {shape}", data.nrows()) });
        }
        if !crate::util::all_finite(data.as_ref()) {
            return Err(Error::NonFinite { op: "Tensor::new" });
        }
        Ok(Self { shape, data })
    }
    /// Flat examples: the columns of `data`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn flat(data: Mat<f64>) -> Result<Self> {
        Self::new(Shape::flat(data.nrows()), data)
    }
    /// The examples.
    pub fn data(&self) -> &Mat<f64> {
        &self.data
    }
    /// Columns `start..end` (clamped).
    pub fn range(&self, start: usize, end: usize) -> Tensor {
        let end = end.min(self.data.ncols());
        let start = start.min(end);
        Tensor { shape: self.shape, data: self.data.as_ref().subcols(start, end - start).to_owned() }
    }
}

impl Dataset for Tensor {
    fn len(&self) -> usize {
        self.data.ncols()
    }
    fn shape(&self) -> Shape {
        self.shape
    }
    fn dequantization(&self) -> Dequantization {
        Dequantization::None
    }
    fn fill_batch<T: Real>(&self, idx: &[usize], out: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "Tensor::fill_batch";
        check_shape(OP, (self.data.nrows(), idx.len()), (out.nrows(), out.ncols()))?;
        check_indices(OP, idx, self.data.ncols())?;
        let mut out = out;
        for (j, &i) in idx.iter().enumerate() {
            for r in 0..self.data.nrows() {
                out[(r, j)] = T::from_f64(self.data[(r, i)]);
            }
        }
        Ok(())
    }
}
