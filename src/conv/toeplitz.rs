//! The explicit convolution matrix $\mathcal T(k)$ (Eq. 12) and its adjoint map $P$ back
//! onto kernel space (the indicator matrix of Eq. 23 applied to a vectorised matrix).

use faer::{Accum, Mat, MatMut, MatRef};

use super::im2col::valid_range;
use super::Conv2dGeometry;
use crate::error::{check_shape, Result};
use crate::real::Real;

/// Call `f((kernel_row, kernel_col), (matrix_row, matrix_col))` once for every structural
/// entry of $\mathcal T(k)$: every (output pixel, input pixel) pair that some kernel
/// element connects, with that element's kernel-matrix index. Entries that padding
/// removes are not visited.
pub(crate) fn for_each_entry(geom: &Conv2dGeometry, mut f: impl FnMut((usize, usize), (usize, usize))) {
    let s = geom.spec();
    let [h_in, w_in] = s.input;
    let [oh, ow] = geom.out_size();
    let [kh, kw] = s.kernel;
    let (cg, og) = (geom.in_per_group(), geom.out_per_group());
    for o in 0..geom.out_channels() {
        let g = o / og;
        for i in 0..cg {
            let c = g * cg + i;
            for a in 0..kh {
                let (y_lo, y_hi) = valid_range(oh, h_in, s.stride[0], s.padding[0], a * s.dilation[0]);
                for b in 0..kw {
                    let (x_lo, x_hi) = valid_range(ow, w_in, s.stride[1], s.padding[1], b * s.dilation[1]);
                    let kidx = geom.kernel_index(o, i, a, b);
                    for y in y_lo..y_hi {
                        let iy = y * s.stride[0] + a * s.dilation[0] - s.padding[0];
                        for x in x_lo..x_hi {
                            let ix = x * s.stride[1] + b * s.dilation[1] - s.padding[1];
                            f(kidx, ((o * oh + y) * ow + x, (c * h_in + iy) * w_in + ix));
                        }
                    }
                }
            }
        }
    }
}

/// Write the dense `out_len x in_len` convolution matrix $\mathcal T(k)$ into `out`, so
/// that $\mathcal T(k)\,x$ equals [`Conv2d::forward`](super::Conv2d::forward) of `x`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `k` or `out` has the wrong shape.
pub fn conv_matrix_into<T: Real>(geom: &Conv2dGeometry, k: MatRef<'_, T>, out: MatMut<'_, T>) -> Result<()> {
    const OP: &str = "conv::conv_matrix_into";
    check_shape(OP, geom.kernel_shape(), (k.nrows(), k.ncols()))?;
    check_shape(OP, (geom.out_len(), geom.in_len()), (out.nrows(), out.ncols()))?;
    let mut out = out;
    out.fill(T::from_f64(0.0));
    for_each_entry(geom, |ki, (r, c)| out[(r, c)] = k[ki]);
    Ok(())
}

/// The dense convolution matrix $\mathcal T(k)$ (Eq. 12), `out_len x in_len`.
///
/// # Errors
/// As [`conv_matrix_into`].
pub fn conv_matrix<T: Real>(geom: &Conv2dGeometry, k: MatRef<'_, T>) -> Result<Mat<T>> {
    let mut out = Mat::zeros(geom.out_len(), geom.in_len());
    conv_matrix_into(geom, k, out.as_mut())?;
    Ok(out)
}

/// $P(A)$: for every kernel element $k_i$, the sum of the entries of the
/// `out_len x in_len` matrix `a` at the positions where $k_i$ sits in $\mathcal T(k)$.
///
/// $P$ is the adjoint of $\mathcal T$ (as a linear map from kernels to matrices):
/// $\langle P(A), k\rangle = \langle A, \mathcal T(k)\rangle$, so for any scalar function
/// $\phi(\mathcal T(k))$, $\partial\phi/\partial k = P(\partial\phi/\partial\mathcal T)$.
/// In particular the exact log-det gradient is $P(\mathcal T(k)^{-T})$, and the
/// multiplicity of Eq. 27 is $m = P(\mathbf 1)$. Result: `out = alpha * P(a)` (`Replace`)
/// or `out += alpha * P(a)` (`Add`).
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) if `a` or `out` has the wrong shape.
pub fn project_onto_kernel<T: Real>(geom: &Conv2dGeometry, a: MatRef<'_, T>, out: MatMut<'_, T>, alpha: T, accum: Accum) -> Result<()> {
    const OP: &str = "conv::project_onto_kernel";
    check_shape(OP, (geom.out_len(), geom.in_len()), (a.nrows(), a.ncols()))?;
    check_shape(OP, geom.kernel_shape(), (out.nrows(), out.ncols()))?;
    let mut out = out;
    if matches!(accum, Accum::Replace) {
        out.fill(T::from_f64(0.0));
    }
    // Sum in the kernel's precision per element; each element gathers at most OH*OW terms.
    for_each_entry(geom, |ki, (r, c)| out[ki] += alpha * a[(r, c)]);
    Ok(())
}
