//! Kind name → constructor: how a checkpoint turns a stored spec back into a transform.
//! The built-in kinds are registered; a user adds theirs with [`Registry::register`].

use std::collections::HashMap;

use faer::Mat;
use safetensors::tensor::TensorView;

use super::spec::LayerSpec;
use super::tensors;
use crate::error::{Error, Result};
use crate::real::Real;
use crate::transform::Transform;

/// Builds a transform from its stored spec (the JSON object its
/// [`Transform::spec`] returned) and its tensors.
pub type Builder<T> = fn(&serde_json::Value, &mut LayerTensors<'_, T>) -> Result<Box<dyn Transform<T>>>;

/// The tensors stored for one transform (`layers.NNN.NAME`), decoded on demand.
pub struct LayerTensors<'a, T: Real> {
    views: HashMap<String, TensorView<'a>>,
    _t: std::marker::PhantomData<T>,
}

impl<'a, T: Real> LayerTensors<'a, T> {
    pub(crate) fn new(views: HashMap<String, TensorView<'a>>) -> Self {
        Self { views, _t: std::marker::PhantomData }
    }
    /// Take tensor `name`, converted to `T`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when it is missing or not a 2-D float tensor.
    pub fn take(&mut self, name: &str) -> Result<Mat<T>> {
        let v = self.views.remove(name).ok_or_else(|| Error::InvalidArgument { op: "LayerTensors::take", reason: format!("missing tensor {name}") })?;
        tensors::decode::<T>(v.dtype(), v.shape(), v.data())
            .map_err(|e| Error::InvalidArgument { op: "LayerTensors::take", reason: format!("tensor {name}: {e}") })
    }
    /// Names not taken yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }
}

/// Constructors by kind name.
#[derive(Clone)]
pub struct Registry<T: Real> {
    builders: HashMap<String, Builder<T>>,
}

impl<T: Real> std::fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.builders.keys().collect();
        kinds.sort();
        f.debug_struct("Registry").field("kinds", &kinds).finish()
    }
}

/// The built-in kinds.
const BUILTIN: [&str; 18] = [
    "preprocess",
    "snf-linear",
    "exact-linear",
    "relative-linear",
    "snf-conv",
    "exact-conv",
    "smooth-leaky-relu",
    "leaky-relu",
    "squeeze",
    "spline",
    "split",
    "standardize",
    "inv-conv1x1",
    "autoregressive-conv",
    "conv-exp",
    "actnorm",
    "affine-coupling",
    "lu-conv1x1",
];

fn build_builtin<T: Real>(spec: &serde_json::Value, tensors: &mut LayerTensors<'_, T>) -> Result<Box<dyn Transform<T>>> {
    let spec: LayerSpec = serde_json::from_value(spec.clone()).map_err(|e| Error::InvalidArgument { op: "Registry::build", reason: e.to_string() })?;
    let ts = spec.tensor_names().into_iter().map(|n| tensors.take(n)).collect::<Result<Vec<_>>>()?;
    spec.build(ts)
}

impl<T: Real> Default for Registry<T> {
    fn default() -> Self {
        Self::builtin()
    }
}

impl<T: Real> Registry<T> {
    /// Every built-in transform kind.
    pub fn builtin() -> Self {
        let builders = BUILTIN.iter().map(|k| (k.to_string(), build_builtin::<T> as Builder<T>)).collect();
        Self { builders }
    }
    /// Add (or replace) the constructor of `kind`.
    pub fn register(&mut self, kind: &str, builder: Builder<T>) -> &mut Self {
        self.builders.insert(kind.to_string(), builder);
        self
    }
    /// Build a transform from its spec (which names its `"kind"`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a spec without a kind, an unknown kind, tensors left
    /// over; the constructor's errors.
    pub fn build(&self, spec: &serde_json::Value, tensors: &mut LayerTensors<'_, T>) -> Result<Box<dyn Transform<T>>> {
        const OP: &str = "Registry::build";
        let kind =
            spec.get("kind").and_then(|k| k.as_str()).ok_or_else(|| Error::InvalidArgument { op: OP, reason: "a layer spec without a \"kind\"".into() })?;
        let b = self
            .builders
            .get(kind)
            .ok_or_else(|| Error::InvalidArgument { op: OP, reason: format!("unknown transform kind {kind:?} (register it with Registry::register)") })?;
        let t = b(spec, tensors)?;
        if let Some(extra) = tensors.remaining().next() {
            return Err(Error::InvalidArgument { op: OP, reason: format!("unexpected tensor {extra} for a {kind} layer") });
        }
        Ok(t)
    }
}
