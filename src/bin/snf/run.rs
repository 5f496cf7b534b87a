//! A run folder and the settings shared by the subcommands:
//!
//! ```text
//! RUN_DIR/
//!   run.json              settings (model, gradient, precision, data, training config)
//!   metrics.csv           one row per epoch
//!   metrics.jsonl         one JSON record per epoch (snf::train::EpochRecord)
//!   checkpoints/last.safetensors   after every epoch, with optimiser state (--resume)
//!   checkpoints/best.safetensors   best validation NLL so far
//!   nll_vs_epoch.png, nll_vs_time.png, angles.png, samples.png
//! ```

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use snf::data::mnist::{Mnist, Split};
use snf::flow::models::{conv_nine_layer, fc_two_layer};
use snf::flow::Flow;
use snf::train::{EpochRecord, TrainConfig};
use snf::Real;

use crate::error::{io, CliError, Result};

/// Which of the paper's MNIST models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// FC 2-layer: 784x784 linear, smooth leaky ReLU, 784x784 linear.
    Fc,
    /// Conv 9-layer: 3 blocks of 3 3x3 convolutions with spline activations.
    Conv,
}

/// Self-normalizing or exact gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grad {
    /// Self-normalizing layers: R^T in place of W^{-T}, no determinant.
    Snf,
    /// The exact-gradient twin (LU every step).
    Exact,
}

/// Floating-point precision of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (the paper's setting, about twice as fast).
    F32,
    /// 64-bit floats.
    F64,
}

/// Everything that defines a run (saved as `run.json` and inside every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Model.
    pub model: Model,
    /// Gradient.
    pub grad: Grad,
    /// Precision.
    pub precision: Precision,
    /// MNIST folder (`None`: the copy shipped with the crate).
    pub data: Option<PathBuf>,
    /// Use only the first N training images.
    pub train_subset: Option<usize>,
    /// Use only the first N validation images.
    pub valid_subset: Option<usize>,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Training configuration (epochs, batch, Adam, warm-up, λ, seed, ...).
    pub config: TrainConfig,
}

/// What a checkpoint's `meta` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The run.
    pub settings: RunSettings,
    /// The epoch it was taken after.
    pub epoch: usize,
    /// Validation NLL logged for that epoch.
    pub val_nll: f64,
}

pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn settings(&self) -> PathBuf {
        self.root.join("run.json")
    }
    pub fn metrics_csv(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    pub fn metrics_jsonl(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn last(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join("best.safetensors")
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples.png")
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.checkpoints()).map_err(|e| io(&self.checkpoints(), e))
    }

    pub fn write_settings(&self, s: &RunSettings) -> Result<()> {
        let text = serde_json::to_string_pretty(s).map_err(|e| CliError::Usage(e.to_string()))?;
        snf::checkpoint::write_atomic(&self.settings(), text.as_bytes())?;
        Ok(())
    }

    /// Rewrite both metrics files from the full history (so that a resumed run's files
    /// hold exactly the epochs its checkpoint holds).
    pub fn write_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        let mut csv = String::from(
            "epoch,val_nll,val_bpd,train_seconds,eval_seconds,cumulative_train_seconds,reconstruction_error,lambda,train_partial_log_prob,skipped_steps,mean_angle_deg,mean_angle_w_deg\n",
        );
        let mut jsonl = String::new();
        let mut cumulative = 0.0;
        let mean = |v: &[(usize, f64, f64)]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().map(|a| a.1).sum::<f64>() / v.len() as f64
            }
        };
        for r in history {
            cumulative += r.train_seconds;
            csv.push_str(&format!(
                "{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{}\n",
                r.epoch,
                r.val_nll,
                r.val_bpd,
                r.train_seconds,
                r.eval_seconds,
                cumulative,
                r.reconstruction_error,
                r.lambda,
                r.train_partial_log_prob,
                r.skipped_steps,
                mean(&r.angles),
                mean(&r.angles_w)
            ));
            jsonl.push_str(&serde_json::to_string(r).map_err(|e| CliError::Usage(e.to_string()))?);
            jsonl.push('\n');
        }
        snf::checkpoint::write_atomic(&self.metrics_csv(), csv.as_bytes())?;
        snf::checkpoint::write_atomic(&self.metrics_jsonl(), jsonl.as_bytes())?;
        Ok(())
    }

    /// The per-epoch records of a run folder.
    pub fn read_metrics(&self) -> Result<Vec<EpochRecord>> {
        let path = self.metrics_jsonl();
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| io(&path, format!("line {}: {e}", i + 1))))
            .collect()
    }
}

/// The MNIST folder to use.
pub fn data_dir(data: &Option<PathBuf>) -> PathBuf {
    data.clone().unwrap_or_else(Mnist::shipped_dir)
}

/// Load MNIST (checksums verified) and cut the subsets.
pub fn load_mnist(s: &RunSettings) -> Result<Mnist> {
    let mut m = Mnist::load(&data_dir(&s.data))?;
    if let Some(n) = s.train_subset {
        m.train = m.train.head(n);
    }
    if let Some(n) = s.valid_subset {
        m.valid = m.valid.head(n);
    }
    Ok(m)
}

/// A freshly initialised model.
pub fn build_model<T: Real>(s: &RunSettings) -> Result<Flow<T>> {
    let mut rng = snf::init::rng(s.config.seed);
    let snf_layers = s.grad == Grad::Snf;
    Ok(match s.model {
        Model::Fc => fc_two_layer::<T, _>(snf_layers, &mut rng)?,
        Model::Conv => conv_nine_layer::<T, _>(snf_layers, &mut rng)?,
    })
}

/// A checkpoint file named directly, or a run folder's best checkpoint.
pub fn resolve_checkpoint(target: &Path) -> Result<PathBuf> {
    if target.is_dir() {
        let best = RunDir::new(target.to_path_buf()).best();
        if best.is_file() {
            return Ok(best);
        }
        return Err(CliError::Usage(format!("{}: no checkpoints/best.safetensors in this run folder", target.display())));
    }
    if !target.exists() {
        return Err(CliError::Usage(format!("{}: no such checkpoint or run folder", target.display())));
    }
    Ok(target.to_path_buf())
}

/// A split of the data by name.
pub fn split(m: &Mnist, name: SplitName) -> &Split {
    match name {
        SplitName::Train => &m.train,
        SplitName::Valid => &m.valid,
        SplitName::Test => &m.test,
    }
}

/// The paper's splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitName {
    /// First 50 000 training images.
    Train,
    /// Last 10 000 training images.
    Valid,
    /// The 10 000 test images.
    Test,
}
