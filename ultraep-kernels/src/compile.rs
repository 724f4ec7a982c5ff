//! Compiling the kernels with NVRTC, for the GPU generation ultraep targets (Hopper, `sm_90a`).

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::{KernelError, KernelSource};

/// The architecture the kernels are compiled for.
pub const ARCH: &str = "sm_90a";

/// Whether NVRTC can be loaded here (without panicking, which cudarc would do on its own).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library and reports whether it loaded.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `kernel` to PTX. Fused multiply-adds and flush-to-zero are off so that sums round
/// exactly as the CPU references do.
pub fn compile(kernel: &KernelSource) -> Result<Ptx, KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::NvrtcUnavailable);
    }
    let options = CompileOptions {
        arch: Some(ARCH),
        fmad: Some(false),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        name: Some(format!("ultraep_{}.cu", kernel.name)),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(kernel.source, options).map_err(|error| KernelError::Compile {
        kernel: kernel.name,
        log: error.to_string(),
    })
}
