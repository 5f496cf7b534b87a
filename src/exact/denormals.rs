//! Run the LU kernels with subnormal numbers flushed to zero.
//!
//! The inverse of a convolution matrix with few channels decays away from its band: for
//! a one-channel 3x3 kernel on 28x28 images an `f32` inverse holds ~80 000 subnormal
//! entries (of 614 656), and on x86 every arithmetic operation that reads or makes one
//! takes a micro-coded slow path. Measured on this project's Intel machine (one thread):
//! LU and inverse of that 784 x 784 matrix took 330 ms with subnormals and 18 ms with them
//! flushed, against 14 ms for the 16x7x7 matrix of the same size, which has none.
//! Values below the smallest normal number (`1.2e-38` in `f32`, `2.2e-308` in `f64`)
//! become zero: a change far below the rounding of the O(1) sums they enter.
//!
//! On x86-64 this sets the FTZ and DAZ bits of MXCSR for the duration of the call, on the
//! calling thread and, when the work runs on several threads, on every thread of rayon's
//! global pool (a broadcast before and after), restoring each thread's previous value.
//! Other work running on the pool at the same moment sees the flag too. Elsewhere it
//! runs `f` unchanged.

use faer::Par;

#[cfg(target_arch = "x86_64")]
mod mxcsr {
    /// Flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    pub(super) const FTZ_DAZ: u32 = 0x8040;

    pub(super) fn get() -> u32 {
        let mut v: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit control/status register at the given
        // address, which is a live, aligned, writable `u32`.
        unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut v as *mut u32, options(nostack, preserves_flags)) };
        v
    }

    pub(super) fn set(v: u32) {
        // SAFETY: `ldmxcsr` loads the register from a live, aligned `u32`; the values
        // written are a previous value of the register or one with only the FTZ/DAZ bits
        // added, so no exception is unmasked (no reserved bit is set). Not `readonly`:
        // declaring that it may write memory keeps the compiler from moving memory
        // accesses and calls (faer's kernels) across it. The compiler knows nothing of
        // the floating-point environment, so arithmetic in registers can still move:
        // only code behind a call or a memory access is certain to run inside.
        unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &v as *const u32, options(nostack, preserves_flags)) };
    }
}

/// `f()` (faer's LU kernels) with subnormals flushed to zero on every thread that can
/// run part of it under `par`, inside rayon's pool (see the module docs), then
/// [`clear_upper_simd_state`](crate::util::clear_upper_simd_state) on the calling thread.
pub(crate) fn flushing_denormals<R: Send>(par: Par, f: impl FnOnce() -> R + Send) -> R {
    let f = || {
        let r = f();
        crate::util::clear_upper_simd_state();
        r
    };
    crate::util::in_pool(par, || {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(feature = "rayon")]
            if par.degree() > 1 && rayon::current_num_threads() > 1 {
                let old = rayon::broadcast(|_| {
                    let old = mxcsr::get();
                    mxcsr::set(old | mxcsr::FTZ_DAZ);
                    old
                });
                let r = f();
                rayon::broadcast(|ctx| mxcsr::set(old[ctx.index()]));
                return r;
            }
            let old = mxcsr::get();
            mxcsr::set(old | mxcsr::FTZ_DAZ);
            let r = f();
            mxcsr::set(old);
            r
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = par;
            f()
        }
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The flag is on inside, a subnormal result is flushed, and every thread gets its
    /// previous value back (which must not have FTZ set here: the default environment).
    #[test]
    fn flushes_inside_and_restores_after() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        for par in [Par::Seq, Par::rayon(2)] {
            let before = mxcsr::get();
            assert_eq!(before & mxcsr::FTZ_DAZ, 0);
            // the product goes through `black_box` (an opaque memory access) so that it is
            // computed before the closure returns and the flag is restored
            let (inside, product) = flushing_denormals(par, || (mxcsr::get(), std::hint::black_box(std::hint::black_box(tiny) * std::hint::black_box(0.5f32))));
            assert_eq!(inside & mxcsr::FTZ_DAZ, mxcsr::FTZ_DAZ);
            assert_eq!(product, 0.0);
            assert_eq!(mxcsr::get(), before);
            assert!((std::hint::black_box(tiny) * std::hint::black_box(0.5f32)).is_subnormal());
            #[cfg(feature = "rayon")]
            assert!(rayon::broadcast(|_| mxcsr::get() & mxcsr::FTZ_DAZ).iter().all(|&v| v == 0));
        }
    }
}
