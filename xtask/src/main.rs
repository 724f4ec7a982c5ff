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
//!
//! xtask depends on no ultraep crate: it drives them through cargo, so it never needs rebuilding when
//! they change and can check them from the outside.

mod architecture;
mod fuzz;

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
        Some("gpu-bundle") => gpu_bundle(),
        Some("check-architecture") => check_architecture(),
        Some("fuzz") => fuzz::fuzz(&rest),
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
         fuzz --seconds N [--target T]  run the libFuzzer targets of fuzz/ for N seconds in all"
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
enum Profile {
    /// Quick to build: for the tests.
    Debug,
    /// Optimised: for benchmarks.
    Release,
}

/// Makes the virtual environment under `.cache/pyenv` with the pinned tools (once), builds the
/// `ultraep` package into it, and returns its `bin` folder.
fn python_package(profile: Profile) -> Result<PathBuf, String> {
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

/// What the bundle carries: (package, cargo command, target, kind, file name in the bundle).
const BUNDLE: [(&str, &str, &str, &str, &str); 4] = [
    ("ultraep-kernels", "test", "nvrtc", "test", "nvrtc"),
    ("ultraep-kernels", "test", "gpu", "test", "gpu"),
    ("ultraep-runtime", "test", "gpu", "test", "runtime-gpu"),
    ("ultraep-kernels", "bench", "gpu", "bench", "gpu-bench"),
];

fn gpu_bundle() -> Result<(), String> {
    let bundle = workspace_root().join("gpu-bundle");
    std::fs::create_dir_all(&bundle)
        .map_err(|error| format!("cannot create gpu-bundle/: {error}"))?;
    let mut copied = Vec::new();
    for (package, command, target, kind, file) in BUNDLE {
        let mut build = cargo();
        build.arg(command);
        // Benchmarks are always built optimised; `cargo bench` refuses --release.
        if command == "test" {
            build.arg("--release");
        }
        let target_flag = if kind == "bench" { "--bench" } else { "--test" };
        // The runtime's GPU tests include the NCCL all-gather (ignored where NCCL is missing).
        if package == "ultraep-runtime" {
            build.args(["--features", "nccl"]);
        }
        let output = build
            .args([
                "--package",
                package,
                target_flag,
                target,
                "--no-run",
                "--message-format=json",
            ])
            .output()
            .map_err(|error| format!("could not start cargo: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "building {package}'s {kind} {target} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let name = message["target"]["name"].as_str().unwrap_or_default();
            let is_kind = message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some(kind)));
            let ours = message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains(package));
            if let (Some(executable), true) = (
                message["executable"].as_str(),
                is_kind && ours && name == target,
            ) {
                std::fs::copy(executable, bundle.join(file))
                    .map_err(|error| format!("cannot copy {executable}: {error}"))?;
                copied.push(file);
            }
        }
    }
    if copied.len() != BUNDLE.len() {
        return Err(format!(
            "expected {:?}, built {copied:?}",
            BUNDLE.map(|entry| entry.4)
        ));
    }
    // The PyTorch layer's GPU trial: the package as an abi3 wheel (the GPU machines' Python 3.12
    // installs it offline) and the trial, which needs PyTorch and nothing else.
    let bin = python_package(Profile::Release)?;
    let wheels = bundle.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    run(Command::new(bin.join("maturin"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(workspace_root().join("ultraep-py").join("Cargo.toml"))
        .arg("--out")
        .arg(&wheels))?;
    std::fs::copy(
        workspace_root()
            .join("ultraep-py")
            .join("tests")
            .join("test_gpu.py"),
        bundle.join("test_gpu.py"),
    )
    .map_err(|error| format!("cannot copy test_gpu.py: {error}"))?;
    let script = r#"#!/usr/bin/env bash
# Runs ultraep's NVRTC and GPU tests on a machine with the CUDA driver (580+) and NVRTC 13.0;
# no Rust toolchain needed. Every kernel is compared bit for bit with its CPU reference.
set -euo pipefail
cd "$(dirname "$0")"
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib            "$(python3 -c 'import os, nvidia.cu13 as m; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null || true)"; do
  if [ -n "$dir" ] && [ -d "$dir" ]; then export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
done
export ULTRAEP_REQUIRE_GPU=1 ULTRAEP_REQUIRE_NVRTC=1
./nvrtc
./gpu
./runtime-gpu
./gpu-bench --bench
# The PyTorch layer on the GPU (NCCL, one process), with the host synchronisations counted.
python3 -m pip install --quiet --no-deps --no-index --target pydeps wheels/*.whl
PYTHONPATH=pydeps timeout 300 python3 test_gpu.py
"#;
    let script_path = bundle.join("run.sh");
    std::fs::write(&script_path, script)
        .map_err(|error| format!("cannot write run.sh: {error}"))?;
    println!(
        "gpu-bundle/: {} and run.sh (run: bash gpu-bundle/run.sh)",
        copied.join(", ")
    );
    Ok(())
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
