//! A linear flow layer on the device: the self-normalizing step (Eqs. 17, 20; the CPU's
//! [`SelfNormLinear::backward`](crate::layers::linear::SelfNormLinear::backward) product
//! for product) and, for comparison, the exact-gradient step with $W^{-T}$ from cuSOLVER's
//! LU (`getrf` + `getrs`).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::{launched, Gpu};
use crate::error::{Error, Result};
use crate::optim::AdamConfig;

fn gpu_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Gpu { op, reason: e.to_string() }
}

/// `D x B` work buffers of one layer's backward pass.
pub(crate) struct Scratch {
    pub e: CudaSlice<f32>,
    pub t: CudaSlice<f32>,
    pub sq: CudaSlice<f32>,
}

impl Scratch {
    pub(crate) fn new(gpu: &Gpu, d: usize, max_batch: usize) -> Result<Self> {
        Ok(Self { e: gpu.zeros(d * max_batch)?, t: gpu.zeros(d * max_batch)?, sq: gpu.zeros(max_batch)? })
    }
}

/// A self-normalizing linear layer on the device: $W$, $R^T$ (stored transposed, as on
/// the CPU), $b$, their gradients and Adam moments, all column-major.
pub(crate) struct Linear {
    pub d: usize,
    pub w: CudaSlice<f32>,
    pub rt: CudaSlice<f32>,
    pub b: CudaSlice<f32>,
    pub gw: CudaSlice<f32>,
    pub grt: CudaSlice<f32>,
    pub gb: CudaSlice<f32>,
    m: [CudaSlice<f32>; 3],
    v: [CudaSlice<f32>; 3],
    t: u64,
}

impl Linear {
    /// From column-major host parameters `w`, `rt` (`D x D`) and `b` (`D`).
    pub(crate) fn new(gpu: &Gpu, d: usize, w: &[f32], rt: &[f32], b: &[f32]) -> Result<Self> {
        let z = |n| gpu.zeros(n);
        Ok(Self {
            d,
            w: gpu.upload(w)?,
            rt: gpu.upload(rt)?,
            b: gpu.upload(b)?,
            gw: z(d * d)?,
            grt: z(d * d)?,
            gb: z(d)?,
            m: [z(d * d)?, z(d * d)?, z(d)?],
            v: [z(d * d)?, z(d * d)?, z(d)?],
            t: 0,
        })
    }

    /// `u = W x`, `z = u + b` for `b` columns.
    pub(crate) fn forward(&self, gpu: &Gpu, x: &CudaSlice<f32>, u: &mut CudaSlice<f32>, z: &mut CudaSlice<f32>, b: usize) -> Result<()> {
        let d = self.d;
        gpu.gemm((false, false), (d, b, d), 1.0, &self.w, d, x, d, 0.0, u, d)?;
        gpu.copy(u, z)?;
        let (di, n) = (d as i32, (d * b) as i32);
        let mut lb = gpu.stream.launch_builder(&gpu.k.add_bias);
        lb.arg(z).arg(&self.b).arg(&di).arg(&n);
        // SAFETY: the kernel bounds-checks against n = d * b, the size of z's batch
        launched(unsafe { lb.launch(Gpu::grid(d * b)?) })
    }

    /// The self-normalizing backward (Eqs. 17, 20), as on the CPU: `dx = W^T dz`,
    /// `e = R u - x`, `t = -dz/2 + 2 lambda R^T e`, `gW = t x^T / B - R^T/2`,
    /// `s = 2 lambda e + dx/2`, `gR^T = u s^T / B + W/2`, `gb = -sum(dz)/B`. Returns the
    /// batch-mean squared residual.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &mut self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        u: &CudaSlice<f32>,
        dz: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        s: &mut Scratch,
        b: usize,
        lambda: f32,
    ) -> Result<f32> {
        const OP: &str = "cuda::Linear::backward";
        let d = self.d;
        let (n, dd) = (d * b, d * d);
        let (ni, ddi, di, bi) = (n as i32, dd as i32, d as i32, b as i32);
        let inv_b = 1.0 / b as f32;
        let Scratch { e, t, sq } = s;
        gpu.gemm((true, false), (d, b, d), 1.0, &self.w, d, dz, d, 0.0, dx, d)?;
        gpu.copy(x, e)?;
        gpu.gemm((true, false), (d, b, d), 1.0, &self.rt, d, u, d, -1.0, e, d)?;
        gpu.stream.memset_zeros(sq).map_err(|x| gpu_err(OP, x))?;
        // SAFETY (all launches): each kernel bounds-checks its index against the count
        // passed with it, and every buffer holds at least that many elements.
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.col_sum_sq);
            lb.arg(&*e).arg(&mut *sq).arg(&di).arg(&bi);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        let recon = gpu.download(sq)?[..b].iter().sum::<f32>() * inv_b;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_copy);
            lb.arg(&mut *t).arg(dz).arg(&-0.5f32).arg(&ni);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        gpu.gemm((false, false), (d, b, d), 2.0 * lambda, &self.rt, d, e, d, 1.0, t, d)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_copy);
            lb.arg(&mut self.gw).arg(&self.rt).arg(&-0.5f32).arg(&ddi);
            launched(unsafe { lb.launch(Gpu::grid(dd)?) })?;
        }
        gpu.gemm((false, true), (d, d, b), inv_b, t, d, x, d, 1.0, &mut self.gw, d)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_add);
            let two_lambda = 2.0 * lambda;
            lb.arg(&mut *e).arg(&two_lambda).arg(&*dx).arg(&0.5f32).arg(&ni);
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_copy);
            lb.arg(&mut self.grt).arg(&self.w).arg(&0.5f32).arg(&ddi);
            launched(unsafe { lb.launch(Gpu::grid(dd)?) })?;
        }
        gpu.gemm((false, true), (d, d, b), inv_b, u, d, e, d, 1.0, &mut self.grt, d)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.row_sums);
            let scale = -inv_b;
            lb.arg(dz).arg(&mut self.gb).arg(&di).arg(&bi).arg(&scale);
            launched(unsafe { lb.launch(Gpu::grid(d)?) })?;
        }
        Ok(recon)
    }

    /// One Adam update of `[W, R^T, b]` (`[W, b]` when `with_r` is false: the exact
    /// baseline has no $R$) with learning rate `lr`.
    pub(crate) fn adam_step(&mut self, gpu: &Gpu, cfg: AdamConfig, lr: f64, with_r: bool) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = (1.0 - cfg.beta2.powi(t)).sqrt();
        let (step, eps_hat) = ((lr * bc2 / bc1) as f32, (cfg.eps * bc2) as f32);
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let d = self.d;
        let [m0, m1, m2] = &mut self.m;
        let [v0, v1, v2] = &mut self.v;
        let blocks = [(&mut self.w, &self.gw, m0, v0, d * d), (&mut self.rt, &self.grt, m1, v1, d * d), (&mut self.b, &self.gb, m2, v2, d)];
        for (k, (p, g, m, v, n)) in blocks.into_iter().enumerate() {
            if k == 1 && !with_r {
                continue;
            }
            let ni = n as i32;
            let mut lb = gpu.stream.launch_builder(&gpu.k.adam);
            lb.arg(p).arg(g).arg(m).arg(v).arg(&ni).arg(&step).arg(&b1).arg(&b2).arg(&eps_hat);
            // SAFETY: n is the length of all four buffers
            launched(unsafe { lb.launch(Gpu::grid(n)?) })?;
        }
        Ok(())
    }
}

/// The exact-gradient baseline layer on the device: $z = Wx + b$, gradient
/// $-\frac1B\delta_z x^T - W^{-T}$ with $W^{-T}$ from cuSOLVER (`getrf`, then `getrs` with
/// the transpose against the identity), the paper's exact step.
pub(crate) struct ExactLinear {
    pub inner: Linear,
    lu: CudaSlice<f32>,
    inv_t: CudaSlice<f32>,
    eye: CudaSlice<f32>,
    work: CudaSlice<f32>,
    ipiv: CudaSlice<i32>,
    info: CudaSlice<i32>,
    solver: cudarc::cusolver::DnHandle,
}

impl ExactLinear {
    pub(crate) fn new(gpu: &Gpu, d: usize, w: &[f32], b: &[f32]) -> Result<Self> {
        const OP: &str = "cuda::ExactLinear::new";
        if !unsafe { cudarc::cusolver::sys::is_culib_present() } {
            return Err(gpu_err(OP, "no GPU solver: cuSOLVER cannot be loaded on this machine"));
        }
        let inner = Linear::new(gpu, d, w, w, b)?;
        let solver = cudarc::cusolver::DnHandle::new(gpu.stream.clone()).map_err(|e| gpu_err(OP, e))?;
        let mut lwork = 0i32;
        let mut lu = gpu.zeros(d * d)?;
        let di = i32::try_from(d).map_err(|e| gpu_err(OP, e))?;
        {
            let (ptr, _g) = lu.device_ptr_mut(&gpu.stream);
            // SAFETY: a d x d column-major buffer with leading dimension d
            let st = unsafe { cudarc::cusolver::sys::cusolverDnSgetrf_bufferSize(solver.cu(), di, di, ptr as *mut f32, di, &mut lwork) };
            if st != cudarc::cusolver::sys::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
                return Err(gpu_err(OP, format!("getrf_bufferSize: {st:?}")));
            }
        }
        let eye_host: Vec<f32> = (0..d * d).map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 }).collect();
        Ok(Self {
            inner,
            lu,
            inv_t: gpu.zeros(d * d)?,
            eye: gpu.upload(&eye_host)?,
            work: gpu.zeros(lwork.max(1) as usize)?,
            ipiv: gpu.stream.alloc_zeros::<i32>(d).map_err(|e| gpu_err(OP, e))?,
            info: gpu.stream.alloc_zeros::<i32>(1).map_err(|e| gpu_err(OP, e))?,
            solver,
        })
    }

    /// The exact backward: `dx = W^T dz`, `gW = -dz x^T / B - W^{-T}`, `gb = -sum(dz)/B`.
    pub(crate) fn backward(&mut self, gpu: &Gpu, x: &CudaSlice<f32>, dz: &CudaSlice<f32>, dx: &mut CudaSlice<f32>, b: usize) -> Result<()> {
        const OP: &str = "cuda::ExactLinear::backward";
        let l = &mut self.inner;
        let d = l.d;
        let di = d as i32;
        gpu.gemm((true, false), (d, b, d), 1.0, &l.w, d, dz, d, 0.0, dx, d)?;
        gpu.copy(&l.w, &mut self.lu)?;
        gpu.copy(&self.eye, &mut self.inv_t)?;
        {
            let s = &gpu.stream;
            let (a, _ga) = self.lu.device_ptr_mut(s);
            let (w, _gw) = self.work.device_ptr_mut(s);
            let (p, _gp) = self.ipiv.device_ptr_mut(s);
            let (info, _gi) = self.info.device_ptr_mut(s);
            // SAFETY: lu is d x d (lda d), work has the size getrf_bufferSize asked for,
            // ipiv holds d pivots, info one int
            let st =
                unsafe { cudarc::cusolver::sys::cusolverDnSgetrf(self.solver.cu(), di, di, a as *mut f32, di, w as *mut f32, p as *mut i32, info as *mut i32) };
            if st != cudarc::cusolver::sys::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
                return Err(gpu_err(OP, format!("getrf: {st:?}")));
            }
            let (inv, _gv) = self.inv_t.device_ptr_mut(s);
            // W^T X = I  =>  X = W^{-T}
            let st = unsafe {
                cudarc::cusolver::sys::cusolverDnSgetrs(
                    self.solver.cu(),
                    cudarc::cusolver::sys::cublasOperation_t::CUBLAS_OP_T,
                    di,
                    di,
                    a as *const f32,
                    di,
                    p as *const i32,
                    inv as *mut f32,
                    di,
                    info as *mut i32,
                )
            };
            if st != cudarc::cusolver::sys::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
                return Err(gpu_err(OP, format!("getrs: {st:?}")));
            }
        }
        let (dd, bi) = ((d * d) as i32, b as i32);
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.scale_copy);
            lb.arg(&mut l.gw).arg(&self.inv_t).arg(&-1.0f32).arg(&dd);
            // SAFETY: d * d elements in both
            launched(unsafe { lb.launch(Gpu::grid(d * d)?) })?;
        }
        gpu.gemm((false, true), (d, d, b), -1.0 / b as f32, dz, d, x, d, 1.0, &mut l.gw, d)?;
        {
            let mut lb = gpu.stream.launch_builder(&gpu.k.row_sums);
            let scale = -1.0 / b as f32;
            lb.arg(dz).arg(&mut l.gb).arg(&di).arg(&bi).arg(&scale);
            // SAFETY: d rows of a d x b matrix
            launched(unsafe { lb.launch(Gpu::grid(d)?) })?;
        }
        // a singular W shows up in info (read back lazily by callers that care)
        let _ = self.info.device_ptr(&gpu.stream);
        Ok(())
    }
}
