//! The conv primitive against an independent oracle (`common::naive_conv`, a direct
//! loop from the definition), finite differences and brute-force counts.
//! Derivations: `proofs/conv.md` §1–§3.

mod common;

use common::naive_conv;
use common::{gaussian, max_abs, max_abs_diff, rng};
use faer::{Accum, Mat, MatRef, Par};
use proptest::prelude::*;
use snf::conv::{self, Conv2d, Conv2dGeometry, Conv2dSpec};
use snf::Error;

/// Random convolution parameters, including strides, padding, dilation and groups.
fn any_spec() -> impl Strategy<Value = Conv2dSpec> {
    (
        (1usize..=3, 1usize..=3, 1usize..=2),
        (1usize..=6, 1usize..=6),
        (1usize..=3, 1usize..=3),
        (1usize..=2, 1usize..=2),
        (0usize..=2, 0usize..=2),
        (1usize..=2, 1usize..=2),
    )
        .prop_map(|((cg, og, g), (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))| Conv2dSpec {
            in_channels: cg * g,
            out_channels: og * g,
            input: [h, w],
            kernel: [kh, kw],
            stride: [sh, sw],
            padding: [ph, pw],
            dilation: [dh, dw],
            groups: g,
        })
}

/// With `same`, turn `spec` into a self-transposing geometry (odd kernel, stride 1, 'same'
/// padding, C_in = C_out): the fast paths (flat-shift im2col, input gradient as a
/// forward convolution with the flipped kernel) run only there.
fn maybe_same(spec: Conv2dSpec, same: bool) -> Conv2dSpec {
    if !same {
        return spec;
    }
    let kernel = [spec.kernel[0] | 1, spec.kernel[1] | 1];
    Conv2dSpec {
        out_channels: spec.in_channels,
        kernel,
        stride: [1, 1],
        padding: [spec.dilation[0] * (kernel[0] - 1) / 2, spec.dilation[1] * (kernel[1] - 1) / 2],
        ..spec
    }
}

fn kernel(geom: &Conv2dGeometry, seed: u64) -> Mat<f64> {
    let (r, c) = geom.kernel_shape();
    gaussian(r, c, 1.0, &mut rng(seed))
}

// Tolerances: every output entry is a sum of at most C_g*KH*KW <= 27 products of O(1)
// Gaussians (|terms| < ~20), so the f64 rounding error of any summation order is below
// 27 * 20 * 2^-52 ~ 1e-13. 1e-12 leaves a margin and is 1e10 times smaller than any
// indexing mistake (which moves entries by O(1)).
const SUM_TOL: f64 = 1e-12;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// forward == naive oracle, and the dense T(k) == the oracle's matrix (built column
    /// by column from unit vectors) entry for entry, and T(k) x == forward.
    #[test]
    fn forward_and_matrix_match_the_oracle(spec in any_spec(), b in 0usize..4, seed in 0u64..1000, same in any::<bool>()) {
        let Ok(geom) = Conv2dGeometry::new(maybe_same(spec, same)) else { return Err(TestCaseError::reject("invalid")) };
        let k = kernel(&geom, seed);
        let x = gaussian(geom.in_len(), b, 1.0, &mut rng(seed + 1));
        for par in [Par::Seq, Par::rayon(3)] {
            let mut conv = Conv2d::new(geom, par);
            let mut z = Mat::from_fn(geom.out_len(), b, |_, _| f64::NAN); // must be overwritten
            conv.forward(k.as_ref(), x.as_ref(), z.as_mut()).unwrap();
            let want = naive_conv::conv_batch(&geom, k.as_ref(), x.as_ref());
            prop_assert!(max_abs_diff(z.as_ref(), want.as_ref()) <= SUM_TOL);
        }
        let t = conv::conv_matrix(&geom, k.as_ref()).unwrap();
        let t_oracle = naive_conv::matrix(&geom, k.as_ref());
        prop_assert_eq!(max_abs_diff(t.as_ref(), t_oracle.as_ref()), 0.0);
    }

    /// input_grad == alpha T(k)^T dz, weight_grad == alpha P(dz x^T), both with Replace
    /// and Add, sequential and batch-parallel; P checked against its definition
    /// <P(A), k> = <A, T(k)>.
    #[test]
    fn gradients_match_the_explicit_matrix(spec in any_spec(), b in 0usize..4, seed in 0u64..1000, same in any::<bool>()) {
        let Ok(geom) = Conv2dGeometry::new(maybe_same(spec, same)) else { return Err(TestCaseError::reject("invalid")) };
        let k = kernel(&geom, seed);
        let x = gaussian(geom.in_len(), b, 1.0, &mut rng(seed + 1));
        let dz = gaussian(geom.out_len(), b, 1.0, &mut rng(seed + 2));
        let t = naive_conv::matrix(&geom, k.as_ref());
        let alpha = 0.75;
        let want_dx = Mat::from_fn(geom.in_len(), b, |i, j| alpha * (0..geom.out_len()).map(|r| t[(r, i)] * dz[(r, j)]).sum::<f64>());
        // P(dz x^T): sum over structural entries of T; computed from T's sparsity via
        // d/dk_i of sum_b dz_b^T T(k) x_b, which is linear in k: read it off with unit kernels.
        let (kr, kc) = geom.kernel_shape();
        let want_dk = Mat::from_fn(kr, kc, |r, c| {
            let mut e = Mat::zeros(kr, kc);
            e[(r, c)] = 1.0;
            let te = naive_conv::matrix(&geom, e.as_ref());
            alpha * (0..b).map(|j| (0..geom.out_len()).map(|p| dz[(p, j)] * (0..geom.in_len()).map(|q| te[(p, q)] * x[(q, j)]).sum::<f64>()).sum::<f64>()).sum::<f64>()
        });
        for par in [Par::Seq, Par::rayon(3)] {
            let mut conv = Conv2d::new(geom, par);
            let mut dx = Mat::from_fn(geom.in_len(), b, |_, _| f64::NAN);
            conv.input_grad(k.as_ref(), dz.as_ref(), dx.as_mut(), alpha, Accum::Replace).unwrap();
            prop_assert!(max_abs_diff(dx.as_ref(), want_dx.as_ref()) <= SUM_TOL * (1.0 + geom.out_channels() as f64));
            conv.input_grad(k.as_ref(), dz.as_ref(), dx.as_mut(), alpha, Accum::Add).unwrap();
            let twice = Mat::from_fn(geom.in_len(), b, |i, j| 2.0 * want_dx[(i, j)]);
            prop_assert!(max_abs_diff(dx.as_ref(), twice.as_ref()) <= 4.0 * SUM_TOL * (1.0 + geom.out_channels() as f64));

            let mut dk = Mat::from_fn(kr, kc, |_, _| f64::NAN);
            conv.weight_grad(x.as_ref(), dz.as_ref(), dk.as_mut(), alpha, Accum::Replace).unwrap();
            // each dk entry sums <= B * OH * OW <= 3 * 36 products
            prop_assert!(max_abs_diff(dk.as_ref(), want_dk.as_ref()) <= 1e-11);
            conv.weight_grad(x.as_ref(), dz.as_ref(), dk.as_mut(), alpha, Accum::Add).unwrap();
            let twice = Mat::from_fn(kr, kc, |i, j| 2.0 * want_dk[(i, j)]);
            prop_assert!(max_abs_diff(dk.as_ref(), twice.as_ref()) <= 2e-11);
        }
        // <P(A), k> == <A, T(k)> for a random A
        let a = gaussian(geom.out_len(), geom.in_len(), 1.0, &mut rng(seed + 3));
        let mut pa = Mat::zeros(kr, kc);
        conv::project_onto_kernel(&geom, a.as_ref(), pa.as_mut(), 1.0, Accum::Replace).unwrap();
        let lhs: f64 = (0..kc).map(|c| (0..kr).map(|r| pa[(r, c)] * k[(r, c)]).sum::<f64>()).sum();
        let rhs: f64 = (0..geom.in_len()).map(|c| (0..geom.out_len()).map(|r| a[(r, c)] * t[(r, c)]).sum::<f64>()).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + rhs.abs()));
    }

    /// m (Eq. 27, computed by the conv with all-ones images) equals a brute-force count
    /// of each kernel element's occurrences in the explicit matrix, built by the oracle
    /// with distinct labels k_i = i + 1; and equals P(1).
    #[test]
    fn multiplicity_counts_occurrences(spec in any_spec(), same in any::<bool>()) {
        let Ok(geom) = Conv2dGeometry::new(maybe_same(spec, same)) else { return Err(TestCaseError::reject("invalid")) };
        let (kr, kc) = geom.kernel_shape();
        let labels = Mat::from_fn(kr, kc, |r, c| (c * kr + r + 1) as f64);
        let t = naive_conv::matrix(&geom, labels.as_ref());
        let mut count = Mat::<f64>::zeros(kr, kc);
        for j in 0..t.ncols() {
            for i in 0..t.nrows() {
                let v = t[(i, j)];
                if v != 0.0 {
                    let l = v as usize - 1;
                    count[(l % kr, l / kr)] += 1.0;
                }
            }
        }
        let m = conv::multiplicity::<f64>(&geom).unwrap();
        prop_assert_eq!(max_abs_diff(m.as_ref(), count.as_ref()), 0.0);
        let ones = Mat::from_fn(geom.out_len(), geom.in_len(), |_, _| 1.0);
        let mut p1 = Mat::zeros(kr, kc);
        conv::project_onto_kernel(&geom, ones.as_ref(), p1.as_mut(), 1.0, Accum::Replace).unwrap();
        prop_assert_eq!(max_abs_diff(p1.as_ref(), count.as_ref()), 0.0);
        // f32 gives the same integers
        let m32 = conv::multiplicity::<f32>(&geom).unwrap();
        prop_assert!((0..kc).all(|c| (0..kr).all(|r| m32[(r, c)] as f64 == count[(r, c)])));
    }

    /// T_{G'}(flip k) == T_G(k)^T exactly (both from the oracle) for every stride-1
    /// geometry whose transpose exists; G' == G for 'same' channel-preserving ones.
    #[test]
    fn flip_is_the_transpose(spec in any_spec(), seed in 0u64..1000, same in any::<bool>()) {
        let spec = maybe_same(Conv2dSpec { stride: [1, 1], ..spec }, same);
        let Ok(geom) = Conv2dGeometry::new(spec) else { return Err(TestCaseError::reject("invalid")) };
        let Ok(tgeom) = geom.transpose() else {
            // only p > d(K-1) may fail here
            prop_assert!((0..2).any(|a| spec.padding[a] > spec.dilation[a] * (spec.kernel[a] - 1)));
            return Ok(());
        };
        if same {
            prop_assert!(geom.is_self_transpose());
            prop_assert_eq!(tgeom, geom);
        }
        let k = kernel(&geom, seed);
        let fk = conv::flip(&geom, k.as_ref()).unwrap();
        let t = naive_conv::matrix(&geom, k.as_ref());
        let tf = naive_conv::matrix(&tgeom, fk.as_ref());
        prop_assert_eq!(max_abs_diff(tf.as_ref(), t.transpose()), 0.0);
        // flip is an involution
        let ffk = conv::flip(&tgeom, fk.as_ref()).unwrap();
        prop_assert_eq!(max_abs_diff(ffk.as_ref(), k.as_ref()), 0.0);
    }
}

/// The paper's printed Eq. 26, read 0-based (k[i, o, H-h, W-w]), indexes past the end
/// at h = 0: the slip the corrected K-1-h removes. Also the corrected form on a concrete
/// 1-channel 3x3 kernel: a 180-degree rotation.
#[test]
fn flip_is_a_rotation_for_one_channel() {
    let geom = Conv2dGeometry::new(Conv2dSpec::same(1, [4, 5], [3, 3])).unwrap();
    let k = Mat::from_fn(9, 1, |r, _| r as f64);
    let f = conv::flip(&geom, k.as_ref()).unwrap();
    let got: Vec<f64> = (0..9).map(|r| f[(r, 0)]).collect();
    assert_eq!(got, vec![8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
}

/// A 2-channel example of the channel swap: flip(k)[o, i] = rot180(k[i, o]).
#[test]
fn flip_swaps_channels() {
    let geom = Conv2dGeometry::new(Conv2dSpec::same(2, [3, 3], [1, 1])).unwrap();
    // 1x1 kernel: k is a 2x2 channel-mixing matrix stored as (in, out)
    let k = faer::mat![[1.0, 2.0], [3.0, 4.0]]; // k[o=0,i=0]=1, k[o=0,i=1]=3, k[o=1,i=0]=2, k[o=1,i=1]=4
    let f = conv::flip(&geom, k.as_ref()).unwrap();
    assert_eq!(f, k.transpose().to_owned());
}

#[test]
fn weight_grad_matches_finite_differences() {
    // phi(k) = sum_b dz_b^T conv(k, x_b) through the oracle; linear in k so central
    // differences are exact up to rounding (h = 1e-3, error ~ eps * |phi| / h ~ 1e-12).
    let geom =
        Conv2dGeometry::new(Conv2dSpec::new(4, 6, [7, 6], [3, 2]).with_stride([2, 1]).with_padding([1, 2]).with_dilation([1, 2]).with_groups(2)).unwrap();
    let k = kernel(&geom, 5);
    let x = gaussian(geom.in_len(), 3, 1.0, &mut rng(6));
    let dz = gaussian(geom.out_len(), 3, 1.0, &mut rng(7));
    let phi = |k: MatRef<'_, f64>| -> f64 {
        let z = naive_conv::conv_batch(&geom, k, x.as_ref());
        (0..3).map(|j| (0..geom.out_len()).map(|i| z[(i, j)] * dz[(i, j)]).sum::<f64>()).sum()
    };
    let (kr, kc) = geom.kernel_shape();
    let mut dk = Mat::zeros(kr, kc);
    Conv2d::new(geom, Par::rayon(2)).weight_grad(x.as_ref(), dz.as_ref(), dk.as_mut(), 1.0, Accum::Replace).unwrap();
    let h = 1e-3;
    for c in 0..kc {
        for r in 0..kr {
            let mut kp = k.clone();
            kp[(r, c)] += h;
            let mut km = k.clone();
            km[(r, c)] -= h;
            let fd = (phi(kp.as_ref()) - phi(km.as_ref())) / (2.0 * h);
            assert!((fd - dk[(r, c)]).abs() < 1e-9, "dk[{r},{c}]: fd {fd} vs {}", dk[(r, c)]);
        }
    }
    // and the input gradient against differences in x
    let mut dx = Mat::zeros(geom.in_len(), 3);
    Conv2d::new(geom, Par::Seq).input_grad(k.as_ref(), dz.as_ref(), dx.as_mut(), 1.0, Accum::Replace).unwrap();
    for j in 0..3 {
        for i in 0..geom.in_len() {
            let f = |delta: f64| {
                let mut xp = x.clone();
                xp[(i, j)] += delta;
                let z = naive_conv::conv_batch(&geom, k.as_ref(), xp.as_ref());
                (0..3).map(|j| (0..geom.out_len()).map(|i| z[(i, j)] * dz[(i, j)]).sum::<f64>()).sum::<f64>()
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!((fd - dx[(i, j)]).abs() < 1e-9);
        }
    }
    assert!(max_abs(dx.as_ref()) > 0.1, "the test must exercise non-trivial gradients");
}

#[test]
fn geometry_errors_are_typed() {
    let bad = [
        Conv2dSpec::new(0, 1, [4, 4], [3, 3]),
        Conv2dSpec::new(1, 1, [4, 4], [0, 3]),
        Conv2dSpec::new(1, 1, [4, 4], [3, 3]).with_stride([0, 1]),
        Conv2dSpec::new(1, 1, [4, 4], [3, 3]).with_dilation([1, 0]),
        Conv2dSpec::new(3, 2, [4, 4], [3, 3]).with_groups(2),
        Conv2dSpec::new(2, 2, [4, 4], [3, 3]).with_groups(0),
        Conv2dSpec::new(1, 1, [2, 4], [3, 3]),
        Conv2dSpec::new(1, 1, [4, 4], [3, 3]).with_dilation([2, 2]),
        Conv2dSpec::new(1, 1, [4, 4], [3, 3]).with_padding([usize::MAX / 2, 0]),
        Conv2dSpec::new(usize::MAX / 4, 1, [4, 4], [3, 3]),
        Conv2dSpec::new(1, 1, [4, 4], [3, usize::MAX]),
    ];
    for spec in bad {
        match Conv2dGeometry::new(spec) {
            Err(Error::InvalidConv { .. }) => {}
            other => panic!("{spec:?}: expected InvalidConv, got {other:?}"),
        }
    }
    // the transpose of a strided conv is not a conv
    let g = Conv2dGeometry::new(Conv2dSpec::new(1, 1, [6, 6], [3, 3]).with_stride([2, 1])).unwrap();
    assert!(matches!(g.transpose(), Err(Error::InvalidConv { .. })));
    // padding beyond the kernel reach
    let g = Conv2dGeometry::new(Conv2dSpec::new(1, 1, [6, 6], [3, 3]).with_padding([3, 0])).unwrap();
    assert!(matches!(g.transpose(), Err(Error::InvalidConv { .. })));
    assert!(matches!(conv::dirac::<f64>(&g), Err(Error::InvalidConv { .. })));
}

#[test]
fn operand_errors_are_typed() {
    let geom = Conv2dGeometry::new(Conv2dSpec::same(2, [3, 3], [3, 3])).unwrap();
    let mut conv = Conv2d::<f64>::new(geom, Par::Seq);
    let k = kernel(&geom, 1);
    let x = Mat::<f64>::zeros(18, 2);
    let mut z = Mat::<f64>::zeros(18, 2);
    // wrong kernel, wrong batch rows, mismatched batch sizes
    assert!(matches!(conv.forward(k.transpose(), x.as_ref(), z.as_mut()), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(conv.forward(k.as_ref(), x.subrows(0, 17), z.as_mut()), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(conv.forward(k.as_ref(), x.subcols(0, 1), z.as_mut()), Err(Error::ShapeMismatch { .. })));
    // non-contiguous columns (a transposed view)
    let xt = Mat::<f64>::zeros(2, 18);
    assert!(matches!(conv.forward(k.as_ref(), xt.transpose(), z.as_mut()), Err(Error::InvalidArgument { .. })));
    let mut dk = Mat::zeros(9, 2);
    assert!(matches!(conv.weight_grad(x.as_ref(), z.as_ref(), dk.as_mut(), 1.0, Accum::Replace), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(conv::flip(&geom, k.subrows(0, 3)), Err(Error::ShapeMismatch { .. })));
    let mut out = Mat::zeros(5, 5);
    assert!(matches!(conv::resize_centered_into(k.as_ref(), 2, [3, 3], [4, 4], out.as_mut()), Err(Error::InvalidConv { .. })));
}

/// Dirac kernel: forward is the identity, for groups and non-square odd kernels.
#[test]
fn dirac_is_the_identity() {
    let geom = Conv2dGeometry::new(Conv2dSpec::same(4, [5, 6], [3, 5]).with_groups(2).with_dilation([2, 1]).with_padding([2, 2])).unwrap();
    let k = conv::dirac::<f64>(&geom).unwrap();
    let x = gaussian(geom.in_len(), 3, 1.0, &mut rng(3));
    let mut z = Mat::zeros(geom.out_len(), 3);
    Conv2d::new(geom, Par::Seq).forward(k.as_ref(), x.as_ref(), z.as_mut()).unwrap();
    assert_eq!(z, x);
}

/// Batches larger than one im2col block (here 7 examples per block) and split over
/// several chunks: forward against the oracle, input and kernel gradients through the
/// adjoint identities <dz, T(k)x> = <T(k)^T dz, x> = <P(dz x^T), k> (bilinear, so a wrong
/// block or chunk boundary shows up as an O(1) discrepancy), on both the fast
/// (self-transposing) and the general paths.
#[test]
fn blocks_and_chunks_cover_large_batches() {
    for spec in [Conv2dSpec::same(8, [16, 16], [3, 3]), Conv2dSpec::new(8, 6, [16, 16], [3, 3]).with_padding([1, 0])] {
        let geom = Conv2dGeometry::new(spec).unwrap();
        let b = 17;
        let k = kernel(&geom, 11);
        let k2 = kernel(&geom, 12);
        let x = gaussian(geom.in_len(), b, 1.0, &mut rng(13));
        let dz = gaussian(geom.out_len(), b, 1.0, &mut rng(14));
        let want_z = naive_conv::conv_batch(&geom, k.as_ref(), x.as_ref());
        let dot = |a: MatRef<'_, f64>, c: MatRef<'_, f64>| -> f64 { (0..a.ncols()).map(|j| (0..a.nrows()).map(|i| a[(i, j)] * c[(i, j)]).sum::<f64>()).sum() };
        let z2 = naive_conv::conv_batch(&geom, k2.as_ref(), x.as_ref());
        for par in [Par::Seq, Par::rayon(3)] {
            let mut conv = Conv2d::new(geom, par);
            let mut z = Mat::zeros(geom.out_len(), b);
            conv.forward(k.as_ref(), x.as_ref(), z.as_mut()).unwrap();
            assert!(max_abs_diff(z.as_ref(), want_z.as_ref()) < 1e-12);
            let mut dx = Mat::zeros(geom.in_len(), b);
            conv.input_grad(k.as_ref(), dz.as_ref(), dx.as_mut(), 1.0, Accum::Replace).unwrap();
            let (l, r) = (dot(dz.as_ref(), z.as_ref()), dot(dx.as_ref(), x.as_ref()));
            // sums of ~3e4 O(1) terms: rounding ~1e-11 relative to |terms| ~ 1e3
            assert!((l - r).abs() < 1e-9 * (1.0 + l.abs()), "<dz, Tx> {l} vs <T^T dz, x> {r}");
            let (kr, kc) = geom.kernel_shape();
            let mut dk = Mat::zeros(kr, kc);
            conv.weight_grad(x.as_ref(), dz.as_ref(), dk.as_mut(), 1.0, Accum::Replace).unwrap();
            let (l, r) = (dot(dz.as_ref(), z2.as_ref()), dot(dk.as_ref(), k2.as_ref()));
            assert!((l - r).abs() < 1e-9 * (1.0 + l.abs()), "<dz, T(k2)x> {l} vs <P(dz x^T), k2> {r}");
        }
    }
}
