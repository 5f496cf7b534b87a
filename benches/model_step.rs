//! One training step of the paper's FC 2-layer MNIST model (batch 100, f32, both cores):
//! self-normalizing vs its exact twin, next to the GEMMs the self-normalizing step
//! performs (12 products of 784 x 784 by 784 x 100: one forward and five backward per
//! linear layer), timed in the same run.
//!
//! Run: `cargo bench --bench model_step`.

use criterion::{criterion_group, criterion_main, Criterion};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use snf::flow::models::fc_two_layer;
use snf::optim::{Adam, AdamConfig};
use std::time::Duration;

const B: usize = 100;
const D: usize = 784;

fn fc_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("fc2_step_f32");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    let x = Mat::<f32>::from_fn(D, B, |i, j| ((i * 7 + j * 13) % 256) as f32 + 0.5);
    for (name, snf_model) in [("snf", true), ("exact", false)] {
        let mut flow = fc_two_layer::<f32, _>(
            snf::data::mnist::SHAPE,
            if snf_model { snf::flow::models::Gradient::SelfNormalizing } else { snf::flow::models::Gradient::Exact },
            &mut snf::init::rng(0),
        )
        .unwrap();
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
                assert!(grads.all_finite());
                for ((l, g), a) in flow.layers_mut().iter_mut().zip(&grads.layers).zip(&mut adams) {
                    a.step(l.params_mut().into_iter().zip(g.blocks())).unwrap();
                }
            })
        });
        if snf_model {
            // the step's parts, same run: forward + backward sweep alone, Adam alone
            group.bench_function("snf_gradients_only", |bch| bch.iter(|| flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap()));
            group.bench_function("snf_adam_only", |bch| {
                bch.iter(|| {
                    for ((l, g), a) in flow.layers_mut().iter_mut().zip(&grads.layers).zip(&mut adams) {
                        a.step(l.params_mut().into_iter().zip(g.blocks())).unwrap();
                    }
                })
            });
        }
    }
    // the 12 products of the SNF step, with faer's own parallel GEMM
    // The twelve products of the SNF step, with the step's own shapes, operand layouts
    // (transposed views where the step uses them) and accumulation modes: per layer
    // u = W x, e += R u (R = (R^T)^T, a transposed view), dx = W^T dz, t += R^T e,
    // gW += t x^T, gR^T += u s^T.
    let w = Mat::<f32>::from_fn(D, D, |i, j| ((i + 2 * j) % 7) as f32 / 7.0);
    let rt = Mat::<f32>::from_fn(D, D, |i, j| ((2 * i + j) % 5) as f32 / 5.0);
    let (mut u, mut e, mut dx, mut t) = (Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B), Mat::<f32>::zeros(D, B));
    let (mut gw, mut grt) = (Mat::<f32>::zeros(D, D), Mat::<f32>::zeros(D, D));
    let p = Par::rayon(0);
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

criterion_group!(benches, fc_step);
criterion_main!(benches);
