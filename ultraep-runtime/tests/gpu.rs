//! The engine on the CUDA backend (ranks emulated as buffers of one GPU), compared with the CPU
//! backend: the same plans, the same bytes in every slot, the same reduced gradients, bit for bit.
//!
//! A custom harness: without a GPU the trials show as *ignored*; with `ULTRAEP_REQUIRE_GPU=1` (as
//! the GPU bundle's script sets) that is a failure instead.

// Shared with the example, which uses all of it; this target uses part.
#[allow(dead_code)]
#[path = "../examples/tiny_moe/model.rs"]
mod model;

use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};
use ultraep_kernels::gpu::{Gpu, driver_available};
use ultraep_runtime::{Backend, CudaBackend, Engine, RuntimeError, StepId};

use model::{TinyMoe, bit_identical, engine_config, train_balanced, train_local, train_unbalanced};

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

/// The NCCL all-gather in a group of one rank (one GPU is all the test machine has): the load
/// comes back as given, through the `Collective` the engine's users call.
#[cfg(feature = "nccl")]
fn nccl_gathers_a_load() -> Result<(), Failed> {
    use ultraep_kernels::nccl::{NcclGather, NcclId};
    use ultraep_runtime::{Collective, LoadGather};
    let gpu = gpu()?;
    let mut member = NcclGather::new(&gpu, 0, 1, NcclId::new().map_err(fail)?).map_err(fail)?;
    let mut gather = LoadGather::new(1, 8, 2);
    let loads = gather.gather(&mut member, &[0, 3, 3, 7]).map_err(fail)?;
    check(
        loads.row(0) == [1, 0, 0, 2, 0, 0, 0, 1],
        "NCCL gathered another load",
    )?;
    let mut all = vec![0; 2];
    check(
        Collective::all_gather(&mut member, &[1, 2, 3], &mut all).is_err(),
        "a gather into the wrong length must fail",
    )
}

fn main() {
    let args = Arguments::from_args();
    let required = std::env::var("ULTRAEP_REQUIRE_GPU").is_ok_and(|value| value == "1");
    let available = driver_available() && Gpu::open(0).is_ok();
    let ignore = !available && !required;
    let trials = vec![
        Trial::test(
            "cuda_backend_training_matches_the_cpu_backend",
            training_matches_the_cpu_backend,
        )
        .with_ignored_flag(ignore),
        Trial::test(
            "cuda_backend_recovers_from_a_failed_transfer",
            a_failed_transfer_recovers,
        )
        .with_ignored_flag(ignore),
    ];
    #[cfg(feature = "nccl")]
    let trials = {
        let mut trials = trials;
        // NCCL is optional even on a GPU machine: without the library the trial is ignored.
        let no_nccl = ignore || !ultraep_kernels::nccl::nccl_available();
        trials.push(
            Trial::test("nccl_all_gathers_the_load", nccl_gathers_a_load)
                .with_ignored_flag(no_nccl),
        );
        trials
    };
    libtest_mimic::run(&args, trials).exit();
}
