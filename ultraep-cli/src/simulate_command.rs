//! `ultraep simulate`: one scenario, or a recorded trace, through every balancer.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ultraep_bench::BenchError;
use ultraep_bench::cross_domain::{SlowLoop, cross_domain_table, run_cross_domain};
use ultraep_bench::decode_objective::run_decode_objective;
use ultraep_bench::experiment::{RunConfig, Scenario};
use ultraep_bench::simulation::{SimulationInput, simulate};
use ultraep_bench::step::Mode;
use ultraep_bench::tables::{decode_table, scenario_table};
use ultraep_bench::trace::Trace;

use crate::json_output::to_json;

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
    let mut text = scenario_table(&result);
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
