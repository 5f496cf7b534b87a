//! The exact LU path on arbitrary matrices: singular, NaN, infinite, huge, tiny. It must
//! return a value or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snf::exact::Lu;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n % 24) as usize;
    let vals: Vec<f64> = rest.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    if vals.len() < n * n {
        return;
    }
    let a = faer::Mat::from_fn(n, n, |i, j| vals[i * n + j]);
    let _ = snf::exact::log_abs_det(a.as_ref());
    let _ = snf::exact::inverse_transpose(a.as_ref());
    let _ = snf::exact::solve(a.as_ref(), a.as_ref());
    let mut lu = Lu::new(n, 3, faer::Par::Seq).unwrap();
    if lu.factor(a.as_ref()).is_ok() {
        let ld = lu.log_abs_det().expect("factored");
        assert!(!ld.is_nan(), "log-det of a factored matrix is a number");
        let mut b = a.clone();
        let _ = lu.solve_transpose_in_place(b.as_mut());
    }
});
