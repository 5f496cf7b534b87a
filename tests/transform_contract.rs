//! One contract for every built-in transform, run through the `Transform` trait alone:
//!
//! 1. `inverse(forward(x)) = x`;
//! 2. the reported log-det (per-example part + `static_log_det`) equals $\log|\det J|$ of
//!    the dense Jacobian, by central differences;
//! 3. `backward`'s input delta equals the finite-difference gradient of
//!    $L(x) = \sum_b c_b\cdot y_b + \log|\det J(x_b)|$ (any output delta $c$);
//! 4. parameter gradients equal finite differences of the loss
//!    $\ell = -\frac1B\sum_b[c_b\cdot y_b + \log|\det J|]$ — for self-normalizing layers,
//!    whose gradient is a surrogate, at $R = W^{-1}$, where Eq. 17 equals half the exact
//!    $W$-gradient (the other half belongs to $p^g$, proofs/fc.md);
//! 5. a stale, foreign or mismatched tape is a typed error.
//!
//! Plus the flow-level rules: one log-det cache invalidated by every mutable access, and a
//! multi-scale flow (squeeze + split with a learned prior) against a dense Jacobian and
//! finite differences.
//!
//! Tolerances: central differences with step h on smooth maps of O(1) curvature have
//! truncation error ~h²; h = 1e-5 for Jacobians (entries to ~1e-10, log|det| of D <= 32 to
//! ~1e-8) and parameter/input gradients (~1e-9 relative); asserted at 1e-6 (relative to
//! max(1, |value|)), well above rounding (~1e-10) and far below any wrong term (>= 1e-2).

mod common;

use common::{gaussian, rng};
use faer::{Mat, MatRef, Par};
use snf::activation::{Elementwise, LeakyRelu, SmoothLeakyRelu, SplineActivation, SplineConfig};
use snf::layers::conv::{ExactConv2d, SelfNormConv2d, SelfNormConv2dConfig};
use snf::layers::linear::{ExactLinear, RelativeLinear, SelfNormLinear};
use snf::layers::{
    ActNorm, AffineCoupling, AffineCouplingConfig, AutoregressiveConv2d, AutoregressiveConv2dConfig, ConvExp, ConvExpConfig, Direction, InvConv1x1, LuConv1x1,
    Preprocess, Split, Squeeze, Standardize,
};
use snf::prelude::*;

struct Case {
    name: &'static str,
    t: Box<dyn Transform<f64>>,
    shape: Shape,
    x: Mat<f64>,
}

/// `(y, per-example log-det + static log-det)` through a fresh workspace.
fn run(t: &dyn Transform<f64>, x: MatRef<'_, f64>) -> (Mat<f64>, Vec<f64>) {
    let mut ws = t.workspace(x.ncols(), Par::Seq).unwrap();
    let mut y = Mat::zeros(x.nrows(), x.ncols());
    let mut ld = vec![0.0; x.ncols()];
    let tape = t.forward(x, y.as_mut(), &mut ld, &mut ws).unwrap();
    drop(tape);
    let s = t.static_log_det(&mut ws).unwrap();
    (y, ld.into_iter().map(|v| v + s).collect())
}

/// $L(x) = \sum_b c_b\cdot y_b + \log|\det J(x_b)|$.
fn objective(t: &dyn Transform<f64>, x: MatRef<'_, f64>, c: MatRef<'_, f64>) -> f64 {
    let (y, ld) = run(t, x);
    (0..x.ncols()).map(|j| (0..x.nrows()).map(|i| c[(i, j)] * y[(i, j)]).sum::<f64>() + ld[j]).sum()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let b = 3;
    let flat = |d: usize, s: f64, seed: u64| gaussian(d, b, s, &mut rng(seed));
    // preprocessing: pixel values inside (0, 256)
    let px = Mat::from_fn(6, b, |i, j| 20.0 + 200.0 * ((i * 7 + j * 3) % 11) as f64 / 11.0);
    out.push(Case { name: "preprocess", t: Box::new(Preprocess::new(1e-6).unwrap()), shape: Shape::flat(6), x: px });
    // self-normalizing linear at R = W^{-1}
    let d = 5;
    let w = common::well_conditioned(d, 0.4, &mut rng(1));
    let winv = common::from_na(&common::to_na(w.as_ref()).try_inverse().unwrap());
    let snl = SelfNormLinear::from_parts(w, winv, Some(gaussian(d, 1, 0.1, &mut rng(2)))).unwrap();
    out.push(Case { name: "snf-linear", t: Box::new(snl), shape: Shape::flat(d), x: flat(d, 1.0, 3) });
    let el = ExactLinear::from_parts(common::well_conditioned(d, 0.4, &mut rng(4)), Some(gaussian(d, 1, 0.1, &mut rng(5)))).unwrap();
    out.push(Case { name: "exact-linear", t: Box::new(el), shape: Shape::flat(d), x: flat(d, 1.0, 6) });
    // convolutions on 2x4x4, kernels away from the Dirac initialisation
    let cfg = SelfNormConv2dConfig::new(2, [4, 4], 3);
    let mut sc = SelfNormConv2d::<f64>::new(cfg, &mut rng(7)).unwrap();
    for (k, mut p) in sc.params_mut().enumerate() {
        let n = gaussian(p.nrows(), p.ncols(), 0.1, &mut rng(8 + k as u64));
        faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
    }
    out.push(Case { name: "snf-conv", t: Box::new(sc.clone()), shape: Shape::image(2, 4, 4), x: flat(32, 1.0, 12) });
    out.push(Case { name: "exact-conv", t: Box::new(ExactConv2d::from_self_normalizing(&sc)), shape: Shape::image(2, 4, 4), x: flat(32, 1.0, 13) });
    // element-wise maps (leaky ReLU away from its kink)
    out.push(Case { name: "smooth-leaky-relu", t: Box::new(SmoothLeakyRelu::new(0.3).unwrap()), shape: Shape::flat(4), x: flat(4, 1.5, 14) });
    let lx = Mat::from_fn(4, b, |i, j| if (i + j) % 2 == 0 { 0.3 + 0.2 * i as f64 } else { -0.4 - 0.3 * j as f64 });
    out.push(Case { name: "leaky-relu", t: Box::new(LeakyRelu::new(0.2).unwrap()), shape: Shape::flat(4), x: lx });
    out.push(Case { name: "elementwise", t: Box::new(Elementwise(SmoothLeakyRelu::new(0.5).unwrap())), shape: Shape::image(1, 2, 2), x: flat(4, 1.0, 15) });
    let sp = SplineConfig::default();
    let spline = SplineActivation::from_parts(
        sp,
        gaussian(sp.bins, 4, 0.5, &mut rng(16)),
        gaussian(sp.bins, 4, 0.5, &mut rng(17)),
        Mat::from_fn(sp.bins - 1, 4, |i, j| sp.unit_derivative_param() + 0.2 * (i as f64 - j as f64)),
    )
    .unwrap();
    out.push(Case { name: "spline", t: Box::new(spline), shape: Shape::flat(4), x: flat(4, 2.0, 18) });
    out.push(Case { name: "squeeze", t: Box::new(Squeeze::new(2, 4, 4).unwrap()), shape: Shape::image(2, 4, 4), x: flat(32, 1.0, 19) });
    // split 4x2x2 -> 2x2x2 with a non-zero prior network
    let s0 = Split::<f64>::new(Shape::image(4, 2, 2)).unwrap();
    let (kr, kc) = (s0.params()[0].value.nrows(), s0.params()[0].value.ncols());
    let split = Split::from_parts(Shape::image(4, 2, 2), gaussian(kr, kc, 0.2, &mut rng(20)), gaussian(4, 1, 0.2, &mut rng(21))).unwrap();
    out.push(Case { name: "split", t: Box::new(split), shape: Shape::image(4, 2, 2), x: flat(16, 1.0, 22) });
    // the relative gradient's layer: its "gradient" is the exact one times W^T W (checked below)
    let wr = Mat::from_fn(4, 4, |i, j| if i == j { 1.2 } else { 0.0 } + 0.3 * (((i * 5 + j * 3) % 7) as f64 / 7.0 - 0.5));
    let rel = RelativeLinear::from_parts(wr, Some(gaussian(4, 1, 0.3, &mut rng(24)))).unwrap();
    out.push(Case { name: "relative-linear", t: Box::new(rel), shape: Shape::flat(4), x: flat(4, 1.0, 25) });
    // standardisation with unequal spreads (the log-det -sum log sigma is the static part)
    let st = Standardize::new(vec![100.0, -3.0, 0.5, 0.0], vec![40.0, 0.1, 1.0, 2.5]).unwrap();
    out.push(Case { name: "standardize", t: Box::new(st), shape: Shape::flat(4), x: flat(4, 3.0, 23) });
    // the Table 1 conv baselines on 2x3x3: a non-orthogonal 1x1 mixing, both triangles of
    // the autoregressive convolution, and the convolution exponential with its norm
    // rescaling inactive (rho < c) and active (rho > c); the series is cut at 1e-13 so the
    // truncated map's log-det is tr(M) to far below the tolerance
    let img = Shape::image(2, 3, 3);
    let w1 = Mat::from_fn(2, 2, |i, j| if i == j { 1.1 } else { 0.0 } + 0.4 * ((i * 2 + j) as f64 - 1.5));
    out.push(Case { name: "inv-conv1x1", t: Box::new(InvConv1x1::from_parts(img, w1).unwrap()), shape: img, x: flat(18, 1.0, 26) });
    for (k, dir) in [Direction::Lower, Direction::Upper].into_iter().enumerate() {
        let cfg = AutoregressiveConv2dConfig::new(2, [3, 3], dir);
        let mut ar = AutoregressiveConv2d::<f64>::new(cfg, &mut rng(27 + k as u64)).unwrap();
        for (j, mut p) in ar.params_mut().into_iter().enumerate() {
            let n = gaussian(p.nrows(), p.ncols(), 0.2, &mut rng(29 + 2 * k as u64 + j as u64));
            faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
        }
        let name = if k == 0 { "autoregressive-conv (lower)" } else { "autoregressive-conv (upper)" };
        out.push(Case { name, t: Box::new(ar), shape: img, x: flat(18, 1.0, 33 + k as u64) });
    }
    for (k, std) in [0.02, 0.3].into_iter().enumerate() {
        let cfg = ConvExpConfig::new(2, [3, 3]).with_tolerance(1e-13);
        let ce = ConvExp::from_parts(cfg, gaussian(18, 2, std, &mut rng(35 + k as u64)), Some(gaussian(2, 1, 0.3, &mut rng(37)))).unwrap();
        let rho = ce.norm_bound();
        assert!((k == 0) == (rho < cfg.coeff), "conv-exp case {k}: rho {rho}");
        let name = if k == 0 { "conv-exp (rho < c)" } else { "conv-exp (rescaled)" };
        out.push(Case { name, t: Box::new(ce), shape: img, x: flat(18, 1.0, 38 + k as u64) });
    }
    // ActNorm away from the identity
    let an = ActNorm::from_parts(img, Mat::from_fn(2, 1, |i, _| 0.3 - 0.5 * i as f64), Mat::from_fn(2, 1, |i, _| 0.2 + i as f64), true).unwrap();
    out.push(Case { name: "actnorm", t: Box::new(an), shape: img, x: flat(18, 1.0, 41) });
    // Glow's affine coupling: odd and even channel counts, a non-square image, its hidden
    // ActNorms initialised from the batch, every parameter moved off its initialisation
    for (k, (shape, width)) in [(Shape::image(3, 3, 3), 4), (Shape::image(4, 2, 3), 3)].into_iter().enumerate() {
        let x = flat(shape.dim(), 1.0, 42 + k as u64);
        let mut cp = AffineCoupling::<f64>::new(AffineCouplingConfig::new(shape, width), &mut rng(44 + k as u64)).unwrap();
        cp.data_init(x.as_ref(), Par::Seq).unwrap();
        for (j, mut p) in cp.params_mut().into_iter().enumerate() {
            let n = gaussian(p.nrows(), p.ncols(), 0.3, &mut rng(50 + 10 * k as u64 + j as u64));
            faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
        }
        let name = if k == 0 { "affine-coupling (odd C)" } else { "affine-coupling (even C, H != W)" };
        out.push(Case { name, t: Box::new(cp), shape, x });
    }
    // Glow's LU-parametrised 1x1 convolution, off its orthogonal start
    let mut lu = LuConv1x1::<f64>::new(img, &mut rng(60)).unwrap();
    for (j, mut p) in lu.params_mut().into_iter().enumerate() {
        let n = gaussian(p.nrows(), p.ncols(), 0.3, &mut rng(61 + j as u64));
        faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
    }
    out.push(Case { name: "lu-conv1x1", t: Box::new(lu), shape: img, x: flat(18, 1.0, 64) });
    out
}

#[test]
fn every_builtin_transform_meets_the_contract() {
    let kinds: Vec<&str> = cases().iter().map(|c| c.t.kind()).collect();
    for k in [
        "preprocess",
        "snf-linear",
        "exact-linear",
        "snf-conv",
        "exact-conv",
        "smooth-leaky-relu",
        "leaky-relu",
        "elementwise",
        "spline",
        "squeeze",
        "split",
        "standardize",
        "relative-linear",
        "inv-conv1x1",
        "autoregressive-conv",
        "conv-exp",
        "actnorm",
        "affine-coupling",
        "lu-conv1x1",
    ] {
        assert!(kinds.contains(&k), "no contract case for {k}");
    }
    for case in cases() {
        let t = &*case.t;
        let (d, b) = (case.x.nrows(), case.x.ncols());
        let name = case.name;
        let out = t.output_shape(case.shape).unwrap();
        assert!(out.dim() <= d, "{name}: output larger than input");
        // 1. inverse(forward(x)) = x
        let (y, ld) = run(t, case.x.as_ref());
        let mut ws = t.workspace(b, Par::Seq).unwrap();
        let mut back = Mat::zeros(d, b);
        t.inverse(y.as_ref(), back.as_mut(), &mut ws).unwrap();
        let scale = common::max_abs(case.x.as_ref()).max(1.0);
        assert!(common::max_abs_diff(back.as_ref(), case.x.as_ref()) < 1e-9 * scale, "{name}: inverse(forward(x)) != x");
        // 2. log-det against the dense Jacobian of each example
        let h = 1e-5;
        for (j, &ld_j) in ld.iter().enumerate() {
            let col = case.x.as_ref().subcols(j, 1).to_owned();
            let mut jac = nalgebra::DMatrix::zeros(d, d);
            for c in 0..d {
                let (mut p, mut m) = (col.clone(), col.clone());
                p[(c, 0)] += h;
                m[(c, 0)] -= h;
                let (yp, _) = run(t, p.as_ref());
                let (ym, _) = run(t, m.as_ref());
                for r in 0..d {
                    jac[(r, c)] = (yp[(r, 0)] - ym[(r, 0)]) / (2.0 * h);
                }
            }
            let want = jac.determinant().abs().ln();
            assert!(close(ld_j, want, 1e-6), "{name}: log-det {ld_j} vs dense Jacobian {want}");
        }
        // 3. input delta
        let c = gaussian(d, b, 1.0, &mut rng(99));
        let mut ws = t.workspace(b, Par::Seq).unwrap();
        let (mut y, mut ld) = (Mat::zeros(d, b), vec![0.0; b]);
        let tape = t.forward(case.x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
        let mut grads = t.zero_grads();
        let mut dx = Mat::zeros(d, b);
        t.backward(tape, case.x.as_ref(), c.as_ref(), dx.as_mut(), &mut grads, &mut ws, 0.0).unwrap();
        for j in 0..b {
            for i in 0..d {
                let (mut p, mut m) = (case.x.clone(), case.x.clone());
                p[(i, j)] += h;
                m[(i, j)] -= h;
                let fd = (objective(t, p.as_ref(), c.as_ref()) - objective(t, m.as_ref(), c.as_ref())) / (2.0 * h);
                assert!(close(dx[(i, j)], fd, 1e-6), "{name}: input delta [{i}, {j}] {} vs {fd}", dx[(i, j)]);
            }
        }
        // 4. parameter gradients
        let names: Vec<&str> = t.params().iter().map(|p| p.name).collect();
        let blocks: Vec<Mat<f64>> = grads.blocks().into_iter().map(|m| m.to_owned()).collect();
        assert_eq!(blocks.len(), names.len(), "{name}: one gradient block per parameter");
        let sn = t.as_self_normalizing().is_some();
        if sn && name == "snf-conv" {
            continue; // a finite inverse kernel is never exactly T(w)^{-1}: tests/conv_layer.rs checks it against the exact path
        }
        let loss = |tt: &dyn Transform<f64>| -objective(tt, case.x.as_ref(), c.as_ref()) / b as f64;
        if name == "relative-linear" {
            // the W block is (d loss / d W) W^T W; the bias block is the plain gradient
            let w = t.params()[0].value.to_owned();
            let fd = |k: usize, ii: usize, jj: usize| {
                let mut tp = t.clone_box();
                tp.params_mut()[k][(ii, jj)] += h;
                let mut tm = t.clone_box();
                tm.params_mut()[k][(ii, jj)] -= h;
                (loss(&*tp) - loss(&*tm)) / (2.0 * h)
            };
            let g = Mat::from_fn(d, d, |ii, jj| fd(0, ii, jj));
            let want = &g * w.transpose() * &w;
            assert!(common::max_abs_diff(blocks[0].as_ref(), want.as_ref()) < 1e-6 * common::max_abs(want.as_ref()).max(1.0), "{name}: relative gradient");
            for ii in 0..d {
                assert!(close(blocks[1][(ii, 0)], fd(1, ii, 0), 1e-6), "{name}: bias gradient [{ii}]");
            }
            continue;
        }
        for (k, pname) in names.iter().enumerate() {
            if sn && *pname == "r" {
                continue; // R enters only p^g and the reconstruction term (tests/linear_gradients.rs)
            }
            let factor = if sn && *pname == "w" { 0.5 } else { 1.0 };
            let (rows, cols) = (blocks[k].nrows(), blocks[k].ncols());
            for jj in 0..cols {
                for ii in 0..rows {
                    let mut tp = t.clone_box();
                    tp.params_mut()[k][(ii, jj)] += h;
                    let mut tm = t.clone_box();
                    tm.params_mut()[k][(ii, jj)] -= h;
                    let fd = factor * (loss(&*tp) - loss(&*tm)) / (2.0 * h);
                    assert!(close(blocks[k][(ii, jj)], fd, 1e-6), "{name}: d loss / d {pname}[{ii}, {jj}] {} vs {fd}", blocks[k][(ii, jj)]);
                }
            }
        }
    }
}

#[test]
fn tapes_tie_backward_to_its_forward() {
    let l = SelfNormLinear::<f64>::new(4, true, &mut rng(30)).unwrap();
    let x = gaussian(4, 2, 1.0, &mut rng(31));
    let x2 = gaussian(4, 2, 1.0, &mut rng(32));
    let mut ws = Transform::<f64>::workspace(&l, 2, Par::Seq).unwrap();
    let mut other = Transform::<f64>::workspace(&l, 2, Par::Seq).unwrap();
    let (mut y, mut ld, mut dx) = (Mat::zeros(4, 2), vec![0.0; 2], Mat::zeros(4, 2));
    let mut g = Transform::<f64>::zero_grads(&l);
    let stale = Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
    let fresh = Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
    let is_stale = |r: snf::Result<f64>| matches!(r, Err(Error::StaleTape { .. }));
    // an older tape of the same workspace
    assert!(is_stale(Transform::backward(&l, stale, x.as_ref(), y.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0)));
    // the right tape with another input batch
    assert!(is_stale(Transform::backward(&l, fresh, x2.as_ref(), y.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0)));
    // a tape of another workspace
    let t = Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
    assert!(is_stale(Transform::backward(&l, t, x.as_ref(), y.as_ref(), dx.as_mut(), &mut g, &mut other, 1.0)));
    // a tape is used once: after a successful backward the workspace has none pending
    let t = Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
    Transform::backward(&l, t, x.as_ref(), y.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0).unwrap();
    // workspaces and gradients of another kind are typed errors too
    let el = ExactLinear::<f64>::new(4, true, &mut rng(33)).unwrap();
    let mut ews = Transform::<f64>::workspace(&el, 2, Par::Seq).unwrap();
    assert!(Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ews).is_err());
    let t = Transform::forward(&l, x.as_ref(), y.as_mut(), &mut ld, &mut ws).unwrap();
    let mut eg = Transform::<f64>::zero_grads(&el);
    assert!(Transform::backward(&l, t, x.as_ref(), y.as_ref(), dx.as_mut(), &mut eg, &mut ws, 1.0).is_err());
}

/// One caching rule: the flow caches the sum of data-independent log-dets and every
/// mutable access invalidates it.
#[test]
fn the_flow_log_det_cache_follows_every_parameter_change() {
    let d = 4;
    let mut flow = Flow::<f64>::builder(Shape::flat(d))
        .then(ExactLinear::from_parts(common::well_conditioned(d, 0.3, &mut rng(40)), None).unwrap())
        .then(SmoothLeakyRelu::new(0.3).unwrap())
        .then(SelfNormConv2d::<f64>::new(SelfNormConv2dConfig::new(1, [2, 2], 3), &mut rng(41)).unwrap())
        .build()
        .unwrap();
    let truth = |f: &Flow<f64>| -> f64 {
        let w = f.layer::<ExactLinear<f64>>(0).unwrap().w();
        let c = f.layer::<SelfNormConv2d<f64>>(2).unwrap().conv_matrix().unwrap();
        common::to_na(w).determinant().abs().ln() + common::to_na(c.as_ref()).determinant().abs().ln()
    };
    let mut ws = flow.workspace(2, Par::Seq).unwrap();
    let a = flow.static_log_det(&mut ws).unwrap();
    assert!(close(a, truth(&flow), 1e-12));
    assert_eq!(flow.static_log_det(&mut ws).unwrap().to_bits(), a.to_bits(), "served from the cache");
    // through the optimiser-facing access
    for l in flow.layers_mut() {
        for mut p in l.params_mut() {
            p[(0, 0)] += 0.25;
        }
    }
    let b = flow.static_log_det(&mut ws).unwrap();
    assert!((a - b).abs() > 1e-6 && close(b, truth(&flow), 1e-12), "stale log-det after layers_mut: {a} -> {b}");
    // through typed access
    flow.layer_mut::<SelfNormConv2d<f64>>(2).unwrap().params_mut().next().unwrap()[(4, 0)] *= 1.5;
    let c = flow.static_log_det(&mut ws).unwrap();
    assert!((b - c).abs() > 1e-6 && close(c, truth(&flow), 1e-12), "stale log-det after layer_mut");
    // log_prob uses the current value
    let x = gaussian(d, 2, 1.0, &mut rng(42));
    let (mut lp, mut lp2) = ([0.0; 2], [0.0; 2]);
    flow.log_prob(x.as_ref(), &mut ws, &mut lp).unwrap();
    flow.log_prob_given(x.as_ref(), truth(&flow), &mut ws, &mut lp2).unwrap();
    assert!(close(lp[0], lp2[0], 1e-12) && close(lp[1], lp2[1], 1e-12));
}

/// A multi-scale flow: squeeze, a linear mix, a split with a learned prior, more layers
/// on the kept half. Its log-likelihood against the dense Jacobian of x -> z, its inverse,
/// and its gradients (prior network included) against finite differences.
#[test]
fn a_multiscale_flow_with_a_learned_prior() {
    let shape = Shape::image(1, 4, 4);
    let s0 = Split::<f64>::new(Shape::image(4, 2, 2)).unwrap();
    let (kr, kc) = (s0.params()[0].value.nrows(), s0.params()[0].value.ncols());
    let flow = Flow::<f64>::builder(shape)
        .then(Squeeze::new(1, 4, 4).unwrap())
        .then(ExactLinear::from_parts(common::well_conditioned(16, 0.3, &mut rng(50)), Some(gaussian(16, 1, 0.1, &mut rng(51)))).unwrap())
        .then(Split::from_parts(Shape::image(4, 2, 2), gaussian(kr, kc, 0.2, &mut rng(52)), gaussian(4, 1, 0.2, &mut rng(53))).unwrap())
        .then(SmoothLeakyRelu::new(0.3).unwrap())
        .then(ExactLinear::from_parts(common::well_conditioned(8, 0.3, &mut rng(54)), Some(gaussian(8, 1, 0.1, &mut rng(55)))).unwrap())
        .build()
        .unwrap();
    assert_eq!(flow.shape_at(3), Some(Shape::image(2, 2, 2)));
    let b = 3;
    let x = gaussian(16, b, 1.0, &mut rng(56));
    let mut ws = flow.workspace(b, Par::Seq).unwrap();
    let (mut z, mut ld, mut lp) = (Mat::zeros(16, b), vec![0.0; b], vec![0.0; b]);
    flow.forward(x.as_ref(), z.as_mut(), &mut ld, &mut ws).unwrap();
    flow.log_prob(x.as_ref(), &mut ws, &mut lp).unwrap();
    let h = 1e-5;
    let zmap = |xx: &Mat<f64>| {
        let mut w = flow.workspace(1, Par::Seq).unwrap();
        let (mut zz, mut l) = (Mat::zeros(16, 1), vec![0.0]);
        flow.forward(xx.as_ref(), zz.as_mut(), &mut l, &mut w).unwrap();
        zz
    };
    for j in 0..b {
        let col = x.as_ref().subcols(j, 1).to_owned();
        let mut jac = nalgebra::DMatrix::zeros(16, 16);
        for c in 0..16 {
            let (mut p, mut m) = (col.clone(), col.clone());
            p[(c, 0)] += h;
            m[(c, 0)] -= h;
            let (zp, zm) = (zmap(&p), zmap(&m));
            for r in 0..16 {
                jac[(r, c)] = (zp[(r, 0)] - zm[(r, 0)]) / (2.0 * h);
            }
        }
        let want = jac.determinant().abs().ln();
        assert!(close(ld[j], want, 1e-6), "log-det {} vs dense {want}", ld[j]);
        let normal = -0.5 * (0..16).map(|i| z[(i, j)] * z[(i, j)]).sum::<f64>() - 8.0 * (2.0 * std::f64::consts::PI).ln();
        assert!(close(lp[j], normal + want, 1e-6), "log p {} vs {}", lp[j], normal + want);
    }
    let mut back = Mat::zeros(16, b);
    flow.inverse(z.as_ref(), back.as_mut(), &mut ws, Inverse::Exact).unwrap();
    assert!(common::max_abs_diff(back.as_ref(), x.as_ref()) < 1e-10);
    // gradients of -mean log p with respect to every parameter
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
    let loss = |f: &Flow<f64>| {
        let mut w = f.workspace(b, Par::Seq).unwrap();
        let mut l = vec![0.0; b];
        f.log_prob(x.as_ref(), &mut w, &mut l).unwrap();
        -l.iter().sum::<f64>() / b as f64
    };
    for k in [1usize, 2, 4] {
        let blocks: Vec<Mat<f64>> = grads.layers[k].blocks().into_iter().map(|m| m.to_owned()).collect();
        for (pi, g) in blocks.iter().enumerate() {
            for jj in 0..g.ncols() {
                for ii in (0..g.nrows()).step_by(3) {
                    let (mut fp, mut fm) = (flow.clone(), flow.clone());
                    fp.layers_mut()[k].params_mut()[pi][(ii, jj)] += h;
                    fm.layers_mut()[k].params_mut()[pi][(ii, jj)] -= h;
                    let fd = (loss(&fp) - loss(&fm)) / (2.0 * h);
                    assert!(close(g[(ii, jj)], fd, 1e-6), "layer {k} block {pi} [{ii}, {jj}]: {} vs {fd}", g[(ii, jj)]);
                }
            }
        }
    }
    // sampling draws a full-size latent and maps it back
    let mut s = Mat::zeros(16, 2);
    flow.sample(&mut rng(57), s.as_mut(), &mut ws, Inverse::Exact).unwrap();
    assert!(common::max_abs(s.as_ref()).is_finite());
}
