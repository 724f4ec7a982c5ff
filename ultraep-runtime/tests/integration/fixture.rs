//! The engine every test starts from: one HGX node, 8 ranks of 4 experts, 2 slots, 3 layers.

use ultraep_plan::{ExpertLayout, PlanConfig};
use ultraep_runtime::{Dtype, Engine, EngineConfig, Mode, ModelShape, StepId};
use ultraep_topo::Preset;
use ultraep_xfer::TransferConfig;

/// Experts of 64 x 64 in FP32: 48 KiB of weights, and as much gradient.
pub(crate) const STATE: u64 = 3 * 64 * 64 * 4;
pub(crate) const GRADIENT: u64 = STATE;

/// Layer `layer` of microbatch 0.
pub(crate) fn s(layer: u32) -> StepId {
    StepId::new(0, layer)
}

/// One HGX node, 4 experts per rank, 2 slots, 3 layers, training (with gradients).
pub(crate) fn base_config() -> EngineConfig {
    EngineConfig {
        topology: Preset::HgxH100.topology(1).unwrap(),
        layout: ExpertLayout::contiguous(8, 4).unwrap(),
        model: ModelShape {
            layers: 3,
            experts: 32,
            top_k: 4,
            hidden: 64,
            expert_width: 64,
            dtype: Dtype::F32,
        },
        mode: Mode::Training,
        slots_per_rank: 2,
        staging_slots: 0,
        microbatches_in_flight: 1,
        prefer_resident_replicas: true,
        hold_forward: false,
        plan: PlanConfig {
            min_replica_tokens: 16,
            ..PlanConfig::default()
        },
        transfer: TransferConfig {
            tile_bytes: 4096,
            chunk_bytes: 16384,
            ..TransferConfig::default()
        },
        workers: 2,
    }
}

/// Writes a zero gradient for every replica of `step` and reduces: the end of its backward.
pub(crate) fn finish_backward(engine: &mut Engine, step: StepId) {
    let instances = engine.plan(step).unwrap().instances().len() as u32;
    let zeros = vec![0f32; (GRADIENT / 4) as usize];
    for instance in 0..instances {
        if engine.replica_slot(step, instance).is_some() {
            engine
                .write_replica_gradient(step, instance, &zeros)
                .unwrap();
        }
    }
    engine.reduce_gradients(step).unwrap();
}

/// The engine of [`base_config`], every master written with [`weights`] version 0.
pub(crate) fn engine() -> Engine {
    engine_with(base_config())
}

/// An engine of `config` (3 layers of 32 experts), every master written with [`weights`].
pub(crate) fn engine_with(config: EngineConfig) -> Engine {
    let mut engine = Engine::new(config).unwrap();
    for layer in 0..3 {
        for expert in 0..32 {
            engine
                .write_master(layer, expert, &weights(layer, expert, 0))
                .unwrap();
        }
    }
    engine
}

pub(crate) fn weights(layer: u32, expert: u32, version: u32) -> Vec<u8> {
    (0..STATE as u32)
        .map(|i| (i ^ (layer * 97 + expert * 13 + version * 7)) as u8)
        .collect()
}

/// 8 ranks x 32 experts, `hot` taking most of every rank's tokens.
pub(crate) fn loads(hot: usize) -> Vec<u32> {
    let mut loads = vec![40u32; 8 * 32];
    for source in 0..8 {
        loads[source * 32 + hot] = 3000;
    }
    loads
}

/// Runs `work` on every item, each on a thread of its own (one rank of a group, as a process
/// would be), and returns what each returned, in order; a panic on any thread fails the test.
pub(crate) fn on_threads<T: Send, R: Send>(
    items: impl IntoIterator<Item = T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    })
}
