//! `cargo xtask gpu-bundle`: everything a GPU machine with no Rust needs to run ultraep's GPU
//! trials and benchmarks in one call, with `run.sh` (written beside this file) to run them.

use std::process::Command;

use crate::{Profile, cargo, python_package, run, workspace_root};

/// What the bundle carries: (package, cargo command, target, kind, file name in the bundle).
const BUNDLE: [(&str, &str, &str, &str, &str); 4] = [
    ("ultraep-kernels", "test", "nvrtc", "test", "nvrtc"),
    ("ultraep-kernels", "test", "gpu", "test", "gpu"),
    ("ultraep-runtime", "test", "gpu", "test", "runtime-gpu"),
    ("ultraep-kernels", "bench", "gpu", "bench", "gpu-bench"),
];

/// `run.sh`: every step under its own timeout, the summary at the end.
const RUN_SH: &str = include_str!("../gpu-bundle/run.sh");

/// The whole wall time the GPU machine gives the bundle: the steps' timeouts add up to at most
/// this (8 minutes of the 15 a GPU machine is lent for, start-up included).
const BUNDLE_SECONDS: u64 = 8 * 60;

/// Builds `gpu-bundle/`: the GPU test binaries and benchmarks in release, the package's wheel, the
/// PyTorch trial and `run.sh`.
pub(crate) fn build() -> Result<(), String> {
    let total: u64 = step_limits(RUN_SH).iter().map(|(_, seconds)| seconds).sum();
    if total > BUNDLE_SECONDS {
        return Err(format!(
            "run.sh's steps may take {total} s, more than the {BUNDLE_SECONDS} s a GPU run has"
        ));
    }
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
    // The script, kept beside this file (`xtask/gpu-bundle/run.sh`) so that it reads as a script.
    let script = RUN_SH;
    let script_path = bundle.join("run.sh");
    std::fs::write(&script_path, script)
        .map_err(|error| format!("cannot write run.sh: {error}"))?;
    println!(
        "gpu-bundle/: {} and run.sh (run: bash gpu-bundle/run.sh)",
        copied.join(", ")
    );
    Ok(())
}

/// The timeout of every step of `run.sh` (`step NAME SECONDS ...`), in order.
fn step_limits(script: &str) -> Vec<(String, u64)> {
    script
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("step")).then_some(())?;
            let name = words.next()?.to_string();
            let seconds = words.next()?.parse().ok()?;
            Some((name, seconds))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_timeouts_add_up_to_at_most_eight_minutes() {
        let steps = step_limits(RUN_SH);
        let names: Vec<&str> = steps.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nvrtc",
                "kernels",
                "racecheck",
                "synccheck",
                "benchmarks",
                "runtime",
                "torch",
                "ipc2",
                "ipc8"
            ],
            "the most information first, the multi-process trial last"
        );
        let total: u64 = steps.iter().map(|(_, seconds)| seconds).sum();
        assert!(total <= BUNDLE_SECONDS, "{total} s of steps: {steps:?}");
    }

    /// Runs `run.sh --dry-run` in a fresh folder whose step programs are the given shell bodies,
    /// with a budget of `budget` seconds; returns `steps.tsv` as each step's outcome.
    fn dry_run_with(
        programs: &[(&str, &str)],
        budget: u64,
    ) -> std::collections::BTreeMap<String, String> {
        let folder = std::env::temp_dir().join(format!(
            "ultraep-bundle-test-{}-{budget}-{}",
            std::process::id(),
            programs.len()
        ));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("run.sh"), RUN_SH).unwrap();
        for (name, body) in programs {
            let path = folder.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&path, permissions).unwrap();
        }
        // `true` stands in for Python: the PyTorch step installs and runs nothing.
        let status = Command::new("bash")
            .arg("run.sh")
            .arg("--dry-run")
            .current_dir(&folder)
            .env("PYTHON", "true")
            .env("ULTRAEP_BUNDLE_SECONDS", budget.to_string())
            .env_remove("ULTRAEP_PTXAS")
            .output()
            .unwrap();
        let steps =
            std::fs::read_to_string(folder.join("results/steps.tsv")).unwrap_or_else(|_| {
                panic!("no steps.tsv: {}", String::from_utf8_lossy(&status.stderr))
            });
        let _ = std::fs::remove_dir_all(&folder);
        steps
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next().unwrap_or_default().to_string();
                (name, fields.next().unwrap_or_default().to_string())
            })
            .collect()
    }

    #[test]
    fn steps_that_fail_or_would_pass_the_budget_are_reported_and_the_rest_still_run() {
        let passing = "echo 'test result: ok. 3 passed; 0 failed; 0 ignored'";
        let programs = [
            ("nvrtc", passing),
            ("gpu", "exit 1"),
            ("gpu-bench", passing),
            ("runtime-gpu", passing),
        ];
        // A 64 s budget: the 60 s PyTorch step still fits when the stand-ins before it took up
        // to 4 s of a loaded machine's time (at exactly 60 it fit only if they took under one).
        let outcomes = dry_run_with(&programs, 64);
        let outcome = |step: &str| outcomes.get(step).map(String::as_str);
        assert_eq!(outcome("nvrtc"), Some("pass"), "{outcomes:?}");
        // 70 s of limit do not fit a 64 s budget; the 8-process trial's 80 s neither.
        assert_eq!(outcome("kernels"), Some("skipped"), "{outcomes:?}");
        assert_eq!(outcome("ipc8"), Some("skipped"), "{outcomes:?}");
        assert_eq!(outcome("ipc2"), Some("pass"), "{outcomes:?}");
        assert_eq!(outcome("torch"), Some("pass"), "{outcomes:?}");
        let outcomes = dry_run_with(&programs, 480);
        let outcome = |step: &str| outcomes.get(step).map(String::as_str);
        // With the whole budget a failed step is a failure, and the steps after it still run.
        assert_eq!(outcome("kernels"), Some("fail"), "{outcomes:?}");
        assert_eq!(outcome("ipc8"), Some("pass"), "{outcomes:?}");
        assert_eq!(outcomes.len(), 9, "{outcomes:?}");
    }

    #[test]
    fn the_script_goes_on_after_a_failed_step() {
        assert!(
            !RUN_SH.contains("set -e"),
            "a failing step must not stop the run"
        );
        assert!(
            RUN_SH.contains("libnccl.so.2"),
            "NCCL found under its installed soname"
        );
    }
}
