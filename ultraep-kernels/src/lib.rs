//! The CUDA kernels of ultraep and a CPU reference for each one: load histogram, token reroute,
//! persistent tile streaming and gradient reduction.
//!
//! Kernels are compiled at run time by NVRTC and loaded once per context; every GPU result is checked
//! against its CPU reference.
//!
//! Status: issue 6; not written yet, so this crate exports nothing and does not link CUDA so far.
//!
//! Who uses it: `ultraep-runtime` and `ultraep-bench`.
//!
//! What it may depend on: `ultraep-topo`, `ultraep-plan`, `ultraep-xfer` and cudarc. It is the only
//! crate of the workspace that may touch CUDA.
