//! One training step of a single convolutional flow layer at the MNIST shapes of the
//! paper's Conv 9-layer model (1x28x28, 4x14x14, 16x7x7; 3x3 kernels, batch 100, f32):
//! self-normalizing (`SelfNormConv2d`: six convolutions) vs exact (`ExactConv2d`: builds,
//! factors and inverts the D x D convolution matrix), both with an Adam update.
//!
//! Also the conv primitive alone (forward + input gradient + kernel gradient) next to
//! the three per-example GEMMs it reduces to after im2col, both on one thread, so their
//! ratio is the cost of im2col / col2im; and the primitive on both cores.
//!
//! Run: `cargo bench --bench conv_step`, then `python3 scripts/bench_table.py`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use faer::linalg::matmul::matmul;
use faer::{unzip, zip, Accum, Mat, Par};
use snf::conv::{Conv2d, Conv2dGeometry, Conv2dSpec};
use snf::layers::conv::{ConvWorkspace, ExactConv2d, ExactConv2dWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
use snf::optim::{Adam, AdamConfig};
use std::time::Duration;

const BATCH: usize = 100;
const SHAPES: [(usize, usize); 3] = [(1, 28), (4, 14), (16, 7)];

fn input(d: usize) -> Mat<f32> {
    Mat::from_fn(d, BATCH, |i, j| (((i * 131 + j * 71) % 97) as f32 / 97.0 - 0.5) * 2.0)
}

fn conv_step(c: &mut Criterion) {
    let par = Par::rayon(0);
    let mut group = c.benchmark_group("conv_step_f32");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for (ch, hw) in SHAPES {
        let id = format!("{ch}x{hw}x{hw}");
        let cfg = SelfNormConv2dConfig::new(ch, [hw, hw], 3);
        let mut rng = snf::init::rng(0);
        let mut layer = SelfNormConv2d::<f32>::new(cfg, &mut rng).unwrap();
        let d = layer.dim();
        let x = input(d);
        let (mut z, mut dz, mut dx) = (Mat::zeros(d, BATCH), Mat::zeros(d, BATCH), Mat::zeros(d, BATCH));
        let mut ws = ConvWorkspace::new(&layer, BATCH, par).unwrap();
        let mut g = layer.zero_grads();
        let acfg = AdamConfig { lr: 1e-3, ..Default::default() };
        let mut adam = Adam::new(acfg, g.blocks().map(|m| (m.nrows(), m.ncols()))).unwrap();
        group.bench_with_input(BenchmarkId::new("snf", &id), &id, |b, _| {
            b.iter(|| {
                layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
                zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
                layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0).unwrap();
                adam.step(layer.params_with_grads(&g).unwrap()).unwrap();
            })
        });

        let mut base = ExactConv2d::<f32>::new(cfg, &mut rng).unwrap();
        let mut ews = ExactConv2dWorkspace::new(&base, par).unwrap();
        let mut eg = base.zero_grads();
        let shapes: Vec<_> = [Some(&eg.w), eg.b.as_ref()].into_iter().flatten().map(|m| (m.nrows(), m.ncols())).collect();
        let mut eadam = Adam::new(acfg, shapes).unwrap();
        group.bench_with_input(BenchmarkId::new("exact", &id), &id, |b, _| {
            b.iter(|| {
                base.forward(x.as_ref(), z.as_mut(), &mut ews).unwrap();
                zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
                base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut eg, &mut ews).unwrap();
                eadam.step(base.params_with_grads(&eg).unwrap()).unwrap();
            })
        });
    }
    group.finish();
}

fn conv_primitive(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv_prim_f32");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for (ch, hw) in SHAPES {
        let id = format!("{ch}x{hw}x{hw}");
        let geom = Conv2dGeometry::new(Conv2dSpec::same(ch, [hw, hw], [3, 3])).unwrap();
        let (kr, kc) = geom.kernel_shape();
        let k = Mat::<f32>::from_fn(kr, kc, |i, j| ((i * 7 + j) % 5) as f32 / 10.0);
        let d = geom.in_len();
        let x = input(d);
        let dz = input(d);
        let (mut z, mut dx, mut dk) = (Mat::zeros(d, BATCH), Mat::zeros(d, BATCH), Mat::zeros(kr, kc));
        for (name, par) in [("conv3_seq", Par::Seq), ("conv3_par", Par::rayon(0))] {
            let mut conv = Conv2d::<f32>::new(geom, par);
            group.bench_with_input(BenchmarkId::new(name, &id), &id, |b, _| {
                b.iter(|| {
                    conv.forward(k.as_ref(), x.as_ref(), z.as_mut()).unwrap();
                    conv.input_grad(k.as_ref(), dz.as_ref(), dx.as_mut(), 1.0, Accum::Replace).unwrap();
                    conv.weight_grad(x.as_ref(), dz.as_ref(), dk.as_mut(), 1.0, Accum::Replace).unwrap();
                })
            });
        }
        // The GEMMs the primitive performs after im2col, per example: (P x 9C)(9C x C),
        // (P x C)(C x 9C), (9C x P)(P x C), on preallocated operands (no im2col, no col2im).
        let p = geom.out_positions();
        let cols = Mat::<f32>::from_fn(p, kr, |i, j| ((i + j) % 3) as f32);
        let mut zt = Mat::<f32>::zeros(p, kc);
        let dzt = Mat::<f32>::from_fn(p, kc, |i, j| ((i * 3 + j) % 7) as f32);
        let mut dcols = Mat::<f32>::zeros(p, kr);
        group.bench_with_input(BenchmarkId::new("gemm3_seq", &id), &id, |b, _| {
            b.iter(|| {
                for _ in 0..BATCH {
                    matmul(zt.as_mut(), Accum::Replace, cols.as_ref(), k.as_ref(), 1.0, Par::Seq);
                    matmul(dcols.as_mut(), Accum::Replace, dzt.as_ref(), k.transpose(), 1.0, Par::Seq);
                    matmul(dk.as_mut(), Accum::Add, cols.transpose(), dzt.as_ref(), 1.0, Par::Seq);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, conv_step, conv_primitive);
criterion_main!(benches);
