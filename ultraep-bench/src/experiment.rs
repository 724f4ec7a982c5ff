//! Experiments: a scenario's steps replayed through every balancer and the step simulator.
//!
//! Every balancer sees the same loads, after warm-up steps that EPLB and LPLB plan from. Per step
//! and simulated layer, each plans (EPLB as deployed plans from a history window and keeps its
//! replicas between re-plans; LPLB keeps the replicas placed after the warm-up and re-splits the
//! tokens per microbatch), the step simulator times the layer under the plan, and what the
//! balancer puts on the critical path is added from the published costs ([`crate::step::Overheads`]):
//! ultraep's load all-gather, planning, task lists, simulated weight transfers and reroute (in
//! training also the weight restore before backward and the part of the gradient reduction that
//! the layer's attention backward does not hide); LPLB's all-gather and linear program; EPLB's
//! weight moves on the steps it re-plans. The EPLB oracle and the ideal pay nothing: they are
//! references. A step is the mean simulated layer times the model's MoE layers, plus the time
//! outside them.

use std::collections::VecDeque;
use std::time::Instant;

use ultraep_plan::{
    Balancer, Eplb, EplbMode, EplbReplace, ExpertLayout, ForceBalanced, LoadMatrix, Lplb,
    NoBalance, Plan, Planner, RankDomains,
};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, ReplicaSet, RouteChooser, TransferConfig, TransferSchedule, simulate,
};

use crate::BenchError;
pub(crate) use crate::overhead_charges::{
    UltraepLayer, moved_copies, transfer_config, ultraep_overheads, ultraep_plan_config,
};
pub use crate::results::{BalancerResult, FirstChooser, OverheadBreakdown, ScenarioResult};
pub use crate::run_config::RunConfig;
pub use crate::scenario::{PublishedTflops, Scenario, workload_config};
use crate::step::{Hardware, Mode};
use crate::step_fit::scenario_efficiency;
pub use crate::step_frame::StepFrame;
use crate::trace::LayoutRecord;
use crate::workload::{Workload, WorkloadConfig};

/// A balancer the experiments compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compared {
    /// No balancing: every expert on its master.
    None,
    /// EPLB as deployed: fixed masters, re-planned from a history window every few steps.
    Eplb,
    /// DeepSeek's EPLB re-placing every copy, its moves charged.
    EplbReplace,
    /// LPLB: replicas placed once, tokens re-split every microbatch by its linear program.
    Lplb,
    /// EPLB planned on the very load it serves (a reference, pays nothing).
    EplbOracle,
    /// ultraep.
    Ultraep,
    /// The force-balanced ideal (a reference, pays nothing).
    Ideal,
}

impl Compared {
    /// Every balancer, in report order (the ideal last: the others are measured against it).
    pub const ALL: [Self; 7] = [
        Self::None,
        Self::Eplb,
        Self::EplbReplace,
        Self::Lplb,
        Self::EplbOracle,
        Self::Ultraep,
        Self::Ideal,
    ];

    /// Its name in reports and `results.json`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Eplb => "eplb",
            Self::EplbReplace => "eplb-replace",
            Self::Lplb => "lplb",
            Self::EplbOracle => "eplb-oracle",
            Self::Ultraep => "ultraep",
            Self::Ideal => "ideal",
        }
    }
}

/// The balancers compared, by name, in report order ([`Compared::ALL`]).
pub const BALANCERS: [&str; 7] = {
    let mut names = [""; 7];
    let mut index = 0;
    while index < names.len() {
        names[index] = Compared::ALL[index].name();
        index += 1;
    }
    names
};
/// Accumulates one balancer's figures over a run.
#[derive(Debug, Clone, Default)]
struct Tally {
    seconds: f64,
    /// ultraep's step seconds and weight-transfer microseconds had its transfers been scheduled by
    /// the first, per-expert chooser (the same plans; ultraep only).
    first_chooser_seconds: f64,
    first_chooser_transfer_us: f64,
    first_chooser_port_bound_us: f64,
    planning_host: f64,
    overhead: OverheadBreakdown,
    imbalance: f64,
    worst: f64,
    peak_receive: u64,
    replicas: f64,
    layers: u32,
    per_layer: Vec<f64>,
}

/// Replays `scenario` through every balancer on `topology` (64 ranks in one domain); `progress`
/// is called after every step.
pub fn run_scenario(
    scenario: &Scenario,
    run: &RunConfig,
    topology: &Topology,
    progress: &mut dyn FnMut(),
) -> Result<ScenarioResult, BenchError> {
    let config = workload_config(scenario, run);
    run_workload(scenario, run, config, topology, progress)
}

/// Replays `scenario`'s model and mode with the loads of `config` (its layers must be
/// `run.layers`) through every balancer on `topology`.
pub fn run_workload(
    scenario: &Scenario,
    run: &RunConfig,
    config: WorkloadConfig,
    topology: &Topology,
    progress: &mut dyn FnMut(),
) -> Result<ScenarioResult, BenchError> {
    let mut workload = Workload::new(config);
    let run = RunConfig {
        layers: config.layers,
        ..*run
    };
    let mut result = run_steps(
        scenario,
        &run,
        config.ranks,
        &mut || workload.next_step(),
        topology,
        &[],
        progress,
    )?;
    result.skew = config.skew;
    Ok(result)
}

/// Replays `run.steps` steps from `next_step` (each `run.layers` matrices of `ranks` rows and the
/// model's experts) through every balancer on `topology`. Experts start in balanced blocks; from
/// each of `layouts`' steps (sorted by step; counted from the first warm-up step) on, its layer's masters live
/// where it says for the balancers that keep masters in place (no balancing, ultraep, the ideal):
/// it is where the recorded run's masters were. The moves themselves are not charged to any
/// step: a layout change moves its masters in the background, within a per-step budget (the
/// slow-loop experiment, `crate::cross_domain`, charges and checks them).
pub fn run_steps(
    scenario: &Scenario,
    run: &RunConfig,
    ranks: u32,
    next_step: &mut dyn FnMut() -> Vec<Vec<u32>>,
    topology: &Topology,
    layouts: &[LayoutRecord],
    progress: &mut dyn FnMut(),
) -> Result<ScenarioResult, BenchError> {
    let hardware = Hardware {
        efficiency: scenario_efficiency(scenario, run)?,
        ..Hardware::of(topology)?
    };
    let model = scenario.model;
    let layout = ExpertLayout::balanced_blocks(ranks, model.routed_experts)?;
    let labels: Vec<u32> = topology.rank_domains().iter().map(|d| d.0).collect();
    if labels.len() != ranks as usize {
        return Err(BenchError::InvalidProblem {
            source_name: topology.name().to_owned(),
            message: format!("the topology has {} ranks, the loads {ranks}", labels.len()),
        });
    }
    let domains = RankDomains::from_labels(labels.clone())?;
    let slots = run.slots_per_rank;
    let mut none = NoBalance::new(layout.clone(), domains.clone())?;
    let mut ideal = ForceBalanced::new(layout.clone(), domains.clone())?;
    let ultraep_config = ultraep_plan_config(run, scenario, &hardware)?;
    let mut ultraep = Planner::new(layout.clone(), domains.clone(), slots, ultraep_config)?;
    let mut oracle = Eplb::new(layout.clone(), domains.clone(), slots, EplbMode::Oracle)?;
    let mut replacing: Vec<EplbReplace> = (0..run.layers)
        .map(|_| EplbReplace::new(layout.clone(), domains.clone(), slots))
        .collect::<Result<_, _>>()?;
    let mut lplb: Vec<Lplb> = (0..run.layers)
        .map(|_| Lplb::new(layout.clone(), domains.clone(), slots))
        .collect::<Result<_, _>>()?;
    let mut deployed: Vec<Eplb> = (0..run.layers)
        .map(|_| Eplb::new(layout.clone(), domains.clone(), slots, EplbMode::Periodic))
        .collect::<Result<_, _>>()?;
    let weights = ExpertState::swiglu(model.hidden, model.expert_width, model.weight_bytes);
    let gradients = ExpertState::swiglu_gradients(model.hidden, model.expert_width);
    // Transfers are simulated per chunk: a layer's experts have at most a handful of replicas,
    // where relays waiting for chunks are within a few hundredths of per-tile relays (see the
    // `ultraep xfer` table), and simulating every tile of every layer would take minutes.
    let transfer_config = transfer_config(run);
    let eplb_moves = TransferConfig {
        allow_relays: false,
        ..transfer_config
    };

    // A copy that EPLB's full re-placement creates carries the expert's weights, and in training
    // its FP32 master weights and Adam moments too (12 bytes per parameter): any copy may be the
    // one the optimizer updates.
    let moved_bytes = weights.bytes()
        + if scenario.mode == Mode::Training {
            12 * model.expert_params()
        } else {
            0
        };
    let mut tallies = vec![Tally::default(); BALANCERS.len()];
    for tally in &mut tallies {
        tally.per_layer = vec![0.0; run.layers as usize];
    }
    let check = |step: u32, layers: &[Vec<u32>]| {
        if layers.len() != run.layers as usize
            || layers
                .iter()
                .any(|l| l.len() != ranks as usize * model.routed_experts as usize)
        {
            return Err(BenchError::InvalidProblem {
                source_name: scenario.name.to_owned(),
                message: format!(
                    "step {step} does not have {} layers of {ranks} x {} loads",
                    run.layers, model.routed_experts
                ),
            });
        }
        Ok(())
    };
    let mut history: Vec<VecDeque<Vec<u32>>> = vec![VecDeque::new(); run.layers as usize];
    let remember = |history: &mut Vec<VecDeque<Vec<u32>>>, layers: Vec<Vec<u32>>| {
        for (past, loads) in history.iter_mut().zip(layers) {
            past.push_back(loads);
            while past.len() > run.eplb_window.max(1) as usize {
                past.pop_front();
            }
        }
    };
    let estimate = |window: &VecDeque<Vec<u32>>| {
        let mut estimate = vec![0u32; ranks as usize * model.routed_experts as usize];
        for past in window {
            for (sum, &count) in estimate.iter_mut().zip(past) {
                *sum = sum.saturating_add(count);
            }
        }
        estimate
    };
    let rebalance = |deployed: &mut [Eplb],
                     replacing: &mut [EplbReplace],
                     history: &[VecDeque<Vec<u32>>]| {
        for ((balancer, replace), window) in deployed.iter_mut().zip(replacing).zip(history) {
            let estimate = estimate(window);
            let matrix = LoadMatrix::new(&estimate, ranks as usize, model.routed_experts as usize)?;
            balancer.rebalance(matrix)?;
            replace.rebalance(matrix)?;
        }
        Ok::<(), BenchError>(())
    };
    // Warm-up: EPLB sees these loads and plans from them, so it starts the measured steps with
    // replicas in place, as a deployment that has been running would.
    for step in 0..run.warmup_steps {
        let layers = next_step();
        check(step, &layers)?;
        remember(&mut history, layers);
    }
    if run.warmup_steps > 0 {
        rebalance(&mut deployed, &mut replacing, &history)?;
        // LPLB's replicas are placed once, from the warm-up, and never move.
        for (balancer, window) in lplb.iter_mut().zip(&history) {
            let estimate = estimate(window);
            balancer.place(LoadMatrix::new(
                &estimate,
                ranks as usize,
                model.routed_experts as usize,
            )?)?;
        }
    }

    let overheads = run.overheads;
    let all_gather = overheads.all_gather(&hardware, ranks, model.routed_experts);
    let mut initial = 0.0;
    let mut bound = 0.0;
    let layer_scale = f64::from(model.moe_layers) / f64::from(run.layers);
    let mut useful_flops = 0.0;
    let mut outside_seconds = 0.0;
    let mut plan = Plan::default();
    let mut scratch = Plan::default();
    // The layers whose masters moved, with the balancers that plan in their layout.
    let mut moved: Vec<Option<MovedLayer>> = (0..run.layers).map(|_| None).collect();
    let mut changes = layouts.iter().peekable();
    for step in 0..run.steps {
        let layers = next_step();
        check(step, &layers)?;
        while let Some(change) = changes.next_if(|c| c.step <= run.warmup_steps + step) {
            let entry =
                moved
                    .get_mut(change.layer as usize)
                    .ok_or_else(|| BenchError::InvalidProblem {
                        source_name: scenario.name.to_owned(),
                        message: format!("a layout change of layer {}", change.layer),
                    })?;
            let layout = ExpertLayout::from_homes(ranks, change.homes.clone())?;
            *entry = Some(MovedLayer {
                none: NoBalance::new(layout.clone(), domains.clone())?,
                ideal: ForceBalanced::new(layout.clone(), domains.clone())?,
                ultraep: Planner::new(layout.clone(), domains.clone(), slots, ultraep_config)?,
                layout,
            });
        }
        let frame = StepFrame::of(scenario, &hardware, ranks, &layers);
        outside_seconds += frame.outside_seconds;
        useful_flops += frame.step_flops(layer_scale);
        let replan = step > 0 && step % run.eplb_interval.max(1) == 0;
        if replan {
            rebalance(&mut deployed, &mut replacing, &history)?;
        }
        for (layer, loads) in layers.iter().enumerate() {
            let matrix = LoadMatrix::new(loads, ranks as usize, model.routed_experts as usize)?;
            let tokens: u64 =
                loads.iter().map(|&c| u64::from(c)).sum::<u64>() / u64::from(model.top_k.max(1));
            let moved_layer = moved[layer].as_mut();
            let (none, ideal, ultraep, masters) = match moved_layer {
                Some(moved) => (
                    &mut moved.none,
                    &mut moved.ideal,
                    &mut moved.ultraep,
                    &moved.layout,
                ),
                None => (&mut none, &mut ideal, &mut ultraep, &layout),
            };
            for (index, balancer) in Compared::ALL.into_iter().enumerate() {
                let mut charged = OverheadBreakdown::default();
                let mut first_chooser = None;
                let mut planning_host = 0.0;
                match balancer {
                    Compared::None => none.plan_into(matrix, &mut plan)?,
                    Compared::Ideal => ideal.plan_into(matrix, &mut plan)?,
                    Compared::EplbOracle => oracle.plan_into(matrix, &mut plan)?,
                    Compared::EplbReplace => {
                        replacing[layer].plan_into(matrix, &mut plan)?;
                        if replan && !replacing[layer].moved().is_empty() {
                            let moves = moved_copies(&replacing[layer])?;
                            let state = ExpertState::opaque(moved_bytes)?;
                            let schedule =
                                TransferSchedule::build(&moves, &state, topology, eplb_moves)?;
                            charged.transfer_us =
                                simulate(&schedule, topology)?.makespan_ps as f64 * 1e-6;
                        }
                    }
                    Compared::Lplb => {
                        lplb[layer].plan_into(matrix, &mut plan)?;
                        // It gathers the load and solves its program every microbatch; it
                        // moves no weights.
                        charged.all_gather_us = all_gather * 1e6;
                        charged.planning_us = overheads.lplb_solve * 1e6;
                    }
                    Compared::Eplb => {
                        deployed[layer].plan_into(matrix, &mut plan)?;
                        if replan && plan.metrics().replicas > 0 {
                            let replicas = ReplicaSet::from_plan(&plan, &layout, topology)?;
                            let schedule =
                                TransferSchedule::build(&replicas, &weights, topology, eplb_moves)?;
                            charged.transfer_us =
                                simulate(&schedule, topology)?.makespan_ps as f64 * 1e-6;
                        }
                    }
                    Compared::Ultraep => {
                        // The plan is the real planner's; its host time is measured for the
                        // report but the critical path is charged the published GPU figure.
                        let mut times = [0.0; 3];
                        for (repeat, time) in times.iter_mut().enumerate() {
                            let target = if repeat == 0 { &mut plan } else { &mut scratch };
                            let started = Instant::now();
                            ultraep.plan_into(matrix, target)?;
                            *time = started.elapsed().as_secs_f64();
                        }
                        times.sort_by(f64::total_cmp);
                        planning_host = times[1];
                        let layer = UltraepLayer {
                            plan: &plan,
                            layout: masters,
                            topology,
                            scenario,
                            hardware: &hardware,
                            weights: &weights,
                            gradients: &gradients,
                            transfer_config,
                            overheads,
                            all_gather,
                            tokens,
                            ranks,
                        };
                        charged = ultraep_overheads(&layer)?;
                        first_chooser = Some(ultraep_overheads(&UltraepLayer {
                            transfer_config: TransferConfig {
                                chooser: RouteChooser::PerExpert,
                                ..transfer_config
                            },
                            ..layer
                        })?);
                    }
                }
                // The layer's time with `overhead_us` on its critical path.
                let simulated = scenario.layer(&model, &hardware, matrix, &labels);
                let outcome_with = |overhead_us: f64| simulated.outcome(&plan, overhead_us * 1e-6);
                let outcome = outcome_with(charged.total_us());
                let tally = &mut tallies[index];
                tally.seconds += outcome.time.total();
                if let Some(first) = first_chooser {
                    tally.first_chooser_seconds += outcome_with(first.total_us()).time.total();
                    tally.first_chooser_transfer_us += first.transfer_us;
                    tally.first_chooser_port_bound_us += first.transfer_port_bound_us;
                }
                tally.overhead.add(&charged);
                tally.planning_host += planning_host;
                tally.imbalance += plan.metrics().imbalance();
                tally.worst = tally.worst.max(plan.metrics().imbalance());
                tally.peak_receive = tally.peak_receive.max(outcome.peak_receive_bytes);
                tally.replicas += f64::from(plan.metrics().replicas);
                tally.layers += 1;
                tally.per_layer[layer] += plan.metrics().imbalance() / f64::from(run.steps);
                if balancer == Compared::None {
                    initial += plan.metrics().imbalance();
                }
                if balancer == Compared::Ultraep {
                    bound += plan.metrics().lower_bound_imbalance();
                }
            }
        }
        remember(&mut history, layers);
        progress();
    }

    let simulated_layers = f64::from(run.steps * run.layers);
    let outside_per_step = outside_seconds / f64::from(run.steps);
    let step_seconds =
        |tally: &Tally| tally.seconds / f64::from(run.steps) * layer_scale + outside_per_step;
    let ideal_seconds = step_seconds(&tallies[BALANCERS.len() - 1]);
    let flops_per_step = useful_flops / f64::from(run.steps);
    let balancers = BALANCERS
        .iter()
        .zip(&tallies)
        .map(|(&balancer, tally)| {
            let seconds = step_seconds(tally);
            let overhead = tally.overhead.scaled(1.0 / simulated_layers);
            BalancerResult {
                balancer,
                imbalance: tally.imbalance / f64::from(tally.layers.max(1)),
                worst_imbalance: tally.worst,
                step_seconds: seconds,
                tflops_per_gpu: flops_per_step / seconds / f64::from(ranks) / 1e12,
                fraction_of_ideal: ideal_seconds / seconds,
                peak_receive_bytes: tally.peak_receive,
                planning_us: overhead.planning_us,
                planning_host_us: tally.planning_host / simulated_layers * 1e6,
                transfer_us: overhead.transfer_us,
                first_chooser: (tally.first_chooser_seconds > 0.0).then(|| {
                    let seconds = tally.first_chooser_seconds / f64::from(run.steps) * layer_scale
                        + outside_per_step;
                    FirstChooser {
                        transfer_us: tally.first_chooser_transfer_us / simulated_layers,
                        transfer_port_bound_us: tally.first_chooser_port_bound_us
                            / simulated_layers,
                        step_seconds: seconds,
                        fraction_of_ideal: ideal_seconds / seconds,
                    }
                }),
                overhead,
                replicas: tally.replicas / simulated_layers,
                per_layer_imbalance: tally.per_layer.clone(),
            }
        })
        .collect();
    Ok(ScenarioResult {
        scenario: *scenario,
        model: model.name,
        efficiency: hardware.efficiency,
        initial_imbalance: initial / simulated_layers,
        bound_imbalance: bound / simulated_layers,
        skew: 0.0,
        balancers,
    })
}

/// A layer whose masters a recorded layout change moved, and the balancers that plan in its
/// layout.
struct MovedLayer {
    layout: ExpertLayout,
    none: NoBalance,
    ideal: ForceBalanced,
    ultraep: Planner,
}

/// What every experiment on one scenario starts from: its machine, the step simulator's
/// hardware figures at the scenario's compute rates, and the original expert layout.
pub(crate) struct ScenarioSetup {
    pub topology: Topology,
    pub hardware: Hardware,
    pub ranks: u32,
    pub experts: usize,
    pub layout: ExpertLayout,
    /// Every rank's domain label.
    pub labels: Vec<u32>,
    pub domains: RankDomains,
}

impl ScenarioSetup {
    pub fn of(scenario: &Scenario, run: &RunConfig) -> Result<Self, BenchError> {
        let topology = scenario.machine.topology()?;
        let hardware = Hardware {
            efficiency: scenario_efficiency(scenario, run)?,
            ..Hardware::of(&topology)?
        };
        let model = scenario.model;
        let ranks = scenario.machine.ranks();
        let labels: Vec<u32> = topology.rank_domains().iter().map(|d| d.0).collect();
        Ok(Self {
            hardware,
            ranks,
            experts: model.routed_experts as usize,
            layout: ExpertLayout::balanced_blocks(ranks, model.routed_experts)?,
            domains: RankDomains::from_labels(labels.clone())?,
            labels,
            topology,
        })
    }
}
