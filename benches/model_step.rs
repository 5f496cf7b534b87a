//! One training step of the paper's two MNIST models (batch 100, f32, both cores):
//! forward + loss (with the reconstruction term) + backward + Adam, self-normalizing vs
//! its exact twin, timed in the same run.
//!
//! - `fc2_step_f32`: the FC 2-layer model (self-normalizing, exact, and the relative-gradient
//!   baseline of Table 1), its step split into the gradient sweep and
//!   Adam, next to the GEMMs the self-normalizing step performs (12 products of
//!   784 x 784 by 784 x 100: one forward and five backward per linear layer), and the
//!   model's evaluation (`Flow::log_prob` with the cached log-det).
//! - `conv9_step_f32`: the Conv 9-layer model (nine 3x3 convolutions, eight spline
//!   activations, two squeezes), self-normalizing and exact, and with Table 1's conv
//!   baselines in place of the 3x3 convolutions (emerging convolutions; convolution
//!   exponentials at their start and at the norm bound), and the evaluations.
//!
//! Adam runs on both cores, as the trainer runs it (`Trainer` gives it the flow's `Par`).
//!
//! Run: `cargo bench --bench model_step` (`SNF_BENCH_MODELS=conv` or `fc` for one group).

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use snf::flow::models::{conv_nine_layer, conv_nine_layer_with, conv_nine_layer_with_fit, fc_two_layer, fc_two_layer_with, ConvMixing, Gradient};
use snf::flow::Flow;
use snf::layers::linear::InverseFit;
use snf::layers::ConvExp;
use snf::optim::{Adam, AdamConfig};
use std::time::Duration;

const B: usize = 100;
const D: usize = 784;

/// A deterministic batch of "pixels" in [0.5, 255.5].
fn pixels() -> Mat<f32> {
    Mat::<f32>::from_fn(D, B, |i, j| ((i * 7 + j * 13) % 256) as f32 + 0.5)
}

/// Bench one training step of `flow` (and, with `parts`, its gradient sweep and Adam
/// alone), plus its evaluation.
fn bench_flow(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, mut flow: Flow<f32>, parts: bool) {
    let x = pixels();
    let mut ws = flow.workspace(B, Par::rayon(0)).unwrap();
    let mut grads = flow.zero_grads();
    let mut adams: Vec<Adam<f32>> = grads
        .layers
        .iter()
        .map(|g| Adam::new(AdamConfig::default(), g.blocks().into_iter().map(|b| (b.nrows(), b.ncols()))).unwrap().with_par(Par::rayon(0)))
        .collect();
    group.bench_function(name, |bch| {
        bch.iter(|| {
            flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
            assert!(grads.all_finite_with(Par::rayon(0)));
            for ((l, g), a) in flow.layers_mut().iter_mut().zip(&grads.layers).zip(&mut adams) {
                a.step(l.params_mut().into_iter().zip(g.blocks())).unwrap();
            }
            flow.after_step(&mut ws).unwrap();
        })
    });
    if parts {
        group.bench_function(format!("{name}_gradients_only"), |bch| bch.iter(|| flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap()));
        group.bench_function(format!("{name}_adam_only"), |bch| {
            bch.iter(|| {
                for ((l, g), a) in flow.layers_mut().iter_mut().zip(&grads.layers).zip(&mut adams) {
                    a.step(l.params_mut().into_iter().zip(g.blocks())).unwrap();
                }
            })
        });
    }
    // evaluation with the data-independent log-det cached (computed once here)
    let mut lp = vec![0.0; B];
    flow.log_prob(x.as_ref(), &mut ws, &mut lp).unwrap();
    group.bench_function(format!("{name}_eval"), |bch| bch.iter(|| flow.log_prob(x.as_ref(), &mut ws, &mut lp).unwrap()));
}

fn selected(model: &str) -> bool {
    std::env::var("SNF_BENCH_MODELS").map(|v| v.split(',').any(|m| m == model)).unwrap_or(true)
}

fn fc_step(c: &mut Criterion) {
    if !selected("fc") {
        return;
    }
    let mut group = c.benchmark_group("fc2_step_f32");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for (name, gradient) in [("snf", Gradient::SelfNormalizing), ("exact", Gradient::Exact), ("relative", Gradient::Relative)] {
        let flow = fc_two_layer::<f32, _>(snf::data::mnist::SHAPE, gradient, &mut snf::init::rng(0)).unwrap();
        bench_flow(&mut group, name, flow, gradient == Gradient::SelfNormalizing);
    }
    // the paper's penalised layers (the default above fits R by projection)
    let penalty = fc_two_layer_with::<f32, _>(snf::data::mnist::SHAPE, Gradient::SelfNormalizing, InverseFit::Penalty, &mut snf::init::rng(0)).unwrap();
    bench_flow(&mut group, "snf_penalty", penalty, false);
    // The twelve products of the SNF step, with the step's own shapes, operand layouts
    // (transposed views where the step uses them) and accumulation modes, with faer's own
    // parallel GEMM: per layer u = W x, e += R u (R = (R^T)^T, a transposed view),
    // dx = W^T dz, t += R^T e, gW += t x^T, gR^T += u s^T.
    let x = pixels();
    let w = Mat::<f32>::from_fn(D, D, |i, j| ((i + 2 * j) % 7) as f32 / 7.0);
    let rt = Mat::<f32>::from_fn(D, D, |i, j| ((2 * i + j) % 5) as f32 / 5.0);
    let (mut u, mut e, mut dx, mut t) = (Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B));
    let (mut gw, mut grt) = (Mat::<f32>::zeros(D, D), Mat::<f32>::zeros(D, D));
    let p = Par::rayon(0);
    // The projection fit's products per layer: u = W x, e += R u, dx = W^T dz,
    // gW += dz x^T, and the step R^T -= u T^T; plus the small G = u^T u (B x B) and
    // T = e G^{-1} (D x B x B).
    let mut g = Mat::<f32>::zeros(B, B);
    group.bench_function("gemm10", |bch| {
        bch.iter(|| {
            for _ in 0..2 {
                matmul(u.as_mut(), Accum::Replace, w.as_ref(), x.as_ref(), 1.0, p);
                matmul(e.as_mut(), Accum::Add, rt.transpose(), u.as_ref(), 1.0, p);
                matmul(dx.as_mut(), Accum::Replace, w.transpose(), x.as_ref(), 1.0, p);
                matmul(gw.as_mut(), Accum::Add, dx.as_ref(), x.transpose(), 1e-2, p);
                matmul(g.as_mut(), Accum::Replace, u.transpose(), u.as_ref(), 1.0, p);
                matmul(t.as_mut(), Accum::Replace, e.as_ref(), g.as_ref(), 1e-6, p);
                matmul(grt.as_mut(), Accum::Add, u.as_ref(), t.transpose(), 1e-2, p);
            }
        })
    });
    group.bench_function("gemm12", |bch| {
        bch.iter(|| {
            for _ in 0..2 {
                matmul(u.as_mut(), Accum::Replace, w.as_ref(), x.as_ref(), 1.0, p);
                matmul(e.as_mut(), Accum::Add, rt.transpose(), u.as_ref(), 1.0, p);
                matmul(dx.as_mut(), Accum::Replace, w.transpose(), x.as_ref(), 1.0, p);
                matmul(t.as_mut(), Accum::Add, rt.as_ref(), e.as_ref(), 1.0, p);
                matmul(gw.as_mut(), Accum::Add, t.as_ref(), x.transpose(), 1e-2, p);
                matmul(grt.as_mut(), Accum::Add, u.as_ref(), e.transpose(), 1e-2, p);
            }
        })
    });
    group.finish();
}

fn conv_step(c: &mut Criterion) {
    if !selected("conv") {
        return;
    }
    let mut group = c.benchmark_group("conv9_step_f32");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for (name, gradient) in [("snf", Gradient::SelfNormalizing), ("exact", Gradient::Exact)] {
        let flow = conv_nine_layer::<f32, _>(snf::data::mnist::SHAPE, gradient, &mut snf::init::rng(0)).unwrap();
        bench_flow(&mut group, name, flow, gradient == Gradient::SelfNormalizing);
    }
    // the paper's penalised layers (Eq. 3), for the projection fit's cost against them
    let penalty = conv_nine_layer_with_fit::<f32, _>(
        snf::data::mnist::SHAPE,
        ConvMixing::Conv3x3(Gradient::SelfNormalizing),
        InverseFit::Penalty,
        &mut snf::init::rng(0),
    )
    .unwrap();
    bench_flow(&mut group, "snf_penalty", penalty, false);
    // Table 1's conv baselines (exact gradients). The convolution exponential's cost grows
    // with its kernel's norm bound (the series length): timed at the near-identity start
    // and with every kernel scaled to the bound c, where the series is longest (9 terms).
    let emerging = conv_nine_layer_with::<f32, _>(snf::data::mnist::SHAPE, ConvMixing::Emerging, &mut snf::init::rng(0)).unwrap();
    bench_flow(&mut group, "emerging", emerging, false);
    let convexp = conv_nine_layer_with::<f32, _>(snf::data::mnist::SHAPE, ConvMixing::ConvExp, &mut snf::init::rng(0)).unwrap();
    bench_flow(&mut group, "convexp_init", convexp.clone(), false);
    let mut at_bound = convexp;
    for l in at_bound.layers_mut() {
        let scale = (&**l as &dyn std::any::Any).downcast_ref::<ConvExp<f32>>().map(|ce| ce.config().coeff / ce.norm_bound());
        if let Some(f) = scale {
            let mut p = l.params_mut();
            faer::zip!(p[0].as_mut()).for_each(|faer::unzip!(v)| *v *= f as f32);
        }
    }
    bench_flow(&mut group, "convexp_at_bound", at_bound, false);
    group.finish();
}

criterion_group!(benches, fc_step, conv_step);
criterion_main!(benches);
