//! Expert-state transfers of ultraep: moving expert weights from masters to replica slots, and in
//! training reducing replica gradients back into the masters.
//!
//! It cuts expert state into tiles and chunks, chooses between direct fan-out and relay trees for hot
//! experts, emits the tile task list a GPU kernel consumes as is, simulates a schedule on a topology,
//! and executes it on an in-process CPU transport.
//!
//! Status: issue 4; not written yet, so this crate exports nothing so far.
//!
//! Who uses it: `ultraep-kernels` (the task-list format), `ultraep-runtime` and `ultraep-bench`.
//!
//! What it may depend on: `ultraep-topo` and `ultraep-plan`; never CUDA.
