//! GPU timings for `scripts/gpu-check.sh` (feature `cuda`): one training step of a linear
//! flow layer, self-normalizing vs exact, at the given dimensions, then one epoch of the
//! FC 2-layer model on MNIST with the data resident on the device, and its exact
//! validation NLL (log-dets on the CPU).
//!
//! `cargo run --release --features cuda --example gpu_bench -- [DIMS] [BATCH] [EPOCHS]`
//! (default `784,2048,4096 128 1`). The epochs use the CPU trainer's schedule for
//! `snf train --inverse-fit penalty --lambda 1 --precision f32 --warmup 1` (same
//! initialisation, example order and learning rate; the dequantisation noise comes from
//! a different generator), so the two NLL curves can be compared epoch by epoch.

#[cfg(feature = "cuda")]
fn main() -> Result<(), snf::Error> {
    use faer::{Mat, Par};
    use snf::cuda::{bench::linear_step_times, fc::GpuFc, Gpu};
    use snf::data::mnist::Mnist;
    use snf::flow::models::fc_two_layer_with;
    use snf::optim::AdamConfig;

    let args: Vec<String> = std::env::args().collect();
    let dims: Vec<usize> = args.get(1).map_or("784,2048,4096", String::as_str).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let epochs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let gpu = Gpu::new(0)?;
    println!("{gpu:?}");
    println!("one linear-layer training step on the GPU, batch {batch}, f32 (median of 20, ms)");
    println!("{:>6} {:>10} {:>10} {:>12}", "D", "SNF", "exact", "exact / SNF");
    for &d in &dims {
        let (s, e) = linear_step_times(&gpu, d, batch, 20)?;
        println!("{d:>6} {:>10.3} {:>10.3} {:>11.2}x", s * 1e3, e * 1e3, e / s);
    }

    let mnist = Mnist::load(&Mnist::shipped_dir())?;
    let mut flow = fc_two_layer_with::<f32, _>(
        snf::data::mnist::SHAPE,
        snf::flow::models::Gradient::SelfNormalizing,
        snf::layers::linear::InverseFit::Penalty,
        &mut snf::init::rng(0),
    )?;
    let mut model = GpuFc::from_flow(&gpu, &flow, 100)?;
    model.upload_data(&mnist.train)?;
    let mut order = Vec::new();
    let cfg = AdamConfig::default();
    let steps_per_epoch = (mnist.train.len() / 100) as f64;
    let mut ws = flow.workspace(100, Par::rayon(0))?;
    let mut batch_buf = Mat::zeros(784, 100);
    let mut total = 0.0;
    println!("FC 2-layer SNF on MNIST on the GPU (batch 100, lambda 1, one-epoch warm-up; validation on the CPU)");
    println!("{:>5} {:>9} {:>9} {:>12} {:>10}", "epoch", "train s", "recon", "valid NLL", "bits/dim");
    for epoch in 1..=epochs.max(1) {
        snf::data::batches::epoch_order(mnist.train.len(), 0, epoch as u64, &mut order);
        let t0 = std::time::Instant::now();
        let recon = model.train_epoch(&order, 100, cfg, |t| cfg.lr * (t as f64 / steps_per_epoch).min(1.0), 1.0, 0)?;
        let secs = t0.elapsed().as_secs_f64();
        total += secs;
        model.write_to(&mut flow)?;
        let (nll, bpd) = snf::train::evaluate(&flow, &mnist.valid, 100, 0, &mut ws, &mut batch_buf)?;
        println!("{epoch:>5} {secs:>9.3} {recon:>9.3} {nll:>12.2} {bpd:>10.4}");
    }
    println!("total GPU training time {total:.2} s");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_bench needs the `cuda` feature: cargo run --release --features cuda --example gpu_bench");
    std::process::exit(2);
}
