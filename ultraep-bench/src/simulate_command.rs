//! `ultraep simulate`: one scenario, or a recorded trace, through every balancer.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::BenchError;
use crate::cross_domain::{SlowLoop, cross_domain_table, run_cross_domain};
use crate::decode_objective::run_decode_objective;
use crate::experiment::{RunConfig, Scenario, ScenarioResult, run_scenario, run_steps};
use crate::machine::{Machine, nvl72_gpus};
use crate::models::ModelShape;
use crate::report::decode_table;
use crate::report::summary_table;
use crate::step::Mode;
use crate::step_fit::EfficiencySource;
use crate::trace::Trace;

/// Arguments of `ultraep simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A published scenario (by name, or a part of it such as "DeepSeek").
    #[arg(long, conflicts_with = "trace")]
    pub scenario: Option<String>,
    /// A trace: a JSON-lines file or a TensorRT-LLM expert-statistics directory.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// The model the trace's loads run on: GLM-4.5-Air, Qwen3-235B, DeepSeek-V3 or GLM-4.7.
    #[arg(long, default_value = "Qwen3-235B")]
    pub model: String,
    /// Training or prefill (for a trace).
    #[arg(long, value_enum, default_value_t = ModeChoice::Prefill)]
    pub mode: ModeChoice,
    /// Attention context length (for a trace).
    #[arg(long, default_value_t = 8192)]
    pub sequence: u64,
    /// More steps and layers (for a scenario).
    #[arg(long)]
    pub full: bool,
    /// Print every balancer's figures as JSON instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// Training or prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeChoice {
    /// Forward and backward.
    Training,
    /// Forward only.
    Prefill,
    /// Forward only, one token per sequence over the context.
    Decode,
}

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

/// Runs `ultraep simulate` and returns its table.
pub fn run(args: &SimulateArgs) -> Result<String, BenchError> {
    let input = match (&args.trace, &args.scenario) {
        (Some(path), _) => SimulationInput::Trace {
            trace: Trace::load(path)?,
            source: path.display().to_string(),
            model: args.model.clone(),
            mode: match args.mode {
                ModeChoice::Training => Mode::Training,
                ModeChoice::Prefill => Mode::Prefill,
                ModeChoice::Decode => Mode::Decode,
            },
            sequence: args.sequence,
        },
        (None, name) => SimulationInput::Scenario(name.clone()),
    };
    let result = simulate(&input, args.full)?;
    if args.json {
        return to_json(&result);
    }
    let mut text = table(&result);
    // A scenario the paper does not evaluate also gets its own comparison: the slow loop for a
    // group spanning domains, the two objectives for decode.
    if let SimulationInput::Scenario(_) = input {
        let run = if args.full {
            RunConfig::FULL
        } else {
            RunConfig::QUICK
        };
        let scenario = result.scenario;
        if Scenario::spanning_domains()
            .iter()
            .any(|s| s.name == scenario.name)
        {
            let cross = run_cross_domain(&scenario, &run, &SlowLoop::RUNS, &mut || {})?;
            text.push_str("\nThe slow loop across domains (simulated):\n\n");
            text.push_str(&cross_domain_table(&[cross]));
        }
        if scenario.mode == Mode::Decode {
            let points = run_decode_objective(&scenario, &run, &mut || {})?;
            text.push('\n');
            text.push_str(&decode_table(&scenario, &points));
        }
    }
    Ok(text)
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

/// The summary table of `result` and one row per balancer, in Markdown.
pub fn table(result: &ScenarioResult) -> String {
    let mut out = summary_table(std::slice::from_ref(result));
    out.push_str("\n| balancer | step (ms) | TFLOPS/GPU | replicas per layer | planning (us/layer) | transfer (us/layer) |\n|---|---|---|---|---|---|\n");
    for balancer in &result.balancers {
        out.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            balancer.balancer,
            balancer.step_seconds * 1e3,
            balancer.tflops_per_gpu,
            balancer.replicas,
            balancer.planning_us,
            balancer.transfer_us
        ));
    }
    out
}

/// `value` as pretty JSON and a newline.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, BenchError> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|error| BenchError::InvalidProblem {
            source_name: "JSON output".into(),
            message: error.to_string(),
        })
}
