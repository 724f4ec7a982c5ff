//! The runtime of ultraep: the per-layer, per-microbatch balancing engine that training and serving
//! frameworks embed.
//!
//! Per layer and microbatch it takes the router's load, plans, builds the transfer schedule, moves the
//! expert weights on its backend (CPU or CUDA), hands back the reroute map, and in training reduces
//! replica gradients into the masters. Slot buffers are shared by all layers.
//!
//! Status: issue 7; not written yet, so this crate exports nothing so far.
//!
//! Who uses it: frameworks that embed ultraep, and `ultraep-bench`.
//!
//! What it may depend on: `ultraep-topo`, `ultraep-plan`, `ultraep-xfer` and `ultraep-kernels`.
