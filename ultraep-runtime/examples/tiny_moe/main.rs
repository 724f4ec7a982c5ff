//! Trains a tiny MoE layer stack under skewed routing, balanced by the engine and unbalanced,
//! and shows that the layer outputs and the masters' gradients are equal bit for bit while the
//! busiest rank's load drops. That equality holds because the model's values are small integers,
//! whose FP32 sums are exact; with values that round, it also shows the balanced run equal to
//! itself from run to run and within a stated tolerance of the unbalanced one.
//!
//! - `cargo run -p ultraep-runtime --example tiny_moe` trains on in-process ranks: one engine
//!   that holds every rank, and one engine per rank on threads of their own.
//! - `cargo run --release -p ultraep-runtime --example tiny_moe -- --processes 8` also trains on
//!   8 OS processes, one per rank, each holding only its own masters and slots in a named
//!   shared-memory segment that its peers map, and gathering the load over shared memory. It
//!   exits 0 when every process succeeded and all runs agree bit for bit, and non-zero with the
//!   error otherwise. `--ranks 16` trains a group of 16 ranks (two 8-GPU nodes) instead.
//!
//! A process of the group is this same program started with `--rank R --group G --out FILE`.

mod model;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use model::{
    TinyMoe, Values, bit_identical, merge, relative_difference, train_balanced, train_threads,
    train_unbalanced,
};
use ultraep_runtime::{Engine, PlaneOptions, RuntimeError, ShmCollective};

/// How long a rank waits for a peer before it gives up, and the parent for the whole run.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Arguments {
    processes: Option<u32>,
    ranks: Option<u32>,
    rank: Option<u32>,
    group: Option<String>,
    out: Option<PathBuf>,
}

fn parse() -> Result<Arguments, String> {
    let mut parsed = Arguments::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<u32>()
                .map_err(|_| format!("{flag} takes a whole number, not {text:?}"))
        };
        match flag.as_str() {
            "--processes" => parsed.processes = Some(number(value()?)?),
            "--ranks" => parsed.ranks = Some(number(value()?)?),
            "--rank" => parsed.rank = Some(number(value()?)?),
            "--group" => parsed.group = Some(value()?),
            "--out" => parsed.out = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let arguments = match parse() {
        Ok(arguments) => arguments,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut tiny = TinyMoe::DEFAULT;
    if let Some(ranks) = arguments.ranks {
        if ranks == 0 || !ranks.is_multiple_of(8) {
            eprintln!("error: --ranks must be a multiple of 8 (whole 8-GPU nodes), not {ranks}");
            return ExitCode::from(2);
        }
        tiny.ranks = ranks;
    }
    let result = match (&arguments.group, arguments.rank, &arguments.out) {
        (Some(group), Some(rank), Some(out)) => run_rank(&tiny, group, rank, out),
        (None, None, None) => run(&tiny, arguments.processes),
        _ => Err("--rank, --group and --out go together".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One process of the group: trains rank `rank` and writes its record to `out`.
fn run_rank(tiny: &TinyMoe, group: &str, rank: u32, out: &Path) -> Result<bool, String> {
    let options = PlaneOptions {
        timeout: PEER_TIMEOUT,
        workers: 1,
    };
    let fail = |error: RuntimeError| format!("rank {rank}: {error}");
    let config = model::engine_config(tiny).map_err(fail)?;
    let row = (config.model.experts + 2) as usize;
    let engine = Engine::shared_memory(config, group, rank, options).map_err(fail)?;
    let held = engine.owned_state_bytes();
    let mut collective =
        ShmCollective::join(group, rank, tiny.ranks, row, PEER_TIMEOUT).map_err(fail)?;
    let record = model::train_local(tiny, engine, &mut collective).map_err(fail)?;
    println!(
        "rank {rank} (process {}): expert state held {held} bytes ({} masters + {} slots, \
         weights and gradients), resident set {}",
        std::process::id(),
        tiny.experts_per_rank * tiny.layers,
        2,
        resident_set().unwrap_or_else(|| "unknown".into())
    );
    std::fs::write(out, model::encode(&record)).map_err(|e| format!("rank {rank}: {e}"))?;
    Ok(true)
}

/// The process's resident set size as `/proc/self/status` gives it.
fn resident_set() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    Some(line.trim_start_matches("VmRSS:").trim().to_string())
}

fn run(tiny: &TinyMoe, processes: Option<u32>) -> Result<bool, String> {
    let error = |error: RuntimeError| error.to_string();
    let reference = train_unbalanced(tiny);
    let balanced = train_balanced(tiny).map_err(error)?;
    let threads = train_threads(tiny).map_err(error)?;
    let steps = balanced.reports.len() as f64;
    let mean = |f: fn(&ultraep_runtime::StepReport) -> f64| {
        balanced.reports.iter().map(f).sum::<f64>() / steps
    };
    println!(
        "{} ranks, {} experts x {} layers, top-{}, {} tokens per rank, {} microbatches x {} steps",
        tiny.ranks,
        tiny.ranks * tiny.experts_per_rank,
        tiny.layers,
        tiny.top_k,
        tiny.tokens,
        tiny.microbatches,
        tiny.steps
    );
    println!(
        "max/mean rank load: {:.3} unbalanced -> {:.3} balanced (mean over {} layer steps)",
        mean(|r| r.metrics.initial_imbalance()),
        mean(|r| r.metrics.imbalance()),
        balanced.reports.len()
    );
    println!(
        "replicas per layer step: {:.1}; copies {}, reused in place {}",
        mean(|r| f64::from(r.metrics.replicas)),
        balanced.reports.iter().map(|r| r.copies).sum::<u32>(),
        balanced
            .reports
            .iter()
            .map(|r| r.copies_skipped)
            .sum::<u32>()
    );
    let yes = |same: bool| if same { "yes" } else { "NO" };
    let identical = bit_identical(&balanced, &reference);
    println!(
        "one engine holding every rank: layer outputs ({}) and master gradients ({}) \
         bit-identical to the unbalanced run: {}",
        balanced.outputs.len(),
        balanced.gradients.len(),
        yes(identical)
    );
    let merged = merge(tiny, &threads);
    let threads_identical = bit_identical(&merged, &reference);
    println!(
        "one engine per rank, {} threads: bit-identical to the unbalanced run: {}",
        threads.len(),
        yes(threads_identical)
    );
    // The equality above holds because this model's sums are exact. With values that round:
    let fractions = TinyMoe {
        values: Values::Fractions,
        steps: 1,
        ..*tiny
    };
    let once = train_balanced(&fractions).map_err(error)?;
    let twice = train_balanced(&fractions).map_err(error)?;
    let repeats = bit_identical(&once, &twice);
    let difference = relative_difference(&once, &train_unbalanced(&fractions));
    println!(
        "with rounding values (thirds), one training step: balanced run bit-identical from run to \
         run: {}; largest difference from the unbalanced run {difference:.1e} of the largest \
         value (tolerance 1e-5)",
        yes(repeats)
    );
    let mut all = identical && threads_identical && repeats && difference < 1e-5;
    if let Some(processes) = processes {
        all &= run_processes(tiny, processes, &threads, &reference)?;
    }
    Ok(all)
}

/// Trains on `processes` OS processes (one per rank) and compares every rank's record with the
/// same rank's record of the threaded run, and the whole with the unbalanced run.
fn run_processes(
    tiny: &TinyMoe,
    processes: u32,
    threads: &[model::RunRecord],
    reference: &model::RunRecord,
) -> Result<bool, String> {
    if processes != tiny.ranks {
        return Err(format!(
            "--processes {processes}: one process per rank, so it must equal the ranks ({})",
            tiny.ranks
        ));
    }
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let group = format!("tiny-{}-{}", std::process::id(), tiny.ranks);
    let folder = std::env::temp_dir().join(format!("ultraep-{group}"));
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for rank in 0..processes {
        let child = Command::new(&program)
            .args(["--rank", &rank.to_string(), "--group", &group, "--out"])
            .arg(folder.join(format!("rank-{rank}.bin")))
            .args(["--ranks", &tiny.ranks.to_string()])
            .spawn()
            .map_err(|e| format!("starting rank {rank}: {e}"))?;
        children.push((rank, child));
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    for (rank, child) in &mut children {
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(status) => {
                    if !status.success() {
                        failed.push(format!("rank {rank} exited with {status}"));
                    }
                    break;
                }
                None if started.elapsed() > RUN_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failed.push(format!("rank {rank} did not finish in {RUN_TIMEOUT:?}"));
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    if !failed.is_empty() {
        let _ = std::fs::remove_dir_all(&folder);
        return Err(failed.join("; "));
    }
    let mut records = Vec::new();
    for rank in 0..processes {
        let bytes = std::fs::read(folder.join(format!("rank-{rank}.bin")))
            .map_err(|e| format!("rank {rank}'s record: {e}"))?;
        records
            .push(model::decode(&bytes).ok_or_else(|| format!("rank {rank}'s record is corrupt"))?);
    }
    let _ = std::fs::remove_dir_all(&folder);
    let per_rank = records
        .iter()
        .zip(threads)
        .all(|(process, thread)| bit_identical(process, thread));
    let whole = bit_identical(&merge(tiny, &records), reference);
    let yes = |same: bool| if same { "yes" } else { "NO" };
    println!(
        "{processes} OS processes over shared memory: every rank bit-identical to the same rank \
         on threads: {}; the whole bit-identical to the unbalanced run: {}",
        yes(per_rank),
        yes(whole)
    );
    Ok(per_rank && whole)
}
