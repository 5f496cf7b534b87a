//! `snf eval`.

use std::path::PathBuf;

use faer::{Mat, Par};
use snf::checkpoint::Checkpoint;
use snf::train::evaluate_given;
use snf::Real;

use crate::error::{io, CliError, Result};
use crate::run::{absolute, describe_data, load_data, resolve_checkpoint, split, CheckpointMeta, DatasetKind, Grad, Model, Precision, RunSettings, SplitName};

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint file, or a run folder (its best checkpoint).
    target: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitName,
    /// Data folder [default: the run's, else the shipped MNIST].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Data set format of --data [default: the run's, else mnist].
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Evaluate the first N images of the split only [default: the run's subset for
    /// the validation split, all images otherwise].
    #[arg(long)]
    subset: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Recompute the data-independent log-dets by LU instead of using the checkpoint's
    /// cached value, and report both.
    #[arg(long)]
    recompute_log_det: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 {
        return Err(CliError::Usage("--batch must be positive".into()));
    }
    let path = resolve_checkpoint(&a.target)?;
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    match snf::checkpoint::stored_dtype(&bytes, &path.display().to_string())? {
        "f32" => eval::<f32>(&a, &path, &bytes),
        _ => eval::<f64>(&a, &path, &bytes),
    }
}

fn eval<T: Real>(a: &Args, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let ck = Checkpoint::<T>::from_bytes(bytes, &path.display().to_string())?;
    let meta: Option<CheckpointMeta> = serde_json::from_value(ck.meta.clone()).ok();
    // the run's data settings (a checkpoint without them: the shipped MNIST), then the flags
    let mut s = meta.as_ref().map(|m| m.settings.clone()).unwrap_or_else(|| RunSettings {
        run_id: String::new(),
        model: Model::Fc,
        grad: Grad::Snf,
        mixing: Default::default(),
        glow: None,
        inverse_fit: Default::default(),
        inverse_kernel: 3,
        precision: Precision::F32,
        dataset: DatasetKind::Mnist,
        data: None,
        valid_size: None,
        checksums: true,
        train_subset: None,
        valid_subset: None,
        threads: 0,
        config: Default::default(),
    });
    if let Some(d) = a.dataset {
        s.dataset = d;
    }
    if a.data.is_some() {
        s.data = absolute(&a.data)?;
    }
    s.train_subset = None;
    if a.split != SplitName::Valid {
        s.valid_subset = None;
    }
    let data = load_data(&s)?;
    let mut examples = split(&data, a.split).clone();
    if let Some(n) = a.subset {
        examples = examples.head(n);
    }
    if examples.is_empty() {
        return Err(CliError::Usage(format!("the {:?} split has no images to evaluate", a.split).to_lowercase()));
    }
    let seed = meta.as_ref().map_or(0, |m| m.settings.config.seed);
    let par = Par::rayon(meta.as_ref().map_or(a.threads, |m| if a.threads == 0 { m.settings.threads } else { a.threads }));
    // no wider than the split: a huge --batch sizes nothing it does not use
    let width = a.batch.min(examples.len());
    let mut ws = ck.flow.workspace(width, par)?;
    let mut batch = Mat::zeros(ck.flow.dim(), width);
    let static_ld = if a.recompute_log_det { ck.flow.static_log_det(&mut ws)? } else { ck.static_log_det };
    let (nll, bpd) = evaluate_given(&ck.flow, static_ld, &examples, width, seed, &mut ws, &mut batch)?;
    let split_name = format!("{:?}", a.split).to_lowercase();
    if a.json {
        let v = serde_json::json!({
            "checkpoint": path.display().to_string(),
            "split": split_name,
            "examples": examples.len(),
            "data": describe_data(&s),
            "nll_nats": nll,
            "bits_per_dim": bpd,
            "static_log_det": static_ld,
            "cached_static_log_det": ck.static_log_det,
            "epoch": meta.as_ref().map(|m| m.epoch),
            "logged_val_nll": meta.as_ref().map(|m| m.val_nll),
        });
        println!("{v}");
    } else {
        println!("{split_name} NLL: {nll:.3} nats/image, {bpd:.5} bits/dim over {} images", examples.len());
        println!("data:        {} ({split_name} split)", describe_data(&s));
        println!(
            "checkpoint:  {}{}",
            path.display(),
            meta.as_ref().map_or(String::new(), |m| format!(" (epoch {}, logged validation NLL {:.3})", m.epoch, m.val_nll))
        );
        if a.recompute_log_det {
            println!("log-dets:    recomputed {static_ld:.6}, cached {:.6}", ck.static_log_det);
        }
    }
    Ok(())
}
