//! The [`Dataset`] trait the [`Trainer`](crate::train::Trainer) trains on.

use faer::MatMut;

use crate::error::Result;
use crate::real::Real;
use crate::shape::Shape;

/// How examples become continuous values before the flow sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dequantization {
    /// The values are used as they are (continuous data).
    None,
    /// Integer-valued data (8-bit pixels): $U[0, 1)$ noise is added to every entry, so that
    /// the flow's density on the dequantised data bounds the discrete likelihood.
    Uniform,
}

/// A finite set of examples of one [`Shape`], addressed by index.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The shape of one example.
    fn shape(&self) -> Shape;
    /// How the trainer turns examples into continuous values.
    fn dequantization(&self) -> Dequantization;
    /// Write examples `idx` (one per column, raw values) into `out` (`D x idx.len()`).
    /// Should not allocate.
    ///
    /// # Errors
    /// Shape errors; an index past the end.
    fn fill_batch<T: Real>(&self, idx: &[usize], out: MatMut<'_, T>) -> Result<()>;
}

/// Train, validation and test splits of one data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits<D> {
    /// Training examples.
    pub train: D,
    /// Validation examples (model selection, early stopping).
    pub valid: D,
    /// Test examples (final numbers only).
    pub test: D,
}

pub(crate) fn check_indices(op: &'static str, idx: &[usize], len: usize) -> Result<()> {
    if let Some(&bad) = idx.iter().find(|&&i| i >= len) {
        return Err(crate::Error::InvalidArgument { op, reason: format!("index {bad} >= {len} examples") });
    }
    Ok(())
}
