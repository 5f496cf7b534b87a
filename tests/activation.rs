//! Activations: values against closed forms, derivatives and log-det gradients against
//! central differences, inverses to 1e-12 over the whole f64 range, batch functions.

use faer::{Mat, Par};
use proptest::prelude::*;
use snf::activation::{self, LeakyRelu, ScalarBijection, SmoothLeakyRelu};

fn slr() -> SmoothLeakyRelu {
    SmoothLeakyRelu::new(0.3).unwrap()
}

#[test]
fn smooth_leaky_relu_matches_its_definition() {
    let f = slr();
    // f(0) = (1 - a) ln 2, f'(0) = a + (1 - a)/2
    assert!((f.value(0.0f64) - 0.7 * 2f64.ln()).abs() < 1e-15);
    assert!((f.derivative(0.0f64) - 0.65).abs() < 1e-15);
    // asymptotes: slope a at -inf, 1 at +inf (no overflow at the extremes)
    assert!((f.value(-800.0f64) - 0.3 * -800.0).abs() < 1e-12);
    assert!((f.value(800.0f64) - 800.0).abs() < 1e-12);
    assert!(f.value(1e300f64).is_finite() && f.value(-1e300f64).is_finite());
    assert!(SmoothLeakyRelu::new(0.0).is_err() && SmoothLeakyRelu::new(1.0).is_err() && SmoothLeakyRelu::new(f64::NAN).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// f' and d/dx log f' against central differences (h = 1e-5: truncation ~h^2 f''' ~ 1e-11,
    /// rounding ~eps |f| / h ~ 1e-10 for |x| <= 30; tolerance 1e-8).
    #[test]
    fn derivatives_match_finite_differences(x in -30.0f64..30.0) {
        let f = slr();
        let h = 1e-5;
        let d = (f.value(x + h) - f.value(x - h)) / (2.0 * h);
        prop_assert!((d - f.derivative(x)).abs() < 1e-8);
        let dl = (f.log_derivative(x + h) - f.log_derivative(x - h)) / (2.0 * h);
        prop_assert!((dl - f.log_derivative_grad(x)).abs() < 1e-8);
        let g = LeakyRelu::new(0.2).unwrap();
        if x.abs() > 2.0 * h {
            let d = (g.value(x + h) - g.value(x - h)) / (2.0 * h);
            prop_assert!((d - g.derivative(x)).abs() < 1e-8);
        }
    }

    /// The inverse converges to 1e-12 (relative, floor 1) for any finite input whose
    /// preimage is representable, from tiny to huge magnitudes: both f(f^-1(y)) = y and
    /// f^-1(f(x)) = x.
    #[test]
    fn inverse_is_accurate_everywhere(m in -1.0f64..1.0, e in -300i32..300) {
        let f = slr();
        let y = m * 10f64.powi(e);
        let x = f.inverse(y);
        prop_assert!(x.is_finite());
        prop_assert!((f.value(x) - y).abs() <= 1e-12 * y.abs().max(1.0), "y {y:e}: f(x) - y = {:e}", f.value(x) - y);
        let back = f.inverse(f.value(y));
        prop_assert!((back - y).abs() <= 1e-12 * y.abs().max(1.0), "x {y:e}: back {back:e}");
        let g = LeakyRelu::new(0.2).unwrap();
        // (s y) / s rounds twice: within 2 ulp
        prop_assert!((g.inverse(g.value(y)) - y).abs() <= 2.0 * f64::EPSILON * y.abs());
    }
}

/// The fused evaluations equal the separate ones (f64 to rounding; f32 to f32 rounding).
#[test]
fn fused_evaluations_agree() {
    let f = slr();
    for i in -200..=200 {
        let x = i as f64 * 0.173;
        let (v, l) = f.value_and_log_derivative(x);
        assert!((v - f.value(x)).abs() <= 1e-14 * v.abs().max(1.0));
        assert!((l - f.log_derivative(x)).abs() <= 1e-14);
        let (d, g) = f.derivative_and_log_derivative_grad(x);
        assert!((d - f.derivative(x)).abs() <= 1e-15 && (g - f.log_derivative_grad(x)).abs() <= 1e-15);
        let (v32, l32) = f.value_and_log_derivative(x as f32);
        assert!((v32 as f64 - v).abs() <= 1e-6 * v.abs().max(1.0) && (l32 as f64 - l).abs() <= 1e-6);
    }
}

#[test]
fn inverse_handles_the_edges() {
    let f = slr();
    assert!(f.inverse(f64::NAN).is_nan());
    assert_eq!(f.inverse(f64::INFINITY), f64::INFINITY);
    // a preimage below -f64::MAX: not representable, reported as -inf by the scalar inverse
    // and as a typed error by the batch inverse
    assert_eq!(f.inverse(-f64::MAX), f64::NEG_INFINITY);
    let z = Mat::from_fn(1, 1, |_, _| -f64::MAX);
    let mut x = Mat::zeros(1, 1);
    assert!(matches!(activation::inverse(&f, z.as_ref(), x.as_mut()), Err(snf::Error::NonFinite { .. })));
    // exactly at the kink-free origin region
    for y in [0.0, 1e-300, -1e-300, f.value(0.0f64)] {
        assert!((f.value(f.inverse(y)) - y).abs() <= 1e-15);
    }
}

/// The batch functions: log-det per column, backward = f' dz + (log f')', inverse.
#[test]
fn batch_functions_agree_with_the_scalar_ones() {
    let f = slr();
    let x = Mat::from_fn(5, 3, |i, j| (i as f64 - 2.0) * 1.7 + j as f64 * 0.3);
    let mut z = Mat::zeros(5, 3);
    let mut ld = vec![1.0; 3];
    activation::forward(&f, x.as_ref(), z.as_mut(), &mut ld, Par::Seq).unwrap();
    for j in 0..3 {
        let want: f64 = 1.0 + (0..5).map(|i| f.log_derivative(x[(i, j)])).sum::<f64>();
        assert!((ld[j] - want).abs() < 1e-14);
    }
    let dz = Mat::from_fn(5, 3, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(5, 3);
    activation::backward(&f, x.as_ref(), dz.as_ref(), dx.as_mut(), Par::Seq).unwrap();
    // d/dx [log N(f(x)) + log f'(x)] by central differences, per entry
    let h = 1e-6;
    for j in 0..3 {
        for i in 0..5 {
            let obj = |v: f64| -0.5 * f.value(v).powi(2) + f.log_derivative(v);
            let fd = (obj(x[(i, j)] + h) - obj(x[(i, j)] - h)) / (2.0 * h);
            assert!((fd - dx[(i, j)]).abs() < 1e-7, "({i},{j}): fd {fd} vs {}", dx[(i, j)]);
        }
    }
    let mut back = Mat::zeros(5, 3);
    activation::inverse(&f, z.as_ref(), back.as_mut()).unwrap();
    for j in 0..3 {
        for i in 0..5 {
            assert!((back[(i, j)] - x[(i, j)]).abs() < 1e-12);
        }
    }
    assert!(activation::forward(&f, x.as_ref(), z.as_mut(), &mut [0.0; 2], Par::Seq).is_err());
    assert!(activation::backward(&f, x.as_ref(), dz.subrows(0, 4), dx.as_mut(), Par::Seq).is_err());
    // leaky ReLU log-det counts negative inputs: ln(0.2) per negative entry
    let g = LeakyRelu::new(0.2).unwrap();
    let mut ld = vec![0.0; 3];
    activation::forward(&g, x.as_ref(), z.as_mut(), &mut ld, Par::Seq).unwrap();
    let negatives = (0..5).filter(|&i| x[(i, 0)] < 0.0).count();
    assert!((ld[0] - negatives as f64 * 0.2f64.ln()).abs() < 1e-14);
    assert!(LeakyRelu::new(0.0).is_err() && LeakyRelu::new(-1.0).is_err());
}
