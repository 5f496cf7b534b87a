//! Checkpoints: a flow's parameters, optionally the training state to continue from, and
//! the cached data-independent log-det (Eqs. 6–7), in one
//! [safetensors](https://huggingface.co/docs/safetensors) file.
//!
//! * Tensors: `layers.NNN.{w,r,b,widths,heights,slopes}` (row-major, in the flow's own
//!   precision) and, with a training state, `adam.NNN.K.{m,v}`.
//! * Metadata `snf`: a JSON document with the format version, the precision, the input
//!   shape, every transform's spec ([`Transform::spec`]: its kind and configuration, rebuilt
//!   through a [`Registry`]), the cached $\sum_k\log|\det W_k|$, the
//!   training configuration and state (step, λ, best epoch, per-epoch records), and a
//!   free-form `meta` object for the caller (the CLI keeps its run settings there).
//! * Metadata `snf.sha256`: SHA-256 of the JSON text and every tensor. A truncated,
//!   bit-flipped or edited file fails to load with [`CheckpointError::Checksum`] or
//!   [`CheckpointError::Format`]; it never yields a silently different model.
//!
//! Files are written with [`write_atomic`]: a crash mid-write leaves the previous file.
//!
//! # Example
//! ```
//! use snf::checkpoint::Checkpoint;
//! use snf::flow::models::{fc_two_layer, Gradient};
//!
//! let flow = fc_two_layer::<f32, _>(snf::Shape::image(1, 28, 28), Gradient::SelfNormalizing, &mut snf::init::rng(0))?;
//! let ckpt = Checkpoint::new(flow)?;
//! let bytes = ckpt.to_bytes()?;
//! let back = Checkpoint::<f32>::from_bytes(&bytes, "in-memory")?;
//! assert_eq!(back.static_log_det, ckpt.static_log_det);
//! assert_eq!(back.flow.layers()[1].params()[0].value, ckpt.flow.layers()[1].params()[0].value);
//! # Ok::<(), snf::Error>(())
//! ```

mod atomic;
mod registry;
mod spec;
mod tensors;

pub use atomic::{write_atomic, write_atomic_with};
pub use registry::{Builder, LayerTensors, Registry};
pub use spec::{ConvSpec, LayerSpec, MAX_DENSE_DIM};

use std::collections::HashMap;
use std::path::Path;

use faer::{Mat, Par};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, Error, Result};
use crate::flow::Flow;
use crate::optim::AdamState;
use crate::real::Real;
use crate::shape::Shape;
use crate::train::{EpochRecord, Lambda, TrainConfig, TrainerState};
use crate::transform::Transform;

/// The format name in the metadata.
pub const FORMAT: &str = "snf-checkpoint";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
const META_KEY: &str = "snf";
const DIGEST_KEY: &str = "snf.sha256";

/// A flow, its cached log-det and, optionally, what is needed to continue training it.
#[derive(Debug, Clone)]
pub struct Checkpoint<T: Real> {
    /// The flow.
    pub flow: Flow<T>,
    /// $\sum_k\log|\det W_k|$ of [`flow`](Self::flow), computed once (by LU) when the
    /// checkpoint was made: evaluation adds it to every example's data-dependent terms.
    pub static_log_det: f64,
    /// The training configuration and state, for resuming.
    pub training: Option<(TrainConfig, TrainerState<T>)>,
    /// Free-form JSON for the caller.
    pub meta: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    dtype: String,
    dim: usize,
    /// The input shape (absent in files of the first release: flat `dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<[usize; 3]>,
    layers: Vec<serde_json::Value>,
    static_log_det: f64,
    training: Option<TrainingHeader>,
    meta: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct TrainingHeader {
    config: TrainConfig,
    step: u64,
    lambda: Lambda,
    adam_steps: Vec<u64>,
    best: Option<(usize, f64)>,
    history: Vec<EpochRecord>,
}

fn dtype_name<T: Real>() -> &'static str {
    match tensors::dtype_of::<T>() {
        safetensors::Dtype::F32 => "f32",
        _ => "f64",
    }
}

/// The precision a checkpoint's tensors are stored in: `"f32"` or `"f64"`, read from its
/// metadata alone (a full [`Checkpoint::from_bytes`] still verifies everything), so that a
/// caller can load it in its own precision.
///
/// # Errors
/// [`CheckpointError::Format`] when the metadata is missing or malformed.
pub fn stored_dtype(bytes: &[u8], origin: &str) -> Result<&'static str> {
    let format = |reason: String| Error::from(CheckpointError::Format { path: origin.to_string(), reason });
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(format!("not a safetensors file: {e}")))?;
    let json = metadata.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| format(format!("no `{META_KEY}` metadata")))?;
    let header: Header = serde_json::from_str(json).map_err(|e| format(format!("bad `{META_KEY}` metadata: {e}")))?;
    match header.dtype.as_str() {
        "f32" => Ok("f32"),
        "f64" => Ok("f64"),
        other => Err(format(format!("unknown precision {other:?}"))),
    }
}

impl<T: Real> Checkpoint<T> {
    /// A checkpoint of `flow` without training state; computes the log-det cache.
    ///
    /// # Errors
    /// The LU's errors (a singular layer), or a non-finite log-det.
    pub fn new(flow: Flow<T>) -> Result<Self> {
        let mut ws = flow.workspace(1, Par::Seq)?;
        let static_log_det = flow.static_log_det(&mut ws)?;
        if !static_log_det.is_finite() {
            return Err(Error::NonFinite { op: "Checkpoint::new" });
        }
        Ok(Self { flow, static_log_det, training: None, meta: serde_json::Value::Null })
    }

    /// Add the training configuration and state.
    pub fn with_training(mut self, config: TrainConfig, state: TrainerState<T>) -> Self {
        self.training = Some((config, state));
        self
    }

    /// Add caller metadata.
    pub fn with_meta(mut self, meta: serde_json::Value) -> Self {
        self.meta = meta;
        self
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// [`CheckpointError::Format`] if serialisation fails (it does not for valid flows).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let fmt = |reason: String| Error::from(CheckpointError::Format { path: "<memory>".into(), reason });
        let mut owned = Vec::new();
        let mut specs = Vec::new();
        for (k, layer) in self.flow.layers().iter().enumerate() {
            let spec = layer.spec();
            if !spec.is_object() {
                return Err(fmt(format!("transform {k} ({}) has no spec and cannot be saved (implement Transform::spec)", layer.kind())));
            }
            specs.push(spec);
            for p in layer.params() {
                owned.push(tensors::encode(format!("layers.{k:03}.{}", p.name), p.value));
            }
        }
        let training = self.training.as_ref().map(|(config, state)| {
            for (k, a) in state.adam.iter().enumerate() {
                for (i, (m, v)) in a.m.iter().zip(&a.v).enumerate() {
                    owned.push(tensors::encode(format!("adam.{k:03}.{i}.m"), m.as_ref()));
                    owned.push(tensors::encode(format!("adam.{k:03}.{i}.v"), v.as_ref()));
                }
            }
            TrainingHeader {
                config: *config,
                step: state.step,
                lambda: state.lambda,
                adam_steps: state.adam.iter().map(|a| a.t).collect(),
                best: state.best,
                history: state.history.clone(),
            }
        });
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            dtype: dtype_name::<T>().into(),
            dim: self.flow.dim(),
            shape: Some(self.flow.shape().to_array()),
            layers: specs,
            static_log_det: self.static_log_det,
            training,
            meta: self.meta.clone(),
        };
        let json = serde_json::to_string(&header).map_err(|e| fmt(e.to_string()))?;
        let digest = tensors::digest(&json, owned.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.data.as_slice())));
        let views = owned
            .iter()
            .map(|t| TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|v| (t.name.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fmt(e.to_string()))?;
        let meta = HashMap::from([(META_KEY.to_string(), json), (DIGEST_KEY.to_string(), digest)]);
        safetensors::serialize(views, Some(meta)).map_err(|e| fmt(e.to_string()))
    }

    /// Write to `path` atomically (see [`write_atomic`]).
    ///
    /// # Errors
    /// [`CheckpointError::Io`]; as [`to_bytes`](Self::to_bytes).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Read a checkpoint written by [`save`](Self::save).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if the file cannot be read; as [`from_bytes`](Self::from_bytes).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &Registry::builtin())
    }

    /// [`load`](Self::load) with user transform kinds in `registry`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with(path: &Path, registry: &Registry<T>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_bytes_with(&bytes, &path.display().to_string(), registry)
    }

    /// Parse a checkpoint; `origin` names it in errors. Tensors stored in the other float
    /// precision are converted.
    ///
    /// # Errors
    /// [`CheckpointError::Format`] for anything that is not a well-formed checkpoint,
    /// [`CheckpointError::Checksum`] when the contents changed after writing,
    /// [`CheckpointError::Invalid`] when an intact file describes an invalid model.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        Self::from_bytes_with(bytes, origin, &Registry::builtin())
    }

    /// [`from_bytes`](Self::from_bytes) with user transform kinds in `registry`.
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes).
    pub fn from_bytes_with(bytes: &[u8], origin: &str, registry: &Registry<T>) -> Result<Self> {
        let format = |reason: String| Error::from(CheckpointError::Format { path: origin.to_string(), reason });
        let invalid = |e: Error| Error::from(CheckpointError::Invalid { path: origin.to_string(), reason: e.to_string() });
        let st = SafeTensors::deserialize(bytes).map_err(|e| format(format!("not a safetensors file: {e}")))?;
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(format!("not a safetensors file: {e}")))?;
        let meta = metadata.metadata().as_ref().ok_or_else(|| format("no metadata".into()))?;
        let json = meta.get(META_KEY).ok_or_else(|| format(format!("no `{META_KEY}` metadata")))?;
        let recorded = meta.get(DIGEST_KEY).ok_or_else(|| format(format!("no `{DIGEST_KEY}` metadata")))?;
        let views: Vec<(String, TensorView<'_>)> = st.tensors();
        let got = tensors::digest(json, views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        if &got != recorded {
            return Err(CheckpointError::Checksum { path: origin.to_string(), expected: recorded.clone(), got }.into());
        }
        let header: Header = serde_json::from_str(json).map_err(|e| format(format!("bad `{META_KEY}` metadata: {e}")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(format(format!("format {} version {}, this build reads {FORMAT} version {VERSION}", header.format, header.version)));
        }
        let mut by_name: HashMap<String, TensorView<'_>> = views.into_iter().collect();
        let mut layers: Vec<Box<dyn Transform<T>>> = Vec::with_capacity(header.layers.len());
        for (k, spec) in header.layers.iter().enumerate() {
            let prefix = format!("layers.{k:03}.");
            let names: Vec<String> = by_name.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
            let views = names.into_iter().filter_map(|n| by_name.remove(&n).map(|v| (n[prefix.len()..].to_string(), v))).collect();
            let mut ts = LayerTensors::new(views);
            layers.push(
                registry
                    .build(spec, &mut ts)
                    .map_err(|e| invalid(Error::InvalidArgument { op: "Checkpoint::from_bytes", reason: format!("layer {k}: {e}") }))?,
            );
        }
        let mut take = |name: String| -> Result<Mat<T>> {
            let v = by_name.remove(&name).ok_or_else(|| format(format!("missing tensor {name}")))?;
            tensors::decode::<T>(v.dtype(), v.shape(), v.data()).map_err(|e| format(format!("tensor {name}: {e}")))
        };
        let shape = header.shape.map(Shape::from).unwrap_or(Shape::flat(header.dim));
        if shape.dim() != header.dim {
            return Err(format(format!("shape {shape} does not have dimension {}", header.dim)));
        }
        let flow = Flow::new(shape, layers).map_err(invalid)?;
        let training = match header.training {
            None => None,
            Some(t) => {
                let grads = flow.zero_grads();
                if t.adam_steps.len() != grads.layers.len() {
                    return Err(format(format!("{} optimiser states for {} layers", t.adam_steps.len(), grads.layers.len())));
                }
                let mut adam = Vec::with_capacity(grads.layers.len());
                for (k, (g, &steps)) in grads.layers.iter().zip(&t.adam_steps).enumerate() {
                    let n = g.blocks().len();
                    let m = (0..n).map(|i| take(format!("adam.{k:03}.{i}.m"))).collect::<Result<Vec<_>>>()?;
                    let v = (0..n).map(|i| take(format!("adam.{k:03}.{i}.v"))).collect::<Result<Vec<_>>>()?;
                    adam.push(AdamState { t: steps, m, v });
                }
                let state = TrainerState { step: t.step, lambda: t.lambda, adam, best: t.best, history: t.history };
                Some((t.config, state))
            }
        };
        if let Some(extra) = by_name.keys().next() {
            return Err(format(format!("unexpected tensor {extra}")));
        }
        Ok(Self { flow, static_log_det: header.static_log_det, training, meta: header.meta })
    }
}

/// Helpers for the fuzz targets (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Rewrite a safetensors file's `snf.sha256` to match its contents, so that a fuzzer's
    /// mutations of the configuration and the tensors reach the parser and the layer
    /// builders instead of stopping at the checksum. `None` if it is not safetensors.
    pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
        let st = SafeTensors::deserialize(bytes).ok()?;
        let (_, metadata) = SafeTensors::read_metadata(bytes).ok()?;
        let mut meta = metadata.metadata().clone().unwrap_or_default();
        let json = meta.get(META_KEY).cloned().unwrap_or_default();
        let views = st.tensors();
        let digest = tensors::digest(&json, views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        meta.insert(DIGEST_KEY.to_string(), digest);
        safetensors::serialize(views, Some(meta)).ok()
    }
}
