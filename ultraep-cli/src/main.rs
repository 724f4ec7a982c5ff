//! The `ultraep` command. It exits with status 2 and a one-line message on bad input, and with
//! status 141, silently, when its reader closes the output early.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ultraep_cli::bench_command::{self, BenchArgs};
use ultraep_cli::engine_command::{self, EngineArgs};
use ultraep_cli::one_line;
use ultraep_cli::plan_command::{self, PlanArgs};
use ultraep_cli::simulate_command::{self, SimulateArgs};
use ultraep_cli::topo_command::{self, TopoArgs};
use ultraep_cli::xfer_command::{self, XferArgs};

/// ultraep: exact-load, real-time expert-parallel load balancing for MoE on rack-scale nodes.
#[derive(Debug, Parser)]
#[command(
    name = "ultraep",
    version,
    about = "ultraep: exact-load, real-time expert-parallel load balancing for MoE on rack-scale nodes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a topology preset or file, or write a topology file.
    Topo(TopoArgs),
    /// Plan one problem file (JSON) and print the plan as JSON.
    Plan(PlanArgs),
    /// Compare direct fan-out with relays on simulated expert-weight transfers.
    Xfer(XferArgs),
    /// Run the evaluation: every balancer on the published scenarios (what `cargo xtask bench` runs).
    Bench(BenchArgs),
    /// Run one scenario, or a recorded trace, through every balancer.
    Simulate(SimulateArgs),
    /// Run a scenario's loads through the runtime's engine on CPU ranks (real copies).
    Engine(EngineArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Topo(args) => topo_command::run(args),
        Command::Plan(args) => plan_command::run(args),
        Command::Xfer(args) => xfer_command::run(args),
        Command::Bench(args) => bench_command::run(args),
        Command::Simulate(args) => simulate_command::run(args),
        Command::Engine(args) => engine_command::run(args),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                // A reader that stops early (`ultraep topo ... | head`) is not an error: end
                // quietly with the status a process killed by SIGPIPE reports.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::from(BROKEN_PIPE_STATUS)
                }
                Err(error) => {
                    let _ = writeln!(std::io::stderr(), "ultraep: writing the output: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Err(error) => {
            // Every error here is bad input: a missing, unreadable or malformed file or argument.
            let _ = writeln!(
                std::io::stderr(),
                "ultraep: {}",
                one_line(&error.to_string(), MESSAGE_LIMIT)
            );
            ExitCode::from(2)
        }
    }
}

/// The exit status of a command whose reader closed its output: 128 + SIGPIPE, as a shell reports
/// a process that SIGPIPE ended.
const BROKEN_PIPE_STATUS: u8 = 141;

/// The longest error message printed, in characters: a message quoting a huge line of bad input
/// is cut, not echoed whole.
const MESSAGE_LIMIT: usize = 400;
