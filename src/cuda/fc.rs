//! The FC 2-layer self-normalizing model (preprocessing, linear, smooth leaky ReLU,
//! linear) trained on the GPU, with the training images resident on the device.

use cudarc::driver::{CudaSlice, PushKernelArg};
use faer::{Mat, MatRef};

use super::linear::{Linear, Scratch};
use super::{launched, Gpu};
use crate::data::mnist::Split;
use crate::error::{check_shape, Error, Result};
use crate::flow::{Flow, FlowGrads};
use crate::layers::linear::{InverseFit, LinearGrads, SelfNormLinear};
use crate::layers::{Preprocess, SmoothLeakyRelu};
use crate::optim::AdamConfig;
use crate::transform::Grads;

/// Per-batch buffers (`D x B`).
struct Buffers {
    x0: CudaSlice<f32>,
    h1: CudaSlice<f32>,
    u1: CudaSlice<f32>,
    z1: CudaSlice<f32>,
    a: CudaSlice<f32>,
    u2: CudaSlice<f32>,
    z2: CudaSlice<f32>,
    dz: CudaSlice<f32>,
    da: CudaSlice<f32>,
    dz1: CudaSlice<f32>,
    dx1: CudaSlice<f32>,
    logdet: CudaSlice<f32>,
    idx: CudaSlice<i32>,
    scratch: Scratch,
}

/// The FC 2-layer self-normalizing flow on a GPU.
pub struct GpuFc<'g> {
    gpu: &'g Gpu,
    d: usize,
    max_batch: usize,
    alpha_pre: f32,
    alpha_slr: f32,
    layers: [Linear; 2],
    buf: Buffers,
    steps: u64,
    data: Option<(CudaSlice<u8>, usize)>,
}

pub(crate) fn col_major(m: MatRef<'_, f32>) -> Vec<f32> {
    (0..m.ncols()).flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)])).collect()
}

impl<'g> GpuFc<'g> {
    /// Copy the parameters of `flow` — which must have the shape of
    /// [`fc_two_layer_with`](crate::flow::models::fc_two_layer_with)`(.., InverseFit::Penalty, ..)`: preprocessing,
    /// self-normalizing linear with bias, smooth leaky ReLU, self-normalizing linear with
    /// bias — to the GPU, with buffers for batches of up to `max_batch`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another model shape or a zero batch; [`Error::Gpu`].
    pub fn from_flow(gpu: &'g Gpu, flow: &Flow<f32>, max_batch: usize) -> Result<Self> {
        const OP: &str = "GpuFc::from_flow";
        let bad = || Error::InvalidArgument {
            op: OP,
            reason: "the GPU backend runs the FC 2-layer self-normalizing model (preprocess, linear, smooth leaky ReLU, linear, with biases)".into(),
        };
        if flow.layers().len() != 4 {
            return Err(bad());
        }
        let (pre, l1, slr, l2) =
            match (flow.layer::<Preprocess>(0), flow.layer::<SelfNormLinear<f32>>(1), flow.layer::<SmoothLeakyRelu>(2), flow.layer::<SelfNormLinear<f32>>(3)) {
                (Some(p), Some(a), Some(s), Some(b)) => (p, a, s, b),
                _ => return Err(bad()),
            };
        if max_batch == 0 {
            return Err(bad());
        }
        if l1.inverse_fit() != InverseFit::Penalty || l2.inverse_fit() != InverseFit::Penalty {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "the GPU backend runs the paper's penalised layers; build the model with fc_two_layer_with(.., InverseFit::Penalty, ..)".into(),
            });
        }
        let d = flow.dim();
        let layer = |l: &SelfNormLinear<f32>| -> Result<Linear> {
            let b = l.b.as_ref().ok_or_else(bad)?;
            Linear::new(gpu, d, &col_major(l.w.as_ref()), &col_major(l.rt.as_ref()), &col_major(b.as_ref()))
        };
        let n = d * max_batch;
        let z = |n| gpu.zeros(n);
        let buf = Buffers {
            x0: z(n)?,
            h1: z(n)?,
            u1: z(n)?,
            z1: z(n)?,
            a: z(n)?,
            u2: z(n)?,
            z2: z(n)?,
            dz: z(n)?,
            da: z(n)?,
            dz1: z(n)?,
            dx1: z(n)?,
            logdet: z(max_batch)?,
            idx: gpu.stream.alloc_zeros::<i32>(max_batch).map_err(|x| Error::Gpu { op: OP, reason: x.to_string() })?,
            scratch: Scratch::new(gpu, d, max_batch)?,
        };
        Ok(Self {
            gpu,
            d,
            max_batch,
            alpha_pre: pre.alpha() as f32,
            alpha_slr: slr.alpha() as f32,
            layers: [layer(l1)?, layer(l2)?],
            buf,
            steps: 0,
            data: None,
        })
    }

    /// Copy the trained parameters back into `flow` (a flow of the same shape), e.g. for
    /// exact evaluation, checkpoints or sampling on the CPU.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] / [`Error::ShapeMismatch`] for another model; [`Error::Gpu`].
    pub fn write_to(&self, flow: &mut Flow<f32>) -> Result<()> {
        const OP: &str = "GpuFc::write_to";
        let (d, gpu) = (self.d, self.gpu);
        let mut k = 0;
        for idx in 0..flow.layers().len() {
            if let Some(l) = flow.layer_mut::<SelfNormLinear<f32>>(idx) {
                let src = self.layers.get(k).ok_or(Error::InvalidArgument { op: OP, reason: "another model".into() })?;
                check_shape(OP, (d, d), (l.w.nrows(), l.w.ncols()))?;
                let (w, rt, b) = (gpu.download(&src.w)?, gpu.download(&src.rt)?, gpu.download(&src.b)?);
                *l = SelfNormLinear::from_parts(
                    Mat::from_fn(d, d, |i, j| w[i + j * d]),
                    Mat::from_fn(d, d, |i, j| rt[j + i * d]),
                    Some(Mat::from_fn(d, 1, |i, _| b[i])),
                )?;
                k += 1;
            }
        }
        if k != 2 {
            return Err(Error::InvalidArgument { op: OP, reason: "another model".into() });
        }
        Ok(())
    }

    /// Forward and backward on the batch already in `x0` (`b` columns); returns the
    /// summed reconstruction error (batch means, both layers).
    fn step_gradients(&mut self, b: usize, lambda: f32) -> Result<f32> {
        const OP: &str = "GpuFc::step";
        let (d, n) = (self.d, self.d * b);
        let (di, bi, ni) = (d as i32, b as i32, n as i32);
        let gpu = self.gpu;
        let Buffers { x0, h1, u1, z1, a, u2, z2, dz, da, dz1, dx1, logdet, scratch, .. } = &mut self.buf;
        gpu.stream.memset_zeros(logdet).map_err(|x| Error::Gpu { op: OP, reason: x.to_string() })?;
        let alpha = self.alpha_pre;
        let base = (-(256f64.ln()) + (1.0 - 2.0 * alpha as f64).ln()) as f32;
        // SAFETY (all launches): each kernel bounds-checks against the count passed with
        // it; the buffers hold max_batch >= b columns.
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.preprocess);
            lb.arg(&*x0).arg(&mut *h1).arg(&mut *logdet).arg(&di).arg(&bi).arg(&alpha).arg(&base);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        self.layers[0].forward(gpu, h1, u1, z1, b)?;
        let s = self.alpha_slr;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.slr_forward);
            lb.arg(&*z1).arg(&mut *a).arg(&mut *logdet).arg(&di).arg(&bi).arg(&s);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        self.layers[1].forward(gpu, a, u2, z2, b)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_copy);
            lb.arg(&mut *dz).arg(&*z2).arg(&-1.0f32).arg(&ni);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        let r2 = self.layers[1].backward(gpu, a, u2, dz, da, scratch, b, lambda)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.slr_backward);
            lb.arg(&*z1).arg(&*da).arg(&mut *dz1).arg(&ni).arg(&s);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        let r1 = self.layers[0].backward(gpu, h1, u1, dz1, dx1, scratch, b, lambda)?;
        Ok(r1 + r2)
    }

    /// The loss gradients of one batch `x` (dequantised pixels, `D x B`, `B <=
    /// max_batch`) in the CPU's layout, comparable with [`Flow::gradients`] on the same
    /// flow and batch, and the summed reconstruction error.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`]; [`Error::Gpu`].
    pub fn gradients(&mut self, x: MatRef<'_, f32>, lambda: f32) -> Result<(FlowGrads<f32>, f64)> {
        const OP: &str = "GpuFc::gradients";
        let b = x.ncols();
        if x.nrows() != self.d || b == 0 || b > self.max_batch {
            return Err(Error::ShapeMismatch { op: OP, expected: (self.d, self.max_batch), got: (x.nrows(), b) });
        }
        let host = col_major(x);
        let gpu = self.gpu;
        {
            let mut dst = self.buf.x0.slice_mut(0..host.len());
            gpu.stream.memcpy_htod(&host, &mut dst).map_err(|e| Error::Gpu { op: OP, reason: e.to_string() })?;
        }
        let recon = self.step_gradients(b, lambda)?;
        let d = self.d;
        let mut layers: Vec<Grads<f32>> = (0..4).map(|_| Grads::empty()).collect();
        for (k, slot) in [1usize, 3].into_iter().enumerate() {
            let p = &self.layers[k];
            let (gw, grt, gb) = (gpu.download(&p.gw)?, gpu.download(&p.grt)?, gpu.download(&p.gb)?);
            layers[slot] = Grads::new(LinearGrads {
                w: Mat::from_fn(d, d, |i, j| gw[i + j * d]),
                rt: Mat::from_fn(d, d, |i, j| grt[i + j * d]),
                b: Some(Mat::from_fn(d, 1, |i, _| gb[i])),
            });
        }
        Ok((FlowGrads { layers }, recon as f64))
    }

    /// Upload a split's pixels once (`N x D` bytes) for [`train_epoch`](Self::train_epoch).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for images of another size; [`Error::Gpu`].
    pub fn upload_data(&mut self, split: &Split) -> Result<()> {
        check_shape("GpuFc::upload_data", (split.len() * self.d, 1), (split.images().len(), 1))?;
        self.data = Some((self.gpu.upload(split.images())?, split.len()));
        Ok(())
    }

    /// One epoch over the uploaded data in the order `order` (full batches of `batch`):
    /// Adam (`cfg`, learning rate `lr(step)` of the global step count) and penalty
    /// `lambda`. Dequantisation noise comes from a counter-based generator keyed by
    /// `seed` and the step (a different stream than the CPU's). Returns the mean summed
    /// reconstruction error.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without uploaded data, a bad batch size or indices out of
    /// range; [`Error::Gpu`].
    pub fn train_epoch(&mut self, order: &[usize], batch: usize, cfg: AdamConfig, lr: impl Fn(u64) -> f64, lambda: f32, seed: u64) -> Result<f64> {
        const OP: &str = "GpuFc::train_epoch";
        let n_data = self.data.as_ref().map(|d| d.1).ok_or(Error::InvalidArgument { op: OP, reason: "call upload_data first".into() })?;
        if batch == 0 || batch > self.max_batch || order.iter().any(|&i| i >= n_data) {
            return Err(Error::InvalidArgument { op: OP, reason: "batch size or indices out of range".into() });
        }
        let (d, gpu) = (self.d, self.gpu);
        let mut recon = 0.0;
        let steps = order.len() / batch;
        let mut idx = vec![0i32; batch];
        for s in 0..steps {
            for (dst, &i) in idx.iter_mut().zip(&order[s * batch..(s + 1) * batch]) {
                *dst = i32::try_from(i).map_err(|_| Error::InvalidArgument { op: OP, reason: "index too large".into() })?;
            }
            gpu.stream.memcpy_htod(&idx, &mut self.buf.idx).map_err(|e| Error::Gpu { op: OP, reason: e.to_string() })?;
            let key = seed ^ self.steps.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Some((data, _)) = self.data.as_ref() {
                let (di, bi) = (d as i32, batch as i32);
                let mut lb = gpu.stream.launch_builder(&gpu.k.gather_dequant);
                lb.arg(data).arg(&self.buf.idx).arg(&mut self.buf.x0).arg(&di).arg(&bi).arg(&key);
                // SAFETY: indices were checked against the uploaded image count
                launched(unsafe { lb.launch(Gpu::grid(d * batch)?) })?;
            }
            recon += self.step_gradients(batch, lambda)? as f64;
            self.steps += 1;
            let rate = lr(self.steps);
            for l in &mut self.layers {
                l.adam_step(gpu, cfg, rate, true)?;
            }
        }
        gpu.synchronize()?;
        Ok(recon / steps.max(1) as f64)
    }
}
