//! Timing helpers for `scripts/gpu-check.sh`: one training step of a single linear flow
//! layer on the GPU, self-normalizing vs exact (Fig. 4), as on the CPU bench.

use std::time::Instant;

use super::linear::{ExactLinear, Linear, Scratch};
use super::Gpu;
use crate::error::Result;
use crate::optim::AdamConfig;

/// Median seconds of one step (forward, backward, Adam; synchronised) of the
/// self-normalizing and of the exact linear layer at dimension `d`, batch `b`.
///
/// # Errors
/// [`crate::Error::Gpu`].
pub fn linear_step_times(gpu: &Gpu, d: usize, b: usize, reps: usize) -> Result<(f64, f64)> {
    let eye: Vec<f32> = (0..d * d).map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let x_host: Vec<f32> = (0..d * b).map(|k| ((k * 131 % 97) as f32 / 97.0 - 0.5) * 2.0).collect();
    let bias = vec![0.0f32; d];
    let x = gpu.upload(&x_host)?;
    let (mut u, mut z, mut dz, mut dx) = (gpu.zeros(d * b)?, gpu.zeros(d * b)?, gpu.zeros(d * b)?, gpu.zeros(d * b)?);
    let mut scratch = Scratch::new(gpu, d, b)?;
    let cfg = AdamConfig::default();
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        gpu.synchronize()?;
        let mut t = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let t0 = Instant::now();
            f()?;
            gpu.synchronize()?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    };
    let mut snf = Linear::new(gpu, d, &eye, &eye, &bias)?;
    let snf_t = time(&mut || {
        snf.forward(gpu, &x, &mut u, &mut z, b)?;
        gpu.neg(&z, &mut dz, d * b)?;
        snf.backward(gpu, &x, &u, &dz, &mut dx, &mut scratch, b, 1.0)?;
        snf.adam_step(gpu, cfg, 1e-4, true)
    })?;
    let mut exact = ExactLinear::new(gpu, d, &eye, &bias)?;
    let exact_t = time(&mut || {
        exact.inner.forward(gpu, &x, &mut u, &mut z, b)?;
        gpu.neg(&z, &mut dz, d * b)?;
        exact.backward(gpu, &x, &dz, &mut dx, b)?;
        exact.inner.adam_step(gpu, cfg, 1e-4, false)
    })?;
    Ok((snf_t, exact_t))
}
