//! Parameter gradients of one transform: one block per parameter, in the order of
//! [`Transform::params`](super::Transform::params).

use std::any::Any;

use faer::Mat;

use super::{Blocks, BlocksMut};
use crate::error::{Error, Result};
use crate::real::Real;

/// Storage for a transform's gradient blocks. Built-in layers keep their own typed
/// gradients (e.g. [`LinearGrads`](crate::layers::linear::LinearGrads)); `Vec<Mat<T>>`
/// serves any transform whose gradient blocks are stored like its parameters.
pub trait GradBlocks<T: Real>: Any + Send + Sync + std::fmt::Debug {
    /// The blocks, shaped and ordered like the transform's parameters.
    fn blocks(&self) -> Blocks<'_, T>;
    /// The same, mutable.
    fn blocks_mut(&mut self) -> BlocksMut<'_, T>;
    /// A boxed copy.
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>>;
}

impl<T: Real> GradBlocks<T> for Vec<Mat<T>> {
    fn blocks(&self) -> Blocks<'_, T> {
        self.iter().map(|m| m.as_ref()).collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        self.iter_mut().map(|m| m.as_mut()).collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

/// The gradients of one transform's parameters (of the loss, see [`crate::layers`]).
#[derive(Debug)]
pub struct Grads<T: Real> {
    inner: Box<dyn GradBlocks<T>>,
}

impl<T: Real> Clone for Grads<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone_boxed() }
    }
}

impl<T: Real> Grads<T> {
    /// Wrap a transform's own gradient storage.
    pub fn new(store: impl GradBlocks<T>) -> Self {
        Self { inner: Box::new(store) }
    }
    /// Zero blocks shaped like `params` (plain `Vec<Mat<T>>` storage).
    pub fn zeros_like(params: &[super::Param<'_, T>]) -> Self {
        Self::new(params.iter().map(|p| Mat::<T>::zeros(p.value.nrows(), p.value.ncols())).collect::<Vec<_>>())
    }
    /// No parameters.
    pub fn empty() -> Self {
        Self::new(Vec::<Mat<T>>::new())
    }
    /// The storage as a `G`, for the transform that made it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for gradients made by another kind of transform.
    pub fn downcast_ref<G: GradBlocks<T>>(&self) -> Result<&G> {
        let any: &dyn Any = &*self.inner;
        any.downcast_ref().ok_or_else(foreign)
    }
    /// The storage as a `G`, mutable.
    ///
    /// # Errors
    /// As [`downcast_ref`](Self::downcast_ref).
    pub fn downcast_mut<G: GradBlocks<T>>(&mut self) -> Result<&mut G> {
        let any: &mut dyn Any = &mut *self.inner;
        any.downcast_mut().ok_or_else(foreign)
    }
    /// The blocks in parameter order.
    pub fn blocks(&self) -> Blocks<'_, T> {
        self.inner.blocks()
    }
    /// The blocks in parameter order, mutable.
    pub fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        self.inner.blocks_mut()
    }
    /// True when there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks().is_empty()
    }
    /// $\sum$ of squared entries, in `f64` (for norms and clipping).
    pub fn sum_sq(&self) -> f64 {
        self.blocks().into_iter().map(crate::util::sum_sq).sum()
    }
    /// Multiply every block by `s`.
    pub fn scale(&mut self, s: T) {
        for m in self.blocks_mut() {
            faer::zip!(m).for_each(|faer::unzip!(v)| *v *= s);
        }
    }
    /// Set every block to zero.
    pub fn fill_zero(&mut self) {
        for m in self.blocks_mut() {
            faer::zip!(m).for_each(|faer::unzip!(v)| *v = T::from_f64(0.0));
        }
    }
    /// True when every entry is finite.
    pub fn all_finite(&self) -> bool {
        self.blocks().into_iter().all(crate::util::all_finite)
    }
    /// [`all_finite`](Self::all_finite), each large block read by `par`'s threads.
    pub fn all_finite_with(&self, par: faer::Par) -> bool {
        self.blocks().into_iter().all(|b| crate::util::all_finite_par(b, par))
    }
}

fn foreign() -> Error {
    Error::InvalidArgument { op: "Grads::downcast", reason: "gradients made for another kind of transform".into() }
}
