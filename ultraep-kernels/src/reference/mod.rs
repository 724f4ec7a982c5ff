//! CPU references: the same semantics as every kernel, so everything runs and is tested without a
//! GPU, and every GPU result is compared with them exactly.

pub mod arrivals;
pub mod histogram;
pub mod reduce;
/// The reroute's CPU form lives with the planner (a CPU-only engine uses it without this crate);
/// the GPU reroute kernels are checked against it.
pub use ultraep_plan::reroute;
pub mod stream;
