//! The `cuda` feature. On a machine without a GPU every entry point must return
//! `Error::Gpu` (never panic) and the GPU comparisons skip with a printed reason; on a
//! GPU, the device step must reproduce the CPU step.
#![cfg(feature = "cuda")]

use faer::{Mat, Par};
use snf::cuda::{fc::GpuFc, Gpu};
use snf::flow::models::fc_two_layer_with;
use snf::Error;

fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(matches!(e, Error::Gpu { .. }), "a missing GPU is Error::Gpu, got {e}");
            eprintln!("{test}: skipped, no GPU: {e}");
            None
        }
    }
}

#[test]
fn without_a_gpu_the_backend_reports_a_typed_error() {
    // On a GPU machine this constructs; on any other it must be Error::Gpu, not a panic.
    match Gpu::new(0) {
        Ok(_) => eprintln!("a GPU is present: construction succeeded"),
        Err(e) => assert!(matches!(e, Error::Gpu { .. }), "{e}"),
    }
    // an ordinal that no machine has is an error either way
    assert!(matches!(Gpu::new(1 << 20), Err(Error::Gpu { .. })));
}

/// The GPU's loss gradients of one FC 2-layer step equal the CPU's on the same flow and
/// batch. Both run in f32; the GPU sums in a different order (cuBLAS tiles, atomics), so
/// entries differ by rounding: relative to each block's largest entry, f32 sums of 784
/// and 100 terms stay within a few 1e-5 (sqrt(n) ulp growth, with margin); a wrong
/// transpose, sign or factor gives O(1).
#[test]
fn gpu_gradients_match_the_cpu() {
    let Some(gpu) = gpu_or_skip("gpu_gradients_match_the_cpu") else { return };
    let flow = fc_two_layer_with::<f32, _>(
        snf::data::mnist::SHAPE,
        snf::flow::models::Gradient::SelfNormalizing,
        snf::layers::linear::InverseFit::Penalty,
        &mut snf::init::rng(3),
    )
    .unwrap();
    let b = 32;
    let x = Mat::from_fn(784, b, |i, j| ((i * 37 + j * 101) % 256) as f32 + 0.5);
    let mut cpu = flow.zero_grads();
    let mut ws = flow.workspace(b, Par::Seq).unwrap();
    let stats = flow.gradients(x.as_ref(), &mut cpu, &mut ws, 1.0).unwrap();
    let mut model = GpuFc::from_flow(&gpu, &flow, b).unwrap();
    let (g, recon) = model.gradients(x.as_ref(), 1.0).unwrap();
    assert!((recon - stats.reconstruction_error).abs() <= 1e-3 * stats.reconstruction_error.abs().max(1e-3), "{recon} vs {}", stats.reconstruction_error);
    for (k, (a, c)) in g.layers.iter().zip(&cpu.layers).enumerate() {
        for (ba, bc) in a.blocks().iter().zip(c.blocks()) {
            let scale = (0..bc.ncols()).flat_map(|j| (0..bc.nrows()).map(move |i| bc[(i, j)].abs())).fold(0.0f32, f32::max).max(1e-6);
            let diff = (0..bc.ncols()).flat_map(|j| (0..bc.nrows()).map(move |i| (ba[(i, j)] - bc[(i, j)]).abs())).fold(0.0f32, f32::max);
            assert!(diff <= 5e-4 * scale, "layer {k}: max diff {diff} vs scale {scale}");
        }
    }
}

/// Training on the GPU and writing back gives a valid flow whose parameters moved.
#[test]
fn gpu_training_writes_back_a_trained_flow() {
    let Some(gpu) = gpu_or_skip("gpu_training_writes_back_a_trained_flow") else { return };
    let mnist = snf::data::mnist::Mnist::load(&snf::data::mnist::Mnist::shipped_dir()).unwrap();
    let train = mnist.train.head(1000);
    let mut flow = fc_two_layer_with::<f32, _>(
        snf::data::mnist::SHAPE,
        snf::flow::models::Gradient::SelfNormalizing,
        snf::layers::linear::InverseFit::Penalty,
        &mut snf::init::rng(4),
    )
    .unwrap();
    let before = flow.clone();
    let mut model = GpuFc::from_flow(&gpu, &flow, 100).unwrap();
    model.upload_data(&train).unwrap();
    let order: Vec<usize> = (0..1000).collect();
    let cfg = snf::optim::AdamConfig { lr: 1e-3, ..Default::default() };
    let recon = model.train_epoch(&order, 100, cfg, |_| 1e-3, 1.0, 0).unwrap();
    assert!(recon.is_finite());
    model.write_to(&mut flow).unwrap();
    let w0 = before.layers()[1].params()[0].value.to_owned();
    let w1 = flow.layers()[1].params()[0].value.to_owned();
    assert!((&w1 - &w0).norm_l2() > 1e-4, "parameters moved");
}
