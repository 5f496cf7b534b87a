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

/// True when the output grid equals the input grid at stride 1 ("same" padding), so each
/// im2col column is the input channel shifted by a constant flat offset.
pub(crate) fn is_flat_shift(geom: &Conv2dGeometry) -> bool {
    geom.spec().stride == [1, 1] && geom.out_size() == geom.in_size()
}

/// im2col of a whole block of `nb` examples at once, for [flat-shift](is_flat_shift)
/// geometries. `xs` holds the block *stacked*: column `c` is input channel `c` of the
/// examples one after the other (`nb * H * W` rows). Column $(i, a, b)$ of `cols` is then
/// one flat shift of stacked channel $gC_g + i$ by $\Delta = (a d_h - p_h)W + (b d_w - p_w)$:
/// a single copy for the whole block, after which the rows and columns that fall outside
/// each image (where the shift wrapped into a neighbouring row or example) are zeroed.
///
/// The block is written to rows `row0 .. row0 + nb * P` and columns `col0 .. col0 + taps`
/// of `cols` (so a caller can keep the lowering of a whole batch).
pub(crate) fn im2col_stacked<T: Real>(geom: &Conv2dGeometry, xs: &Mat<T>, nb: usize, g: usize, cols: &mut Mat<T>, row0: usize, col0: usize) {
    let s = geom.spec();
    let [h, w] = s.input;
    let [kh, kw] = s.kernel;
    let cg = geom.in_per_group();
    let p = h * w;
    let n = nb * p;
    let zero = T::from_f64(0.0);
    for i in 0..cg {
        let src = &xs.col_as_slice(g * cg + i)[..n];
        for a in 0..kh {
            let (y_lo, y_hi) = valid_range(h, h, 1, s.padding[0], a * s.dilation[0]);
            for b in 0..kw {
                let (x_lo, x_hi) = valid_range(w, w, 1, s.padding[1], b * s.dilation[1]);
                let dst = &mut cols.col_as_slice_mut(col0 + (i * kh + a) * kw + b)[row0..row0 + n];
                if y_lo >= y_hi || x_lo >= x_hi {
                    dst.fill(zero);
                    continue;
                }
                // shift = (a d - p) W + (b d - p), split into its non-negative parts
                let up = (a * s.dilation[0]) * w + b * s.dilation[1];
                let down = s.padding[0] * w + s.padding[1];
                if up >= down {
                    let sh = (up - down).min(n);
                    dst[..n - sh].copy_from_slice(&src[sh..]);
                    dst[n - sh..].fill(zero);
                } else {
                    let sh = (down - up).min(n);
                    dst[sh..].copy_from_slice(&src[..n - sh]);
                    dst[..sh].fill(zero);
                }
                // border columns (where the shift wrapped into the neighbouring row): a few
                // stores per row; rows outside the image are cleared below anyway, so sweep
                // all rows of the block without a per-example test
                if x_lo > 0 || x_hi < w {
                    for row in dst.chunks_exact_mut(w) {
                        zero_short(&mut row[..x_lo], zero);
                        zero_short(&mut row[x_hi..], zero);
                    }
                }
                // rows outside the image (where the shift wrapped into the neighbouring example)
                if y_lo > 0 || y_hi < h {
                    for img in dst.chunks_exact_mut(p) {
                        img[..y_lo * w].fill(zero);
                        img[y_hi * w..].fill(zero);
                    }
                }
            }
        }
    }
}

/// Zero a slice of typically 0–2 elements without a `memset` call.
#[inline(always)]
fn zero_short<T: Real>(s: &mut [T], zero: T) {
    match s {
        [] => {}
        [a] => *a = zero,
        [a, b] => {
            *a = zero;
            *b = zero;
        }
        _ => s.fill(zero),
    }
}

/// Write the im2col block of group `g` of the example `x` (length `C_in * H * W`) into
/// rows `row0 .. row0 + P` of `cols` (`n x taps`, `n >= row0 + P`): the general path,
/// one copy per output row (see [`im2col_stacked`] for the "same" stride-1 fast path).
pub(crate) fn im2col<T: Real>(geom: &Conv2dGeometry, x: &[T], g: usize, cols: &mut Mat<T>, row0: usize) {
    let s = geom.spec();
    let [h_in, w_in] = s.input;
    let [oh, ow] = geom.out_size();
    let [kh, kw] = s.kernel;
    let cg = geom.in_per_group();
    let p = oh * ow;
    let zero = T::from_f64(0.0);
    for i in 0..cg {
        let chan = &x[(g * cg + i) * h_in * w_in..][..h_in * w_in];
        for a in 0..kh {
            let (y_lo, y_hi) = valid_range(oh, h_in, s.stride[0], s.padding[0], a * s.dilation[0]);
            for b in 0..kw {
                let (x_lo, x_hi) = valid_range(ow, w_in, s.stride[1], s.padding[1], b * s.dilation[1]);
                let col = &mut cols.col_as_slice_mut((i * kh + a) * kw + b)[row0..row0 + p];
                if y_lo >= y_hi || x_lo >= x_hi {
                    col.fill(zero);
                    continue;
                }
                for y in 0..oh {
                    let row = &mut col[y * ow..][..ow];
                    if y < y_lo || y >= y_hi {
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

/// The adjoint of [`im2col`]: add every entry of rows `row0 .. row0 + P` of `cols`
/// (`n x taps`) into the input pixel of group `g` of `dx` it was read from.
pub(crate) fn col2im_add<T: Real>(geom: &Conv2dGeometry, cols: &Mat<T>, row0: usize, g: usize, dx: &mut [T]) {
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
                let col = &cols.col_as_slice((i * kh + a) * kw + b)[row0..];
                for y in y_lo..y_hi {
                    let iy = y * s.stride[0] + a * s.dilation[0] - s.padding[0];
                    let dst = &mut chan[iy * w_in..][..w_in];
                    let row = &col[y * ow..][..ow];
                    let x0 = x_lo * s.stride[1] + b * s.dilation[1] - s.padding[1];
                    if s.stride[1] == 1 {
                        for (d, &v) in dst[x0..x0 + (x_hi - x_lo)].iter_mut().zip(&row[x_lo..x_hi]) {
                            *d += v;
                        }
                    } else {
                        for (k, &v) in row[x_lo..x_hi].iter().enumerate() {
                            let d = &mut dst[x0 + k * s.stride[1]];
                            *d += v;
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
