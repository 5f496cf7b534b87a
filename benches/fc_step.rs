//! Fig. 4 of the paper: time of one training step of a single linear flow layer
//! (no activation, batch 128, standard normal base), self-normalizing vs exact, for
//! D = 32 + 96k up to 2048; plus six plain faer GEMMs of shape (D x D)(D x B) timed in
//! the same run, the roofline the SNF step is held to.
//!
//! Run: `cargo bench --bench fc_step` (set `SNF_BENCH_DIMS=512,2048` to pick sizes),
//! then `python3 scripts/bench_table.py` to print the table in docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use faer::linalg::matmul::matmul;
use faer::{unzip, zip, Accum, Mat, Par};
use snf::layers::linear::{ExactLinear, ExactLinearWorkspace, LinearWorkspace, SelfNormLinear};
use snf::optim::{Adam, AdamConfig};
use snf::Real;
use std::time::Duration;

const BATCH: usize = 128;

fn dims(default: Vec<usize>) -> Vec<usize> {
    match std::env::var("SNF_BENCH_DIMS") {
        Ok(s) => s.split(',').filter_map(|t| t.trim().parse().ok()).collect(),
        Err(_) => default,
    }
}

fn bench_dtype<T: Real>(c: &mut Criterion, name: &str, ds: &[usize]) {
    let par = Par::rayon(0);
    let mut group = c.benchmark_group(name);
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for &d in ds {
        let mut rng = snf::init::rng(0);
        let x = Mat::<T>::from_fn(d, BATCH, |i, j| T::from_f64((((i * 131 + j * 71) % 97) as f64 / 97.0 - 0.5) * 2.0));
        // 6 products of 2 D^2 B flops each
        group.throughput(Throughput::Elements((12 * d * d * BATCH) as u64));

        let mut layer = SelfNormLinear::<T>::new(d, true, &mut rng).unwrap();
        let mut ws = LinearWorkspace::new(d, BATCH, par).unwrap();
        let (mut z, mut dz, mut dx) = (Mat::zeros(d, BATCH), Mat::zeros(d, BATCH), Mat::zeros(d, BATCH));
        let mut g = layer.zero_grads();
        let cfg = AdamConfig { lr: 1e-4, ..Default::default() };
        let mut adam = Adam::new(cfg, g.blocks().map(|m| (m.nrows(), m.ncols()))).unwrap();
        group.bench_with_input(BenchmarkId::new("snf", d), &d, |bch, _| {
            bch.iter(|| {
                layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
                zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
                layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, T::from_f64(1.0)).unwrap();
                adam.step(layer.params_with_grads(&g).unwrap()).unwrap();
            })
        });

        let mut base = ExactLinear::<T>::new(d, true, &mut rng).unwrap();
        let mut ews = ExactLinearWorkspace::new(d, BATCH, par).unwrap();
        let mut eg = base.zero_grads();
        let mut eadam = Adam::new(cfg, [(d, d), (d, 1)]).unwrap();
        group.bench_with_input(BenchmarkId::new("exact", d), &d, |bch, _| {
            bch.iter(|| {
                base.forward(x.as_ref(), z.as_mut(), &ews).unwrap();
                zip!(dz.as_mut(), z.as_ref()).for_each(|unzip!(dz, z)| *dz = -*z);
                base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut eg, &mut ews).unwrap();
                eadam.step(base.params_with_grads(&eg).unwrap()).unwrap();
            })
        });

        let a = layer.w().to_owned();
        let mut outs: Vec<Mat<T>> = (0..6).map(|_| Mat::zeros(d, BATCH)).collect();
        group.bench_with_input(BenchmarkId::new("gemm6", d), &d, |bch, _| {
            bch.iter(|| {
                for o in outs.iter_mut() {
                    matmul(o.as_mut(), Accum::Replace, a.as_ref(), x.as_ref(), T::from_f64(1.0), par);
                }
            })
        });
    }
    group.finish();
}

fn fig4(c: &mut Criterion) {
    let sweep: Vec<usize> = (0..).map(|k| 32 + 96 * k).take_while(|&d| d <= 2048).collect();
    bench_dtype::<f32>(c, "fc_step_f32", &dims(sweep));
    bench_dtype::<f64>(c, "fc_step_f64", &dims(vec![512, 2048]));
}

criterion_group!(benches, fig4);
criterion_main!(benches);
