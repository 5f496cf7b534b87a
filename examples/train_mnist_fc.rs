//! Train the paper's FC 2-layer flow on the shipped MNIST, self-normalizing and exact
//! twin with the same seed, and print validation NLL, time and gradient angles per epoch.
//!
//! `cargo run --release --example train_mnist_fc -- [EPOCHS] [MODE] [TRAIN_SUBSET] [LAMBDA] [WARMUP]`
//! with MODE one of `snf`, `exact`, `both` and LAMBDA a number (fixed λ) or `geco:TARGET`
//! (a GECO multiplier steering the summed reconstruction error to TARGET), and WARMUP the
//! learning-rate warm-up in epochs; default `10 both 50000 1 10` (the paper's settings:
//! batch 100, lr 1e-4, λ = 1, the authors' 10-epoch warm-up).

use faer::Par;
use snf::data::mnist::Mnist;
use snf::flow::models::fc_two_layer;
use snf::train::{Geco, Lambda, TrainConfig, Trainer};

fn run(name: &str, snf_model: bool, epochs: usize, mnist: &Mnist, lambda: Lambda, warmup_epochs: f64) -> Result<(), snf::Error> {
    let cfg = TrainConfig { epochs, angle_batches: if snf_model { 2 } else { 0 }, lambda, warmup_epochs, ..Default::default() };
    let flow = fc_two_layer::<f32, _>(
        snf::data::mnist::SHAPE,
        if snf_model { snf::flow::models::Gradient::SelfNormalizing } else { snf::flow::models::Gradient::Exact },
        &mut snf::init::rng(cfg.seed),
    )?;
    let mut trainer = Trainer::new(flow, cfg, Par::rayon(0))?;
    println!("\n{name}: FC 2-layer, batch {}, lr {}, warm-up {} epochs, lambda {:?}", cfg.batch, cfg.adam.lr, cfg.warmup_epochs, cfg.lambda);
    println!("epoch  val NLL (nats)  val bits/dim  train s/epoch  recon err  angle L1 all / W (deg)  angle L2 all / W (deg)  skipped");
    for _ in 0..epochs {
        let r = trainer.epoch(&mnist.train, &mnist.valid)?;
        let angle = |k: usize| {
            let all = r.angles.iter().find(|a| a.0 == k);
            let w = r.angles_w.iter().find(|a| a.0 == k);
            match (all, w) {
                (Some(a), Some(w)) => format!("{:.3} / {:.4}", a.1, w.1),
                _ => "-".to_string(),
            }
        };
        println!(
            "{:>5}  {:>14.2}  {:>12.4}  {:>13.2}  {:>9.2e}  {:>22}  {:>22}  {:>7}",
            r.epoch,
            r.val_nll,
            r.val_bpd,
            r.train_seconds,
            r.reconstruction_error,
            angle(1),
            angle(3),
            r.skipped_steps
        );
    }
    if let Some((e, nll, _)) = trainer.best() {
        println!("best epoch {e}: validation NLL {nll:.2} nats");
    }
    Ok(())
}

fn main() -> Result<(), snf::Error> {
    let args: Vec<String> = std::env::args().collect();
    let epochs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mode = args.get(2).map(String::as_str).unwrap_or("both").to_string();
    let subset: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let lambda = match args.get(4).map(String::as_str) {
        Some(s) if s.starts_with("geco:") => Lambda::Geco(Geco::new(s[5..].parse().unwrap_or(1.0), 1.0)),
        Some(s) => Lambda::Fixed(s.parse().unwrap_or(1.0)),
        None => Lambda::Fixed(1.0),
    };
    // the authors' code warms the learning rate up over 10 epochs
    let warmup: f64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let mut mnist = Mnist::load(&Mnist::shipped_dir())?;
    mnist.train = mnist.train.head(subset);
    if mode == "snf" || mode == "both" {
        run("self-normalizing", true, epochs, &mnist, lambda, warmup)?;
    }
    if mode == "exact" || mode == "both" {
        run("exact", false, epochs, &mnist, lambda, warmup)?;
    }
    Ok(())
}
