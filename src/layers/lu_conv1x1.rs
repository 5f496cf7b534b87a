//! Glow's LU-parametrised invertible 1x1 convolution (Kingma & Dhariwal, 2018, §3.2):
//! $W = P\,L\,(U + \mathrm{diag}(\mathrm{sign}\odot e^{\log|s|}))$, exact log-det without
//! a factorisation, exact gradient without $W^{-T}$ (`proofs/glow.md` §5).

use faer::{Mat, MatMut, MatRef, Par};
use rand::Rng;

use super::conv1x1::{add_pixel_products, per_pixel, random_orthogonal};
use crate::error::{check_shape, Error, Result};
use crate::exact::Lu;
use crate::real::Real;
use crate::shape::Shape;
use crate::transform::{BlocksMut, Grads, Param, Tape, Transform, Workspace};

/// $z_{\cdot,p} = W x_{\cdot,p}$ at every pixel with
/// $$W = P\,L\,V,\qquad V = U + \mathrm{diag}(\sigma\odot e^{\ell}),$$
/// $P$ a fixed permutation, $L$ unit lower triangular (its strictly lower part learned),
/// $U$ strictly upper triangular (learned), $\ell = \log|s|$ learned and the signs $\sigma$
/// fixed. $\log|\det J| = HW\sum_i\ell_i$ — no LU at any step.
///
/// With $G = -\frac1B\sum_b\Delta_b^TX_b$ the data part of $\partial\ell/\partial W$ (as for
/// [`InvConv1x1`](super::InvConv1x1)) and $\tilde G = P^TG$:
/// $$\partial_L = \mathrm{tril}_{-1}(\tilde GV^T),\quad \partial_U = \mathrm{triu}_{+1}(L^T\tilde G),\quad
/// \partial_{\ell_i} = (L^T\tilde G)_{ii}\,\sigma_ie^{\ell_i} - HW.$$
/// Entries of the `l`, `u` tensors outside their triangles are ignored and get zero
/// gradients. Initialised (A.3) from the pivoted LU of a random orthogonal matrix.
///
/// # Example
/// ```
/// use faer::Par;
/// use snf::layers::LuConv1x1;
/// use snf::{transform::Transform, Shape};
/// let layer = LuConv1x1::<f64>::new(Shape::image(4, 3, 3), &mut snf::init::rng(0))?;
/// // W starts orthogonal: log|det J| = HW sum log|s| = 0
/// let mut ws = layer.workspace(1, Par::Seq)?;
/// assert!(layer.static_log_det(&mut ws)?.abs() < 1e-10);
/// # Ok::<(), snf::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LuConv1x1<T: Real> {
    shape: Shape,
    /// `W[perm[i], :] = (L V)[i, :]`.
    perm: Vec<usize>,
    sign: Vec<f64>,
    l: Mat<T>,
    u: Mat<T>,
    logs: Mat<T>,
}

struct LuConvBuffers<T: Real> {
    /// $W$, then scratch.
    w: Mat<T>,
    lv: Mat<T>,
    g: Mat<T>,
    inv: Mat<T>,
    lu: Lu<T>,
    par: Par,
}

/// Partial-pivot LU of a square `a` in f64: `(perm, L, U)` with `a[perm[i], :] = (L U)[i, :]`.
fn pivoted_lu(a: &Mat<f64>) -> (Vec<usize>, Mat<f64>, Mat<f64>) {
    let n = a.nrows();
    let mut m = a.clone();
    let mut perm: Vec<usize> = (0..n).collect();
    for k in 0..n {
        let p = (k..n).max_by(|&i, &j| m[(i, k)].abs().total_cmp(&m[(j, k)].abs())).unwrap_or(k);
        if p != k {
            for j in 0..n {
                let t = m[(k, j)];
                m[(k, j)] = m[(p, j)];
                m[(p, j)] = t;
            }
            perm.swap(k, p);
        }
        let piv = m[(k, k)];
        for i in k + 1..n {
            let f = if piv != 0.0 { m[(i, k)] / piv } else { 0.0 };
            m[(i, k)] = f;
            for j in k + 1..n {
                m[(i, j)] -= f * m[(k, j)];
            }
        }
    }
    let l = Mat::from_fn(n, n, |i, j| {
        if i == j {
            1.0
        } else if i > j {
            m[(i, j)]
        } else {
            0.0
        }
    });
    let u = Mat::from_fn(n, n, |i, j| if i <= j { m[(i, j)] } else { 0.0 });
    (perm, l, u)
}

impl<T: Real> LuConv1x1<T> {
    /// A layer for `shape` images whose $W$ starts as a random orthogonal matrix (A.3),
    /// factored as Glow does.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty shape.
    pub fn new(shape: Shape, rng: &mut impl Rng) -> Result<Self> {
        shape.checked_dim().map_err(|_| Error::InvalidArgument { op: "LuConv1x1::new", reason: format!("empty or oversized shape {shape}") })?;
        let q: Mat<f64> = random_orthogonal(shape.c, rng);
        let (perm, l, u) = pivoted_lu(&q);
        let c = shape.c;
        let sign: Vec<f64> = (0..c).map(|i| if u[(i, i)] < 0.0 { -1.0 } else { 1.0 }).collect();
        let logs = Mat::from_fn(c, 1, |i, _| T::from_f64(u[(i, i)].abs().ln()));
        let lt = Mat::from_fn(c, c, |i, j| if i > j { T::from_f64(l[(i, j)]) } else { T::from_f64(0.0) });
        let ut = Mat::from_fn(c, c, |i, j| if i < j { T::from_f64(u[(i, j)]) } else { T::from_f64(0.0) });
        Ok(Self { shape, perm, sign, l: lt, u: ut, logs })
    }

    /// A layer from explicit parts: the permutation (`W[perm[i], :] = (L V)[i, :]`), the
    /// signs (±1), the `C x C` tensors `l` and `u` (only their strict triangles are used)
    /// and the `C x 1` log-magnitudes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a `perm` that is not a permutation of `0..C` or signs
    /// other than ±1; [`Error::ShapeMismatch`]; [`Error::NonFinite`].
    pub fn from_parts(shape: Shape, perm: Vec<usize>, sign: Vec<f64>, l: Mat<T>, u: Mat<T>, logs: Mat<T>) -> Result<Self> {
        const OP: &str = "LuConv1x1::from_parts";
        shape.checked_dim().map_err(|_| Error::InvalidArgument { op: OP, reason: format!("empty or oversized shape {shape}") })?;
        let c = shape.c;
        let mut seen = vec![false; c];
        if perm.len() != c || perm.iter().any(|&p| p >= c || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("perm must be a permutation of 0..{c}") });
        }
        if sign.len() != c || sign.iter().any(|s| s.abs() != 1.0) {
            return Err(Error::InvalidArgument { op: OP, reason: format!("sign must hold {c} values of +1 or -1") });
        }
        check_shape(OP, (c, c), (l.nrows(), l.ncols()))?;
        check_shape(OP, (c, c), (u.nrows(), u.ncols()))?;
        check_shape(OP, (c, 1), (logs.nrows(), logs.ncols()))?;
        if !(crate::util::all_finite(l.as_ref()) && crate::util::all_finite(u.as_ref()) && crate::util::all_finite(logs.as_ref())) {
            return Err(Error::NonFinite { op: OP });
        }
        Ok(Self { shape, perm, sign, l, u, logs })
    }

    /// The permutation: `W[perm[i], :] = (L V)[i, :]`.
    pub fn perm(&self) -> &[usize] {
        &self.perm
    }
    /// The fixed signs of the diagonal of $V$.
    pub fn sign(&self) -> &[f64] {
        &self.sign
    }
    fn pixels(&self) -> usize {
        self.shape.h * self.shape.w
    }

    /// $V = U + \mathrm{diag}(\sigma e^\ell)$ (into `v`) and $W = P L V$ (into `w`).
    fn assemble(&self, mut v: MatMut<'_, T>, mut w: MatMut<'_, T>) {
        let c = self.shape.c;
        for j in 0..c {
            for i in 0..c {
                v[(i, j)] = if i < j {
                    self.u[(i, j)]
                } else if i == j {
                    T::from_f64(self.sign[i] * self.logs[(i, 0)].as_f64().exp())
                } else {
                    T::from_f64(0.0)
                };
            }
        }
        // (L V)[i, j] = V[i, j] + sum_{k < i} L[i, k] V[k, j]
        for i in 0..c {
            for j in 0..c {
                let mut s = v[(i, j)];
                for k in 0..i {
                    s += self.l[(i, k)] * v[(k, j)];
                }
                w[(self.perm[i], j)] = s;
            }
        }
    }

    /// The assembled `C x C` matrix $W = PLV$.
    pub fn w(&self) -> Mat<T> {
        let c = self.shape.c;
        let (mut v, mut w) = (Mat::zeros(c, c), Mat::zeros(c, c));
        self.assemble(v.as_mut(), w.as_mut());
        w
    }
}

impl<T: Real> Transform<T> for LuConv1x1<T> {
    fn kind(&self) -> &'static str {
        "lu-conv1x1"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        crate::layers::same_shape("LuConv1x1::output_shape", self.shape, input)
    }
    fn workspace(&self, max_batch: usize, par: Par) -> Result<Workspace<T>> {
        let c = self.shape.c;
        let z = || crate::util::try_zeros::<T>(c, c);
        Workspace::new(LuConvBuffers { w: z()?, lv: z()?, g: z()?, inv: z()?, lu: Lu::new(c, c, Par::Seq)?, par }, max_batch, par)
    }
    fn forward(&self, x: MatRef<'_, T>, y: MatMut<'_, T>, _logdet: &mut [f64], ws: &mut Workspace<T>) -> Result<Tape> {
        const OP: &str = "LuConv1x1::forward";
        let b = crate::layers::check_batch(OP, x, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (y.nrows(), y.ncols()))?;
        let bufs = ws.buffers_mut::<LuConvBuffers<T>>()?;
        self.assemble(bufs.lv.as_mut(), bufs.w.as_mut());
        per_pixel(OP, x, y, bufs.w.transpose(), self.pixels(), bufs.par)?;
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
        const OP: &str = "LuConv1x1::backward";
        ws.consume(tape, x)?;
        let (d, b, c, hw) = (self.shape.dim(), x.ncols(), self.shape.c, self.pixels());
        crate::layers::check_backward_operands(OP, d, b, &[(dy.nrows(), dy.ncols()), (dx.nrows(), dx.ncols())], lambda)?;
        let mut g = grads.blocks_mut();
        if g.len() != 3 {
            return Err(Error::InvalidArgument { op: OP, reason: "gradients made for another transform".into() });
        }
        check_shape(OP, (c, c), (g[0].nrows(), g[0].ncols()))?;
        check_shape(OP, (c, c), (g[1].nrows(), g[1].ncols()))?;
        check_shape(OP, (c, 1), (g[2].nrows(), g[2].ncols()))?;
        let bufs = ws.buffers_mut::<LuConvBuffers<T>>()?;
        // W and V (in lv) as in forward
        self.assemble(bufs.lv.as_mut(), bufs.w.as_mut());
        per_pixel(OP, dy, dx, bufs.w.as_ref(), hw, bufs.par)?;
        // G = -1/B sum_b Delta_b^T X_b, into g
        bufs.g.as_mut().fill(T::from_f64(0.0));
        add_pixel_products(OP, x, dy, bufs.g.as_mut(), T::from_f64(-1.0 / b as f64), hw)?;
        // G~ = P^T G: row i of G~ is row perm[i] of G (into w, no longer needed)
        for i in 0..c {
            for j in 0..c {
                bufs.w[(i, j)] = bufs.g[(self.perm[i], j)];
            }
        }
        let (gt, v) = (bufs.w.as_ref(), bufs.lv.as_ref());
        // dL = tril_{-1}(G~ V^T)
        for i in 0..c {
            for k in 0..c {
                g[0][(i, k)] = if i > k { (0..c).map(|j| gt[(i, j)] * v[(k, j)]).fold(T::from_f64(0.0), |a, t| a + t) } else { T::from_f64(0.0) };
            }
        }
        // L^T G~ (L unit lower): (L^T G~)[k, j] = G~[k, j] + sum_{i > k} L[i, k] G~[i, j]
        for k in 0..c {
            for j in 0..c {
                let mut s = gt[(k, j)];
                for i in k + 1..c {
                    s += self.l[(i, k)] * gt[(i, j)];
                }
                if k < j {
                    g[1][(k, j)] = s;
                } else {
                    g[1][(k, j)] = T::from_f64(0.0);
                }
                if k == j {
                    let e = self.sign[k] * self.logs[(k, 0)].as_f64().exp();
                    g[2][(k, 0)] = T::from_f64(s.as_f64() * e - hw as f64);
                }
            }
        }
        Ok(0.0)
    }
    fn inverse(&self, y: MatRef<'_, T>, x: MatMut<'_, T>, ws: &mut Workspace<T>) -> Result<()> {
        const OP: &str = "LuConv1x1::inverse";
        let b = crate::layers::check_batch(OP, y, self.shape.dim(), ws.max_batch())?;
        check_shape(OP, (self.shape.dim(), b), (x.nrows(), x.ncols()))?;
        let bufs = ws.buffers_mut::<LuConvBuffers<T>>()?;
        self.assemble(bufs.lv.as_mut(), bufs.w.as_mut());
        bufs.lu.factor(bufs.w.as_ref())?;
        bufs.lu.inverse_transpose_into(bufs.inv.as_mut())?;
        per_pixel(OP, y, x, bufs.inv.as_ref(), self.pixels(), bufs.par)
    }
    fn static_log_det(&self, _ws: &mut Workspace<T>) -> Result<f64> {
        Ok(self.pixels() as f64 * (0..self.shape.c).map(|i| self.logs[(i, 0)].as_f64()).sum::<f64>())
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        vec![Param { name: "l", value: self.l.as_ref() }, Param { name: "u", value: self.u.as_ref() }, Param { name: "logs", value: self.logs.as_ref() }]
    }
    fn params_mut(&mut self) -> BlocksMut<'_, T> {
        [self.l.as_mut(), self.u.as_mut(), self.logs.as_mut()].into_iter().collect()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "lu-conv1x1", "shape": self.shape.to_array(), "perm": self.perm, "sign": self.sign })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pivoted_lu_reconstructs_its_matrix() {
        let a = Mat::from_fn(5, 5, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0 + if i == j { 0.5 } else { 0.0 });
        let (perm, l, u) = pivoted_lu(&a);
        let lu = &l * &u;
        for i in 0..5 {
            for j in 0..5 {
                assert!((a[(perm[i], j)] - lu[(i, j)]).abs() < 1e-12, "[{i}, {j}]");
            }
        }
        // partial pivoting: |L| <= 1
        assert!(l.col_iter().all(|c| c.iter().all(|v| v.abs() <= 1.0 + 1e-15)));
    }
}
