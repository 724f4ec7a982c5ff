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
//! Both variants plan every layer. A third runs the cost-aware objective behind the slow loop's
//! layer gate (`LayerGate`): a layer is gathered and planned on the critical path only while
//! balancing it has paid, twice over its all-gather and planning, on each of its last steps;
//! otherwise it runs with masters only, at no cost.
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
    /// Mean step seconds under the cost-aware objective behind the slow loop's layer gate (a
    /// layer is gathered and planned only while that has paid on its recent steps).
    pub gated_seconds: f64,
    /// The largest ratio of a step's time behind the layer gate to its time with masters only.
    pub gated_worst_ratio: f64,
    /// Steps where the gated cost-aware objective is slower than masters only.
    pub gated_slower_steps: u32,
    /// The share of (step, layer)s the layer gate balanced.
    pub gated_balanced_layers: f64,
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
    let (mut masters, mut planned, mut scratch) =
        (Plan::default(), Plan::default(), Plan::default());
    let mut gates = vec![LayerGate::new(sunk); run.layers as usize];
    let mut totals = [0.0f64; 4];
    let mut replicas = [0.0f64; 2];
    let (mut worst, mut worst_tokens, mut worst_decided, mut worst_gated) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut slower, mut slower_decided, mut slower_gated) = (0u32, 0u32, 0u32);
    let mut balanced_layers = 0u32;
    // The warm-up steps only teach the layer gates, as a deployment that has been running would
    // have taught them.
    for index in 0..run.warmup_steps + run.steps {
        let measured = index >= run.warmup_steps;
        let layers = workload.next_step();
        let frame = StepFrame::of(scenario, &hardware, ranks, &layers);
        // Seconds of the step for none, tokens, cost-aware, cost-aware behind its layer gate;
        // and the cost-aware variant's decided part, against none's.
        let mut step = [frame.outside_seconds; 4];
        let mut decided = [0.0f64; 2];
        for (loads, gate) in layers.iter().zip(&mut gates) {
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
            by_tokens.plan_into(matrix, &mut planned)?;
            let tokens_time = layer(&planned, charge(&planned)? + sunk);
            by_cost.plan_into(matrix, &mut scratch)?;
            let charged_by_replicas = charge(&scratch)?;
            // The replica gate: replicas only where the busiest rank's predicted saving pays for
            // what they put on the critical path.
            let saving_ps = busiest_cost(&masters, cost, ranks)
                .saturating_sub(busiest_cost(&scratch, cost, ranks));
            let kept =
                scratch.metrics().replicas > 0 && saving_ps as f64 * 1e-12 > charged_by_replicas;
            let cost_time = if kept {
                layer(&scratch, charged_by_replicas)
            } else {
                base
            };
            if measured {
                replicas[0] += f64::from(planned.metrics().replicas);
                if kept {
                    replicas[1] += f64::from(scratch.metrics().replicas);
                }
                step[0] += base * layer_scale;
                step[1] += tokens_time * layer_scale;
                step[2] += (cost_time + sunk) * layer_scale;
                step[3] += layer_scale
                    * if gate.on() {
                        balanced_layers += 1;
                        cost_time + sunk
                    } else {
                        base
                    };
                decided[0] += base * layer_scale;
                decided[1] += cost_time * layer_scale;
            }
            // What balancing this layer would have saved, all-gather and planning included:
            // known once the step is done, it decides the layer's next steps.
            gate.learn(base - (cost_time + sunk));
        }
        if !measured {
            continue;
        }
        for (total, seconds) in totals.iter_mut().zip(step) {
            *total += seconds;
        }
        worst = worst.max(step[2] / step[0]);
        worst_tokens = worst_tokens.max(step[1] / step[0]);
        worst_gated = worst_gated.max(step[3] / step[0]);
        worst_decided = worst_decided.max(decided[1] / decided[0]);
        slower += u32::from(step[2] > step[0]);
        slower_gated += u32::from(step[3] > step[0]);
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
        gated_seconds: totals[3] / steps,
        cost_worst_ratio: worst,
        tokens_worst_ratio: worst_tokens,
        cost_slower_steps: slower,
        cost_worst_ratio_decided: worst_decided,
        cost_slower_steps_decided: slower_decided,
        gated_worst_ratio: worst_gated,
        gated_slower_steps: slower_gated,
        gated_balanced_layers: f64::from(balanced_layers) / layers,
        tokens_replicas: replicas[0] / layers,
        cost_replicas: replicas[1] / layers,
        steps: run.steps,
    })
}

/// The slow loop's decision for one layer in decode: balance it (gather its counts and plan on
/// the critical path) only while balancing saved, on each of the layer's last
/// [`LayerGate::WINDOW`] steps, its all-gather and planning and as much again (the margin that
/// keeps a layer whose saving drifts below its cost from making a step slower). It learns from
/// steps already done (their counts, gathered and planned off the critical path), so deciding
/// costs the critical path nothing; off, the layer runs exactly as with masters only.
#[derive(Debug, Clone, Copy)]
struct LayerGate {
    /// Seconds a net saving must exceed on every recent step.
    margin: f64,
    /// The net saving of balancing on the layer's last steps, most recent at `next - 1`.
    recent: [f64; LayerGate::WINDOW],
    next: usize,
    seen: usize,
}

impl LayerGate {
    /// Steps of evidence the gate wants before it switches balancing on.
    const WINDOW: usize = 4;

    /// A gate that has seen nothing, for a layer whose all-gather and planning cost `sunk`
    /// seconds.
    fn new(sunk: f64) -> Self {
        Self {
            margin: sunk,
            recent: [0.0; Self::WINDOW],
            next: 0,
            seen: 0,
        }
    }

    fn learn(&mut self, net_saving: f64) {
        self.recent[self.next] = net_saving;
        self.next = (self.next + 1) % Self::WINDOW;
        self.seen += 1;
    }

    fn on(&self) -> bool {
        self.seen >= Self::WINDOW && self.recent.iter().all(|&saving| saving > self.margin)
    }
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
         worst step against no balancing, steps slower than no balancing. \"Every layer\" \
         gathers and plans every layer; \"gated\" only the layers where the slow loop saw \
         balancing save twice its all-gather and planning on each of their last 4 steps; \"decided\" leaves out the all-gather and \
         planning):\n\n\
         | tokens per rank | none (ms) | token objective (ms) | cost-aware, every layer (ms) | cost-aware, gated (ms) | worst step: tokens / every layer / gated | slower steps: every layer / gated | decided: worst / slower steps | layers balanced (gated) | replicas per layer: tokens / cost-aware |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        scenario.name
    );
    for point in points {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x / {:.3}x / {:.3}x | {} / {} of {} | {:.3}x / {} | {:.0}% | {:.1} / {:.1} |",
            point.tokens_per_rank,
            point.none_seconds * 1e3,
            point.tokens_seconds * 1e3,
            point.cost_seconds * 1e3,
            point.gated_seconds * 1e3,
            point.tokens_worst_ratio,
            point.cost_worst_ratio,
            point.gated_worst_ratio,
            point.cost_slower_steps,
            point.gated_slower_steps,
            point.steps,
            point.cost_worst_ratio_decided,
            point.cost_slower_steps_decided,
            point.gated_balanced_layers * 100.0,
            point.tokens_replicas,
            point.cost_replicas,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::LayerGate;

    #[test]
    fn the_gate_opens_after_a_window_of_savings_and_closes_at_one_shortfall() {
        let mut gate = LayerGate::new(1.0);
        for _ in 0..LayerGate::WINDOW - 1 {
            gate.learn(2.5);
            assert!(!gate.on(), "too little evidence yet");
        }
        gate.learn(2.5);
        assert!(gate.on());
        // A saving that covers the cost once but not twice closes it for a whole window.
        gate.learn(0.5);
        for _ in 0..LayerGate::WINDOW {
            assert!(!gate.on());
            gate.learn(2.5);
        }
        assert!(gate.on());
        gate.learn(-3.0);
        assert!(!gate.on());
    }
}
