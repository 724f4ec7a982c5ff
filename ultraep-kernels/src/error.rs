//! The one error type of this crate.

use thiserror::Error;

/// Everything the kernels and their host side refuse or fail at.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KernelError {
    /// NVRTC (`libnvrtc.so.13`) could not be loaded.
    #[error(
        "NVRTC is not available: libnvrtc.so.13 could not be loaded (install the nvidia-cuda-nvrtc wheel and put its lib folder on LD_LIBRARY_PATH)"
    )]
    NvrtcUnavailable,
    /// The CUDA driver (`libcuda.so`) could not be loaded: there is no GPU here.
    #[error("the CUDA driver is not available: libcuda.so could not be loaded")]
    DriverUnavailable,
    /// The driver refused an operation (opening the device, allocating, launching, copying).
    #[error("CUDA driver error: {0}")]
    Device(String),
    /// A peer did not open a slot, or a relayed tile did not arrive, before the kernel's
    /// deadline: the peer may hang, or be far behind.
    #[error("a peer did not do its part within {waited_ms} ms: {what}")]
    PeerTimeout {
        /// How long the kernel waited.
        waited_ms: u64,
        /// What it waited for.
        what: String,
    },
    /// A kernel did not compile.
    #[error("kernel {kernel} did not compile: {log}")]
    Compile {
        /// The kernel's name.
        kernel: &'static str,
        /// NVRTC's message and log.
        log: String,
    },
    /// A device or driver the kernels cannot run on (the message says what is needed).
    #[error("unsupported device: {0}")]
    UnsupportedDevice(String),
    /// An input the kernels cannot take (the message names it).
    #[error("invalid kernel input: {0}")]
    InvalidInput(String),
    /// An id of the router's output names no expert.
    #[error("{count} router id(s) name no expert (there are {experts})")]
    InvalidExpertIds {
        /// How many.
        count: u32,
        /// Experts of the layer.
        experts: u32,
    },
}

impl From<ultraep_plan::PlanError> for KernelError {
    /// A plan, load or reroute table the kernels were handed that the planner refuses (the
    /// reroute table's CPU form lives with the planner).
    fn from(error: ultraep_plan::PlanError) -> Self {
        KernelError::InvalidInput(error.to_string())
    }
}
