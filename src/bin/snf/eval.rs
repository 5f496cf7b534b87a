//! `snf eval`.

use std::path::PathBuf;

use faer::{Mat, Par};
use snf::checkpoint::Checkpoint;
use snf::train::evaluate_given;
use snf::Real;

use crate::error::{io, CliError, Result};
use crate::run::{data_dir, resolve_checkpoint, split, CheckpointMeta, SplitName};

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint file, or a run folder (its best checkpoint).
    target: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitName,
    /// MNIST folder [default: the run's, else the shipped copy].
    #[arg(long)]
    data: Option<PathBuf>,
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
    let data = a.data.clone().or_else(|| meta.as_ref().and_then(|m| m.settings.data.clone()));
    let mnist = snf::data::mnist::Mnist::load(&data_dir(&data))?;
    let mut examples = split(&mnist, a.split).clone();
    let run_subset = meta.as_ref().and_then(|m| if a.split == SplitName::Valid { m.settings.valid_subset } else { None });
    if let Some(n) = a.subset.or(run_subset) {
        examples = examples.head(n);
    }
    let seed = meta.as_ref().map_or(0, |m| m.settings.config.seed);
    let par = Par::rayon(meta.as_ref().map_or(a.threads, |m| if a.threads == 0 { m.settings.threads } else { a.threads }));
    let mut ws = ck.flow.workspace(a.batch, par, false);
    let mut batch = Mat::zeros(ck.flow.dim(), a.batch);
    let static_ld = if a.recompute_log_det { ck.flow.static_log_det(&mut ws)? } else { ck.static_log_det };
    let (nll, bpd) = evaluate_given(&ck.flow, static_ld, &examples, a.batch, seed, &mut ws, &mut batch)?;
    let split_name = format!("{:?}", a.split).to_lowercase();
    if a.json {
        let v = serde_json::json!({
            "checkpoint": path.display().to_string(),
            "split": split_name,
            "examples": examples.len(),
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
        println!("checkpoint:  {}{}", path.display(), meta.as_ref().map_or(String::new(), |m| format!(" (epoch {}, logged validation NLL {:.3})", m.epoch, m.val_nll)));
        if a.recompute_log_det {
            println!("log-dets:    recomputed {static_ld:.6}, cached {:.6}", ck.static_log_det);
        }
    }
    Ok(())
}
