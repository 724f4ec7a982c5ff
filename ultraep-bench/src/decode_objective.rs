//! Decode under the token objective and the cost-aware one: simulated step times against no
//! balancing, batch size by batch size.
//!
//! In decode an expert sees a handful of tokens and its time is mostly the read of its weights,
//! which a replica reads again on its own rank. The token objective ignores that read; the
//! cost-aware objective ([`ultraep_plan::InstanceCost`]) charges every instance its weight read
//! (the model's expert bytes at the device's memory bandwidth) plus its tokens' FLOPs (at the
//! scenario's fitted expert GEMM rate), in picoseconds. The cost-aware variant also keeps the
//! replicas of a plan only when the busiest rank's predicted saving, in its own cost model,
//! exceeds what the replicas add to the critical path (the simulated weight transfer, the task
//! lists and the part of the reroute the transfer does not hide); otherwise it runs the
//! masters-only plan, which needs no transfer and no reroute.
//!
//! Every figure is simulated by the MoE step simulator ([`crate::step`]) with the published
//! per-layer costs ([`crate::step::Overheads`]): both ultraep variants pay the load all-gather
//! and the planning on every layer, whether or not they replicate, because the plan needs the
//! layer's exact counts.

use serde::Serialize;
use ultraep_plan::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, NoBalance, Plan, PlanConfig, Planner,
};
use ultraep_topo::Topology;
use ultraep_xfer::{ExpertState, ReplicaSet, TransferConfig, TransferSchedule, simulate};

use crate::BenchError;
use crate::experiment::{
    RunConfig, Scenario, ScenarioSetup, StepFrame, transfer_config, workload_config,
};
use crate::step::{Hardware, layer_outcome};
use crate::workload::Workload;

/// Tokens per rank the decode comparison runs (sequences decoding one token each).
pub const BATCH_SIZES: [u32; 5] = [16, 32, 64, 128, 256];

/// One batch size's simulated figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DecodePoint {
    /// Tokens per rank.
    pub tokens_per_rank: u32,
    /// Mean step seconds with masters only.
    pub none_seconds: f64,
    /// Mean step seconds under the token objective.
    pub tokens_seconds: f64,
    /// Mean step seconds under the cost-aware objective.
    pub cost_seconds: f64,
    /// The largest ratio of a step's time under the cost-aware objective to its time with masters
    /// only, over the steps.
    pub cost_worst_ratio: f64,
    /// The same for the token objective.
    pub tokens_worst_ratio: f64,
    /// Steps where the cost-aware objective is slower than masters only.
    pub cost_slower_steps: u32,
    /// The same ratio and count with the all-gather and planning left out: what the objective
    /// itself decides (expert compute, all-to-all, transfers, task lists, reroute).
    pub cost_worst_ratio_decided: f64,
    /// Steps where the cost-aware objective's decided part is slower than masters only.
    pub cost_slower_steps_decided: u32,
    /// Replicas per layer under each objective (the cost-aware one after its gate).
    pub tokens_replicas: f64,
    /// Replicas per layer under the cost-aware objective.
    pub cost_replicas: f64,
    /// Steps run.
    pub steps: u32,
}

/// The instance cost of `scenario`'s experts on `hardware`, in picoseconds.
pub fn decode_cost(scenario: &Scenario, hardware: &Hardware) -> Result<InstanceCost, BenchError> {
    let model = scenario.model;
    let gemm_rate = hardware.peak_flops * hardware.efficiency.experts;
    Ok(InstanceCost::from_rates(
        model.expert_bytes(),
        hardware.memory_bandwidth as u64,
        model.expert_flops_per_token(),
        gemm_rate as u64,
    )?)
}

/// Runs the decode scenario at every batch size of [`BATCH_SIZES`].
pub fn run_decode_objective(
    scenario: &Scenario,
    run: &RunConfig,
    progress: &mut dyn FnMut(),
) -> Result<Vec<DecodePoint>, BenchError> {
    BATCH_SIZES
        .iter()
        .map(|&tokens_per_rank| {
            let scenario = Scenario {
                tokens_per_rank,
                ..*scenario
            };
            decode_point(&scenario, run, progress)
        })
        .collect()
}

fn decode_point(
    scenario: &Scenario,
    run: &RunConfig,
    progress: &mut dyn FnMut(),
) -> Result<DecodePoint, BenchError> {
    let ScenarioSetup {
        topology,
        hardware,
        ranks,
        experts,
        layout,
        labels,
        domains,
    } = ScenarioSetup::of(scenario, run)?;
    let model = scenario.model;
    let cost = decode_cost(scenario, &hardware)?;
    // Decode's pieces are a few tokens: no minimum quota beyond one token for either objective.
    let planner = |cost| {
        Planner::new(
            layout.clone(),
            domains.clone(),
            run.slots_per_rank,
            PlanConfig {
                min_replica_tokens: 1,
                cost,
                ..PlanConfig::default()
            },
        )
    };
    let mut by_tokens = planner(InstanceCost::TOKENS)?;
    let mut by_cost = planner(cost)?;
    let mut none = NoBalance::new(layout.clone(), domains)?;
    let weights = ExpertState::swiglu(model.hidden, model.expert_width, model.weight_bytes);
    let transfer_config = transfer_config(run);
    let overheads = run.overheads;
    let sunk = overheads.all_gather(&hardware, ranks, model.routed_experts) + overheads.planning;
    let layer_scale = f64::from(model.moe_layers) / f64::from(run.layers);

    let charge = |plan: &Plan| charge_of(plan, &layout, &topology, &weights, transfer_config, run);
    let mut workload = Workload::new(workload_config(scenario, run));
    for _ in 0..run.warmup_steps {
        workload.next_step();
    }
    let (mut masters, mut planned, mut scratch) =
        (Plan::default(), Plan::default(), Plan::default());
    let mut totals = [0.0f64; 3];
    let mut replicas = [0.0f64; 2];
    let (mut worst, mut worst_tokens, mut worst_decided) = (0.0f64, 0.0f64, 0.0f64);
    let (mut slower, mut slower_decided) = (0u32, 0u32);
    for _ in 0..run.steps {
        let layers = workload.next_step();
        let frame = StepFrame::of(scenario, &hardware, ranks, &layers);
        // Seconds of the step for none, tokens, cost; and the cost variant's decided part.
        let mut step = [frame.outside_seconds; 3];
        let mut decided = [0.0f64; 2];
        for loads in &layers {
            let matrix = LoadMatrix::new(loads, ranks as usize, experts)?;
            none.plan_into(matrix, &mut masters)?;
            let layer = |plan: &Plan, charged: f64| {
                layer_outcome(
                    &model,
                    scenario.mode,
                    &hardware,
                    plan,
                    matrix,
                    scenario.sequence,
                    &labels,
                    charged,
                )
                .time
                .total()
            };
            let base = layer(&masters, 0.0);
            step[0] += base * layer_scale;
            decided[0] += base * layer_scale;
            by_tokens.plan_into(matrix, &mut planned)?;
            replicas[0] += f64::from(planned.metrics().replicas);
            step[1] += layer(&planned, charge(&planned)? + sunk) * layer_scale;
            by_cost.plan_into(matrix, &mut scratch)?;
            let charged_by_replicas = charge(&scratch)?;
            // The gate: replicas only where the busiest rank's predicted saving pays for what
            // they put on the critical path.
            let saving_ps = busiest_cost(&masters, cost, ranks)
                .saturating_sub(busiest_cost(&scratch, cost, ranks));
            let keep =
                scratch.metrics().replicas > 0 && saving_ps as f64 * 1e-12 > charged_by_replicas;
            let (plan, charged) = if keep {
                (&scratch, charged_by_replicas)
            } else {
                (&masters, 0.0)
            };
            replicas[1] += if keep {
                f64::from(scratch.metrics().replicas)
            } else {
                0.0
            };
            let time = layer(plan, charged);
            step[2] += (time + sunk) * layer_scale;
            decided[1] += time * layer_scale;
        }
        for (total, seconds) in totals.iter_mut().zip(step) {
            *total += seconds;
        }
        worst = worst.max(step[2] / step[0]);
        worst_tokens = worst_tokens.max(step[1] / step[0]);
        worst_decided = worst_decided.max(decided[1] / decided[0]);
        slower += u32::from(step[2] > step[0]);
        slower_decided += u32::from(decided[1] > decided[0] * (1.0 + 1e-12));
        progress();
    }
    let steps = f64::from(run.steps.max(1));
    let layers = steps * f64::from(run.layers.max(1));
    Ok(DecodePoint {
        tokens_per_rank: scenario.tokens_per_rank,
        none_seconds: totals[0] / steps,
        tokens_seconds: totals[1] / steps,
        cost_seconds: totals[2] / steps,
        cost_worst_ratio: worst,
        tokens_worst_ratio: worst_tokens,
        cost_slower_steps: slower,
        cost_worst_ratio_decided: worst_decided,
        cost_slower_steps_decided: slower_decided,
        tokens_replicas: replicas[0] / layers,
        cost_replicas: replicas[1] / layers,
        steps: run.steps,
    })
}

/// The largest rank cost of `plan` under `cost`.
fn busiest_cost(plan: &Plan, cost: InstanceCost, ranks: u32) -> u64 {
    let mut per_rank = vec![0u64; ranks as usize];
    for instance in plan.instances() {
        if let Some(rank) = per_rank.get_mut(instance.rank as usize) {
            *rank = rank.saturating_add(cost.of(u64::from(instance.quota)));
        }
    }
    per_rank.into_iter().max().unwrap_or(0)
}

/// Seconds `plan` puts on the critical path besides compute, all-to-all, all-gather and
/// planning: with replicas, the simulated weight transfer, the task lists and the reroute beyond
/// the transfer.
fn charge_of(
    plan: &Plan,
    layout: &ExpertLayout,
    topology: &Topology,
    weights: &ExpertState,
    transfer_config: TransferConfig,
    run: &RunConfig,
) -> Result<f64, BenchError> {
    if plan.metrics().replicas == 0 {
        return Ok(0.0);
    }
    let overheads = run.overheads;
    let replicas = ReplicaSet::from_plan(plan, layout, topology)?;
    let schedule = TransferSchedule::build(&replicas, weights, topology, transfer_config)?;
    let transfer = simulate(&schedule, topology)?.makespan_ps as f64 * 1e-12;
    Ok(transfer + overheads.task_lists + (overheads.reroute - transfer).max(0.0))
}
/// The comparison as a markdown table (simulated figures).
pub fn decode_table(scenario: &Scenario, points: &[DecodePoint]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} at 16-256 tokens per rank (simulated by the MoE step simulator; mean step time, \
         worst step against no balancing, steps slower than no balancing; \"decided\" leaves out \
         the all-gather and planning every ultraep layer pays):\n\n\
         | tokens per rank | none (ms) | token objective (ms) | cost-aware (ms) | worst step: tokens / cost-aware | cost-aware slower steps | decided: worst / slower steps | replicas per layer: tokens / cost-aware |\n\
         |---|---|---|---|---|---|---|---|\n",
        scenario.name
    );
    for point in points {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2}x / {:.3}x | {} of {} | {:.3}x / {} | {:.1} / {:.1} |",
            point.tokens_per_rank,
            point.none_seconds * 1e3,
            point.tokens_seconds * 1e3,
            point.cost_seconds * 1e3,
            point.tokens_worst_ratio,
            point.cost_worst_ratio,
            point.cost_slower_steps,
            point.steps,
            point.cost_worst_ratio_decided,
            point.cost_slower_steps_decided,
            point.tokens_replicas,
            point.cost_replicas,
        );
    }
    out
}
