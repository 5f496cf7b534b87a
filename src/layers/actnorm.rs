//! ActNorm (Kingma & Dhariwal, 2018): a per-channel affine map whose scale and bias are set
//! from the first batch so that its outputs start with zero mean and unit variance.

use faer::{MatMut, MatRef, Par};

use crate::error::{check_shape, Error, Result};
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{BlocksMut, Grads, Param, Tape, Transform, Workspace};

/// $y_{c,p} = e^{s_c}x_{c,p} + b_c$ at every pixel $p$ of a `C x H x W` image, with the
/// log-scale $s$ and bias $b$ (`C x 1` each) learned.
///
/// - $\log|\det J| = HW\sum_cs_c$ (data-independent, the static part, Eqs. 6–7).
/// - With $\ell = -\frac1B\sum_b[\delta_b\cdot y_b + \log|\det J|]$:
///   $$\partial_{s_c}\ell = -\frac1B\sum_{b,p}\delta_{c,p}e^{s_c}x_{c,p} - HW,\qquad
///   \partial_{b_c}\ell = -\frac1B\sum_{b,p}\delta_{c,p},\qquad \delta_x = e^{s}\delta.$$
/// - **Data-dependent initialisation** ([`Transform::data_init`], run by
///   [`Flow::data_init`](crate::flow::Flow::data_init) and by the trainer before its first
///   step): $s_c = -\log(\sigma_c + 10^{-6})$ and $b_c = -\mu_ce^{s_c}$, with $\mu_c$, $\sigma_c$
///   the mean and standard deviation of channel $c$ over the batch and the pixels. It runs
///   once: a layer that is initialised (or loaded from a checkpoint) keeps its parameters.
///
/// ```
/// use snf::faer::{Mat, Par};
/// use snf::layers::ActNorm;
/// use snf::{transform::Transform, Shape};
/// let mut an = ActNorm::<f64>::new(Shape::image(2, 2, 2))?;
/// let x = Mat::from_fn(8, 4, |i, j| if i < 4 { 10.0 + (i + j) as f64 } else { -3.0 * (j as f64) });
/// an.data_init(x.as_ref(), Par::Seq)?;
/// let mut ws = an.workspace(4, Par::Seq)?;
/// let mut y = Mat::zeros(8, 4);
/// let _tape = an.forward(x.as_ref(), y.as_mut(), &mut [0.0; 4], &mut ws)?;
/// let mean0: f64 = (0..4).flat_map(|i| (0..4).map(move |j| (i, j))).map(|(i, j)| y[(i, j)]).sum::<f64>() / 16.0;
/// assert!(mean0.abs() < 1e-12);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ActNorm<T: Real> {
    shape: Shape,
    logs: faer::Mat<T>,
    b: faer::Mat<T>,
    initialized: bool,
}

/// The floor added to each channel's standard deviation at initialisation.
pub const ACTNORM_EPS: f64 = 1e-6;

/// ActNorm's data-dependent initialisation of `logs`, `b` (`C x 1`) from a batch `u` of
/// `C * hw` rows: per channel, over the batch and its `hw` pixels, $s_c = -\log(\sigma_c +
/// \epsilon)$ and $b_c = -\mu_ce^{s_c}$ (also the coupling conditioners' ActNorms).
pub(crate) fn init_from_batch<T: Real>(op: &'static str, u: MatRef<'_, T>, hw: usize, mut logs: MatMut<'_, T>, mut b: MatMut<'_, T>) -> Result<()> {
    let n = (hw * u.ncols()) as f64;
    for c in 0..logs.nrows() {
        let rows = c * hw..(c + 1) * hw;
        let mean = (0..u.ncols()).map(|j| rows.clone().map(|p| u[(p, j)].as_f64()).sum::<f64>()).sum::<f64>() / n;
        let var = (0..u.ncols()).map(|j| rows.clone().map(|p| (u[(p, j)].as_f64() - mean).powi(2)).sum::<f64>()).sum::<f64>() / n;
        if !(mean.is_finite() && var.is_finite()) {
            return Err(Error::NonFinite { op });
        }
        let s = -(var.sqrt() + ACTNORM_EPS).ln();
        logs[(c, 0)] = T::from_f64(s);
        b[(c, 0)] = T::from_f64(-mean * s.exp());
    }
    Ok(())
}

impl<T: Real> ActNorm<T> {
    /// An uninitialised layer (identity until [`Transform::data_init`] sees a batch).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty shape.
    pub fn new(shape: Shape) -> Result<Self> {
        shape.checked_dim().map_err(|_| Error::InvalidArgument { op: "ActNorm::new", reason: format!("empty or oversized shape {shape}") })?;
        Ok(Self { shape, logs: faer::Mat::zeros(shape.c, 1), b: faer::Mat::zeros(shape.c, 1), initialized: false })
    }

    /// A layer from explicit parameters (e.g. a checkpoint).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for tensors that are not `C x 1`; [`Error::NonFinite`].
    pub fn from_parts(shape: Shape, logs: faer::Mat<T>, b: faer::Mat<T>, initialized: bool) -> Result<Self> {
        const OP: &str = "ActNorm::from_parts";
        let mut l = Self::new(shape)?;
        check_shape(OP, (shape.c, 1), (logs.nrows(), logs.ncols()))?;
        check_shape(OP, (shape.c, 1), (b.nrows(), b.ncols()))?;
        if !(crate::util::all_finite(logs.as_ref()) && crate::util::all_finite(b.as_ref())) {
            return Err(Error::NonFinite { op: OP });
        }
        (l.logs, l.b, l.initialized) = (logs, b, initialized);
        Ok(l)
    }

    /// Whether the data-dependent initialisation has run.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }
    /// The log-scale $s$.
    pub fn log_scale(&self) -> MatRef<'_, T> {
        self.logs.as_ref()
    }
    /// The bias $b$.
    pub fn bias(&self) -> MatRef<'_, T> {
        self.b.as_ref()
    }
    fn pixels(&self) -> usize {
        self.shape.h * self.shape.w
    }

    /// Apply $y = e^{\pm s}(x \mp \ldots)$ channel by channel: `out = scale_c * (x + pre_c) + post_c`.
    fn affine(&self, x: MatRef<'_, T>, mut out: MatMut<'_, T>, inverse: bool) {
        let hw = self.pixels();
        for c in 0..self.shape.c {
            let s = self.logs[(c, 0)].as_f64();
            let (scale, pre, post) =
                if inverse { (T::from_f64((-s).exp()), -self.b[(c, 0)], T::from_f64(0.0)) } else { (T::from_f64(s.exp()), T::from_f64(0.0), self.b[(c, 0)]) };
            for j in 0..x.ncols() {
                for p in c * hw..(c + 1) * hw {
                    out[(p, j)] = scale * (x[(p, j)] + pre) + post;
                }
            }
        }
    }
}

impl<T: Real> Transform<T> for ActNorm<T> {
    fn kind(&self) -> &'static str {
        "actnorm"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        crate::layers::same_shape("ActNorm::output_shape", self.shape, input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        Workspace::new((), max_batch, par)
    }
    fn data_init(&mut self, x: MatRef<'_, T>, _par: Par) -> Result<()> {
        const OP: &str = "ActNorm::data_init";
        if self.initialized {
            return Ok(());
        }
        check_shape(OP, (self.shape.dim(), x.ncols()), (x.nrows(), x.ncols()))?;
        if x.ncols() == 0 {
            return Err(Error::InvalidArgument { op: OP, reason: "empty batch".into() });
        }
        init_from_batch(OP, x, self.pixels(), self.logs.as_mut(), self.b.as_mut())?;
        self.initialized = true;
        Ok(())
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "ActNorm::forward";
        let b = crate::layers::check_batch(OP, x, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (y.nrows(), y.ncols()))?;
        self.affine(x, y, false);
        Ok(ws.record(x))
    }
    fn backward(
        &self,
        tape: Tape,
        x: MatRef<'_, T>,
        dy: MatRef<'_, T>,
        dx: MatMut<'_, T>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        lambda: T,
    ) -> Result<f64> {
        const OP: &str = "ActNorm::backward";
        ws.consume(tape, x)?;
        let (d, b) = (self.shape.dim(), x.ncols());
        crate::layers::check_backward_operands(OP, d, b, &[(dy.nrows(), dy.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        let g: &mut Vec<faer::Mat<T>> = grads.downcast_mut()?;
        if g.len() != 2 {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} gradient blocks, 2 expected", g.len()) });
        }
        for m in g.iter() {
            check_shape(OP, (self.shape.c, 1), (m.nrows(), m.ncols()))?;
        }
        let mut dx = dx;
        let hw = self.pixels();
        let inv_b = -1.0 / b as f64;
        for c in 0..self.shape.c {
            let e = self.logs[(c, 0)].as_f64().exp();
            let et = T::from_f64(e);
            let (mut gs, mut gb) = (0.0, 0.0);
            for j in 0..b {
                for p in c * hw..(c + 1) * hw {
                    let dv = dy[(p, j)];
                    dx[(p, j)] = et * dv;
                    gs += dv.as_f64() * x[(p, j)].as_f64();
                    gb += dv.as_f64();
                }
            }
            g[0][(c, 0)] = T::from_f64(inv_b * e * gs - hw as f64);
            g[1][(c, 0)] = T::from_f64(inv_b * gb);
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "ActNorm::inverse";
        let b = crate::layers::check_batch(OP, y, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (x.nrows(), x.ncols()))?;
        self.affine(y, x, true);
        Ok(())
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        let s: f64 = (0..self.shape.c).map(|c| self.logs[(c, 0)].as_f64()).sum();
        Ok(self.pixels() as f64 * s)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        vec![Param { name: "logs", value: self.logs.as_ref() }, Param { name: "b", value: self.b.as_ref() }]
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [self.logs.as_mut(), self.b.as_mut()].into_iter().collect()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "actnorm", "shape": self.shape.to_array(), "initialized": self.initialized })
    }
}
