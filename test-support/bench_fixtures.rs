//! Small runs and traces that the `ultraep-bench` library's tests and the `ultraep` command's
//! tests both use: a short run configuration, a synthetic trace, the engine's small model and a
//! scratch folder. Shared through `#[path]`, so that the two crates test the same inputs.

use std::path::PathBuf;

use ultraep_bench::experiment::RunConfig;
use ultraep_bench::step::Overheads;
use ultraep_bench::trace::Trace;
use ultraep_bench::workload::{Workload, WorkloadConfig};

/// A run short enough for a test: 3 steps (1 of them warm-up) of 3 layers.
pub const SMALL: RunConfig = RunConfig {
    steps: 3,
    warmup_steps: 1,
    layers: 3,
    slots_per_rank: 2,
    eplb_window: 1,
    eplb_interval: 2,
    relays: true,
    transfer_aware: false,
    seed: 11,
    overheads: Overheads::PUBLISHED,
    efficiency: None,
};

/// A synthetic trace of `steps` steps of `layers` layers, 256 tokens per rank, top-8.
pub fn small_trace(ranks: u32, experts: u32, steps: usize, layers: u32) -> Trace {
    let mut workload = Workload::new(WorkloadConfig {
        ranks,
        experts,
        top_k: 8,
        layers,
        tokens_per_rank: 256,
        skew: 0.5,
        drift: 0.1,
        regime_switch: 0.2,
        preference: 0.3,
        uneven_tokens: 0.0,
        sampled: false,
        seed: 3,
    });
    Trace {
        ranks,
        experts,
        top_k: Some(8),
        steps: (0..steps).map(|_| workload.next_step()).collect(),
        layouts: Vec::new(),
    }
}

/// The engine's model in the engine-written traces: 2 layers of 128 small experts.
pub fn small_model() -> ultraep_runtime::ModelShape {
    ultraep_runtime::ModelShape {
        layers: 2,
        experts: 128,
        top_k: 8,
        hidden: 16,
        expert_width: 16,
        dtype: ultraep_runtime::Dtype::Bf16,
    }
}

/// An empty scratch folder of its own for `test`, in this crate's and process's name.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{}-{test}-{}",
        env!("CARGO_PKG_NAME"),
        std::process::id()
    ));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
