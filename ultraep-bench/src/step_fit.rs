//! Fitting the step simulator's compute rates to the published throughputs.
//!
//! How fast attention and the expert GEMMs run sets how much of a step the experts take, and so
//! what balancing is worth; the simulator cannot derive either rate. The paper publishes, for each
//! training scenario, the TFLOPS per GPU of the force-balanced ideal and of no balancing. Those two
//! figures fix exactly two unknowns: the fraction of the dense peak reached by the balanced work
//! (attention, dense layers) and by the expert GEMMs on large token counts ([`Efficiency`]).
//! Everything else stays a prediction: ultraep's, EPLB's and LPLB's throughputs, and every prefill
//! figure (prefill borrows the rates fitted on a training scenario; the paper publishes no prefill
//! TFLOPS).
//!
//! The fit replays the scenario's own workload (same seed, steps and layers as the run) under the
//! ideal and no balancing only, and solves the two equations "simulated TFLOPS = published TFLOPS"
//! by Newton's method. Step time is linear in the inverse of the dense rate and, where expert
//! GEMMs are bound by FLOPs, in the inverse of the expert rate, so a few iterations converge. No
//! rate may exceed the peak ([`PEAK`]): where the published figures would need one to, that rate
//! stays at the peak and the figure is missed, in the open (the calibration table shows the
//! rates and both TFLOPS). The arithmetic is deterministic: the same scenario and run give the
//! same rates on any machine.

use ultraep_plan::{Balancer, ExpertLayout, ForceBalanced, LoadMatrix, NoBalance, Plan};

use crate::BenchError;
use crate::run_config::RunConfig;
pub use crate::scenario::EfficiencySource;
use crate::scenario::{Scenario, workload_config};
use crate::step::{Efficiency, Hardware};
use crate::step_frame::StepFrame;
use crate::workload::Workload;

/// The rates `scenario` runs at under `run`: `run.efficiency` when set, else from the scenario's
/// [`EfficiencySource`].
pub fn scenario_efficiency(scenario: &Scenario, run: &RunConfig) -> Result<Efficiency, BenchError> {
    if let Some(efficiency) = run.efficiency {
        return Ok(efficiency);
    }
    let published = |name: &str| {
        Scenario::published()
            .into_iter()
            .find(|s| s.name == name && s.efficiency != scenario.efficiency)
            .ok_or_else(|| BenchError::InvalidProblem {
                source_name: scenario.name.to_owned(),
                message: format!("its compute rates come from {name}, which is not published"),
            })
    };
    match scenario.efficiency {
        EfficiencySource::Assumed => Ok(Efficiency::ASSUMED),
        EfficiencySource::Fitted => fit_efficiency(scenario, run),
        EfficiencySource::FittedToNone { experts_from } => {
            let experts = scenario_efficiency(&published(experts_from)?, run)?.experts;
            fit_dense_efficiency(scenario, run, experts)
        }
        EfficiencySource::FittedOn(name) => scenario_efficiency(&published(name)?, run),
    }
}

/// The highest rate a fit may give: the dense peak itself. Where the published figures need a
/// faster rate, the rate stays at the peak and the simulation misses them; the calibration table
/// shows by how much.
pub const PEAK: f64 = 1.0;

/// The dense rate under which no balancing reaches the fraction of the ideal that `scenario`'s
/// published figures imply, with expert GEMMs at `experts`; [`PEAK`] where no rate up to the peak
/// does.
pub fn fit_dense_efficiency(
    scenario: &Scenario,
    run: &RunConfig,
    experts: f64,
) -> Result<Efficiency, BenchError> {
    let (Some(fraction), Some(speedup)) = (scenario.published_fraction, scenario.published_speedup)
    else {
        return Err(BenchError::InvalidProblem {
            source_name: scenario.name.to_owned(),
            message: "no published fraction of ideal and speedup to fit the dense rate to".into(),
        });
    };
    // No balancing's step over the ideal's.
    let target = speedup / fraction;
    let references = References::replay(scenario, run)?;
    let dense = solve(
        &|inverse| {
            let [ideal, none] = references.seconds(Efficiency {
                dense: 1.0 / inverse,
                experts,
            })?;
            Ok(none / ideal / target - 1.0)
        },
        1.0 / Efficiency::ASSUMED.dense,
    )?;
    Ok(Efficiency {
        dense: bounded(dense),
        experts,
    })
}

/// The rates under which `scenario`'s workload, replayed as `run` replays it, gives the published
/// TFLOPS per GPU of the ideal and of no balancing. Where that needs a rate above [`PEAK`], the
/// rate is the peak and the other one gives the ideal's TFLOPS (of the two ways, the one whose
/// no balancing lands nearer its published figure).
pub fn fit_efficiency(scenario: &Scenario, run: &RunConfig) -> Result<Efficiency, BenchError> {
    let published = scenario
        .published_tflops
        .ok_or_else(|| BenchError::InvalidProblem {
            source_name: scenario.name.to_owned(),
            message: "no published TFLOPS to fit the compute rates to".into(),
        })?;
    let references = References::replay(scenario, run)?;
    let per_gpu = |tflops: f64| {
        references.flops_per_step / (f64::from(scenario.machine.ranks()) * tflops * 1e12)
    };
    let target = [per_gpu(published.ideal), per_gpu(published.none)];
    // Unknowns: the inverse rates, in which step time is (nearly) linear.
    let residual = |inverse: [f64; 2]| -> Result<[f64; 2], BenchError> {
        let [ideal, none] = references.seconds(Efficiency {
            dense: 1.0 / inverse[0],
            experts: 1.0 / inverse[1],
        })?;
        Ok([ideal / target[0] - 1.0, none / target[1] - 1.0])
    };
    let start = [
        1.0 / Efficiency::ASSUMED.dense,
        1.0 / Efficiency::ASSUMED.experts,
    ];
    if let Some(inverse) = solve_both(&residual, start)?
        && inverse.iter().all(|&x| x >= 1.0 / PEAK)
    {
        return Ok(Efficiency {
            dense: 1.0 / inverse[0],
            experts: 1.0 / inverse[1],
        });
    }
    // One rate at the peak, the other fitted to the ideal alone.
    let mut best: Option<(f64, Efficiency)> = None;
    for pinned in 0..2 {
        let with = |free: f64| {
            let mut inverse = [1.0 / PEAK; 2];
            inverse[1 - pinned] = free;
            inverse
        };
        let free = bounded(solve(&|free| Ok(residual(with(free))?[0]), 2.0)?);
        let inverse = with(1.0 / free);
        let miss = residual(inverse)?[1].abs();
        if best.is_none_or(|(least, _)| miss < least) {
            best = Some((
                miss,
                Efficiency {
                    dense: 1.0 / inverse[0],
                    experts: 1.0 / inverse[1],
                },
            ));
        }
    }
    Ok(best.map_or(
        Efficiency {
            dense: PEAK,
            experts: PEAK,
        },
        |(_, efficiency)| efficiency,
    ))
}

/// A rate from its fitted inverse: the peak where there is none or it is above the peak.
fn bounded(inverse: Option<f64>) -> f64 {
    match inverse {
        Some(inverse) if inverse >= 1.0 / PEAK => 1.0 / inverse,
        _ => PEAK,
    }
}

/// The positive root of `f` by Newton's method from `start` (slopes by forward differences), or
/// `None` where the iteration leaves the positive numbers or does not settle.
fn solve(
    f: &dyn Fn(f64) -> Result<f64, BenchError>,
    start: f64,
) -> Result<Option<f64>, BenchError> {
    let mut x = start;
    for _ in 0..30 {
        let at = f(x)?;
        if at.abs() < 1e-9 {
            return Ok(Some(x));
        }
        let step = x * 1e-4;
        let slope = (f(x + step)? - at) / step;
        let next = x - at / slope;
        if !next.is_finite() || next <= 0.0 {
            return Ok(None);
        }
        x = next;
    }
    Ok((f(x)?.abs() < 1e-6).then_some(x))
}

/// The positive root of the two equations `f` by Newton's method from `start`, or `None` where
/// the iteration leaves the positive numbers or does not settle.
fn solve_both(
    f: &dyn Fn([f64; 2]) -> Result<[f64; 2], BenchError>,
    start: [f64; 2],
) -> Result<Option<[f64; 2]>, BenchError> {
    let mut x = start;
    for _ in 0..30 {
        let at = f(x)?;
        if at[0].abs().max(at[1].abs()) < 1e-9 {
            return Ok(Some(x));
        }
        let mut jacobian = [[0.0; 2]; 2];
        for unknown in 0..2 {
            let mut moved = x;
            let step = x[unknown] * 1e-4;
            moved[unknown] += step;
            let there = f(moved)?;
            for equation in 0..2 {
                jacobian[equation][unknown] = (there[equation] - at[equation]) / step;
            }
        }
        let determinant = jacobian[0][0] * jacobian[1][1] - jacobian[0][1] * jacobian[1][0];
        let next = [
            x[0] - (at[0] * jacobian[1][1] - at[1] * jacobian[0][1]) / determinant,
            x[1] - (at[1] * jacobian[0][0] - at[0] * jacobian[1][0]) / determinant,
        ];
        if next.iter().any(|&v| !v.is_finite() || v <= 0.0) {
            return Ok(None);
        }
        x = next;
    }
    let at = f(x)?;
    Ok((at[0].abs().max(at[1].abs()) < 1e-6).then_some(x))
}

/// A scenario's steps, kept to replay the ideal and no balancing under any rates.
struct References {
    scenario: Scenario,
    hardware: Hardware,
    labels: Vec<u32>,
    layout: ExpertLayout,
    domains: ultraep_plan::RankDomains,
    steps: Vec<Vec<Vec<u32>>>,
    layers: u32,
    flops_per_step: f64,
}

impl References {
    fn replay(scenario: &Scenario, run: &RunConfig) -> Result<Self, BenchError> {
        let config = workload_config(scenario, run);
        let topology = scenario.machine.topology()?;
        let hardware = Hardware::of(&topology)?;
        let labels: Vec<u32> = topology.rank_domains().iter().map(|d| d.0).collect();
        let layout = ExpertLayout::balanced_blocks(config.ranks, scenario.model.routed_experts)?;
        let domains = ultraep_plan::RankDomains::from_labels(labels.clone())?;
        let mut workload = Workload::new(config);
        for _ in 0..run.warmup_steps {
            workload.next_step();
        }
        let steps: Vec<Vec<Vec<u32>>> = (0..run.steps).map(|_| workload.next_step()).collect();
        let layer_scale = f64::from(scenario.model.moe_layers) / f64::from(config.layers.max(1));
        let mut flops = 0.0;
        for layers in &steps {
            flops +=
                StepFrame::of(scenario, &hardware, config.ranks, layers).step_flops(layer_scale);
        }
        Ok(Self {
            scenario: *scenario,
            hardware,
            labels,
            layout,
            domains,
            layers: config.layers,
            flops_per_step: flops / f64::from(run.steps.max(1)),
            steps,
        })
    }

    /// Mean step seconds of the ideal and of no balancing under `efficiency`.
    fn seconds(&self, efficiency: Efficiency) -> Result<[f64; 2], BenchError> {
        let hardware = Hardware {
            efficiency,
            ..self.hardware
        };
        let model = self.scenario.model;
        let ranks = self.labels.len();
        let mut ideal = ForceBalanced::new(self.layout.clone(), self.domains.clone())?;
        let mut none = NoBalance::new(self.layout.clone(), self.domains.clone())?;
        let mut plan = Plan::default();
        let (mut moe, mut outside) = ([0.0; 2], 0.0);
        for layers in &self.steps {
            outside +=
                StepFrame::of(&self.scenario, &hardware, ranks as u32, layers).outside_seconds;
            for loads in layers {
                let matrix = LoadMatrix::new(loads, ranks, model.routed_experts as usize)?;
                let simulated = self.scenario.layer(&model, &hardware, matrix, &self.labels);
                for (sum, balancer) in moe
                    .iter_mut()
                    .zip([&mut ideal as &mut dyn Balancer, &mut none])
                {
                    balancer.plan_into(matrix, &mut plan)?;
                    *sum += simulated.outcome(&plan, 0.0).time.total();
                }
            }
        }
        let steps = self.steps.len().max(1) as f64;
        let layer_scale = f64::from(model.moe_layers) / f64::from(self.layers.max(1));
        Ok(moe.map(|seconds| (seconds * layer_scale + outside) / steps))
    }
}
