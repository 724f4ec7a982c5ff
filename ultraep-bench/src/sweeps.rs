//! The sweeps of the evaluation: one model, one knob at a time (EP size, slots, relays,
//! transfer-aware planning, transfer bandwidth, the workload's unpublished knobs).

use serde::Serialize;

use crate::BenchError;
use crate::experiment::run_workload;
use crate::machine::nvl72_gpus;
use crate::results::ScenarioResult;
use crate::run_config::RunConfig;
use crate::scenario::{Scenario, workload_config};
use crate::step::Overheads;
use crate::step_fit::scenario_efficiency;
use crate::workload::{WorkloadConfig, calibrate_skew};

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
