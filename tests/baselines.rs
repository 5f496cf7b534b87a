//! Table 1's conv baselines beyond the per-transform contract (tests/transform_contract.rs
//! checks each one's inverse, log-det against the dense Jacobian, input and parameter
//! gradients by central differences):
//!
//! - the convolution exponential's norm bound dominates the true spectral norm of the
//!   convolution matrix (SVD oracle), and its truncated series is within the stated
//!   tolerance of the matrix exponential (nalgebra's Padé `exp` oracle), with the term
//!   count minimal;
//! - the autoregressive convolution's matrix is triangular with the stated diagonal
//!   (its log-det equals an LU log-det), and its substitution inverse holds on larger images;
//! - whole baseline models: `Flow::gradients` against central differences of the flow's
//!   -mean log p, for parameters of every baseline layer;
//! - typed errors for what each layer cannot do.

mod common;

use common::{gaussian, naive_conv, rng};
use faer::{Mat, Par};
use proptest::prelude::*;
use snf::conv::{Conv2dGeometry, Conv2dSpec};
use snf::flow::models::{conv_nine_layer_with, ConvMixing, Gradient};
use snf::layers::{series_terms, AutoregressiveConv2d, AutoregressiveConv2dConfig, ConvExp, ConvExpConfig, Direction, InvConv1x1};
use snf::prelude::*;

fn geom(c: usize, h: usize, w: usize, k: usize) -> Conv2dGeometry {
    Conv2dGeometry::new(Conv2dSpec::same(c, [h, w], [k, k])).unwrap()
}

fn spectral_norm(m: &Mat<f64>) -> f64 {
    common::to_na(m.as_ref()).singular_values().max()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    /// ρ(k) ≥ ‖T(k)‖₂ for random kernels and image sizes (including images smaller than
    /// the kernel's reach), up to rounding (1e-12 relative). A bound that ignored the
    /// channel coupling (e.g. max over (o, i) of the tap sums) fails this for C > 1.
    #[test]
    fn the_norm_bound_dominates_the_spectral_norm(c in 1usize..4, h in 1usize..6, w in 1usize..6, std in 0.01f64..2.0, seed in 0u64..1000) {
        let g = geom(c, h, w, 3);
        let (kr, kc) = g.kernel_shape();
        let k = gaussian(kr, kc, std, &mut rng(seed));
        let layer = ConvExp::from_parts(ConvExpConfig { bias: false, ..ConvExpConfig::new(c, [h, w]) }, k.clone(), None).unwrap();
        let sigma = spectral_norm(&naive_conv::matrix(&g, k.as_ref()));
        prop_assert!(sigma <= layer.norm_bound() * (1.0 + 1e-12), "sigma {} > bound {}", sigma, layer.norm_bound());
    }
}

/// The truncated series against nalgebra's matrix exponential, for kernels with ρ < c
/// (no rescaling): the error is at most tol·‖x‖ per example (the bound), and the term count
/// is the least that meets the bound. At tol = 1e-3 the error is also checked to be
/// non-zero, so the comparison can see a truncation.
#[test]
fn the_truncated_series_is_within_its_bound_of_the_exponential() {
    let (c, h, w) = (2, 4, 3);
    let g = geom(c, h, w, 3);
    let (kr, kc) = g.kernel_shape();
    for (seed, tol) in [(1u64, 1e-3), (2, 1e-6), (3, 1e-10)] {
        let mut k = gaussian(kr, kc, 0.1, &mut rng(seed));
        let cfg = ConvExpConfig { bias: false, ..ConvExpConfig::new(c, [h, w]).with_tolerance(tol) };
        let layer = ConvExp::from_parts(cfg, k.clone(), None).unwrap();
        let rho = layer.norm_bound();
        if rho >= cfg.coeff {
            k = &k * (0.5 * cfg.coeff / rho);
        }
        let layer = ConvExp::from_parts(cfg, k.clone(), None).unwrap();
        let rho = layer.norm_bound();
        let n = layer.terms().unwrap();
        assert_eq!(Some(n), series_terms(rho, tol));
        // minimality: n - 1 terms would not meet the bound
        if n > 1 {
            let mut term = rho;
            for j in 1..n {
                term *= rho / (j + 1) as f64;
            }
            let prev = term / (1.0 - rho / (n + 1) as f64);
            assert!(prev > tol, "n = {n} is not the least term count ({prev} <= {tol})");
        }
        let e = common::to_na(naive_conv::matrix(&g, k.as_ref()).as_ref()).exp();
        let x = gaussian(c * h * w, 3, 1.0, &mut rng(10 + seed));
        let mut ws = layer.workspace(3, Par::Seq).unwrap();
        let mut z = Mat::zeros(c * h * w, 3);
        let _ = layer.forward(x.as_ref(), z.as_mut(), &mut [0.0; 3], &mut ws).unwrap();
        let want = &e * common::to_na(x.as_ref());
        let mut worst = 0.0f64;
        for j in 0..3 {
            let err: f64 = (0..c * h * w).map(|i| (z[(i, j)] - want[(i, j)]).powi(2)).sum::<f64>().sqrt();
            let xn: f64 = (0..c * h * w).map(|i| x[(i, j)].powi(2)).sum::<f64>().sqrt();
            assert!(err <= tol * xn * (1.0 + 1e-6) + 1e-13 * xn, "tol {tol}: error {err} > {}", tol * xn);
            worst = worst.max(err / xn);
        }
        if tol == 1e-3 {
            assert!(worst > 1e-9, "the comparison cannot see the truncation ({worst})");
        }
    }
}

/// Dense T(M ⊙ k) of an autoregressive layer, through the layer itself (columns of the identity).
fn dense_of(t: &dyn Transform<f64>, d: usize) -> Mat<f64> {
    let mut ws = t.workspace(d, Par::Seq).unwrap();
    let eye = Mat::from_fn(d, d, |i, j| if i == j { 1.0 } else { 0.0 });
    let (mut z, mut z0) = (Mat::zeros(d, d), Mat::zeros(d, 1));
    let _ = t.forward(eye.as_ref(), z.as_mut(), &mut vec![0.0; d], &mut ws).unwrap();
    let _ = t.forward(Mat::<f64>::zeros(d, 1).as_ref(), z0.as_mut(), &mut [0.0], &mut ws).unwrap();
    Mat::from_fn(d, d, |i, j| z[(i, j)] - z0[(i, 0)])
}

/// The masked convolution's matrix, permuted to the pixel-major order (y, x, c), is lower
/// (upper) triangular with the centre taps on its diagonal; the layer's log-det equals the
/// LU log-det of the dense matrix; inverse(forward(x)) = x on a 3x5x6 image; and the
/// composition lower∘upper reaches the full 3x3 neighbourhood (the emerging receptive field).
#[test]
fn autoregressive_convolutions_are_triangular_and_invert() {
    let (c, h, w) = (3, 5, 6);
    let d = c * h * w;
    let perm = |i: usize| {
        let (ch, p) = (i / (h * w), i % (h * w));
        p * c + ch
    };
    let mut layers = Vec::new();
    for (s, dir) in [Direction::Lower, Direction::Upper].into_iter().enumerate() {
        let mut l = AutoregressiveConv2d::<f64>::new(AutoregressiveConv2dConfig::new(c, [h, w], dir), &mut rng(40 + s as u64)).unwrap();
        for mut p in l.params_mut() {
            let n = gaussian(p.nrows(), p.ncols(), 0.3, &mut rng(50 + s as u64));
            faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
        }
        let t = dense_of(&l, d);
        let mut nonzero_wrong_side = 0;
        for i in 0..d {
            for j in 0..d {
                let (pi, pj) = (perm(i), perm(j));
                let wrong = if dir == Direction::Lower { pj > pi } else { pj < pi };
                if wrong && t[(i, j)] != 0.0 {
                    nonzero_wrong_side += 1;
                }
            }
        }
        assert_eq!(nonzero_wrong_side, 0, "{dir:?}: entries on the wrong side of the diagonal");
        let lu_logdet = common::to_na(t.as_ref()).determinant().abs().ln();
        let mut ws = l.workspace(4, Par::Seq).unwrap();
        let ld = l.static_log_det(&mut ws).unwrap();
        assert!((ld - lu_logdet).abs() < 1e-9 * lu_logdet.abs().max(1.0), "{dir:?}: log-det {ld} vs {lu_logdet}");
        let x = gaussian(d, 4, 1.0, &mut rng(60 + s as u64));
        let (mut z, mut back) = (Mat::zeros(d, 4), Mat::zeros(d, 4));
        let _ = l.forward(x.as_ref(), z.as_mut(), &mut [0.0; 4], &mut ws).unwrap();
        l.inverse(z.as_ref(), back.as_mut(), &mut ws).unwrap();
        assert!(common::max_abs_diff(back.as_ref(), x.as_ref()) < 1e-10, "{dir:?}: inverse");
        layers.push(t);
    }
    let both = &layers[1] * &layers[0];
    // output pixel (2, 2) of channel 0 depends on all nine neighbours of every channel
    let out = 2 * w + 2;
    for ch in 0..c {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let p = ((2 + dy) as usize) * w + (2 + dx) as usize;
                assert!(both[(out, ch * h * w + p)] != 0.0, "no path from channel {ch} offset ({dy}, {dx})");
            }
        }
    }
}

/// A whole baseline model (the 9-layer conv layout on 1x4x4 images) against central
/// differences of -mean log p, for two entries of every parameter block of every baseline
/// layer. h = 1e-5 in f64: truncation ~1e-10 relative; asserted at 1e-6 relative to
/// max(1, |g|), far below a wrong term.
#[test]
fn baseline_models_match_finite_differences() {
    let shape = Shape::image(1, 4, 4);
    for (seed, mixing) in [ConvMixing::Emerging, ConvMixing::ConvExp].into_iter().enumerate() {
        let mut flow = conv_nine_layer_with::<f64, _>(shape, mixing, &mut rng(70 + seed as u64)).unwrap();
        // move every baseline layer away from its near-identity start
        for (k, l) in flow.layers_mut().iter_mut().enumerate() {
            if matches!(l.kind(), "inv-conv1x1" | "autoregressive-conv" | "conv-exp") {
                for mut p in l.params_mut() {
                    let n = gaussian(p.nrows(), p.ncols(), 0.05, &mut rng(100 + k as u64));
                    faer::zip!(p.as_mut(), n.as_ref()).for_each(|faer::unzip!(p, n)| *p += *n);
                }
            }
        }
        let b = 3;
        let x = Mat::from_fn(16, b, |i, j| 10.0 + ((i * 37 + j * 91) % 230) as f64 + 0.5);
        let mut ws = flow.workspace(b, Par::Seq).unwrap();
        let mut grads = flow.zero_grads();
        flow.gradients(x.as_ref(), &mut grads, &mut ws, 0.0).unwrap();
        let loss = |f: &Flow<f64>| {
            let mut ws = f.workspace(b, Par::Seq).unwrap();
            let s = f.static_log_det(&mut ws).unwrap();
            let mut lp = vec![0.0; b];
            f.log_prob_given(x.as_ref(), s, &mut ws, &mut lp).unwrap();
            -lp.iter().sum::<f64>() / b as f64
        };
        let mut checked = 0;
        for k in 0..flow.layers().len() {
            if !matches!(flow.layers()[k].kind(), "inv-conv1x1" | "autoregressive-conv" | "conv-exp") {
                continue;
            }
            let blocks: Vec<Mat<f64>> = grads.layers[k].blocks().into_iter().map(|m| m.to_owned()).collect();
            for (p, g) in blocks.iter().enumerate() {
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
                    let fd = (loss(&fp) - loss(&fm)) / (2.0 * h);
                    let got = g[(i, j)];
                    assert!((got - fd).abs() <= 1e-6 * got.abs().max(fd.abs()).max(1.0), "{mixing:?} layer {k} block {p} [{i}, {j}]: {got} vs {fd}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 12, "{mixing:?}: only {checked} entries checked");
    }
}

fn kind(e: snf::Error) -> &'static str {
    match e {
        snf::Error::InvalidArgument { .. } => "invalid-argument",
        snf::Error::InvalidConv { .. } => "invalid-conv",
        snf::Error::ShapeMismatch { .. } => "shape",
        snf::Error::Singular { .. } => "singular",
        snf::Error::NonFinite { .. } => "non-finite",
        _ => "other",
    }
}

#[test]
fn what_each_baseline_cannot_do_is_a_typed_error() {
    let mut g = rng(90);
    // even or too small kernels, out-of-range coefficient and tolerance
    let ar = |k: usize| {
        AutoregressiveConv2d::<f64>::new(AutoregressiveConv2dConfig { kernel: k, ..AutoregressiveConv2dConfig::new(2, [4, 4], Direction::Lower) }, &mut rng(1))
    };
    assert_eq!(kind(ar(2).unwrap_err()), "invalid-argument");
    assert_eq!(kind(ar(1).unwrap_err()), "invalid-argument");
    let ce = |cfg: ConvExpConfig| ConvExp::<f64>::new(cfg, &mut rng(2));
    assert_eq!(kind(ce(ConvExpConfig { kernel: 4, ..ConvExpConfig::new(2, [4, 4]) }).unwrap_err()), "invalid-argument");
    assert_eq!(kind(ce(ConvExpConfig { coeff: 0.0, ..ConvExpConfig::new(2, [4, 4]) }).unwrap_err()), "invalid-argument");
    assert_eq!(kind(ce(ConvExpConfig { coeff: f64::NAN, ..ConvExpConfig::new(2, [4, 4]) }).unwrap_err()), "invalid-argument");
    assert_eq!(kind(ce(ConvExpConfig::new(2, [4, 4]).with_tolerance(0.0)).unwrap_err()), "invalid-argument");
    assert_eq!(kind(ce(ConvExpConfig::new(0, [4, 4])).unwrap_err()), "invalid-argument");
    // wrong tensor shapes and non-finite values from a checkpoint
    assert_eq!(kind(InvConv1x1::from_parts(Shape::image(3, 2, 2), Mat::<f64>::zeros(2, 2)).unwrap_err()), "shape");
    assert_eq!(kind(InvConv1x1::from_parts(Shape::image(1, 2, 2), Mat::from_fn(1, 1, |_, _| f64::NAN)).unwrap_err()), "non-finite");
    assert_eq!(kind(ConvExp::from_parts(ConvExpConfig::new(2, [4, 4]), Mat::<f64>::zeros(18, 3), Some(Mat::zeros(2, 1))).unwrap_err()), "shape");
    assert_eq!(kind(ConvExp::from_parts(ConvExpConfig::new(2, [4, 4]), Mat::<f64>::zeros(18, 2), None).unwrap_err()), "invalid-argument");
    // a zero diagonal tap makes the triangular matrix singular: log-det, backward and inverse refuse
    let cfg = AutoregressiveConv2dConfig::new(2, [3, 3], Direction::Upper);
    let mut l = AutoregressiveConv2d::<f64>::new(cfg, &mut g).unwrap();
    let diag = Conv2dGeometry::new(Conv2dSpec::same(2, [3, 3], [3, 3])).unwrap().kernel_index(1, 1, 1, 1);
    l.params_mut()[0][diag] = 0.0;
    let mut ws = l.workspace(2, Par::Seq).unwrap();
    assert_eq!(kind(l.static_log_det(&mut ws).unwrap_err()), "singular");
    let x = gaussian(18, 2, 1.0, &mut rng(3));
    let mut z = Mat::zeros(18, 2);
    let tape = l.forward(x.as_ref(), z.as_mut(), &mut [0.0; 2], &mut ws).unwrap();
    let mut grads = l.zero_grads();
    assert_eq!(kind(l.backward(tape, x.as_ref(), z.as_ref(), Mat::zeros(18, 2).as_mut(), &mut grads, &mut ws, 0.0).unwrap_err()), "singular");
    assert_eq!(kind(l.inverse(z.as_ref(), Mat::zeros(18, 2).as_mut(), &mut ws).unwrap_err()), "singular");
    // a singular 1x1 mixing matrix
    let s = InvConv1x1::from_parts(Shape::image(2, 2, 2), Mat::from_fn(2, 2, |_, _| 1.0)).unwrap();
    let mut ws = s.workspace(1, Par::Seq).unwrap();
    assert_eq!(kind(s.static_log_det(&mut ws).unwrap_err()), "singular");
    // wrong input shapes
    let ce = ConvExp::<f64>::new(ConvExpConfig::new(2, [4, 4]), &mut g).unwrap();
    assert_eq!(kind(ce.output_shape(Shape::image(2, 4, 5)).unwrap_err()), "invalid-argument");
    let mut ws = ce.workspace(2, Par::Seq).unwrap();
    assert_eq!(kind(ce.forward(Mat::<f64>::zeros(31, 2).as_ref(), Mat::zeros(31, 2).as_mut(), &mut [0.0; 2], &mut ws).unwrap_err()), "shape");
    // the models: the baselines exist for the conv layout only; relative is FC only
    assert_eq!(kind(conv_nine_layer_with::<f64, _>(Shape::image(1, 6, 6), ConvMixing::Emerging, &mut g).unwrap_err()), "invalid-argument");
    assert_eq!(kind(conv_nine_layer_with::<f64, _>(Shape::image(1, 8, 8), ConvMixing::Conv3x3(Gradient::Relative), &mut g).unwrap_err()), "invalid-argument");
}
