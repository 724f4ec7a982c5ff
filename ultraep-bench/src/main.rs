//! The `ultraep` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ultraep_bench::topo_command::{self, TopoArgs};

/// ultraep: exact-load, real-time expert-parallel load balancing for MoE on rack-scale nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a topology preset or file, or write a topology file.
    Topo(TopoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Topo(args) => topo_command::run(args),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ultraep: {error}");
            ExitCode::FAILURE
        }
    }
}
