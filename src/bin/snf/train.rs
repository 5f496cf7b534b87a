//! `snf train`.

use std::path::PathBuf;
use std::time::Instant;

use faer::Par;
use indicatif::{ProgressBar, ProgressStyle};
use snf::checkpoint::Checkpoint;
use snf::flow::models::{CONV_PROJECTION_LAMBDA, CONV_PULL_TARGET};
use snf::optim::AdamConfig;
use snf::train::{Adaptive, Geco, Lambda, TrainConfig, Trainer};
use snf::Real;

use crate::error::{CliError, Result};
use crate::run::{
    absolute, build_model, describe_data, load_data, CheckpointMeta, DatasetKind, Fit, GlowArch, Grad, Mixing, Model, Precision, RunDir, RunSettings,
};
use snf::data::{Images, Splits};

#[derive(clap::Args)]
pub struct Args {
    /// Model to train.
    #[arg(long, value_enum, default_value = "fc")]
    model: Model,
    /// Self-normalizing or exact gradients [default: snf; exact with --mixing emerging|convexp].
    #[arg(long, value_enum)]
    grad: Option<Grad>,
    /// The mixing layers. Conv model: 3x3 convolutions (--grad snf|exact), or Table 1's
    /// baselines, emerging convolutions or convolution exponentials (exact gradients).
    /// Glow: exact1x1, lu1x1, snf1x1, snf3x3 or snf5x5 [default for glow: snf1x1, or exact1x1
    /// with --grad exact].
    #[arg(long, value_enum, default_value = "conv3x3")]
    mixing: Mixing,
    /// Glow: levels L (one squeeze each; image sides divisible by 2^L).
    #[arg(long)]
    levels: Option<usize>,
    /// Glow: steps K per level.
    #[arg(long)]
    steps: Option<usize>,
    /// Glow: hidden channels of each coupling's conditioner.
    #[arg(long)]
    width: Option<usize>,
    /// Total epochs (with --resume: the new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate [default: 1e-4 for fc, 1e-3 for conv and glow, the paper's].
    #[arg(long)]
    lr: Option<f64>,
    /// How the self-normalizing layers keep R ≈ W^{-1}. `projection` fits R to each batch
    /// (FC: no λ; conv and glow: λ weighs only a pull on w, adaptive by default); `penalty` is
    /// the paper's Eq. 3 with the λ options below [default: projection].
    #[arg(long, value_enum)]
    inverse_fit: Option<Fit>,
    /// The conv model's inverse-kernel size (odd): a 5x5 r follows forward kernels a 3x3 one
    /// cannot invert (on generated colour images it kept the model nearer its exact twin,
    /// docs/results.md), at several times the refit's cost [default: 3].
    #[arg(long)]
    inverse_kernel: Option<usize>,
    /// A fixed reconstruction penalty λ (the paper's; default: the adaptive λ, see
    /// --recon-target; for the conv and glow models' projection fit also adaptive, from 0.02,
    /// weighing only the pull on w; for glow's penalty fit the paper's 100, or 1000 on
    /// cifar10). With --geco-target: GECO's starting λ [default: 1].
    #[arg(long)]
    lambda: Option<f64>,
    /// The adaptive λ's target for the relative reconstruction error (each
    /// self-normalizing layer's |g(f(x)) - x|^2 over |x|^2). The default λ [default: 3e-3;
    /// 3e-4 for the conv and glow models' projection fit, whose λ stays in [1e-3, 1]].
    #[arg(long, conflicts_with_all = ["lambda", "geco_target"])]
    recon_target: Option<f64>,
    /// Steer λ so that the summed reconstruction error tracks this target (GECO).
    #[arg(long)]
    geco_target: Option<f64>,
    /// GECO step size on log λ per training step (with --geco-target).
    #[arg(long, requires = "geco_target")]
    geco_rate: Option<f64>,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Learning-rate warm-up in epochs (the paper's 10).
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Do not watch for a rising reconstruction error or gradient angle between epochs
    /// (by default it is reported, and the adaptive λ tightens).
    #[arg(long)]
    no_divergence_monitor: bool,
    /// Clip the global gradient norm to this value [default: none; 10000 for SNF glow with
    /// --inverse-fit penalty on cifar10, A.3].
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Seed (initialisation, data order, dequantisation noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Measure the SNF-vs-exact gradient angle on this many batches per epoch (Fig. 3).
    #[arg(long, default_value_t = 1)]
    angle_batches: usize,
    /// Data set format of --data.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetKind,
    /// Data folder [default: the shipped MNIST]. mnist/idx: train-images-idx3-ubyte,
    /// train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each raw
    /// or .gz; idx label files optional); cifar10: data_batch_1..5.bin, test_batch.bin.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation images: the last N training images [default: 10000 for mnist, 5000
    /// for cifar10; for idx 10000, or a sixth of fewer than 60000 training images].
    #[arg(long)]
    valid_size: Option<usize>,
    /// Do not verify the files against SHA256SUMS (mnist requires the list; idx and
    /// cifar10 verify when it is present).
    #[arg(long)]
    no_checksums: bool,
    /// Train on the first N training images only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Validate on the first N validation images only.
    #[arg(long)]
    valid_subset: Option<usize>,
    /// Precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Run folder [default: runs/MODEL-GRAD, or runs/MODEL-GRAD-2, -3, ... if taken].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (settings come from the run).
    #[arg(long)]
    resume: bool,
    /// Start over in a run folder that already has checkpoints.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Samples in the grid drawn at the end (0: none).
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

const DEFAULT_EPOCHS: usize = 3;

pub fn run(a: Args) -> Result<()> {
    let out = match &a.out {
        Some(o) => o.clone(),
        None if a.resume => return Err(CliError::Usage("--resume needs --out RUN_DIR".into())),
        // a fresh default folder, so that the quickstart command can be run again
        None => {
            let (m, g) = glow_mixing(&a)?;
            let base = format!("runs/{}-{}", model_name(a.model), method_name(m, g));
            (1..)
                .map(|k| if k == 1 { PathBuf::from(&base) } else { PathBuf::from(format!("{base}-{k}")) })
                .find(|p| !RunDir::new(p.clone()).last().exists())
                .unwrap_or_else(|| PathBuf::from(base))
        }
    };
    let dir = RunDir::new(out);
    if a.resume {
        // the folder is this process's from here to the end of the run
        let _lock = dir.lock()?;
        let last = dir.last();
        if !last.is_file() {
            return Err(CliError::Usage(format!("{}: nothing to resume (no checkpoints/last.safetensors)", dir.root.display())));
        }
        let bytes = std::fs::read(&last).map_err(|e| crate::error::io(&last, e))?;
        return match snf::checkpoint::stored_dtype(&bytes, &last.display().to_string())? {
            "f32" => resume::<f32>(&bytes, &dir, &a),
            _ => resume::<f64>(&bytes, &dir, &a),
        };
    }
    if dir.last().exists() && !a.force {
        return Err(CliError::Usage(format!("{} already holds a run; pass --resume to continue it or --force to start over", dir.root.display())));
    }
    let settings = settings_from(&a)?;
    // everything that can fail on the user's input fails before the run folder is touched
    let data = load_data(&settings)?;
    if settings.config.batch > data.train.len() {
        return Err(CliError::Usage(format!("--batch {} is larger than the {} training images", settings.config.batch, data.train.len())));
    }
    let shape = data.train.shape();
    let par = Par::rayon(settings.threads);
    match settings.precision {
        Precision::F32 => {
            let t = Trainer::<f32>::new(build_model(&settings, shape)?, settings.config, par)?;
            start(t, &settings, &dir, &a, &data)
        }
        Precision::F64 => {
            let t = Trainer::<f64>::new(build_model(&settings, shape)?, settings.config, par)?;
            start(t, &settings, &dir, &a, &data)
        }
    }
}

/// A new run: take the folder, set aside what an older run left (`--force`) before
/// anything of the new one is written, then train.
fn start<T: Real>(t: Trainer<T>, s: &RunSettings, dir: &RunDir, a: &Args, data: &Splits<Images>) -> Result<()> {
    let _lock = dir.lock()?;
    if dir.last().exists() && !a.force {
        return Err(CliError::Usage(format!("{} already holds a run; pass --resume to continue it or --force to start over", dir.root.display())));
    }
    dir.clear()?;
    dir.write_settings(s)?;
    train(t, s, dir, a, data)
}

/// Continue the run whose `last` checkpoint is `bytes` (parsed once, in its own
/// precision), with the run's settings from the checkpoint and `--epochs` as the new total.
fn resume<T: Real>(bytes: &[u8], dir: &RunDir, a: &Args) -> Result<()> {
    let last = dir.last();
    let ck = Checkpoint::<T>::from_bytes(bytes, &last.display().to_string())?;
    let meta: CheckpointMeta = serde_json::from_value(ck.meta).map_err(|e| CliError::Usage(format!("{}: no run settings: {e}", last.display())))?;
    let mut s = meta.settings;
    // every file of the run must carry the same run identity
    let foreign = |what: &str| {
        CliError::Usage(format!(
            "{}: {what} belongs to another run than checkpoints/last.safetensors (run {}); refusing to pair them",
            dir.root.display(),
            s.run_id
        ))
    };
    if let Ok(text) = std::fs::read_to_string(dir.settings()) {
        if let Ok(on_disk) = serde_json::from_str::<RunSettings>(&text) {
            if on_disk.run_id != s.run_id || on_disk.model != s.model || on_disk.grad != s.grad || on_disk.mixing != s.mixing {
                return Err(foreign("run.json"));
            }
        }
    }
    if let Some(e) = a.epochs {
        if e < ck.training.as_ref().map_or(0, |(_, st)| st.history.len()) || e == 0 {
            return Err(CliError::Usage(format!("--epochs {e} with --resume: the run already has more epochs (give the new total)")));
        }
        s.config.epochs = e;
    }
    let data = load_data(&s)?;
    let (cfg, state) = ck.training.ok_or_else(|| CliError::Usage(format!("{}: holds no training state", last.display())))?;
    let cfg = TrainConfig { epochs: s.config.epochs, ..cfg };
    // The best checkpoint is written before `last`, so after a crash between the two it
    // may be one epoch ahead of `last`; that epoch is rerun (deterministically) and
    // improves on the state's best again, so its flow stands in until then.
    let best_flow = match state.best {
        None => None,
        Some((e, _)) => {
            let b = Checkpoint::<T>::load(&dir.best())?;
            let meta: CheckpointMeta =
                serde_json::from_value(b.meta).map_err(|e| CliError::Usage(format!("{}: no run settings: {e}", dir.best().display())))?;
            if meta.settings.run_id != s.run_id {
                return Err(foreign("checkpoints/best.safetensors"));
            }
            if meta.epoch != e && meta.epoch <= state.history.len() {
                return Err(CliError::Usage(format!("{}: holds epoch {}, the last checkpoint's best is epoch {e}", dir.best().display(), meta.epoch)));
            }
            Some(b.flow)
        }
    };
    let trainer = Trainer::resume(ck.flow, cfg, Par::rayon(s.threads), state, best_flow)?;
    dir.create()?;
    dir.write_settings(&s)?;
    train(trainer, &s, dir, a, &data)
}

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Fc => "fc",
        Model::Conv => "conv",
        Model::Glow => "glow",
    }
}

/// What trains the mixing layers, for folder names and logs.
fn method_name(m: Mixing, g: Grad) -> &'static str {
    match m {
        Mixing::Conv3x3 => grad_name(g),
        Mixing::Emerging => "emerging",
        Mixing::Convexp => "convexp",
        Mixing::Exact1x1 => "exact1x1",
        Mixing::Lu1x1 => "lu1x1",
        Mixing::Snf1x1 => "snf1x1",
        Mixing::Snf3x3 => "snf3x3",
        Mixing::Snf5x5 => "snf5x5",
    }
}

/// Glow's fixed λ for MNIST-like data (A.3).
const GLOW_LAMBDA: f64 = 100.0;
/// Glow's fixed λ for CIFAR-10 (A.3).
const GLOW_LAMBDA_CIFAR10: f64 = 1000.0;
/// The gradient-norm clip of SNF Glow on CIFAR-10 (A.3).
const GLOW_CLIP_CIFAR10: f64 = 10_000.0;

/// Glow's defaults (Table 5's small model).
const GLOW_DEFAULT: GlowArch = GlowArch { levels: 2, steps: 4, width: 16 };

/// The mixing and gradient a run trains with: for Glow, --mixing's default (conv3x3)
/// becomes snf1x1 (or exact1x1 with --grad exact), and Glow's mixing decides the gradient.
fn glow_mixing(a: &Args) -> Result<(Mixing, Grad)> {
    if a.model != Model::Glow {
        if a.mixing.is_glow() {
            return Err(CliError::Usage(format!("--mixing {} needs --model glow", method_name(a.mixing, Grad::Snf))));
        }
        if a.levels.is_some() || a.steps.is_some() || a.width.is_some() {
            return Err(CliError::Usage("--levels, --steps and --width are Glow's (--model glow)".into()));
        }
        return Ok((a.mixing, a.grad.unwrap_or(Grad::Snf)));
    }
    match (a.mixing, a.grad) {
        (Mixing::Conv3x3, None | Some(Grad::Snf)) => Ok((Mixing::Snf1x1, Grad::Snf)),
        (Mixing::Conv3x3, Some(Grad::Exact)) => Ok((Mixing::Exact1x1, Grad::Exact)),
        (m @ (Mixing::Exact1x1 | Mixing::Lu1x1), None | Some(Grad::Exact)) => Ok((m, Grad::Exact)),
        (m @ (Mixing::Snf1x1 | Mixing::Snf3x3 | Mixing::Snf5x5), None | Some(Grad::Snf)) => Ok((m, Grad::Snf)),
        (Mixing::Emerging | Mixing::Convexp, _) => Err(CliError::Usage("--mixing emerging|convexp needs --model conv".into())),
        (m, Some(g)) => Err(CliError::Usage(format!("--mixing {} does not train with --grad {}", method_name(m, g), grad_name(g)))),
    }
}

fn grad_name(g: Grad) -> &'static str {
    match g {
        Grad::Snf => "snf",
        Grad::Exact => "exact",
        Grad::Relative => "relative",
    }
}

fn settings_from(a: &Args) -> Result<RunSettings> {
    let (mixing, glow_grad) = glow_mixing(a)?;
    let glow = (a.model == Model::Glow).then(|| GlowArch {
        levels: a.levels.unwrap_or(GLOW_DEFAULT.levels),
        steps: a.steps.unwrap_or(GLOW_DEFAULT.steps),
        width: a.width.unwrap_or(GLOW_DEFAULT.width),
    });
    let grad = match (a.mixing, a.grad) {
        _ if a.model == Model::Glow => glow_grad,
        (Mixing::Conv3x3, g) => g.unwrap_or(Grad::Snf),
        (_, None | Some(Grad::Exact)) if a.model == Model::Conv => Grad::Exact,
        (m, _) if a.model == Model::Conv => {
            return Err(CliError::Usage(format!(
                "--mixing {} trains with exact gradients (leave out --grad or pass --grad exact)",
                method_name(m, Grad::Exact)
            )))
        }
        _ => return Err(CliError::Usage("--mixing emerging|convexp needs --model conv".into())),
    };
    let inverse_fit = match (a.model, a.inverse_fit) {
        (Model::Fc, f) => f.unwrap_or(Fit::Projection),
        (Model::Conv, f) if a.mixing == Mixing::Conv3x3 => f.unwrap_or(Fit::Projection),
        (Model::Glow, f) if grad == Grad::Snf => f.unwrap_or(Fit::Projection),
        (_, None) => Fit::Penalty,
        (_, Some(_)) => return Err(CliError::Usage("--inverse-fit is for self-normalizing layers: this --mixing has none".into())),
    };
    let inverse_kernel = match a.inverse_kernel {
        None => 3,
        Some(k) if a.model == Model::Conv && a.mixing == Mixing::Conv3x3 && grad == Grad::Snf => {
            if k % 2 == 0 {
                return Err(CliError::Usage(format!("--inverse-kernel must be odd, got {k}")));
            }
            k
        }
        Some(_) => return Err(CliError::Usage("--inverse-kernel is for the conv model's self-normalizing layers (--model conv --grad snf)".into())),
    };
    let lambda_given = a.lambda.is_some() || a.recon_target.is_some() || a.geco_target.is_some();
    if a.model == Model::Fc && grad == Grad::Snf && inverse_fit == Fit::Projection && lambda_given {
        return Err(CliError::Usage(
            "--lambda, --recon-target and --geco-target steer the penalty: the projection fit has none (add --inverse-fit penalty)".into(),
        ));
    }
    let lr = a.lr.unwrap_or(if a.model == Model::Fc { 1e-4 } else { 1e-3 });
    let lambda = match (a.geco_target, a.lambda) {
        (Some(t), l) => {
            let mut g = Geco::new(t, l.unwrap_or(1.0));
            if let Some(r) = a.geco_rate {
                g.rate = r;
            }
            Lambda::Geco(g)
        }
        (None, Some(l)) => Lambda::Fixed(l),
        // the conv model's projection fit: λ weighs only the pull on w (proofs/projection.md §4)
        // starting at CONV_PROJECTION_LAMBDA, steered to a relative error (`--recon-target`)
        (None, None) if matches!(a.model, Model::Conv | Model::Glow) && inverse_fit == Fit::Projection => {
            Lambda::Adaptive(Adaptive::pull(a.recon_target.unwrap_or(CONV_PULL_TARGET), CONV_PROJECTION_LAMBDA))
        }
        // Glow's penalised layers: the paper's fixed λ (A.3: 100 for MNIST, 1000 for CIFAR-10); the adaptive λ
        // lowers λ early and loses the inverse once the warm-up ends (docs/reproduction.md)
        (None, None) if a.model == Model::Glow && a.recon_target.is_none() => {
            Lambda::Fixed(if a.dataset == DatasetKind::Cifar10 { GLOW_LAMBDA_CIFAR10 } else { GLOW_LAMBDA })
        }
        (None, None) => Lambda::Adaptive(a.recon_target.map_or_else(Adaptive::default, |t| Adaptive::new(t, 1.0))),
    };
    let config = TrainConfig {
        epochs: a.epochs.unwrap_or(DEFAULT_EPOCHS),
        batch: a.batch,
        adam: AdamConfig { lr, ..Default::default() },
        warmup_epochs: a.warmup,
        // A.3: SNF Glow on CIFAR-10 clips the gradient norm at 10 000 (the paper's penalised
        // layers; with the projection fit the clip held the SNF model back from its exact twin,
        // which is not clipped: docs/reproduction.md, "Glow with the projection fit")
        clip_norm: a
            .clip_norm
            .or((a.model == Model::Glow && a.dataset == DatasetKind::Cifar10 && grad == Grad::Snf && inverse_fit == Fit::Penalty).then_some(GLOW_CLIP_CIFAR10)),
        lambda,
        seed: a.seed,
        angle_batches: if grad == Grad::Snf { a.angle_batches } else { 0 },
        divergence_factor: if a.no_divergence_monitor { None } else { TrainConfig::default().divergence_factor },
        ..Default::default()
    };
    // one validation, in the library; the error names the setting, here as its flag
    if let Err(snf::Error::InvalidConfig { field, reason }) = config.validate() {
        let flag = match field {
            "lr" => "--lr",
            "batch" => "--batch",
            "epochs" => "--epochs",
            "lambda" => "--lambda",
            "geco_target" => "--geco-target",
            "geco_rate" => "--geco-rate",
            "recon_target" => "--recon-target",
            "clip_norm" => "--clip-norm",
            "warmup_epochs" => "--warmup",
            other => other,
        };
        return Err(CliError::Usage(format!("{flag} {reason}")));
    }
    if a.dataset != DatasetKind::Mnist && a.data.is_none() {
        return Err(CliError::Usage(format!("--dataset {} needs --data DIR", format!("{:?}", a.dataset).to_lowercase())));
    }
    Ok(RunSettings {
        run_id: format!("{:016x}", rand::random::<u64>()),
        model: a.model,
        grad,
        mixing,
        glow,
        inverse_fit,
        inverse_kernel,
        precision: a.precision,
        dataset: a.dataset,
        data: absolute(&a.data)?,
        valid_size: a.valid_size,
        checksums: !a.no_checksums,
        train_subset: a.train_subset,
        valid_subset: a.valid_subset,
        threads: a.threads,
        config,
    })
}

/// A test-only fault hook: `SNF_FAULT=abort-before-rename:N` kills the process (abort, as a
/// crash or `kill -9` would) after the epoch-N `last` checkpoint is fully written to its
/// temporary file and before it replaces the previous one.
fn fault_epoch() -> Option<usize> {
    std::env::var("SNF_FAULT").ok()?.strip_prefix("abort-before-rename:")?.parse().ok()
}

/// Run the remaining epochs of `trainer`, writing checkpoints and metrics after each,
/// then the plots and the sample grid.
fn train<T: Real>(mut trainer: Trainer<T>, s: &RunSettings, dir: &RunDir, a: &Args, data: &Splits<Images>) -> Result<()> {
    let (resume, samples, quiet) = (a.resume, a.samples, a.quiet);
    let snf_run = trainer.flow().self_normalizing().next().is_some();
    dir.remove_stale_temporaries()?;
    dir.write_metrics(trainer.history())?;
    let first = trainer.next_epoch();
    let total = s.config.epochs;
    if !quiet {
        eprintln!(
            "{} {} model, {}, {}: {} training / {} validation images of {}, epochs {first}..={total}, run folder {}",
            if resume { "resuming" } else { "training" },
            model_name(s.model),
            match (s.mixing, s.glow) {
                (Mixing::Conv3x3, _) => format!("{} gradients", grad_name(s.grad)),
                (m, Some(g)) => format!("{} mixing, {} levels x {} steps, width {}", method_name(m, s.grad), g.levels, g.steps, g.width),
                (m, None) => format!("{} mixing", method_name(m, s.grad)),
            },
            describe_data(s),
            data.train.len(),
            data.valid.len(),
            data.train.shape(),
            dir.root.display()
        );
    }
    // λ means nothing to a flow whose learned inverses carry no penalty (the projection fit)
    let penalised = trainer.flow().uses_penalty();
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}").map_err(|e| CliError::Usage(e.to_string()))?.progress_chars("=> ");
    for epoch in first..=total {
        let steps = data.train.len() / s.config.batch;
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(steps as u64) };
        bar.set_style(style.clone());
        bar.set_prefix(format!("epoch {epoch}/{total}"));
        let t0 = Instant::now();
        let batch = s.config.batch;
        let record = trainer.epoch_with(&data.train, &data.valid, |p| {
            let rate = (p.step * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(p.step as u64);
            if snf_run {
                let lambda = if penalised { format!("  lambda {:.3}", p.lambda) } else { String::new() };
                bar.set_message(format!("train -log p~ {:.1}  recon {:.2e}{lambda}  {:.0} img/s", -p.partial_log_prob, p.reconstruction_error, rate));
            } else {
                bar.set_message(format!("train -log p~ {:.1}  {:.0} img/s", -p.partial_log_prob, rate));
            }
        })?;
        let meta = |epoch: usize, val_nll: f64| serde_json::to_value(CheckpointMeta { settings: s.clone(), epoch, val_nll });
        if let Some((e, nll, flow)) = trainer.best().filter(|b| b.0 == epoch) {
            let m = meta(e, nll).map_err(|e| CliError::Usage(e.to_string()))?;
            Checkpoint::new(flow.clone())?.with_meta(m).save(&dir.best())?;
        }
        let m = meta(epoch, record.val_nll).map_err(|e| CliError::Usage(e.to_string()))?;
        let last = Checkpoint::new(trainer.flow().clone())?.with_training(*trainer.config(), trainer.state()).with_meta(m);
        if fault_epoch() == Some(epoch) {
            snf::checkpoint::write_atomic_with(&dir.last(), &last.to_bytes()?, |_| std::process::abort())?;
        } else {
            last.save(&dir.last())?;
        }
        dir.write_metrics(trainer.history())?;
        bar.finish_and_clear();
        if !quiet {
            let recon = if snf_run {
                let lambda = if penalised { format!(", lambda {:.3}", record.lambda) } else { String::new() };
                format!(", recon {:.3e} (relative {:.2e}){lambda}", record.reconstruction_error, record.relative_reconstruction_error)
            } else {
                String::new()
            };
            eprintln!(
                "epoch {epoch}/{total}: validation NLL {:.2} nats ({:.4} bits/dim), train {:.1} s{recon}{}",
                record.val_nll,
                record.val_bpd,
                record.train_seconds,
                if record.skipped_steps > 0 { format!(", {} steps skipped (non-finite)", record.skipped_steps) } else { String::new() }
            );
            for alert in &record.alerts {
                eprintln!("  divergence monitor: {alert}");
            }
        }
    }
    // pictures a person can open
    let plots = crate::plot::plot_runs(std::slice::from_ref(&dir.root), &dir.root)?;
    let inverse = if snf_run { crate::sample::Inverse::Both } else { crate::sample::Inverse::Exact };
    if samples > 0 {
        if let Some((_, _, best)) = trainer.best() {
            crate::sample::write_samples(best, samples, inverse, s.config.seed, 1.0, &dir.samples())?;
        }
    }
    if let Some((e, nll, _)) = trainer.best() {
        println!("best epoch {e}: validation NLL {nll:.2} nats ({:.4} bits/dim)", nll / (trainer.flow().dim() as f64 * std::f64::consts::LN_2));
    }
    println!("metrics:     {}, {}", dir.metrics_csv().display(), dir.metrics_jsonl().display());
    println!("checkpoints: {}, {}", dir.best().display(), dir.last().display());
    println!("plots:       {}", plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    if samples > 0 {
        let what = if snf_run { "left: learned inverse, right: exact inverse" } else { "exact inverse" };
        println!("samples:     {} ({what})", dir.samples().display());
    }
    println!("test NLL:    snf eval {}", dir.root.display());
    Ok(())
}
