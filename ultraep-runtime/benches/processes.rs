//! The published EP64 step on OS processes: 64 ranks as 8 processes of 8 ranks each, every
//! process holding only its ranks' masters and slots in named shared memory, gathering the load
//! over shared memory with every rank's digest, planning and moving replicas (48 KiB experts,
//! 3 layers, prefill) through the peers' mapped segments.
//!
//! Run it with `cargo bench -p ultraep-runtime --bench processes`. Each process reports, over
//! warm steps that move replicas: the time to plan (the planner alone) and the whole step
//! (gather, plan, slot choice, schedule, this process's tile tasks, copies, verification), and
//! the heap allocations of every thread of the process. Then every process copies, with plain
//! `memcpy`, as many bytes as the step stored, all at once as in the step: the shared-memory
//! transfer's bandwidth is given as a fraction of that, both measured in this run on this
//! machine. It exits non-zero if a process fails or a warm step allocates.

#[path = "../../test-support/counting_allocator.rs"]
mod counting_allocator;
// Shared with the tests and the step benchmark; this target uses part of it.
#[allow(dead_code)]
#[path = "../tests/integration/ep64.rs"]
mod ep64;

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use counting_allocator::{CountingAllocator, allocations_everywhere};
use ultraep_runtime::{
    Collective, Engine, HostPlane, PlaneOptions, RouterOutput, ShmCollective, SplitMode, StepId,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const ROLE: &str = "ULTRAEP_BENCH_PROCESS";
/// Processes of the group: 8 by default, or `ULTRAEP_BENCH_PROCESSES` (a divisor of 64); on a
/// machine with fewer cores than processes, waits for descheduled peers dominate the transfers.
const PROCESSES_VARIABLE: &str = "ULTRAEP_BENCH_PROCESSES";
const RANKS: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Warm-up rounds (every load on every layer), then measured rounds.
const WARM_UP: usize = 2;
const MEASURED: usize = 4;

/// The number of processes the run uses.
fn processes() -> Result<u32, String> {
    match std::env::var(PROCESSES_VARIABLE) {
        Err(_) => Ok(8),
        Ok(text) => match text.parse::<u32>() {
            Ok(count) if count > 0 && RANKS.is_multiple_of(count) => Ok(count),
            _ => Err(format!(
                "{PROCESSES_VARIABLE}={text}: use a divisor of {RANKS}"
            )),
        },
    }
}

fn main() -> ExitCode {
    match std::env::var(ROLE) {
        Ok(role) => match child(&role) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Err(_) => parent(),
    }
}

/// Median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One process: ranks `n b .. n b + n` for `n` ranks a process. Prints
/// `RESULT plan_us step_us allocations bytes transfer_ns memcpy_ns steps`.
fn child(role: &str) -> Result<String, String> {
    let (block, group) = role.split_once(':').ok_or("bad role")?;
    let block: u32 = block.parse().map_err(|_| "bad block")?;
    let processes = processes()?;
    let per_process = RANKS / processes;
    let local = block * per_process..(block + 1) * per_process;
    let fail = |e: ultraep_runtime::RuntimeError| format!("process {block}: {e}");
    let options = PlaneOptions {
        timeout: TIMEOUT,
        workers: 1,
    };
    // Each rank splits only its own tokens, when it reroutes them (RankSplit).
    let mut config = ep64::ep64_config(1, true);
    config.plan.split = SplitMode::None;
    let experts = config.model.experts as usize;
    let state = config
        .model
        .expert_state()
        .map_err(|e| e.to_string())?
        .bytes() as usize;
    let mut engine = Engine::for_ranks(config, local.clone(), |shape| {
        HostPlane::shared_memory(group, shape, options)
    })
    .map_err(fail)?;
    for layer in 0..ep64::LAYERS {
        for expert in 0..experts as u32 {
            if local.contains(&(expert / 4)) {
                engine
                    .write_master(layer, expert, &vec![(layer * 7 + expert) as u8; state])
                    .map_err(fail)?;
            }
        }
    }
    let row_len = engine.gather_row_len();
    let mut gather =
        ShmCollective::join(group, block, processes, row_len, TIMEOUT).map_err(fail)?;
    let loads = ep64::ep64_loads();
    // This process's counts (its ranks' rows) of every load, as its histogram would give them.
    let counts: Vec<Vec<u32>> = loads
        .iter()
        .map(|load| {
            let matrix = load.matrix();
            local
                .clone()
                .flat_map(|rank| matrix.row(rank as usize).iter().copied())
                .collect()
        })
        .collect();
    let mut row = Vec::with_capacity(row_len);
    let mut gathered = vec![0u32; row_len * processes as usize];
    // Sized up front: the measured steps must not see these grow.
    let steps = MEASURED * counts.len() * ep64::LAYERS as usize;
    let mut plan_us = Vec::with_capacity(steps);
    let mut step_us = Vec::with_capacity(steps);
    let mut transfer_ns = Vec::with_capacity(steps);
    let mut bytes = 0;
    let mut round = |engine: &mut Engine, record: bool| -> Result<(), String> {
        for (index, counts) in counts.iter().enumerate() {
            for layer in 0..ep64::LAYERS {
                let started = Instant::now();
                engine
                    .gather_row(RouterOutput::Counts(counts), &mut row)
                    .map_err(fail)?;
                gather.all_gather(&row, &mut gathered).map_err(fail)?;
                let report = engine
                    .step_from_rows(StepId::new(index as u32, layer), &gathered)
                    .map_err(fail)?;
                if record {
                    step_us.push(started.elapsed().as_secs_f64() * 1e6);
                    plan_us.push(report.planning.as_secs_f64() * 1e6);
                    transfer_ns.push(report.transfer.as_nanos() as f64);
                    bytes = bytes.max(report.bytes_moved);
                }
            }
        }
        Ok(())
    };
    for _ in 0..WARM_UP {
        round(&mut engine, false)?;
    }
    let mut outcome = Ok(());
    let allocations = allocations_everywhere(|| {
        for _ in 0..MEASURED {
            if outcome.is_ok() {
                outcome = round(&mut engine, true);
            }
        }
    });
    outcome?;
    // The same bytes with plain memcpy, every process at once: the largest step's bytes, split
    // evenly among the processes as the step's copies are.
    let share = (bytes / u64::from(processes)) as usize;
    let source = vec![1u8; share];
    let mut target = vec![0u8; share];
    let mut memcpy_ns = Vec::new();
    for _ in 0..8 {
        gather.all_gather(&row, &mut gathered).map_err(fail)?;
        let started = Instant::now();
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&target);
        memcpy_ns.push(started.elapsed().as_nanos() as f64);
    }
    Ok(format!(
        "RESULT {:.2} {:.2} {allocations} {bytes} {:.0} {:.0} {}",
        median(&mut plan_us),
        median(&mut step_us),
        median(&mut transfer_ns),
        median(&mut memcpy_ns),
        step_us.len()
    ))
}

fn parent() -> ExitCode {
    let processes = match processes() {
        Ok(processes) => processes,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let group = format!("bench-{}", std::process::id());
    let children: Vec<_> = (0..processes)
        .map(|block| {
            Command::new(&program)
                .env(ROLE, format!("{block}:{group}"))
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect();
    let mut rows = Vec::new();
    let mut failed = false;
    for (block, child) in children.into_iter().enumerate() {
        let output = match child.and_then(|child| child.wait_with_output()) {
            Ok(output) => output,
            Err(error) => {
                eprintln!("process {block}: {error}");
                failed = true;
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        match text.lines().find_map(|line| line.strip_prefix("RESULT ")) {
            Some(line) if output.status.success() => {
                let values: Vec<f64> = line.split(' ').filter_map(|v| v.parse().ok()).collect();
                rows.push((block, values));
            }
            _ => {
                eprintln!("process {block} failed: {}", output.status);
                failed = true;
            }
        }
    }
    println!(
        "EP64 as {processes} processes x {} ranks over shared memory \
         (48 KiB experts, 3 layers, prefill), medians over warm steps that move replicas:",
        RANKS / processes
    );
    println!(
        "process | plan (us) | whole step (us) | allocations | bytes stored | transfer (us) | memcpy of the step's bytes / processes (us) | steps"
    );
    let mut allocations = 0.0;
    let mut transfer = 0f64;
    let mut memcpy = 0f64;
    let mut bytes = 0f64;
    for (block, values) in &rows {
        if let [plan, step, allocs, stored, transfer_ns, memcpy_ns, steps] = values[..] {
            println!(
                "{block} | {plan:.1} | {step:.1} | {allocs} | {stored} | {:.1} | {:.1} | {steps}",
                transfer_ns / 1e3,
                memcpy_ns / 1e3
            );
            allocations += allocs;
            transfer = transfer.max(transfer_ns);
            memcpy = memcpy.max(memcpy_ns);
            bytes = bytes.max(stored);
        }
    }
    if transfer > 0.0 {
        println!(
            "slowest process: the step's {bytes} bytes took {:.1} us on the shared-memory plane \
             (copies, tile flags, checksums), {:.1} us as a plain memcpy shared by the same \
             {processes} processes: {:.1}% of memcpy bandwidth",
            transfer / 1e3,
            memcpy / 1e3,
            100.0 * memcpy / transfer
        );
    }
    if failed || rows.len() != processes as usize || allocations > 0.0 {
        eprintln!(
            "failed: {} processes reported, {allocations} allocations",
            rows.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
