//! How a [`SelfNormLinear`](super::SelfNormLinear) keeps $R \approx W^{-1}$: the paper's
//! penalty (Eq. 3), or a per-batch projection of $R$ onto the batch's reconstruction
//! constraint (`proofs/projection.md`).

use dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt;
use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::error::{Error, Result};
use crate::real::Real;
use crate::util::gemm as matmul;

/// How the learned inverse $R$ of a self-normalizing linear layer is trained.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InverseFit {
    /// The paper's Eq. 3: $R$ is a parameter of the objective
    /// $\tfrac12\log p^f + \tfrac12\log p^g - \lambda\lVert RWx - x\rVert^2$, trained by the
    /// optimiser with $W$ and $b$, and the penalty pulls on $W$ as well (Eqs. 17, 20). What
    /// [`SelfNormLinear::new`](super::SelfNormLinear::new) makes.
    Penalty,
    /// $W$ and $b$ follow the plain flow's log-likelihood with $R^T$ in place of $W^{-T}$
    /// (Eq. 10): no penalty, λ unused. After each optimiser step, $R$ is moved by the
    /// smallest change that (for `relax = 1`) makes it reconstruct the batch:
    /// $R \leftarrow R - \mu\,E\,(U^TU + \rho I)^{-1}U^T$ with $U = WX$, $E = RU - X$ — a
    /// proximal step on the same reconstruction loss (`proofs/projection.md`). The default
    /// of the FC model (`docs/results.md`).
    Projection(Projection),
}

impl Default for InverseFit {
    /// [`InverseFit::Penalty`], the paper's layer.
    fn default() -> Self {
        InverseFit::Penalty
    }
}

impl InverseFit {
    /// The projection with its default settings.
    pub fn projection() -> Self {
        InverseFit::Projection(Projection::default())
    }

    /// Check the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a relaxation outside $(0, 2)$ or a ridge that is not
    /// positive and finite.
    pub fn validate(&self) -> Result<()> {
        match self {
            InverseFit::Penalty => Ok(()),
            InverseFit::Projection(p) => p.validate(),
        }
    }
}

/// Settings of [`InverseFit::Projection`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Projection {
    /// The relaxation $\mu\in(0, 2)$: the batch residual is multiplied by
    /// $I - \mu(G + \rho I)^{-1}G$, a contraction for every $\mu$ in that range; 1 removes it
    /// (up to the ridge).
    pub relax: f64,
    /// The ridge $\rho$ relative to the mean diagonal of $G = U^TU$ (i.e. to the batch's mean
    /// squared output norm): $\rho = \text{ridge}\cdot\operatorname{tr}G/B$. It keeps the solve
    /// well conditioned when the batch's outputs are nearly dependent (always when $B > D$),
    /// and damps the step along directions the batch barely covers.
    pub ridge: f64,
}

impl Default for Projection {
    /// `relax` 1, `ridge` $10^{-3}$ (the system's condition number stays below $B\cdot10^{3}$, safe in `f32`).
    fn default() -> Self {
        Self { relax: 1.0, ridge: 1e-3 }
    }
}

impl Projection {
    fn validate(&self) -> Result<()> {
        let op = "InverseFit::Projection";
        if !(self.relax > 0.0 && self.relax < 2.0) {
            return Err(Error::InvalidArgument { op, reason: format!("relax must be in (0, 2), got {}", self.relax) });
        }
        if !(self.ridge > 0.0 && self.ridge.is_finite()) {
            return Err(Error::InvalidArgument { op, reason: format!("ridge must be positive and finite, got {}", self.ridge) });
        }
        Ok(())
    }
}

/// The projection's buffers: the `B x B` Gram matrix, its inverse, the Cholesky scratch,
/// and which batch's step is pending.
pub(crate) struct ProjectionBuffers<T: Real> {
    gram: Mat<T>,
    inv: Mat<T>,
    scratch: MemBuffer,
    /// Batch size of the step waiting in the workspace (`u` and `t`), if any.
    pub(crate) pending: Option<usize>,
}

impl<T: Real> core::fmt::Debug for ProjectionBuffers<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProjectionBuffers").field("max_batch", &self.gram.nrows()).field("pending", &self.pending).finish_non_exhaustive()
    }
}

impl<T: Real> ProjectionBuffers<T> {
    pub(crate) fn new(max_batch: usize) -> Result<Self> {
        let req = StackReq::any_of(&[
            llt::factor::cholesky_in_place_scratch::<T>(max_batch, Par::Seq, Default::default()),
            llt::inverse::inverse_scratch::<T>(max_batch, Par::Seq),
        ]);
        let scratch = MemBuffer::try_new(req).map_err(|_| Error::InvalidArgument {
            op: "InverseFit::Projection",
            reason: format!("the scratch for a batch of {max_batch} cannot be allocated"),
        })?;
        Ok(Self { gram: crate::util::try_zeros(max_batch, max_batch)?, inv: crate::util::try_zeros(max_batch, max_batch)?, scratch, pending: None })
    }

    /// Write $E(U^TU + \rho I)^{-1}$ into `out` (`D x B`), for the residual `e` $= E = RU - X$
    /// of the outputs `u` $= U$, with $\rho$ = `ridge` times the mean of $U^TU$'s diagonal.
    /// Never allocates.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for a non-finite Gram matrix; [`Error::Singular`] if the ridged
    /// Gram matrix is not positive definite to working precision (all outputs zero).
    pub(crate) fn solve(&mut self, u: MatRef<'_, T>, e: MatRef<'_, T>, out: MatMut<'_, T>, ridge: f64, par: Par) -> Result<()> {
        const OP: &str = "InverseFit::Projection";
        let b = u.ncols();
        let mut g = self.gram.as_mut().submatrix_mut(0, 0, b, b);
        matmul(g.rb_mut(), Accum::Replace, u.transpose(), u, T::from_f64(1.0), par);
        let mut trace = 0.0;
        for i in 0..b {
            trace += g[(i, i)].as_f64();
        }
        if !trace.is_finite() {
            return Err(Error::NonFinite { op: OP });
        }
        let rho64 = ridge * trace / b as f64;
        let rho = T::from_f64(rho64);
        // all outputs zero (or the ridge underflowed in T): nothing to project on
        if rho64.is_nan() || rho64 <= 0.0 || rho.as_f64() <= 0.0 {
            return Err(Error::Singular { op: OP, index: 0, pivot: 0.0, max_pivot: 0.0 });
        }
        for i in 0..b {
            g[(i, i)] += rho;
        }
        // B x B: too small to gain from threads (and faer's parallel kernels allocate)
        let stack = MemStack::new(&mut self.scratch);
        llt::factor::cholesky_in_place(g.rb_mut(), Default::default(), Par::Seq, stack, Default::default()).map_err(|_| Error::Singular {
            op: OP,
            index: 0,
            pivot: 0.0,
            max_pivot: trace,
        })?;
        let mut inv = self.inv.as_mut().submatrix_mut(0, 0, b, b);
        llt::inverse::inverse(inv.rb_mut(), g.as_ref(), Par::Seq, MemStack::new(&mut self.scratch));
        // faer fills the lower triangle of the symmetric inverse: mirror it
        for j in 0..b {
            for i in 0..j {
                inv[(i, j)] = inv[(j, i)];
            }
        }
        matmul(out, Accum::Replace, e, inv.as_ref(), T::from_f64(1.0), par);
        Ok(())
    }
}
