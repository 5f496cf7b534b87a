//! A long run of the FC 2-layer self-normalizing model on the GPU (feature `cuda`) with the
//! paper's FC settings (Appendix A.3): Adam, learning rate 1e-4 warmed up linearly over
//! the first 10 epochs, batch 100, λ = 1 (the penalised layers), seed 0, the shipped MNIST
//! with its 50 000 / 10 000 / 10 000 split. It trains until `EPOCHS` or until `SECONDS`
//! of training time have passed, evaluates the validation NLL on the CPU every `EVERY`
//! epochs, and at the end the test NLL of the last and of the best-validation parameters.
//! One line per evaluation goes to stdout and to `OUT_DIR/gpu_fc_metrics.csv` (flushed as
//! it goes), and the final flow to `OUT_DIR/gpu_fc_last.safetensors` (a
//! [`Checkpoint`](snf::checkpoint::Checkpoint) without training state).
//!
//! `cargo run --release --features cuda --example gpu_train_fc -- [EPOCHS] [SECONDS] [EVERY] [OUT_DIR]`
//! (default `6000 540 25 gpu-results`).

#[cfg(feature = "cuda")]
fn main() -> Result<(), snf::Error> {
    use faer::{Mat, Par};
    use snf::checkpoint::Checkpoint;
    use snf::cuda::{fc::GpuFc, Gpu};
    use snf::data::mnist::Mnist;
    use snf::flow::models::{fc_two_layer_with, Gradient};
    use snf::layers::linear::InverseFit;
    use snf::optim::AdamConfig;
    use std::io::Write;

    let args: Vec<String> = std::env::args().collect();
    let epochs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(6000);
    let budget: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(540.0);
    let every: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(25).max(1);
    let out = std::path::PathBuf::from(args.get(4).map_or("gpu-results", String::as_str));
    let io = |e: std::io::Error| snf::Error::InvalidArgument { op: "gpu_train_fc", reason: e.to_string() };
    std::fs::create_dir_all(&out).map_err(io)?;
    let mut csv = std::fs::File::create(out.join("gpu_fc_metrics.csv")).map_err(io)?;

    let gpu = Gpu::new(0)?;
    let mnist = Mnist::load(&Mnist::shipped_dir())?;
    let mut flow = fc_two_layer_with::<f32, _>(snf::data::mnist::SHAPE, Gradient::SelfNormalizing, InverseFit::Penalty, &mut snf::init::rng(0))?;
    let mut model = GpuFc::from_flow(&gpu, &flow, 100)?;
    model.upload_data(&mnist.train)?;
    let cfg = AdamConfig { lr: 1e-4, ..AdamConfig::default() };
    let steps_per_epoch = (mnist.train.len() / 100) as f64;
    let warmup_steps = 10.0 * steps_per_epoch;
    let mut ws = flow.workspace(100, Par::rayon(0))?;
    let mut batch_buf = Mat::zeros(784, 100);
    let mut order = Vec::new();
    let (mut train_s, mut best) = (0.0, (f64::INFINITY, 0usize));
    let mut best_flow = flow.clone();
    let line = "epoch,train_seconds,reconstruction_error,val_nll,val_bpd";
    println!("{line}");
    writeln!(csv, "{line}").map_err(io)?;
    let mut last_epoch = 0;
    for epoch in 1..=epochs {
        snf::data::batches::epoch_order(mnist.train.len(), 0, epoch as u64, &mut order);
        let t0 = std::time::Instant::now();
        let recon = model.train_epoch(&order, 100, cfg, |t| cfg.lr * (t as f64 / warmup_steps).min(1.0), 1.0, 0)?;
        train_s += t0.elapsed().as_secs_f64();
        last_epoch = epoch;
        let done = epoch == epochs || train_s >= budget;
        if epoch % every == 0 || epoch <= 10 || done {
            model.write_to(&mut flow)?;
            let (nll, bpd) = snf::train::evaluate(&flow, &mnist.valid, 100, 0, &mut ws, &mut batch_buf)?;
            if nll < best.0 {
                best = (nll, epoch);
                best_flow = flow.clone();
            }
            let row = format!("{epoch},{train_s:.2},{recon:.4},{nll:.3},{bpd:.5}");
            println!("{row}");
            writeln!(csv, "{row}").map_err(io)?;
            csv.flush().map_err(io)?;
        }
        if done {
            break;
        }
    }
    let (test_last, bpd_last) = snf::train::evaluate(&flow, &mnist.test, 100, 0, &mut ws, &mut batch_buf)?;
    let (test_best, bpd_best) = snf::train::evaluate(&best_flow, &mnist.test, 100, 0, &mut ws, &mut batch_buf)?;
    println!("trained {last_epoch} epochs in {train_s:.1} s on the GPU");
    println!("test NLL, last parameters (epoch {last_epoch}): {test_last:.2} nats ({bpd_last:.4} bits/dim)");
    println!("test NLL, best validation (epoch {}, val {:.2}): {test_best:.2} nats ({bpd_best:.4} bits/dim)", best.1, best.0);
    Checkpoint::new(flow)?.save(&out.join("gpu_fc_last.safetensors"))?;
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_train_fc needs the `cuda` feature: cargo run --release --features cuda --example gpu_train_fc");
    std::process::exit(2);
}
