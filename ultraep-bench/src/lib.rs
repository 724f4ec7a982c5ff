//! Workloads, the MoE step simulator, experiments and reports of ultraep, and the `ultraep` command.
//!
//! Today it holds the `ultraep topo` command (show a preset or a topology file, write a topology
//! file) and the `ultraep plan` command (plan a problem file with a chosen balancer). Issue 5 grows it into the evaluation `cargo xtask bench` runs: synthetic and recorded router
//! loads replayed through every balancer and a timing model of the MoE layer.
//!
//! Who uses it: people, through the `ultraep` command and `cargo xtask bench`.
//!
//! What it may depend on: every other ultraep crate. Nothing depends on it.

mod error;
pub mod plan_command;
pub mod problem_file;
pub mod topo_command;
pub mod xfer_command;

pub use error::BenchError;
