//! CPU references: the same semantics as every kernel, so everything runs and is tested without a
//! GPU, and every GPU result is compared with them exactly.

pub mod arrivals;
pub mod histogram;
pub mod reduce;
pub mod reroute;
pub mod stream;
