//! Workloads, the MoE step simulator, experiments and reports of ultraep, and the `ultraep` command.
//!
//! `ultraep bench` (what `cargo xtask bench` runs) replays synthetic router loads calibrated to the
//! published scenarios ([`workload`], [`experiment`]) through every balancer and a timing model of
//! the MoE layer ([`step`]), and writes the report ([`report`]). The other commands: `ultraep plan`
//! (plan a problem file), `ultraep xfer` (direct fan-out against relays), `ultraep topo` (topology
//! presets and files).
//!
//! Who uses it: people, through the `ultraep` command and `cargo xtask bench`, and `ultraep-py`,
//! for the simulator and the trace readers.
//!
//! What it may depend on: every other ultraep crate.

pub mod bench_command;
pub mod cross_domain;
pub mod decode_gate;
pub mod decode_objective;
pub mod engine_command;
mod error;
pub mod experiment;
pub mod fuzzing;
pub mod machine;
mod message;
pub mod models;
mod overhead_charges;
pub mod plan_command;
pub mod problem_file;
pub mod random;
pub mod report;
mod results;
mod run_config;
mod scenario;
pub mod simulate_command;
pub mod step;
pub mod step_fit;
mod step_frame;
pub mod svg;
pub mod sweeps;
pub mod topo_command;
pub mod trace;
pub mod workload;
pub mod xfer_command;

pub use error::BenchError;
pub use message::one_line;
