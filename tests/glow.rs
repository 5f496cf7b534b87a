//! Glow (proofs/glow.md): whole models on tiny images against dense Jacobians and central
//! differences, the self-normalizing mixing layers against the exact gradient, ActNorm's
//! data-dependent initialisation, typed errors.
//!
//! Tolerances: as tests/transform_contract.rs — central differences in f64 with h = 1e-5
//! have truncation error ~1e-10 relative on these smooth maps (the conditioners' ReLUs are
//! kinks, but no pre-activation of these fixed inputs lies within ~1e-5 of one, so every
//! difference stays on one side); asserted at 1e-6 relative to max(1, |value|), far above
//! rounding (~1e-10) and far below a missing or wrong term (>= 1e-2 in the mutations tried).

mod common;

use common::{gaussian, rng};
use faer::{Mat, Par};
use snf::flow::glow::{glow, snf_mixing_conv, GlowConfig, GlowMixing};
use snf::flow::Inverse;
use snf::grad::angle_degrees;
use snf::layers::ActNorm;
use snf::prelude::*;

const MIXINGS: [GlowMixing; 4] = [GlowMixing::Exact1x1, GlowMixing::Lu1x1, GlowMixing::Snf1x1, GlowMixing::Snf(3)];

/// Pixel-like inputs in (0, 256).
fn pixels(d: usize, b: usize, salt: usize) -> Mat<f64> {
    Mat::from_fn(d, b, |i, j| 12.0 + ((i * 37 + j * 91 + salt * 13) % 230) as f64 + 0.37)
}

/// A 2-level, 2-step Glow on 1x4x4 (D = 16), initialised from a batch of 64 images (a
/// batch of 3 at the 1x1 top level gives ActNorm scales of ~1e6 and couplings so
/// contracting that their inverse loses every digit), with every parameter of every layer
/// moved off its initialisation; self-normalizing layers keep R = W^{-1}.
fn tiny_glow(mixing: GlowMixing, seed: u64) -> Flow<f64> {
    let mut flow = glow::<f64, _>(Shape::image(1, 4, 4), GlowConfig::new(2, 2, 3, mixing), &mut rng(seed)).unwrap();
    let init = Mat::from_fn(16, 64, |i, j| 128.0 + 100.0 * (((i * 7 + j * 13) % 17) as f64 / 17.0 - 0.5) + 5.0 * ((i * j) % 3) as f64);
    flow.data_init(init.as_ref(), Par::Seq).unwrap();
    for (k, l) in flow.layers_mut().iter_mut().enumerate() {
        if l.kind() == "snf-conv" {
            continue; // keeps R = W^{-1} (random orthogonal, exact at initialisation)
        }
        // the couplings' output layer (blocks 6, 7) sees hidden units scaled up by the
        // ActNorms (~e^2 and ~e^4 here): 0.01 keeps the scales sigma(r + 2) in (0.5, 1) as
        // in training, where the layer starts at zero; larger moves make the inverse lose digits
        let coupling = l.kind() == "affine-coupling";
        for (j, mut p) in l.params_mut().into_iter().enumerate() {
            let std = if coupling && j >= 6 { 0.01 } else { 0.1 };
            let n = gaussian(p.nrows(), p.ncols(), std, &mut rng(1000 + 10 * k as u64 + j as u64));
            faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
        }
    }
    flow
}

fn loss(f: &Flow<f64>, x: &Mat<f64>) -> f64 {
    let b = x.ncols();
    let mut ws = f.workspace(b, Par::Seq).unwrap();
    let s = f.static_log_det(&mut ws).unwrap();
    let mut lp = vec![0.0; b];
    f.log_prob_given(x.as_ref(), s, &mut ws, &mut lp).unwrap();
    -lp.iter().sum::<f64>() / b as f64
}

/// inverse(forward(x)) = x through both inverses; the flow's log-det (per-example part +
/// the cached static part) equals log|det| of the dense Jacobian of x -> z.
#[test]
fn glow_inverts_and_its_log_det_is_the_dense_jacobians() {
    for (s, mixing) in MIXINGS.into_iter().enumerate() {
        let x = pixels(16, 3, s);
        let flow = tiny_glow(mixing, 10 + s as u64);
        let run = |x: &Mat<f64>| {
            let mut ws = flow.workspace(x.ncols(), Par::Seq).unwrap();
            let (mut z, mut ld) = (Mat::zeros(16, x.ncols()), vec![0.0; x.ncols()]);
            // the flow's forward includes the cached static part
            flow.forward(x.as_ref(), z.as_mut(), &mut ld, &mut ws).unwrap();
            (z, ld)
        };
        let (z, ld) = run(&x);
        for how in [Inverse::Exact, Inverse::Learned] {
            let mut ws = flow.workspace(3, Par::Seq).unwrap();
            let mut back = Mat::zeros(16, 3);
            flow.inverse(z.as_ref(), back.as_mut(), &mut ws, how).unwrap();
            let err = common::max_abs_diff(back.as_ref(), x.as_ref());
            assert!(err < 1e-7, "{mixing:?} {how:?}: inverse(forward(x)) off by {err}");
        }
        for (j, &ld_j) in ld.iter().enumerate() {
            let col = x.as_ref().subcols(j, 1).to_owned();
            let h = 1e-5;
            let mut jac = nalgebra::DMatrix::zeros(16, 16);
            for c in 0..16 {
                let (mut p, mut m) = (col.clone(), col.clone());
                p[(c, 0)] += h;
                m[(c, 0)] -= h;
                let (zp, _) = run(&p);
                let (zm, _) = run(&m);
                for r in 0..16 {
                    jac[(r, c)] = (zp[(r, 0)] - zm[(r, 0)]) / (2.0 * h);
                }
            }
            let want = jac.determinant().abs().ln();
            assert!((ld_j - want).abs() <= 1e-6 * want.abs().max(1.0), "{mixing:?}: log-det {ld_j} vs dense {want}");
        }
    }
}

/// Every parameter block of every layer of a Glow (ActNorm, mixing, coupling with its
/// whole conditioner, split prior) against central differences of -mean log p: the
/// training gradient for exact mixing, the exact-path gradient for self-normalizing mixing.
#[test]
fn glow_gradients_match_finite_differences() {
    for (s, mixing) in MIXINGS.into_iter().enumerate() {
        let x = pixels(16, 3, 5 + s);
        let flow = tiny_glow(mixing, 20 + s as u64);
        let mut ws = flow.exact_workspace(3, Par::Seq).unwrap();
        let mut grads = flow.zero_grads();
        if mixing.is_self_normalizing() {
            flow.exact_gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
        } else {
            flow.gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
        }
        let mut checked = std::collections::BTreeMap::<&str, usize>::new();
        for k in 0..flow.layers().len() {
            let kind = flow.layers()[k].kind();
            let names: Vec<&str> = flow.layers()[k].params().iter().map(|p| p.name).collect();
            let blocks: Vec<Mat<f64>> = grads.layers[k].blocks().into_iter().map(|m| m.to_owned()).collect();
            for (p, g) in blocks.iter().enumerate() {
                if kind == "snf-conv" && names[p] == "r" {
                    continue; // R is not a parameter of the likelihood
                }
                // the largest-magnitude entry and the last one
                let (mut bi, mut bj, mut bv) = (0, 0, -1.0);
                for j in 0..g.ncols() {
                    for i in 0..g.nrows() {
                        if g[(i, j)].abs() > bv {
                            (bi, bj, bv) = (i, j, g[(i, j)].abs());
                        }
                    }
                }
                for (i, j) in [(bi, bj), (g.nrows() - 1, g.ncols() - 1)] {
                    let h = 1e-5;
                    let (mut fp, mut fm) = (flow.clone(), flow.clone());
                    fp.layers_mut()[k].params_mut()[p][(i, j)] += h;
                    fm.layers_mut()[k].params_mut()[p][(i, j)] -= h;
                    // the self-normalizing objective is (log p^f + log p^g) / 2: its W-gradient is
                    // half the likelihood's (proofs/fc.md)
                    let half = if kind == "snf-conv" { 0.5 } else { 1.0 };
                    let fd = half * (loss(&fp, &x) - loss(&fm, &x)) / (2.0 * h);
                    let got = g[(i, j)];
                    assert!(
                        (got - fd).abs() <= 1e-6 * got.abs().max(fd.abs()).max(1.0),
                        "{mixing:?} layer {k} ({kind}) {} [{i}, {j}]: {got} vs {fd}",
                        names[p]
                    );
                }
                *checked.entry(kind).or_default() += 1;
            }
        }
        for (kind, blocks) in [("actnorm", 8), ("affine-coupling", 32), ("split", 2)] {
            assert!(checked.get(kind).copied().unwrap_or(0) >= blocks, "{mixing:?}: {kind} blocks not checked: {checked:?}");
        }
        let mix = match mixing {
            GlowMixing::Exact1x1 => "inv-conv1x1",
            GlowMixing::Lu1x1 => "lu-conv1x1",
            _ => "snf-conv",
        };
        assert!(checked.get(mix).copied().unwrap_or(0) >= 4, "{mixing:?}: mixing not checked: {checked:?}");
    }
}

/// With R = W^{-1} (as initialised) the self-normalizing mixing layers' W-gradient points
/// exactly along the exact one: angle < 1e-9 degrees, per layer, for 1x1 and 3x3 mixing
/// (the 3x3 kernel is orthogonal at its centre tap only, so its T(w)^{-1} is a centre-tap
/// kernel too). Every other layer's gradient is identical (same deltas flow through).
#[test]
fn snf_mixing_gradient_equals_the_exact_one_at_r_equals_w_inverse() {
    for (s, mixing) in [GlowMixing::Snf1x1, GlowMixing::Snf(3)].into_iter().enumerate() {
        let x = pixels(16, 4, 9 + s);
        let flow = tiny_glow(mixing, 30 + s as u64);
        let mut ws = flow.exact_workspace(4, Par::Seq).unwrap();
        let (mut g_snf, mut g_exact) = (flow.zero_grads(), flow.zero_grads());
        flow.gradients(x.as_ref(), &mut g_snf, &mut ws, 0.0).unwrap();
        flow.exact_gradients(x.as_ref(), &mut g_exact, &mut ws, 0.0).unwrap();
        let mut mixing_layers = 0;
        for k in 0..flow.layers().len() {
            let (a, b) = (g_snf.layers[k].blocks(), g_exact.layers[k].blocks());
            if flow.layers()[k].kind() == "snf-conv" {
                let deg = angle_degrees(&[a[0]], &[b[0]]).unwrap();
                assert!(deg < 1e-9, "{mixing:?} layer {k}: angle {deg} deg");
                mixing_layers += 1;
            } else if !a.is_empty() {
                let deg = angle_degrees(&a, &b).unwrap();
                assert!(deg < 1e-9, "{mixing:?} layer {k} ({}): angle {deg} deg", flow.layers()[k].kind());
            }
        }
        assert_eq!(mixing_layers, 4, "{mixing:?}");
    }
}

/// Flow::data_init sets every ActNorm from the data reaching it: the first ActNorm's
/// output has zero mean and unit variance per channel (to 1e-9: the 1e-6 floor on the
/// standard deviation moves the variance by ~2e-6/σ relative, σ here >= 0.3); it runs once.
#[test]
fn actnorm_starts_at_zero_mean_unit_variance_and_initialises_once() {
    let x = pixels(16, 8, 3);
    let mut flow = glow::<f64, _>(Shape::image(1, 4, 4), GlowConfig::new(2, 1, 3, GlowMixing::Exact1x1), &mut rng(40)).unwrap();
    flow.data_init(x.as_ref(), Par::Seq).unwrap();
    // layers: preprocess, squeeze, actnorm (4x2x2), ...
    assert_eq!(flow.layers()[2].kind(), "actnorm");
    let mut ws = flow.workspace(8, Par::Seq).unwrap();
    let mut h = x.clone();
    for k in 0..3 {
        let l = &flow.layers()[k];
        let mut lws = l.workspace(8, Par::Seq).unwrap();
        let mut y = Mat::zeros(16, 8);
        let _ = l.forward(h.as_ref(), y.as_mut(), &mut [0.0; 8], &mut lws).unwrap();
        h = y;
    }
    for c in 0..4 {
        let v: Vec<f64> = (0..8).flat_map(|j| (0..4).map(move |p| (c * 4 + p, j))).map(|(i, j)| h[(i, j)]).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-5, "channel {c}: mean {mean}, variance {var}");
    }
    // a second data_init on other data changes nothing
    let before: Vec<Mat<f64>> = flow.layers()[2].params().iter().map(|p| p.value.to_owned()).collect();
    flow.data_init(pixels(16, 8, 99).as_ref(), Par::Seq).unwrap();
    let after: Vec<Mat<f64>> = flow.layers()[2].params().iter().map(|p| p.value.to_owned()).collect();
    assert_eq!(before, after);
    let an = flow.layer::<ActNorm<f64>>(2).unwrap();
    assert!(an.is_initialized());
    let _ = &mut ws;
}

/// What Glow cannot be built for is a typed error, not a panic.
#[test]
fn impossible_glows_are_typed_errors() {
    let bad = |shape: Shape, cfg: GlowConfig| matches!(glow::<f64, _>(shape, cfg, &mut rng(0)), Err(Error::InvalidArgument { .. }));
    assert!(bad(Shape::image(1, 6, 6), GlowConfig::new(2, 1, 4, GlowMixing::Exact1x1)), "6 is not divisible by 4");
    assert!(bad(Shape::image(1, 4, 4), GlowConfig::new(0, 1, 4, GlowMixing::Exact1x1)));
    assert!(bad(Shape::image(1, 4, 4), GlowConfig::new(1, 0, 4, GlowMixing::Exact1x1)));
    assert!(bad(Shape::image(1, 4, 4), GlowConfig::new(1, 1, 0, GlowMixing::Exact1x1)));
    assert!(bad(Shape::image(1, 4, 4), GlowConfig::new(1, 1, 4, GlowMixing::Snf(2))));
    assert!(bad(Shape::image(1, 4, 4), GlowConfig::new(64, 1, 4, GlowMixing::Exact1x1)), "2^64 overflows");
    assert!(snf_mixing_conv::<f64>(Shape::image(2, 3, 3), 4, &mut rng(0)).is_err());
    // data_init on a batch of the wrong height
    let mut f = glow::<f64, _>(Shape::image(1, 4, 4), GlowConfig::new(1, 1, 2, GlowMixing::Snf1x1), &mut rng(0)).unwrap();
    assert!(f.data_init(Mat::<f64>::zeros(15, 2).as_ref(), Par::Seq).is_err());
}

/// `glow_with_fit` with the projection fit: every mixing layer has it, and one refit
/// (`Flow::after_step` after a gradient pass) brings every mixing layer's perturbed inverse
/// back to the batch it saw. A 1x1 inverse kernel can equal $W^{-1}$, so the relaxation-1
/// step removes the batch residual up to what the ridge ($10^{-3}$ of the Gram's mean
/// diagonal) damps (measured: relative errors 3–6e-4 before, 0.3–3.5e-9 after). Asserted as a
/// 100-fold drop per layer, which a refit that skipped a layer, moved $w$ instead of $r$, or
/// solved with the wrong Gram would not give (the error would stay near its 3–6e-4).
#[test]
fn glow_with_the_projection_fit_refits_each_mixing_layer() {
    use snf::flow::glow::glow_with_fit;
    use snf::layers::linear::InverseFit;
    let cfg = GlowConfig::new(2, 2, 3, GlowMixing::Snf1x1);
    let mut flow = glow_with_fit::<f64, _>(Shape::image(1, 4, 4), cfg, InverseFit::projection(), &mut rng(50)).unwrap();
    let x = pixels(16, 32, 5);
    flow.data_init(x.as_ref(), Par::Seq).unwrap();
    let snf: Vec<usize> = flow.self_normalizing().collect();
    assert_eq!(snf.len(), 4);
    for &k in &snf {
        let layer = flow.layer::<snf::layers::conv::SelfNormConv2d<f64>>(k).unwrap();
        assert_eq!(layer.inverse_fit(), InverseFit::projection(), "layer {k}");
    }
    for &k in &snf {
        let mut p = flow.layers_mut()[k].params_mut();
        let r = &mut p[1];
        for j in 0..r.ncols() {
            for i in 0..r.nrows() {
                r[(i, j)] += 0.03 * (((i * 3 + j * 5 + k) % 7) as f64 / 7.0 - 0.5);
            }
        }
    }
    let mut ws = flow.workspace(32, Par::Seq).unwrap();
    let mut grads = flow.zero_grads();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
    let before: Vec<f64> = snf.iter().map(|&k| ws.layer_relative_errors()[k]).collect();
    flow.after_step(&mut ws).unwrap();
    flow.gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
    let after: Vec<f64> = snf.iter().map(|&k| ws.layer_relative_errors()[k]).collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(*b > 1e-5, "the perturbation made no error: {before:?}");
        assert!(*a < 1e-2 * b, "no refit: before {before:?}, after {after:?}");
    }
}
