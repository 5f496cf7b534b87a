//! The gradient angle (Fig. 3): accuracy near 0 and 180 degrees, and its error cases.

use faer::Mat;
use proptest::prelude::*;
use snf::grad::angle_degrees;
use snf::Error;

fn v(xs: &[f64]) -> Mat<f64> {
    Mat::from_fn(xs.len(), 1, |i, _| xs[i])
}

#[test]
fn tiny_angles_are_resolved_where_arccos_fails() {
    // angle between (1, 0) and (1, t) is atan(t); for t = 1e-12, arccos of the cosine
    // returns exactly 0 in f64 (cos rounds to 1), while the atan2 form is accurate to a
    // few ulps.
    for t in [1e-6, 1e-9, 1e-12, 1e-15] {
        let (a, b) = (v(&[1.0, 0.0]), v(&[1.0, t]));
        let deg = angle_degrees(&[a.as_ref()], &[b.as_ref()]).unwrap();
        let want = t.atan().to_degrees();
        assert!(((deg - want) / want).abs() < 1e-12, "t={t}: {deg:e} vs {want:e}");
    }
    let cos: f64 = 1.0 / (1.0f64 + 1e-24).sqrt();
    assert_eq!(cos.acos(), 0.0, "arccos really does lose it");
}

#[test]
fn right_and_straight_angles() {
    let d = |a: &[f64], b: &[f64]| angle_degrees(&[v(a).as_ref()], &[v(b).as_ref()]).unwrap();
    assert!((d(&[1.0, 0.0], &[0.0, 3.0]) - 90.0).abs() < 1e-12);
    assert!((d(&[1.0, 2.0], &[-1.0, -2.0]) - 180.0).abs() < 1e-12);
    assert!(d(&[1.0, 2.0], &[2.0, 4.0]).abs() < 1e-12);
    // near 180 degrees: accurate to a few ulps of 180 (2.8e-14), whereas arccos of the
    // rounded cosine (exactly -1) returns 180 and misses by 5.7e-9 degrees.
    let deg = d(&[1.0, 0.0], &[-1.0, 1e-10]);
    assert!((180.0 - deg - 1e-10f64.to_degrees()).abs() < 1e-13);
}

#[test]
fn blocks_concatenate() {
    // [a1; a2] vs [b1; b2] as blocks equals the single concatenated vector.
    let (a1, a2, b1, b2) = (v(&[1.0, 2.0]), v(&[3.0]), v(&[0.5, 2.5]), v(&[2.0]));
    let split = angle_degrees(&[a1.as_ref(), a2.as_ref()], &[b1.as_ref(), b2.as_ref()]).unwrap();
    let whole = angle_degrees(&[v(&[1.0, 2.0, 3.0]).as_ref()], &[v(&[0.5, 2.5, 2.0]).as_ref()]).unwrap();
    assert!((split - whole).abs() < 1e-12);
}

#[test]
fn errors() {
    let (a, z) = (v(&[1.0, 2.0]), v(&[0.0, 0.0]));
    assert!(matches!(angle_degrees(&[a.as_ref()], &[z.as_ref()]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(angle_degrees(&[a.as_ref()], &[v(&[1.0]).as_ref()]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(angle_degrees(&[a.as_ref()], &[]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(angle_degrees(&[a.as_ref()], &[v(&[f64::NAN, 1.0]).as_ref()]), Err(Error::NonFinite { .. })));
}

proptest! {
    /// Where arccos is well conditioned (1..179 degrees) both formulas agree to 1e-9
    /// degrees (arccos error there is <= eps / sin(theta) rad ~ 1e-14 rad); the result is
    /// symmetric and invariant to positive scaling.
    #[test]
    fn agrees_with_arccos_where_it_is_accurate(
        xs in proptest::collection::vec(-10.0f64..10.0, 2..20),
        ys in proptest::collection::vec(-10.0f64..10.0, 2..20),
        s in 0.01f64..100.0,
    ) {
        let n = xs.len().min(ys.len());
        let (a, b) = (v(&xs[..n]), v(&ys[..n]));
        let na: f64 = xs[..n].iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = ys[..n].iter().map(|x| x * x).sum::<f64>().sqrt();
        prop_assume!(na > 1e-3 && nb > 1e-3);
        let cos = xs[..n].iter().zip(&ys[..n]).map(|(x, y)| x * y).sum::<f64>() / (na * nb);
        let reference = cos.clamp(-1.0, 1.0).acos().to_degrees();
        let deg = angle_degrees(&[a.as_ref()], &[b.as_ref()]).unwrap();
        if (1.0..179.0).contains(&reference) {
            prop_assert!((deg - reference).abs() < 1e-9);
        }
        let rev = angle_degrees(&[b.as_ref()], &[a.as_ref()]).unwrap();
        prop_assert!((deg - rev).abs() < 1e-12);
        let bs = Mat::from_fn(n, 1, |i, _| s * b[(i, 0)]);
        let scaled = angle_degrees(&[a.as_ref()], &[bs.as_ref()]).unwrap();
        prop_assert!((deg - scaled).abs() < 1e-9);
    }
}
