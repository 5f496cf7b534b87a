//! Property tests for the self-normalizing linear layer (proofs/fc.md, §4 and §5).

mod common;

use common::*;
use faer::{Mat, Par};
use proptest::prelude::*;
use snf::layers::linear::{LinearWorkspace, SelfNormLinear};

/// Exact and SNF gradients of one layer, plus W^{-T} from nalgebra (independent).
fn both(d: usize, b: usize, seed: u64, noise: f64, lambda: f64, bias: bool) -> (Mat<f64>, Mat<f64>, Mat<f64>, Mat<f64>) {
    let mut g = rng(seed);
    let w = well_conditioned(d, 0.3, &mut g);
    let winv_na = to_na(w.as_ref()).try_inverse().unwrap();
    let winv = from_na(&winv_na);
    let e = gaussian(d, d, noise / (d as f64).sqrt(), &mut g);
    let r = Mat::from_fn(d, d, |i, j| winv[(i, j)] + e[(i, j)]);
    let bv = bias.then(|| gaussian(d, 1, 0.5, &mut g));
    let x = gaussian(d, b, 1.0, &mut g);
    let layer = SelfNormLinear::from_parts(w, r.clone(), bv).unwrap();
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap().with_exact().unwrap();
    let (mut z, mut y, mut dxf, mut dxg) = (Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b));
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
    let dzf = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let dzg = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
    let mut ge = layer.zero_grads();
    layer.backward_exact(x.as_ref(), dzf.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut ge, &mut ws, lambda).unwrap();
    let mut gs = layer.zero_grads();
    layer.backward(x.as_ref(), dzf.as_ref(), dxf.as_mut(), &mut gs, &mut ws, lambda).unwrap();
    (ge.w().to_owned(), gs.w().to_owned(), r, winv)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// dW_snf - dW_exact = -1/2 (R^T - W^{-T}) for every W, R, batch and lambda: the
    /// likelihood gradients differ by exactly R^T - W^{-T} (the loss carries the factor
    /// -1/2 of Eq. 3), and the reconstruction terms are shared. Both sides are built from
    /// the same rounded products, so the residual is rounding only: a few ulps of the
    /// largest entry; 1e-12 relative to it is ~4500 ulps of slack, while a wrong sign
    /// or factor is O(noise).
    #[test]
    fn snf_minus_exact_is_r_minus_inverse(
        d in 1usize..10, b in 1usize..12, seed in any::<u64>(),
        noise in 0.0f64..0.5, lambda in 0.0f64..3.0, bias in any::<bool>(),
    ) {
        let (ge, gs, r, winv) = both(d, b, seed, noise, lambda, bias);
        let predicted = Mat::from_fn(d, d, |i, j| -0.5 * (r[(j, i)] - winv[(j, i)]));
        let diff = Mat::from_fn(d, d, |i, j| gs[(i, j)] - ge[(i, j)]);
        let scale = max_abs(ge.as_ref()).max(max_abs(gs.as_ref())).max(1.0);
        prop_assert!(max_abs_diff(diff.as_ref(), predicted.as_ref()) <= 1e-12 * scale);
    }

    /// The angle bound of proofs/fc.md §5: with a = dW_exact and the SNF gradient a + e,
    /// angle(a, a + e) <= asin(|e| / |a|) whenever |e| < |a|, where
    /// |e| = 1/2 |R^T - W^{-T}|_F. Slack: 1e-9 relative plus 1e-10 degrees for rounding
    /// in the two norms and the angle itself.
    #[test]
    fn angle_obeys_the_perturbation_bound(
        d in 1usize..10, b in 1usize..12, seed in any::<u64>(),
        noise in 0.0f64..0.5, lambda in 0.0f64..3.0, bias in any::<bool>(),
    ) {
        let (ge, gs, r, winv) = both(d, b, seed, noise, lambda, bias);
        let e = Mat::from_fn(d, d, |i, j| 0.5 * (r[(j, i)] - winv[(j, i)]));
        let ratio = frob(e.as_ref()) / frob(ge.as_ref());
        let deg = snf::grad::angle_degrees(&[ge.as_ref()], &[gs.as_ref()]).unwrap();
        if ratio < 1.0 {
            let bound = ratio.asin().to_degrees();
            prop_assert!(deg <= bound * (1.0 + 1e-9) + 1e-10, "angle {} > bound {}", deg, bound);
        } else {
            prop_assert!(deg <= 180.0);
        }
    }
}

/// The bound is tight: a perturbation orthogonal to a, of norm |e| = |a| sin(theta),
/// rotated back onto the sphere's tangent point, attains asin(|e|/|a|). Here we check a
/// constructed case where the angle equals the bound, so the bound cannot be loosened.
#[test]
fn angle_bound_is_attained() {
    let a = Mat::from_fn(2, 1, |i, _| if i == 0 { 1.0 } else { 0.0 });
    let s: f64 = 0.3; // |e|
                      // tangent point: a + e with e = (-s^2, s sqrt(1 - s^2)), |e| = s
    let e = Mat::from_fn(2, 1, |i, _| if i == 0 { -s * s } else { s * (1.0 - s * s).sqrt() });
    assert!((frob(e.as_ref()) - s).abs() < 1e-15);
    let b = Mat::from_fn(2, 1, |i, j| a[(i, j)] + e[(i, j)]);
    let deg = snf::grad::angle_degrees(&[a.as_ref()], &[b.as_ref()]).unwrap();
    assert!((deg - s.asin().to_degrees()).abs() < 1e-12);
}
