//! Kernel-space maps: `flip` (Eq. 26), the multiplicity `m` (Eq. 27), and the centred
//! crop / zero-pad maps of Appendix A.4 (Eq. 30).

use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::{Conv2d, Conv2dGeometry};
use crate::error::{check_shape, Error, Result};
use crate::real::Real;

/// $\mathrm{flip}(k)$: the kernel of the transposed convolution (Eq. 26, with the
/// indices the paper prints corrected to 0-based form),
/// $$\mathrm{flip}(k)_{o',i',h,w} = k_{\,gC_{out}/G + i',\; o' - gC_g,\; K_H-1-h,\; K_W-1-w},
/// \qquad g = \lfloor o'/C_g\rfloor,$$
/// i.e. swap the output and input channels (within each group) and mirror both spatial
/// axes. The result has the kernel shape of [`Conv2dGeometry::transpose`], and
/// $\mathcal T_{\mathcal G'}(\mathrm{flip}\,k) = \mathcal T_{\mathcal G}(k)^T$ whenever that
/// transpose exists; for a [self-transposing](Conv2dGeometry::is_self_transpose)
/// geometry the shapes coincide and $\mathcal T(\mathrm{flip}\,k) = \mathcal T(k)^T$
/// (`proofs/conv.md` §2). The paper's printed $k_{i,o,H-h,W-w}$ indexes 1-based
/// $h \in 1..H$ with a 0-based mirror; read 0-based it reaches one past the end.
///
/// `out` must be `(C_out/G * KH * KW) x C_in`.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `k` or `out` has the wrong shape.
pub fn flip_into<T: Real>(geom: &Conv2dGeometry, k: MatRef<'_, T>, out: MatMut<'_, T>) -> Result<()> {
    const OP: &str = "conv::flip_into";
    check_shape(OP, geom.kernel_shape(), (k.nrows(), k.ncols()))?;
    let [kh, kw] = geom.kernel_size();
    let (cg, og) = (geom.in_per_group(), geom.out_per_group());
    check_shape(OP, (og * kh * kw, geom.in_channels()), (out.nrows(), out.ncols()))?;
    let mut out = out;
    for op in 0..geom.in_channels() {
        let g = op / cg;
        for ip in 0..og {
            for h in 0..kh {
                for w in 0..kw {
                    let src = geom.kernel_index(g * og + ip, op - g * cg, kh - 1 - h, kw - 1 - w);
                    out[((ip * kh + h) * kw + w, op)] = k[src];
                }
            }
        }
    }
    Ok(())
}

/// Allocating form of [`flip_into`].
///
/// # Errors
/// As [`flip_into`].
pub fn flip<T: Real>(geom: &Conv2dGeometry, k: MatRef<'_, T>) -> Result<Mat<T>> {
    let [kh, kw] = geom.kernel_size();
    let mut out = Mat::zeros(geom.out_per_group() * kh * kw, geom.in_channels());
    flip_into(geom, k, out.as_mut())?;
    Ok(out)
}

/// The multiplicity $m$ (Eq. 27): for each kernel element, how many entries of
/// $\mathcal T(k)$ it occupies, computed as in the paper by the convolution's own
/// weight gradient with all-ones input and output images,
/// $m = P(\mathbf 1\mathbf 1^T) = $ `weight_grad(ones_like(x), ones_like(z))`.
/// Any stride, padding, dilation and groups. Values are exact integers (up to
/// $OH\cdot OW$, exact in `f32` below $2^{24}$).
///
/// # Errors
/// None in practice (the shapes come from `geom`); the `Result` carries the conv
/// primitive's own checks through.
pub fn multiplicity<T: Real>(geom: &Conv2dGeometry) -> Result<Mat<T>> {
    let (kr, kc) = geom.kernel_shape();
    let mut m = Mat::zeros(kr, kc);
    let x = Mat::from_fn(geom.in_len(), 1, |_, _| T::from_f64(1.0));
    let z = Mat::from_fn(geom.out_len(), 1, |_, _| T::from_f64(1.0));
    let mut conv = Conv2d::new(*geom, Par::Seq);
    conv.weight_grad(x.as_ref(), z.as_ref(), m.as_mut(), T::from_f64(1.0), Accum::Replace)?;
    Ok(m)
}

/// Centred resize of a kernel matrix from spatial size `from` to `to` (same channels):
/// a central crop along an axis where `to` is smaller ($P_{r\to w}$ of Eq. 30), a
/// symmetric zero pad where it is larger ($P_{w\to r}$). `in_per_group` is the number
/// of per-channel blocks in a kernel column (`C_in/G` of the geometry).
///
/// Both sizes must have the same parity along each axis, so that the centres align.
///
/// # Errors
/// [`Error::ShapeMismatch`] on wrong shapes, [`Error::InvalidConv`] on a parity mismatch.
pub fn resize_centered_into<T: Real>(k: MatRef<'_, T>, in_per_group: usize, from: [usize; 2], to: [usize; 2], out: MatMut<'_, T>) -> Result<()> {
    const OP: &str = "conv::resize_centered_into";
    if (0..2).any(|a| from[a] % 2 != to[a] % 2) {
        return Err(Error::InvalidConv { op: OP, reason: format!("kernel sizes {from:?} and {to:?} differ in parity") });
    }
    check_shape(OP, (in_per_group * from[0] * from[1], out.ncols()), (k.nrows(), k.ncols()))?;
    check_shape(OP, (in_per_group * to[0] * to[1], k.ncols()), (out.nrows(), out.ncols()))?;
    let mut out = out;
    out.fill(T::from_f64(0.0));
    // centre offsets: index a in `to` corresponds to a + (from - to)/2 in `from`
    let off = |a: usize, ax: usize| -> Option<usize> {
        let shifted = a as isize + (from[ax] as isize - to[ax] as isize) / 2;
        (shifted >= 0 && (shifted as usize) < from[ax]).then_some(shifted as usize)
    };
    for o in 0..k.ncols() {
        for i in 0..in_per_group {
            for h in 0..to[0] {
                let Some(sh) = off(h, 0) else { continue };
                for w in 0..to[1] {
                    let Some(sw) = off(w, 1) else { continue };
                    out[((i * to[0] + h) * to[1] + w, o)] = k[((i * from[0] + sh) * from[1] + sw, o)];
                }
            }
        }
    }
    Ok(())
}

/// The Dirac kernel: the identity convolution of a [self-transposing](Conv2dGeometry::is_self_transpose)
/// geometry with odd kernel sizes (a 1 at the centre tap of $k_{gC_g + i, i}$).
///
/// # Errors
/// [`Error::InvalidConv`] if the geometry is not self-transposing or a kernel size is
/// even (then no tap has offset zero and no kernel is the identity).
pub fn dirac<T: Real>(geom: &Conv2dGeometry) -> Result<Mat<T>> {
    if !geom.is_self_transpose() || geom.kernel_size().iter().any(|k| k % 2 == 0) {
        return Err(Error::InvalidConv { op: "conv::dirac", reason: "only a channels->channels, stride-1, 'same' convolution has an identity kernel".into() });
    }
    let (kr, kc) = geom.kernel_shape();
    let [kh, kw] = geom.kernel_size();
    let cg = geom.in_per_group();
    let mut k = Mat::zeros(kr, kc);
    for o in 0..kc {
        k[geom.kernel_index(o, o % cg, kh / 2, kw / 2)] = T::from_f64(1.0);
    }
    Ok(k)
}
