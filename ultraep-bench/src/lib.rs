//! Workloads, the MoE step simulator, experiments and result tables of ultraep: a library.
//!
//! [`experiment`] replays synthetic router loads calibrated to the published scenarios
//! ([`workload`], [`experiment::Scenario`]) through every balancer and a timing model of the MoE
//! layer ([`step`]); [`sweeps`], [`cross_domain`] and [`decode_objective`] vary it; [`tables`]
//! shows the results. [`trace`] reads and writes recorded loads, [`problem_file`] the planner's problem
//! files, and [`fuzzing`] holds the bodies of the fuzz targets over every reader.
//!
//! Who uses it: `ultraep-cli` (the `ultraep` command and `cargo xtask bench`), and `ultraep-py`,
//! for the simulator and the trace readers.
//!
//! What it may depend on: `ultraep-topo`, `ultraep-plan`, `ultraep-xfer` and `ultraep-runtime`;
//! never on a command-line crate.

pub mod cross_domain;
pub mod decode_gate;
pub mod decode_objective;
mod error;
pub mod experiment;
pub mod fuzzing;
pub mod machine;
pub mod models;
mod overhead_charges;
pub mod problem_file;
pub mod random;
mod results;
mod run_config;
mod scenario;
pub mod simulation;
pub mod step;
pub mod step_fit;
mod step_frame;
pub mod sweeps;
pub mod tables;
pub mod trace;
pub mod workload;

pub use error::BenchError;
