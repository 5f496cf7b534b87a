//! Small dense helpers shared by the layers (no allocation anywhere).

use faer::{MatMut, MatRef};

use crate::real::Real;

/// True when every entry of `a` is finite. Branch-free and vectorisable: $x\cdot 0$ is 0
/// for finite $x$ and NaN for $\pm\infty$ or NaN, so the lane sums stay 0 exactly when all
/// entries are finite.
pub(crate) fn all_finite<T: Real>(a: MatRef<'_, T>) -> bool {
    if a.row_stride() != 1 && a.col_stride() == 1 {
        // a transposed view: its transpose has contiguous columns
        return all_finite(a.transpose());
    }
    let zero = T::from_f64(0.0);
    (0..a.ncols()).all(|j| {
        let col = a.col(j);
        let Some(c) = col.try_as_col_major() else {
            return col.iter().all(|x| x.is_finite());
        };
        let s = c.as_slice();
        let mut acc = [zero; 8];
        let mut chunks = s.chunks_exact(8);
        for ch in &mut chunks {
            for k in 0..8 {
                acc[k] += ch[k] * zero;
            }
        }
        let rest = chunks.remainder().iter().fold(zero, |a, &v| a + v * zero);
        acc.iter().fold(rest, |a, &v| a + v) == zero
    })
}

/// True when every entry of `a` is exactly zero (either sign). Stops at the first column
/// that holds a nonzero, so a block that is not zero costs next to nothing.
pub(crate) fn all_zero<T: Real>(a: MatRef<'_, T>) -> bool {
    if a.row_stride() != 1 && a.col_stride() == 1 {
        return all_zero(a.transpose());
    }
    let zero = T::from_f64(0.0);
    (0..a.ncols()).all(|j| {
        let col = a.col(j);
        match col.try_as_col_major() {
            // no early exit inside a column: the comparison vectorises
            Some(c) => c.as_slice().iter().fold(true, |z, &v| z & (v == zero)),
            None => col.iter().all(|&v| v == zero),
        }
    })
}

/// [`all_finite`] over column blocks in parallel (`par`'s threads, `rayon::join`, no
/// allocation) when `a` is large; the same answer.
pub(crate) fn all_finite_par<T: Real>(a: MatRef<'_, T>, par: faer::Par) -> bool {
    par_all(a, par.degree().max(1), &|b| all_finite(b))
}

/// [`all_zero`] over column blocks in parallel when `a` is large; the same answer.
pub(crate) fn all_zero_par<T: Real>(a: MatRef<'_, T>, par: faer::Par) -> bool {
    par_all(a, par.degree().max(1), &|b| all_zero(b))
}

fn par_all<T: Real>(a: MatRef<'_, T>, threads: usize, f: &(impl Fn(MatRef<'_, T>) -> bool + Sync)) -> bool {
    // split along the storage order, so each part is contiguous columns
    let a = if a.row_stride() != 1 && a.col_stride() == 1 { a.transpose() } else { a };
    #[cfg(feature = "rayon")]
    if threads > 1 && a.ncols() >= 2 && a.nrows() * a.ncols() >= 1 << 16 {
        let left = threads / 2;
        let (l, r) = a.split_at_col(a.ncols() * left / threads);
        let (x, y) = rayon::join(|| par_all(l, left, f), || par_all(r, threads - left, f));
        return x && y;
    }
    let _ = threads;
    f(a)
}

/// Sum of squares of every entry, accumulated in `f64`.
pub(crate) fn sum_sq<T: Real>(x: MatRef<'_, T>) -> f64 {
    if x.row_stride() != 1 && x.col_stride() == 1 {
        return sum_sq(x.transpose());
    }
    (0..x.ncols()).map(|j| col_sum(x.col(j), |v| v * v)).sum()
}

/// $\sum_i f(x_i)$ over a column, accumulated in `f64` with eight independent lanes (so
/// the compiler can vectorise it) when the column is contiguous.
#[inline]
pub(crate) fn col_sum<T: Real>(x: faer::ColRef<'_, T>, f: impl Fn(f64) -> f64) -> f64 {
    let Some(c) = x.try_as_col_major() else {
        return x.iter().map(|v| f(v.as_f64())).sum();
    };
    let s = c.as_slice();
    let mut acc = [0.0f64; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += f(c[k].as_f64());
        }
    }
    chunks.remainder().iter().map(|v| f(v.as_f64())).sum::<f64>() + acc.iter().sum::<f64>()
}

/// `out[i] = g(x[i]).0` over a column, returning $\sum_i g(x_i).1$ in `f64`: the
/// element-wise map of a layer with its per-example log-det, with the eight lanes of
/// [`col_sum`] (entry $i$ in lane $i \bmod 8$) when both columns are contiguous, so that
/// the loop vectorises.
#[inline(always)]
pub(crate) fn col_map_sum<T: Real>(x: faer::ColRef<'_, T>, out: faer::ColMut<'_, T>, g: impl Fn(T) -> (T, f64)) -> f64 {
    use faer::reborrow::ReborrowMut;
    let mut out = out;
    if let (Some(xc), Some(oc)) = (x.try_as_col_major(), out.rb_mut().try_as_col_major_mut()) {
        let (xs, os) = (xc.as_slice(), oc.as_slice_mut());
        // element i goes to lane i % 8 in order, the last len % 8 to `tail`; the map runs as
        // a plain loop over 64 entries at a time (a loop of eight would be unrolled before
        // the vectoriser sees it)
        const CHUNK: usize = 64;
        let (mut acc, mut tail) = ([0.0f64; 8], 0.0);
        let mut d = [0.0f64; CHUNK];
        for (xc, oc) in xs.chunks(CHUNK).zip(os.chunks_mut(CHUNK)) {
            let n = xc.len().min(oc.len()).min(CHUNK);
            for i in 0..n {
                let (v, di) = g(xc[i]);
                oc[i] = v;
                d[i] = di;
            }
            let mut lanes = d[..n].chunks_exact(8);
            for l in &mut lanes {
                for k in 0..8 {
                    acc[k] += l[k];
                }
            }
            tail += lanes.remainder().iter().sum::<f64>();
        }
        return tail + acc.iter().sum::<f64>();
    }
    let mut total = 0.0;
    for (ov, xv) in out.iter_mut().zip(x.iter()) {
        let (v, d) = g(*xv);
        *ov = v;
        total += d;
    }
    total
}

/// `dst[i] = alpha * sum_j a[i, j]` (row sums of a `D x B` batch).
pub(crate) fn set_scaled_row_sums<T: Real>(dst: &mut [T], a: MatRef<'_, T>, alpha: T) {
    for v in dst.iter_mut() {
        *v = T::from_f64(0.0);
    }
    for j in 0..a.ncols() {
        for (d, &x) in dst.iter_mut().zip(a.col(j).iter()) {
            *d += x;
        }
    }
    for v in dst.iter_mut() {
        *v = alpha * *v;
    }
}

/// `dst = accum(dst) + alpha * lhs * rhs`, parallel over row or column blocks of `dst`.
///
/// faer's own rayon-parallel GEMM allocates a few small buffers per call; this splits
/// the output into `par.degree()` blocks (rows of a tall output with the matching rows of
/// `lhs`, else columns with the matching columns of `rhs`) with `rayon::join`, whose jobs
/// live on the stack, and runs faer's sequential GEMM on each: no heap allocation.
pub(crate) fn gemm<T: Real>(dst: MatMut<'_, T>, accum: faer::Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, alpha: T, par: faer::Par) {
    split_gemm(dst, accum, lhs, rhs, alpha, par.degree().max(1));
}

fn split_gemm<T: Real>(dst: MatMut<'_, T>, accum: faer::Accum, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, alpha: T, threads: usize) {
    // Below ~16 columns per block, or for tiny products, splitting costs more than it saves.
    #[cfg(feature = "rayon")]
    const MIN_COLS: usize = 16;
    let n = dst.ncols();
    let work = dst.nrows() * n * lhs.ncols();
    #[cfg(feature = "rayon")]
    if threads > 1 && work >= 1 << 15 {
        let left_threads = threads / 2;
        let m = dst.nrows();
        if m >= n && m >= 2 * MIN_COLS {
            // Tall output (e.g. D x D times D x B): split rows, so each thread streams
            // only its half of the large left factor.
            let split = m * left_threads / threads;
            let (dt, db) = dst.split_at_row_mut(split);
            let (lt, lb) = lhs.split_at_row(split);
            rayon::join(|| split_gemm(dt, accum, lt, rhs, alpha, left_threads), || split_gemm(db, accum, lb, rhs, alpha, threads - left_threads));
            return;
        }
        if n >= 2 * MIN_COLS {
            let split = n * left_threads / threads;
            let (dl, dr) = dst.split_at_col_mut(split);
            let (rl, rr) = rhs.split_at_col(split);
            rayon::join(|| split_gemm(dl, accum, lhs, rl, alpha, left_threads), || split_gemm(dr, accum, lhs, rr, alpha, threads - left_threads));
            return;
        }
    }
    let _ = (threads, work);
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, faer::Par::Seq);
    clear_upper_simd_state();
}

/// Run `f` on a thread of rayon's pool when `par` asks for threads and the caller is
/// not on one already, so that the `rayon::join`s inside `f` are the cheap in-pool kind:
/// a join from outside the pool queues its job from the outside and puts the caller to
/// sleep on a lock each time, which cost whole milliseconds per training step in
/// profiles (futex wake-ups) once the step has dozens of parallel sections.
pub(crate) fn in_pool<R: Send>(par: faer::Par, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "rayon")]
    if par.degree() > 1 && rayon::current_thread_index().is_none() {
        return rayon::scope(|_| f());
    }
    let _ = par;
    f()
}

/// Execute `vzeroupper` where the CPU has AVX: call after faer's SIMD kernels.
///
/// faer's GEMM and LU kernels (AVX2 / AVX-512, selected at run time) can return with the
/// upper halves of the vector registers "dirty". On Intel cores every later *legacy SSE*
/// instruction (the baseline x86-64 code rustc emits for scalar `f32`/`f64`, and libm's
/// `exp`/`log`) then runs with a penalty until a `vzeroupper`: measured on this project's
/// Intel AVX-512 machine, 784 spline geometries (softmax, softplus) took 3.1 ms after a
/// faer GEMM on the same thread and 0.14 ms without (or after this call). Costs about a
/// cycle; a no-op elsewhere.
#[inline]
pub(crate) fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn vzeroupper() {
            core::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above), the only requirement of
            // a `target_feature(enable = "avx")` function; `vzeroupper` touches only the
            // upper halves of the vector registers, which no live value holds across this
            // call boundary.
            unsafe { vzeroupper() }
        }
    }
}

/// Views that can be split by columns, so element-wise kernels can run in parallel
/// without allocating (see [`par_cols`]).
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) trait Splittable: Sized + Send {
    fn ncols(&self) -> usize;
    fn nrows(&self) -> usize;
    fn split(self, at: usize) -> (Self, Self);
}

impl<T: Real> Splittable for MatMut<'_, T> {
    fn ncols(&self) -> usize {
        MatMut::ncols(self)
    }
    fn nrows(&self) -> usize {
        MatMut::nrows(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col_mut(at)
    }
}

impl<T: Real> Splittable for MatRef<'_, T> {
    fn ncols(&self) -> usize {
        MatRef::ncols(self)
    }
    fn nrows(&self) -> usize {
        MatRef::nrows(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col(at)
    }
}

impl<T: Real> Splittable for crate::conv::chunk::BatchMut<'_, T> {
    fn ncols(&self) -> usize {
        MatMut::ncols(self)
    }
    fn nrows(&self) -> usize {
        MatMut::nrows(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col_mut(at)
    }
}

impl<T: Real> Splittable for crate::conv::chunk::BatchRef<'_, T> {
    fn ncols(&self) -> usize {
        MatRef::ncols(self)
    }
    fn nrows(&self) -> usize {
        MatRef::nrows(self)
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_col(at)
    }
}

/// Per-column scalars (e.g. per-example log-dets) split along with the columns.
impl Splittable for &mut [f64] {
    fn ncols(&self) -> usize {
        self.len()
    }
    fn nrows(&self) -> usize {
        1
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_mut(at)
    }
}

impl<A: Splittable, B: Splittable> Splittable for (A, B) {
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn split(self, at: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(at);
        let (b0, b1) = self.1.split(at);
        ((a0, b0), (a1, b1))
    }
}

/// Run `f` on `threads` column blocks of `s` in parallel (`rayon::join`, no allocation);
/// sequentially when small. All parts of `s` must have the same number of columns.
pub(crate) fn par_cols<S: Splittable>(s: S, par: faer::Par, f: &(impl Fn(S) + Sync)) {
    split_cols(s, par.degree().max(1), f)
}

fn split_cols<S: Splittable>(s: S, threads: usize, f: &(impl Fn(S) + Sync)) {
    #[cfg(feature = "rayon")]
    if threads > 1 && s.ncols() >= 2 && s.nrows() * s.ncols() >= 1 << 15 {
        let n = s.ncols();
        let left = threads / 2;
        let (a, b) = s.split(n * left / threads);
        rayon::join(|| split_cols(a, left, f), || split_cols(b, threads - left, f));
        return;
    }
    let _ = threads;
    clear_upper_simd_state();
    f(s)
}

/// A `rows x cols` zero matrix, or a typed error naming the size when it cannot be
/// allocated (instead of an abort).
pub(crate) fn try_zeros<T: Real>(rows: usize, cols: usize) -> crate::Result<faer::Mat<T>> {
    let too_large = || crate::Error::InvalidArgument {
        op: "allocate",
        reason: format!("a {rows} x {cols} buffer ({} bytes) cannot be allocated", rows as u128 * cols as u128 * core::mem::size_of::<T>() as u128),
    };
    let n = rows.checked_mul(cols).ok_or_else(too_large)?;
    if n.checked_mul(core::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(too_large());
    }
    let mut m = faer::Mat::<T>::new();
    m.try_reserve(rows, cols).map_err(|_| too_large())?;
    m.resize_with(rows, cols, |_, _| T::from_f64(0.0));
    Ok(m)
}

/// Fail with a typed error naming the size, instead of aborting later, when `count`
/// buffers of `rows x cols` scalars cannot be reserved (nothing stays allocated).
pub(crate) fn check_alloc<T: Real>(op: &'static str, rows: usize, cols: usize, count: usize) -> crate::Result<()> {
    let bytes = (rows as u128) * (cols as u128) * (count as u128) * core::mem::size_of::<T>() as u128;
    let err = || crate::Error::InvalidArgument { op, reason: format!("{count} buffer(s) of {rows} x {cols} ({bytes} bytes) cannot be allocated") };
    let n = rows.checked_mul(cols).and_then(|v| v.checked_mul(count)).ok_or_else(err)?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| err())
}

/// Whether this CPU runs AVX2 and FMA instructions (x86-64-v3), checked once and cached
/// by the standard library. Kernels with per-lane selects (the spline) vectorise only
/// with AVX2's blends; they run a copy compiled for it when this is true.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether this CPU runs AVX-512F instructions, checked once and cached.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512f() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::{Mat, Par};

    /// The parallel checks agree with the sequential ones on a matrix large enough to be
    /// split (300 x 400 = 120 000 entries, above the 65 536 threshold), for one bad entry
    /// in each part, through plain and transposed views, on 1, 2 and 3 threads.
    #[test]
    fn parallel_checks_agree_with_the_sequential_ones() {
        for threads in [1, 2, 3] {
            let par = if threads == 1 { Par::Seq } else { Par::rayon(threads) };
            let clean = Mat::<f32>::from_fn(300, 400, |i, j| (i + j) as f32);
            assert!(all_finite_par(clean.as_ref(), par) && all_finite_par(clean.transpose(), par));
            let zero = Mat::<f32>::zeros(300, 400);
            assert!(all_zero_par(zero.as_ref(), par) && all_zero_par(zero.transpose(), par));
            assert!(!all_zero_par(clean.as_ref(), par));
            for (i, j) in [(0, 0), (150, 199), (299, 200), (17, 399)] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut m = clean.clone();
                    m[(i, j)] = bad;
                    assert!(!all_finite_par(m.as_ref(), par), "{bad} at ({i}, {j}), {threads} threads");
                    assert!(!all_finite_par(m.transpose(), par));
                    assert_eq!(all_finite_par(m.as_ref(), par), all_finite(m.as_ref()));
                }
                let mut z = zero.clone();
                z[(i, j)] = 1e-30;
                assert!(!all_zero_par(z.as_ref(), par), "nonzero at ({i}, {j}), {threads} threads");
                assert!(!all_zero_par(z.transpose(), par));
                z[(i, j)] = -0.0;
                assert!(all_zero_par(z.as_ref(), par), "-0 counts as zero");
            }
        }
    }
}
