//! `cargo xtask fuzz --seconds N [--target NAME]`: builds the fuzz targets of `fuzz/` with
//! libFuzzer's coverage instrumentation (on the stable toolchain: the flags cargo-fuzz passes,
//! without a sanitizer) and runs each for its share of N seconds.
//!
//! Every input may take at most one second and the process at most [`MEMORY_LIMIT_MB`] of
//! resident memory; libFuzzer stops on the first crash, timeout or memory excess, leaves the input
//! under `target/fuzz/artifacts/<target>/`, and the task fails. New inputs that reach new code go
//! to `target/fuzz/corpus/<target>/` (the seeds in `fuzz/corpus/` are read, never written). The
//! task prints one line per target: executions, seconds, coverage (edges) and features, and peak
//! memory, as libFuzzer reports them.

use std::process::Command;

use crate::{cargo, run, workspace_root};

/// The targets, in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &[
    "problem_json",
    "topology_toml",
    "trace_jsonl",
    "trace_trtllm",
];

/// The resident memory one fuzz process may reach, in MB, before libFuzzer reports it.
const MEMORY_LIMIT_MB: u32 = 2048;

/// The largest input libFuzzer makes, in bytes.
const MAX_INPUT_BYTES: u32 = 65_536;

/// What libFuzzer said at the end of one target's run.
#[derive(Debug, Default)]
struct Summary {
    executions: u64,
    coverage: u64,
    features: u64,
    peak_rss_mb: u64,
}

pub fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds: u64 = 60;
    let mut only: Option<String> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .filter(|&value| value > 0)
                    .ok_or("--seconds needs a positive whole number")?;
            }
            "--target" => {
                let name = args.next().ok_or("--target needs a name")?;
                if !TARGETS.contains(&name.as_str()) {
                    return Err(format!(
                        "no fuzz target {name}; known: {}",
                        TARGETS.join(", ")
                    ));
                }
                only = Some(name.clone());
            }
            other => return Err(format!("unknown fuzz argument {other}")),
        }
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|target| only.as_deref().is_none_or(|name| name == *target))
        .collect();
    let root = workspace_root();
    let triple = host_triple()?;
    // RUSTFLAGS reach only the target's code when --target is given: build scripts and
    // proc macros are built without the instrumentation, as cargo-fuzz does.
    run(cargo()
        .args(["build", "--release", "--locked", "--target", &triple])
        .arg("--manifest-path")
        .arg(root.join("fuzz/Cargo.toml"))
        .env(
            "RUSTFLAGS",
            "--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
             -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
             -Cllvm-args=-sanitizer-coverage-pc-table \
             -Cllvm-args=-sanitizer-coverage-trace-compares",
        ))?;
    let share = (seconds / targets.len() as u64).max(1);
    let mut total = 0;
    println!(
        "| target | executions | seconds | coverage (edges) | features | peak memory (MB) |\n|---|---|---|---|---|---|"
    );
    for target in targets {
        let binary = root
            .join("fuzz/target")
            .join(&triple)
            .join("release")
            .join(target);
        let corpus = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let output = Command::new(&binary)
            .arg(format!("-max_total_time={share}"))
            .arg("-timeout=1")
            .arg(format!("-rss_limit_mb={MEMORY_LIMIT_MB}"))
            .arg(format!("-max_len={MAX_INPUT_BYTES}"))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .arg(root.join("fuzz/corpus").join(target))
            .output()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let summary = summarize(&log);
        total += summary.executions;
        println!(
            "| {target} | {} | {share} | {} | {} | {} |",
            summary.executions, summary.coverage, summary.features, summary.peak_rss_mb
        );
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "fuzz target {target} failed ({}); the input is under {}; add it to fuzz/regressions/{target}/ once fixed:\n{}",
                output.status,
                artifacts.display(),
                tail.join("\n")
            ));
        }
    }
    println!(
        "\n{total} executions in all, no crash, no input over 1 s, no process over {MEMORY_LIMIT_MB} MB."
    );
    Ok(())
}

/// The figures of libFuzzer's final statistics and its last status line.
fn summarize(log: &str) -> Summary {
    let mut summary = Summary::default();
    let number = |text: &str| text.trim().parse::<u64>().unwrap_or(0);
    for line in log.lines() {
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            summary.executions = number(value);
        } else if let Some(value) = line.strip_prefix("stat::peak_rss_mb:") {
            summary.peak_rss_mb = number(value);
        } else if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                match word {
                    "cov:" => summary.coverage = words.next().map_or(0, number),
                    "ft:" => summary.features = words.next().map_or(0, number),
                    _ => {}
                }
            }
        }
    }
    summary
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String, String> {
    let output = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn reads_libfuzzers_final_figures() {
        let log = "#2\tINITED cov: 10 ft: 12 corp: 2/30b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 120 ft: 300 corp: 9/1Kb exec/s: 2048 rss: 40Mb\n\
                   Done 5000 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 5000\n\
                   stat::average_exec_per_sec:     2500\n\
                   stat::new_units_added:          7\n\
                   stat::slowest_unit_time_sec:    0\n\
                   stat::peak_rss_mb:              41\n";
        let summary = summarize(log);
        assert_eq!(
            (
                summary.executions,
                summary.coverage,
                summary.features,
                summary.peak_rss_mb
            ),
            (5000, 120, 300, 41)
        );
    }
}
