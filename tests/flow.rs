//! Flows: the log-likelihood against a brute-force dense Jacobian, whole-model gradients
//! (exact baseline and the exact Eq. 3 gradient of a self-normalizing flow) against
//! central differences, the SNF sweep against its per-layer definition, and inverses.

mod common;

use common::{gaussian, rng};
use faer::{Mat, Par};
use nalgebra::{DMatrix, DVector};
use snf::activation::{ScalarBijection, SmoothLeakyRelu};
use snf::flow::{Flow, Inverse, Preprocess};
use snf::layers::linear::{ExactLinear, ExactLinearGrads, LinearGrads, SelfNormLinear};
use snf::transform::Transform;
use snf::Shape;

/// Box a transform for `Flow::new`.
fn bx<L: Transform<f64>>(l: L) -> Box<dyn Transform<f64>> {
    Box::new(l)
}

const LN_2PI: f64 = 1.8378770664093453;

fn slr() -> SmoothLeakyRelu {
    SmoothLeakyRelu::new(0.3).unwrap()
}

/// A layer with W = I + s G / sqrt(D), R = W^{-1} + e noise, bias N(0, 0.1^2).
fn snf_linear(d: usize, s: f64, e: f64, seed: u64) -> SelfNormLinear<f64> {
    let w = common::well_conditioned(d, s, &mut rng(seed));
    let winv = common::from_na(&common::to_na(w.as_ref()).try_inverse().unwrap());
    let n = gaussian(d, d, e / (d as f64).sqrt(), &mut rng(seed + 1));
    let r = Mat::from_fn(d, d, |i, j| winv[(i, j)] + n[(i, j)]);
    SelfNormLinear::from_parts(w, r, Some(gaussian(d, 1, 0.1, &mut rng(seed + 2)))).unwrap()
}

/// The map x -> f(x) of the flow in plain nalgebra, for the brute-force oracle
/// (preprocess, linear W1 + b1, SLR, linear W2 + b2).
struct Oracle {
    w: Vec<DMatrix<f64>>,
    b: Vec<DVector<f64>>,
    alpha: f64,
}

impl Oracle {
    fn preprocess(&self, y: &DVector<f64>) -> DVector<f64> {
        y.map(|v| {
            let s = self.alpha + (1.0 - 2.0 * self.alpha) * v / 256.0;
            (s / (1.0 - s)).ln()
        })
    }
    fn f(&self, y: &DVector<f64>) -> DVector<f64> {
        let h = self.preprocess(y);
        let h = &self.w[0] * h + &self.b[0];
        let h = h.map(|v| slr().value(v));
        &self.w[1] * h + &self.b[1]
    }
    /// log N(f(y)) + log|det J_f(y)| with J by central differences and nalgebra's det.
    fn log_prob(&self, y: &DVector<f64>) -> f64 {
        let d = y.len();
        let z = self.f(y);
        let h = 1e-4;
        let mut jac = DMatrix::zeros(d, d);
        for c in 0..d {
            let (mut p, mut m) = (y.clone(), y.clone());
            p[c] += h;
            m[c] -= h;
            jac.set_column(c, &((self.f(&p) - self.f(&m)) / (2.0 * h)));
        }
        -0.5 * z.dot(&z) - 0.5 * d as f64 * LN_2PI + jac.determinant().abs().ln()
    }
}

fn pixels(d: usize, b: usize, seed: u64) -> Mat<f64> {
    let u = gaussian(d, b, 1.0, &mut rng(seed));
    Mat::from_fn(d, b, |i, j| 128.0 + 60.0 * u[(i, j)].tanh())
}

/// A 2-layer flow's log-likelihood equals log p_Z + log|det J| computed by brute force
/// (dense Jacobian by central differences, h = 1e-4: truncation error ~h^2 |f'''| ~ 1e-8
/// relative in each entry, so ~1e-7 in log|det| for D = 6; tolerance 1e-5).
#[test]
fn log_prob_matches_a_dense_jacobian() {
    let d = 6;
    let (l1, l2) = (snf_linear(d, 0.4, 0.0, 1), snf_linear(d, 0.4, 0.0, 4));
    let oracle = Oracle {
        w: vec![common::to_na(l1.w()), common::to_na(l2.w())],
        b: vec![common::to_na(l1.bias().unwrap()).column(0).into(), common::to_na(l2.bias().unwrap()).column(0).into()],
        alpha: 1e-6,
    };
    let flow = Flow::new(Shape::flat(d), vec![bx(Preprocess::new(1e-6).unwrap()), bx(l1), bx(slr()), bx(l2)]).unwrap();
    let y = pixels(d, 4, 7);
    let mut ws = flow.workspace(4, Par::Seq).unwrap();
    let sld = flow.static_log_det(&mut ws).unwrap();
    let mut lp = vec![0.0; 4];
    flow.log_prob_given(y.as_ref(), sld, &mut ws, &mut lp).unwrap();
    for (j, got) in lp.iter().enumerate() {
        let want = oracle.log_prob(&common::to_na(y.as_ref()).column(j).into());
        assert!((got - want).abs() < 1e-5, "column {j}: {got} vs brute force {want}");
    }
}

/// The exact-baseline flow's gradients (every layer exact) against central differences
/// of -mean log p computed by the brute-force oracle.
#[test]
fn exact_baseline_gradients_match_finite_differences() {
    let d = 5;
    let mut g = rng(11);
    let l1 = ExactLinear::<f64>::new(d, true, &mut g).unwrap();
    let l2 = ExactLinear::<f64>::new(d, true, &mut g).unwrap();
    // perturb away from the identity so the test is not trivially symmetric
    let w1 = common::well_conditioned(d, 0.4, &mut rng(12));
    let w2 = common::well_conditioned(d, 0.4, &mut rng(13));
    let (b1, b2) = (gaussian(d, 1, 0.1, &mut rng(14)), gaussian(d, 1, 0.1, &mut rng(15)));
    let mut flow = Flow::new(Shape::flat(d), vec![bx(Preprocess::new(1e-6).unwrap()), bx(l1), bx(slr()), bx(l2)]).unwrap();
    // set the parameters through the optimiser-facing API: params_with_grads gives &mut
    {
        let layers = flow.layers_mut();
        for (k, (w, b)) in [(1usize, (&w1, &b1)), (3, (&w2, &b2))] {
            if let Some(l) = (&mut *layers[k] as &mut dyn std::any::Any).downcast_mut::<ExactLinear<f64>>() {
                let zg = l.zero_grads();
                let mut it = l.params_with_grads(&zg).unwrap();
                it.next().unwrap().0.copy_from(w.as_ref());
                it.next().unwrap().0.copy_from(b.as_ref());
            }
        }
    }
    let y = pixels(d, 3, 16);
    let mut ws = flow.workspace(3, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(y.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
    let yn = common::to_na(y.as_ref());
    let loss = |w1: &DMatrix<f64>, b1: &DMatrix<f64>, w2: &DMatrix<f64>, b2: &DMatrix<f64>| {
        let o = Oracle { w: vec![w1.clone(), w2.clone()], b: vec![b1.column(0).into(), b2.column(0).into()], alpha: 1e-6 };
        -(0..3).map(|j| o.log_prob(&yn.column(j).into())).sum::<f64>() / 3.0
    };
    let (w1n, b1n, w2n, b2n) = (common::to_na(w1.as_ref()), common::to_na(b1.as_ref()), common::to_na(w2.as_ref()), common::to_na(b2.as_ref()));
    // the oracle's own Jacobian is a finite difference, so use a coarser outer step:
    // h = 1e-3 with the inner h = 1e-4: errors ~1e-6; tolerance 1e-4 (wrong terms are O(0.1))
    let h = 1e-3;
    let fd_w1 = common::central_diff(&w1n, h, |w| loss(w, &b1n, &w2n, &b2n));
    let fd_b2 = common::central_diff(&b2n, h, |b| loss(&w1n, &b1n, &w2n, b));
    let (g1, g2) = (grads.layers[1].downcast_ref::<ExactLinearGrads<f64>>().unwrap(), grads.layers[3].downcast_ref::<ExactLinearGrads<f64>>().unwrap());
    assert!(common::max_abs_diff(g1.w.as_ref(), common::from_na(&fd_w1).as_ref()) < 1e-4);
    assert!(common::max_abs_diff(g2.b.as_ref().unwrap().as_ref(), common::from_na(&fd_b2).as_ref()) < 1e-4);
}

/// Eq. 3 for a 2-layer self-normalizing flow by brute force: 1/2 log p^f + 1/2 log p^g minus
/// lambda sum_k |R_k W_k h_k - h_k|^2 (h_k the f-chain input of layer k, held fixed), with
/// p^g through the exact inverse of the learned inverse; `exact_gradients` against central
/// differences of it, for every parameter block.
#[test]
fn exact_eq3_gradients_of_a_snf_flow_match_finite_differences() {
    let d = 4;
    let lambda = 0.7;
    let (l1, l2) = (snf_linear(d, 0.4, 0.2, 21), snf_linear(d, 0.4, 0.2, 24));
    let flow = Flow::new(Shape::flat(d), vec![bx(l1.clone()), bx(slr()), bx(l2.clone())]).unwrap();
    let x = gaussian(d, 3, 1.0, &mut rng(27));
    let mut ws = flow.exact_workspace(3, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.exact_gradients(x.as_ref(), &mut grads, &mut ws, lambda).unwrap();
    let xn = common::to_na(x.as_ref());
    let dense_logdet = |f: &dyn Fn(&DVector<f64>) -> DVector<f64>, v: &DVector<f64>| {
        let h = 1e-5;
        let mut jac = DMatrix::zeros(d, d);
        for c in 0..d {
            let (mut p, mut m) = (v.clone(), v.clone());
            p[c] += h;
            m[c] -= h;
            jac.set_column(c, &((f(&p) - f(&m)) / (2.0 * h)));
        }
        jac.determinant().abs().ln()
    };
    let lnn = |z: &DVector<f64>| -0.5 * z.dot(z) - 0.5 * d as f64 * LN_2PI;
    // params: [W1, R1, b1, W2, R2, b2]; the reconstruction inputs are the f-chain
    // activations at the *unperturbed* parameters (stop-gradient)
    let p0: Vec<DMatrix<f64>> = vec![
        common::to_na(l1.w()),
        common::to_na(l1.r()),
        common::to_na(l1.bias().unwrap()),
        common::to_na(l2.w()),
        common::to_na(l2.r()),
        common::to_na(l2.bias().unwrap()),
    ];
    let h_stop: Vec<(DVector<f64>, DVector<f64>)> = (0..3)
        .map(|j| {
            let x0: DVector<f64> = xn.column(j).into();
            let h1 = (&p0[0] * &x0 + p0[2].column(0)).map(|v| slr().value(v));
            (x0, h1)
        })
        .collect();
    let objective = |p: &[DMatrix<f64>]| -> f64 {
        let (w1, r1, b1, w2, r2, b2) = (&p[0], &p[1], p[2].column(0).into_owned(), &p[3], &p[4], p[5].column(0).into_owned());
        let f = |v: &DVector<f64>| -> DVector<f64> { w2 * (w1 * v + &b1).map(|t| slr().value(t)) + &b2 };
        let r1i = r1.clone().try_inverse().unwrap();
        let r2i = r2.clone().try_inverse().unwrap();
        let ginv = |v: &DVector<f64>| -> DVector<f64> { &r2i * (&r1i * v + &b1).map(|t| slr().value(t)) + &b2 };
        let mut total = 0.0;
        for (j, (x0, h1)) in h_stop.iter().enumerate() {
            let _ = j;
            let lpf = lnn(&f(x0)) + dense_logdet(&f, x0);
            let lpg = lnn(&ginv(x0)) + dense_logdet(&ginv, x0);
            let e1 = r1 * (w1 * x0) - x0;
            let e2 = r2 * (w2 * h1) - h1;
            total += 0.5 * lpf + 0.5 * lpg - lambda * (e1.dot(&e1) + e2.dot(&e2));
        }
        -total / 3.0
    };
    let (g1, g2) = (grads.layers[0].downcast_ref::<LinearGrads<f64>>().unwrap(), grads.layers[2].downcast_ref::<LinearGrads<f64>>().unwrap());
    let analytic = [g1.w(), g1.r(), g1.b().unwrap(), g2.w(), g2.r(), g2.b().unwrap()];
    for (k, a) in analytic.iter().enumerate() {
        let fd = common::central_diff(&p0[k], 1e-3, |m| {
            let mut p = p0.clone();
            p[k] = m.clone();
            objective(&p)
        });
        // nested differences (inner Jacobian h = 1e-5, outer h = 1e-3): ~1e-6 error;
        // tolerance 1e-4, while a missing term (a transpose, a half, the g-chain) is O(0.1)
        let err = common::max_abs_diff(*a, common::from_na(&fd).as_ref());
        assert!(err < 1e-4, "block {k}: max error {err:e}");
    }
}

/// The self-normalizing sweep equals running each layer's own SNF backward with the
/// delta the next layer hands down (a check of the plumbing: order, buffers, ping-pong).
#[test]
fn snf_sweep_matches_layer_by_layer_backward() {
    use snf::layers::linear::LinearWorkspace;
    let d = 5;
    let (l1, l2) = (snf_linear(d, 0.3, 0.1, 31), snf_linear(d, 0.3, 0.1, 34));
    let flow = Flow::new(Shape::flat(d), vec![bx(l1.clone()), bx(slr()), bx(l2.clone())]).unwrap();
    let x = gaussian(d, 4, 1.0, &mut rng(37));
    let mut ws = flow.workspace(4, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    let stats = flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.3).unwrap();
    // by hand
    let (mut w1, mut w2) = (LinearWorkspace::new(d, 4, Par::Seq).unwrap(), LinearWorkspace::new(d, 4, Par::Seq).unwrap());
    let (mut h1, mut a1, mut z) = (Mat::zeros(d, 4), Mat::zeros(d, 4), Mat::zeros(d, 4));
    l1.forward(x.as_ref(), h1.as_mut(), &mut w1).unwrap();
    snf::activation::forward(&slr(), h1.as_ref(), a1.as_mut(), &mut [0.0; 4], Par::Seq).unwrap();
    l2.forward(a1.as_ref(), z.as_mut(), &mut w2).unwrap();
    let dz = Mat::from_fn(d, 4, |i, j| -z[(i, j)]);
    let (mut da1, mut dh1, mut dx) = (Mat::zeros(d, 4), Mat::zeros(d, 4), Mat::zeros(d, 4));
    let (mut g1, mut g2) = (l1.zero_grads(), l2.zero_grads());
    let s2 = l2.backward(a1.as_ref(), dz.as_ref(), da1.as_mut(), &mut g2, &mut w2, 1.3).unwrap();
    snf::activation::backward(&slr(), h1.as_ref(), da1.as_ref(), dh1.as_mut(), Par::Seq).unwrap();
    let s1 = l1.backward(x.as_ref(), dh1.as_ref(), dx.as_mut(), &mut g1, &mut w1, 1.3).unwrap();
    let (f1, f2) = (grads.layers[0].downcast_ref::<LinearGrads<f64>>().unwrap(), grads.layers[2].downcast_ref::<LinearGrads<f64>>().unwrap());
    assert_eq!(f1, &g1);
    assert_eq!(f2, &g2);
    assert!((stats.reconstruction_error - s1.reconstruction_error - s2.reconstruction_error).abs() < 1e-15);
}

/// inverse(forward(x)) = x through the exact inverse, and through the learned one when
/// R = W^{-1}; the learned inverse of an imperfect R differs (so the flag matters).
#[test]
fn inverses_round_trip() {
    let d = 6;
    for (e, learned_exact) in [(0.0, true), (0.05, false)] {
        let (l1, l2) = (snf_linear(d, 0.3, e, 41), snf_linear(d, 0.3, e, 44));
        let flow = Flow::new(Shape::flat(d), vec![bx(Preprocess::new(1e-6).unwrap()), bx(l1), bx(slr()), bx(l2)]).unwrap();
        let y = pixels(d, 3, 47);
        let mut ws = flow.workspace(3, Par::Seq).unwrap();
        // z = f(y) through the public forward pass, with its log-det
        let (mut z, mut ld) = (Mat::zeros(d, 3), vec![0.0; 3]);
        flow.forward(y.as_ref(), z.as_mut(), &mut ld, &mut ws).unwrap();
        let mut lp = vec![0.0; 3];
        flow.log_prob(y.as_ref(), &mut ws, &mut lp).unwrap();
        for j in 0..3 {
            // log p(y) = log N(z) + log|det J|: the forward pass's log-det is the full one
            let want = -0.5 * (0..d).map(|i| z[(i, j)] * z[(i, j)]).sum::<f64>() - 0.5 * d as f64 * LN_2PI + ld[j];
            assert!((lp[j] - want).abs() < 1e-9 * want.abs().max(1.0), "forward log-det vs log_prob");
        }
        let mut tmp = flow.workspace(3, Par::Seq).unwrap();
        let mut back = Mat::zeros(d, 3);
        flow.inverse(z.as_ref(), back.as_mut(), &mut tmp, Inverse::Exact).unwrap();
        // preprocessing maps (0, 256) to logits of size ~20 at alpha = 1e-6; cond of the
        // layers < 10: round trip to ~1e-10 in pixel units
        assert!(common::max_abs_diff(back.as_ref(), y.as_ref()) < 1e-8, "exact inverse");
        flow.inverse(z.as_ref(), back.as_mut(), &mut tmp, Inverse::Learned).unwrap();
        let err = common::max_abs_diff(back.as_ref(), y.as_ref());
        if learned_exact {
            assert!(err < 1e-8, "learned inverse with R = W^-1: {err:e}");
        } else {
            assert!(err > 1e-3, "an imperfect learned inverse must differ: {err:e}");
        }
    }
}

#[test]
fn construction_errors_are_typed() {
    let l = snf_linear(4, 0.3, 0.0, 51);
    assert!(Flow::<f64>::new(Shape::flat(4), vec![]).is_err());
    assert!(Flow::new(Shape::flat(5), vec![bx(l.clone())]).is_err());
    assert!(Preprocess::new(0.5).is_err() && Preprocess::new(-0.1).is_err());
    let flow = Flow::new(Shape::flat(4), vec![bx(l)]).unwrap();
    let mut ws = flow.workspace(2, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    // batch too large, wrong dimension, no exact buffers
    assert!(flow.gradients(Mat::<f64>::zeros(4, 3).as_ref(), &mut grads, &mut ws, 1.0).is_err());
    assert!(flow.gradients(Mat::<f64>::zeros(3, 2).as_ref(), &mut grads, &mut ws, 1.0).is_err());
    assert!(flow.exact_gradients(Mat::<f64>::zeros(4, 2).as_ref(), &mut grads, &mut ws, 1.0).is_err());
    // preprocessing rejects values outside (0, 256)
    let p = Flow::new(Shape::flat(4), vec![bx(Preprocess::new(0.0).unwrap())]).unwrap();
    let mut pws = p.workspace(1, Par::Seq).unwrap();
    let bad = Mat::from_fn(4, 1, |i, _| if i == 0 { 256.0 } else { 3.0 });
    assert!(p.log_prob(bad.as_ref(), &mut pws, &mut [0.0]).is_err());
}

/// Squeeze: the index map on a labelled 2x4x4 image (Glow's channel order), the inverse,
/// and gradients flowing through it (a flow with a squeeze between two exact layers: the
/// gradient of -mean log p against central differences of the flow's own log_prob).
#[test]
fn squeeze_permutes_and_passes_gradients() {
    use snf::flow::Squeeze;
    let s = Squeeze::new(2, 4, 4).unwrap();
    assert_eq!(s.out_shape(), [8, 2, 2]);
    let x = Mat::from_fn(32, 1, |i, _| i as f64);
    let mut z = Mat::zeros(32, 1);
    s.forward(x.as_ref(), z.as_mut()).unwrap();
    // out[4c + 2a + b, y, x'] = in[c, 2y + a, 2x' + b]
    for c in 0..2 {
        for a in 0..2 {
            for b in 0..2 {
                for y in 0..2 {
                    for xx in 0..2 {
                        let o = ((4 * c + 2 * a + b) * 2 + y) * 2 + xx;
                        let i = (c * 4 + 2 * y + a) * 4 + 2 * xx + b;
                        assert_eq!(z[(o, 0)], i as f64);
                    }
                }
            }
        }
    }
    let mut back = Mat::zeros(32, 1);
    s.inverse(z.as_ref(), back.as_mut()).unwrap();
    assert_eq!(back, x);
    assert!(Squeeze::new(1, 3, 4).is_err() && Squeeze::new(0, 2, 2).is_err());

    let d = 16;
    let mut g = rng(61);
    let l1 = ExactLinear::<f64>::new(d, true, &mut g).unwrap();
    let l2 = ExactLinear::<f64>::new(d, true, &mut g).unwrap();
    let mut flow = Flow::new(Shape::flat(d), vec![bx(l1), bx(slr()), bx(Squeeze::new(1, 4, 4).unwrap()), bx(l2)]).unwrap();
    let w = common::well_conditioned(d, 0.4, &mut rng(62));
    if let Some(l) = flow.layer_mut::<ExactLinear<f64>>(0) {
        let zg = l.zero_grads();
        l.params_with_grads(&zg).unwrap().next().unwrap().0.copy_from(w.as_ref());
    }
    let x = gaussian(d, 3, 1.0, &mut rng(63));
    let mut ws = flow.workspace(3, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
    let g1 = grads.layers[0].downcast_ref::<ExactLinearGrads<f64>>().unwrap();
    let loss = |w: &DMatrix<f64>| {
        let mut f2 = flow.clone();
        if let Some(l) = f2.layer_mut::<ExactLinear<f64>>(0) {
            let zg = l.zero_grads();
            l.params_with_grads(&zg).unwrap().next().unwrap().0.copy_from(common::from_na(w).as_ref());
        }
        let mut ws = f2.workspace(3, Par::Seq).unwrap();
        let sld = f2.static_log_det(&mut ws).unwrap();
        let mut lp = vec![0.0; 3];
        f2.log_prob_given(x.as_ref(), sld, &mut ws, &mut lp).unwrap();
        -lp.iter().sum::<f64>() / 3.0
    };
    let fd = common::central_diff(&common::to_na(w.as_ref()), 1e-5, loss);
    // smooth loss of O(10), h = 1e-5: error ~1e-9; a wrong permutation of the delta is O(0.1)
    assert!(common::max_abs_diff(g1.w.as_ref(), common::from_na(&fd).as_ref()) < 1e-6);
}

/// Sampling: with R = W^{-1} the exact- and learned-inverse samples of the same base draws
/// agree, and both lie in the pixel range of the preprocessing.
#[test]
fn samples_map_back_to_their_base_draws() {
    let d = 6;
    let flow = Flow::new(Shape::flat(d), vec![bx(Preprocess::new(1e-6).unwrap()), bx(snf_linear(d, 0.3, 0.0, 71)), bx(slr()), bx(snf_linear(d, 0.3, 0.0, 74))])
        .unwrap();
    let mut ws = flow.workspace(5, Par::Seq).unwrap();
    let (mut a, mut b) = (Mat::zeros(d, 5), Mat::zeros(d, 5));
    flow.sample(&mut rng(77), a.as_mut(), &mut ws, Inverse::Exact).unwrap();
    flow.sample(&mut rng(77), b.as_mut(), &mut ws, Inverse::Learned).unwrap();
    assert!(common::max_abs_diff(a.as_ref(), b.as_ref()) < 1e-8);
    assert!((0..5).all(|j| (0..d).all(|i| a[(i, j)] > -1e-6 && a[(i, j)] < 256.0 + 1e-6)), "pixel range");
}

/// A spline between two exact layers: the flow's gradients (spline parameters included)
/// against central differences of its own -mean log p; and the conv 9-layer model builds
/// with the paper's layout.
#[test]
fn spline_layer_gradients_and_the_conv_model() {
    use snf::activation::{SplineActivation, SplineConfig};
    let d = 5;
    let mut g = rng(81);
    let cfg = SplineConfig::default();
    let sp = SplineActivation::from_parts(
        cfg,
        gaussian(cfg.bins, d, 0.5, &mut rng(82)),
        gaussian(cfg.bins, d, 0.5, &mut rng(83)),
        Mat::from_fn(cfg.bins - 1, d, |_, _| cfg.unit_derivative_param() + 0.3),
    )
    .unwrap();
    let flow =
        Flow::new(Shape::flat(d), vec![bx(ExactLinear::<f64>::new(d, true, &mut g).unwrap()), bx(sp.clone()), bx(ExactLinear::new(d, true, &mut g).unwrap())])
            .unwrap();
    let x = gaussian(d, 4, 2.0, &mut rng(84));
    let mut ws = flow.workspace(4, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
    let gs = grads.layers[1].downcast_ref::<snf::activation::SplineGrads<f64>>().unwrap();
    let loss = |h: &Mat<f64>| {
        let s2 = SplineActivation::from_parts(cfg, sp_w(&sp), h.clone(), sp_d(&sp)).unwrap();
        let mut f2 = flow.clone();
        f2.layers_mut()[1] = bx(s2);
        let mut ws = f2.workspace(4, Par::Seq).unwrap();
        let sld = f2.static_log_det(&mut ws).unwrap();
        let mut lp = vec![0.0; 4];
        f2.log_prob_given(x.as_ref(), sld, &mut ws, &mut lp).unwrap();
        -lp.iter().sum::<f64>() / 4.0
    };
    let h0 = sp_h(&sp);
    let fd = common::central_diff(&common::to_na(h0.as_ref()), 1e-6, |m| loss(&common::from_na(m)));
    assert!(common::max_abs_diff(gs.h.as_ref(), common::from_na(&fd).as_ref()) < 1e-6);
    assert!(common::max_abs(gs.h.as_ref()) > 1e-4);

    let conv = snf::flow::models::conv_nine_layer::<f32, _>(snf::data::mnist::SHAPE, snf::flow::models::Gradient::SelfNormalizing, &mut rng(85)).unwrap();
    let names: Vec<&str> = conv.layers().iter().map(|l| l.kind()).collect();
    assert_eq!(names.iter().filter(|n| **n == "snf-conv").count(), 9);
    assert_eq!(names.iter().filter(|n| **n == "spline").count(), 8);
    assert_eq!(names.iter().filter(|n| **n == "squeeze").count(), 2);
    assert_eq!(conv.dim(), 784);
}

fn sp_parts(sp: &snf::activation::SplineActivation<f64>) -> (Mat<f64>, Mat<f64>, Mat<f64>) {
    let mut s = sp.clone();
    let zg = s.zero_grads();
    let mut it = s.params_with_grads(&zg).unwrap();
    (it.next().unwrap().0.to_owned(), it.next().unwrap().0.to_owned(), it.next().unwrap().0.to_owned())
}
fn sp_w(sp: &snf::activation::SplineActivation<f64>) -> Mat<f64> {
    sp_parts(sp).0
}
fn sp_h(sp: &snf::activation::SplineActivation<f64>) -> Mat<f64> {
    sp_parts(sp).1
}
fn sp_d(sp: &snf::activation::SplineActivation<f64>) -> Mat<f64> {
    sp_parts(sp).2
}
