//! GPU kernels through [cudarc](https://docs.rs/cudarc) (feature `cuda`): the
//! self-normalizing FC model's training step on the device, with cuBLAS SGEMM for the
//! products and NVRTC-compiled kernels for the element-wise parts (preprocessing, smooth
//! leaky ReLU, residual, bias, Adam), and the training data resident on the device.
//!
//! The CUDA libraries are loaded at run time (cudarc's `dynamic-loading`), so the crate
//! builds without a CUDA toolkit, and [`Gpu::new`] returns [`Error::Gpu`] — never a
//! panic — on a machine without a driver, cuBLAS or NVRTC. The exact log-det (for
//! reporting likelihoods) runs on the CPU: the weights are copied back and factored by
//! [`crate::exact`] once per evaluation (a documented fallback; cudarc's cuSOLVER
//! bindings are not used).
//!
//! The backend is chosen at model construction: [`fc::GpuFc::from_flow`] takes the same
//! [`Flow`](crate::flow::Flow) as the CPU trainer and [`fc::GpuFc::write_to`] writes the
//! trained parameters back into it, so evaluation, checkpoints and sampling are shared.
//!
//! # Example
//! ```no_run
//! use snf::cuda::{fc::GpuFc, Gpu};
//! use snf::flow::models::{fc_two_layer_with, Gradient};
//! use snf::layers::linear::InverseFit;
//! let gpu = Gpu::new(0)?; // Err(Error::Gpu) without a GPU
//! // the GPU backend runs the paper's penalised layers
//! let mut flow = fc_two_layer_with::<f32, _>(snf::data::mnist::SHAPE, Gradient::SelfNormalizing, InverseFit::Penalty, &mut snf::init::rng(0))?;
//! let mut model = GpuFc::from_flow(&gpu, &flow, 100)?;
//! # Ok::<(), snf::Error>(())
//! ```

pub mod bench;
pub mod fc;
mod linear;

use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};

/// The NVRTC source of the element-wise kernels.
const KERNELS: &str = include_str!("kernels.cu");

fn gpu_err(op: &'static str) -> impl Fn(String) -> Error {
    move |reason| Error::Gpu { op, reason }
}

/// Whether the CUDA driver, cuBLAS and NVRTC libraries can be loaded on this machine.
///
/// # Errors
/// [`Error::Gpu`] naming the first missing library.
pub fn libraries_present() -> Result<()> {
    // cudarc's dynamic loading panics on first use of a missing library: check first
    let present = [
        ("the CUDA driver (libcuda)", unsafe { cudarc::driver::sys::is_culib_present() }),
        ("cuBLAS", unsafe { cudarc::cublas::sys::is_culib_present() }),
        ("NVRTC", unsafe { cudarc::nvrtc::sys::is_culib_present() }),
    ];
    match present.iter().find(|(_, ok)| !ok) {
        Some((name, _)) => Err(Error::Gpu { op: "cuda", reason: format!("no GPU: {name} cannot be loaded on this machine") }),
        None => Ok(()),
    }
}

/// The loaded kernels.
struct Kernels {
    gather_dequant: CudaFunction,
    preprocess: CudaFunction,
    slr_forward: CudaFunction,
    slr_backward: CudaFunction,
    add_bias: CudaFunction,
    scale_copy: CudaFunction,
    scale_add: CudaFunction,
    row_sums: CudaFunction,
    col_sum_sq: CudaFunction,
    adam: CudaFunction,
}

impl Kernels {
    fn load(m: &Arc<CudaModule>) -> Result<Self> {
        let f = |name: &str| m.load_function(name).map_err(|e| Error::Gpu { op: "Gpu::new", reason: format!("kernel {name}: {e}") });
        Ok(Self {
            gather_dequant: f("gather_dequant")?,
            preprocess: f("preprocess")?,
            slr_forward: f("slr_forward")?,
            slr_backward: f("slr_backward")?,
            add_bias: f("add_bias")?,
            scale_copy: f("scale_copy")?,
            scale_add: f("scale_add")?,
            row_sums: f("row_sums")?,
            col_sum_sq: f("col_sum_sq")?,
            adam: f("adam")?,
        })
    }
}

/// One GPU: a context, a stream, a cuBLAS handle and the compiled kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("ordinal", &self.ctx.ordinal()).finish()
    }
}

impl Gpu {
    /// Open device `ordinal`, create a cuBLAS handle and compile the kernels.
    ///
    /// # Errors
    /// [`Error::Gpu`] when no GPU (or no driver, cuBLAS or NVRTC) is present, the ordinal
    /// does not exist, or compilation fails.
    pub fn new(ordinal: usize) -> Result<Self> {
        const OP: &str = "Gpu::new";
        libraries_present()?;
        let e = gpu_err(OP);
        let ctx = CudaContext::new(ordinal).map_err(|x| e(format!("device {ordinal}: {x}")))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|x| e(format!("cuBLAS: {x}")))?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(|x| e(format!("NVRTC: {x}")))?;
        let module = ctx.load_module(ptx).map_err(|x| e(format!("loading kernels: {x}")))?;
        let k = Kernels::load(&module)?;
        Ok(Self { ctx, stream, blas, k })
    }

    /// Wait for all queued work.
    ///
    /// # Errors
    /// [`Error::Gpu`] if a kernel failed.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|x| Error::Gpu { op: "Gpu::synchronize", reason: x.to_string() })
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros::<f32>(n.max(1)).map_err(|x| Error::Gpu { op: "Gpu::alloc", reason: x.to_string() })
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(|x| Error::Gpu { op: "Gpu::upload", reason: x.to_string() })
    }

    fn download(&self, src: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(src).map_err(|x| Error::Gpu { op: "Gpu::download", reason: x.to_string() })
    }

    fn copy(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        self.stream.memcpy_dtod(src, dst).map_err(|x| Error::Gpu { op: "Gpu::copy", reason: x.to_string() })
    }

    /// Column-major `C = alpha op(A) op(B) + beta C` with `op(A)` `m x k`, `op(B)` `k x n`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: &CudaSlice<f32>,
        lda: usize,
        b: &CudaSlice<f32>,
        ldb: usize,
        beta: f32,
        c: &mut CudaSlice<f32>,
        ldc: usize,
    ) -> Result<()> {
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let i = |v: usize| i32::try_from(v).map_err(|_| Error::Gpu { op: "Gpu::gemm", reason: format!("dimension {v} exceeds cuBLAS' range") });
        let cfg = GemmConfig { transa: op(ta), transb: op(tb), m: i(m)?, n: i(n)?, k: i(k)?, alpha, lda: i(lda)?, ldb: i(ldb)?, beta, ldc: i(ldc)? };
        // SAFETY: every operand was allocated with at least ld * (columns) entries by the
        // callers in this module, which pass the shapes they allocated.
        unsafe { self.blas.gemm(cfg, a, b, c) }.map_err(|x| Error::Gpu { op: "Gpu::gemm", reason: x.to_string() })
    }

    /// `dst = -src` over `n` entries.
    fn neg(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        let ni = i32::try_from(n).map_err(|_| Error::Gpu { op: "Gpu::neg", reason: "too many elements".into() })?;
        let mut lb = self.stream.launch_builder(&self.k.scale_copy);
        lb.arg(dst).arg(src).arg(&-1.0f32).arg(&ni);
        // SAFETY: the kernel bounds-checks against n, the length both buffers have
        launched(unsafe { lb.launch(Gpu::grid(n)?) })
    }

    fn grid(n: usize) -> Result<LaunchConfig> {
        let n = u32::try_from(n).map_err(|_| Error::Gpu { op: "Gpu::launch", reason: format!("{n} elements exceed one launch") })?;
        Ok(LaunchConfig { grid_dim: (n.div_ceil(256).max(1), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
    }
}

pub(crate) fn launched(r: std::result::Result<Option<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>, cudarc::driver::DriverError>) -> Result<()> {
    r.map(|_| ()).map_err(|x| Error::Gpu { op: "Gpu::launch", reason: x.to_string() })
}
