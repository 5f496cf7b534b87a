//! The self-normalizing fully connected layer (Section 4.1, Appendix A.1) and the
//! exact-gradient baseline.
//!
//! $f(x) = Wx + b$, learned inverse $g(z) = R(z - b)$, reconstruction error
//! $\mathcal E(x) = \lVert RWx - x\rVert^2$ (the bias cancels). With
//! $\delta_z = \partial \log p/\partial z$, $u = Wx$, $e = RWx - x$ and
//! $\delta_x = W^T\delta_z$, the gradients of the objective (Eq. 3) are
//!
//! | | exact (Eqs. 8, 9) | self-normalizing (Eqs. 17, 20) |
//! |---|---|---|
//! | $\partial\mathcal L/\partial W$ | $\tfrac12(\delta^f_z x^T + W^{-T}) - 2\lambda R^T e x^T$ | $\tfrac12(\delta^f_z x^T + R^T) - 2\lambda R^T e x^T$ |
//! | $\partial\mathcal L/\partial R$ | $\tfrac12(-\delta^g_x v^T - R^{-T}) - 2\lambda e u^T$ | $\tfrac12(-\delta^f_x u^T - W^T) - 2\lambda e u^T$ |
//! | $\partial\mathcal L/\partial b$ | $\tfrac12(\delta^f_z + \delta^g_z)$ | $\delta^f_z$ |
//!
//! where $v = R^{-1}x$, $\delta^g_z$ is the delta at $g^{-1}(x) = v + b$ and
//! $\delta^g_x = R^{-T}\delta^g_z$. The derivations are in `proofs/fc.md`.
//! [`SelfNormLinear::backward`] returns the right column, batch-averaged and negated
//! (a loss gradient); [`SelfNormLinear::backward_exact`] the left one.
//! [`ExactLinear`] is the paper's baseline: a plain flow layer trained on
//! $\log p^f_X$ alone with $W^{-T}$ from LU.

mod backward;
mod exact_linear;
mod forward;
mod inverse_fit;
mod projection;
mod relative;
mod transform;
mod workspace;

pub use exact_linear::{ExactLinear, ExactLinearGrads, ExactLinearWorkspace};
pub use inverse_fit::{InverseFit, Projection};
pub use relative::{RelativeLinear, RelativeLinearWorkspace};
pub use workspace::LinearWorkspace;

use faer::{Mat, MatMut, MatRef};
use rand::Rng;

pub use super::BackwardStats;
use crate::error::{Error, Result};
use crate::real::Real;

/// A square self-normalizing linear flow layer with parameters $W$, $R \approx W^{-1}$
/// and an optional bias $b$.
///
/// Batches are `D x B`, one column per example. See the [module docs](self) for the
/// gradients and [`crate::layers`] for the sign and averaging conventions.
///
/// # Example
/// ```
/// use snf::layers::linear::{SelfNormLinear, LinearWorkspace};
/// use faer::{Mat, Par};
///
/// let mut rng = snf::init::rng(0);
/// let layer = SelfNormLinear::<f64>::new(4, true, &mut rng)?;
/// let x = Mat::from_fn(4, 8, |i, j| (i + 2 * j) as f64 / 10.0);
/// let mut ws = LinearWorkspace::new(4, 8, Par::Seq)?;
/// let mut z = Mat::zeros(4, 8);
/// layer.forward(x.as_ref(), z.as_mut(), &mut ws)?;
/// // standard normal base: delta_z = -z
/// let dz = Mat::from_fn(4, 8, |i, j| -z[(i, j)]);
/// let mut dx = Mat::zeros(4, 8);
/// let mut grads = layer.zero_grads();
/// let stats = layer.backward(x.as_ref(), dz.as_ref(), dx.as_mut(), &mut grads, &mut ws, 1.0)?;
/// // At init R = W^T, so RW - I = eps + eps^T + O(eps^2), eps ~ N(0, 0.005^2) at D = 4:
/// // the reconstruction error is small but not zero.
/// assert!(stats.reconstruction_error > 0.0 && stats.reconstruction_error < 1e-2);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SelfNormLinear<T: Real> {
    pub(crate) w: Mat<T>,
    /// $R^T$, stored transposed: both log-det surrogate terms ($-\tfrac12 R^T$ in
    /// $\partial_W\ell$ and $\tfrac12 W^T$ in $\partial_R\ell$, i.e. $\tfrac12 W$ in
    /// $\partial_{R^T}\ell$) then become contiguous scaled copies instead of strided
    /// transposes, and products with $R$ are transposed views, which faer runs at full speed.
    pub(crate) rt: Mat<T>,
    pub(crate) b: Option<Mat<T>>,
    pub(crate) fit: InverseFit,
}

/// Gradients of the loss with respect to a [`SelfNormLinear`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads<T: Real> {
    pub(crate) w: Mat<T>,
    /// $\partial\ell/\partial R^T$ (stored like the layer's $R^T$).
    pub(crate) rt: Mat<T>,
    pub(crate) b: Option<Mat<T>>,
}

impl<T: Real> LinearGrads<T> {
    /// $\partial\ell/\partial W$, `D x D`.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// $\partial\ell/\partial R$, `D x D` (a transposed view of the stored $\partial\ell/\partial R^T$).
    pub fn r(&self) -> MatRef<'_, T> {
        self.rt.transpose()
    }
    /// $\partial\ell/\partial b$, `D x 1`, present iff the layer has a bias.
    pub fn b(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }
    /// Multiply every block by `s` (gradient clipping).
    pub fn scale(&mut self, s: T) {
        for m in [Some(&mut self.w), Some(&mut self.rt), self.b.as_mut()].into_iter().flatten() {
            faer::zip!(m.as_mut()).for_each(|faer::unzip!(v)| *v *= s);
        }
    }
    /// The gradient blocks in parameter order `[W, R, b?]`, for
    /// [`angle_degrees`](crate::grad::angle_degrees).
    pub fn blocks(&self) -> impl Iterator<Item = MatRef<'_, T>> {
        [Some(self.w()), Some(self.r()), self.b()].into_iter().flatten()
    }
}

impl<T: Real> SelfNormLinear<T> {
    /// A `dim x dim` layer initialised as in the paper: $W = I + \epsilon$ with
    /// $\epsilon$ Xavier-normal noise of gain 0.01 (std $0.01/\sqrt{D}$), $R = W^T$,
    /// $b = 0$.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `dim == 0`.
    pub fn new(dim: usize, bias: bool, rng: &mut impl Rng) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidArgument { op: "SelfNormLinear::new", reason: "dim must be positive".into() });
        }
        crate::util::check_alloc::<T>("SelfNormLinear::new", dim, dim, 2)?;
        let std = crate::init::xavier_normal_std(dim, dim, 0.01);
        let w = crate::init::identity_plus_noise::<T>(dim, std, rng);
        // R = W^T, stored as R^T = W.
        let rt = w.clone();
        Ok(Self { w, rt, b: bias.then(|| Mat::zeros(dim, 1)), fit: InverseFit::Penalty })
    }

    /// A layer from explicit parameters.
    ///
    /// # Errors
    /// [`Error::NotSquare`] / [`Error::ShapeMismatch`] on bad shapes,
    /// [`Error::InvalidArgument`] for an empty layer, [`Error::NonFinite`] for NaN/inf.
    pub fn from_parts(w: Mat<T>, r: Mat<T>, b: Option<Mat<T>>) -> Result<Self> {
        const OP: &str = "SelfNormLinear::from_parts";
        if w.nrows() != w.ncols() {
            return Err(Error::NotSquare { op: OP, rows: w.nrows(), cols: w.ncols() });
        }
        let d = w.nrows();
        if d == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "dim must be positive".into() });
        }
        crate::error::check_shape(OP, (d, d), (r.nrows(), r.ncols()))?;
        if let Some(b) = &b {
            crate::error::check_shape(OP, (d, 1), (b.nrows(), b.ncols()))?;
        }
        let finite =
            crate::util::all_finite(w.as_ref()) && crate::util::all_finite(r.as_ref()) && b.as_ref().is_none_or(|b| crate::util::all_finite(b.as_ref()));
        if !finite {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { w, rt: r.transpose().to_owned(), b, fit: InverseFit::Penalty })
    }

    /// The same layer with its inverse kept by `fit` ([`InverseFit::Penalty`], the paper's,
    /// is what [`new`](Self::new) and [`from_parts`](Self::from_parts) make).
    ///
    /// ```
    /// use snf::layers::linear::{InverseFit, SelfNormLinear};
    /// let layer = SelfNormLinear::<f32>::new(8, true, &mut snf::init::rng(0))?.with_inverse_fit(InverseFit::projection())?;
    /// assert_eq!(layer.inverse_fit(), InverseFit::projection());
    /// # Ok::<(), snf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for settings [`InverseFit::validate`] rejects.
    pub fn with_inverse_fit(mut self, fit: InverseFit) -> Result<Self> {
        fit.validate()?;
        self.fit = fit;
        Ok(self)
    }

    /// How $R$ is kept close to $W^{-1}$.
    pub fn inverse_fit(&self) -> InverseFit {
        self.fit
    }

    /// The dimension $D$.
    pub fn dim(&self) -> usize {
        self.w.nrows()
    }
    /// The forward weight $W$.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    /// The learned inverse weight $R$.
    pub fn r(&self) -> MatRef<'_, T> {
        self.rt.transpose()
    }
    /// The bias $b$ (`D x 1`), if any.
    pub fn bias(&self) -> Option<MatRef<'_, T>> {
        self.b.as_ref().map(|b| b.as_ref())
    }

    /// Zeroed gradients shaped like this layer's parameters.
    pub fn zero_grads(&self) -> LinearGrads<T> {
        let d = self.dim();
        LinearGrads { w: Mat::zeros(d, d), rt: Mat::zeros(d, d), b: self.b.as_ref().map(|_| Mat::zeros(d, 1)) }
    }

    /// Mutable parameter blocks paired with their gradients, `[W, R^T, b?]` (the
    /// storage order; an element-wise optimiser is indifferent to the transpose): what
    /// an optimiser step consumes.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `grads` was not made for this layer.
    pub fn params_with_grads<'a>(&'a mut self, grads: &'a LinearGrads<T>) -> Result<impl Iterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>> {
        const OP: &str = "SelfNormLinear::params_with_grads";
        let d = self.dim();
        crate::error::check_shape(OP, (d, d), (grads.w.nrows(), grads.w.ncols()))?;
        crate::error::check_shape(OP, (d, d), (grads.rt.nrows(), grads.rt.ncols()))?;
        if self.b.is_some() != grads.b.is_some() {
            return Err(Error::InvalidArgument { op: OP, reason: "bias presence differs".into() });
        }
        let b = self.b.as_mut().zip(grads.b.as_ref()).map(|(p, g)| (p.as_mut(), g.as_ref()));
        Ok([Some((self.w.as_mut(), grads.w.as_ref())), Some((self.rt.as_mut(), grads.rt.as_ref())), b].into_iter().flatten())
    }
}
