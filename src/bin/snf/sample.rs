//! `snf sample`.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use faer::{Mat, Par};
use rand::SeedableRng;
use snf::checkpoint::Checkpoint;
use snf::flow::Flow;
use snf::Real;

use crate::error::{io, CliError, Result};
use crate::grid::Grid;
use crate::run::resolve_checkpoint;

/// Which inverse maps base draws to images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Inverse {
    /// The learned inverses g (matrix products only).
    Learned,
    /// The exact inverses (LU solves).
    Exact,
    /// Both, side by side from the same base draws (left learned, right exact).
    Both,
}

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint file, or a run folder (its best checkpoint).
    target: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 64)]
    n: usize,
    /// Inverse to sample through.
    #[arg(long, value_enum, default_value = "learned")]
    inverse: Inverse,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Seed of the base draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Scale of the base draws (1: the model's distribution).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
}

pub fn run(a: Args) -> Result<()> {
    if a.n == 0 || a.n > 10_000 {
        return Err(CliError::Usage(format!("-n must be between 1 and 10000, got {}", a.n)));
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        return Err(CliError::Usage(format!("--temperature must be positive, got {}", a.temperature)));
    }
    let path = resolve_checkpoint(&a.target)?;
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let origin = path.display().to_string();
    match snf::checkpoint::stored_dtype(&bytes, &origin)? {
        "f32" => write_samples(&Checkpoint::<f32>::from_bytes(&bytes, &origin)?.flow, a.n, a.inverse, a.seed, a.temperature, &a.out)?,
        _ => write_samples(&Checkpoint::<f64>::from_bytes(&bytes, &origin)?.flow, a.n, a.inverse, a.seed, a.temperature, &a.out)?,
    }
    println!("{} samples ({:?} inverse) written to {}", a.n, a.inverse, a.out.display());
    Ok(())
}

/// Draw `n` base samples and write their images through the chosen inverse(s).
pub fn write_samples<T: Real>(flow: &Flow<T>, n: usize, inverse: Inverse, seed: u64, temperature: f64, out: &Path) -> Result<()> {
    let shape = flow.shape();
    if shape.is_flat() {
        return Err(CliError::Usage(format!("the model takes flat vectors of {}, sample grids need images", flow.dim())));
    }
    let learned = flow.self_normalizing().next().is_some();
    if !learned && inverse != Inverse::Exact {
        return Err(CliError::Usage("this model has no learned inverse (exact-gradient layers): use --inverse exact".into()));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let z = Mat::from_fn(flow.dim(), n, |_, _| T::from_f64(temperature * rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng)));
    let mut ws = flow.workspace(n, Par::rayon(0))?;
    let mut x = Mat::zeros(flow.dim(), n);
    let cols = (n as f64).sqrt().ceil() as usize;
    let mut grid = |how: snf::flow::Inverse| -> Result<Grid> {
        let ok = match flow.inverse(z.as_ref(), x.as_mut(), &mut ws, how) {
            Ok(()) => vec![true; n],
            // a draw whose inverse overflows (a far-out base sample through a contracting
            // layer) stops the batch: redo it one draw at a time, and leave the failed
            // draws as blank tiles instead of losing the grid
            Err(snf::Error::NonFinite { .. } | snf::Error::Singular { .. }) => {
                let mut ws1 = flow.workspace(1, Par::Seq)?;
                (0..n).map(|j| flow.inverse(z.as_ref().subcols(j, 1), x.as_mut().subcols_mut(j, 1), &mut ws1, how).is_ok()).collect()
            }
            Err(e) => return Err(e.into()),
        };
        let images: Vec<Vec<u8>> = (0..n)
            .map(|j| {
                if !ok[j] {
                    return vec![0; flow.dim()];
                }
                (0..flow.dim())
                    .map(|i| {
                        let v = x[(i, j)].as_f64();
                        if v.is_finite() {
                            v.clamp(0.0, 255.0) as u8
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Grid::new(&images, shape, cols))
    };
    use snf::flow::Inverse as How;
    let g = match inverse {
        Inverse::Learned => grid(How::Learned)?,
        Inverse::Exact => grid(How::Exact)?,
        Inverse::Both => grid(How::Learned)?.beside(&grid(How::Exact)?),
    };
    g.scaled(2).save(out)
}
