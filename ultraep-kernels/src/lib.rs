//! The CUDA kernels of ultraep and a CPU reference for each one: load histogram, token reroute,
//! persistent tile streaming (in one process, and into peers' memory), the wait for a peer
//! transfer's arrivals, checksums of expert states, and gradient reduction.
//!
//! Kernel sources ([`sources`]) are CUDA C++ compiled at run time by NVRTC for Hopper
//! ([`compile`]); they consume the `#[repr(C)]` descriptors of `ultraep-xfer` (tile tasks) and of
//! this crate ([`reference::reroute::RerouteEntry`], [`reference::reduce::ReduceJob`]) as they are.
//! Every kernel has a CPU reference with the same semantics ([`reference`](mod@reference)), so the whole system
//! runs and is tested without a GPU, and GPU results are checked against them exactly.
//!
//! [`gpu::Gpu`] runs them on a device; without one, every GPU test shows as ignored. The GPU
//! wrappers have not yet run on a GPU (see `docs/gpu-results.md`).
//!
//! Who uses it: `ultraep-runtime` (the bench reaches it only through the runtime). What it may
//! depend on: `ultraep-plan`, `ultraep-xfer` and cudarc; it is the only crate of the workspace that touches CUDA, and it
//! turns a missing driver or NVRTC into an error, never a panic.

#![allow(unsafe_code)]

mod chunked_reroute;
mod compile;
mod device_memory;
mod error;
pub mod gpu;
pub mod ipc;
pub mod launch_checks;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod reference;
mod region_checksum;
pub mod sources;

pub use compile::{ARCH, Arch, compile, compile_for, nvrtc_available};
pub use error::KernelError;
pub use sources::KernelSource;
