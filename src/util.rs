//! Small dense helpers shared by the layers (no allocation anywhere).

use faer::{MatMut, MatRef};

use crate::real::Real;

/// True when every entry of `a` is finite.
pub(crate) fn all_finite<T: Real>(a: MatRef<'_, T>) -> bool {
    (0..a.ncols()).all(|j| a.col(j).iter().all(|x| x.is_finite()))
}

/// Sum of squares of every entry, accumulated in `f64`.
pub(crate) fn sum_sq<T: Real>(x: MatRef<'_, T>) -> f64 {
    (0..x.ncols()).map(|j| x.col(j).iter().map(|v| v.as_f64() * v.as_f64()).sum::<f64>()).sum()
}

/// `dst = alpha * src^T` for square blocks, cache-blocked so the strided side is read in
/// tiles that stay in L1. `dst` is `n x m`, `src` is `m x n`.
pub(crate) fn set_scaled_transpose<T: Real>(mut dst: MatMut<'_, T>, src: MatRef<'_, T>, alpha: T) {
    const TILE: usize = 32;
    let (n, m) = (dst.nrows(), dst.ncols());
    debug_assert_eq!((src.nrows(), src.ncols()), (m, n));
    for j0 in (0..m).step_by(TILE) {
        let j1 = (j0 + TILE).min(m);
        for i0 in (0..n).step_by(TILE) {
            let i1 = (i0 + TILE).min(n);
            for j in j0..j1 {
                for i in i0..i1 {
                    dst[(i, j)] = alpha * src[(j, i)];
                }
            }
        }
    }
}

/// `dst[i] = alpha * sum_j a[i, j]` (row sums of a `D x B` batch).
pub(crate) fn set_scaled_row_sums<T: Real>(dst: &mut [T], a: MatRef<'_, T>, alpha: T) {
    for v in dst.iter_mut() {
        *v = T::from_f64(0.0);
    }
    for j in 0..a.ncols() {
        for (d, &x) in dst.iter_mut().zip(a.col(j).iter()) {
            *d = *d + x;
        }
    }
    for v in dst.iter_mut() {
        *v = alpha * *v;
    }
}

/// `dst = accum(dst) + alpha * lhs * rhs`, parallel over column blocks of `dst`.
///
/// faer's own rayon-parallel GEMM allocates a few small buffers per call; this splits
/// the output columns (and the matching columns of `rhs`) into `par.degree()` blocks with
/// `rayon::join`, whose jobs live on the stack, and runs faer's sequential GEMM on each:
/// no heap allocation, and every output column is computed by the same sequential kernel
/// whatever the thread count.
pub(crate) fn gemm<T: Real>(
    dst: MatMut<'_, T>,
    accum: faer::Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    par: faer::Par,
) {
    split_gemm(dst, accum, lhs, rhs, alpha, par.degree().max(1));
}

fn split_gemm<T: Real>(
    dst: MatMut<'_, T>,
    accum: faer::Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    threads: usize,
) {
    // Below ~16 columns per block, or for tiny products, splitting costs more than it saves.
    const MIN_COLS: usize = 16;
    let n = dst.ncols();
    let work = dst.nrows() * n * lhs.ncols();
    #[cfg(feature = "rayon")]
    if threads > 1 && n >= 2 * MIN_COLS && work >= 1 << 15 {
        let left_threads = threads / 2;
        let split = n * left_threads / threads;
        let (dl, dr) = dst.split_at_col_mut(split);
        let (rl, rr) = rhs.split_at_col(split);
        rayon::join(
            || split_gemm(dl, accum, lhs, rl, alpha, left_threads),
            || split_gemm(dr, accum, lhs, rr, alpha, threads - left_threads),
        );
        return;
    }
    let _ = (threads, work);
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, faer::Par::Seq);
}
