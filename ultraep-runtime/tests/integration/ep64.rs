//! The published EP64 shape on the engine: 64 ranks of one GB200 NVL72 domain, 4 experts and 2
//! slots per rank, loads from the published generator at initial imbalance 1.5, 2.0 and 3.0.
//! Experts are small (64 x 64 in FP32, 48 KiB) so that every layer's masters fit in memory; the
//! shape of the work is the published one. Shared by the allocation test and the step benchmark.

use ultraep_plan::PlanConfig;
use ultraep_plan::reference::{ReferenceLoad, ReferenceScenario};
use ultraep_runtime::{Dtype, Engine, EngineConfig, Mode, ModelShape};
use ultraep_topo::{Preset, TopologyBuilder};
use ultraep_xfer::TransferConfig;

/// MoE layers of the engine.
pub const LAYERS: u32 = 3;

/// The loads of the published scenario at initial imbalance 1.5, 2.0 and 3.0.
pub fn ep64_loads() -> Vec<ReferenceLoad> {
    [1.5, 2.0, 3.0]
        .into_iter()
        .map(|target| ReferenceScenario::published(target).generate())
        .collect()
}

/// The engine, every master written, moving weights with `workers` threads.
pub fn ep64_engine(workers: usize) -> Engine {
    ep64_engine_with(workers, true)
}

/// The configuration: prefill, weights moved by `workers` threads; the planner prefers replicas
/// whose weights are in place if `prefer_resident`.
pub fn ep64_config(workers: usize, prefer_resident: bool) -> EngineConfig {
    let scenario = ReferenceScenario::published(2.0);
    let preset = Preset::Gb200Nvl72;
    let topology = TopologyBuilder::new("64 GPUs of a GB200 NVL72")
        .accelerator(preset.accelerator())
        .domain("rack0", 0..64, preset.links())
        .build()
        .expect("a valid topology");
    let model = ModelShape {
        layers: LAYERS,
        experts: scenario.num_experts(),
        top_k: scenario.top_k,
        hidden: 64,
        expert_width: 64,
        dtype: Dtype::F32,
    };
    EngineConfig {
        topology,
        layout: scenario.layout().expect("a valid layout"),
        model,
        mode: Mode::Prefill,
        slots_per_rank: scenario.slots_per_rank as u16,
        staging_slots: 0,
        microbatches_in_flight: 1,
        prefer_resident_replicas: prefer_resident,
        hold_forward: false,
        plan: PlanConfig::default(),
        transfer: TransferConfig {
            tile_bytes: 4096,
            chunk_bytes: 16384,
            ..TransferConfig::default()
        },
        workers,
    }
}

/// The engine, every master written, moving weights with `workers` threads; the planner prefers
/// replicas whose weights are in place if `prefer_resident`.
pub fn ep64_engine_with(workers: usize, prefer_resident: bool) -> Engine {
    let config = ep64_config(workers, prefer_resident);
    let model = config.model;
    let mut engine = Engine::new(config).expect("a valid engine");
    let bytes = model.expert_state().expect("a valid state").bytes() as usize;
    for layer in 0..LAYERS {
        for expert in 0..model.experts {
            let weights = vec![(layer * 7 + expert) as u8; bytes];
            engine
                .write_master(layer, expert, &weights)
                .expect("masters fit");
        }
    }
    engine
}
