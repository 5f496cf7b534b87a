//! The rational-quadratic spline: identity at initialisation, monotone and continuous
//! across knots, its input derivative, log-slope gradient and every parameter gradient
//! against central differences, the analytic inverse, identity tails.

mod common;

use common::{gaussian, rng};
use faer::{Mat, Par};
use snf::activation::{SplineActivation, SplineConfig};

/// Random parameters for `d` entries: widths and heights N(0, s^2), slopes around 1.
fn random_spline(d: usize, s: f64, seed: u64) -> SplineActivation<f64> {
    let cfg = SplineConfig::default();
    let w = gaussian(cfg.bins, d, s, &mut rng(seed));
    let h = gaussian(cfg.bins, d, s, &mut rng(seed + 1));
    let e = gaussian(cfg.bins - 1, d, s, &mut rng(seed + 2));
    let dd = Mat::from_fn(cfg.bins - 1, d, |i, j| cfg.unit_derivative_param() + e[(i, j)]);
    SplineActivation::from_parts(cfg, w, h, dd).unwrap()
}

fn apply(f: &SplineActivation<f64>, x: &Mat<f64>) -> (Mat<f64>, Vec<f64>) {
    let mut z = Mat::zeros(x.nrows(), x.ncols());
    let mut ld = vec![0.0; x.ncols()];
    f.forward(x.as_ref(), z.as_mut(), &mut ld, Par::rayon(2)).unwrap();
    (z, ld)
}

#[test]
fn identity_at_initialisation_and_in_the_tails() {
    let f = SplineActivation::<f64>::new(3, SplineConfig::default()).unwrap();
    let x = Mat::from_fn(3, 4, |i, j| -12.0 + 7.0 * i as f64 + 1.3 * j as f64);
    let (z, ld) = apply(&f, &x);
    assert!(common::max_abs_diff(z.as_ref(), x.as_ref()) < 1e-12);
    assert!(ld.iter().all(|v| v.abs() < 1e-12));
    // tails stay the identity for any parameters
    let g = random_spline(3, 1.0, 1);
    let t = Mat::from_fn(3, 2, |i, j| if j == 0 { -10.5 - i as f64 } else { 10.0 + i as f64 });
    let (zt, ldt) = apply(&g, &t);
    assert_eq!(zt, t);
    assert_eq!(ldt, vec![0.0, 0.0]);
    assert!(SplineActivation::<f64>::new(0, SplineConfig::default()).is_err());
    assert!(SplineActivation::<f64>::new(2, SplineConfig { bins: 0, ..Default::default() }).is_err());
    assert!(SplineActivation::<f64>::new(2, SplineConfig { min_width: 0.5, ..Default::default() }).is_err());
}

/// Monotone, continuous (also at the knots and at +-B) on a fine grid.
#[test]
fn monotone_and_continuous() {
    let f = random_spline(1, 1.5, 7);
    let n = 4001;
    let x = Mat::from_fn(1, n, |_, j| -10.5 + 21.0 * j as f64 / (n - 1) as f64);
    let (z, _) = apply(&f, &x);
    for j in 1..n {
        let (a, b) = (z[(0, j - 1)], z[(0, j)]);
        assert!(b > a, "not increasing at {}", x[(0, j)]);
        // Lipschitz: slopes are bounded (the floors keep them finite), so a grid step of
        // 0.00525 moves z by well under 1
        assert!(b - a < 1.0, "jump at {}", x[(0, j)]);
    }
}

/// d z / d x, d log f' / d x and every parameter gradient against central differences,
/// through the batch API: the loss is -(1/B) sum_b [sum_i g_ib z_ib + log f'(x_ib)].
#[test]
fn gradients_match_finite_differences() {
    let d = 3;
    let f = random_spline(d, 0.8, 11);
    let x = Mat::from_fn(d, 5, |i, j| -9.0 + 3.9 * j as f64 + 0.7 * i as f64);
    let g = gaussian(d, 5, 1.0, &mut rng(12));
    let loss = |f: &SplineActivation<f64>, x: &Mat<f64>| -> f64 {
        let (z, ld) = apply(f, x);
        let mut s = 0.0;
        for j in 0..x.ncols() {
            s += ld[j];
            for i in 0..d {
                s += g[(i, j)] * z[(i, j)];
            }
        }
        -s / x.ncols() as f64
    };
    let mut dx = Mat::zeros(d, 5);
    let mut grads = f.zero_grads();
    f.backward(x.as_ref(), g.as_ref(), dx.as_mut(), &mut grads, Par::rayon(2)).unwrap();
    let h = 1e-6;
    // input: dx_ib = g f' + (log f')' relates to the loss by dL/dx = -(1/B) dx
    for j in 0..5 {
        for i in 0..d {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[(i, j)] += h;
            xm[(i, j)] -= h;
            let fd = (loss(&f, &xp) - loss(&f, &xm)) / (2.0 * h);
            assert!((fd + dx[(i, j)] / 5.0).abs() < 1e-6, "dx[{i},{j}]: fd {fd} vs {}", -dx[(i, j)] / 5.0);
        }
    }
    // parameters
    let cfg = *f.config();
    let (w0, h0, d0) = {
        let mut f2 = f.clone();
        let zg = f2.zero_grads();
        let mut it = f2.params_with_grads(&zg).unwrap();
        (it.next().unwrap().0.to_owned(), it.next().unwrap().0.to_owned(), it.next().unwrap().0.to_owned())
    };
    let rebuild = |w: &Mat<f64>, hh: &Mat<f64>, dd: &Mat<f64>| SplineActivation::from_parts(cfg, w.clone(), hh.clone(), dd.clone()).unwrap();
    for (which, base, an) in [(0, &w0, &grads.w), (1, &h0, &grads.h), (2, &d0, &grads.d)] {
        for c in 0..base.ncols() {
            for r in 0..base.nrows() {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[(r, c)] += h;
                m[(r, c)] -= h;
                let (fp, fm) = match which {
                    0 => (rebuild(&p, &h0, &d0), rebuild(&m, &h0, &d0)),
                    1 => (rebuild(&w0, &p, &d0), rebuild(&w0, &m, &d0)),
                    _ => (rebuild(&w0, &h0, &p), rebuild(&w0, &h0, &m)),
                };
                let fd = (loss(&fp, &x) - loss(&fm, &x)) / (2.0 * h);
                // smooth in the parameters away from knot crossings; h = 1e-6: error ~1e-9
                assert!((fd - an[(r, c)]).abs() < 1e-6, "block {which} [{r},{c}]: fd {fd} vs {}", an[(r, c)]);
            }
        }
    }
    assert!(common::max_abs(grads.w.as_ref()) > 1e-3 && common::max_abs(grads.d.as_ref()) > 1e-3, "non-trivial");
}

#[test]
fn inverse_round_trips() {
    let f = random_spline(4, 1.5, 21);
    let x = Mat::from_fn(4, 200, |i, j| -11.0 + 22.0 * j as f64 / 199.0 + 0.01 * i as f64);
    let (z, _) = apply(&f, &x);
    let mut back = Mat::zeros(4, 200);
    f.inverse(z.as_ref(), back.as_mut()).unwrap();
    // the quadratic root is cancellation-free; slopes >= 1e-3 bound the conditioning
    assert!(common::max_abs_diff(back.as_ref(), x.as_ref()) < 1e-9);
}

/// The parallel split over entries (rows) and columns gives exactly the sequential result.
#[test]
fn parallel_equals_sequential() {
    let f = random_spline(70, 1.0, 31);
    let x = gaussian(70, 9, 4.0, &mut rng(32));
    let g = gaussian(70, 9, 1.0, &mut rng(33));
    let run = |par: Par| {
        let mut z = Mat::zeros(70, 9);
        let mut ld = vec![0.0; 9];
        f.forward(x.as_ref(), z.as_mut(), &mut ld, par).unwrap();
        let mut dx = Mat::zeros(70, 9);
        let mut gr = f.zero_grads();
        f.backward(x.as_ref(), g.as_ref(), dx.as_mut(), &mut gr, par).unwrap();
        (z, ld, dx, gr)
    };
    let (a, b) = (run(Par::Seq), run(Par::rayon(3)));
    assert_eq!(a.0, b.0);
    assert_eq!(a.2, b.2);
    assert_eq!(a.3, b.3);
    for (u, v) in a.1.iter().zip(&b.1) {
        assert!((u - v).abs() < 1e-12);
    }
}

/// The batch gradient, whose per-bin partials are summed over the batch and mapped
/// through the softmax once per entry, equals the mean of single-example gradients (each
/// a batch of one), for a batch whose examples share bins. f64; the two differ only by
/// the order of summation, so 1e-12 relative to the largest gradient is ~1e4 ulp of slack.
#[test]
fn batch_gradient_is_the_mean_of_single_example_gradients() {
    let (d, b) = (4, 40);
    let f = random_spline(d, 0.7, 41);
    let x = gaussian(d, b, 4.0, &mut rng(42));
    let g = gaussian(d, b, 1.0, &mut rng(43));
    let mut dx = Mat::zeros(d, b);
    let mut batch = f.zero_grads();
    f.backward(x.as_ref(), g.as_ref(), dx.as_mut(), &mut batch, Par::Seq).unwrap();
    let mut mean = f.zero_grads();
    for j in 0..b {
        let mut one = f.zero_grads();
        let mut dxj = Mat::zeros(d, 1);
        f.backward(x.subcols(j, 1), g.subcols(j, 1), dxj.as_mut(), &mut one, Par::Seq).unwrap();
        for i in 0..d {
            assert_eq!(dxj[(i, 0)], dx[(i, j)], "the input delta is per element");
        }
        for (m, o) in [(&mut mean.w, &one.w), (&mut mean.h, &one.h), (&mut mean.d, &one.d)] {
            *m += o * (1.0 / b as f64);
        }
    }
    for (a, m) in [(&batch.w, &mean.w), (&batch.h, &mean.h), (&batch.d, &mean.d)] {
        let scale = common::max_abs(m.as_ref());
        assert!(scale > 1e-3, "non-trivial gradients");
        assert!(common::max_abs_diff(a.as_ref(), m.as_ref()) <= 1e-12 * scale, "{a:?} vs {m:?}");
    }
}

/// The f32 path (geometry rounded to f32, per-element arithmetic in f32 with the
/// polynomial logarithm) against the f64 path on the same (f32-representable) parameters
/// and inputs. Tolerances, each ~4-10x what this test measured (in parentheses), and far
/// below what a wrong formula gives (O(1)): values are rational functions of O(1)
/// inputs with denominators bounded below by the slope floors, 1e-5 relative to the
/// largest entry (6e-7); a column's log-det sums 300 f32 terms of O(1) (in f64), each
/// off by a few ulp: 2e-7 per term (5e-8); input deltas and parameter gradients hold
/// differences of 1/M and 1/D terms, which cancel, 1e-4 relative to the largest
/// (1.6e-5 and 1.9e-5).
#[test]
fn f32_path_matches_f64_to_f32_rounding() {
    let (d, b) = (300, 200);
    let f64s = random_spline(d, 0.8, 51);
    let [w, h, s] = f64s.parameters();
    let to32 = |m: faer::MatRef<'_, f64>| Mat::<f32>::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32);
    let back = |m: faer::MatRef<'_, f32>| Mat::<f64>::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f64);
    let f32s = SplineActivation::from_parts(*f64s.config(), to32(w), to32(h), to32(s)).unwrap();
    // the f64 reference runs on the f32-rounded parameters and inputs
    let f64s = SplineActivation::from_parts(*f64s.config(), back(to32(w).as_ref()), back(to32(h).as_ref()), back(to32(s).as_ref())).unwrap();
    let x = back(to32(gaussian(d, b, 5.0, &mut rng(52)).as_ref()).as_ref());
    let g = back(to32(gaussian(d, b, 1.0, &mut rng(53)).as_ref()).as_ref());
    let (x32, g32) = (to32(x.as_ref()), to32(g.as_ref()));
    let (z, ld) = apply(&f64s, &x);
    let mut z32 = Mat::<f32>::zeros(d, b);
    let mut ld32 = vec![0.0; b];
    f32s.forward(x32.as_ref(), z32.as_mut(), &mut ld32, Par::rayon(2)).unwrap();
    let rel = |a: faer::MatRef<'_, f64>, e: faer::MatRef<'_, f64>| common::max_abs_diff(a, e) / common::max_abs(e);
    let ld_err = ld32.iter().zip(&ld).map(|(a, e)| (a - e).abs()).fold(0.0, f64::max);
    assert!(rel(back(z32.as_ref()).as_ref(), z.as_ref()) < 1e-5);
    assert!(ld_err <= d as f64 * 2e-7, "log-det error {ld_err:e}");
    let mut dx = Mat::zeros(d, b);
    let mut gr = f64s.zero_grads();
    f64s.backward(x.as_ref(), g.as_ref(), dx.as_mut(), &mut gr, Par::rayon(2)).unwrap();
    let mut dx32 = Mat::<f32>::zeros(d, b);
    let mut gr32 = f32s.zero_grads();
    f32s.backward(x32.as_ref(), g32.as_ref(), dx32.as_mut(), &mut gr32, Par::rayon(2)).unwrap();
    let r = rel(back(dx32.as_ref()).as_ref(), dx.as_ref());
    assert!(r < 1e-4, "input deltas: relative error {r:e}");
    for (a, e) in [(&gr32.w, &gr.w), (&gr32.h, &gr.h), (&gr32.d, &gr.d)] {
        let r = rel(back(a.as_ref()).as_ref(), e.as_ref());
        assert!(r < 1e-4, "parameter gradients: relative error {r:e}");
    }
}
