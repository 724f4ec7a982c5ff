//! The engine on the GPU, compared with the host plane bit for bit: the CUDA backend (ranks
//! emulated as buffers of one GPU), and the CUDA IPC plane with one process per rank (8 processes
//! sharing the test machine's one GPU, each opening its peers' memory from IPC handles).
//!
//! A custom harness: without a GPU the trials show as *ignored*; with `ULTRAEP_REQUIRE_GPU=1` (as
//! the GPU bundle's script sets) that is a failure instead.

// Shared with the example, which uses all of it; this target uses part.
#[path = "../../test-support/isolated_trials.rs"]
mod isolated_trials;
#[allow(dead_code)]
#[path = "../examples/tiny_moe/model.rs"]
mod model;

use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Failed};
use ultraep_kernels::gpu::{Gpu, driver_available};
use ultraep_runtime::{Backend, CudaBackend, Engine, RuntimeError, StepId};

use model::{
    TinyMoe, bit_identical, decode, encode, engine_config, train_balanced, train_local,
    train_threads, train_unbalanced,
};

/// Set in the processes the IPC trial starts: `rank:ranks:group:file`.
const IPC_ROLE: &str = "ULTRAEP_GPU_IPC_ROLE";

/// One rank of the IPC trial: trains on its engine and writes its record to the file.
fn ipc_rank(role: &str) -> Result<(), String> {
    let mut parts = role.splitn(4, ':');
    let mut number = |what: &str| {
        parts
            .next()
            .and_then(|r| r.parse::<u32>().ok())
            .ok_or(format!("bad {what}"))
    };
    let (rank, ranks) = (number("rank")?, number("ranks")?);
    let (group, file) = (
        parts.next().ok_or("no group")?,
        parts.next().ok_or("no file")?,
    );
    let tiny = TinyMoe {
        ranks,
        ..TinyMoe::DEFAULT
    };
    let options = ultraep_runtime::PlaneOptions {
        timeout: std::time::Duration::from_secs(30),
        workers: 1,
    };
    let error = |e: RuntimeError| format!("rank {rank}: {e}");
    let gpu = Arc::new(Gpu::open(0).map_err(|e| e.to_string())?);
    let config = engine_config(&tiny).map_err(error)?;
    let row = (config.model.experts as usize + 2).max(ultraep_kernels::ipc::RANK_HANDLE_WORDS);
    let mut collective =
        ultraep_runtime::ShmCollective::join(group, rank, tiny.ranks, row, options.timeout)
            .map_err(error)?;
    let engine = Engine::cuda_ipc(config, gpu, rank, &mut collective, options).map_err(error)?;
    let record = train_local(&tiny, engine, &mut collective).map_err(error)?;
    std::fs::write(file, encode(&record)).map_err(|e| e.to_string())
}

/// Tiny-MoE training with one process per rank on the CUDA IPC plane equals the same ranks on
/// the host plane's threads, record for record, bit for bit: on 2 processes (seconds: the GPU
/// bundle runs it first) and on 8.
fn ipc_training_on_2_matches_threads() -> Result<(), Failed> {
    ipc_training_matches_threads(2)
}

fn ipc_training_on_8_matches_threads() -> Result<(), Failed> {
    ipc_training_matches_threads(8)
}

fn ipc_training_matches_threads(ranks: u32) -> Result<(), Failed> {
    let tiny = TinyMoe {
        ranks,
        ..TinyMoe::DEFAULT
    };
    let program = std::env::current_exe().map_err(fail)?;
    let group = format!("gpu-ipc-{}", std::process::id());
    let folder = std::env::temp_dir().join(&group);
    std::fs::create_dir_all(&folder).map_err(fail)?;
    let children: Vec<_> = (0..tiny.ranks)
        .map(|rank| {
            let file = folder.join(format!("rank-{rank}.bin"));
            std::process::Command::new(&program)
                .env(
                    IPC_ROLE,
                    format!("{rank}:{ranks}:{group}:{}", file.display()),
                )
                .spawn()
                .map(|child| (child, file))
        })
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    // Wait for every rank (a failed one ends the others within their timeouts), then judge.
    let mut outcomes = Vec::new();
    for (rank, (mut child, file)) in children.into_iter().enumerate() {
        let status = child.wait().map_err(fail)?;
        outcomes.push((rank, status, file));
    }
    let mut records = Vec::new();
    for (rank, status, file) in outcomes {
        check(
            status.success(),
            &format!("rank {rank}'s process failed: {status}"),
        )?;
        let bytes = std::fs::read(&file).map_err(fail)?;
        records
            .push(decode(&bytes).ok_or_else(|| fail(format!("rank {rank}'s record is corrupt")))?);
    }
    let _ = std::fs::remove_dir_all(&folder);
    let threads = train_threads(&tiny).map_err(fail)?;
    check(
        records
            .iter()
            .zip(&threads)
            .all(|(gpu, host)| bit_identical(gpu, host)),
        "a rank on the CUDA IPC plane differs from the same rank on the host plane",
    )
}

fn gpu() -> Result<Arc<Gpu>, Failed> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    GPU.get_or_init(|| Gpu::open(0).map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Failed::from(format!("no GPU: {e}")))
}

fn fail(error: impl std::fmt::Display) -> Failed {
    Failed::from(error.to_string())
}

fn check(condition: bool, message: &str) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(Failed::from(message))
    }
}

fn cuda_engine(tiny: &TinyMoe) -> Result<Engine<CudaBackend>, Failed> {
    let gpu = gpu()?;
    Engine::with_backend(engine_config(tiny).map_err(fail)?, |shape| {
        CudaBackend::new(Arc::clone(&gpu), shape)
    })
    .map_err(fail)
}

/// Tiny-MoE training on the GPU equals the unbalanced reference and the CPU backend, bit for bit.
fn training_matches_the_cpu_backend() -> Result<(), Failed> {
    let tiny = TinyMoe::DEFAULT;
    let mut alone = ultraep_runtime::InProcessCollective::group(1).remove(0);
    let on_gpu = train_local(&tiny, cuda_engine(&tiny)?, &mut alone).map_err(fail)?;
    let on_cpu = train_balanced(&tiny).map_err(fail)?;
    check(
        bit_identical(&on_gpu, &train_unbalanced(&tiny)),
        "GPU-balanced training differs from the unbalanced reference",
    )?;
    check(
        bit_identical(&on_gpu, &on_cpu),
        "the GPU and CPU backends differ",
    )?;
    check(
        on_gpu.reports.iter().zip(&on_cpu.reports).all(|(g, c)| {
            g.metrics == c.metrics && g.copies == c.copies && g.bytes_moved == c.bytes_moved
        }),
        "the backends planned or copied differently",
    )
}

fn every_replica<B: Backend>(engine: &Engine<B>, step: StepId) -> Result<Vec<Vec<u8>>, Failed> {
    let instances = engine.plan(step).map_or(0, |p| p.instances().len()) as u32;
    (0..instances)
        .map(|i| {
            engine
                .instance_weights(step, i)
                .map(std::borrow::Cow::into_owned)
                .map_err(fail)
        })
        .collect()
}

/// A transfer cut off midway fails, leaves its slots unreadable, and succeeds when retried.
fn a_failed_transfer_recovers() -> Result<(), Failed> {
    let tiny = TinyMoe {
        steps: 1,
        ..TinyMoe::DEFAULT
    };
    let mut gpu_engine = cuda_engine(&tiny)?;
    let mut cpu_engine = Engine::new(engine_config(&tiny).map_err(fail)?).map_err(fail)?;
    let bytes = 3 * tiny.hidden * tiny.width * 4;
    for expert in 0..16 {
        let weights: Vec<u8> = (0..bytes).map(|i| (i * 7 + expert * 13) as u8).collect();
        gpu_engine
            .write_master(0, expert as u32, &weights)
            .map_err(fail)?;
        cpu_engine
            .write_master(0, expert as u32, &weights)
            .map_err(fail)?;
    }
    let mut loads = vec![8u32; 8 * 16];
    for source in 0..8 {
        loads[source * 16] = 400;
    }
    let matrix = ultraep_plan::LoadMatrix::new(&loads, 8, 16).map_err(fail)?;
    let step = StepId::new(0, 0);
    gpu_engine.inject_transfer_failure(2);
    check(
        matches!(
            gpu_engine.step(step, matrix),
            Err(RuntimeError::Transfer(_))
        ),
        "the injected failure must fail the step",
    )?;
    gpu_engine.step(step, matrix).map_err(fail)?;
    cpu_engine.step(step, matrix).map_err(fail)?;
    check(
        gpu_engine.plan(step) == cpu_engine.plan(step),
        "the backends planned differently",
    )?;
    check(
        every_replica(&gpu_engine, step)? == every_replica(&cpu_engine, step)?,
        "replica weights differ between the backends",
    )
}

/// The NCCL all-gather and all-reduce in a group of one rank (one GPU is all the test machine
/// has): the load comes back as given, and the sums are the rank's own counts, through the
/// `Collective` the engine's users call.
#[cfg(feature = "nccl")]
fn nccl_gathers_a_load() -> Result<(), Failed> {
    use ultraep_kernels::nccl::{NcclGather, NcclId};
    use ultraep_runtime::Collective;
    let gpu = gpu()?;
    let mut member = NcclGather::new(&gpu, 0, 1, NcclId::new().map_err(fail)?).map_err(fail)?;
    let mut loads = vec![0; 8];
    Collective::all_gather(&mut member, &[1, 0, 0, 2, 0, 0, 0, 1], &mut loads).map_err(fail)?;
    check(
        loads == [1, 0, 0, 2, 0, 0, 0, 1],
        "NCCL gathered another load",
    )?;
    let mut all = vec![0; 2];
    check(
        Collective::all_gather(&mut member, &[1, 2, 3], &mut all).is_err(),
        "a gather into the wrong length must fail",
    )?;
    // NCCL's all-reduce: on a group of one, every sum is the rank's own count, wrapping at 32
    // bits like the default through the all-gather.
    let mut sums = vec![0; 3];
    let mut scratch = Vec::new();
    Collective::all_reduce_sum(&mut member, &[5, 0, u32::MAX], &mut sums, &mut scratch)
        .map_err(fail)?;
    check(sums == [5, 0, u32::MAX], "NCCL summed another load")
}

/// Every trial but NCCL's: a name and its body.
const TRIALS: [(&str, isolated_trials::Body); 4] = [
    (
        "cuda_backend_training_matches_the_cpu_backend",
        training_matches_the_cpu_backend,
    ),
    (
        "cuda_backend_recovers_from_a_failed_transfer",
        a_failed_transfer_recovers,
    ),
    (
        "cuda_ipc_training_on_2_processes_matches_threads",
        ipc_training_on_2_matches_threads,
    ),
    (
        "cuda_ipc_training_on_8_processes_matches_threads",
        ipc_training_on_8_matches_threads,
    ),
];

fn main() {
    #[cfg(feature = "nccl")]
    isolated_trials::run_child_if_asked(&[("nccl_all_gathers_the_load", nccl_gathers_a_load)]);
    // A process the IPC trial started does its rank's part and nothing else.
    if let Ok(role) = std::env::var(IPC_ROLE) {
        if let Err(error) = ipc_rank(&role) {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    isolated_trials::run_child_if_asked(&TRIALS);
    let args = Arguments::from_args();
    let required = std::env::var("ULTRAEP_REQUIRE_GPU").is_ok_and(|value| value == "1");
    let available = driver_available() && Gpu::open(0).is_ok();
    let ignore = !available && !required;
    // One at a time, each in a process (and so a CUDA context) of its own.
    let mut args = args;
    args.test_threads = Some(1);
    let trials = isolated_trials::isolated(&TRIALS, ignore);
    #[cfg(feature = "nccl")]
    let trials = {
        let mut trials = trials;
        // Without the library the trial is ignored, unless ULTRAEP_REQUIRE_GPU=1 (the GPU
        // bundle's run, which links NCCL's libnccl.so.2 where cudarc looks): then it fails.
        let no_nccl = ignore || (!ultraep_kernels::nccl::nccl_available() && !required);
        trials.push(
            libtest_mimic::Trial::test("nccl_all_gathers_the_load", || {
                isolated_trials::run_in_child("nccl_all_gathers_the_load")
            })
            .with_ignored_flag(no_nccl),
        );
        trials
    };
    libtest_mimic::run(&args, trials).exit();
}
