//! Adam (Kingma & Ba, 2014), as in PyTorch: bias-corrected first and second moments.

use faer::{unzip, zip, Mat, MatMut, MatRef};

use crate::error::{Error, Result};
use crate::real::Real;

/// Adam hyper-parameters. Defaults are the paper's: `lr = 1e-4`, `betas = (0.9, 0.999)`,
/// `eps = 1e-8`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay $\beta_1$.
    pub beta1: f64,
    /// Second-moment decay $\beta_2$.
    pub beta2: f64,
    /// Denominator guard $\epsilon$.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// A snapshot of an [`Adam`]'s state: the step count and both moments of every block.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState<T: Real> {
    /// Steps taken.
    pub t: u64,
    /// First moments, one per block.
    pub m: Vec<Mat<T>>,
    /// Second moments, one per block.
    pub v: Vec<Mat<T>>,
}

/// Adam state for a fixed list of parameter blocks. It sees gradients, never data.
///
/// $m \leftarrow \beta_1 m + (1-\beta_1)g$, $v \leftarrow \beta_2 v + (1-\beta_2)g^2$,
/// $\theta \leftarrow \theta - \eta\,\hat m/(\sqrt{\hat v} + \epsilon)$ with
/// $\hat m = m/(1-\beta_1^t)$, $\hat v = v/(1-\beta_2^t)$.
#[derive(Debug, Clone)]
pub struct Adam<T: Real> {
    cfg: AdamConfig,
    par: faer::Par,
    t: u64,
    m: Vec<Mat<T>>,
    v: Vec<Mat<T>>,
    /// Per block: both moments are known to be exactly zero (no nonzero gradient has
    /// reached the block yet). Such a block with a zero gradient is skipped, see [`step`](Self::step).
    idle: Vec<bool>,
}

impl<T: Real> Adam<T> {
    /// State for parameter blocks of the given `(rows, cols)` shapes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `lr > 0`, `0 <= beta < 1`, `eps > 0`, all finite.
    pub fn new(cfg: AdamConfig, shapes: impl IntoIterator<Item = (usize, usize)>) -> Result<Self> {
        let ok =
            cfg.lr.is_finite() && cfg.lr > 0.0 && (0.0..1.0).contains(&cfg.beta1) && (0.0..1.0).contains(&cfg.beta2) && cfg.eps.is_finite() && cfg.eps > 0.0;
        if !ok {
            return Err(Error::InvalidArgument { op: "Adam::new", reason: format!("bad config {cfg:?}") });
        }
        let (m, v): (Vec<_>, Vec<_>) = shapes.into_iter().map(|(r, c)| (Mat::zeros(r, c), Mat::zeros(r, c))).unzip();
        let idle = vec![true; m.len()];
        Ok(Self { cfg, par: faer::Par::Seq, t: 0, m, v, idle })
    }

    /// Run the element-wise update on `par` threads (column blocks, no allocation).
    /// The update is memory-bound: on the 2-vCPU machine of `docs/benchmarks.md` two
    /// threads were slower than one, hence the sequential default.
    pub fn with_par(mut self, par: faer::Par) -> Self {
        self.par = par;
        self
    }

    /// The configuration.
    pub fn config(&self) -> AdamConfig {
        self.cfg
    }
    /// Set the learning rate (for warm-up schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The step count and the moments $m$, $v$ of every block (for checkpoints).
    pub fn state(&self) -> AdamState<T> {
        AdamState { t: self.t, m: self.m.clone(), v: self.v.clone() }
    }

    /// Continue from a saved [`state`](Self::state).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] / [`Error::ShapeMismatch`] if the blocks differ in
    /// number or shape from this optimiser's, [`Error::NonFinite`] for NaN or infinite
    /// moments, [`Error::InvalidArgument`] for a negative second moment.
    pub fn set_state(&mut self, state: AdamState<T>) -> Result<()> {
        const OP: &str = "Adam::set_state";
        if state.m.len() != self.m.len() || state.v.len() != self.v.len() {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{} / {} moment blocks, {} expected", state.m.len(), state.v.len(), self.m.len()) });
        }
        for ((m, v), own) in state.m.iter().zip(&state.v).zip(&self.m) {
            crate::error::check_shape(OP, (own.nrows(), own.ncols()), (m.nrows(), m.ncols()))?;
            crate::error::check_shape(OP, (own.nrows(), own.ncols()), (v.nrows(), v.ncols()))?;
            if !(crate::util::all_finite(m.as_ref()) && crate::util::all_finite(v.as_ref())) {
                return Err(Error::NonFinite { op: OP });
            }
            let mut negative = false;
            zip!(v.as_ref()).for_each(|unzip!(x)| negative |= *x < T::from_f64(0.0));
            if negative {
                return Err(Error::InvalidArgument { op: OP, reason: "negative second moment".into() });
            }
        }
        self.t = state.t;
        self.idle = state.m.iter().zip(&state.v).map(|(m, v)| crate::util::all_zero(m.as_ref()) && crate::util::all_zero(v.as_ref())).collect();
        self.m = state.m;
        self.v = state.v;
        Ok(())
    }

    /// One update of every block, given `(parameter, gradient)` pairs in the order of
    /// the shapes passed to [`new`](Self::new). Allocates nothing.
    ///
    /// A block whose gradient is exactly zero and whose moments are still exactly zero
    /// (it has never had a nonzero gradient) is skipped: the update would leave $m = v = 0$
    /// and move $\theta$ by $\eta\cdot 0/(0 + \hat\epsilon) = 0$, so skipping it changes no bit.
    /// Such blocks are parameters that something other than the optimiser sets, e.g. the
    /// learned inverse $R$ under [`InverseFit::Projection`](crate::layers::linear::InverseFit::Projection),
    /// whose gradient is zero by construction; skipping them halves the optimiser's memory
    /// traffic for the FC model. The check reads a block only while it is idle, and stops
    /// at the first column that holds a nonzero.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] if the pairs do not match
    /// the blocks; blocks before the offending one have already been updated.
    pub fn step<'a>(&mut self, pairs: impl IntoIterator<Item = (MatMut<'a, T>, MatRef<'a, T>)>) -> Result<()>
    where
        T: 'a,
    {
        const OP: &str = "Adam::step";
        crate::util::clear_upper_simd_state();
        self.t += 1;
        let t = self.t as i32;
        let c = &self.cfg;
        let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
        let (ob1, ob2) = (T::from_f64(1.0 - c.beta1), T::from_f64(1.0 - c.beta2));
        // Fold the bias corrections into the step size and epsilon:
        // lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) = step * m / (sqrt(v) + eps_hat).
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = (1.0 - c.beta2.powi(t)).sqrt();
        let step = T::from_f64(c.lr * bc2 / bc1);
        let eps_hat = T::from_f64(c.eps * bc2);
        let mut n = 0;
        for (i, (p, g)) in pairs.into_iter().enumerate() {
            let (Some(m), Some(v)) = (self.m.get_mut(i), self.v.get_mut(i)) else {
                return Err(Error::InvalidArgument { op: OP, reason: format!("more than {} blocks", self.m.len()) });
            };
            // A square block handed over as a transposed view (e.g. the linear layer's R,
            // stored as R^T) is updated through its storage order: element-wise, the
            // update is the same, and contiguous columns vectorise.
            let (p, g) =
                if p.nrows() == p.ncols() && p.nrows() > 1 && p.col_stride() == 1 && p.row_stride() != 1 { (p.transpose_mut(), g.transpose()) } else { (p, g) };
            crate::error::check_shape(OP, (m.nrows(), m.ncols()), (p.nrows(), p.ncols()))?;
            crate::error::check_shape(OP, (m.nrows(), m.ncols()), (g.nrows(), g.ncols()))?;
            n += 1;
            if let Some(idle) = self.idle.get_mut(i) {
                if *idle && crate::util::all_zero_par(g, self.par) {
                    continue;
                }
                *idle = false;
            }
            let k = AdamKernel { b1, b2, ob1, ob2, step, eps_hat };
            crate::util::par_cols(((p, g), (m.as_mut(), v.as_mut())), self.par, &|((p, g), (m, v))| {
                #[cfg(target_arch = "x86_64")]
                if crate::util::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA, all `update_avx2` requires
                    return unsafe { k.update_avx2(p, g, m, v) };
                }
                k.update(p, g, m, v)
            });
        }
        if n != self.m.len() {
            return Err(Error::InvalidArgument { op: OP, reason: format!("{n} blocks given, {} expected", self.m.len()) });
        }
        Ok(())
    }
}

/// One Adam update with the bias corrections folded into `step` and `eps_hat`.
#[derive(Clone, Copy)]
struct AdamKernel<T> {
    b1: T,
    b2: T,
    ob1: T,
    ob2: T,
    step: T,
    eps_hat: T,
}

impl<T: Real> AdamKernel<T> {
    #[inline(always)]
    fn update(&self, p: MatMut<'_, T>, g: MatRef<'_, T>, m: MatMut<'_, T>, v: MatMut<'_, T>) {
        let AdamKernel { b1, b2, ob1, ob2, step, eps_hat } = *self;
        zip!(p, g, m, v).for_each(|unzip!(p, g, m, v)| {
            *m = b1 * *m + ob1 * *g;
            *v = b2 * *v + ob2 * *g * *g;
            *p -= step * *m / (num_traits::Float::sqrt(*v) + eps_hat);
        })
    }

    /// [`update`](Self::update) compiled for AVX2: the square roots and divisions run eight
    /// `f32` (four `f64`) wide instead of four (two). Square root and division are correctly
    /// rounded at every width and Rust never fuses a multiply and an add by itself, so the
    /// results are the same bit for bit (the tests compare every step with the update
    /// written out).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn update_avx2(&self, p: MatMut<'_, T>, g: MatRef<'_, T>, m: MatMut<'_, T>, v: MatMut<'_, T>) {
        self.update(p, g, m, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update written out once more, in the same operation order as [`Adam::step`].
    fn reference(cfg: AdamConfig, t: i32, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = (1.0 - cfg.beta2.powi(t)).sqrt();
        let (step, eps_hat) = (cfg.lr * bc2 / bc1, cfg.eps * bc2);
        for k in 0..p.len() {
            m[k] = cfg.beta1 * m[k] + (1.0 - cfg.beta1) * g[k];
            v[k] = cfg.beta2 * v[k] + (1.0 - cfg.beta2) * g[k] * g[k];
            p[k] -= step * m[k] / (v[k].sqrt() + eps_hat);
        }
    }

    fn col(x: &[f64]) -> Mat<f64> {
        Mat::from_fn(x.len(), 1, |i, _| x[i])
    }

    /// A block whose gradient is zero while its moments are zero is skipped, bit for bit
    /// as if updated; once it has had a nonzero gradient, a zero gradient still moves it
    /// (momentum), so the skip must not fire then. Exact equality with the written-out
    /// update is the right tolerance: skipping claims to change no bit.
    #[test]
    fn idle_blocks_are_skipped_without_changing_any_bit() -> Result<()> {
        let cfg = AdamConfig { lr: 1e-2, ..Default::default() };
        let mut adam = Adam::<f64>::new(cfg, [(3, 1), (3, 1)])?;
        let mut p = [col(&[0.5, -1.0, 2.0]), col(&[1.0, 2.0, 3.0])];
        let (mut rp, mut rm, mut rv) = ([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]], [[0.0; 3]; 2], [[0.0; 3]; 2]);
        // block 0 always has a gradient; block 1: zero, zero, nonzero, zero, -0.0
        let g1: [[f64; 3]; 5] = [[0.0; 3], [0.0; 3], [0.3, -0.2, 0.1], [0.0; 3], [-0.0; 3]];
        for (t, g1) in g1.iter().enumerate() {
            let g = [col(&[0.1, 0.2, -0.3]), col(g1)];
            let [p0, p1] = &mut p;
            adam.step([(p0.as_mut(), g[0].as_ref()), (p1.as_mut(), g[1].as_ref())])?;
            for k in 0..2 {
                let gk: Vec<f64> = (0..3).map(|i| g[k][(i, 0)]).collect();
                reference(cfg, t as i32 + 1, &mut rp[k], &gk, &mut rm[k], &mut rv[k]);
                for i in 0..3 {
                    assert_eq!(p[k][(i, 0)].to_bits(), rp[k][i].to_bits(), "step {t}, block {k}, entry {i}");
                }
            }
            let s = adam.state();
            assert_eq!(s.m[1][(0, 0)] == 0.0, t < 2, "block 1's moments are zero exactly until its first gradient");
        }
        // after its first nonzero gradient, the zero gradients of steps 4 and 5 moved block 1
        assert_ne!(rp[1][0], 1.0);
        Ok(())
    }

    /// A restored state with nonzero moments is not idle: a zero gradient moves it.
    #[test]
    fn a_restored_state_with_momentum_is_updated() -> Result<()> {
        let cfg = AdamConfig::default();
        let mut adam = Adam::<f64>::new(cfg, [(2, 1)])?;
        adam.set_state(AdamState { t: 3, m: vec![col(&[0.1, 0.0])], v: vec![col(&[0.01, 0.0])] })?;
        let mut p = col(&[1.0, 1.0]);
        let g = col(&[0.0, 0.0]);
        adam.step([(p.as_mut(), g.as_ref())])?;
        assert!(p[(0, 0)] < 1.0, "momentum moves the first entry");
        assert_eq!(p[(1, 0)], 1.0);
        Ok(())
    }
}
