//! `im2col` and its adjoint `col2im` for one example and one group.
//!
//! For group $g$, the im2col matrix of an example $x$ is the `P x (C_g KH KW)` matrix
//! ($P = OH\cdot OW$) whose column $j = (i K_H + h)K_W + w$ holds, at row
//! $p = y\,OW + x'$, the input pixel $x_{gC_g + i,\; s_h y - p_h + d_h h,\; s_w x' - p_w + d_w w}$
//! (zero outside the image). The convolution of group $g$ is then one product with the
//! kernel columns of that group, and `col2im` is the exact adjoint (transpose) of `im2col`.

use faer::Mat;

use super::Conv2dGeometry;
use crate::real::Real;

/// The range `[lo, hi)` of output indices `o < out` whose input index
/// `o * s + kd - p` lies in `[0, n)`.
#[inline]
pub(crate) fn valid_range(out: usize, n: usize, s: usize, p: usize, kd: usize) -> (usize, usize) {
    let lo = if p > kd { (p - kd).div_ceil(s) } else { 0 };
    let hi = if n + p > kd { ((n + p - kd - 1) / s + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Fill `cols` (`P x taps`) with the im2col matrix of group `g` of the example `x`
/// (length `C_in * H * W`).
pub(crate) fn im2col<T: Real>(geom: &Conv2dGeometry, x: &[T], g: usize, cols: &mut Mat<T>) {
    let s = geom.spec();
    let [h_in, w_in] = s.input;
    let [oh, ow] = geom.out_size();
    let [kh, kw] = s.kernel;
    let cg = geom.in_per_group();
    let zero = T::from_f64(0.0);
    for i in 0..cg {
        let chan = &x[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        for a in 0..kh {
            let (y_lo, y_hi) = valid_range(oh, h_in, s.stride[0], s.padding[0], a * s.dilation[0]);
            for b in 0..kw {
                let (x_lo, x_hi) = valid_range(ow, w_in, s.stride[1], s.padding[1], b * s.dilation[1]);
                let col = cols.col_as_slice_mut((i * kh + a) * kw + b);
                for y in 0..oh {
                    let row = &mut col[y * ow..][..ow];
                    if y < y_lo || y >= y_hi || x_lo >= x_hi {
                        row.fill(zero);
                        continue;
                    }
                    let iy = y * s.stride[0] + a * s.dilation[0] - s.padding[0];
                    let src = &chan[iy * w_in..][..w_in];
                    row[..x_lo].fill(zero);
                    row[x_hi..].fill(zero);
                    let x0 = x_lo * s.stride[1] + b * s.dilation[1] - s.padding[1];
                    if s.stride[1] == 1 {
                        row[x_lo..x_hi].copy_from_slice(&src[x0..x0 + (x_hi - x_lo)]);
                    } else {
                        for (k, d) in row[x_lo..x_hi].iter_mut().enumerate() {
                            *d = src[x0 + k * s.stride[1]];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: add every entry of `cols` (`P x taps`) into the input pixel
/// of group `g` of `dx` it was read from.
pub(crate) fn col2im_add<T: Real>(geom: &Conv2dGeometry, cols: &Mat<T>, g: usize, dx: &mut [T]) {
    let s = geom.spec();
    let [h_in, w_in] = s.input;
    let [oh, ow] = geom.out_size();
    let [kh, kw] = s.kernel;
    let cg = geom.in_per_group();
    for i in 0..cg {
        let chan = &mut dx[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        for a in 0..kh {
            let (y_lo, y_hi) = valid_range(oh, h_in, s.stride[0], s.padding[0], a * s.dilation[0]);
            for b in 0..kw {
                let (x_lo, x_hi) = valid_range(ow, w_in, s.stride[1], s.padding[1], b * s.dilation[1]);
                if x_lo >= x_hi {
                    continue;
                }
                let col = cols.col_as_slice((i * kh + a) * kw + b);
                for y in y_lo..y_hi {
                    let iy = y * s.stride[0] + a * s.dilation[0] - s.padding[0];
                    let dst = &mut chan[iy * w_in..][..w_in];
                    let row = &col[y * ow..][..ow];
                    let x0 = x_lo * s.stride[1] + b * s.dilation[1] - s.padding[1];
                    if s.stride[1] == 1 {
                        for (d, &v) in dst[x0..x0 + (x_hi - x_lo)].iter_mut().zip(&row[x_lo..x_hi]) {
                            *d = *d + v;
                        }
                    } else {
                        for (k, &v) in row[x_lo..x_hi].iter().enumerate() {
                            let d = &mut dst[x0 + k * s.stride[1]];
                            *d = *d + v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_range;

    /// Brute force: the valid range is exactly the set of `o` with an in-bounds input index.
    #[test]
    fn valid_range_matches_brute_force() {
        for out in 0..7 {
            for n in 1..7 {
                for s in 1..4 {
                    for p in 0..4 {
                        for kd in 0..7 {
                            let ok: Vec<usize> = (0..out)
                                .filter(|&o| {
                                    let i = (o * s + kd) as i64 - p as i64;
                                    i >= 0 && i < n as i64
                                })
                                .collect();
                            let (lo, hi) = valid_range(out, n, s, p, kd);
                            assert_eq!(ok, (lo..hi).collect::<Vec<_>>(), "out {out} n {n} s {s} p {p} kd {kd}");
                        }
                    }
                }
            }
        }
    }
}
