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
use snf::data::idx_set::{load_idx, Checksums, IdxOptions};
use snf::data::mnist::{LoadOptions, Mnist};
use snf::data::{Images, Splits};
use snf::flow::glow::{glow_with_fit, GlowConfig, GlowMixing};
use snf::flow::models::{conv_nine_layer_with_inverse_kernel, fc_two_layer_with, ConvMixing, Gradient};
use snf::flow::Flow;
use snf::layers::linear::InverseFit;
use snf::train::{EpochRecord, TrainConfig};
use snf::{Real, Shape};

use crate::error::{io, CliError, Result};

/// Which data set format `--data` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// MNIST: the four IDX files with their SHA256SUMS (default: the shipped copy).
    #[default]
    Mnist,
    /// Any IDX set laid out like MNIST (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz],
    /// optional label files; checksums verified when a SHA256SUMS file is present).
    Idx,
    /// CIFAR-10's binary files (data_batch_1..5.bin, test_batch.bin).
    Cifar10,
}

/// Which of the paper's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// FC 2-layer: DxD linear, smooth leaky ReLU, DxD linear.
    Fc,
    /// Conv 9-layer: 3 blocks of 3 3x3 convolutions with spline activations (image sides divisible by 4).
    Conv,
    /// Glow: --levels levels of --steps steps (ActNorm, 1x1 or kxk mixing, affine coupling
    /// with a conditioner of --width channels), a learned-prior split between levels.
    Glow,
}

/// Self-normalizing or exact gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grad {
    /// Self-normalizing layers: R^T in place of W^{-T}, no determinant.
    Snf,
    /// The exact-gradient twin (LU every step).
    Exact,
    /// FC model only: plain layers trained with the relative gradient (Gresele et al.,
    /// 2020), no inverse (Table 1's baseline).
    Relative,
}

/// How the FC and conv models' self-normalizing layers keep R close to W^{-1}.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Fit R to each batch by a projection after every step; W follows the likelihood
    /// alone (no λ). Tracks the exact twin (docs/results.md).
    Projection,
    /// The paper's Eq. 3: R trained with a reconstruction penalty λ that also pulls on W
    /// (what runs made before this setting existed used).
    #[default]
    Penalty,
}

/// The conv model's mixing layers (Table 1's conv rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mixing {
    /// 3x3 convolutions, self-normalizing or exact as --grad says.
    #[default]
    Conv3x3,
    /// Emerging convolutions (exact 1x1, then two autoregressive convolutions), exact gradients.
    Emerging,
    /// Convolution exponentials (exact 1x1, then exp of a 3x3 convolution), exact gradients.
    Convexp,
    /// Glow: the invertible 1x1 convolution, exact gradients (W^{-T} by LU).
    Exact1x1,
    /// Glow: the LU-parametrised 1x1 convolution, exact gradients without an inverse.
    Lu1x1,
    /// Glow: a self-normalizing 1x1 convolution.
    Snf1x1,
    /// Glow: a self-normalizing 3x3 convolution.
    Snf3x3,
    /// Glow: a self-normalizing 5x5 convolution (Table 5).
    Snf5x5,
}

impl Mixing {
    /// Glow's mixing layers (the rest belong to the conv model).
    pub fn is_glow(self) -> bool {
        matches!(self, Mixing::Exact1x1 | Mixing::Lu1x1 | Mixing::Snf1x1 | Mixing::Snf3x3 | Mixing::Snf5x5)
    }
}

/// Glow's size (with `--model glow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlowArch {
    /// Levels L.
    pub levels: usize,
    /// Steps K per level.
    pub steps: usize,
    /// Conditioner width.
    pub width: usize,
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
    /// A random identity, the same in `run.json` and in every checkpoint of the run: files
    /// of different runs are never paired on `--resume`.
    #[serde(default)]
    pub run_id: String,
    /// Model.
    pub model: Model,
    /// Gradient.
    pub grad: Grad,
    /// The conv model's or Glow's mixing layers.
    #[serde(default)]
    pub mixing: Mixing,
    /// Glow's levels, steps and width (`--model glow` only).
    #[serde(default)]
    pub glow: Option<GlowArch>,
    /// The FC, conv and Glow models' inverse fit (absent in older runs: the penalty).
    #[serde(default)]
    pub inverse_fit: Fit,
    /// The conv model's inverse-kernel size (absent in older runs: 3).
    #[serde(default = "three")]
    pub inverse_kernel: usize,
    /// Precision.
    pub precision: Precision,
    /// The data set format.
    #[serde(default)]
    pub dataset: DatasetKind,
    /// Data folder, absolute (`None`: the MNIST copy shipped with the crate).
    pub data: Option<PathBuf>,
    /// Validation images (the last N training images) [`None`: 10 000, or a sixth of a
    /// smaller training set].
    #[serde(default)]
    pub valid_size: Option<usize>,
    /// Verify the files against SHA256SUMS (MNIST: required; others: when present).
    #[serde(default = "yes")]
    pub checksums: bool,
    /// Use only the first N training images.
    pub train_subset: Option<usize>,
    /// Use only the first N validation images.
    pub valid_subset: Option<usize>,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Training configuration (epochs, batch, Adam, warm-up, λ, seed, ...).
    pub config: TrainConfig,
}

fn yes() -> bool {
    true
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

    /// Take the run folder for this process: an exclusive lock on `RUN_DIR/.lock`, held
    /// until the returned file is dropped (the process ends). A second `snf train` on the
    /// same folder fails with a clear message instead of overwriting the first one's files.
    pub fn lock(&self) -> Result<std::fs::File> {
        self.create()?;
        let path = self.root.join(".lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io(&path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(CliError::Usage(format!("{} is in use by another snf process (lock {})", self.root.display(), path.display())))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path, e)),
        }
    }

    /// Remove what a previous run left: checkpoints, metrics, plots, samples, and the
    /// temporary files of checkpoint writes that a crash interrupted (`--force`).
    pub fn clear(&self) -> Result<()> {
        for p in [self.last(), self.best(), self.metrics_csv(), self.metrics_jsonl(), self.samples()]
            .into_iter()
            .chain(["nll_vs_epoch.png", "nll_vs_time.png", "angles.png"].map(|f| self.root.join(f)))
        {
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        self.remove_stale_temporaries()
    }

    /// Delete `.NAME.tmp.PID` files left in the checkpoint folder by a write that was
    /// killed (call with the lock held: no other process writes there).
    pub fn remove_stale_temporaries(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return Ok(()) };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp.") {
                std::fs::remove_file(e.path()).map_err(|err| io(&e.path(), err))?;
            }
        }
        Ok(())
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
            "epoch,val_nll,val_bpd,train_seconds,eval_seconds,cumulative_train_seconds,reconstruction_error,lambda,train_partial_log_prob,skipped_steps,mean_angle_deg,mean_angle_w_deg,relative_reconstruction_error,alerts,max_layer_relative_error\n",
        );
        let mut jsonl = String::new();
        let mut cumulative = 0.0;
        let mean = |v: &[(usize, f64, f64)]| snf::train::mean_angle(v).unwrap_or(f64::NAN);
        for r in history {
            cumulative += r.train_seconds;
            csv.push_str(&format!(
                "{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{}\n",
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
                mean(&r.angles_w),
                r.relative_reconstruction_error,
                r.alerts.len(),
                r.layer_relative_errors.iter().map(|t| t.1).fold(f64::NAN, f64::max)
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

/// `--data` as an absolute path (so the run folder works from any directory).
pub fn absolute(data: &Option<PathBuf>) -> Result<Option<PathBuf>> {
    data.as_ref().map(|d| std::path::absolute(d).map_err(|e| io(d, e))).transpose()
}

/// A short description of where the data comes from.
pub fn describe_data(s: &RunSettings) -> String {
    let kind = match s.dataset {
        DatasetKind::Mnist => "mnist",
        DatasetKind::Idx => "idx",
        DatasetKind::Cifar10 => "cifar10",
    };
    format!("{kind} at {}", data_dir(&s.data).display())
}

/// Load the run's data set (checksums as the settings say) and cut the subsets.
pub fn load_data(s: &RunSettings) -> Result<Splits<Images>> {
    let dir = data_dir(&s.data);
    let mut d = match s.dataset {
        DatasetKind::Mnist => {
            let m = Mnist::load_with(&dir, LoadOptions { verify_checksums: s.checksums, validation: s.valid_size.unwrap_or(10_000) })?;
            Splits { train: m.train, valid: m.valid, test: m.test }
        }
        DatasetKind::Idx => {
            let checksums = if s.checksums { Checksums::IfPresent } else { Checksums::Skip };
            load_idx(&dir, IdxOptions { checksums, validation: s.valid_size })?
        }
        DatasetKind::Cifar10 => {
            let checksums = if s.checksums { Checksums::IfPresent } else { Checksums::Skip };
            snf::data::cifar10::load_cifar10(&dir, s.valid_size.unwrap_or(5_000), checksums)?
        }
    };
    if s.dataset != DatasetKind::Mnist && s.data.is_none() {
        return Err(CliError::Usage("--dataset idx and cifar10 need --data DIR".into()));
    }
    if let Some(n) = s.train_subset {
        d.train = d.train.head(n);
    }
    if let Some(n) = s.valid_subset {
        d.valid = d.valid.head(n);
    }
    if d.train.is_empty() || d.valid.is_empty() {
        return Err(CliError::Usage(format!("{} training and {} validation images: both splits need at least one", d.train.len(), d.valid.len())));
    }
    Ok(d)
}

fn three() -> usize {
    3
}

/// A freshly initialised model for examples of `shape`.
pub fn build_model<T: Real>(s: &RunSettings, shape: Shape) -> Result<Flow<T>> {
    let mut rng = snf::init::rng(s.config.seed);
    let gradient = match s.grad {
        Grad::Snf => Gradient::SelfNormalizing,
        Grad::Exact => Gradient::Exact,
        Grad::Relative => Gradient::Relative,
    };
    let fit = match s.inverse_fit {
        Fit::Projection => InverseFit::projection(),
        Fit::Penalty => InverseFit::Penalty,
    };
    Ok(match s.model {
        Model::Fc => fc_two_layer_with::<T, _>(shape, gradient, fit, &mut rng)?,
        Model::Conv => {
            let mixing = match s.mixing {
                Mixing::Conv3x3 => ConvMixing::Conv3x3(gradient),
                Mixing::Emerging => ConvMixing::Emerging,
                Mixing::Convexp => ConvMixing::ConvExp,
                m => return Err(CliError::Usage(format!("--mixing {m:?} is one of Glow's (--model glow)").to_lowercase())),
            };
            conv_nine_layer_with_inverse_kernel::<T, _>(shape, mixing, fit, s.inverse_kernel, &mut rng)?
        }
        Model::Glow => {
            let arch = s.glow.ok_or_else(|| CliError::Usage("a glow run without levels, steps and width".into()))?;
            let mixing = match s.mixing {
                Mixing::Exact1x1 => GlowMixing::Exact1x1,
                Mixing::Lu1x1 => GlowMixing::Lu1x1,
                Mixing::Snf1x1 => GlowMixing::Snf1x1,
                Mixing::Snf3x3 => GlowMixing::Snf(3),
                Mixing::Snf5x5 => GlowMixing::Snf(5),
                m => return Err(CliError::Usage(format!("--mixing {m:?} is the conv model's (use exact1x1, lu1x1, snf1x1, snf3x3 or snf5x5)").to_lowercase())),
            };
            glow_with_fit::<T, _>(shape, GlowConfig::new(arch.levels, arch.steps, arch.width, mixing), fit, &mut rng)?
        }
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
pub fn split(m: &Splits<Images>, name: SplitName) -> &Images {
    match name {
        SplitName::Train => &m.train,
        SplitName::Valid => &m.valid,
        SplitName::Test => &m.test,
    }
}

/// The data splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitName {
    /// The training images (MNIST: the first 50 000).
    Train,
    /// The last training images (MNIST: 10 000).
    Valid,
    /// The 10 000 test images.
    Test,
}
