//! A reusable partial-pivot LU factorisation, $PA = LU$.

use dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::lu::partial_pivoting::{factor, inverse, solve};
use faer::perm::PermRef;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatMut, MatRef, Par};

use super::denormals::flushing_denormals;
use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::all_finite;

/// Partial-pivot LU of an `n x n` matrix that owns every buffer it needs.
///
/// [`Lu::new`] allocates once; [`factor`](Lu::factor), [`solve_in_place`](Lu::solve_in_place),
/// [`solve_transpose_in_place`](Lu::solve_transpose_in_place) and
/// [`inverse_transpose_into`](Lu::inverse_transpose_into) then never allocate, so the
/// exact-gradient path can run inside a training loop.
///
/// With $PA = LU$ ($L$ unit lower, $U$ upper, $P$ a permutation with sign
/// $\pm 1$), $\log|\det A| = \sum_i \log|u_{ii}|$.
///
/// The factorisation, solves and inverse run inside rayon's pool with subnormal numbers
/// flushed to zero (results below the smallest normal number become 0): the inverse of a
/// convolution matrix with few channels is full of them, and subnormal arithmetic made a
/// 784 x 784 `f32` inverse 18x slower. The threads get their previous floating-point
/// control state back afterwards.
///
/// # Example
/// ```
/// use snf::exact::Lu;
/// let a = faer::mat![[2.0, 1.0], [1.0, 3.0]];
/// let mut lu = Lu::<f64>::new(2, 1, faer::Par::Seq)?;
/// lu.factor(a.as_ref())?;
/// assert!((lu.log_abs_det()? - 5f64.ln()).abs() < 1e-14);
/// # Ok::<(), snf::Error>(())
/// ```
pub struct Lu<T: Real> {
    lu: Mat<T>,
    perm: Vec<usize>,
    perm_inv: Vec<usize>,
    scratch: MemBuffer,
    rhs_chunk: usize,
    par: Par,
    factored: bool,
    transpositions: usize,
}

impl<T: Real> core::fmt::Debug for Lu<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lu").field("dim", &self.dim()).field("factored", &self.factored).finish_non_exhaustive()
    }
}

impl<T: Real> Lu<T> {
    /// Allocate an LU workspace for `n x n` matrices. `rhs_chunk` is how many right-hand
    /// side columns a solve handles per pass (larger solves run in chunks of that many, so
    /// any width works without allocating). A zero `rhs_chunk` is treated as 1.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the size when the buffers cannot be allocated.
    pub fn new(n: usize, rhs_chunk: usize, par: Par) -> Result<Self> {
        let rhs_chunk = rhs_chunk.max(1);
        let req = StackReq::any_of(&[
            factor::lu_in_place_scratch::<usize, T>(n, n, par, Default::default()),
            solve::solve_in_place_scratch::<usize, T>(n, rhs_chunk, par),
            solve::solve_transpose_in_place_scratch::<usize, T>(n, rhs_chunk, par),
            inverse::inverse_scratch::<usize, T>(n, par),
        ]);
        let lu = crate::util::try_zeros(n, n)?;
        let scratch = MemBuffer::try_new(req)
            .map_err(|_| Error::InvalidArgument { op: "exact::Lu::new", reason: format!("the LU scratch for n = {n} cannot be allocated") })?;
        Ok(Self { lu, perm: vec![0; n], perm_inv: vec![0; n], scratch, rhs_chunk, par, factored: false, transpositions: 0 })
    }

    /// The dimension `n` this workspace was made for.
    pub fn dim(&self) -> usize {
        self.lu.nrows()
    }

    /// Factor `a` (must be `n x n`, finite, and nonsingular to working precision).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `a` is not `n x n`; [`Error::NonFinite`] if `a` holds
    /// NaN/inf; [`Error::Singular`] if a pivot is zero or `|u_kk| <= n eps max_i |u_ii|`.
    /// On error the workspace is left unfactored.
    pub fn factor(&mut self, a: MatRef<'_, T>) -> Result<()> {
        const OP: &str = "exact::Lu::factor";
        let n = self.dim();
        self.factored = false;
        crate::error::check_shape(OP, (n, n), (a.nrows(), a.ncols()))?;
        if !all_finite(a) {
            return Err(Error::NonFinite { op: OP });
        }
        self.lu.copy_from(a);
        let (lu, perm, perm_inv, scratch, par) = (&mut self.lu, &mut self.perm, &mut self.perm_inv, &mut self.scratch, self.par);
        let info = flushing_denormals(par, move || factor::lu_in_place(lu.as_mut(), perm, perm_inv, par, MemStack::new(scratch), Default::default()).0);
        self.transpositions = info.transposition_count;
        // Rank test on the diagonal of U. A zero pivot makes faer divide by zero below
        // it, so a singular matrix can also leave non-finite entries: test rank first.
        let (mut min, mut max, mut argmin, mut finite) = (f64::INFINITY, 0.0f64, 0usize, true);
        for i in 0..n {
            let u = self.lu[(i, i)].as_f64().abs();
            if !u.is_finite() {
                finite = false;
                continue;
            }
            if u < min {
                min = u;
                argmin = i;
            }
            max = max.max(u);
        }
        let tol = n as f64 * 2.0 * T::unit_roundoff() * max;
        if n > 0 && (max == 0.0 || min <= tol) {
            return Err(Error::Singular { op: OP, index: argmin, pivot: min, max_pivot: max });
        }
        if !finite {
            return Err(Error::NonFinite { op: OP });
        }
        self.factored = true;
        Ok(())
    }

    fn ensure_factored(&self, op: &'static str) -> Result<()> {
        if self.factored {
            Ok(())
        } else {
            Err(Error::InvalidArgument { op, reason: "no successful factor() call".into() })
        }
    }

    /// $\log|\det A|$ of the last factored matrix, summed in `f64`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if nothing has been factored yet.
    pub fn log_abs_det(&self) -> Result<f64> {
        self.ensure_factored("exact::Lu::log_abs_det")?;
        Ok((0..self.dim()).map(|i| self.lu[(i, i)].as_f64().abs().ln()).sum())
    }

    /// The sign of $\det A$ (`+1.0` or `-1.0`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if nothing has been factored yet.
    pub fn sign(&self) -> Result<f64> {
        self.ensure_factored("exact::Lu::sign")?;
        let mut s = if self.transpositions.is_multiple_of(2) { 1.0 } else { -1.0 };
        for i in 0..self.dim() {
            if self.lu[(i, i)].as_f64() < 0.0 {
                s = -s;
            }
        }
        Ok(s)
    }

    fn check_rhs(&self, op: &'static str, rhs: &MatMut<'_, T>) -> Result<()> {
        self.ensure_factored(op)?;
        if rhs.nrows() != self.dim() {
            return Err(Error::ShapeMismatch { op, expected: (self.dim(), rhs.ncols()), got: (rhs.nrows(), rhs.ncols()) });
        }
        Ok(())
    }

    /// Overwrite `rhs` with $A^{-1}\,\mathrm{rhs}$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `rhs` has not `n` rows; [`Error::InvalidArgument`] if
    /// nothing is factored; [`Error::NonFinite`] if the solution overflowed.
    pub fn solve_in_place(&mut self, rhs: MatMut<'_, T>) -> Result<()> {
        self.solve_impl("exact::Lu::solve_in_place", rhs, false)
    }

    /// Overwrite `rhs` with $A^{-T}\,\mathrm{rhs}$.
    ///
    /// # Errors
    /// As [`solve_in_place`](Self::solve_in_place).
    pub fn solve_transpose_in_place(&mut self, rhs: MatMut<'_, T>) -> Result<()> {
        self.solve_impl("exact::Lu::solve_transpose_in_place", rhs, true)
    }

    fn solve_impl(&mut self, op: &'static str, mut rhs: MatMut<'_, T>, transpose: bool) -> Result<()> {
        self.check_rhs(op, &rhs)?;
        let ncols = rhs.ncols();
        let (lu, perm, perm_inv, scratch, par, rhs_chunk) = (self.lu.as_ref(), &self.perm, &self.perm_inv, &mut self.scratch, self.par, self.rhs_chunk);
        let mut rhs_all = rhs.rb_mut();
        flushing_denormals(par, move || {
            let mut start = 0;
            while start < ncols {
                let w = rhs_chunk.min(ncols - start);
                let chunk = rhs_all.rb_mut().subcols_mut(start, w);
                let perm = PermRef::new_checked(perm, perm_inv, lu.nrows());
                let stack = MemStack::new(scratch);
                if transpose {
                    solve::solve_transpose_in_place(lu, lu, perm, chunk, par, stack);
                } else {
                    solve::solve_in_place(lu, lu, perm, chunk, par, stack);
                }
                start += w;
            }
        });
        if all_finite(rhs.rb()) {
            Ok(())
        } else {
            Err(Error::NonFinite { op })
        }
    }

    /// Write $A^{-1}$ into `out` (`n x n`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::InvalidArgument`] if nothing is factored,
    /// [`Error::NonFinite`] on overflow.
    pub fn inverse_into(&mut self, out: MatMut<'_, T>) -> Result<()> {
        const OP: &str = "exact::Lu::inverse_into";
        self.ensure_factored(OP)?;
        let n = self.dim();
        crate::error::check_shape(OP, (n, n), (out.nrows(), out.ncols()))?;
        let (lu, perm, perm_inv, scratch, par) = (self.lu.as_ref(), &self.perm, &self.perm_inv, &mut self.scratch, self.par);
        let mut out = out;
        let mut dst = out.rb_mut();
        flushing_denormals(par, move || {
            inverse::inverse(dst.rb_mut(), lu, lu, PermRef::new_checked(perm, perm_inv, n), par, MemStack::new(scratch));
        });
        if all_finite(out.rb()) {
            Ok(())
        } else {
            Err(Error::NonFinite { op: OP })
        }
    }

    /// Write $A^{-T}$ into `out` (`n x n`): the exact log-det gradient
    /// $\partial \log|\det A| / \partial A = A^{-T}$ (Eq. 8).
    ///
    /// # Errors
    /// As [`inverse_into`](Self::inverse_into).
    pub fn inverse_transpose_into(&mut self, out: MatMut<'_, T>) -> Result<()> {
        self.inverse_into(out.transpose_mut())
    }
}
