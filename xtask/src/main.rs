//! Project tasks for ultraep, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! - `cargo xtask bench [ARGS]`: the main job: the evaluation of every balancer on the published
//!   scenarios (`ultraep bench`, built in release; ARGS go to it, e.g. `--full`).
//! - `cargo xtask bench --criterion [ARGS]`: the workspace's criterion micro-benchmarks instead;
//!   ARGS go to criterion (e.g. `--quick`).
//! - `cargo xtask test`: every test, Rust and Python: `cargo test --workspace`, then the `ultraep`
//!   Python package built by maturin into a virtual environment under `.cache/pyenv` (created and
//!   filled from the package registry on first use), checked with ruff and tested with pytest.
//! - `cargo xtask ci`: exactly what CI runs (`bash .ci/run`).
//! - `cargo xtask gpu-bundle`: builds the GPU and NVRTC test binaries and the GPU benchmark in
//!   release into `gpu-bundle/` with `run.sh`, which runs them on a GPU machine that has the driver
//!   and NVRTC but no Rust; with the package's abi3 wheel and the PyTorch layer's GPU trial.
//! - `cargo xtask check-architecture`: checks the dependency arrows and purity rules written down in
//!   ARCHITECTURE.md; `cargo test` runs the same check.
//! - `cargo xtask fuzz --seconds N [--target T]`: the libFuzzer targets of `fuzz/` (every reader of
//!   the command and the planner's input), N seconds in all, on the stable toolchain.
//! - `cargo xtask mutants [--scope planner|schedule] [--shard K/N]`: mutation testing of the
//!   planner and the transfer schedule with cargo-mutants (installed on first use): caught,
//!   missed, timed out and unviable mutants, and the missed ones listed.
//!
//! xtask depends on no ultraep crate: it drives them through cargo, so it never needs rebuilding when
//! they change and can check them from the outside.

mod architecture;
mod crate_docs;
mod fuzz;
mod gpu_bundle;
mod mutants;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("bench") => bench(&rest),
        Some("ci") => run(Command::new("bash").arg(".ci/run")),
        Some("test") => test(),
        Some("gpu-bundle") => gpu_bundle::build(),
        Some("check-architecture") => check_architecture(),
        Some("fuzz") => fuzz::fuzz(&rest),
        Some("mutants") => mutants::mutants(&rest),
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
         bench --python        the PyTorch layer's overhead per forward (release build, CPU processes)\n  \
         test                  every test: Rust (cargo test --workspace) and Python (pytest)\n  \
         ci                    run what CI runs (bash .ci/run)\n  \
         gpu-bundle            build the GPU test binaries and their run script into gpu-bundle/\n  \
         check-architecture    check the dependency arrows and purity rules of ARCHITECTURE.md\n  \
         fuzz --seconds N [--target T]  run the libFuzzer targets of fuzz/ for N seconds in all\n  \
         mutants [--scope S] [--shard K/N]  cargo-mutants on the planner and the transfer schedule"
    );
}

/// The Python tools the package is built and tested with, pinned.
const PYTHON_TOOLS: &[&str] = &[
    "maturin==1.16.0",
    "numpy==2.4.6",
    "pytest==9.2.0",
    "ruff==0.17.6",
    // The CPU run of PyTorch needs no other install: the default wheel carries its CUDA
    // libraries, and on a machine without a GPU it runs on the CPU with gloo.
    "torch==2.15.0",
    "transformers==5.24.0",
];

/// Every test: the workspace's, then the Python package's.
fn test() -> Result<(), String> {
    run(cargo().args(["test", "--workspace", "--locked"]))?;
    let root = workspace_root();
    let package = root.join("ultraep-py");
    let bin = python_package(Profile::Debug)?;
    let sources = [
        package.join("python"),
        package.join("tests"),
        package.join("bench"),
    ];
    run(Command::new(bin.join("ruff")).arg("check").args(&sources))?;
    run(Command::new(bin.join("ruff"))
        .args(["format", "--check"])
        .args(&sources))?;
    // The parity tests compare with the `ultraep` command that `cargo test` built.
    let ultraep = root.join("target").join("debug").join("ultraep");
    let status = Command::new(bin.join("python"))
        .args(["-m", "pytest", "-q"])
        .current_dir(&package)
        .env("ULTRAEP_BIN", &ultraep)
        .status()
        .map_err(|error| format!("could not start pytest: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("pytest failed: {status}"))
    }
}

/// How `maturin develop` builds the extension.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Quick to build: for the tests.
    Debug,
    /// Optimised: for benchmarks.
    Release,
}

/// Makes the virtual environment under `.cache/pyenv` with the pinned tools (once), builds the
/// `ultraep` package into it, and returns its `bin` folder.
pub(crate) fn python_package(profile: Profile) -> Result<PathBuf, String> {
    let root = workspace_root();
    let venv = root.join(".cache").join("pyenv");
    let bin = venv.join("bin");
    let marker = venv.join(format!("tools-{}", PYTHON_TOOLS.join("-")));
    if !marker.exists() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(python).arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(bin.join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_TOOLS))?;
        std::fs::write(&marker, b"").map_err(|error| error.to_string())?;
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut maturin = Command::new(bin.join("maturin"));
    maturin.args(["develop", "--quiet"]);
    if profile == Profile::Release {
        maturin.arg("--release");
    }
    run(maturin
        .arg("--manifest-path")
        .arg(root.join("ultraep-py").join("Cargo.toml"))
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", &path))?;
    Ok(bin)
}

/// The host overhead of the PyTorch layer per forward (`ultraep-py/bench/overhead.py`), on a
/// release build of the extension.
fn bench_python() -> Result<(), String> {
    let bin = python_package(Profile::Release)?;
    run(Command::new(bin.join("python")).arg(
        workspace_root()
            .join("ultraep-py")
            .join("bench")
            .join("overhead.py"),
    ))
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut command = cargo();
    match args.split_first() {
        Some((first, _)) if first == "--python" => return bench_python(),
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
                    "ultraep-cli",
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
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn run(command: &mut Command) -> Result<(), String> {
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
