//! What a run of the experiments is asked to do: steps, layers, slots, EPLB's cadence, ultraep's
//! options, the seed and the costs charged.

use serde::Serialize;

use crate::step::{Efficiency, Overheads};

/// How long and how wide a run is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunConfig {
    /// Steps (microbatches) replayed and measured.
    pub steps: u32,
    /// Steps replayed before the measured ones, so that balancers that plan from history (EPLB)
    /// start warm: they see these loads and re-plan once at their end. Not measured.
    pub warmup_steps: u32,
    /// MoE layers simulated per step (the step time scales them to the model's layer count).
    pub layers: u32,
    /// Redundant slots per rank (every balancer gets the same budget).
    pub slots_per_rank: u32,
    /// Steps of history EPLB plans from.
    pub eplb_window: u32,
    /// EPLB re-plans every this many steps.
    pub eplb_interval: u32,
    /// Whether ultraep may use relays.
    pub relays: bool,
    /// Whether ultraep's planner weighs transfers among plans as balanced
    /// ([`ultraep_plan::TransferEstimate`], from the model's weights, the link and the expert
    /// GEMMs' rate).
    pub transfer_aware: bool,
    /// Seed of the workload.
    pub seed: u64,
    /// What the published system pays per layer, charged to every balancer that pays it.
    pub overheads: Overheads,
    /// The compute rates of the step simulator; `None` takes the scenario's
    /// ([`crate::experiment::Scenario::efficiency`]).
    pub efficiency: Option<Efficiency>,
}

impl RunConfig {
    /// About a minute on two cores for all seven scenarios.
    pub const QUICK: Self = Self {
        steps: 12,
        warmup_steps: 3,
        layers: 6,
        slots_per_rank: 2,
        eplb_window: 3,
        eplb_interval: 4,
        relays: true,
        transfer_aware: false,
        seed: 2026,
        overheads: Overheads::PUBLISHED,
        efficiency: None,
    };

    /// More steps and layers.
    pub const FULL: Self = Self {
        steps: 48,
        warmup_steps: 8,
        layers: 16,
        slots_per_rank: 2,
        eplb_window: 8,
        eplb_interval: 12,
        relays: true,
        transfer_aware: false,
        seed: 2026,
        overheads: Overheads::PUBLISHED,
        efficiency: None,
    };
}
