//! Shared test helpers: seeded random matrices, an independent nalgebra oracle for the
//! loss of Eq. 3, and central finite differences.
#![allow(dead_code)]

pub mod files;
pub mod naive_conv;

use faer::{Mat, MatRef};
use nalgebra::DMatrix;
use rand::Rng;
use rand_distr::StandardNormal;
use snf::init::SnfRng;

pub fn rng(seed: u64) -> SnfRng {
    snf::init::rng(seed)
}

/// `D x B` matrix of N(0, s^2) entries.
pub fn gaussian(rows: usize, cols: usize, s: f64, rng: &mut SnfRng) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| s * rng.sample::<f64, _>(StandardNormal))
}

/// `I + s G / sqrt(D)` with `s <= 0.4`: spectral norm of the perturbation is about
/// `2 s`, so the condition number stays below ~ (1 + 2s)/(1 - 2s) <= 9.
pub fn well_conditioned(d: usize, s: f64, rng: &mut SnfRng) -> Mat<f64> {
    let g = gaussian(d, d, s / (d as f64).sqrt(), rng);
    Mat::from_fn(d, d, |i, j| g[(i, j)] + if i == j { 1.0 } else { 0.0 })
}

pub fn to_na(a: MatRef<'_, f64>) -> DMatrix<f64> {
    DMatrix::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)])
}

pub fn from_na(a: &DMatrix<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)])
}

pub fn max_abs(a: MatRef<'_, f64>) -> f64 {
    (0..a.ncols()).flat_map(|j| a.col(j).iter().copied().collect::<Vec<_>>()).fold(0.0, |m, v| m.max(v.abs()))
}

pub fn max_abs_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    let mut m = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            m = m.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    m
}

pub fn frob(a: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * a[(i, j)];
        }
    }
    s.sqrt()
}

const LN_2PI: f64 = 1.8378770664093453;

/// log N(z; 0, I) of one column.
fn log_normal(z: &nalgebra::DVector<f64>) -> f64 {
    -0.5 * z.dot(z) - 0.5 * z.len() as f64 * LN_2PI
}

/// The loss of Eq. 3 for one self-normalizing linear layer on a standard normal base,
/// computed by brute force with nalgebra (its own determinant and inverse, sharing no
/// code with snf):
/// l = -(1/B) sum_b [ 1/2 (log N(W x + b) + ln|det W|)
///                  + 1/2 (log N(R^{-1} x + b) - ln|det R|) - lambda |R W x - x|^2 ].
pub fn snf_loss_oracle(w: &DMatrix<f64>, r: &DMatrix<f64>, b: Option<&DMatrix<f64>>, x: &DMatrix<f64>, lambda: f64) -> f64 {
    let d = w.nrows();
    let ldw = w.determinant().abs().ln();
    let ldr = r.determinant().abs().ln();
    let rinv = r.clone().try_inverse().expect("oracle: R invertible");
    let bias = b.map(|b| b.column(0).into_owned()).unwrap_or_else(|| nalgebra::DVector::zeros(d));
    let mut total = 0.0;
    for j in 0..x.ncols() {
        let xj = x.column(j).into_owned();
        let zf = w * &xj + &bias;
        let zg = &rinv * &xj + &bias;
        let rec = r * (w * &xj) - &xj;
        total += 0.5 * (log_normal(&zf) + ldw) + 0.5 * (log_normal(&zg) - ldr) - lambda * rec.dot(&rec);
    }
    -total / x.ncols() as f64
}

/// Plain-flow loss -(1/B) sum_b log p^f(x_b) (the exact baseline), by nalgebra.
pub fn plain_loss_oracle(w: &DMatrix<f64>, b: Option<&DMatrix<f64>>, x: &DMatrix<f64>) -> f64 {
    let d = w.nrows();
    let ldw = w.determinant().abs().ln();
    let bias = b.map(|b| b.column(0).into_owned()).unwrap_or_else(|| nalgebra::DVector::zeros(d));
    let mut total = 0.0;
    for j in 0..x.ncols() {
        let zf = w * x.column(j) + &bias;
        total += log_normal(&zf) + ldw;
    }
    -total / x.ncols() as f64
}

/// Central finite difference of `f` with respect to every entry of `p`:
/// g_ij = (f(p + h e_ij) - f(p - h e_ij)) / 2h.
pub fn central_diff(p: &DMatrix<f64>, h: f64, mut f: impl FnMut(&DMatrix<f64>) -> f64) -> DMatrix<f64> {
    let mut g = DMatrix::zeros(p.nrows(), p.ncols());
    let mut q = p.clone();
    for j in 0..p.ncols() {
        for i in 0..p.nrows() {
            let v = p[(i, j)];
            q[(i, j)] = v + h;
            let fp = f(&q);
            q[(i, j)] = v - h;
            let fm = f(&q);
            q[(i, j)] = v;
            g[(i, j)] = (fp - fm) / (2.0 * h);
        }
    }
    g
}

/// Tolerance for comparing an analytic gradient with a central difference of step h:
/// truncation h^2 |f'''| / 6 plus rounding ~ eps |f| / h. With h = 1e-5, |f| ~ 10 and
/// O(1) third derivatives this is ~ 1e-10 + 1e-10; 1e-7 leaves a wide margin while a
/// wrong term (any missing factor or transpose) is O(0.1) or more.
pub const FD_TOL: f64 = 1e-7;
pub const FD_STEP: f64 = 1e-5;

/// The shipped MNIST (checksums not re-verified, for speed) cut to the first `train`
/// training and `valid` validation images.
pub fn small_mnist(train: usize, valid: usize) -> snf::data::mnist::Mnist {
    use snf::data::mnist::{LoadOptions, Mnist};
    let mut m = Mnist::load_with(&Mnist::shipped_dir(), LoadOptions { verify_checksums: false, ..Default::default() }).unwrap();
    m.train = m.train.head(train);
    m.valid = m.valid.head(valid);
    m
}
