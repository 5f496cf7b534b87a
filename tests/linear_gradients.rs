//! Finite-difference checks of every analytic gradient of the linear layers (f64), and
//! the identity SNF == exact when R = W^{-1}. See proofs/fc.md.

mod common;

use common::*;
use faer::{Mat, Par};
use snf::layers::linear::{ExactLinear, ExactLinearWorkspace, LinearGrads, LinearWorkspace, SelfNormLinear};

struct Case {
    layer: SelfNormLinear<f64>,
    x: Mat<f64>,
    lambda: f64,
}

fn case(d: usize, b: usize, bias: bool, r_noise: f64, lambda: f64, seed: u64) -> Case {
    let mut g = rng(seed);
    let w = well_conditioned(d, 0.3, &mut g);
    let winv = snf::exact::solve(w.as_ref(), Mat::<f64>::identity(d, d).as_ref()).unwrap();
    let e = gaussian(d, d, r_noise, &mut g);
    let r = Mat::from_fn(d, d, |i, j| winv[(i, j)] + e[(i, j)]);
    let bv = bias.then(|| gaussian(d, 1, 0.5, &mut g));
    let x = gaussian(d, b, 1.0, &mut g);
    Case { layer: SelfNormLinear::from_parts(w, r, bv).unwrap(), x, lambda }
}

/// Exact gradients of the Eq. 3 loss for a single layer on a standard normal base.
fn exact_grads(c: &Case) -> (LinearGrads<f64>, Mat<f64>, Mat<f64>) {
    let (d, b) = (c.layer.dim(), c.x.ncols());
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap().with_exact().unwrap();
    let (mut z, mut y) = (Mat::zeros(d, b), Mat::zeros(d, b));
    c.layer.forward(c.x.as_ref(), z.as_mut(), &mut ws).unwrap();
    c.layer.g_inverse(c.x.as_ref(), y.as_mut(), &mut ws).unwrap();
    let dzf = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let dzg = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
    let (mut dxf, mut dxg) = (Mat::zeros(d, b), Mat::zeros(d, b));
    let mut g = c.layer.zero_grads();
    c.layer.backward_exact(c.x.as_ref(), dzf.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut g, &mut ws, c.lambda).unwrap();
    (g, dxf, dxg)
}

fn snf_grads(c: &Case) -> (LinearGrads<f64>, Mat<f64>, f64) {
    let (d, b) = (c.layer.dim(), c.x.ncols());
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    let mut z = Mat::zeros(d, b);
    c.layer.forward(c.x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(d, b);
    let mut g = c.layer.zero_grads();
    let st = c.layer.backward(c.x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut ws, c.lambda).unwrap();
    (g, dx, st.reconstruction_error)
}

fn assert_fd(name: &str, analytic: faer::MatRef<'_, f64>, fd: &nalgebra::DMatrix<f64>) {
    let fd = from_na(fd);
    let err = max_abs_diff(analytic, fd.as_ref());
    let scale = max_abs(fd.as_ref()).max(1.0);
    assert!(err <= FD_TOL * scale, "{name}: max |analytic - fd| = {err:e} (scale {scale})");
}

#[test]
fn exact_mode_gradients_match_finite_differences() {
    // R far from W^{-1} (noise 0.2) so that every term of Eq. 9 matters.
    for (seed, bias, lambda) in [(1, true, 0.7), (2, false, 0.0), (3, true, 2.5)] {
        let c = case(5, 7, bias, 0.2, lambda, seed);
        let (g, _, _) = exact_grads(&c);
        let (w, r) = (to_na(c.layer.w()), to_na(c.layer.r()));
        let bb = c.layer.bias().map(to_na);
        let x = to_na(c.x.as_ref());
        let fd_w = central_diff(&w, FD_STEP, |w| snf_loss_oracle(w, &r, bb.as_ref(), &x, lambda));
        assert_fd("dW", g.w(), &fd_w);
        let fd_r = central_diff(&r, FD_STEP, |r| snf_loss_oracle(&w, r, bb.as_ref(), &x, lambda));
        assert_fd("dR", g.r(), &fd_r);
        if let Some(bv) = &bb {
            let fd_b = central_diff(bv, FD_STEP, |b| snf_loss_oracle(&w, &r, Some(b), &x, lambda));
            assert_fd("db", g.b().unwrap(), &fd_b);
        }
    }
}

#[test]
fn deltas_match_finite_differences() {
    // delta_x^f = d/dx [log N(Wx + b)] = W^T delta_z and delta_x^g = d/dx log N(R^{-1}x + b).
    let c = case(4, 3, true, 0.2, 1.0, 11);
    let (_, dxf, dxg) = exact_grads(&c);
    let (w, r) = (to_na(c.layer.w()), to_na(c.layer.r()));
    let rinv = r.clone().try_inverse().unwrap();
    let bb = to_na(c.layer.bias().unwrap());
    let x = to_na(c.x.as_ref());
    let logn = |z: nalgebra::DVector<f64>| -0.5 * z.dot(&z);
    let fd_f = central_diff(&x, FD_STEP, |x| (0..x.ncols()).map(|j| logn(&w * x.column(j) + bb.column(0))).sum());
    let fd_g = central_diff(&x, FD_STEP, |x| (0..x.ncols()).map(|j| logn(&rinv * x.column(j) + bb.column(0))).sum());
    assert_fd("dx_f", dxf.as_ref(), &fd_f);
    assert_fd("dx_g", dxg.as_ref(), &fd_g);
}

#[test]
fn snf_reconstruction_terms_match_finite_differences() {
    // The reconstruction part of Eqs. 17/20 is exact (no approximation): with lambda = 1
    // the difference SNF - (SNF at lambda = 0) must equal d/dθ [ (1/B) sum |RWx - x|^2 ].
    let mut c = case(5, 6, true, 0.3, 1.0, 5);
    let (g1, _, recon) = snf_grads(&c);
    c.lambda = 0.0;
    let (g0, _, _) = snf_grads(&c);
    let (w, r) = (to_na(c.layer.w()), to_na(c.layer.r()));
    let x = to_na(c.x.as_ref());
    let e_of = |w: &nalgebra::DMatrix<f64>, r: &nalgebra::DMatrix<f64>| {
        let e = r * w * &x - &x;
        e.norm_squared() / x.ncols() as f64
    };
    assert!((e_of(&w, &r) - recon).abs() <= 1e-12 * recon.max(1.0), "reported recon error");
    let dw = Mat::from_fn(5, 5, |i, j| g1.w()[(i, j)] - g0.w()[(i, j)]);
    let dr = Mat::from_fn(5, 5, |i, j| g1.r()[(i, j)] - g0.r()[(i, j)]);
    assert_fd("recon dW", dw.as_ref(), &central_diff(&w, FD_STEP, |w| e_of(w, &r)));
    assert_fd("recon dR", dr.as_ref(), &central_diff(&r, FD_STEP, |r| e_of(&w, r)));
    assert_eq!(g1.b(), g0.b(), "bias gradient has no reconstruction term (the bias cancels in g(f(x)))");
}

#[test]
fn exact_linear_baseline_matches_finite_differences() {
    let mut g = rng(21);
    let d = 6;
    let x = gaussian(d, 9, 1.0, &mut g);
    let mut layer = ExactLinear::<f64>::new(d, true, &mut g).unwrap();
    // move away from identity so W^{-T} is not trivially I
    let w2 = well_conditioned(d, 0.35, &mut g);
    let mut ws = ExactLinearWorkspace::new(d, 9, Par::Seq).unwrap();
    let mut grads = layer.zero_grads();
    // one plain step of "learning" to set W := w2 and a nonzero bias via params_with_grads
    for (mut p, _) in layer.params_with_grads(&grads.clone()).unwrap() {
        let src = if p.ncols() == d { w2.clone() } else { gaussian(d, 1, 0.5, &mut g) };
        p.copy_from(src.as_ref());
    }
    let mut z = Mat::zeros(d, 9);
    layer.forward(x.as_ref(), z.as_mut(), &ws).unwrap();
    let dz = Mat::from_fn(d, 9, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(d, 9);
    layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut grads, &mut ws).unwrap();
    let w = to_na(layer.w());
    let xb = to_na(x.as_ref());
    let mut bias = None;
    for (p, _) in layer.params_with_grads(&grads.clone()).unwrap() {
        if p.ncols() == 1 {
            bias = Some(to_na(p.rb()));
        }
    }
    let bias = bias.unwrap();
    assert_fd("baseline dW", grads.w.as_ref(), &central_diff(&w, FD_STEP, |w| plain_loss_oracle(w, Some(&bias), &xb)));
    assert_fd("baseline db", grads.b.as_ref().unwrap().as_ref(), &central_diff(&bias, FD_STEP, |b| plain_loss_oracle(&w, Some(b), &xb)));
}

use faer::reborrow::Reborrow;

#[test]
fn snf_equals_exact_when_r_is_the_inverse() {
    // With R = W^{-1}: W^{-T} = R^T, R^{-T} = W^T, v = u, delta^g = delta^f, e = 0, so every
    // block of Eqs. 17/20 equals Eqs. 8/9. Only rounding separates them: the angle is
    // ~1e-14 degrees; 1e-9 degrees is five orders of margin, while R = W^{-1} + 1e-6
    // noise already gives ~1e-5 degrees (checked below), so the test can fail.
    for (seed, bias, lambda) in [(31, true, 1.0), (32, false, 0.3), (33, true, 10.0)] {
        let c = case(24, 40, bias, 0.0, lambda, seed);
        let (ge, _, _) = exact_grads(&c);
        let (gs, _, recon) = snf_grads(&c);
        assert!(recon < 1e-24, "R = W^-1 should reconstruct exactly, got {recon:e}");
        let a: Vec<_> = ge.blocks().collect();
        let b: Vec<_> = gs.blocks().collect();
        let deg = snf::grad::angle_degrees(&a, &b).unwrap();
        assert!(deg < 1e-9, "angle {deg:e} degrees");
        // and a perturbed inverse is visibly different
        let c2 = case(24, 40, bias, 1e-6, lambda, seed);
        let (ge2, _, _) = exact_grads(&c2);
        let (gs2, _, _) = snf_grads(&c2);
        let deg2 = snf::grad::angle_degrees(&ge2.blocks().collect::<Vec<_>>(), &gs2.blocks().collect::<Vec<_>>()).unwrap();
        assert!(deg2 > 1e-7, "perturbed R should give a measurable angle, got {deg2:e}");
    }
}

#[test]
fn inverses_round_trip() {
    let c = case(8, 5, true, 0.0, 1.0, 41);
    let (d, b) = (8, 5);
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    let (mut z, mut xe, mut xl) = (Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b));
    c.layer.forward(c.x.as_ref(), z.as_mut(), &mut ws).unwrap();
    c.layer.inverse_exact(z.as_ref(), xe.as_mut(), &mut ws).unwrap();
    c.layer.inverse(z.as_ref(), xl.as_mut(), &mut ws).unwrap();
    // exact solve: backward error ~ cond * eps ~ 1e-15; learned inverse R = W^{-1} to ~1e-15.
    assert!(max_abs_diff(xe.as_ref(), c.x.as_ref()) < 1e-12);
    assert!(max_abs_diff(xl.as_ref(), c.x.as_ref()) < 1e-12);
    let ld = c.layer.log_abs_det().unwrap();
    let oracle = to_na(c.layer.w()).determinant().abs().ln();
    assert!((ld - oracle).abs() < 1e-12);
}
