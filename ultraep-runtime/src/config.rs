//! How an engine is built: the machine, where experts live, the model, and the knobs of planning
//! and transfers.

use ultraep_plan::{ExpertLayout, PlanConfig};
use ultraep_topo::Topology;
use ultraep_xfer::TransferConfig;

use crate::{Mode, ModelShape};

/// What an engine is built for.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The machine: one rank per GPU of the expert-parallel group.
    pub topology: Topology,
    /// Where every expert of a layer lives (the same for every layer).
    pub layout: ExpertLayout,
    /// The model's MoE shape; its `experts` must match the layout.
    pub model: ModelShape,
    /// Training or forward only.
    pub mode: Mode,
    /// Redundant slots per rank, shared by all layers.
    pub slots_per_rank: u16,
    /// Microbatches that may be between their first step and the end of their backward at once
    /// (pipeline parallelism keeps several in flight); at least 1.
    pub microbatches_in_flight: u16,
    /// The planner's configuration.
    pub plan: PlanConfig,
    /// Let the planner put replicas where slots already hold the expert's current weights, when
    /// that costs no balance (no copy is then needed).
    pub prefer_resident_replicas: bool,
    /// Hold a step's slots from its step until [`crate::Engine::release_forward`], so that no
    /// other step (the next layer's, planned and prefetched while this one computes) takes them;
    /// a step that would need a held slot is refused with [`crate::RuntimeError::SlotsBusy`].
    /// Off, a later step may take them, and the earlier step's replicas turn stale.
    pub hold_forward: bool,
    /// How weights are cut up and moved.
    pub transfer: TransferConfig,
    /// Worker threads of the CPU backend.
    pub workers: usize,
}
