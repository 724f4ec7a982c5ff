//! Compiling the kernels with NVRTC for the GPU in hand: Hopper (`sm_90a`: H100, H200) and
//! Blackwell (`sm_100a`: B200, GB200; `sm_103a`: B300, GB300), the architectures the topology
//! presets name and the pinned NVRTC 13.0 supports.

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::{KernelError, KernelSource};

/// A GPU architecture the kernels are compiled for (the `a` variants: the kernels use no
/// architecture-specific instructions yet, but the PTX then never runs on a different family by
/// accident).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Hopper: H100, H200 (compute capability 9.0).
    Sm90a,
    /// Blackwell: B200, GB200 (10.0).
    Sm100a,
    /// Blackwell Ultra: B300, GB300 (10.3).
    Sm103a,
}

impl Arch {
    /// Every architecture, in the order CI compile-checks them.
    pub const ALL: [Arch; 3] = [Arch::Sm90a, Arch::Sm100a, Arch::Sm103a];

    /// The name NVRTC and PTX use, e.g. `sm_90a`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm90a => "sm_90a",
            Arch::Sm100a => "sm_100a",
            Arch::Sm103a => "sm_103a",
        }
    }

    /// The architecture of a device of compute capability `major.minor`, or an error naming the
    /// ones the kernels are built for.
    ///
    /// ```
    /// use ultraep_kernels::Arch;
    /// assert_eq!(Arch::for_capability(10, 0)?, Arch::Sm100a);
    /// assert!(Arch::for_capability(8, 0).is_err());
    /// # Ok::<(), ultraep_kernels::KernelError>(())
    /// ```
    pub fn for_capability(major: u32, minor: u32) -> Result<Arch, KernelError> {
        match (major, minor) {
            (9, 0) => Ok(Arch::Sm90a),
            (10, 0) => Ok(Arch::Sm100a),
            (10, 3) => Ok(Arch::Sm103a),
            _ => Err(KernelError::UnsupportedDevice(format!(
                "compute capability {major}.{minor}; the kernels are built for 9.0 (H100, H200), 10.0 (B200, GB200) and 10.3 (B300, GB300)"
            ))),
        }
    }
}

/// The architecture [`compile`] uses when none is named: Hopper.
pub const ARCH: &str = "sm_90a";

/// Whether NVRTC can be loaded here (without panicking, which cudarc would do on its own).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library and reports whether it loaded.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `kernel` to PTX for Hopper ([`ARCH`]); see [`compile_for`].
pub fn compile(kernel: &KernelSource) -> Result<Ptx, KernelError> {
    compile_for(kernel, Arch::Sm90a)
}

/// Compiles `kernel` to PTX for `arch`. Fused multiply-adds and flush-to-zero are off so that
/// sums round exactly as the CPU references do.
pub fn compile_for(kernel: &KernelSource, arch: Arch) -> Result<Ptx, KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::NvrtcUnavailable);
    }
    let options = CompileOptions {
        arch: Some(arch.name()),
        fmad: Some(false),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        name: Some(format!("ultraep_{}.cu", kernel.name)),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(kernel.source, options).map_err(|error| {
        let mut log = error.to_string();
        // NVRTC loads libnvrtc-builtins from the library path at its first compile: say so
        // instead of leaving the user with its bare message.
        if log.contains("builtins") {
            log.push_str(
                " (put the folder of libnvrtc-builtins.so.13.0, the lib folder of the nvidia-cuda-nvrtc wheel, on LD_LIBRARY_PATH)",
            );
        }
        KernelError::Compile {
            kernel: kernel.name,
            log,
        }
    })
}
