//! The GPU at every rank of a topology: the figures the step simulator needs for its roofline.

use crate::Bandwidth;

/// One accelerator (GPU) model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Accelerator {
    /// A human name, e.g. "H100 SXM".
    pub name: String,
    /// Dense (no sparsity) BF16 tensor-core throughput in GFLOP/s.
    pub dense_bf16_gflops: u64,
    /// Bandwidth of the GPU's own memory (HBM).
    pub memory_bandwidth: Bandwidth,
    /// Capacity of the GPU's own memory in bytes.
    pub memory_bytes: u64,
}
