//! Experiments: a scenario's steps replayed through every balancer and the step simulator.
//!
//! Every balancer sees the same loads, after warm-up steps that EPLB and LPLB plan from. Per step
//! and simulated layer, each plans (EPLB as deployed plans from a history window and keeps its
//! replicas between re-plans; LPLB keeps the replicas placed after the warm-up and re-splits the
//! tokens per microbatch), the step simulator times the layer under the plan, and what the
//! balancer puts on the critical path is added from the published costs ([`Overheads`]):
//! ultraep's load all-gather, planning, task lists, simulated weight transfers and reroute (in
//! training also the weight restore before backward and the part of the gradient reduction that
//! the layer's attention backward does not hide); LPLB's all-gather and linear program; EPLB's
//! weight moves on the steps it re-plans. The EPLB oracle and the ideal pay nothing: they are
//! references. A step is the mean simulated layer times the model's MoE layers, plus the time
//! outside them.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;
use ultraep_plan::{
    Balancer, Eplb, EplbMode, EplbReplace, ExpertLayout, ForceBalanced, LoadMatrix, Lplb,
    NoBalance, Plan, PlanConfig, Planner, RankDomains, TransferEstimate,
};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, RelayPieces, ReplicaSet, ReplicaSetBuilder, RouteChooser, TransferConfig,
    TransferSchedule, simulate, simulate_reduction,
};

use crate::BenchError;
use crate::machine::{Machine, nvl72_gpus};
use crate::models::ModelShape;
use crate::step::{Efficiency, Hardware, Mode, Overheads, layer_outcome, outside_moe};
use crate::step_fit::{EfficiencySource, scenario_efficiency};
use crate::trace::LayoutRecord;
use crate::workload::{Workload, WorkloadConfig, calibrate_skew};

/// The balancers compared, in report order.
pub const BALANCERS: [&str; 7] = [
    "none",
    "eplb",
    "eplb-replace",
    "lplb",
    "eplb-oracle",
    "ultraep",
    "ideal",
];

/// A published scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scenario {
    /// Its name in reports.
    pub name: &'static str,
    /// The model.
    #[serde(skip)]
    pub model: ModelShape,
    /// Training or prefill.
    pub mode: Mode,
    /// The published no-balancing max/mean imbalance the workload is calibrated to.
    pub target_imbalance: f64,
    /// Mean tokens per rank per microbatch.
    pub tokens_per_rank: u32,
    /// Attention context length.
    pub sequence: u64,
    /// Log-normal spread of tokens per rank (prefill batches are uneven).
    pub uneven_tokens: f64,
    /// The published figures: final imbalance with ultraep, and its fraction of ideal throughput
    /// where published.
    pub published_final: f64,
    /// Published fraction of ideal throughput with ultraep, where published.
    pub published_fraction: Option<f64>,
    /// Published throughput of ultraep over no balancing, where published.
    pub published_speedup: Option<f64>,
    /// Published fraction of ideal throughput with EPLB (training's TFLOPS table).
    pub published_eplb_fraction: Option<f64>,
    /// Published max/mean imbalance with EPLB (prefill).
    pub published_eplb_imbalance: Option<f64>,
    /// Published TFLOPS per GPU of every balancer (training).
    pub published_tflops: Option<PublishedTflops>,
    /// Where the compute rates of the step simulator come from.
    pub efficiency: EfficiencySource,
    /// The GPUs the group spans.
    pub machine: Machine,
    /// Whether the loads are drawn per microbatch rather than their expectation.
    pub sampled: bool,
}

/// The TFLOPS per GPU the paper publishes for a training scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PublishedTflops {
    /// The force-balanced ideal.
    pub ideal: f64,
    /// UltraEP.
    pub ultraep: f64,
    /// No balancing.
    pub none: f64,
    /// EPLB.
    pub eplb: f64,
    /// LPLB.
    pub lplb: f64,
}

impl Scenario {
    /// The seven published scenarios at EP64 (`ultraep-facts.md` section 6).
    pub fn published() -> Vec<Scenario> {
        // Training: the published TFLOPS per GPU (ideal, ultraep, none, EPLB, LPLB) give every
        // ratio; the ideal's and none's fix the compute rates, the rest are predictions.
        let training =
            |name, model, target, published_final, [ideal, ultraep, none, eplb, lplb]: [f64; 5]| {
                Scenario {
                    name,
                    model,
                    mode: Mode::Training,
                    target_imbalance: target,
                    tokens_per_rank: 8192,
                    sequence: 4096,
                    uneven_tokens: 0.0,
                    published_final,
                    published_fraction: Some(ultraep / ideal),
                    published_speedup: Some(ultraep / none),
                    published_eplb_fraction: Some(eplb / ideal),
                    published_eplb_imbalance: None,
                    published_tflops: Some(PublishedTflops {
                        ideal,
                        ultraep,
                        none,
                        eplb,
                        lplb,
                    }),
                    efficiency: EfficiencySource::Fitted,
                    machine: Machine::Nvl72 { ranks: 64 },
                    sampled: false,
                }
            };
        // Prefill publishes no TFLOPS. Where it publishes ultraep's fraction of ideal and speedup
        // (their ratio is no balancing's fraction of ideal), the dense rate is fitted to that and
        // the expert rate is the one fitted on the training scenario of the same model, or of its
        // family for GLM-4.7 (GLM-4.5-Air); the other request mix takes the rates of the same
        // model's fitted mix.
        let prefill =
            |name, model, target, published_final, eplb, fraction, speedup, rates| Scenario {
                name,
                model,
                mode: Mode::Prefill,
                target_imbalance: target,
                tokens_per_rank: 16384,
                sequence: 8192,
                uneven_tokens: 0.4,
                published_final,
                published_fraction: fraction,
                published_speedup: speedup,
                published_eplb_fraction: None,
                published_eplb_imbalance: Some(eplb),
                published_tflops: None,
                efficiency: rates,
                machine: Machine::Nvl72 { ranks: 64 },
                sampled: false,
            };
        vec![
            training(
                "GLM-4.5-Air training",
                ModelShape::GLM_4_5_AIR,
                2.23,
                1.02,
                [785.4, 757.0, 545.0, 646.0, 618.0],
            ),
            training(
                "Qwen3-235B training",
                ModelShape::QWEN3_235B,
                2.86,
                1.03,
                [574.7, 524.0, 315.0, 449.0, 385.0],
            ),
            training(
                "DeepSeek-V3 training",
                ModelShape::DEEPSEEK_V3,
                1.30,
                1.01,
                [637.6, 613.0, 509.0, 505.0, 516.0],
            ),
            prefill(
                "Qwen3-235B prefill STEM",
                ModelShape::QWEN3_235B,
                3.68,
                1.04,
                2.59,
                Some(0.97),
                Some(2.1),
                EfficiencySource::FittedToNone {
                    experts_from: "Qwen3-235B training",
                },
            ),
            prefill(
                "Qwen3-235B prefill mixed",
                ModelShape::QWEN3_235B,
                4.01,
                1.03,
                2.56,
                None,
                None,
                EfficiencySource::FittedOn("Qwen3-235B prefill STEM"),
            ),
            prefill(
                "GLM-4.7 prefill STEM",
                ModelShape::GLM_4_7,
                3.09,
                1.01,
                2.05,
                Some(0.90),
                Some(1.8),
                EfficiencySource::FittedToNone {
                    experts_from: "GLM-4.5-Air training",
                },
            ),
            prefill(
                "GLM-4.7 prefill mixed",
                ModelShape::GLM_4_7,
                2.06,
                1.01,
                1.80,
                None,
                None,
                EfficiencySource::FittedOn("GLM-4.7 prefill STEM"),
            ),
        ]
    }
}

impl Scenario {
    /// Groups that span scale-up domains, which the paper does not evaluate: EP128 over two GB200
    /// NVL72 racks (64 GPUs of each) and EP32 over four HGX H100 nodes. Replicas cannot leave
    /// their master's domain, so the imbalance between domains stays. Each is the model's
    /// published training scenario with its no-balancing imbalance (the workload calibrated to it
    /// at the new size); there are no published figures to compare.
    pub fn spanning_domains() -> Vec<Scenario> {
        let published = Self::published();
        let of = |name: &str| published.iter().copied().find(|s| s.name == name);
        let mut spanning = Vec::new();
        if let Some(base) = of("DeepSeek-V3 training") {
            spanning.push(Scenario {
                name: "DeepSeek-V3 training, EP128 on 2 NVL72 racks",
                machine: Machine::Nvl72Racks {
                    racks: 2,
                    per_rack: 64,
                },
                ..Self::unpublished(base)
            });
        }
        if let Some(base) = of("Qwen3-235B training") {
            spanning.push(Scenario {
                name: "Qwen3-235B training, EP32 on 4 HGX H100 nodes",
                machine: Machine::HgxH100 { nodes: 4 },
                ..Self::unpublished(base)
            });
        }
        spanning
    }

    /// Decode, which the paper does not evaluate: Qwen3-235B on EP64 with 64 sequences per rank
    /// decoding one token each over an 8192-token context, the popularity of its STEM prefill
    /// (its no-balancing imbalance as the target), and every count drawn per microbatch: with
    /// about 4 tokens per expert and rank, the draws are most of the imbalance. An expert's time
    /// is then mostly reading its weights, which a replica reads again.
    pub fn decode() -> Vec<Scenario> {
        Self::published()
            .into_iter()
            .find(|s| s.name == "Qwen3-235B prefill STEM")
            .map(|base| Scenario {
                name: "Qwen3-235B decode, 64 sequences per rank",
                mode: Mode::Decode,
                tokens_per_rank: 64,
                uneven_tokens: 0.0,
                sampled: true,
                ..Self::unpublished(base)
            })
            .into_iter()
            .collect()
    }

    /// `base` with its published figures removed, running at its compute rates.
    fn unpublished(base: Scenario) -> Scenario {
        Scenario {
            efficiency: match base.efficiency {
                EfficiencySource::Fitted | EfficiencySource::FittedToNone { .. } => {
                    EfficiencySource::FittedOn(base.name)
                }
                other => other,
            },
            published_final: 0.0,
            published_fraction: None,
            published_speedup: None,
            published_eplb_fraction: None,
            published_eplb_imbalance: None,
            published_tflops: None,
            ..base
        }
    }

    /// The scenarios (published, spanning domains, decode) whose name contains `text`, ignoring
    /// case; an error naming the known ones if none does.
    pub fn matching(text: &str) -> Result<Vec<Scenario>, BenchError> {
        let wanted = text.to_lowercase();
        let every = || {
            Self::published()
                .into_iter()
                .chain(Self::spanning_domains())
                .chain(Self::decode())
        };
        let found: Vec<Scenario> = every()
            .filter(|scenario| scenario.name.to_lowercase().contains(&wanted))
            .collect();
        if found.is_empty() {
            return Err(BenchError::InvalidProblem {
                source_name: text.to_owned(),
                message: format!(
                    "no such scenario; known: {}",
                    every().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(found)
    }
}

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
    /// ([`Scenario::efficiency`]).
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

/// One balancer's results on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancerResult {
    /// The balancer.
    pub balancer: &'static str,
    /// Mean max/mean rank imbalance under its plans.
    pub imbalance: f64,
    /// Worst layer's max/mean imbalance.
    pub worst_imbalance: f64,
    /// Mean step seconds.
    pub step_seconds: f64,
    /// Model TFLOPS per GPU.
    pub tflops_per_gpu: f64,
    /// Throughput as a fraction of the ideal's.
    pub fraction_of_ideal: f64,
    /// The largest dispatch receive buffer any rank needed, in bytes.
    pub peak_receive_bytes: u64,
    /// Mean microseconds of planning per layer charged on the critical path (the published GPU
    /// planner's time; ultraep only).
    pub planning_us: f64,
    /// Mean microseconds of one plan measured on this host (the median of three warm runs of the
    /// real planner): reported beside the simulated figures, never part of them.
    pub planning_host_us: f64,
    /// Mean microseconds of weight transfer per layer on the critical path.
    pub transfer_us: f64,
    /// ultraep only: the same plans with their transfers scheduled by the first, per-expert
    /// chooser ([`RouteChooser::PerExpert`]), simulated in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chooser: Option<FirstChooser>,
    /// Mean microseconds per layer of everything the balancer puts on the critical path, by part.
    pub overhead: OverheadBreakdown,
    /// Mean replicas per layer.
    pub replicas: f64,
    /// Mean imbalance of every simulated layer (averaged over steps), for plots.
    pub per_layer_imbalance: Vec<f64>,
}

/// ultraep's figures had the first, per-expert route chooser scheduled its weight transfers: the
/// same plans, every other charge the same (simulated, in the same run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstChooser {
    /// Mean microseconds of weight transfer per layer on the critical path.
    pub transfer_us: f64,
    /// Its busiest port's bytes at link speed, per layer (not charged: the bound).
    pub transfer_port_bound_us: f64,
    /// Mean step seconds.
    pub step_seconds: f64,
    /// Throughput as a fraction of the ideal's.
    pub fraction_of_ideal: f64,
}

/// What a balancer puts on one layer's critical path, in microseconds, averaged over layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OverheadBreakdown {
    /// The all-gather of the load.
    pub all_gather_us: f64,
    /// Planning (or LPLB's linear program).
    pub planning_us: f64,
    /// Building the transfer task lists.
    pub task_lists_us: f64,
    /// Weight transfers (forward, and in training the restore before backward).
    pub transfer_us: f64,
    /// What the token reroute adds beyond the weight transfer it overlaps.
    pub reroute_us: f64,
    /// The part of the gradient reduction that attention's backward does not hide (training).
    pub reduction_us: f64,
    /// Not charged: the weight transfers' physical bound, their busiest port's bytes at link
    /// speed (as many times as `transfer_us` counts a transfer), to show how far the schedule is
    /// from it.
    pub transfer_port_bound_us: f64,
}

impl OverheadBreakdown {
    /// The whole overhead.
    pub fn total_us(&self) -> f64 {
        self.all_gather_us
            + self.planning_us
            + self.task_lists_us
            + self.transfer_us
            + self.reroute_us
            + self.reduction_us
    }

    fn add(&mut self, other: &Self) {
        self.all_gather_us += other.all_gather_us;
        self.planning_us += other.planning_us;
        self.task_lists_us += other.task_lists_us;
        self.transfer_us += other.transfer_us;
        self.reroute_us += other.reroute_us;
        self.reduction_us += other.reduction_us;
        self.transfer_port_bound_us += other.transfer_port_bound_us;
    }

    fn scaled(&self, factor: f64) -> Self {
        Self {
            all_gather_us: self.all_gather_us * factor,
            planning_us: self.planning_us * factor,
            task_lists_us: self.task_lists_us * factor,
            transfer_us: self.transfer_us * factor,
            reroute_us: self.reroute_us * factor,
            reduction_us: self.reduction_us * factor,
            transfer_port_bound_us: self.transfer_port_bound_us * factor,
        }
    }
}

/// Every balancer's results on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The model's name.
    pub model: &'static str,
    /// Mean no-balancing imbalance of the generated loads.
    pub initial_imbalance: f64,
    /// Mean of the lowest imbalance any plan could reach with replicas kept in their domains.
    pub bound_imbalance: f64,
    /// The calibrated skew exponent of the workload.
    pub skew: f64,
    /// The compute rates the step simulator ran at.
    pub efficiency: Efficiency,
    /// Results in [`BALANCERS`] order.
    pub balancers: Vec<BalancerResult>,
}

impl ScenarioResult {
    /// The result of one balancer.
    pub fn balancer(&self, name: &str) -> Option<&BalancerResult> {
        self.balancers.iter().find(|b| b.balancer == name)
    }

    /// ultraep's throughput over no balancing.
    pub fn speedup_over_none(&self) -> f64 {
        match (self.balancer("ultraep"), self.balancer("none")) {
            (Some(ultraep), Some(none)) => none.step_seconds / ultraep.step_seconds,
            _ => 1.0,
        }
    }
}

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

/// What one step costs and computes outside the balancers' reach: the time outside the MoE layers
/// and the model FLOPs of every rank's tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFrame {
    /// Seconds of the dense layers and the output projection (the rank with the most tokens).
    pub outside_seconds: f64,
    /// Model FLOPs outside the MoE layers, over all ranks.
    pub outside_flops: f64,
    /// Model FLOPs of the simulated MoE layers (attention and experts), over all ranks.
    pub moe_flops: f64,
}

impl StepFrame {
    /// The frame of one step whose MoE layers route `layers` (each `ranks` rows of the model's
    /// experts); the first layer's rows give every rank's tokens.
    pub fn of(scenario: &Scenario, hardware: &Hardware, ranks: u32, layers: &[Vec<u32>]) -> Self {
        let model = scenario.model;
        let experts = model.routed_experts as usize;
        let top_k = u64::from(model.top_k.max(1));
        let tokens_of = |loads: &[u32], rank: usize| {
            loads
                .get(rank * experts..(rank + 1) * experts)
                .map_or(0, |row| {
                    row.iter().map(|&c| u64::from(c)).sum::<u64>() / top_k
                })
        };
        let first = layers.first().map_or(&[][..], Vec::as_slice);
        let most_tokens = (0..ranks as usize)
            .map(|rank| tokens_of(first, rank))
            .max()
            .unwrap_or(0);
        let all_tokens: u64 = (0..ranks as usize).map(|rank| tokens_of(first, rank)).sum();
        let passes = scenario.mode.passes();
        let outside_flops = all_tokens as f64
            * model.outside_moe_flops_per_token(scenario.sequence) as f64
            * passes;
        let mut moe_flops = 0.0;
        for loads in layers {
            let tokens = loads.iter().map(|&c| u64::from(c)).sum::<u64>() / top_k;
            moe_flops += tokens as f64
                * (model.balanced_flops_per_token(scenario.sequence) as f64
                    + f64::from(model.top_k) * model.expert_flops_per_token() as f64)
                * passes;
        }
        Self {
            outside_seconds: outside_moe(
                &model,
                scenario.mode,
                hardware,
                most_tokens,
                scenario.sequence,
            ),
            outside_flops,
            moe_flops,
        }
    }

    /// Model FLOPs of the whole step, the simulated MoE layers standing for `layer_scale` times
    /// as many.
    pub fn step_flops(&self, layer_scale: f64) -> f64 {
        self.outside_flops + self.moe_flops * layer_scale
    }
}

/// The workload of `scenario`, calibrated to its published imbalance.
pub fn workload_config(scenario: &Scenario, run: &RunConfig) -> WorkloadConfig {
    let config = WorkloadConfig {
        ranks: scenario.machine.ranks(),
        experts: scenario.model.routed_experts,
        top_k: scenario.model.top_k,
        layers: run.layers,
        tokens_per_rank: scenario.tokens_per_rank,
        skew: 1.0,
        drift: 0.1,
        regime_switch: 0.1,
        preference: 0.3,
        uneven_tokens: scenario.uneven_tokens,
        sampled: scenario.sampled,
        seed: run.seed,
    };
    // Calibrated on exactly the steps and seed the run replays, so that the run's no-balancing
    // imbalance is the published one.
    let skew = calibrate_skew(
        config,
        scenario.target_imbalance,
        run.warmup_steps,
        run.steps,
    );
    WorkloadConfig { skew, ..config }
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
            for (index, name) in BALANCERS.iter().enumerate() {
                let mut charged = OverheadBreakdown::default();
                let mut first_chooser = None;
                let mut planning_host = 0.0;
                match *name {
                    "none" => none.plan_into(matrix, &mut plan)?,
                    "ideal" => ideal.plan_into(matrix, &mut plan)?,
                    "eplb-oracle" => oracle.plan_into(matrix, &mut plan)?,
                    "eplb-replace" => {
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
                    "lplb" => {
                        lplb[layer].plan_into(matrix, &mut plan)?;
                        // It gathers the load and solves its program every microbatch; it
                        // moves no weights.
                        charged.all_gather_us = all_gather * 1e6;
                        charged.planning_us = overheads.lplb_solve * 1e6;
                    }
                    "eplb" => {
                        deployed[layer].plan_into(matrix, &mut plan)?;
                        if replan && plan.metrics().replicas > 0 {
                            let replicas = ReplicaSet::from_plan(&plan, &layout, topology)?;
                            let schedule =
                                TransferSchedule::build(&replicas, &weights, topology, eplb_moves)?;
                            charged.transfer_us =
                                simulate(&schedule, topology)?.makespan_ps as f64 * 1e-6;
                        }
                    }
                    _ => {
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
                let outcome_with = |overhead_us: f64| {
                    layer_outcome(
                        &model,
                        scenario.mode,
                        &hardware,
                        &plan,
                        matrix,
                        scenario.sequence,
                        &labels,
                        overhead_us * 1e-6,
                    )
                };
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
                if *name == "none" {
                    initial += plan.metrics().imbalance();
                }
                if *name == "ultraep" {
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

/// One point of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    /// What varies, e.g. "EP 16" or "2 slots".
    pub label: String,
    /// Mean no-balancing imbalance.
    pub initial_imbalance: f64,
    /// ultraep's mean imbalance.
    pub ultraep_imbalance: f64,
    /// Fractions of ideal throughput: none, EPLB as deployed, ultraep.
    pub none_fraction: f64,
    /// EPLB as deployed.
    pub eplb_fraction: f64,
    /// ultraep.
    pub ultraep_fraction: f64,
    /// ultraep's mean weight transfer per layer, microseconds.
    pub transfer_us: f64,
    /// ultraep's mean replicas per layer.
    pub replicas: f64,
}

/// The sweeps of the evaluation: one model, one knob at a time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweeps {
    /// The scenario swept.
    pub scenario: &'static str,
    /// Steps replayed at every point.
    pub steps: u32,
    /// MoE layers simulated at every point.
    pub layers: u32,
    /// Expert-parallel size 8 to 72 (one NVL72 domain; the model's popularity as calibrated at
    /// EP64, so the imbalance is what that popularity gives at each size).
    pub ep_size: Vec<SweepPoint>,
    /// Redundant slots per rank 0 to 4 at EP64.
    pub slots: Vec<SweepPoint>,
    /// ultraep's weight transfers with and without relays at EP64.
    pub relays: Vec<SweepPoint>,
    /// ultraep's planner weighing balance alone, and transfers among plans as balanced, at EP64:
    /// imbalance against transfer per layer.
    pub transfer_aware: Vec<SweepPoint>,
    /// The fraction of a port's bandwidth transferred bytes move at, 0.4 to 1.0, on top of the
    /// calibrated transfer costs.
    pub transfer_bandwidth: Vec<SweepPoint>,
    /// The workload's knobs that no published figure sets (how fast popularity drifts, how often
    /// the hot experts change, how much sources differ), one at a time, each point's skew
    /// recalibrated to the scenario's published imbalance.
    pub workload_knobs: Vec<SweepPoint>,
}

fn point(label: String, result: &ScenarioResult) -> SweepPoint {
    let get = |name| {
        result
            .balancer(name)
            .cloned()
            .unwrap_or_else(|| result.balancers[0].clone())
    };
    let (none, eplb, ultraep) = (get("none"), get("eplb"), get("ultraep"));
    SweepPoint {
        label,
        initial_imbalance: result.initial_imbalance,
        ultraep_imbalance: ultraep.imbalance,
        none_fraction: none.fraction_of_ideal,
        eplb_fraction: eplb.fraction_of_ideal,
        ultraep_fraction: ultraep.fraction_of_ideal,
        transfer_us: ultraep.transfer_us,
        replicas: ultraep.replicas,
    }
}

/// Sets one knob of a workload.
type SetKnob = fn(WorkloadConfig, f64) -> WorkloadConfig;

/// Runs the sweeps on Qwen3-235B training with `run`'s steps and layers; `progress` is called
/// after every step of every point.
pub fn run_sweeps(run: &RunConfig, progress: &mut dyn FnMut()) -> Result<Sweeps, BenchError> {
    let scenario = Scenario::published()
        .into_iter()
        .find(|s| s.name == "Qwen3-235B training")
        .ok_or_else(|| BenchError::InvalidProblem {
            source_name: "sweeps".into(),
            message: "the Qwen3-235B training scenario is missing".into(),
        })?;
    let calibrated = workload_config(&scenario, run);
    // Every point runs at the scenario's rates, fitted once at EP64.
    let run = &RunConfig {
        efficiency: Some(scenario_efficiency(&scenario, run)?),
        ..*run
    };
    let mut ep_size = Vec::new();
    for ranks in [8, 16, 32, 64, 72] {
        let config = WorkloadConfig {
            ranks,
            ..calibrated
        };
        let result = run_workload(&scenario, run, config, &nvl72_gpus(ranks)?, progress)?;
        ep_size.push(point(format!("EP {ranks}"), &result));
    }
    let rack = nvl72_gpus(64)?;
    let mut slots = Vec::new();
    for count in 0..=4 {
        let swept = RunConfig {
            slots_per_rank: count,
            ..*run
        };
        let result = run_workload(&scenario, &swept, calibrated, &rack, progress)?;
        slots.push(point(format!("{count} slots"), &result));
    }
    let mut relays = Vec::new();
    for (label, on) in [("relays on", true), ("relays off", false)] {
        let swept = RunConfig { relays: on, ..*run };
        let result = run_workload(&scenario, &swept, calibrated, &rack, progress)?;
        relays.push(point(label.to_owned(), &result));
    }
    let mut transfer_aware = Vec::new();
    for (label, on) in [("balance only", false), ("transfer-aware plans", true)] {
        let swept = RunConfig {
            transfer_aware: on,
            ..*run
        };
        let result = run_workload(&scenario, &swept, calibrated, &rack, progress)?;
        transfer_aware.push(point(label.to_owned(), &result));
    }
    let mut transfer_bandwidth = Vec::new();
    for fraction in [0.4, 0.6, 0.8, 1.0] {
        let swept = RunConfig {
            overheads: Overheads {
                transfer_bandwidth: fraction,
                ..run.overheads
            },
            ..*run
        };
        let result = run_workload(&scenario, &swept, calibrated, &rack, progress)?;
        transfer_bandwidth.push(point(format!("{fraction} of a port"), &result));
    }
    let mut workload_knobs = Vec::new();
    let knobs: [(&str, f64, SetKnob); 9] = [
        ("drift 0.05", 0.05, |c, v| WorkloadConfig { drift: v, ..c }),
        ("drift 0.1 (default)", 0.1, |c, v| WorkloadConfig {
            drift: v,
            ..c
        }),
        ("drift 0.2", 0.2, |c, v| WorkloadConfig { drift: v, ..c }),
        ("regime switch 0", 0.0, |c, v| WorkloadConfig {
            regime_switch: v,
            ..c
        }),
        ("regime switch 0.1 (default)", 0.1, |c, v| WorkloadConfig {
            regime_switch: v,
            ..c
        }),
        ("regime switch 0.3", 0.3, |c, v| WorkloadConfig {
            regime_switch: v,
            ..c
        }),
        ("source preference 0", 0.0, |c, v| WorkloadConfig {
            preference: v,
            ..c
        }),
        ("source preference 0.3 (default)", 0.3, |c, v| {
            WorkloadConfig { preference: v, ..c }
        }),
        ("source preference 0.6", 0.6, |c, v| WorkloadConfig {
            preference: v,
            ..c
        }),
    ];
    for (label, value, set) in knobs {
        let config = set(calibrated, value);
        let skew = calibrate_skew(
            config,
            scenario.target_imbalance,
            run.warmup_steps,
            run.steps,
        );
        let config = WorkloadConfig { skew, ..config };
        let result = run_workload(&scenario, run, config, &rack, progress)?;
        workload_knobs.push(point(label.to_owned(), &result));
    }
    Ok(Sweeps {
        scenario: scenario.name,
        steps: run.steps,
        layers: run.layers,
        ep_size,
        slots,
        relays,
        transfer_aware,
        transfer_bandwidth,
        workload_knobs,
    })
}
