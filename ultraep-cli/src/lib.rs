//! The `ultraep` command: one module per subcommand, the evaluation report and its SVG plots.
//!
//! Every subcommand parses its arguments (clap), runs the `ultraep-bench` library or a lower
//! crate, and returns its output as text; `main.rs` prints it. `ultraep bench` (what `cargo xtask
//! bench` runs) writes the report ([`report`]). The others: `ultraep plan` (plan a problem file),
//! `ultraep xfer` (direct fan-out against relays), `ultraep topo` (topology presets and files),
//! `ultraep simulate` (one scenario or trace) and `ultraep engine` (the runtime on CPU ranks).
//!
//! Who uses it: people, through the `ultraep` command and `cargo xtask bench`.
//!
//! What it may depend on: every ultraep crate but `ultraep-py`.

pub mod bench_command;
pub mod engine_command;
mod json_output;
mod message;
pub mod plan_command;
pub mod report;
pub mod simulate_command;
pub mod svg;
pub mod topo_command;
pub mod xfer_command;

pub use message::one_line;
