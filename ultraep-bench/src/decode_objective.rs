//! Decode: no balancing, the token objective, the cost-aware objective (every layer, and behind
//! the slow loop's layer gate), LPLB, and resident replicas; simulated step times, batch size by
//! batch size, on seeds the gates were not tuned on.
//!
//! In decode an expert sees a handful of tokens and its time is mostly the read of its weights,
//! which a replica reads again on its own rank. The token objective ignores that read; the
//! cost-aware objective ([`ultraep_plan::InstanceCost`]) charges every instance its weight read
//! (the model's expert bytes at the device's memory bandwidth) plus its tokens' FLOPs (at the
//! scenario's fitted expert GEMM rate), in picoseconds. The cost-aware variant keeps the replicas
//! of a plan only when the busiest rank's predicted saving, in its own cost model, exceeds what
//! the replicas add to the critical path (the weight transfer its transfer model predicts, the
//! task lists and the part of the reroute the transfer does not hide); otherwise it runs the
//! masters-only plan, which needs no transfer and no reroute.
//!
//! Resident replicas ([`ultraep_plan::FixedReplicas`]) move no weights on the critical path: a
//! slow loop chooses each layer's replicas every [`RESIDENT_INTERVAL`] steps from the mean of its
//! last [`RESIDENT_WINDOW`] steps' loads (the cost-aware planner's replicas of that mean), keeps
//! them only if re-splitting that mean among them is predicted to save more than the re-split's
//! overheads, and copies the new ones in the background during the next step: what their
//! transfer needs beyond the links' idle time in that step (the step with masters only, less its
//! all-to-alls) is added to it. Per batch only the integer re-split of every expert's tokens among
//! the replicas in place stays on the critical path, with the all-gather, the re-split (charged
//! the planner's published time) and the reroute.
//!
//! The gated variants ([`crate::decode_gate`]) balance a layer only while a rank's own prediction
//! of the net saving was above a margin on each of the layer's last steps; the margin and window
//! are tuned on [`tuning_seeds`] and every reported figure comes from [`held_out_seeds`].
//!
//! Every figure is simulated by the MoE step simulator ([`crate::step`]) with the published
//! per-layer costs ([`crate::step::Overheads`]). LPLB pays the all-gather, its published solve
//! time and the reroute on every layer; the ungated ultraep variants the all-gather and the
//! planning on every layer, whether or not they replicate, because the plan needs the layer's
//! exact counts.

use std::collections::VecDeque;

use serde::Serialize;
use ultraep_plan::{
    Balancer, ExpertLayout, FixedReplicas, InstanceCost, LoadMatrix, Lplb, NoBalance, Plan,
    PlanConfig, Planner,
};
use ultraep_topo::Topology;
use ultraep_xfer::{ExpertState, ReplicaSet, TransferConfig, TransferSchedule, simulate};

use crate::BenchError;
use crate::decode_gate::{GateSettings, GatedLayer, GatedRun, GatedStep, replay, tune};
use crate::experiment::{
    RunConfig, Scenario, ScenarioSetup, StepFrame, transfer_config, workload_config,
};
use crate::step::Hardware;
use crate::workload::Workload;

/// Tokens per rank the decode comparison runs (sequences decoding one token each).
pub const BATCH_SIZES: [u32; 5] = [16, 32, 64, 128, 256];

/// Steps between the slow loop's choices of resident replicas.
pub const RESIDENT_INTERVAL: u32 = 4;

/// Steps of loads the slow loop averages to choose resident replicas.
pub const RESIDENT_WINDOW: usize = 4;

/// The seeds the gates' settings are tuned on: never a reported one.
pub fn tuning_seeds(run: &RunConfig) -> [u64; 2] {
    [run.seed + 1000, run.seed + 1001]
}

/// The seeds every reported figure comes from.
pub fn held_out_seeds(run: &RunConfig) -> [u64; 2] {
    [run.seed, run.seed + 1]
}

/// One batch size's simulated figures, over the held-out seeds' measured steps.
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
    /// Mean step seconds under the cost-aware objective behind the slow loop's layer gate.
    pub gated_seconds: f64,
    /// Mean step seconds under LPLB.
    pub lplb_seconds: f64,
    /// Mean step seconds with resident replicas, re-split behind the layer gate.
    pub resident_seconds: f64,
    /// The largest ratio of a step's time to its time with masters only: token objective,
    /// cost-aware every layer, gated, LPLB, resident.
    pub worst_ratio: [f64; 5],
    /// Steps slower than masters only, in the same order.
    pub slower_steps: [u32; 5],
    /// The cost-aware objective's worst ratio with the all-gather and planning left out: what
    /// the objective itself decides (expert compute, all-to-all, transfers, task lists, reroute).
    pub cost_worst_ratio_decided: f64,
    /// Steps where the cost-aware objective's decided part is slower than masters only.
    pub cost_slower_steps_decided: u32,
    /// The share of (step, layer)s balanced: gated cost-aware, resident.
    pub balanced_layers: [f64; 2],
    /// Replicas per layer: token objective, cost-aware (after its replica gate), resident in
    /// place.
    pub replicas: [f64; 3],
    /// Seconds the resident replicas' background copies added to steps, in all.
    pub resident_wait_seconds: f64,
    /// Measured steps, over the held-out seeds.
    pub steps: u32,
}

/// The decode comparison: every batch size's figures, and the gate settings tuned for them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodeReport {
    /// The seeds the gates were tuned on.
    pub tuning_seeds: [u64; 2],
    /// The seeds the figures come from.
    pub held_out_seeds: [u64; 2],
    /// The cost-aware gate's settings.
    pub gated: GateSettings,
    /// The resident re-split's gate settings.
    pub resident: GateSettings,
    /// Every batch size.
    pub points: Vec<DecodePoint>,
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

/// Runs the decode scenario at every batch size of [`BATCH_SIZES`]: the gates are tuned on
/// [`tuning_seeds`] (every batch size at once), then every variant runs on [`held_out_seeds`].
/// The seeds' runs are independent and run on the machine's cores; the figures do not depend on
/// how many.
pub fn run_decode_objective(
    scenario: &Scenario,
    run: &RunConfig,
    progress: &mut dyn FnMut(),
) -> Result<DecodeReport, BenchError> {
    run_decode_at(scenario, run, &BATCH_SIZES, progress)
}

/// [`run_decode_objective`] at the batch sizes `sizes` (tokens per rank) only.
pub fn run_decode_at(
    scenario: &Scenario,
    run: &RunConfig,
    sizes: &[u32],
    progress: &mut dyn FnMut(),
) -> Result<DecodeReport, BenchError> {
    // Every run: (batch size, seed, every variant), tuning runs first.
    let jobs: Vec<(u32, u64, bool)> = [(tuning_seeds(run), false), (held_out_seeds(run), true)]
        .iter()
        .flat_map(|&(seeds, every)| {
            sizes
                .iter()
                .flat_map(move |&tokens| seeds.into_iter().map(move |seed| (tokens, seed, every)))
        })
        .collect();
    let mut traces = run_jobs(&jobs, |&(tokens_per_rank, seed, every)| {
        simulate_seed(
            &Scenario {
                tokens_per_rank,
                ..*scenario
            },
            &RunConfig { seed, ..*run },
            every,
        )
    })?
    .into_iter();
    let tuning: Vec<SeedTrace> = traces.by_ref().take(jobs.len() / 2).collect();
    let gated = tune(
        &tuning
            .iter()
            .map(|trace| (trace.gated.clone(), trace.sunk, trace.layer_scale))
            .collect::<Vec<_>>(),
    );
    let resident = tune(
        &tuning
            .iter()
            .map(|trace| {
                (
                    trace.resident.clone(),
                    trace.resident_sunk,
                    trace.layer_scale,
                )
            })
            .collect::<Vec<_>>(),
    );
    let held_out: Vec<SeedTrace> = traces.collect();
    let seeds = held_out_seeds(run).len();
    let points = sizes
        .iter()
        .zip(held_out.chunks(seeds))
        .map(|(&tokens, traces)| {
            progress();
            point_of(tokens, traces, gated, resident)
        })
        .collect();
    Ok(DecodeReport {
        tuning_seeds: tuning_seeds(run),
        held_out_seeds: held_out_seeds(run),
        gated,
        resident,
        points,
    })
}

/// `work` on every job, spread over the machine's cores; the results in the jobs' order.
fn run_jobs<J: Sync, T: Send>(
    jobs: &[J],
    work: impl Fn(&J) -> Result<T, BenchError> + Sync,
) -> Result<Vec<T>, BenchError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<T, BenchError>>> = (0..jobs.len()).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(index) else { break };
                    let result = work(job);
                    if let Ok(mut done) = done.lock() {
                        done[index] = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|result| result.unwrap_or(Err(BenchError::Worker)))
        .collect()
}

/// One seed's run at one batch size: the ungated variants' measured step times, and the gated
/// variants' steps for [`replay`].
struct SeedTrace {
    /// Measured step seconds: none, token objective, cost-aware every layer, LPLB.
    steps: Vec<[f64; 4]>,
    /// The cost-aware variant's decided part of every measured step, and none's.
    decided: Vec<[f64; 2]>,
    gated: Vec<GatedStep>,
    resident: Vec<GatedStep>,
    /// Replicas summed over measured layers: token objective, cost-aware, resident.
    replicas: [f64; 3],
    resident_wait: f64,
    /// A layer's all-gather and planning; the same with the reroute, for the resident re-split.
    sunk: f64,
    resident_sunk: f64,
    layer_scale: f64,
}

/// The figures of one batch size from its held-out seeds' traces.
fn point_of(
    tokens_per_rank: u32,
    traces: &[SeedTrace],
    gated: GateSettings,
    resident: GateSettings,
) -> DecodePoint {
    let mut totals = [0.0f64; 6];
    let (mut worst, mut slower) = ([0.0f64; 5], [0u32; 5]);
    let (mut worst_decided, mut slower_decided) = (0.0f64, 0u32);
    let mut balanced = [0u32; 2];
    let (mut layers, mut steps) = (0u32, 0u32);
    let mut replicas = [0.0f64; 3];
    let mut wait = 0.0;
    for trace in traces {
        for step in &trace.steps {
            for (total, seconds) in totals.iter_mut().zip(step) {
                *total += seconds;
            }
            // Token objective, cost-aware every layer, LPLB, against none.
            for (index, seconds) in [(0, step[1]), (1, step[2]), (3, step[3])] {
                worst[index] = worst[index].max(seconds / step[0]);
                slower[index] += u32::from(seconds > step[0]);
            }
        }
        for decided in &trace.decided {
            worst_decided = worst_decided.max(decided[1] / decided[0]);
            slower_decided += u32::from(decided[1] > decided[0] * (1.0 + 1e-12));
        }
        for (index, (steps_of, settings, sunk)) in [
            (&trace.gated, gated, trace.sunk),
            (&trace.resident, resident, trace.resident_sunk),
        ]
        .into_iter()
        .enumerate()
        {
            let run: GatedRun = replay(steps_of, settings, sunk, trace.layer_scale);
            totals[4 + index] += run.seconds;
            worst[2 + 2 * index] = worst[2 + 2 * index].max(run.worst_ratio);
            slower[2 + 2 * index] += run.slower_steps;
            balanced[index] += run.balanced_layers;
            if index == 0 {
                layers += run.layers;
            }
        }
        steps += trace.steps.len() as u32;
        for (total, count) in replicas.iter_mut().zip(trace.replicas) {
            *total += count;
        }
        wait += trace.resident_wait;
    }
    let per_step = f64::from(steps.max(1));
    let per_layer = f64::from(layers.max(1));
    DecodePoint {
        tokens_per_rank,
        none_seconds: totals[0] / per_step,
        tokens_seconds: totals[1] / per_step,
        cost_seconds: totals[2] / per_step,
        lplb_seconds: totals[3] / per_step,
        gated_seconds: totals[4] / per_step,
        resident_seconds: totals[5] / per_step,
        worst_ratio: worst,
        slower_steps: slower,
        cost_worst_ratio_decided: worst_decided,
        cost_slower_steps_decided: slower_decided,
        balanced_layers: balanced.map(|count| f64::from(count) / per_layer),
        replicas: replicas.map(|count| count / per_layer),
        resident_wait_seconds: wait,
        steps,
    }
}

/// A layer's resident replicas and the slow loop's view of its recent loads.
struct ResidentLayer {
    replicas: FixedReplicas,
    /// The placement copied during this step, switched in at its end.
    pending: Option<Vec<(u32, u32)>>,
    recent: VecDeque<Vec<u32>>,
}

/// Simulates `scenario` with `run`'s seed: every variant when `every_variant`, else only what
/// tuning the gates needs (the gated cost-aware and the resident variants).
fn simulate_seed(
    scenario: &Scenario,
    run: &RunConfig,
    every_variant: bool,
) -> Result<SeedTrace, BenchError> {
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
    let mut none = NoBalance::new(layout.clone(), domains.clone())?;
    let mut lplb = (0..run.layers)
        .map(|_| Lplb::new(layout.clone(), domains.clone(), run.slots_per_rank))
        .collect::<Result<Vec<_>, _>>()?;
    let mut resident = (0..run.layers)
        .map(|_| {
            Ok(ResidentLayer {
                replicas: FixedReplicas::new(
                    layout.clone(),
                    domains.clone(),
                    run.slots_per_rank,
                    cost,
                )?,
                pending: None,
                recent: VecDeque::new(),
            })
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    let weights = ExpertState::swiglu(model.hidden, model.expert_width, model.weight_bytes);
    let transfer_config = transfer_config(run);
    let overheads = run.overheads;
    let all_gather = overheads.all_gather(&hardware, ranks, model.routed_experts);
    let sunk = all_gather + overheads.planning;
    let resident_sunk = sunk + overheads.reroute;
    let lplb_charge = all_gather + overheads.lplb_solve + overheads.reroute;
    let layer_scale = f64::from(model.moe_layers) / f64::from(run.layers);

    let charge = |plan: &Plan| charge_of(plan, &layout, &topology, &weights, transfer_config, run);
    let mut workload = Workload::new(workload_config(scenario, run));
    let (mut masters, mut planned, mut scratch) =
        (Plan::default(), Plan::default(), Plan::default());
    let mut trace = SeedTrace {
        steps: Vec::new(),
        decided: Vec::new(),
        gated: Vec::new(),
        resident: Vec::new(),
        replicas: [0.0; 3],
        resident_wait: 0.0,
        sunk,
        resident_sunk,
        layer_scale,
    };
    for index in 0..run.warmup_steps + run.steps {
        let measured = index >= run.warmup_steps;
        let layers = workload.next_step();
        // LPLB's replicas are placed once, from the warm-up's loads, and never move.
        if every_variant && index == run.warmup_steps {
            for (balancer, layer) in lplb.iter_mut().zip(&resident) {
                let mean = mean_loads(&layer.recent, ranks as usize * experts);
                balancer.place(LoadMatrix::new(&mean, ranks as usize, experts)?)?;
            }
        }
        // The slow loop chooses resident replicas from the loads it has seen; the new ones are
        // copied during this step.
        let mut copies_seconds = 0.0;
        if index > 0 && index % RESIDENT_INTERVAL == 0 {
            for layer in &mut resident {
                let mean = mean_loads(&layer.recent, ranks as usize * experts);
                let expected = LoadMatrix::new(&mean, ranks as usize, experts)?;
                copies_seconds += choose_resident(
                    layer,
                    expected,
                    &mut by_cost,
                    &mut none,
                    cost,
                    ranks,
                    resident_sunk,
                    &ResidentCopy {
                        layout: &layout,
                        topology: &topology,
                        weights: &weights,
                        transfer_config,
                    },
                )? * layer_scale;
            }
        }
        let frame = StepFrame::of(scenario, &hardware, ranks, &layers);
        let mut step = [frame.outside_seconds; 4];
        let mut decided = [0.0f64; 2];
        let mut gated_layers = Vec::with_capacity(layers.len());
        let mut resident_layers = Vec::with_capacity(layers.len());
        let mut all_to_all = 0.0;
        for (layer_index, loads) in layers.iter().enumerate() {
            let matrix = LoadMatrix::new(loads, ranks as usize, experts)?;
            none.plan_into(matrix, &mut masters)?;
            let simulated = scenario.layer(&model, &hardware, matrix, &labels);
            let layer = |plan: &Plan, charged: f64| simulated.outcome(plan, charged).time;
            let base_time = layer(&masters, 0.0);
            let base = base_time.total();
            all_to_all += base_time.all_to_all * layer_scale;
            by_cost.plan_into(matrix, &mut scratch)?;
            let charged_by_replicas = charge(&scratch)?;
            // The replica gate: replicas only where the busiest rank's predicted saving pays for
            // what they put on the critical path.
            let saving_ps = busiest_cost(&masters, cost, ranks)
                .saturating_sub(busiest_cost(&scratch, cost, ranks));
            let kept =
                scratch.metrics().replicas > 0 && saving_ps as f64 * 1e-12 > charged_by_replicas;
            let cost_time = if kept {
                layer(&scratch, charged_by_replicas).total()
            } else {
                base
            };
            gated_layers.push(GatedLayer {
                masters: base,
                balanced: cost_time + sunk,
                predicted_saving: if kept {
                    saving_ps as f64 * 1e-12 - charged_by_replicas
                } else {
                    0.0
                } - sunk,
            });
            // Resident replicas: the re-split of this batch among the replicas in place.
            let held = &mut resident[layer_index];
            held.replicas.plan_into(matrix, &mut planned)?;
            let resplit_saving = busiest_cost(&masters, cost, ranks)
                .saturating_sub(busiest_cost(&planned, cost, ranks));
            resident_layers.push(GatedLayer {
                masters: base,
                balanced: layer(&planned, resident_sunk).total(),
                predicted_saving: resplit_saving as f64 * 1e-12 - resident_sunk,
            });
            if measured {
                trace.replicas[2] += f64::from(planned.metrics().replicas);
                if kept {
                    trace.replicas[1] += f64::from(scratch.metrics().replicas);
                }
                step[0] += base * layer_scale;
                step[2] += (cost_time + sunk) * layer_scale;
                decided[0] += base * layer_scale;
                decided[1] += cost_time * layer_scale;
                if every_variant {
                    by_tokens.plan_into(matrix, &mut planned)?;
                    trace.replicas[0] += f64::from(planned.metrics().replicas);
                    step[1] += layer(&planned, charge(&planned)? + sunk).total() * layer_scale;
                    lplb[layer_index].plan_into(matrix, &mut planned)?;
                    step[3] += layer(&planned, lplb_charge).total() * layer_scale;
                }
            }
            held.recent.push_back(loads.clone());
            while held.recent.len() > RESIDENT_WINDOW {
                held.recent.pop_front();
            }
        }
        // The background copies take the links' idle time in this step (with masters only,
        // less its all-to-alls); beyond that, the step waits for them.
        let idle = (step[0] - frame.outside_seconds - all_to_all).max(0.0);
        let wait = (copies_seconds - idle).max(0.0);
        trace.gated.push(GatedStep {
            measured,
            fixed: frame.outside_seconds,
            masters_fixed: frame.outside_seconds,
            layers: gated_layers,
        });
        trace.resident.push(GatedStep {
            measured,
            fixed: frame.outside_seconds + wait,
            masters_fixed: frame.outside_seconds,
            layers: resident_layers,
        });
        for layer in &mut resident {
            if let Some(placement) = layer.pending.take() {
                layer.replicas.set_placement(&placement)?;
            }
        }
        if measured {
            trace.resident_wait += wait;
            trace.steps.push(step);
            trace.decided.push(decided);
        }
    }
    Ok(trace)
}

/// What copying a layer's new resident replicas needs.
struct ResidentCopy<'a> {
    layout: &'a ExpertLayout,
    topology: &'a Topology,
    weights: &'a ExpertState,
    transfer_config: TransferConfig,
}

/// The slow loop's choice for one layer: the cost-aware planner's replicas of the layer's mean
/// recent load, kept only if re-splitting that mean among them is predicted to save more than
/// the re-split's overheads (`overhead` seconds), and only if they differ from those in place.
/// Returns the seconds of link time copying the new ones takes (the replicas already in place
/// are not copied again); the placement switches in at the end of the step.
#[allow(clippy::too_many_arguments)]
fn choose_resident(
    layer: &mut ResidentLayer,
    expected: LoadMatrix<'_>,
    planner: &mut Planner,
    none: &mut NoBalance,
    cost: InstanceCost,
    ranks: u32,
    overhead: f64,
    copy: &ResidentCopy<'_>,
) -> Result<f64, BenchError> {
    let chosen = planner.plan(expected)?;
    let mut placement: Vec<(u32, u32)> = chosen
        .instances()
        .iter()
        .filter(|instance| instance.is_replica())
        .map(|instance| (instance.expert, instance.rank))
        .collect();
    placement.sort_unstable();
    let mut current = layer.replicas.placement().to_vec();
    current.sort_unstable();
    if placement.is_empty() || placement == current {
        return Ok(0.0);
    }
    let mut candidate = layer.replicas.clone();
    candidate.set_placement(&placement)?;
    let resplit = candidate.plan(expected)?;
    let masters = none.plan(expected)?;
    // The slots a placement takes are numbered in its order on each rank.
    let saving =
        busiest_cost(&masters, cost, ranks).saturating_sub(busiest_cost(&resplit, cost, ranks));
    if (saving as f64) * 1e-12 <= overhead {
        return Ok(0.0);
    }
    // Only the copies not already in a slot move (each rank's slots numbered in placement
    // order).
    let (master_indices, _) = copy.layout.home_indices();
    let mut slots_used = vec![0u16; ranks as usize];
    let mut fanouts: Vec<ultraep_xfer::Fanout> = Vec::new();
    let mut by_expert: Vec<(u32, Vec<(u32, u16)>)> = Vec::new();
    for &(expert, rank) in &placement {
        let slot = slots_used[rank as usize];
        slots_used[rank as usize] += 1;
        if current.binary_search(&(expert, rank)).is_ok() {
            continue;
        }
        match by_expert.last_mut() {
            Some((last, destinations)) if *last == expert => destinations.push((rank, slot)),
            _ => by_expert.push((expert, vec![(rank, slot)])),
        }
    }
    layer.pending = Some(placement);
    for (expert, destinations) in by_expert {
        fanouts.push(ultraep_xfer::Fanout::new(
            expert,
            copy.layout.home(expert),
            master_indices[expert as usize],
            destinations,
        )?);
    }
    if fanouts.is_empty() {
        return Ok(0.0);
    }
    let copies = ReplicaSet::new(fanouts)?;
    let schedule =
        TransferSchedule::build(&copies, copy.weights, copy.topology, copy.transfer_config)?;
    Ok(simulate(&schedule, copy.topology)?.makespan_ps as f64 * 1e-12)
}

/// The element-wise mean of `recent` loads (rounded down), or zeros when there are none.
fn mean_loads(recent: &VecDeque<Vec<u32>>, cells: usize) -> Vec<u32> {
    let mut sum = vec![0u64; cells];
    for loads in recent {
        for (total, &count) in sum.iter_mut().zip(loads) {
            *total += u64::from(count);
        }
    }
    let count = recent.len().max(1) as u64;
    sum.into_iter()
        .map(|total| (total / count) as u32)
        .collect()
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
