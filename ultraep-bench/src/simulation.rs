//! One simulation: a published scenario, or recorded loads on a model, through every balancer and
//! the MoE step simulator. `ultraep simulate` and `ultraep.simulate` both run it.

use crate::BenchError;
use crate::experiment::{RunConfig, Scenario, ScenarioResult, run_scenario, run_steps};
use crate::machine::{Machine, nvl72_gpus};
use crate::models::ModelShape;
use crate::step::Mode;
use crate::step_fit::EfficiencySource;
use crate::trace::Trace;

/// What to simulate: a published scenario, or recorded loads on a model.
#[derive(Debug, Clone)]
pub enum SimulationInput {
    /// A published scenario, by name or a part of it ("DeepSeek"); `None` for the default one.
    Scenario(Option<String>),
    /// Recorded loads, run as `model` in `mode` with attention over `sequence` tokens.
    Trace {
        /// The loads.
        trace: Trace,
        /// Where they came from, for error messages.
        source: String,
        /// The model the loads run on (GLM-4.5-Air, Qwen3-235B, DeepSeek-V3 or GLM-4.7).
        model: String,
        /// Training or prefill.
        mode: Mode,
        /// Attention context length.
        sequence: u64,
    },
}

/// Runs every balancer through the MoE step simulator on `input` (`full`: more steps and layers
/// for a scenario).
pub fn simulate(input: &SimulationInput, full: bool) -> Result<ScenarioResult, BenchError> {
    let run = if full {
        RunConfig::FULL
    } else {
        RunConfig::QUICK
    };
    match input {
        SimulationInput::Trace {
            trace,
            source,
            model,
            mode,
            sequence,
        } => {
            let model = ModelShape::by_name(model).ok_or_else(|| BenchError::InvalidProblem {
                source_name: model.clone(),
                message: "unknown model; known: GLM-4.5-Air, Qwen3-235B, DeepSeek-V3, GLM-4.7"
                    .into(),
            })?;
            if trace.experts != model.routed_experts {
                return Err(BenchError::InvalidProblem {
                    source_name: source.clone(),
                    message: format!(
                        "the trace has {} experts, {} has {}",
                        trace.experts, model.name, model.routed_experts
                    ),
                });
            }
            let topology = nvl72_gpus(trace.ranks)?;
            let scenario = Scenario {
                name: "trace",
                model: ModelShape {
                    top_k: trace.top_k.filter(|&k| k > 0).unwrap_or(model.top_k),
                    ..model
                },
                mode: *mode,
                target_imbalance: 0.0,
                tokens_per_rank: 0,
                sequence: *sequence,
                uneven_tokens: 0.0,
                published_final: 0.0,
                published_fraction: None,
                published_speedup: None,
                published_eplb_fraction: None,
                published_eplb_imbalance: None,
                published_tflops: None,
                // A trace runs at the rates fitted on its model's published training scenario,
                // where there is one.
                efficiency: Scenario::published()
                    .into_iter()
                    .find(|s| s.mode == Mode::Training && s.model.name == model.name)
                    .map_or(EfficiencySource::Assumed, |s| {
                        EfficiencySource::FittedOn(s.name)
                    }),
                machine: Machine::Nvl72 { ranks: trace.ranks },
                sampled: false,
            };
            // A long enough trace warms EPLB up on its first steps, which are then not measured.
            let recorded = trace.steps.len() as u32;
            let warmup_steps = if recorded > 2 * run.eplb_window {
                run.eplb_window
            } else {
                0
            };
            let run = RunConfig {
                steps: recorded - warmup_steps,
                warmup_steps,
                layers: trace.layers(),
                ..run
            };
            let mut steps = trace.steps.clone().into_iter();
            run_steps(
                &scenario,
                &run,
                trace.ranks,
                &mut || steps.next().unwrap_or_default(),
                &topology,
                &trace.layouts,
                &mut || {},
            )
        }
        SimulationInput::Scenario(name) => {
            let wanted = name.as_deref().unwrap_or("Qwen3-235B prefill STEM");
            let scenario = Scenario::matching(wanted)?[0];
            run_scenario(&scenario, &run, &scenario.machine.topology()?, &mut || {})
        }
    }
}
