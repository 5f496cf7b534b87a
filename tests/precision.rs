//! The f32 path agrees with the f64 path.
//!
//! Tolerance: the inputs are rounded to f32 (relative perturbation u = 6e-8) and every
//! gradient entry is a sum of products with inner dimension K <= max(D, B) = 64,
//! whose worst-case forward error is gamma_K = K u ~ 3.8e-6 relative to |A||B|; for the
//! random, non-cancelling data here |A||B| / |AB| is O(sqrt K) = 8, giving ~3e-5. The
//! exact path adds an f32 LU of a matrix with cond <= 9: ~ n cond u ~ 3.5e-5. We assert
//! 1e-4 (SNF) and 2e-4 (exact) on the relative Frobenius error; an f32-specific bug
//! (a wrong cast, an f32 accumulator overflow, a lost term) shows as O(1).

mod common;

use common::*;
use faer::{Mat, Par};
use snf::layers::linear::{LinearGrads, LinearWorkspace, SelfNormLinear};
use snf::Real;

fn cast<T: Real>(a: &Mat<f64>) -> Mat<T> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| T::from_f64(a[(i, j)]))
}

fn grads<T: Real>(w: &Mat<f64>, r: &Mat<f64>, b: &Mat<f64>, x: &Mat<f64>, exact: bool) -> Vec<Mat<f64>> {
    let (d, n) = (x.nrows(), x.ncols());
    let layer = SelfNormLinear::<T>::from_parts(cast(w), cast(r), Some(cast(b))).unwrap();
    let x = cast::<T>(x);
    let mut ws = LinearWorkspace::new(d, n, Par::Seq).unwrap().with_exact().unwrap();
    let (mut z, mut y, mut dxf, mut dxg) = (Mat::zeros(d, n), Mat::zeros(d, n), Mat::zeros(d, n), Mat::zeros(d, n));
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, n, |i, j| -z[(i, j)]);
    let mut g: LinearGrads<T> = layer.zero_grads();
    if exact {
        layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
        let dzg = Mat::from_fn(d, n, |i, j| -y[(i, j)]);
        layer.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut g, &mut ws, T::from_f64(1.0)).unwrap();
    } else {
        layer.backward(x.as_ref(), dz.as_ref(), dxf.as_mut(), &mut g, &mut ws, T::from_f64(1.0)).unwrap();
    }
    g.blocks().chain([dxf.as_ref()]).map(|m| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].as_f64())).collect()
}

#[test]
fn f32_agrees_with_f64() {
    for (seed, exact, tol) in [(1u64, false, 1e-4), (2, false, 1e-4), (3, true, 2e-4), (4, true, 2e-4)] {
        let mut g = rng(seed);
        let (d, n) = (48, 64);
        let w = well_conditioned(d, 0.3, &mut g);
        let winv = snf::exact::solve(w.as_ref(), Mat::<f64>::identity(d, d).as_ref()).unwrap();
        let e = gaussian(d, d, 0.05 / (d as f64).sqrt(), &mut g);
        let r = Mat::from_fn(d, d, |i, j| winv[(i, j)] + e[(i, j)]);
        let b = gaussian(d, 1, 0.3, &mut g);
        let x = gaussian(d, n, 1.0, &mut g);
        let g64 = grads::<f64>(&w, &r, &b, &x, exact);
        let g32 = grads::<f32>(&w, &r, &b, &x, exact);
        for (k, (a, c)) in g64.iter().zip(&g32).enumerate() {
            let diff = Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] - c[(i, j)]);
            let rel = frob(diff.as_ref()) / frob(a.as_ref());
            eprintln!("seed {seed} exact={exact} block {k}: relative error {rel:e}");
            assert!(rel < tol, "block {k}: relative f32/f64 error {rel:e} >= {tol:e}");
        }
    }
}

/// The conv layer's SNF gradients in f32 vs f64 (4 channels of 9x9, batch 40, 3x3 forward,
/// 5x5 inverse, two chunks). Each kernel-gradient entry sums K = B * P <= 3240 products;
/// rounding errors of independent sign accumulate like sqrt(K) u ~ 3.4e-6 relative to
/// sum |terms| (the worst case K u ~ 2e-4 needs every rounding to align), and these sums
/// are dominated by the (non-cancelling) log-det surrogate and squared-norm terms. We
/// assert 2e-5 on the relative Frobenius error (measured: 0.5e-7 to 2e-7); an f32-specific
/// bug (a wrong cast, a lost term) is O(1).
#[test]
fn conv_f32_agrees_with_f64() {
    use snf::layers::conv::{ConvWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
    fn run<T: Real>(layer64: &SelfNormConv2d<f64>, x: &Mat<f64>) -> Vec<Mat<f64>> {
        let cfg = *layer64.config();
        let layer =
            SelfNormConv2d::<T>::from_parts(cfg, cast(&layer64.w().to_owned()), cast(&layer64.r().to_owned()), layer64.bias().map(|b| cast(&b.to_owned())))
                .unwrap();
        let (d, n) = (x.nrows(), x.ncols());
        let x = cast::<T>(x);
        let mut ws = ConvWorkspace::new(&layer, n, Par::rayon(2)).unwrap();
        let (mut z, mut dx) = (Mat::zeros(d, n), Mat::zeros(d, n));
        layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
        let dz = Mat::from_fn(d, n, |i, j| -z[(i, j)]);
        let mut g = layer.zero_grads();
        layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, T::from_f64(1.0)).unwrap();
        g.blocks().chain([dx.as_ref()]).map(|m| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].as_f64())).collect()
    }
    let cfg = SelfNormConv2dConfig::new(4, [9, 9], 3).with_inverse_kernel([5, 5]);
    let base = SelfNormConv2d::<f64>::new(cfg, &mut rng(7)).unwrap();
    let mut g = rng(8);
    let w = Mat::from_fn(base.w().nrows(), base.w().ncols(), |i, j| base.w()[(i, j)] + 0.1 * gaussian(1, 1, 1.0, &mut g)[(0, 0)]);
    let r = base.r().to_owned();
    let layer = SelfNormConv2d::from_parts(cfg, w, r, Some(gaussian(4, 1, 0.3, &mut g))).unwrap();
    let x = gaussian(layer.dim(), 40, 1.0, &mut g);
    let (g64, g32) = (run::<f64>(&layer, &x), run::<f32>(&layer, &x));
    for (k, (a, c)) in g64.iter().zip(&g32).enumerate() {
        let diff = Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] - c[(i, j)]);
        let rel = frob(diff.as_ref()) / frob(a.as_ref());
        eprintln!("conv block {k}: relative error {rel:e}");
        assert!(rel < 2e-5, "conv block {k}: relative f32/f64 error {rel:e}");
    }
}
