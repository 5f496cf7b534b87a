//! Train the paper's FC 2-layer flow on the shipped MNIST, self-normalizing and exact
//! twin with the same seed, and print validation NLL, time and gradient angles per epoch.
//!
//! `cargo run --release --example train_mnist_fc -- [EPOCHS] [MODE] [TRAIN_SUBSET]`
//! with MODE one of `snf`, `exact`, `both` (default: 10 both 50000).

use faer::Par;
use snf::data::mnist::Mnist;
use snf::flow::models::fc_two_layer;
use snf::train::{TrainConfig, Trainer};

fn run(name: &str, snf_model: bool, epochs: usize, mnist: &Mnist) -> Result<(), snf::Error> {
    let cfg = TrainConfig { epochs, angle_batches: if snf_model { 2 } else { 0 }, ..Default::default() };
    let flow = fc_two_layer::<f32, _>(snf_model, &mut snf::init::rng(cfg.seed))?;
    let mut trainer = Trainer::new(flow, cfg, Par::rayon(0))?;
    println!("\n{name}: FC 2-layer, batch {}, lr {}, lambda {:?}", cfg.batch, cfg.adam.lr, cfg.lambda);
    println!("epoch  val NLL (nats)  val bits/dim  train s/epoch  recon err  angle layer1 (deg)  angle layer3 (deg)  skipped");
    for epoch in 1..=epochs {
        let r = trainer.epoch(&mnist.train, &mnist.valid, epoch)?;
        let angle = |k: usize| r.angles.iter().find(|a| a.0 == k).map_or("-".to_string(), |a| format!("{:.3} ± {:.3}", a.1, a.2));
        println!(
            "{:>5}  {:>14.2}  {:>12.4}  {:>13.2}  {:>9.2e}  {:>18}  {:>18}  {:>7}",
            r.epoch, r.val_nll, r.val_bpd, r.train_seconds, r.reconstruction_error, angle(1), angle(3), r.skipped_steps
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
