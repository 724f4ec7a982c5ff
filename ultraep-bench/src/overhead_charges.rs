//! What ultraep puts on a layer's critical path in the experiments: its planner and transfer
//! settings for a run, and the charges from the published costs and the transfer simulator.

use ultraep_plan::{EplbReplace, ExpertLayout, Plan, PlanConfig, TransferEstimate};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, RelayPieces, ReplicaSet, ReplicaSetBuilder, TransferConfig, TransferSchedule,
    simulate, simulate_reduction,
};

use crate::BenchError;
use crate::results::OverheadBreakdown;
use crate::run_config::RunConfig;
use crate::scenario::Scenario;
use crate::step::{Hardware, Mode, Overheads};

/// ultraep's planner settings in a run: the defaults, with a transfer estimate if the run weighs
/// transfers (one expert's weights over the link against one token's expert GEMMs at the
/// scenario's rate).
pub(crate) fn ultraep_plan_config(
    run: &RunConfig,
    scenario: &Scenario,
    hardware: &Hardware,
) -> Result<PlanConfig, BenchError> {
    if !run.transfer_aware {
        return Ok(PlanConfig::default());
    }
    let model = scenario.model;
    let weights = ExpertState::swiglu(model.hidden, model.expert_width, model.weight_bytes);
    let copy_ps = weights.bytes() as f64 / hardware.link_bandwidth * 1e12;
    let token_ps = model.expert_flops_per_token() as f64
        / (hardware.peak_flops * hardware.efficiency.experts)
        * 1e12;
    Ok(PlanConfig {
        transfer: Some(TransferEstimate::from_times(
            copy_ps.ceil() as u64,
            (token_ps.ceil() as u64).max(1),
        )?),
        ..PlanConfig::default()
    })
}

/// The transfer settings ultraep's weight copies use in a run: relays as the run says, relayed
/// per chunk, at the run's transfer costs.
pub(crate) fn transfer_config(run: &RunConfig) -> TransferConfig {
    TransferConfig {
        allow_relays: run.relays,
        relay_pieces: RelayPieces::Chunks,
        costs: run.overheads.transfer_costs(),
        ..TransferConfig::default()
    }
}

/// One ultraep layer's plan and what its overheads depend on.
pub(crate) struct UltraepLayer<'a> {
    pub plan: &'a Plan,
    pub layout: &'a ExpertLayout,
    pub topology: &'a Topology,
    pub scenario: &'a Scenario,
    pub hardware: &'a Hardware,
    pub weights: &'a ExpertState,
    pub gradients: &'a ExpertState,
    pub transfer_config: TransferConfig,
    pub overheads: Overheads,
    /// Seconds of the load all-gather.
    pub all_gather: f64,
    /// Tokens of the layer, over all ranks.
    pub tokens: u64,
    pub ranks: u32,
}

/// What ultraep puts on one layer's critical path, from the published costs and the transfer
/// simulator: the all-gather and planning, and with replicas the task lists, the weight transfer
/// (twice in training: again before backward, the slots having been reused by later layers),
/// the gradient reduction where attention backward does not hide it, and the reroute beyond the
/// transfer it runs beside.
pub(crate) fn ultraep_overheads(layer: &UltraepLayer<'_>) -> Result<OverheadBreakdown, BenchError> {
    let overheads = layer.overheads;
    let mut charged = OverheadBreakdown {
        all_gather_us: layer.all_gather * 1e6,
        planning_us: overheads.planning * 1e6,
        ..OverheadBreakdown::default()
    };
    let mut transfer = 0.0;
    if layer.plan.metrics().replicas > 0 {
        let replicas = ReplicaSet::from_plan(layer.plan, layer.layout, layer.topology)?;
        let schedule = TransferSchedule::build(
            &replicas,
            layer.weights,
            layer.topology,
            layer.transfer_config,
        )?;
        let simulation = simulate(&schedule, layer.topology)?;
        transfer = simulation.makespan_ps as f64 * 1e-12;
        let port_bound = simulation.busiest_port_ps as f64 * 1e-6;
        charged.transfer_port_bound_us += port_bound;
        if layer.scenario.mode == Mode::Training {
            charged.transfer_port_bound_us += port_bound;
        }
        charged.task_lists_us = overheads.task_lists * 1e6;
        if layer.scenario.mode == Mode::Training {
            let reduction_schedule = TransferSchedule::build(
                &replicas,
                layer.gradients,
                layer.topology,
                layer.transfer_config,
            )?;
            let reduction =
                simulate_reduction(&reduction_schedule, layer.topology)?.makespan_ps as f64 * 1e-12;
            let model = layer.scenario.model;
            let hidden_by = 2.0 * layer.tokens as f64 / f64::from(layer.ranks)
                * model.balanced_flops_per_token(layer.scenario.sequence) as f64
                / (layer.hardware.peak_flops * layer.hardware.efficiency.dense);
            charged.reduction_us = (reduction - hidden_by).max(0.0) * 1e6;
            charged.transfer_us += transfer * 1e6;
        }
    }
    charged.transfer_us += transfer * 1e6;
    charged.reroute_us = (overheads.reroute - transfer).max(0.0) * 1e6;
    Ok(charged)
}

/// The copies `replace`'s last re-placement created, as fan-outs from each expert's master
/// before it.
pub(crate) fn moved_copies(replace: &EplbReplace) -> Result<ReplicaSet, BenchError> {
    let mut copies = ReplicaSetBuilder::default();
    // Each copy lands in a place of its own on its rank, numbered in arrival order: the timing
    // needs distinct destinations, not the memory EPLB's placement would use.
    let mut landed: std::collections::BTreeMap<u32, u16> = std::collections::BTreeMap::new();
    for &(expert, rank) in replace.moved() {
        let place = landed.entry(rank).or_insert(0);
        copies.add(expert, replace.previous_home(expert), 0, (rank, *place))?;
        *place = place.saturating_add(1);
    }
    Ok(copies.finish()?.clone())
}
