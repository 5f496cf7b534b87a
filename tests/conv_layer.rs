//! The self-normalizing convolution: exact gradients against finite differences of an
//! nalgebra brute-force loss on the explicit matrices, SNF gradients against their
//! derivation (the projection of the verified linear layer's gradients), Eq. 25's sharp
//! check, asymmetric kernels, the cached log-det, inverses and typed errors.
//! Derivations: `proofs/conv.md`, `proofs/asymmetric.md`.

mod common;

use common::naive_conv;
use common::{central_diff, gaussian, max_abs, max_abs_diff, rng, snf_loss_oracle, to_na, FD_STEP};
use faer::{Mat, MatRef, Par};
use nalgebra::DMatrix;
use proptest::prelude::*;
use snf::conv::{self, Conv2dGeometry, Conv2dSpec};
use snf::layers::conv::{ConvWorkspace, ExactConv2d, ExactConv2dWorkspace, SelfNormConv2d, SelfNormConv2dConfig};
use snf::layers::linear::{LinearWorkspace, SelfNormLinear};
use snf::Error;

/// P(A) straight from the definition: for kernel element i, the sum of A over the
/// positions where T(e_i) (built by the oracle) is non-zero.
fn project_naive(geom: &Conv2dGeometry, a: MatRef<'_, f64>) -> Mat<f64> {
    let (kr, kc) = geom.kernel_shape();
    Mat::from_fn(kr, kc, |r, c| {
        let mut e = Mat::zeros(kr, kc);
        e[(r, c)] = 1.0;
        let t = naive_conv::matrix(geom, e.as_ref());
        let mut s = 0.0;
        for j in 0..t.ncols() {
            for i in 0..t.nrows() {
                if t[(i, j)] != 0.0 {
                    s += a[(i, j)];
                }
            }
        }
        s
    })
}

/// A layer with random kernels near the identity: w = dirac + s * noise, r = flip(w) +
/// s * noise (resized), bias ~ N(0, 0.1^2).
fn random_layer(cfg: SelfNormConv2dConfig, s: f64, seed: u64) -> SelfNormConv2d<f64> {
    let base = SelfNormConv2d::<f64>::new(cfg, &mut rng(seed)).unwrap();
    let mut g = rng(seed + 100);
    let w = Mat::from_fn(base.w().nrows(), base.w().ncols(), |i, j| base.w()[(i, j)] + s * gaussian(1, 1, 1.0, &mut g)[(0, 0)]);
    let r = Mat::from_fn(base.r().nrows(), base.r().ncols(), |i, j| base.r()[(i, j)] + s * gaussian(1, 1, 1.0, &mut g)[(0, 0)]);
    let b = cfg.bias.then(|| gaussian(base.channels(), 1, 0.1, &mut g));
    SelfNormConv2d::from_parts(cfg, w, r, b).unwrap()
}

/// Per-pixel bias vector (D x 1) of a per-channel bias.
fn expand_bias(layer: &SelfNormConv2d<f64>) -> Option<Mat<f64>> {
    let [h, w] = layer.geometry().in_size();
    layer.bias().map(|b| Mat::from_fn(layer.dim(), 1, |i, _| b[(i / (h * w), 0)]))
}

fn channel_sum(v: MatRef<'_, f64>, hw: usize) -> Mat<f64> {
    Mat::from_fn(v.nrows() / hw, 1, |c, _| (0..hw).map(|p| v[(c * hw + p, 0)]).sum())
}

/// Configurations covering square / asymmetric (larger and smaller inverse), groups,
/// dilation, non-square kernels, with and without bias.
fn configs() -> Vec<SelfNormConv2dConfig> {
    vec![
        SelfNormConv2dConfig::new(2, [4, 4], 3),
        SelfNormConv2dConfig::new(1, [5, 5], 3).with_inverse_kernel([5, 5]).with_bias(false),
        SelfNormConv2dConfig::new(2, [3, 4], 3).with_inverse_kernel([7, 7]),
        SelfNormConv2dConfig::new(2, [4, 3], 5).with_inverse_kernel([3, 1]),
        // inverse larger along the height, smaller along the width
        SelfNormConv2dConfig { forward: Conv2dSpec::same(2, [4, 4], [1, 3]), inverse_kernel: [3, 1], bias: true },
        SelfNormConv2dConfig {
            forward: Conv2dSpec::same(4, [3, 3], [3, 1]).with_groups(2).with_dilation([2, 1]).with_padding([2, 0]),
            inverse_kernel: [3, 3],
            bias: true,
        },
    ]
}

struct Run {
    grads: snf::layers::conv::Conv2dGrads<f64>,
    dx: Mat<f64>,
    dx_g: Mat<f64>,
    recon: f64,
}

fn conv_snf(layer: &SelfNormConv2d<f64>, x: &Mat<f64>, lambda: f64, par: Par) -> Run {
    let (d, b) = (layer.dim(), x.ncols());
    let mut ws = ConvWorkspace::new(layer, b, par).unwrap();
    let mut z = Mat::zeros(d, b);
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(d, b);
    let mut grads = layer.zero_grads();
    let st = layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut grads, &mut ws, lambda).unwrap();
    Run { grads, dx, dx_g: Mat::zeros(0, 0), recon: st.reconstruction_error }
}

fn conv_exact(layer: &SelfNormConv2d<f64>, x: &Mat<f64>, lambda: f64, par: Par) -> Run {
    let (d, b) = (layer.dim(), x.ncols());
    let mut ws = ConvWorkspace::new(layer, b, par).unwrap().with_exact().unwrap();
    let (mut z, mut y) = (Mat::zeros(d, b), Mat::zeros(d, b));
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
    let dz_f = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
    let dz_g = Mat::from_fn(d, b, |i, j| -y[(i, j)]);
    let (mut dx, mut dx_g) = (Mat::zeros(d, b), Mat::zeros(d, b));
    let mut grads = layer.zero_grads();
    let st = layer.backward_exact(x.as_ref(), dz_f.as_ref(), dz_g.as_ref(), dx.as_mut(), dx_g.as_mut(), &mut grads, &mut ws, lambda).unwrap();
    Run { grads, dx, dx_g, recon: st.reconstruction_error }
}

/// The same layer as a dense linear layer W = T(w), R = T(r) (oracle-built matrices).
fn as_linear(layer: &SelfNormConv2d<f64>) -> SelfNormLinear<f64> {
    let w = naive_conv::matrix(layer.geometry(), layer.w());
    let r = naive_conv::matrix(layer.inverse_geometry(), layer.r());
    SelfNormLinear::from_parts(w, r, expand_bias(layer)).unwrap()
}

/// Tolerance for comparing two f64 evaluations of the same gradient formula through
/// different code paths (conv vs dense GEMM, D <= 36): each entry is a sum of at most a
/// few hundred O(1) products, rounding ~1e-13; 1e-10 leaves margin, any wrong term is O(0.01+).
const PATH_TOL: f64 = 1e-10;

/// The SNF conv gradients are the projections P_w, P_r of the (separately verified)
/// linear layer's SNF gradients at W = T(w), R = T(r): Eqs. 15/16 and 28/29 with the λ
/// terms, including the flip / crop / pad and the multiplicities.
#[test]
fn snf_gradients_are_projected_linear_gradients() {
    for (n, cfg) in configs().into_iter().enumerate() {
        for lambda in [0.0, 1.7] {
            let layer = random_layer(cfg, 0.1, 10 + n as u64);
            let x = gaussian(layer.dim(), 3, 1.0, &mut rng(20 + n as u64));
            let run = conv_snf(&layer, &x, lambda, Par::rayon(2));
            let lin = as_linear(&layer);
            let (d, b) = (layer.dim(), 3);
            let mut lws = LinearWorkspace::new(d, b, Par::Seq).unwrap();
            let mut z = Mat::zeros(d, b);
            lin.forward(x.as_ref(), z.as_mut(), &mut lws).unwrap();
            let dz = Mat::from_fn(d, b, |i, j| -z[(i, j)]);
            let mut dx = Mat::zeros(d, b);
            let mut lg = lin.zero_grads();
            let st = lin.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut lg, &mut lws, lambda).unwrap();
            assert!(max_abs_diff(run.dx.as_ref(), dx.as_ref()) < PATH_TOL, "cfg {n}: dx");
            assert!((run.recon - st.reconstruction_error).abs() < PATH_TOL, "cfg {n}: recon");
            let pw = project_naive(layer.geometry(), lg.w());
            let pr = project_naive(layer.inverse_geometry(), lg.r());
            let ew = max_abs_diff(run.grads.w(), pw.as_ref());
            let er = max_abs_diff(run.grads.r(), pr.as_ref());
            assert!(ew < PATH_TOL && er < PATH_TOL, "cfg {n} lambda {lambda}: dw err {ew:e}, dr err {er:e}");
            if let Some(gb) = run.grads.b() {
                let [h, w] = layer.geometry().in_size();
                let want = channel_sum(lg.b().unwrap(), h * w);
                assert!(max_abs_diff(gb, want.as_ref()) < PATH_TOL);
            }
            assert!(max_abs(run.grads.r()) > 1e-3, "non-trivial gradients");
        }
    }
}

/// The exact-mode gradients (and both deltas) against central differences of the
/// brute-force nalgebra loss on the oracle-built matrices, for every configuration.
#[test]
fn exact_mode_matches_finite_differences() {
    for (n, cfg) in configs().into_iter().enumerate() {
        let lambda = 0.9;
        let layer = random_layer(cfg, 0.1, 40 + n as u64);
        let x = gaussian(layer.dim(), 2, 1.0, &mut rng(50 + n as u64));
        let run = conv_exact(&layer, &x, lambda, Par::Seq);
        let xn = to_na(x.as_ref());
        let bias = expand_bias(&layer).map(|b| to_na(b.as_ref()));
        let (gw, gr) = (*layer.geometry(), *layer.inverse_geometry());
        let loss = |w: &DMatrix<f64>, r: &DMatrix<f64>, b: Option<&DMatrix<f64>>| {
            let wf = Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)]);
            let rf = Mat::from_fn(r.nrows(), r.ncols(), |i, j| r[(i, j)]);
            let tw = to_na(naive_conv::matrix(&gw, wf.as_ref()).as_ref());
            let tr = to_na(naive_conv::matrix(&gr, rf.as_ref()).as_ref());
            snf_loss_oracle(&tw, &tr, b, &xn, lambda)
        };
        let (w0, r0) = (to_na(layer.w()), to_na(layer.r()));
        let fd_w = central_diff(&w0, FD_STEP, |w| loss(w, &r0, bias.as_ref()));
        let fd_r = central_diff(&r0, FD_STEP, |r| loss(&w0, r, bias.as_ref()));
        // FD tolerance: the loss is O(10) and smooth near the identity; with h = 1e-5 the
        // truncation error ~h^2 |f'''| ~ 1e-9 and rounding ~eps|f|/h ~ 1e-10 (D <= 36
        // here so the oracle's determinant is accurate); 1e-6 leaves margin, while any
        // wrong term (a missing flip, m, crop) is O(0.01) or more.
        let tol = 1e-6;
        let ew = max_abs_diff(run.grads.w(), common::from_na(&fd_w).as_ref());
        let er = max_abs_diff(run.grads.r(), common::from_na(&fd_r).as_ref());
        assert!(ew < tol && er < tol, "cfg {n}: dw err {ew:e}, dr err {er:e}");
        if let (Some(b0), Some(gb)) = (layer.bias(), run.grads.b()) {
            let [h, w] = gw.in_size();
            let fd_b = central_diff(&to_na(b0), FD_STEP, |bc| {
                let be = DMatrix::from_fn(layer.dim(), 1, |i, _| bc[(i / (h * w), 0)]);
                loss(&w0, &r0, Some(&be))
            });
            assert!(max_abs_diff(gb, common::from_na(&fd_b).as_ref()) < tol, "cfg {n}: db");
        }
        // deltas: d/dx of log p^f = T(w)^T delta_z, of log p^g = T(r)^{-T} delta^g_z
        let tw = to_na(naive_conv::matrix(&gw, layer.w()).as_ref());
        let tr = to_na(naive_conv::matrix(&gr, layer.r()).as_ref());
        let be = bias.clone().unwrap_or_else(|| DMatrix::zeros(layer.dim(), 1));
        let zf = &tw * &xn + DMatrix::from_fn(layer.dim(), 2, |i, _| be[(i, 0)]);
        let want_dx = -(tw.transpose() * zf);
        let trinv = tr.clone().try_inverse().unwrap();
        let zg = &trinv * &xn + DMatrix::from_fn(layer.dim(), 2, |i, _| be[(i, 0)]);
        let want_dxg = -(trinv.transpose() * zg);
        assert!(max_abs_diff(run.dx.as_ref(), common::from_na(&want_dx).as_ref()) < 1e-10);
        assert!(max_abs_diff(run.dx_g.as_ref(), common::from_na(&want_dxg).as_ref()) < 1e-10);
    }
}

/// The exact log-det gradient P(T(w)^{-T}) against finite differences of nalgebra's
/// log|det T(w)|, and the baseline ExactConv2d's full gradient against FD of its loss.
#[test]
fn log_det_gradient_matches_finite_differences() {
    let cfg = SelfNormConv2dConfig::new(2, [3, 4], 3);
    let layer = random_layer(cfg, 0.2, 61);
    let geom = *layer.geometry();
    let mut ws = ConvWorkspace::new(&layer, 1, Par::Seq).unwrap();
    let mut g = Mat::zeros(layer.w().nrows(), layer.w().ncols());
    layer.log_abs_det_grad(g.as_mut(), &mut ws).unwrap();
    let fd = central_diff(&to_na(layer.w()), FD_STEP, |w| {
        let wf = common::from_na(w);
        to_na(naive_conv::matrix(&geom, wf.as_ref()).as_ref()).determinant().abs().ln()
    });
    assert!(max_abs_diff(g.as_ref(), common::from_na(&fd).as_ref()) < 1e-7);
    assert!(max_abs(g.as_ref()) > 1.0, "the multiplicities make this O(H*W)");

    // the baseline: l = -(1/B) sum log p^f
    let base = ExactConv2d::from_self_normalizing(&layer);
    let x = gaussian(layer.dim(), 3, 1.0, &mut rng(62));
    let mut bws = ExactConv2dWorkspace::new(&base, Par::Seq).unwrap();
    let mut z = Mat::zeros(layer.dim(), 3);
    base.forward(x.as_ref(), z.as_mut(), &mut bws).unwrap();
    let dz = Mat::from_fn(layer.dim(), 3, |i, j| -z[(i, j)]);
    let mut dx = Mat::zeros(layer.dim(), 3);
    let mut grads = base.zero_grads();
    base.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut grads, &mut bws).unwrap();
    let xn = to_na(x.as_ref());
    let bias = expand_bias(&layer).map(|b| to_na(b.as_ref()));
    let fd = central_diff(&to_na(layer.w()), FD_STEP, |w| {
        let wf = common::from_na(w);
        common::plain_loss_oracle(&to_na(naive_conv::matrix(&geom, wf.as_ref()).as_ref()), bias.as_ref(), &xn)
    });
    assert!(max_abs_diff(grads.w.as_ref(), common::from_na(&fd).as_ref()) < 1e-6);
    let ld = base.log_abs_det(&mut bws).unwrap();
    assert!((ld - layer.log_abs_det(&mut ws).unwrap()).abs() < 1e-12);
}

/// Eq. 25, sharply: if r is the least-squares inverse kernel of w,
/// r = argmin |T(r) - T(w)^{-1}|_F = P(T(w)^{-1}) / m (normal equations, since P(T(r)) = m . r),
/// then the SNF log-det term flip(r) . m equals the exact P(T(w)^{-T}) (angle ~ 0).
#[test]
fn least_squares_inverse_kernel_makes_eq25_exact() {
    for (seed, spec) in [
        (1, Conv2dSpec::same(1, [6, 6], [3, 3])),
        (2, Conv2dSpec::same(3, [4, 5], [3, 3])),
        (3, Conv2dSpec::same(2, [5, 4], [5, 3])),
        (4, Conv2dSpec::same(4, [4, 4], [3, 3]).with_groups(2)),
    ] {
        let geom = Conv2dGeometry::new(spec).unwrap();
        let (kr, kc) = geom.kernel_shape();
        let noise = gaussian(kr, kc, 0.3, &mut rng(seed));
        let dirac = conv::dirac::<f64>(&geom).unwrap();
        let w = Mat::from_fn(kr, kc, |i, j| dirac[(i, j)] + noise[(i, j)]);
        let tw = to_na(naive_conv::matrix(&geom, w.as_ref()).as_ref());
        let tinv = common::from_na(&tw.clone().try_inverse().unwrap());
        let tinvt = common::from_na(&tw.try_inverse().unwrap().transpose());
        let m = conv::multiplicity::<f64>(&geom).unwrap();
        let p_inv = project_naive(&geom, tinv.as_ref());
        let r = Mat::from_fn(kr, kc, |i, j| p_inv[(i, j)] / m[(i, j)]);
        let fr = conv::flip(&geom, r.as_ref()).unwrap();
        let snf_term = Mat::from_fn(kr, kc, |i, j| fr[(i, j)] * m[(i, j)]);
        let exact_term = project_naive(&geom, tinvt.as_ref());
        let deg = snf::grad::angle_degrees(&[snf_term.as_ref()], &[exact_term.as_ref()]).unwrap();
        // equal up to rounding of the nalgebra inverse (cond ~ 10): ~1e-13 degrees
        assert!(deg < 1e-9, "spec {seed}: angle {deg:e} degrees");
        // ... and a visibly different r gives a visible angle, so the check can fail
        let r2 = Mat::from_fn(kr, kc, |i, j| r[(i, j)] + 1e-3 * noise[(i, j)]);
        let fr2 = conv::flip(&geom, r2.as_ref()).unwrap();
        let t2 = Mat::from_fn(kr, kc, |i, j| fr2[(i, j)] * m[(i, j)]);
        assert!(snf::grad::angle_degrees(&[t2.as_ref()], &[exact_term.as_ref()]).unwrap() > 1e-4);
    }
}

/// When T(r) is exactly T(w)^{-1} (kernels with only a channel-mixing centre tap, r the
/// inverse matrix), every substitution of the SNF gradient is an identity: SNF == exact.
#[test]
fn snf_equals_exact_when_r_is_the_inverse() {
    let c = 3;
    let cfg = SelfNormConv2dConfig::new(c, [4, 5], 3).with_inverse_kernel([5, 5]);
    let base = SelfNormConv2d::<f64>::new(cfg, &mut rng(70)).unwrap();
    let a = common::well_conditioned(c, 0.3, &mut rng(71));
    let ainv = common::from_na(&to_na(a.as_ref()).try_inverse().unwrap());
    let centre = |k: [usize; 2], m: &Mat<f64>, eps: f64| {
        let taps = c * k[0] * k[1];
        Mat::from_fn(taps, c, |row, o| {
            let (i, rest) = (row / (k[0] * k[1]), row % (k[0] * k[1]));
            if rest == (k[0] / 2) * k[1] + k[1] / 2 {
                m[(o, i)]
            } else {
                eps * ((row * 7 + o * 3) % 5) as f64
            }
        })
    };
    for (eps, should_match) in [(0.0, true), (1e-6, false)] {
        let w = centre([3, 3], &a, 0.0);
        let r = centre([5, 5], &ainv, eps);
        let layer = SelfNormConv2d::from_parts(cfg, w, r, Some(gaussian(c, 1, 0.1, &mut rng(72)))).unwrap();
        let _ = &base;
        let x = gaussian(layer.dim(), 4, 1.0, &mut rng(73));
        let s = conv_snf(&layer, &x, 2.0, Par::Seq);
        let e = conv_exact(&layer, &x, 2.0, Par::Seq);
        let deg = snf::grad::angle_degrees(&s.grads.blocks().collect::<Vec<_>>(), &e.grads.blocks().collect::<Vec<_>>()).unwrap();
        if should_match {
            assert!(s.recon < 1e-24, "exact inverse reconstructs, got {:e}", s.recon);
            assert!(deg < 1e-9, "angle {deg:e}");
        } else {
            assert!(deg > 1e-8, "a 1e-6 perturbation must be visible, angle {deg:e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// dw_snf - dw_exact == -1/2 (rs(flip r) . m_w - P_w(T(w)^{-T})): the data and
    /// reconstruction terms are identical in both modes, for any kernels, λ and batch.
    #[test]
    fn snf_minus_exact_w_gradient_is_the_log_det_surrogate_error(
        c in 1usize..3, h in 2usize..5, wd in 2usize..5, kf in 0usize..2, kr in 0usize..3,
        s in 0.0f64..0.3, lambda in 0.0f64..3.0, b in 1usize..4, seed in 0u64..1000, bias in any::<bool>(),
    ) {
        let cfg = SelfNormConv2dConfig::new(c, [h, wd], 2 * kf + 1).with_inverse_kernel([2 * kr + 1; 2]).with_bias(bias);
        let layer = random_layer(cfg, s, seed);
        let x = gaussian(layer.dim(), b, 1.0, &mut rng(seed + 7));
        let sn = conv_snf(&layer, &x, lambda, Par::Seq);
        let ex = conv_exact(&layer, &x, lambda, Par::Seq);
        let mut ws = ConvWorkspace::new(&layer, b, Par::Seq).unwrap();
        let mut exact_ld = Mat::zeros(layer.w().nrows(), layer.w().ncols());
        layer.log_abs_det_grad(exact_ld.as_mut(), &mut ws).unwrap();
        let fr = conv::flip(layer.inverse_geometry(), layer.r()).unwrap();
        let mut frw = Mat::zeros(layer.w().nrows(), layer.w().ncols());
        conv::resize_centered_into(fr.as_ref(), c, layer.inverse_geometry().kernel_size(), layer.geometry().kernel_size(), frw.as_mut()).unwrap();
        let m = layer.multiplicity();
        let want = Mat::from_fn(frw.nrows(), frw.ncols(), |i, j| -0.5 * (frw[(i, j)] * m[(i, j)] - exact_ld[(i, j)]));
        let got = Mat::from_fn(frw.nrows(), frw.ncols(), |i, j| sn.grads.w()[(i, j)] - ex.grads.w()[(i, j)]);
        // both sides O(HW) ~ 16; rounding of the LU inverse ~ cond * eps * 16 < 1e-12
        prop_assert!(max_abs_diff(got.as_ref(), want.as_ref()) < 1e-9);
    }
}

/// The layer's LU lives in the workspace, keyed by the parameters' stamp: reused while the
/// kernels are unchanged, refactored after any mutable access. (Caching the log-det value
/// itself is the flow's job, one rule for every transform: tests/transform_contract.rs.)
#[test]
fn log_det_lu_is_refactored_when_parameters_change() {
    let cfg = SelfNormConv2dConfig::new(2, [5, 5], 3);
    let mut layer = random_layer(cfg, 0.2, 80);
    let mut ws = ConvWorkspace::new(&layer, 2, Par::Seq).unwrap();
    let ld = layer.log_abs_det(&mut ws).unwrap();
    let oracle = to_na(naive_conv::matrix(layer.geometry(), layer.w()).as_ref()).determinant().abs().ln();
    // D = 50, cond ~ 5: LU and nalgebra agree to ~1e-13 relative
    assert!((ld - oracle).abs() < 1e-10 * (1.0 + oracle.abs()));
    assert_eq!(layer.log_abs_det(&mut ws).unwrap(), ld);
    // a fresh workspace factors anew and agrees bit for bit
    let mut fresh = ConvWorkspace::new(&layer, 1, Par::Seq).unwrap();
    assert_eq!(layer.log_abs_det(&mut fresh).unwrap(), ld);
    assert!(fresh.max_batch() == 1);
    // touching the parameters takes a new stamp: the workspace's LU is stale
    for p in layer.params_mut() {
        let mut p = p;
        p[(0, 0)] += 0.05;
    }
    let ld2 = layer.log_abs_det(&mut ws).unwrap();
    let oracle2 = to_na(naive_conv::matrix(layer.geometry(), layer.w()).as_ref()).determinant().abs().ln();
    assert!((ld2 - oracle2).abs() < 1e-10 * (1.0 + oracle2.abs()));
    assert!((ld2 - ld).abs() > 1e-6, "the change must be visible");
    // the workspace's LU was refactored too: the exact inverse is of the new kernel
    let x = gaussian(layer.dim(), 2, 1.0, &mut rng(81));
    let (mut z, mut xe) = (Mat::zeros(layer.dim(), 2), Mat::zeros(layer.dim(), 2));
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    layer.inverse_exact(z.as_ref(), xe.as_mut(), &mut ws).unwrap();
    assert!(max_abs_diff(xe.as_ref(), x.as_ref()) < 1e-11);
}

#[test]
fn inverses_round_trip() {
    let cfg = SelfNormConv2dConfig::new(3, [6, 5], 3).with_inverse_kernel([5, 5]);
    let layer = random_layer(cfg, 0.1, 90);
    let (d, b) = (layer.dim(), 4);
    let x = gaussian(d, b, 1.0, &mut rng(91));
    let mut ws = ConvWorkspace::new(&layer, b, Par::rayon(2)).unwrap().with_exact().unwrap();
    let (mut z, mut xe, mut y, mut back) = (Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b), Mat::zeros(d, b));
    layer.forward(x.as_ref(), z.as_mut(), &mut ws).unwrap();
    layer.inverse_exact(z.as_ref(), xe.as_mut(), &mut ws).unwrap();
    // backward error of an LU solve ~ cond * eps; cond(T(w)) < 10 here
    assert!(max_abs_diff(xe.as_ref(), x.as_ref()) < 1e-12);
    // g(g^{-1}(x)) = x: y = T(r)^{-1} x + b, then the learned inverse maps y back to x
    layer.g_inverse(x.as_ref(), y.as_mut(), &mut ws).unwrap();
    layer.inverse(y.as_ref(), back.as_mut(), &mut ws).unwrap();
    assert!(max_abs_diff(back.as_ref(), x.as_ref()) < 1e-12);
    // learned inverse of f: error = reconstruction error
    layer.inverse(z.as_ref(), back.as_mut(), &mut ws).unwrap();
    let err: f64 = (0..b).map(|j| (0..d).map(|i| (back[(i, j)] - x[(i, j)]).powi(2)).sum::<f64>()).sum::<f64>() / b as f64;
    let recon = layer.reconstruction_error(x.as_ref(), &mut ws).unwrap();
    assert!((err - recon).abs() < 1e-12 * (1.0 + recon));

    // the exact-gradient baseline inverts exactly too (dense LU), bias included
    let base = snf::layers::conv::ExactConv2d::from_self_normalizing(&layer);
    let mut bws = snf::layers::conv::ExactConv2dWorkspace::new(&base, Par::Seq).unwrap();
    base.forward(x.as_ref(), z.as_mut(), &mut bws).unwrap();
    base.inverse(z.as_ref(), xe.as_mut(), &mut bws).unwrap();
    assert!(max_abs_diff(xe.as_ref(), x.as_ref()) < 1e-12);
}

#[test]
fn invalid_configurations_are_rejected() {
    let ok = SelfNormConv2dConfig::new(2, [5, 5], 3);
    let bad = [
        SelfNormConv2dConfig { forward: ok.forward.with_stride([2, 2]), ..ok },
        SelfNormConv2dConfig { forward: ok.forward.with_padding([0, 0]), ..ok },
        SelfNormConv2dConfig { forward: ok.forward.with_padding([2, 1]), ..ok },
        SelfNormConv2dConfig { forward: Conv2dSpec { out_channels: 3, ..ok.forward }, ..ok },
        SelfNormConv2dConfig::new(2, [5, 5], 4),
        ok.with_inverse_kernel([4, 4]),
        ok.with_inverse_kernel([0, 3]),
        SelfNormConv2dConfig::new(0, [5, 5], 3),
        SelfNormConv2dConfig { forward: ok.forward.with_dilation([2, 2]), ..ok }, // padding no longer 'same'
    ];
    for cfg in bad {
        match SelfNormConv2d::<f64>::new(cfg, &mut rng(1)) {
            Err(Error::InvalidConv { .. }) => {}
            other => panic!("{cfg:?}: expected InvalidConv, got {other:?}"),
        }
    }
    // dilation with matching 'same' padding is valid
    let dil = SelfNormConv2dConfig { forward: ok.forward.with_dilation([2, 2]).with_padding([2, 2]), ..ok };
    assert!(SelfNormConv2d::<f64>::new(dil, &mut rng(1)).is_ok());
    // from_parts: shapes, bias presence, non-finite
    let l = SelfNormConv2d::<f64>::new(ok, &mut rng(1)).unwrap();
    let (w, r) = (l.w().to_owned(), l.r().to_owned());
    let bias = Some(Mat::zeros(2, 1));
    assert!(matches!(SelfNormConv2d::from_parts(ok, w.transpose().to_owned(), r.clone(), bias.clone()), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(SelfNormConv2d::from_parts(ok, w.clone(), r.clone(), None), Err(Error::InvalidArgument { .. })));
    let mut wn = w.clone();
    wn[(0, 0)] = f64::NAN;
    assert!(matches!(SelfNormConv2d::from_parts(ok, wn, r.clone(), bias.clone()), Err(Error::NonFinite { .. })));
    // a singular kernel: typed error from the exact path, not a panic
    let zero = SelfNormConv2d::from_parts(ok, Mat::zeros(w.nrows(), w.ncols()), r.clone(), bias).unwrap();
    let mut ws = ConvWorkspace::new(&zero, 2, Par::Seq).unwrap();
    assert!(matches!(zero.log_abs_det(&mut ws), Err(Error::Singular { .. })));
    // backward before forward, wrong workspace
    let x = Mat::zeros(l.dim(), 2);
    let mut dx = Mat::zeros(l.dim(), 2);
    let mut g = l.zero_grads();
    let mut ws = ConvWorkspace::new(&l, 2, Par::Seq).unwrap();
    assert!(matches!(l.backward(x.as_ref(), x.as_ref(), dx.as_mut(), &mut g, &mut ws, 1.0), Err(Error::InvalidArgument { .. })));
    let other = SelfNormConv2d::<f64>::new(ok.with_inverse_kernel([5, 5]), &mut rng(1)).unwrap();
    let mut ows = ConvWorkspace::new(&other, 2, Par::Seq).unwrap();
    let mut z = Mat::zeros(l.dim(), 2);
    assert!(matches!(l.forward(x.as_ref(), z.as_mut(), &mut ows), Err(Error::InvalidArgument { .. })));
}

/// Initialisation: w = dirac + small noise, r = flip(w) resized, so T(r) T(w) ~ I and the
/// reconstruction error is small but non-zero.
#[test]
fn initialisation_follows_the_paper() {
    let cfg = SelfNormConv2dConfig::new(4, [6, 6], 3).with_inverse_kernel([5, 5]);
    let layer = SelfNormConv2d::<f64>::new(cfg, &mut rng(5)).unwrap();
    let dirac = conv::dirac::<f64>(layer.geometry()).unwrap();
    let noise = Mat::from_fn(dirac.nrows(), dirac.ncols(), |i, j| layer.w()[(i, j)] - dirac[(i, j)]);
    // Xavier normal, gain 0.01, fan_in = 4*9, fan_out = 4*9: std = 0.01 * sqrt(2/72) = 1.67e-3
    let std = (common::frob(noise.as_ref()).powi(2) / (noise.nrows() * noise.ncols()) as f64).sqrt();
    assert!((std - 1.67e-3).abs() < 0.3e-3, "noise std {std:e}");
    let fw = conv::flip(layer.geometry(), layer.w()).unwrap();
    let mut want_r = Mat::zeros(layer.r().nrows(), layer.r().ncols());
    conv::resize_centered_into(fw.as_ref(), 4, [3, 3], [5, 5], want_r.as_mut()).unwrap();
    assert_eq!(layer.r().to_owned(), want_r);
    // E|T(r)T(w)x - x|^2 = |T(r)T(w) - I|_F^2 for x ~ N(0, I): about 2 * sum_i m_i eps_i^2
    // ~ 0.03 here. With B = 400 the sample mean is within ~10% (chi-square-like spread);
    // the bound [0.7, 1.3] fails if r were not flip(w) (then the error is O(D)).
    let b = 400;
    let mut ws = ConvWorkspace::new(&layer, b, Par::Seq).unwrap();
    let x = gaussian(layer.dim(), b, 1.0, &mut rng(6));
    let rec = layer.reconstruction_error(x.as_ref(), &mut ws).unwrap();
    let tw = to_na(naive_conv::matrix(layer.geometry(), layer.w()).as_ref());
    let tr = to_na(naive_conv::matrix(layer.inverse_geometry(), layer.r()).as_ref());
    let want = (tr * tw - DMatrix::<f64>::identity(layer.dim(), layer.dim())).norm_squared();
    assert!(rec > 0.7 * want && rec < 1.3 * want, "recon {rec:e}, expected about {want:e}");
    assert!(want > 1e-3 && want < 0.1);
}

/// Batches spanning several im2col blocks (here 2 examples per block, from the 5x5 inverse
/// kernel on 8x16x16) and several chunks: the batch gradient must be the mean of the
/// single-example gradients (the log-det surrogates are constant), delta_x and the
/// reconstruction error must match per example. Catches any block/chunk boundary slip.
#[test]
fn large_batches_match_per_example_runs() {
    let cfg = SelfNormConv2dConfig::new(8, [16, 16], 3).with_inverse_kernel([5, 5]);
    let layer = random_layer(cfg, 0.05, 100);
    let b = 9;
    let x = gaussian(layer.dim(), b, 1.0, &mut rng(101));
    let singles: Vec<Run> = (0..b).map(|j| conv_snf(&layer, &Mat::from_fn(layer.dim(), 1, |i, _| x[(i, j)]), 1.3, Par::Seq)).collect();
    let mean = |f: &dyn Fn(&Run) -> MatRef<'_, f64>| {
        let first = f(&singles[0]);
        Mat::from_fn(first.nrows(), first.ncols(), |i, j| singles.iter().map(|s| f(s)[(i, j)]).sum::<f64>() / b as f64)
    };
    let (mw, mr) = (mean(&|s| s.grads.w()), mean(&|s| s.grads.r()));
    let mb = mean(&|s| s.grads.b().unwrap());
    let recon = singles.iter().map(|s| s.recon).sum::<f64>() / b as f64;
    for par in [Par::Seq, Par::rayon(2), Par::rayon(4)] {
        let run = conv_snf(&layer, &x, 1.3, par);
        // sums of ~1e4 O(1) terms in different orders: ~1e-12
        assert!(max_abs_diff(run.grads.w(), mw.as_ref()) < 1e-10, "{par:?}: dw");
        assert!(max_abs_diff(run.grads.r(), mr.as_ref()) < 1e-10, "{par:?}: dr");
        assert!(max_abs_diff(run.grads.b().unwrap(), mb.as_ref()) < 1e-10, "{par:?}: db");
        assert!((run.recon - recon).abs() < 1e-10 * (1.0 + recon), "{par:?}: recon");
        for (j, s) in singles.iter().enumerate() {
            let col = Mat::from_fn(layer.dim(), 1, |i, _| run.dx[(i, j)]);
            assert!(max_abs_diff(col.as_ref(), s.dx.as_ref()) < 1e-12, "{par:?}: dx column {j}");
        }
    }
}
