//! Groups that span scale-up domains, with and without the slow loop: domain-level imbalance,
//! simulated throughput, and what the migrations move.
//!
//! Four runs of the same drifting loads: masters only; EPLB's hierarchical mode
//! ([`ultraep_plan::EplbHierarchical`], re-packing masters across domains and placing copies in
//! them every `eplb_interval` steps from a window of past loads, its moves charged on the critical
//! path of the step that re-plans); ultraep inside each domain on the original layout (replicas
//! cannot leave their master's domain, so the imbalance between domains stays); and ultraep with
//! the slow loop, which every [`SlowLoop::interval`] steps re-places
//! masters across domains from a decaying history of the loads ([`ultraep_plan::rehome`]) and
//! moves them in the background ([`ultraep_xfer::LayoutTransition`]): each step hands out at most
//! half of what the scale-out port leaves idle during the previous step, the new layout is
//! switched in at the step boundary after every byte landed (the simulator's copies do not fail),
//! and the per-microbatch planner then works on the new layout. The migration shares each rank's
//! scale-out port with the step's all-to-all: it uses the time the busiest port it crosses leaves
//! idle in its own step, and whatever it needs beyond that is added to the step's time (a budget
//! set from the step before can be too much for a step whose all-to-all grew).
//!
//! Every time is simulated by the MoE step simulator ([`crate::step`]) with the published
//! per-layer costs; the planner's host time is not used.

use serde::Serialize;
use std::collections::VecDeque;

use ultraep_plan::{
    Balancer, EplbHierarchical, ExpertLayout, LoadHistory, LoadMatrix, NoBalance, Plan, PlanConfig,
    Planner, RehomeConfig, rehome,
};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, LayoutTransition, MigrationChunk, TransferConfig, TransferSchedule,
    TransitionPhase, simulate,
};

use crate::BenchError;
use crate::experiment::{
    RunConfig, Scenario, ScenarioSetup, StepFrame, UltraepLayer, moved_copies, transfer_config,
    ultraep_overheads, workload_config,
};
use crate::step::{Hardware, Mode};
use crate::workload::Workload;

/// The slow loop's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlowLoop {
    /// Steps between re-placements.
    pub interval: u32,
    /// The history's decay: a step's load weighs half after about `0.69 * 2^shift` steps.
    pub history_shift: u32,
    /// What one re-placement may move and when it stops.
    pub moves: u32,
    /// Chunk size of a moving state, bytes.
    pub chunk_bytes: u64,
    /// The share of the scale-out port's idle time of a step that migrations may use.
    pub idle_share: f64,
}

impl SlowLoop {
    /// The settings of the quick and full runs: a re-placement every 4 steps from a history that
    /// halves in about 3 steps (a deployment would re-place every few hundred steps; the runs are
    /// short), at most 16 experts per re-placement and layer, 64 MiB chunks, half the idle port.
    pub const RUNS: Self = Self {
        interval: 4,
        history_shift: 2,
        moves: 16,
        chunk_bytes: 64 << 20,
        idle_share: 0.5,
    };
}

/// One spanning scenario's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossDomainResult {
    /// The scenario.
    pub scenario: &'static str,
    /// Mean over layers of the busiest domain's load over the domains' mean: none (the same for
    /// ultraep within domains, which moves no load between domains), EPLB hierarchical, and
    /// ultraep with the slow loop.
    pub domain_imbalance: [f64; 3],
    /// Mean rank imbalance (max / mean): none, EPLB hierarchical, ultraep within domains, ultraep
    /// with the slow loop.
    pub imbalance: [f64; 4],
    /// Mean step seconds, in the same order.
    pub step_seconds: [f64; 4],
    /// Experts EPLB hierarchical moved across domains (every layer counted).
    pub eplb_experts_moved: u32,
    /// Experts moved (every layer counted).
    pub experts_moved: u32,
    /// Bytes the migrations moved.
    pub bytes_moved: u64,
    /// Bytes moved per hour of steps at the slow loop's step time.
    pub bytes_per_hour: f64,
    /// Layouts switched in (every layer counted).
    pub switches: u32,
    /// Steps that waited on a migration: the chunks handed to the step took longer on their
    /// busiest scale-out port than the step left that port idle (the budget is set from the
    /// step before, so a step whose own all-to-all grew can be over it).
    pub steps_over_budget: u32,
    /// Seconds those steps waited in all: the migration's time on its busiest port beyond the
    /// step's idle port time, added to the slow loop's step time.
    pub migration_wait_seconds: f64,
    /// The largest share of a step's idle scale-out port time the migration used (above 1 where
    /// the step waited).
    pub peak_budget_share: f64,
    /// Steps run.
    pub steps: u32,
}

/// Domain loads of `plan` (tokens per domain) over their mean.
fn domain_imbalance(plan: &Plan, labels: &[u32], domains: usize) -> f64 {
    let mut loads = vec![0u64; domains];
    for (rank, &load) in plan.rank_loads().iter().enumerate() {
        loads[labels[rank] as usize] += load;
    }
    let total: u64 = loads.iter().sum();
    let max = loads.iter().copied().max().unwrap_or(0);
    if total == 0 {
        1.0
    } else {
        max as f64 * domains as f64 / total as f64
    }
}

/// Runs `scenario` (a group spanning domains) with and without the slow loop.
pub fn run_cross_domain(
    scenario: &Scenario,
    run: &RunConfig,
    slow: &SlowLoop,
    progress: &mut dyn FnMut(),
) -> Result<CrossDomainResult, BenchError> {
    let ScenarioSetup {
        topology,
        hardware,
        ranks,
        experts,
        layout: original,
        labels,
        domains,
    } = ScenarioSetup::of(scenario, run)?;
    let model = scenario.model;
    let domain_count = domains.num_domains() as usize;
    let planner = |layout: &ExpertLayout| {
        Planner::new(
            layout.clone(),
            domains.clone(),
            run.slots_per_rank,
            PlanConfig::default(),
        )
    };
    let layers = run.layers as usize;
    let mut none = NoBalance::new(original.clone(), domains.clone())?;
    let mut fixed = planner(&original)?;
    let mut hierarchical = (0..layers)
        .map(|_| EplbHierarchical::new(original.clone(), domains.clone(), run.slots_per_rank))
        .collect::<Result<Vec<_>, _>>()?;
    let mut windows: Vec<VecDeque<Vec<u32>>> = vec![VecDeque::new(); layers];
    let remember = |windows: &mut Vec<VecDeque<Vec<u32>>>, step: &[Vec<u32>]| {
        for (window, loads) in windows.iter_mut().zip(step) {
            window.push_back(loads.clone());
            while window.len() > run.eplb_window.max(1) as usize {
                window.pop_front();
            }
        }
    };
    let estimate = |window: &VecDeque<Vec<u32>>| {
        let mut sum = vec![0u32; ranks as usize * experts];
        for past in window {
            for (total, &count) in sum.iter_mut().zip(past) {
                *total = total.saturating_add(count);
            }
        }
        sum
    };
    let mut layouts = vec![original.clone(); layers];
    // Masters only on each layer's layout in force: its domains' loads, rebuilt at a switch.
    let mut masters_only = (0..layers)
        .map(|_| NoBalance::new(original.clone(), domains.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut planners = (0..layers)
        .map(|_| planner(&original))
        .collect::<Result<Vec<_>, _>>()?;
    let mut histories = (0..layers)
        .map(|_| LoadHistory::new(model.routed_experts, slow.history_shift))
        .collect::<Result<Vec<_>, _>>()?;
    let mut transitions: Vec<Option<LayoutTransition>> = vec![None; layers];
    let weights = ExpertState::swiglu(model.hidden, model.expert_width, model.weight_bytes);
    let gradients = ExpertState::swiglu_gradients(model.hidden, model.expert_width);
    // A moving master takes its weights, and in training its FP32 master weights and Adam moments.
    let moved_state = weights.bytes()
        + if scenario.mode == Mode::Training {
            12 * model.expert_params()
        } else {
            0
        };
    let transfer_config = transfer_config(run);
    let overheads = run.overheads;
    let all_gather = overheads.all_gather(&hardware, ranks, model.routed_experts);
    let layer_scale = f64::from(model.moe_layers) / f64::from(run.layers);

    let mut workload = Workload::new(workload_config(scenario, run));
    for _ in 0..run.warmup_steps {
        let step = workload.next_step();
        for (history, loads) in histories.iter_mut().zip(&step) {
            history.record(LoadMatrix::new(loads, ranks as usize, experts)?)?;
        }
        remember(&mut windows, &step);
    }
    // EPLB starts warm, as a deployment that has been running would.
    if run.warmup_steps > 0 {
        for (eplb, window) in hierarchical.iter_mut().zip(&windows) {
            eplb.rebalance(LoadMatrix::new(&estimate(window), ranks as usize, experts)?)?;
        }
    }
    let mut plan = Plan::default();
    let mut seconds = [0.0f64; 4];
    let mut imbalance = [0.0f64; 4];
    let mut domain = [0.0f64; 3];
    let mut eplb_moved = 0u32;
    let (mut experts_moved, mut bytes_moved, mut switches) = (0u32, 0u64, 0u32);
    let (mut over_budget, mut peak_share, mut waited) = (0u32, 0.0f64, 0.0f64);
    // Migration bytes through each rank's scale-out port in this step, out and in.
    let mut port_bytes = vec![0u64; ranks as usize];
    // The first step's budget: none until a step has shown how idle the scale-out port is.
    let mut budget = 0u64;
    let mut chunks: Vec<MigrationChunk> = Vec::new();
    for step in 0..run.steps {
        // A re-placement starts only when the last one of the layer has switched.
        if step % slow.interval.max(1) == 0 {
            for layer in 0..layers {
                if transitions[layer].is_some() {
                    continue;
                }
                let rehoming = rehome(
                    &layouts[layer],
                    &domains,
                    histories[layer].expected(),
                    &RehomeConfig {
                        max_moves: slow.moves,
                        ..RehomeConfig::default()
                    },
                )?;
                if !rehoming.moves.is_empty() {
                    experts_moved += rehoming.moves.len() as u32;
                    transitions[layer] = Some(LayoutTransition::new(
                        layouts[layer].clone(),
                        rehoming.layout,
                        &rehoming.moves,
                        moved_state,
                        slow.chunk_bytes,
                    )?);
                }
            }
        }
        // This step's migration chunks, within its budget; they land during the step. Nothing
        // moves on a step without a budget (the first: no step has shown the idle port yet).
        let mut handed = 0u64;
        port_bytes.fill(0);
        for transition in transitions.iter_mut().flatten() {
            let left = budget.saturating_sub(handed);
            if left < slow.chunk_bytes.min(transition.bytes_to_move()) {
                break;
            }
            transition.next_chunks(left, &mut chunks);
            for chunk in &chunks {
                transition.landed(*chunk)?;
                handed += chunk.bytes;
                port_bytes[chunk.from as usize] += chunk.bytes;
                port_bytes[chunk.to as usize] += chunk.bytes;
            }
            for expert in 0..model.routed_experts {
                if transition.awaiting_verification(expert) {
                    transition.verify(expert, true)?;
                }
            }
        }
        bytes_moved += handed;

        let replan = step > 0 && step % run.eplb_interval.max(1) == 0;
        let mut eplb_charges = vec![0.0f64; layers];
        if replan {
            for ((eplb, window), charge) in
                hierarchical.iter_mut().zip(&windows).zip(&mut eplb_charges)
            {
                eplb.rebalance(LoadMatrix::new(&estimate(window), ranks as usize, experts)?)?;
                eplb_moved += eplb.moved_masters().len() as u32;
                *charge =
                    eplb_moves_seconds(eplb, &topology, &hardware, moved_state, transfer_config)?;
            }
        }
        let frame_layers = workload.next_step();
        let frame = StepFrame::of(scenario, &hardware, ranks, &frame_layers);
        let mut step_seconds = [frame.outside_seconds; 4];
        let mut all_to_all = 0.0;
        for (layer, loads) in frame_layers.iter().enumerate() {
            let matrix = LoadMatrix::new(loads, ranks as usize, experts)?;
            let tokens =
                loads.iter().map(|&c| u64::from(c)).sum::<u64>() / u64::from(model.top_k.max(1));
            let time = |plan: &Plan, layout: &ExpertLayout, ultraep: bool| {
                let charged = if ultraep {
                    ultraep_overheads(&UltraepLayer {
                        plan,
                        layout,
                        topology: &topology,
                        scenario,
                        hardware: &hardware,
                        weights: &weights,
                        gradients: &gradients,
                        transfer_config,
                        overheads,
                        all_gather,
                        tokens,
                        ranks,
                    })?
                    .total_us()
                        * 1e-6
                } else {
                    0.0
                };
                let simulated = scenario.layer(&model, &hardware, matrix, &labels);
                Ok::<_, BenchError>(simulated.outcome(plan, charged).time)
            };
            none.plan_into(matrix, &mut plan)?;
            step_seconds[0] += time(&plan, &original, false)?.total() * layer_scale;
            imbalance[0] += plan.metrics().imbalance();
            domain[0] += domain_imbalance(&plan, &labels, domain_count);
            hierarchical[layer].plan_into(matrix, &mut plan)?;
            step_seconds[1] +=
                (time(&plan, &original, false)?.total() + eplb_charges[layer]) * layer_scale;
            imbalance[1] += plan.metrics().imbalance();
            domain[1] += domain_imbalance(&plan, &labels, domain_count);
            fixed.plan_into(matrix, &mut plan)?;
            step_seconds[2] += time(&plan, &original, true)?.total() * layer_scale;
            imbalance[2] += plan.metrics().imbalance();
            planners[layer].plan_into(matrix, &mut plan)?;
            let slow_time = time(&plan, &layouts[layer], true)?;
            step_seconds[3] += slow_time.total() * layer_scale;
            all_to_all += slow_time.all_to_all * layer_scale;
            imbalance[3] += plan.metrics().imbalance();
            // Domain loads of the layout in force, masters only: what the slow loop changes.
            masters_only[layer].plan_into(matrix, &mut plan)?;
            domain[2] += domain_imbalance(&plan, &labels, domain_count);
            histories[layer].record(matrix)?;
        }
        for (total, step_time) in seconds.iter_mut().zip(step_seconds) {
            *total += step_time;
        }
        remember(&mut windows, &frame_layers);
        // At the step boundary: every transition whose states are all verified switches in.
        for layer in 0..layers {
            if let Some(transition) = &mut transitions[layer]
                && transition.phase() == TransitionPhase::Ready
            {
                transition.switch()?;
                layouts[layer] = transition.target().clone();
                planners[layer] = planner(&layouts[layer])?;
                masters_only[layer] = NoBalance::new(layouts[layer].clone(), domains.clone())?;
                transitions[layer] = None;
                switches += 1;
            }
        }
        // The migration shares the scale-out ports with the step's all-to-all: it takes the
        // time its busiest port leaves idle, and what it needs beyond that, the step waits for.
        let idle = (step_seconds[3] - all_to_all).max(0.0);
        let busiest = port_bytes.iter().copied().max().unwrap_or(0);
        if busiest > 0 {
            let migration =
                hardware.scale_out_latency + busiest as f64 / hardware.scale_out_bandwidth;
            let wait = (migration - idle).max(0.0);
            if wait > 0.0 {
                over_budget += 1;
                waited += wait;
                seconds[3] += wait;
            }
            peak_share = peak_share.max(migration / idle.max(f64::MIN_POSITIVE));
        }
        // The next step may use `idle_share` of what this one left idle on the scale-out port.
        budget = (idle * slow.idle_share * hardware.scale_out_bandwidth) as u64;
        progress();
    }
    let steps = f64::from(run.steps.max(1));
    let layer_count = steps * f64::from(run.layers.max(1));
    let mean_seconds = seconds.map(|total| total / steps);
    Ok(CrossDomainResult {
        scenario: scenario.name,
        domain_imbalance: domain.map(|total| total / layer_count),
        imbalance: imbalance.map(|total| total / layer_count),
        step_seconds: mean_seconds,
        experts_moved,
        bytes_moved,
        bytes_per_hour: bytes_moved as f64 / (mean_seconds[3] * steps) * 3600.0,
        eplb_experts_moved: eplb_moved,
        switches,
        steps_over_budget: over_budget,
        migration_wait_seconds: waited,
        peak_budget_share: peak_share,
        steps: run.steps,
    })
}

/// Seconds EPLB's re-plan of one layer puts on the critical path: the masters that change domain
/// cross the scale-out network (the busiest rank's bytes in or out set the time), and the copies
/// placed anew inside the domains move as a transfer schedule on the topology.
fn eplb_moves_seconds(
    eplb: &EplbHierarchical,
    topology: &Topology,
    hardware: &Hardware,
    moved_state: u64,
    transfer_config: TransferConfig,
) -> Result<f64, BenchError> {
    let ranks = topology.rank_count();
    let (mut out, mut into) = (vec![0u64; ranks], vec![0u64; ranks]);
    for movement in eplb.moved_masters() {
        out[movement.from as usize] += moved_state;
        into[movement.to as usize] += moved_state;
    }
    let busiest = out.iter().chain(&into).copied().max().unwrap_or(0);
    let mut seconds = if busiest > 0 {
        hardware.scale_out_latency + busiest as f64 / hardware.scale_out_bandwidth
    } else {
        0.0
    };
    let inner = eplb.in_domains();
    if !inner.moved().is_empty() {
        let copies = moved_copies(inner)?;
        let state = ExpertState::opaque(moved_state)?;
        let config = TransferConfig {
            allow_relays: false,
            ..transfer_config
        };
        let schedule = TransferSchedule::build(&copies, &state, topology, config)?;
        seconds += simulate(&schedule, topology)?.makespan_ps as f64 * 1e-12;
    }
    Ok(seconds)
}

/// The results as a markdown table (simulated figures).
pub fn cross_domain_table(results: &[CrossDomainResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| scenario | domain imbalance: none / EPLB hierarchical / slow loop | rank imbalance: none / EPLB hierarchical / within domains / slow loop | step (s): none / EPLB hierarchical / within domains / slow loop | slow loop vs within domains | experts moved: slow loop / EPLB | slow loop GB moved | TB per hour | switches | steps that waited on a migration (ms in all) | peak share of the idle port |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for result in results {
        let _ = writeln!(
            out,
            "| {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} / {:.3} | {:.3}x | {} / {} | {:.1} | {:.2} | {} | {} of {} ({:.2}) | {:.2} |",
            result.scenario,
            result.domain_imbalance[0],
            result.domain_imbalance[1],
            result.domain_imbalance[2],
            result.imbalance[0],
            result.imbalance[1],
            result.imbalance[2],
            result.imbalance[3],
            result.step_seconds[0],
            result.step_seconds[1],
            result.step_seconds[2],
            result.step_seconds[3],
            result.step_seconds[2] / result.step_seconds[3],
            result.experts_moved,
            result.eplb_experts_moved,
            result.bytes_moved as f64 / 1e9,
            result.bytes_per_hour / 1e12,
            result.switches,
            result.steps_over_budget,
            result.steps,
            result.migration_wait_seconds * 1e3,
            result.peak_budget_share,
        );
    }
    out
}
