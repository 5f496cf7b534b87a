//! The LU path against nalgebra as an independent oracle, and its typed errors.

mod common;

use common::*;
use faer::{Mat, Par};
use proptest::prelude::*;
use snf::exact::{self, Lu};
use snf::Error;

/// |log|det| (faer LU) - log|det| (nalgebra LU)|. Both are backward stable: each computes
/// det(A + dA) with |dA| <~ n eps |L||U|, so the log-dets differ by about n eps cond(A).
/// Random Gaussian matrices of size n have cond ~ n, so n^2 eps ~ 4e-12 at n = 130;
/// 1e-9 * n is a safe bound that still catches a wrong pivot or a dropped diagonal term
/// (which moves the log-det by O(1)).
fn check_logdet(a: &Mat<f64>) {
    let n = a.nrows();
    let det = to_na(a.as_ref()).determinant();
    let mut lu = Lu::new(n, 1, Par::Seq).unwrap();
    match lu.factor(a.as_ref()) {
        Ok(()) => {
            let ld = lu.log_abs_det().unwrap();
            assert!((ld - det.abs().ln()).abs() <= 1e-9 * (n as f64).max(1.0), "n={n}: {ld} vs {}", det.abs().ln());
            assert_eq!(lu.sign().unwrap(), det.signum(), "sign, n={n}");
        }
        Err(Error::Singular { .. }) => {
            // only acceptable if the matrix is singular to working precision
            assert!(det.abs() < 1e-8, "falsely singular, det = {det:e}");
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn log_det_matches_nalgebra_at_block_edges() {
    let mut g = rng(1);
    for n in [1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129] {
        check_logdet(&gaussian(n, n, 1.0, &mut g));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn log_det_matches_nalgebra(n in 1usize..40, seed in any::<u64>(), s in 1e-3f64..1e3) {
        let mut g = rng(seed);
        check_logdet(&gaussian(n, n, s, &mut g));
    }

    /// A^{-T} and solves against nalgebra's inverse on well-conditioned matrices
    /// (cond <= 9, so forward error <= ~ n cond eps ~ 1e-13).
    #[test]
    fn inverse_and_solve_match_nalgebra(n in 1usize..30, k in 1usize..8, seed in any::<u64>()) {
        let mut g = rng(seed);
        let a = well_conditioned(n, 0.3, &mut g);
        let inv = to_na(a.as_ref()).try_inverse().unwrap();
        let it = exact::inverse_transpose(a.as_ref()).unwrap();
        prop_assert!(max_abs_diff(it.as_ref(), from_na(&inv.transpose()).as_ref()) < 1e-11);
        let b = gaussian(n, k, 1.0, &mut g);
        let x = exact::solve(a.as_ref(), b.as_ref()).unwrap();
        prop_assert!(max_abs_diff(x.as_ref(), from_na(&(&inv * to_na(b.as_ref()))).as_ref()) < 1e-11);
        // transpose solve, in chunks of 3 columns
        let mut lu = Lu::new(n, 3, Par::Seq).unwrap();
        lu.factor(a.as_ref()).unwrap();
        let mut xt = b.clone();
        lu.solve_transpose_in_place(xt.as_mut()).unwrap();
        prop_assert!(max_abs_diff(xt.as_ref(), from_na(&(inv.transpose() * to_na(b.as_ref()))).as_ref()) < 1e-11);
    }
}

#[test]
fn typed_errors_not_panics() {
    let sq = Mat::<f64>::from_fn(3, 3, |i, j| (i * 3 + j) as f64); // rank 2
    assert!(matches!(exact::log_abs_det(sq.as_ref()), Err(Error::Singular { .. })));
    assert!(matches!(exact::log_abs_det(Mat::<f64>::zeros(4, 4).as_ref()), Err(Error::Singular { .. })));
    let mut nan = Mat::<f64>::identity(3, 3);
    nan[(1, 2)] = f64::NAN;
    assert!(matches!(exact::log_abs_det(nan.as_ref()), Err(Error::NonFinite { .. })));
    nan[(1, 2)] = f64::INFINITY;
    assert!(matches!(exact::inverse_transpose(nan.as_ref()), Err(Error::NonFinite { .. })));
    assert!(matches!(exact::log_abs_det(Mat::<f64>::zeros(2, 3).as_ref()), Err(Error::NotSquare { .. })));
    assert_eq!(exact::log_abs_det(Mat::<f64>::zeros(0, 0).as_ref()), Ok(0.0));
    let i3 = Mat::<f64>::identity(3, 3);
    assert!(matches!(exact::solve(i3.as_ref(), Mat::<f64>::zeros(4, 1).as_ref()), Err(Error::ShapeMismatch { .. })));
    let lu = Lu::<f64>::new(3, 1, Par::Seq).unwrap();
    assert!(matches!(lu.log_abs_det(), Err(Error::InvalidArgument { .. })));
    // huge but finite: log-det is exact in log space, no overflow
    let big = Mat::<f64>::from_fn(50, 50, |i, j| if i == j { 1e300 } else { 0.0 });
    let ld = exact::log_abs_det(big.as_ref()).unwrap();
    assert!((ld - 50.0 * 1e300f64.ln()).abs() < 1e-9);
    // an inverse that overflows is reported, not returned
    let tiny = Mat::<f64>::from_fn(2, 2, |i, j| if i == j { 1e-310 } else { 0.0 });
    assert!(matches!(exact::inverse_transpose(tiny.as_ref()), Err(Error::NonFinite { .. })));
    // a failed factor leaves the workspace unusable until the next success
    let mut lu = Lu::<f64>::new(3, 1, Par::Seq).unwrap();
    lu.factor(i3.as_ref()).unwrap();
    assert!(lu.factor(sq.as_ref()).is_err());
    assert!(lu.log_abs_det().is_err());
}
