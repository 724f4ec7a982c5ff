//! Project tasks for ultraep, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! - `cargo xtask bench [ARGS]`: the main job: the evaluation of every balancer on the published
//!   scenarios (`ultraep bench`, built in release; ARGS go to it, e.g. `--full`).
//! - `cargo xtask bench --criterion [ARGS]`: the workspace's criterion micro-benchmarks instead;
//!   ARGS go to criterion (e.g. `--quick`).
//! - `cargo xtask ci`: exactly what CI runs (`bash .ci/run`).
//! - `cargo xtask check-architecture`: checks the dependency arrows and purity rules written down in
//!   ARCHITECTURE.md; `cargo test` runs the same check.
//!
//! xtask depends on no ultraep crate: it drives them through cargo, so it never needs rebuilding when
//! they change and can check them from the outside.

mod architecture;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("bench") => bench(&rest),
        Some("ci") => run(Command::new("bash").arg(".ci/run")),
        Some("check-architecture") => check_architecture(),
        Some("help" | "--help" | "-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         tasks:\n  \
         bench [ARGS]          run the evaluation (ultraep bench; ARGS go to it, e.g. --full)\n  \
         bench --criterion [ARGS]  run the criterion micro-benchmarks (ARGS go to criterion, e.g. --quick)\n  \
         ci                    run what CI runs (bash .ci/run)\n  \
         check-architecture    check the dependency arrows and purity rules of ARCHITECTURE.md"
    );
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut command = cargo();
    match args.split_first() {
        Some((first, criterion_args)) if first == "--criterion" => {
            command.args(["bench", "--workspace", "--benches"]);
            if !criterion_args.is_empty() {
                command.arg("--").args(criterion_args);
            }
        }
        _ => {
            command
                .args([
                    "run",
                    "--release",
                    "--quiet",
                    "--package",
                    "ultraep-bench",
                    "--bin",
                    "ultraep",
                    "--",
                    "bench",
                ])
                .args(args);
        }
    }
    run(&mut command)
}

fn check_architecture() -> Result<(), String> {
    let violations = architecture::check_workspace(&workspace_root())?;
    if violations.is_empty() {
        println!("architecture: every dependency arrow and purity rule holds");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("architecture violation: {violation}");
    }
    Err(format!("{} architecture violation(s)", violations.len()))
}

/// The cargo that runs this task, so that toolchain overrides carry through.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .current_dir(workspace_root())
        .status()
        .map_err(|error| format!("could not start {command:?}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}
