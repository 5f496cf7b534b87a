//! Train the paper's Conv 9-layer flow (three blocks of three self-normalizing 3x3
//! convolutions with spline activations, squeezes between) on the shipped MNIST, and its
//! exact-gradient twin, printing validation NLL, time and gradient angles per epoch.
//!
//! `cargo run --release --example train_mnist_conv -- [EPOCHS] [MODE] [TRAIN_SUBSET]`
//! with MODE one of `snf`, `exact`, `both` (default: 2 both 50000). lr 1e-3, batch 100,
//! λ = 1, as in Appendix A.3.

use faer::Par;
use snf::data::mnist::Mnist;
use snf::flow::models::conv_nine_layer;
use snf::optim::AdamConfig;
use snf::train::{TrainConfig, Trainer};

fn run(name: &str, snf_model: bool, epochs: usize, mnist: &Mnist) -> Result<(), snf::Error> {
    let cfg = TrainConfig { epochs, adam: AdamConfig { lr: 1e-3, ..Default::default() }, angle_batches: if snf_model { 1 } else { 0 }, ..Default::default() };
    let flow = conv_nine_layer::<f32, _>(
        snf::data::mnist::SHAPE,
        if snf_model { snf::flow::models::Gradient::SelfNormalizing } else { snf::flow::models::Gradient::Exact },
        &mut snf::init::rng(cfg.seed),
    )?;
    let mut trainer = Trainer::new(flow, cfg, Par::rayon(0))?;
    println!("\n{name}: Conv 9-layer, batch {}, lr {}, warm-up {} epochs, lambda {:?}", cfg.batch, cfg.adam.lr, cfg.warmup_epochs, cfg.lambda);
    println!("epoch  val NLL (nats)  val bits/dim  train s/epoch  recon err  mean angle all / W (deg)  skipped");
    for _ in 0..epochs {
        let r = trainer.epoch(&mnist.train, &mnist.valid)?;
        let mean = |v: &[(usize, f64, f64)]| snf::train::mean_angle(v).unwrap_or(f64::NAN);
        println!(
            "{:>5}  {:>14.2}  {:>12.4}  {:>13.2}  {:>9.2e}  {:>12.3} / {:>9.4}  {:>7}",
            r.epoch,
            r.val_nll,
            r.val_bpd,
            r.train_seconds,
            r.reconstruction_error,
            mean(&r.angles),
            mean(&r.angles_w),
            r.skipped_steps
        );
    }
    Ok(())
}

fn main() -> Result<(), snf::Error> {
    let args: Vec<String> = std::env::args().collect();
    let epochs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let mode = args.get(2).map(String::as_str).unwrap_or("both").to_string();
    let subset: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let mut mnist = Mnist::load(&Mnist::shipped_dir())?;
    mnist.train = mnist.train.head(subset);
    if mode == "snf" || mode == "both" {
        run("self-normalizing", true, epochs, &mnist)?;
    }
    if mode == "exact" || mode == "both" {
        run("exact", false, epochs, &mnist)?;
    }
    Ok(())
}
