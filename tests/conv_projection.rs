//! The projection fit of the self-normalizing convolution (`proofs/projection.md` §4): the
//! refit against a closed-form nalgebra oracle built from an independent convolution, its
//! monotonicity and convergence, the gradient it trains w with, and its life cycle in a
//! flow and a checkpoint.

mod common;

use common::{gaussian, max_abs, max_abs_diff, naive_conv, rng};
use faer::{Mat, MatRef, Par};
use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use snf::conv::{Conv2dGeometry, Conv2dSpec};
use snf::layers::conv::{ConvWorkspace, ExactConv2d, ExactConv2dWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
use snf::layers::linear::{InverseFit, Projection};

fn fit(relax: f64, ridge: f64) -> InverseFit {
    InverseFit::Projection(Projection { relax, ridge })
}

/// Square, larger inverse, smaller-than-forward inverse, grouped and dilated geometries.
fn configs() -> Vec<SelfNormConv2dConfig> {
    vec![
        SelfNormConv2dConfig::new(2, [4, 4], 3),
        SelfNormConv2dConfig::new(1, [5, 5], 3).with_inverse_kernel([5, 5]).with_bias(false),
        SelfNormConv2dConfig::new(2, [4, 3], 5).with_inverse_kernel([3, 1]),
        SelfNormConv2dConfig {
            forward: Conv2dSpec::same(4, [3, 3], [3, 1]).with_groups(2).with_dilation([2, 1]).with_padding([2, 0]),
            inverse_kernel: [3, 3],
            bias: true,
        },
    ]
}

/// A layer near the identity (w = Dirac + noise, r = the constructor's flip(w) + noise).
fn layer(cfg: SelfNormConv2dConfig, f: InverseFit, s: f64, seed: u64) -> SelfNormConv2d<f64> {
    let base = SelfNormConv2d::<f64>::new(cfg, &mut rng(seed)).unwrap();
    let mut g = rng(seed + 100);
    let nw = gaussian(base.w().nrows(), base.w().ncols(), s, &mut g);
    let nr = gaussian(base.r().nrows(), base.r().ncols(), s, &mut g);
    let w = Mat::from_fn(nw.nrows(), nw.ncols(), |i, j| base.w()[(i, j)] + nw[(i, j)]);
    let r = Mat::from_fn(nr.nrows(), nr.ncols(), |i, j| base.r()[(i, j)] + nr[(i, j)]);
    let b = cfg.bias.then(|| gaussian(base.channels(), 1, 0.1, &mut g));
    SelfNormConv2d::from_parts(cfg, w, r, b).unwrap().with_inverse_fit(f).unwrap()
}

/// One training step's worth of the layer: forward, backward (delta_z = -z), the refit.
/// Returns the gradients' w and r blocks and whether a refit was applied.
fn step(l: &mut SelfNormConv2d<f64>, x: MatRef<'_, f64>, ws: &mut ConvWorkspace<f64>, lambda: f64) -> (Mat<f64>, Mat<f64>, bool) {
    let (d, b) = (x.nrows(), x.ncols());
    let mut z = Mat::zeros(d, b);
    l.forward(x, z.as_mut(), ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let (mut dx, mut g) = (Mat::zeros(d, b), l.zero_grads());
    l.backward(x, dz.as_ref(), dx.as_mut(), &mut g, ws, lambda).unwrap();
    let applied = l.apply_projection(ws).unwrap();
    (g.w().to_owned(), g.r().to_owned(), applied)
}

/// |r * (w * x) - x|_F by the independent convolution.
fn residual(l: &SelfNormConv2d<f64>, x: &Mat<f64>) -> f64 {
    let u = naive_conv::conv_batch(l.geometry(), l.w(), x.as_ref());
    let e = naive_conv::conv_batch(l.inverse_geometry(), l.r(), u.as_ref());
    let mut s = 0.0;
    for j in 0..x.ncols() {
        for i in 0..x.nrows() {
            s += (e[(i, j)] - x[(i, j)]).powi(2);
        }
    }
    s.sqrt()
}

/// The oracle, straight from the definition: A is the design matrix of r -> vec(r * u)
/// (column k = the independent convolution of u by the k-th unit kernel), and
/// r* = argmin |A r - vec x|^2 + sum_k rho_k (r_k - r_old,k)^2 with rho = ridge times the
/// mean diagonal of the Gram block of the parameter's group; returns r_old + mu (r* - r_old).
fn oracle(l: &SelfNormConv2d<f64>, x: &Mat<f64>, relax: f64, ridge: f64) -> Mat<f64> {
    let (gr, r_old) = (*l.inverse_geometry(), l.r().to_owned());
    let u = naive_conv::conv_batch(l.geometry(), l.w(), x.as_ref());
    let (kr, kc) = (r_old.nrows(), r_old.ncols());
    let n = kr * kc;
    let rows = x.nrows() * x.ncols();
    let mut a = DMatrix::<f64>::zeros(rows, n);
    for k in 0..n {
        let mut unit = Mat::<f64>::zeros(kr, kc);
        unit[(k % kr, k / kr)] = 1.0;
        let c = naive_conv::conv_batch(&gr, unit.as_ref(), u.as_ref());
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                a[(j * x.nrows() + i, k)] = c[(i, j)];
            }
        }
    }
    let xv = DVector::from_fn(rows, |q, _| x[(q % x.nrows(), q / x.nrows())]);
    let rv = DVector::from_fn(n, |k, _| r_old[(k % kr, k / kr)]);
    let ata = a.transpose() * &a;
    // a parameter's group: its output channel's; the group's Gram block sums over its
    // output channels, each the same taps x taps matrix
    let opg = gr.out_per_group();
    let group = |k: usize| (k / kr) / opg;
    let rho: Vec<f64> = (0..n)
        .map(|k| {
            let g = group(k);
            let tr: f64 = (0..n).filter(|&q| group(q) == g).map(|q| ata[(q, q)]).sum();
            ridge * tr / (opg * kr) as f64
        })
        .collect();
    let mut lhs = ata;
    for (k, &p) in rho.iter().enumerate() {
        lhs[(k, k)] += p;
    }
    let rhs = a.transpose() * xv + DVector::from_fn(n, |k, _| rho[k] * rv[k]);
    let star = lhs.lu().solve(&rhs).unwrap();
    Mat::from_fn(kr, kc, |i, j| r_old[(i, j)] + relax * (star[j * kr + i] - r_old[(i, j)]))
}

#[test]
fn the_refit_is_the_proximal_least_squares_solution() {
    for (c, cfg) in configs().into_iter().enumerate() {
        for (relax, ridge) in [(1.0, 1e-3), (0.6, 1e-1), (1.5, 1e-6)] {
            let l = layer(cfg, fit(relax, ridge), 0.2, 10 + c as u64);
            let b = 3;
            let x = gaussian(l.dim(), b, 1.0, &mut rng(20 + c as u64));
            let want = oracle(&l, &x, relax, ridge);
            // the whole batch in one product, and one or two examples per product (the
            // chunked accumulation large batches take)
            for per_chunk in [None, Some(1), Some(2)] {
                let mut l = l.clone();
                let ws = ConvWorkspace::new(&l, b, Par::Seq).unwrap();
                let mut ws = match per_chunk {
                    None => ws.with_projection().unwrap(),
                    Some(k) => ws.with_projection_chunk(k).unwrap(),
                };
                let (_, _, applied) = step(&mut l, x.as_ref(), &mut ws, 1.0);
                assert!(applied);
                // both solve the same small, well-posed system (f64): agreement to round-off
                let err = max_abs_diff(l.r(), want.as_ref());
                assert!(err < 1e-10 * max_abs(want.as_ref()).max(1.0), "config {c} relax {relax} ridge {ridge} chunk {per_chunk:?}: {err:e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// For relax in (0, 2) the batch residual |r * u - x| never grows (proofs/projection.md
    /// §4: f(r_old + mu d) - f(r_old) <= (mu^2 - 2 mu) g^T (H + rho I)^{-1} g <= 0). The
    /// tolerance 1e-9 relative is round-off of the f64 Cholesky and convolutions; a wrong
    /// sign or a relax outside (0, 2) grows it by O(1).
    #[test]
    fn the_batch_residual_never_grows(seed in 0u64..10_000, relax in 0.05f64..1.95, ridge_exp in -8.0f64..0.0, cfg in 0usize..4, b in 1usize..4, s in 0.05f64..0.5) {
        let cfg = configs()[cfg];
        let mut l = layer(cfg, fit(relax, 10f64.powf(ridge_exp)), s, seed);
        let x = gaussian(l.dim(), b, 1.0, &mut rng(seed + 1));
        let before = residual(&l, &x);
        let mut ws = ConvWorkspace::new(&l, b, Par::Seq).unwrap();
        let (_, _, applied) = step(&mut l, x.as_ref(), &mut ws, 1.0);
        prop_assert!(applied);
        let after = residual(&l, &x);
        prop_assert!(after <= before * (1.0 + 1e-9) + 1e-12, "residual grew: {before} -> {after}");
    }
}

/// w whose only taps are the centre ones (a channel-mixing matrix M): T(w) is invertible by
/// a kernel of the same size (centre M^{-1}), so repeated refits on fresh batches reach it.
#[test]
fn an_invertible_by_a_kernel_w_is_inverted() {
    let cfg = SelfNormConv2dConfig::new(3, [5, 4], 3).with_bias(false);
    let geom = Conv2dGeometry::new(cfg.forward).unwrap();
    let mut g = rng(7);
    let m = common::well_conditioned(3, 0.4, &mut g);
    let mut w = Mat::<f64>::zeros(geom.kernel_shape().0, geom.kernel_shape().1);
    for o in 0..3 {
        for i in 0..3 {
            w[geom.kernel_index(o, i, 1, 1)] = m[(o, i)];
        }
    }
    let r0 = gaussian(w.nrows(), w.ncols(), 0.2, &mut g);
    let mut l = SelfNormConv2d::from_parts(cfg, w, r0, None).unwrap().with_inverse_fit(InverseFit::projection()).unwrap();
    let mut ws = ConvWorkspace::new(&l, 4, Par::Seq).unwrap();
    for k in 0..40 {
        let x = gaussian(l.dim(), 4, 1.0, &mut rng(100 + k));
        step(&mut l, x.as_ref(), &mut ws, 1.0);
    }
    let minv = common::to_na(m.as_ref()).try_inverse().unwrap();
    let mut err: f64 = 0.0;
    for o in 0..3 {
        for i in 0..3 {
            for a in 0..3 {
                for c in 0..3 {
                    let want = if (a, c) == (1, 1) { minv[(o, i)] } else { 0.0 };
                    err = err.max((l.r()[geom.kernel_index(o, i, a, c)] - want).abs());
                }
            }
        }
    }
    // each refit leaves at most ridge / (1 + ridge) ~ 1e-3 of the error: 40 steps reach round-off
    assert!(err < 1e-9, "{err:e}");
}

/// The exact baseline's gradient (ExactConv2d, checked against finite differences in
/// tests/conv_layer.rs) for the same w, b and batch.
fn exact_grads(l: &SelfNormConv2d<f64>, x: &Mat<f64>) -> (Mat<f64>, Option<Mat<f64>>) {
    let base = ExactConv2d::from_self_normalizing(l);
    let (d, b) = (x.nrows(), x.ncols());
    let mut bws = ExactConv2dWorkspace::new(&base, Par::Seq).unwrap();
    let mut z = Mat::zeros(d, b);
    base.forward(x.as_ref(), z.as_mut(), &mut bws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let (mut dx, mut g) = (Mat::zeros(d, b), base.zero_grads());
    base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut g, &mut bws).unwrap();
    (g.w, g.b)
}

#[test]
fn w_is_trained_on_the_plain_likelihood_with_flip_r_for_the_inverse() {
    for (c, cfg) in configs().into_iter().enumerate() {
        let l = layer(cfg, InverseFit::projection(), 0.15, 30 + c as u64);
        let b = 3;
        let x = gaussian(l.dim(), b, 1.0, &mut rng(40 + c as u64));
        let (ew, _) = exact_grads(&l, &x);
        // P_w(T(w)^{-T}) by the layer's exact log-det gradient, and the surrogate
        // rs(flip r) . m_w by the public kernel maps
        let mut ws = ConvWorkspace::new(&l, b, Par::Seq).unwrap();
        let mut ldg = Mat::zeros(l.w().nrows(), l.w().ncols());
        l.log_abs_det_grad(ldg.as_mut(), &mut ws).unwrap();
        let (gw, gr_) = (*l.geometry(), *l.inverse_geometry());
        let fr = snf::conv::flip(&gr_, l.r()).unwrap();
        let mut frw = Mat::zeros(l.w().nrows(), l.w().ncols());
        snf::conv::resize_centered_into(fr.as_ref(), gw.in_per_group(), gr_.kernel_size(), gw.kernel_size(), frw.as_mut()).unwrap();
        let (g0, r0, _) = step(&mut l.clone(), x.as_ref(), &mut ConvWorkspace::new(&l, b, Par::Seq).unwrap(), 0.0);
        let (g7, r7, _) = step(&mut l.clone(), x.as_ref(), &mut ws, 7.0);
        // r is not a parameter of the likelihood: its gradient block is zero for every λ
        assert_eq!(max_abs(r0.as_ref()), 0.0);
        assert_eq!(max_abs(r7.as_ref()), 0.0);
        // λ weighs the pull on w only: g7 - g0 is the gradient of 7 (1/B) sum |r * (w * x) - x|^2
        // in w with r held, against central differences of the independent convolution
        // (step 1e-5 on a quadratic: exact up to round-off ~1e-10 relative)
        let pen = |wk: MatRef<'_, f64>| {
            let u = naive_conv::conv_batch(l.geometry(), wk, x.as_ref());
            let e = naive_conv::conv_batch(l.inverse_geometry(), l.r(), u.as_ref());
            let mut s = 0.0;
            for j in 0..b {
                for i in 0..l.dim() {
                    s += (e[(i, j)] - x[(i, j)]).powi(2);
                }
            }
            7.0 * s / b as f64
        };
        let h = 1e-5;
        let mut worst: f64 = 0.0;
        for j in 0..l.w().ncols() {
            for i in 0..l.w().nrows() {
                let (mut p, mut q) = (l.w().to_owned(), l.w().to_owned());
                p[(i, j)] += h;
                q[(i, j)] -= h;
                let fd = (pen(p.as_ref()) - pen(q.as_ref())) / (2.0 * h);
                worst = worst.max((g7[(i, j)] - g0[(i, j)] - fd).abs() / fd.abs().max(1.0));
            }
        }
        assert!(worst < 1e-7, "config {c}: the pull on w is off by {worst:e}");
        // dw_snf - dw_exact = P_w(T(w)^{-T}) - rs(flip r) . m_w, exactly
        let m = l.multiplicity();
        let diff = Mat::from_fn(ew.nrows(), ew.ncols(), |i, j| g0[(i, j)] - ew[(i, j)] - (ldg[(i, j)] - frw[(i, j)] * m[(i, j)]));
        assert!(max_abs(diff.as_ref()) < 1e-10 * max_abs(ew.as_ref()).max(1.0), "config {c}: {:e}", max_abs(diff.as_ref()));
    }
}

#[test]
fn with_the_exact_inverse_kernel_the_gradient_is_exact() {
    // the centre-tap w of an_invertible_by_a_kernel_w_is_inverted with r = its inverse
    // kernel: T(r) = T(w)^{-1}, so flip(r) . m = P_w(T(w)^{-T}) and the SNF gradient is the
    // exact one, bias included
    let cfg = SelfNormConv2dConfig::new(2, [4, 4], 3);
    let geom = Conv2dGeometry::new(cfg.forward).unwrap();
    let mut g = rng(8);
    let m = common::well_conditioned(2, 0.4, &mut g);
    let minv = common::to_na(m.as_ref()).try_inverse().unwrap();
    let (mut w, mut r) = (Mat::<f64>::zeros(18, 2), Mat::<f64>::zeros(18, 2));
    for o in 0..2 {
        for i in 0..2 {
            w[geom.kernel_index(o, i, 1, 1)] = m[(o, i)];
            r[geom.kernel_index(o, i, 1, 1)] = minv[(o, i)];
        }
    }
    let bias = gaussian(2, 1, 0.3, &mut g);
    let mut l = SelfNormConv2d::from_parts(cfg, w, r, Some(bias)).unwrap().with_inverse_fit(InverseFit::projection()).unwrap();
    let x = gaussian(l.dim(), 5, 1.0, &mut g);
    let (ew, eb) = exact_grads(&l, &x);
    let mut ws = ConvWorkspace::new(&l, 5, Par::Seq).unwrap();
    let mut z = Mat::zeros(l.dim(), 5);
    l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(l.dim(), 5, |i, j| -z[(i, j)]);
    let (mut dx, mut gr) = (Mat::zeros(l.dim(), 5), l.zero_grads());
    l.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut gr, &mut ws, 1.0).unwrap();
    assert!(max_abs_diff(gr.w(), ew.as_ref()) < 1e-12 * max_abs(ew.as_ref()).max(1.0), "{:e}", max_abs_diff(gr.w(), ew.as_ref()));
    let eb = eb.unwrap();
    assert!(max_abs_diff(gr.b().unwrap(), eb.as_ref()) < 1e-12 * max_abs(eb.as_ref()).max(1.0));
    assert!(l.apply_projection(&mut ws).unwrap());
}

#[test]
fn the_exact_twin_is_the_plain_flow_gradient() {
    for (c, cfg) in configs().into_iter().enumerate() {
        let l = layer(cfg, InverseFit::projection(), 0.15, 50 + c as u64);
        let b = 2;
        let x = gaussian(l.dim(), b, 1.0, &mut rng(60 + c as u64));
        let (ew, eb) = exact_grads(&l, &x);
        let d = l.dim();
        let mut ws = ConvWorkspace::new(&l, b, Par::Seq).unwrap().with_exact().unwrap();
        let (mut z, mut y) = (Mat::zeros(d, b), Mat::zeros(d, b));
        l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
        l.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
        let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
        let dzg = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
        let (mut dxf, mut dxg, mut grads) = (Mat::zeros(d, b), Mat::zeros(d, b), l.zero_grads());
        l.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut grads, &mut ws, 0.0).unwrap();
        assert!(max_abs_diff(grads.w(), ew.as_ref()) < 1e-10 * max_abs(ew.as_ref()).max(1.0), "config {c}");
        // with λ it adds the same pull on w as the SNF pass: the two differ only in the log-det term
        let mut with_pull = l.zero_grads();
        l.backward_exact(x.as_ref(), dz.as_ref(), dzg.as_ref(), dxf.as_mut(), dxg.as_mut(), &mut with_pull, &mut ws, 3.0).unwrap();
        let (mut zs, mut sg) = (Mat::zeros(d, b), l.zero_grads());
        let (s0, s3) = {
            let mut wss = ConvWorkspace::new(&l, b, Par::Seq).unwrap();
            l.forward(x.as_ref(), zs.as_mut(), &mut wss).unwrap();
            let mut dxs = Mat::zeros(d, b);
            l.backward(x.as_ref(), dz.as_ref(), dxs.as_mut(), &mut sg, &mut wss, 0.0).unwrap();
            let s0 = sg.w().to_owned();
            l.forward(x.as_ref(), zs.as_mut(), &mut wss).unwrap();
            l.backward(x.as_ref(), dz.as_ref(), dxs.as_mut(), &mut sg, &mut wss, 3.0).unwrap();
            (s0, sg.w().to_owned())
        };
        let pull_exact = Mat::from_fn(ew.nrows(), ew.ncols(), |i, j| with_pull.w()[(i, j)] - grads.w()[(i, j)]);
        let pull_snf = Mat::from_fn(ew.nrows(), ew.ncols(), |i, j| s3[(i, j)] - s0[(i, j)]);
        assert!(max_abs_diff(pull_exact.as_ref(), pull_snf.as_ref()) < 1e-10 * max_abs(pull_snf.as_ref()).max(1.0), "config {c}");
        assert!(max_abs(pull_snf.as_ref()) > 0.0);
        if let (Some(gb), Some(eb)) = (grads.b(), eb.as_ref()) {
            assert!(max_abs_diff(gb, eb.as_ref()) < 1e-12 * max_abs(eb.as_ref()).max(1.0), "config {c}");
        }
        assert_eq!(max_abs(grads.r()), 0.0);
        // delta_x^g = T(r)^{-T} delta_z^g is still passed on: T(r)^T dx_g = dz_g
        let back = naive_conv::conv_batch(l.inverse_geometry(), snf::conv::flip(l.inverse_geometry(), l.r()).unwrap().as_ref(), dxg.as_ref());
        assert!(max_abs_diff(back.as_ref(), dzg.as_ref()) < 1e-9 * max_abs(dzg.as_ref()).max(1.0), "config {c}");
    }
}

#[test]
fn the_refit_is_applied_once_and_only_for_its_batch() {
    let cfg = SelfNormConv2dConfig::new(2, [4, 4], 3);
    let (d, b) = (32, 3);
    let mut g = rng(5);
    let x = gaussian(d, b, 1.0, &mut g);
    let mut l = layer(cfg, InverseFit::projection(), 0.2, 6);
    let mut ws = ConvWorkspace::new(&l, b, Par::Seq).unwrap();
    assert!(!l.apply_projection(&mut ws).unwrap());
    let (_, _, applied) = step(&mut l, x.as_ref(), &mut ws, 1.0);
    assert!(applied);
    let after = l.r().to_owned();
    assert!(!l.apply_projection(&mut ws).unwrap());
    assert_eq!(l.r(), after.as_ref());
    // a forward pass between backward and the refit voids it (its u belongs to another batch)
    let mut z = Mat::zeros(d, b);
    l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let (mut dx, mut gr) = (Mat::zeros(d, b), l.zero_grads());
    l.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut gr, &mut ws, 1.0).unwrap();
    l.forward(gaussian(d, b, 1.0, &mut g).as_ref(), z.as_mut(), &mut ws).unwrap();
    assert!(!l.apply_projection(&mut ws).unwrap());
    assert_eq!(l.r(), after.as_ref());
    // so does reconstruction_error, which overwrites u too
    l.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    l.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut gr, &mut ws, 1.0).unwrap();
    l.reconstruction_error(x.as_ref(), &mut ws).unwrap();
    assert!(!l.apply_projection(&mut ws).unwrap());
    // a batch of zeros has nothing to fit: the backward pass succeeds, r stays
    let (_, _, applied) = step(&mut l, Mat::<f64>::zeros(d, b).as_ref(), &mut ws, 1.0);
    assert!(!applied);
    assert_eq!(l.r(), after.as_ref());
    // a penalty layer never refits
    let mut p = layer(cfg, InverseFit::Penalty, 0.2, 6);
    let r0 = p.r().to_owned();
    let (_, _, applied) = step(&mut p, x.as_ref(), &mut ws, 1.0);
    assert!(!applied);
    assert_eq!(p.r(), r0.as_ref());
    // bad settings are typed errors
    for (relax, ridge) in [(0.0, 1e-3), (2.0, 1e-3), (1.0, 0.0), (1.0, f64::NAN)] {
        let e = layer(cfg, InverseFit::Penalty, 0.2, 6).with_inverse_fit(fit(relax, ridge)).unwrap_err();
        assert!(matches!(e, snf::Error::InvalidArgument { .. }), "{e:?}");
    }
}

#[test]
fn the_conv_model_refits_and_keeps_the_fit_in_checkpoints() {
    use snf::checkpoint::Checkpoint;
    use snf::flow::models::{conv_nine_layer, conv_nine_layer_with_fit, ConvMixing, Gradient};
    use snf::flow::Flow;
    use snf::prelude::Shape;
    let shape = Shape::image(1, 4, 4);
    let flow = conv_nine_layer::<f64, _>(shape, Gradient::SelfNormalizing, &mut rng(1)).unwrap();
    // λ still weighs the pull on w (it is the trainer's to steer), unlike the dense projection
    assert!(flow.uses_penalty());
    let paper = conv_nine_layer_with_fit::<f64, _>(shape, ConvMixing::Conv3x3(Gradient::SelfNormalizing), InverseFit::Penalty, &mut rng(1)).unwrap();
    assert!(paper.uses_penalty());
    let fits = |f: &Flow<f64>| (0..f.layers().len()).filter_map(|k| f.layer::<SelfNormConv2d<f64>>(k).map(|l| l.inverse_fit())).collect::<Vec<_>>();
    assert_eq!(fits(&flow), vec![InverseFit::projection(); 9]);
    let back = Checkpoint::<f64>::from_bytes(&Checkpoint::new(flow.clone()).unwrap().to_bytes().unwrap(), "t").unwrap();
    assert_eq!(fits(&back.flow), vec![InverseFit::projection(); 9]);
    let back = Checkpoint::<f64>::from_bytes(&Checkpoint::new(paper).unwrap().to_bytes().unwrap(), "t").unwrap();
    assert_eq!(fits(&back.flow), vec![InverseFit::Penalty; 9]);
    // Flow::after_step moves r (and only r) after a gradient pass
    let mut flow = flow;
    let x = Mat::from_fn(16, 6, |i, j| ((i * 7 + j * 13) % 255) as f64 + 0.5);
    let mut ws = flow.workspace(6, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 1.0).unwrap();
    let before = flow.clone();
    flow.after_step(&mut ws).unwrap();
    let k = (0..flow.layers().len()).find(|&k| flow.layer::<SelfNormConv2d<f64>>(k).is_some()).unwrap();
    let l = |f: &Flow<f64>| f.layer::<SelfNormConv2d<f64>>(k).unwrap().clone();
    assert_eq!(l(&flow).w(), l(&before).w());
    assert!(max_abs_diff(l(&flow).r(), l(&before).r()) > 0.0);
}
