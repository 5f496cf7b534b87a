//! The invertible 1x1 convolution of Glow (Kingma & Dhariwal, 2018), trained with the exact
//! gradient: the channel mixing that the emerging-convolution and convolution-exponential
//! baselines of Table 1 put in front of their spatial layers (proofs/baselines.md §1).

use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::conv::chunk::{BatchMut, BatchRef};
use crate::error::{check_shape, Error, Result};
use crate::exact::Lu;
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{Blocks, BlocksMut, GradBlocks, Grads, Param, Tape, Transform, Workspace};
use crate::util::gemm;

/// $z_{\cdot,p} = W x_{\cdot,p}$ at every pixel $p$ of a `C x H x W` image ($W$ is `C x C`).
///
/// Its Jacobian is $I_{HW}\otimes W$ up to a permutation, so
/// $\log|\det J| = HW\log|\det W|$ (data-independent: the static part, Eqs. 6–7), and with
/// $X_b$, $\Delta_b$ the `HW x C` views of example $b$'s input and output delta
/// (column $c$ = channel $c$), the loss $\ell = -\frac1B\sum_b\log p$ has
/// $$\partial_W\ell = -\frac1B\sum_b\Delta_b^TX_b - HW\,W^{-T},\qquad
///   \delta_{X_b} = \Delta_b W.$$
/// The $W^{-T}$ is a `C x C` LU per step (cheap: $C\le 64$ in every model here).
///
/// # Example
/// ```
/// use faer::Par;
/// use snf::layers::InvConv1x1;
/// use snf::{transform::Transform, Shape};
/// let layer = InvConv1x1::<f64>::new(Shape::image(4, 3, 3), &mut snf::init::rng(0))?;
/// // W starts orthogonal: log|det J| = HW log|det W| = 0
/// let mut ws = layer.workspace(1, Par::Seq)?;
/// assert!(layer.static_log_det(&mut ws)?.abs() < 1e-12);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InvConv1x1<T: Real> {
    shape: Shape,
    w: Mat<T>,
}

/// Gradient of an [`InvConv1x1`]: one `C x C` block.
#[derive(Debug, Clone, PartialEq)]
pub struct InvConv1x1Grads<T: Real> {
    /// $\partial\ell/\partial W$.
    pub w: Mat<T>,
}

impl<T: Real> GradBlocks<T> for InvConv1x1Grads<T> {
    fn blocks(&self) -> Blocks<'_, T> {
        [self.w.as_ref()].into_iter().collect()
    }
    fn blocks_mut(&mut self) -> BlocksMut<'_, T> {
        [self.w.as_mut()].into_iter().collect()
    }
    fn clone_boxed(&self) -> Box<dyn GradBlocks<T>> {
        Box::new(self.clone())
    }
}

/// Buffers of an [`InvConv1x1`]: a `C x C` LU and its inverse.
#[derive(Debug)]
struct Conv1x1Workspace<T: Real> {
    lu: Lu<T>,
    inv: Mat<T>,
    par: Par,
}

/// A random orthogonal `n x n` matrix (modified Gram–Schmidt on Gaussian columns, in
/// `f64`): the initialisation of Glow and of the paper's Appendix A.3.
pub fn random_orthogonal<T: Real>(n: usize, rng: &mut impl Rng) -> Mat<T> {
    let mut q = Mat::<f64>::from_fn(n, n, |_, _| rng.sample(StandardNormal));
    for j in 0..n {
        for k in 0..j {
            let d: f64 = (0..n).map(|i| q[(i, j)] * q[(i, k)]).sum();
            for i in 0..n {
                q[(i, j)] -= d * q[(i, k)];
            }
        }
        let norm = (0..n).map(|i| q[(i, j)] * q[(i, j)]).sum::<f64>().sqrt();
        for i in 0..n {
            // a Gaussian column is dependent on the previous ones with probability 0
            q[(i, j)] = if norm > 0.0 {
                q[(i, j)] / norm
            } else if i == j {
                1.0
            } else {
                0.0
            };
        }
    }
    Mat::from_fn(n, n, |i, j| T::from_f64(q[(i, j)]))
}

impl<T: Real> InvConv1x1<T> {
    /// A layer for `shape` images with $W$ a random orthogonal matrix (A.3).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty shape.
    pub fn new(shape: Shape, rng: &mut impl Rng) -> Result<Self> {
        shape.checked_dim().map_err(|_| Error::InvalidArgument { op: "InvConv1x1::new", reason: format!("empty or oversized shape {shape}") })?;
        Ok(Self { shape, w: random_orthogonal(shape.c, rng) })
    }

    /// A layer from an explicit `C x C` matrix (e.g. a checkpoint).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `w` is not `C x C`; [`Error::NonFinite`] for a
    /// non-finite entry; [`Error::InvalidArgument`] for an empty shape.
    pub fn from_parts(shape: Shape, w: Mat<T>) -> Result<Self> {
        const OP: &str = "InvConv1x1::from_parts";
        shape.checked_dim().map_err(|_| Error::InvalidArgument { op: OP, reason: format!("empty or oversized shape {shape}") })?;
        check_shape(OP, (shape.c, shape.c), (w.nrows(), w.ncols()))?;
        if !crate::util::all_finite(w.as_ref()) {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { shape, w })
    }

    /// The image shape it mixes.
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The `C x C` matrix $W$.
    pub fn w(&self) -> MatRef<'_, T> {
        self.w.as_ref()
    }
    fn pixels(&self) -> usize {
        self.shape.h * self.shape.w
    }
}

/// `out_b = in_b * M` for every example (both `HW x C` views), parallel over examples.
pub(crate) fn per_pixel<T: Real>(op: &'static str, input: MatRef<'_, T>, out: MatMut<'_, T>, m: MatRef<'_, T>, hw: usize, par: Par) -> Result<()> {
    let c = m.nrows();
    let input = crate::conv::ops::contiguous(op, input)?;
    let out = crate::conv::ops::contiguous_mut(op, out)?;
    crate::util::par_cols((input, out), par, &|(x, mut z): (BatchRef<'_, T>, BatchMut<'_, T>)| {
        for j in 0..x.ncols() {
            let xv = MatRef::from_column_major_slice(x.col(j).as_slice(), hw, c);
            let zv = MatMut::from_column_major_slice_mut(z.rb_mut().col_mut(j).as_slice_mut(), hw, c);
            gemm(zv, Accum::Replace, xv, m, T::from_f64(1.0), Par::Seq);
        }
    });
    Ok(())
}

/// `out += alpha * sum_b Delta_b^T X_b` over the examples (`HW x C` views of `dy` and `x`):
/// the data part of a 1x1 convolution's weight gradient.
pub(crate) fn add_pixel_products<T: Real>(op: &'static str, x: MatRef<'_, T>, dy: MatRef<'_, T>, mut out: MatMut<'_, T>, alpha: T, hw: usize) -> Result<()> {
    let c = out.nrows();
    let (xs, ds) = (crate::conv::ops::contiguous(op, x)?, crate::conv::ops::contiguous(op, dy)?);
    for j in 0..x.ncols() {
        let xv = MatRef::from_column_major_slice(xs.col(j).as_slice(), hw, c);
        let dv = MatRef::from_column_major_slice(ds.col(j).as_slice(), hw, c);
        gemm(out.rb_mut(), Accum::Add, dv.transpose(), xv, alpha, Par::Seq);
    }
    Ok(())
}

impl<T: Real> Transform<T> for InvConv1x1<T> {
    fn kind(&self) -> &'static str {
        "inv-conv1x1"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        crate::layers::same_shape("InvConv1x1::output_shape", self.shape, input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let c = self.shape.c;
        Workspace::new(Conv1x1Workspace::<T> { lu: Lu::new(c, c, Par::Seq)?, inv: crate::util::try_zeros(c, c)?, par }, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "InvConv1x1::forward";
        let b = crate::layers::check_batch(OP, x, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (y.nrows(), y.ncols()))?;
        let par = ws.buffers::<Conv1x1Workspace<T>>()?.par;
        // z = X W^T per example
        per_pixel(OP, x, y, self.w.transpose(), self.pixels(), par)?;
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
        const OP: &str = "InvConv1x1::backward";
        ws.consume(tape, x)?;
        let (d, b) = (self.shape.dim(), x.ncols());
        crate::layers::check_backward_operands(OP, d, b, &[(dy.nrows(), dy.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        let g: &mut InvConv1x1Grads<T> = grads.downcast_mut()?;
        check_shape(OP, (self.shape.c, self.shape.c), (g.w.nrows(), g.w.ncols()))?;
        let hw = self.pixels();
        let bufs = ws.buffers_mut::<Conv1x1Workspace<T>>()?;
        per_pixel(OP, dy, dx, self.w.as_ref(), hw, bufs.par)?;
        // dW = -1/B sum_b Delta_b^T X_b - HW W^{-T}
        bufs.lu.factor(self.w.as_ref())?;
        bufs.lu.inverse_transpose_into(bufs.inv.as_mut())?;
        let mut gw = g.w.as_mut();
        gw.copy_from(bufs.inv.as_ref());
        let scale = T::from_f64(-(hw as f64));
        faer::zip!(gw.rb_mut()).for_each(|faer::unzip!(v)| *v *= scale);
        add_pixel_products(OP, x, dy, gw, T::from_f64(-1.0 / b as f64), hw)?;
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "InvConv1x1::inverse";
        let b = crate::layers::check_batch(OP, y, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (x.nrows(), x.ncols()))?;
        let bufs = ws.buffers_mut::<Conv1x1Workspace<T>>()?;
        bufs.lu.factor(self.w.as_ref())?;
        bufs.lu.inverse_transpose_into(bufs.inv.as_mut())?;
        // X = Z W^{-T}
        per_pixel(OP, y, x, bufs.inv.as_ref(), self.pixels(), bufs.par)
    }
    fn static_log_det(&self, ws: &mut Workspace<T>) -> Result<f64> {
        let bufs = ws.buffers_mut::<Conv1x1Workspace<T>>()?;
        bufs.lu.factor(self.w.as_ref())?;
        Ok(self.pixels() as f64 * bufs.lu.log_abs_det()?)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        vec![Param { name: "w", value: self.w.as_ref() }]
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [self.w.as_mut()].into_iter().collect()
    }
    fn zero_grads(&self) -> Grads<T> {
        Grads::new(InvConv1x1Grads { w: Mat::zeros(self.shape.c, self.shape.c) })
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "inv-conv1x1", "shape": self.shape.to_array() })
    }
}
