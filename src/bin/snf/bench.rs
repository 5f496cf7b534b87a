//! `snf bench`: Fig. 4 from the command line — one training step (forward, backward,
//! Adam) of a single linear flow layer with a standard normal base, self-normalizing vs
//! exact (LU), over a range of dimensions. For publication-grade numbers use the
//! criterion benches (`cargo bench --bench fc_step`).

use std::time::Instant;

use faer::{unzip, zip, Mat, Par};
use snf::layers::linear::{ExactLinear, ExactLinearWorkspace, LinearWorkspace, SelfNormLinear};
use snf::optim::{Adam, AdamConfig};
use snf::Real;

use crate::error::{CliError, Result};
use crate::run::Precision;

#[derive(clap::Args)]
pub struct Args {
    /// Dimensions D, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64, 128, 256, 512, 784, 1024, 1536, 2048])]
    dims: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed repetitions per point (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: Args) -> Result<()> {
    if a.dims.is_empty() || a.dims.iter().any(|&d| d == 0 || d > 8192) || a.batch == 0 || a.batch > 1 << 16 || a.reps == 0 {
        return Err(CliError::Usage(format!("--dims must be in 1..=8192, --batch in 1..=65536 (got {}), --reps positive", a.batch)));
    }
    println!("one training step of a linear flow layer, batch {}, {:?}, median of {} (ms)", a.batch, a.precision, a.reps);
    println!("{:>6} {:>10} {:>10} {:>12}", "D", "SNF", "exact", "exact / SNF");
    for &d in &a.dims {
        let (s, e) = match a.precision {
            Precision::F32 => point::<f32>(d, &a)?,
            Precision::F64 => point::<f64>(d, &a)?,
        };
        println!("{d:>6} {:>10.3} {:>10.3} {:>11.2}x", s * 1e3, e * 1e3, e / s);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut() -> snf::Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn point<T: Real>(d: usize, a: &Args) -> Result<(f64, f64)> {
    let par = Par::rayon(a.threads);
    let b = a.batch;
    let mut rng = snf::init::rng(0);
    let x = Mat::<T>::from_fn(d, b, |i, j| T::from_f64((((i * 131 + j * 71) % 97) as f64 / 97.0 - 0.5) * 2.0));
    let (mut z, mut dz, mut dx) = (Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b));
    let cfg = AdamConfig::default();

    let mut layer = SelfNormLinear::<T>::new(d, true, &mut rng)?;
    let mut ws = LinearWorkspace::new(d, b, par)?;
    let mut g = layer.zero_grads();
    let mut adam = Adam::new(cfg, g.blocks().map(|m| (m.nrows(), m.ncols())))?;
    let snf_time = time(a.reps, || {
        layer.forward(x.as_ref(), z.as_mut(), &mut ws)?;
        zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
        layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, T::from_f64(1.0))?;
        adam.step(layer.params_with_grads(&g)?)
    })?;

    let mut base = ExactLinear::<T>::new(d, true, &mut rng)?;
    let mut ews = ExactLinearWorkspace::new(d, b, par)?;
    let mut eg = base.zero_grads();
    let mut eadam = Adam::new(cfg, [(d, d), (d, 1)])?;
    let exact_time = time(a.reps, || {
        base.forward(x.as_ref(), z.as_mut(), &ews)?;
        zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
        base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut eg, &mut ews)?;
        eadam.step(base.params_with_grads(&eg)?)
    })?;
    Ok((snf_time, exact_time))
}
