//! One training step of Glow on MNIST (batch 100, f32, both cores): forward + loss (with the
//! reconstruction term for self-normalizing mixing) + backward + Adam, for Table 5's
//! 2L-4K (width 16) and the paper's MNIST 2L-16K (width 512), exact 1x1 vs
//! LU-parametrised 1x1 vs self-normalizing 1x1 (and SNF 5x5 for 2L-4K) mixing, timed in the same run; plus the
//! share of the step in the coupling conditioners vs the mixing layers: each group's
//! forward + backward alone, on the inputs it sees in the flow.
//!
//! Run: `cargo bench --bench glow_step` (`SNF_BENCH_GLOW=4k` or `16k` for one size).

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use faer::{Mat, Par};
use snf::flow::glow::{glow, GlowConfig, GlowMixing};
use snf::flow::Flow;
use snf::optim::{Adam, AdamConfig};
use snf::transform::{Grads, Tape, Workspace};
use std::time::Duration;

const B: usize = 100;
const D: usize = 784;

fn pixels() -> Mat<f32> {
    Mat::<f32>::from_fn(D, B, |i, j| ((i * 7 + j * 13) % 256) as f32 + 0.5)
}

fn selected(size: &str) -> bool {
    std::env::var("SNF_BENCH_GLOW").map(|v| v.split(',').any(|m| m == size)).unwrap_or(true)
}

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// A layer of the flow (its index) with its input in the flow, workspace and gradients.
type Isolated = (usize, Mat<f32>, Workspace<f32>, Grads<f32>);

/// Forward + backward of the layers of `kinds` alone, each on its input in the flow.
fn bench_layers(group: &mut Group<'_>, name: &str, flow: &Flow<f32>, kinds: &[&str]) {
    let par = Par::rayon(0);
    // each layer's input: run the flow's layers in order
    let mut h = pixels();
    let mut chosen: Vec<Isolated> = Vec::new();
    for (k, l) in flow.layers().iter().enumerate() {
        let d = flow.shape_at(k).unwrap().dim();
        let mut ws = l.workspace(B, par).unwrap();
        let mut y = h.clone();
        let _ = l.forward(h.as_ref().subrows(0, d), y.as_mut().subrows_mut(0, d), &mut [0.0; B], &mut ws).unwrap();
        if kinds.contains(&l.kind()) {
            chosen.push((k, h.as_ref().subrows(0, d).to_owned(), ws, l.zero_grads()));
        }
        h = y;
    }
    let mut scratch = (Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B), Mat::<f32>::from_fn(D, B, |i, j| ((i + j) % 5) as f32 * 0.1 - 0.2));
    group.bench_function(name, |bch| {
        bch.iter(|| {
            for (k, x, ws, g) in chosen.iter_mut() {
                let l = &flow.layers()[*k];
                let d = x.nrows();
                let (y, dx, dy) = (&mut scratch.0, &mut scratch.1, &scratch.2);
                let tape: Tape = l.forward(x.as_ref(), y.as_mut().subrows_mut(0, d), &mut [0.0; B], ws).unwrap();
                l.backward(tape, x.as_ref(), dy.as_ref().subrows(0, d), dx.as_mut().subrows_mut(0, d), g, ws, 1.0).unwrap();
            }
        })
    });
}

fn bench_step(group: &mut Group<'_>, name: &str, mut flow: Flow<f32>, parts: bool) {
    let x = pixels();
    let par = Par::rayon(0);
    flow.data_init(x.as_ref(), par).unwrap();
    if parts {
        bench_layers(group, &format!("{name}_conditioners_only"), &flow, &["affine-coupling"]);
        bench_layers(group, &format!("{name}_mixing_only"), &flow, &["inv-conv1x1", "lu-conv1x1", "snf-conv"]);
    }
    let mut ws = flow.workspace(B, par).unwrap();
    let mut grads = flow.zero_grads();
    let mut adams: Vec<Adam<f32>> =
        grads.layers.iter().map(|g| Adam::new(AdamConfig::default(), g.blocks().into_iter().map(|b| (b.nrows(), b.ncols()))).unwrap().with_par(par)).collect();
    group.bench_function(name, |bch| {
        bch.iter(|| {
            flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
            assert!(grads.all_finite());
            for ((l, g), a) in flow.layers_mut().iter_mut().zip(&grads.layers).zip(&mut adams) {
                a.step(l.params_mut().into_iter().zip(g.blocks())).unwrap();
            }
        })
    });
}

fn glow_4k(c: &mut Criterion) {
    if !selected("4k") {
        return;
    }
    let mut group = c.benchmark_group("glow_2l4k_w16_step_f32");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for (name, mixing) in [("exact1x1", GlowMixing::Exact1x1), ("lu1x1", GlowMixing::Lu1x1), ("snf1x1", GlowMixing::Snf1x1), ("snf5x5", GlowMixing::Snf(5))] {
        let flow = glow::<f32, _>(snf::data::mnist::SHAPE, GlowConfig::table5_2l_4k(mixing), &mut snf::init::rng(0)).unwrap();
        bench_step(&mut group, name, flow, true);
    }
    group.finish();
}

fn glow_16k(c: &mut Criterion) {
    if !selected("16k") {
        return;
    }
    let mut group = c.benchmark_group("glow_2l16k_w512_step_f32");
    group.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(20));
    for (name, mixing) in [("exact1x1", GlowMixing::Exact1x1), ("lu1x1", GlowMixing::Lu1x1), ("snf1x1", GlowMixing::Snf1x1)] {
        let flow = glow::<f32, _>(snf::data::mnist::SHAPE, GlowConfig::mnist_2l_16k(mixing), &mut snf::init::rng(0)).unwrap();
        bench_step(&mut group, name, flow, true);
    }
    group.finish();
}

criterion_group!(benches, glow_4k, glow_16k);
criterion_main!(benches);
