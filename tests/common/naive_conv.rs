//! An independent convolution oracle written straight from the definition (no im2col,
//! no shared index helpers): used to build the explicit matrix T(k) column by column.

use faer::{Mat, MatRef};
use snf::conv::Conv2dGeometry;

/// z = conv(k, x) for one example, straight from the definition with signed indices.
pub fn conv(geom: &Conv2dGeometry, k: MatRef<'_, f64>, x: &[f64]) -> Vec<f64> {
    let s = geom.spec();
    let [h, w] = s.input;
    let [oh, ow] = geom.out_size();
    let [kh, kw] = s.kernel;
    let cg = s.in_channels / s.groups;
    let og = s.out_channels / s.groups;
    let mut z = vec![0.0; s.out_channels * oh * ow];
    for o in 0..s.out_channels {
        let g = o / og;
        for y in 0..oh {
            for xx in 0..ow {
                let mut acc = 0.0;
                for i in 0..cg {
                    for a in 0..kh {
                        for b in 0..kw {
                            let iy = (y * s.stride[0] + a * s.dilation[0]) as i64 - s.padding[0] as i64;
                            let ix = (xx * s.stride[1] + b * s.dilation[1]) as i64 - s.padding[1] as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue;
                            }
                            let c = g * cg + i;
                            let kv = k[((i * kh + a) * kw + b, o)];
                            acc += kv * x[(c * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
                z[(o * oh + y) * ow + xx] = acc;
            }
        }
    }
    z
}

/// The explicit matrix T(k), column j = conv(k, e_j).
pub fn matrix(geom: &Conv2dGeometry, k: MatRef<'_, f64>) -> Mat<f64> {
    let (n_out, n_in) = (geom.out_len(), geom.in_len());
    let mut t = Mat::zeros(n_out, n_in);
    let mut e = vec![0.0; n_in];
    for j in 0..n_in {
        e[j] = 1.0;
        let col = conv(geom, k, &e);
        e[j] = 0.0;
        for (i, v) in col.into_iter().enumerate() {
            t[(i, j)] = v;
        }
    }
    t
}

/// Apply conv to every column of a batch.
pub fn conv_batch(geom: &Conv2dGeometry, k: MatRef<'_, f64>, x: MatRef<'_, f64>) -> Mat<f64> {
    let mut z = Mat::zeros(geom.out_len(), x.ncols());
    for j in 0..x.ncols() {
        let xj: Vec<f64> = x.col(j).iter().copied().collect();
        for (i, v) in conv(geom, k, &xj).into_iter().enumerate() {
            z[(i, j)] = v;
        }
    }
    z
}
