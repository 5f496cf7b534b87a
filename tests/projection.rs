//! The projection fit of the self-normalizing linear layer (`proofs/projection.md`):
//! the step against a closed-form nalgebra oracle, its contraction and convergence, the
//! gradient it trains W with, and its life cycle in a flow and a checkpoint.

mod common;

use common::{from_na, gaussian, max_abs, max_abs_diff, rng, to_na, well_conditioned};
use faer::{Mat, MatRef, Par};
use nalgebra::DMatrix;
use proptest::prelude::*;
use snf::layers::linear::{ExactLinear, ExactLinearWorkspace, InverseFit, LinearWorkspace, Projection, SelfNormLinear};

fn fit(relax: f64, ridge: f64) -> InverseFit {
    InverseFit::Projection(Projection { relax, ridge })
}

/// A layer with the given W and R, a bias, and the projection fit.
fn layer(w: &Mat<f64>, r: &Mat<f64>, f: InverseFit, seed: u64) -> SelfNormLinear<f64> {
    let d = w.nrows();
    let b = gaussian(d, 1, 0.3, &mut rng(seed));
    SelfNormLinear::from_parts(w.clone(), r.clone(), Some(b)).unwrap().with_inverse_fit(f).unwrap()
}

/// One training step's worth of the layer: forward, backward (with delta_z = -z), projection.
/// Returns the gradients' W block and whether a projection was applied.
fn step(l: &mut SelfNormLinear<f64>, x: MatRef<'_, f64>, ws: &mut LinearWorkspace<f64>, lambda: f64) -> (Mat<f64>, Mat<f64>, bool) {
    let (d, b) = (x.nrows(), x.ncols());
    let mut z = Mat::zeros(d, b);
    l.forward(x, z.as_mut(), ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(d, b);
    let mut g = l.zero_grads();
    l.backward(x, dz.as_ref(), dx.as_mut(), &mut g, ws, lambda).unwrap();
    let applied = l.apply_projection(ws).unwrap();
    (g.w().to_owned(), g.r().to_owned(), applied)
}

/// The oracle: R - mu E (U^T U + rho I)^{-1} U^T with U = W X, E = R U - X,
/// rho = ridge tr(U^T U) / B.
fn oracle(w: &Mat<f64>, r: &Mat<f64>, x: &Mat<f64>, relax: f64, ridge: f64) -> Mat<f64> {
    let (w, r, x) = (to_na(w.as_ref()), to_na(r.as_ref()), to_na(x.as_ref()));
    let u = &w * &x;
    let e = &r * &u - &x;
    let g = u.transpose() * &u;
    let rho = ridge * g.trace() / x.ncols() as f64;
    let gi = (g + DMatrix::identity(x.ncols(), x.ncols()) * rho).try_inverse().unwrap();
    from_na(&(r - e * gi * u.transpose() * relax))
}

fn residual(l: &SelfNormLinear<f64>, x: &Mat<f64>) -> f64 {
    let (w, r, x) = (to_na(l.w()), to_na(l.r()), to_na(x.as_ref()));
    (r * w * &x - x).norm()
}

#[test]
fn the_step_is_the_closed_form_one() {
    // B < D (the FC model's case) and B > D (low-dimensional data), relax 1 and 0.6
    for (d, b, relax, ridge) in [(9, 4, 1.0, 1e-3), (6, 11, 0.6, 1e-2), (5, 5, 1.4, 1e-4)] {
        let mut g = rng(10 + d as u64);
        let w = well_conditioned(d, 0.3, &mut g);
        let r = well_conditioned(d, 0.3, &mut g);
        let x = gaussian(d, b, 1.5, &mut g);
        let mut l = layer(&w, &r, fit(relax, ridge), 1);
        let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap().with_projection().unwrap();
        let (_, _, applied) = step(&mut l, x.as_ref(), &mut ws, 1.0);
        assert!(applied);
        let want = oracle(&w, &r, &x, relax, ridge);
        // f64 with condition numbers below ~1e4: agreement to ~1e-12 of the entries' size (1)
        let err = max_abs_diff(l.r(), want.as_ref());
        assert!(err < 1e-10, "d={d} b={b}: |R - oracle| = {err:e}");
        // the step moved R by a non-trivial amount, so the comparison can fail
        assert!(max_abs_diff(r.as_ref(), want.as_ref()) > 1e-3);
        // W and b are the optimiser's: the projection leaves them alone
        assert_eq!(l.w(), w.as_ref());
    }
}

#[test]
fn a_full_step_reconstructs_the_batch() {
    // relax 1 and a tiny ridge: with B <= D the batch residual is removed, up to
    // rho / sigma_min(G) = 1e-10 * cond(G) (G = U^T U of 4 independent Gaussian columns)
    let (d, b) = (12, 4);
    let mut g = rng(3);
    let (w, r) = (well_conditioned(d, 0.3, &mut g), well_conditioned(d, 0.3, &mut g));
    let x = gaussian(d, b, 1.0, &mut g);
    let mut l = layer(&w, &r, fit(1.0, 1e-10), 2);
    let before = residual(&l, &x);
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    step(&mut l, x.as_ref(), &mut ws, 1.0);
    let after = residual(&l, &x);
    assert!(before > 0.1, "the batch was already reconstructed ({before})");
    assert!(after < 1e-7 * before, "residual {before:e} -> {after:e}");
}

#[test]
fn repeated_steps_converge_to_the_inverse_for_a_fixed_w() {
    // block Kaczmarz on R W = I: fresh batches of 3 Gaussian examples in D = 8, W fixed.
    // Each step removes the residual on a random 3-dimensional subspace; after 300 steps
    // the error contracts by ~ (1 - 3/8)^300 ~ 1e-61, floored by the ridge (1e-8).
    let (d, b) = (8, 3);
    let mut g = rng(7);
    let w = well_conditioned(d, 0.35, &mut g);
    let r = Mat::<f64>::identity(d, d);
    let mut l = layer(&w, &r, fit(1.0, 1e-8), 4);
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    let err = |l: &SelfNormLinear<f64>| (to_na(l.r()) * to_na(l.w()) - DMatrix::identity(d, d)).norm();
    let start = err(&l);
    for _ in 0..300 {
        let x = gaussian(d, b, 1.0, &mut g);
        step(&mut l, x.as_ref(), &mut ws, 1.0);
    }
    assert!(start > 0.5);
    assert!(err(&l) < 1e-6, "|RW - I| = {:e} after 300 steps (from {start})", err(&l));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The batch residual never grows: E_new = E (I - mu (G + rho I)^{-1} G), whose right
    /// factor is symmetric with eigenvalues 1 - mu s/(s + rho) in (-1, 1] for mu in (0, 2).
    /// Tolerance 1e-9 relative: f64 round-off of products of O(1) matrices. A step in the
    /// wrong direction (or a relaxation past 2) grows it and fails.
    #[test]
    fn the_batch_residual_never_grows(seed in 0u64..10_000, relax in 0.05f64..1.95, ridge_exp in -8.0f64..0.0, d in 2usize..10, b in 1usize..14) {
        let mut g = rng(seed);
        let (w, r) = (well_conditioned(d, 0.35, &mut g), well_conditioned(d, 0.35, &mut g));
        let x = gaussian(d, b, 2.0, &mut g);
        let mut l = layer(&w, &r, fit(relax, 10f64.powf(ridge_exp)), seed);
        let before = residual(&l, &x);
        let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
        step(&mut l, x.as_ref(), &mut ws, 1.0);
        prop_assert!(residual(&l, &x) <= before * (1.0 + 1e-9) + 1e-12);
    }
}

#[test]
fn w_is_trained_on_the_plain_likelihood_with_r_for_the_inverse() {
    let (d, b) = (7, 5);
    let mut g = rng(11);
    let w = well_conditioned(d, 0.3, &mut g);
    let x = gaussian(d, b, 1.0, &mut g);
    let bias = gaussian(d, 1, 0.3, &mut g);
    // with R = W^{-1} the SNF gradient is the exact plain-flow gradient (ExactLinear's,
    // itself checked against finite differences in tests/linear_gradients.rs)
    let r_exact = from_na(&to_na(w.as_ref()).try_inverse().unwrap());
    let mk = |r: &Mat<f64>| SelfNormLinear::from_parts(w.clone(), r.clone(), Some(bias.clone())).unwrap().with_inverse_fit(InverseFit::projection()).unwrap();
    let mut l = mk(&r_exact);
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    let (gw, gr, _) = step(&mut l, x.as_ref(), &mut ws, 1.0);
    let base = ExactLinear::from_parts(w.clone(), Some(bias.clone())).unwrap();
    let ews = ExactLinearWorkspace::new(d, b, Par::Seq).unwrap();
    let mut z = Mat::zeros(d, b);
    base.forward(x.as_ref(), z.as_mut(), &ews).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let (mut dx, mut eg) = (Mat::zeros(d, b), base.zero_grads());
    let mut ews = ews;
    base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut eg, &mut ews).unwrap();
    assert!(max_abs_diff(gw.as_ref(), eg.w.as_ref()) < 1e-12 * max_abs(eg.w.as_ref()).max(1.0), "{:e}", max_abs_diff(gw.as_ref(), eg.w.as_ref()));
    // R is not a parameter of the likelihood here: its gradient block is zero
    assert_eq!(max_abs(gr.as_ref()), 0.0);
    // λ plays no part: the same gradient for λ = 0 and λ = 7
    let r = well_conditioned(d, 0.3, &mut g);
    let (g0, _, _) = step(&mut mk(&r), x.as_ref(), &mut LinearWorkspace::new(d, b, Par::Seq).unwrap(), 0.0);
    let (g7, _, _) = step(&mut mk(&r), x.as_ref(), &mut LinearWorkspace::new(d, b, Par::Seq).unwrap(), 7.0);
    assert_eq!(g0, g7);
    // and with R != W^{-1} it differs from the exact one by exactly R^T - W^{-T}
    let diff = from_na(&(to_na(g0.as_ref()) - to_na(eg.w.as_ref()) + (to_na(r.as_ref()).transpose() - to_na(r_exact.as_ref()).transpose())));
    assert!(max_abs(diff.as_ref()) < 1e-12, "{:e}", max_abs(diff.as_ref()));
}

#[test]
fn the_exact_twin_is_the_plain_flow_gradient() {
    // backward_exact under the projection fit against central finite differences of the
    // plain flow's loss -(1/B) sum log N(Wx + b) - log|det W| (f64; step 1e-6, tolerance
    // 1e-6 relative: the differences' truncation error is O(h^2) ~ 1e-12 times third
    // derivatives of size ~1, their round-off ~1e-16/1e-6 = 1e-10)
    let (d, b) = (5, 6);
    let mut g = rng(21);
    let w = well_conditioned(d, 0.3, &mut g);
    let r = well_conditioned(d, 0.3, &mut g);
    let x = gaussian(d, b, 1.0, &mut g);
    let bias = gaussian(d, 1, 0.2, &mut g);
    let loss = |w: &Mat<f64>| {
        let (wn, xn) = (to_na(w.as_ref()), to_na(x.as_ref()));
        let z = &wn * &xn;
        let mut s = 0.0;
        for j in 0..b {
            for i in 0..d {
                let v = z[(i, j)] + bias[(i, 0)];
                s += -0.5 * v * v - 0.5 * (2.0 * std::f64::consts::PI).ln();
            }
        }
        -(s / b as f64) - wn.determinant().abs().ln()
    };
    let l = SelfNormLinear::from_parts(w.clone(), r, Some(bias.clone())).unwrap().with_inverse_fit(InverseFit::projection()).unwrap();
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap().with_exact().unwrap();
    let mut z = Mat::zeros(d, b);
    l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let mut y = Mat::zeros(d, b);
    l.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let dzg = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
    let (mut dxf, mut dxg, mut grads) = (Mat::zeros(d, b), Mat::zeros(d, b), l.zero_grads());
    l.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut grads, &mut ws, 3.0).unwrap();
    let h = 1e-6;
    for i in 0..d {
        for j in 0..d {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[(i, j)] += h;
            m[(i, j)] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            let got = grads.w()[(i, j)];
            assert!((fd - got).abs() <= 1e-6 * fd.abs().max(1.0), "dW[{i},{j}]: fd {fd} vs {got}");
        }
    }
    assert_eq!(max_abs(grads.r()), 0.0);
}

#[test]
fn the_step_is_applied_once_and_only_for_its_batch() {
    let (d, b) = (6, 4);
    let mut g = rng(5);
    let (w, r) = (well_conditioned(d, 0.3, &mut g), well_conditioned(d, 0.3, &mut g));
    let x = gaussian(d, b, 1.0, &mut g);
    let mut l = layer(&w, &r, InverseFit::projection(), 6);
    let mut ws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
    // nothing pending before a backward pass
    assert!(!l.apply_projection(&mut ws).unwrap());
    let (_, _, applied) = step(&mut l, x.as_ref(), &mut ws, 1.0);
    assert!(applied);
    let after = l.r().to_owned();
    // a second call finds nothing left to apply
    assert!(!l.apply_projection(&mut ws).unwrap());
    assert_eq!(l.r(), after.as_ref());
    // a forward pass between backward and the step voids it (its U belongs to another batch)
    let mut z = Mat::zeros(d, b);
    l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let (mut dx, mut gr) = (Mat::zeros(d, b), l.zero_grads());
    l.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut gr, &mut ws, 1.0).unwrap();
    l.forward(gaussian(d, b, 1.0, &mut g).as_ref(), z.as_mut(), &mut ws).unwrap();
    assert!(!l.apply_projection(&mut ws).unwrap());
    assert_eq!(l.r(), after.as_ref());
    // a batch of zeros has nothing to project on: the backward pass succeeds, R stays
    let zeros = Mat::<f64>::zeros(d, b);
    let (_, _, applied) = step(&mut l, zeros.as_ref(), &mut ws, 1.0);
    assert!(!applied);
    assert_eq!(l.r(), after.as_ref());
    // a penalty layer never projects
    let mut p = layer(&w, &r, InverseFit::Penalty, 6);
    let (_, _, applied) = step(&mut p, x.as_ref(), &mut ws, 1.0);
    assert!(!applied);
    assert_eq!(p.r(), r.as_ref());
}

#[test]
fn bad_settings_are_typed_errors() {
    let l = || SelfNormLinear::<f64>::new(3, true, &mut rng(0)).unwrap();
    for (relax, ridge) in [(0.0, 1e-3), (2.0, 1e-3), (-1.0, 1e-3), (f64::NAN, 1e-3), (1.0, 0.0), (1.0, -1.0), (1.0, f64::INFINITY), (1.0, f64::NAN)] {
        let e = l().with_inverse_fit(fit(relax, ridge)).unwrap_err();
        assert!(matches!(e, snf::Error::InvalidArgument { .. }), "relax {relax} ridge {ridge}: {e:?}");
    }
    assert!(l().with_inverse_fit(fit(1.9, 1e-12)).is_ok());
}

#[test]
fn a_flow_applies_the_step_keeps_the_fit_in_checkpoints_and_has_no_lambda() {
    use snf::checkpoint::Checkpoint;
    use snf::flow::models::{fc_two_layer, fc_two_layer_with, Gradient};
    use snf::flow::Flow;
    use snf::prelude::Shape;
    let shape = Shape::image(1, 4, 4);
    let flow = fc_two_layer::<f64, _>(shape, Gradient::SelfNormalizing, &mut rng(1)).unwrap();
    assert!(!flow.uses_penalty());
    let paper = fc_two_layer_with::<f64, _>(shape, Gradient::SelfNormalizing, InverseFit::Penalty, &mut rng(1)).unwrap();
    assert!(paper.uses_penalty());
    // the fit survives a checkpoint
    let back = Checkpoint::<f64>::from_bytes(&Checkpoint::new(flow.clone()).unwrap().to_bytes().unwrap(), "t").unwrap();
    let fits = |f: &Flow<f64>| (0..f.layers().len()).filter_map(|k| f.layer::<SelfNormLinear<f64>>(k).map(|l| l.inverse_fit())).collect::<Vec<_>>();
    assert_eq!(fits(&back.flow), vec![InverseFit::projection(); 2]);
    assert_eq!(fits(&Checkpoint::<f64>::from_bytes(&Checkpoint::new(paper).unwrap().to_bytes().unwrap(), "t").unwrap().flow), vec![InverseFit::Penalty; 2]);
    // Flow::after_step moves R (and only R) after a gradient pass
    let mut flow = flow;
    let x = Mat::from_fn(16, 8, |i, j| ((i * 7 + j * 13) % 255) as f64 + 0.5);
    let mut ws = flow.workspace(8, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
    let before = flow.clone();
    flow.after_step(&mut ws).unwrap();
    let l1 = |f: &Flow<f64>| f.layer::<SelfNormLinear<f64>>(1).unwrap().clone();
    assert_eq!(l1(&flow).w(), l1(&before).w());
    assert!(max_abs_diff(l1(&flow).r(), l1(&before).r()) > 0.0);
}
