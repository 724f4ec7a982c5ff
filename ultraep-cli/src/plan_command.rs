//! `ultraep plan`: plan one problem file with a chosen balancer and print the plan as JSON.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde::Serialize;
use ultraep_plan::{
    Balancer, Eplb, EplbMode, InstanceCost, LoadMatrix, NoBalance, Plan, PlanConfig, Planner,
    SplitMode, TransferEstimate,
};

use ultraep_bench::BenchError;
use ultraep_bench::problem_file::PlanProblem;

/// Arguments of `ultraep plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The problem file (JSON, see docs/plan-format.md); `-` reads standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// The balancer: ultraep, eplb (planned from this same load: EPLB with an oracle), or none.
    #[arg(long, value_enum, default_value_t = BalancerChoice::Ultraep)]
    pub balancer: BalancerChoice,
    /// Print a human summary instead of JSON.
    #[arg(long)]
    pub text: bool,
    /// How far above the lower bound a rank may stay, in parts per million (ultraep only).
    #[arg(long, default_value_t = PlanConfig::default().tolerance_ppm)]
    pub tolerance_ppm: u32,
    /// The smallest quota a replica may get (ultraep only).
    #[arg(long, default_value_t = PlanConfig::default().min_replica_tokens)]
    pub min_replica_tokens: u32,
    /// Let a master give away all its tokens (ultraep only).
    #[arg(long)]
    pub master_may_empty: bool,
    /// How sources' tokens are split among instances (ultraep only).
    #[arg(long, value_enum, default_value_t = SplitChoice::Locality)]
    pub split: SplitChoice,
    /// A fixed cost per instance (a weight read), in units of one token's cost: the planner then
    /// minimises the busiest rank's `tokens + instances x this` (the decode objective; 0, the
    /// default, counts tokens only). ultraep only.
    #[arg(long, default_value_t = 0)]
    pub instance_cost_tokens: u64,
    /// What copying an expert's weights into a slot costs, in units of one token's cost: among
    /// plans as balanced, the planner then prefers cheap transfers (no replica worth less than
    /// its copy, copies spread over the receiving ports). ultraep only.
    #[arg(long)]
    pub copy_cost_tokens: Option<u64>,
    /// Also time the planner: the median of nine warm plans of this problem, printed as
    /// `plan_micros` (otherwise it plans once).
    #[arg(long)]
    pub time: bool,
}

/// The balancers `ultraep plan` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BalancerChoice {
    /// Exact-load quota planning.
    Ultraep,
    /// DeepSeek EPLB with fixed masters, planned from the given load.
    Eplb,
    /// Masters only.
    None,
}

/// The split modes `ultraep plan` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitChoice {
    /// Local tokens first, the rest in proportion.
    Locality,
    /// In proportion to the quotas.
    Proportional,
    /// Local tokens first, the rest filling the instances in order (no division).
    Contiguous,
}

#[derive(Debug, Serialize)]
struct PlanOutput {
    balancer: &'static str,
    instances: Vec<InstanceOutput>,
    split: Vec<SplitOutput>,
    rank_loads: Vec<u64>,
    imbalance: f64,
    initial_imbalance: f64,
    lower_bound: f64,
    replicas: u32,
    tokens_leaving_source: u64,
    tokens_crossing_domains: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_micros: Option<f64>,
}

#[derive(Debug, Serialize)]
struct InstanceOutput {
    expert: u32,
    rank: u32,
    replica: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<u16>,
    quota: u32,
}

#[derive(Debug, Serialize)]
struct SplitOutput {
    source: u32,
    expert: u32,
    rank: u32,
    tokens: u32,
}

/// Runs `ultraep plan` and returns what it prints.
pub fn run(args: &PlanArgs) -> Result<String, BenchError> {
    let (source_name, text) = read_input(args)?;
    let problem = PlanProblem::from_json(&text).map_err(|message| BenchError::InvalidProblem {
        source_name: source_name.clone(),
        message,
    })?;
    let plan_error = |source| BenchError::Plan {
        source_name: source_name.clone(),
        source,
    };
    let loads = LoadMatrix::new(
        &problem.loads,
        problem.layout.num_ranks() as usize,
        problem.layout.num_experts() as usize,
    )
    .map_err(plan_error)?;
    let mut balancer: Box<dyn Balancer> = match args.balancer {
        BalancerChoice::Ultraep => {
            let config = PlanConfig {
                tolerance_ppm: args.tolerance_ppm,
                min_replica_tokens: args.min_replica_tokens,
                master_keeps_token: !args.master_may_empty,
                split: match args.split {
                    SplitChoice::Locality => SplitMode::LocalityAware,
                    SplitChoice::Proportional => SplitMode::Proportional,
                    SplitChoice::Contiguous => SplitMode::Contiguous,
                },
                cost: InstanceCost {
                    per_token: 1,
                    per_instance: args.instance_cost_tokens,
                },
                transfer: args
                    .copy_cost_tokens
                    .map(|copy_cost| TransferEstimate { copy_cost }),
            };
            Box::new(
                Planner::new(
                    problem.layout,
                    problem.domains,
                    problem.slots_per_rank,
                    config,
                )
                .map_err(plan_error)?,
            )
        }
        BalancerChoice::Eplb => Box::new(
            Eplb::new(
                problem.layout,
                problem.domains,
                problem.slots_per_rank,
                EplbMode::Oracle,
            )
            .map_err(plan_error)?,
        ),
        BalancerChoice::None => {
            Box::new(NoBalance::new(problem.layout, problem.domains).map_err(plan_error)?)
        }
    };
    let (plan, plan_micros) = if args.time {
        let (plan, micros) = timed_plan(balancer.as_mut(), loads).map_err(plan_error)?;
        (plan, Some(micros))
    } else {
        (balancer.plan(loads).map_err(plan_error)?, None)
    };
    if args.text {
        return Ok(plan.to_string());
    }
    let output = to_output(balancer.name(), &plan, loads, plan_micros);
    let mut json = serde_json::to_string(&output).map_err(|error| BenchError::InvalidProblem {
        source_name,
        message: format!("could not write the plan: {error}"),
    })?;
    json.push('\n');
    Ok(json)
}

fn read_input(args: &PlanArgs) -> Result<(String, String), BenchError> {
    let mut text = String::new();
    if args.input.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| BenchError::Io {
                path: "standard input".into(),
                source,
            })?;
        return Ok(("standard input".into(), text));
    }
    let text = std::fs::read_to_string(&args.input).map_err(|source| BenchError::Io {
        path: args.input.clone(),
        source,
    })?;
    Ok((args.input.display().to_string(), text))
}

/// Plans once to warm the balancer's buffers, then reports the median of nine warm runs, the time
/// a reused planner takes every microbatch.
fn timed_plan(
    balancer: &mut dyn Balancer,
    loads: LoadMatrix<'_>,
) -> Result<(Plan, f64), ultraep_plan::PlanError> {
    let mut plan = Plan::default();
    balancer.plan_into(loads, &mut plan)?;
    let mut micros = [0.0; 9];
    for sample in &mut micros {
        let start = Instant::now();
        balancer.plan_into(loads, &mut plan)?;
        *sample = start.elapsed().as_secs_f64() * 1e6;
    }
    micros.sort_by(f64::total_cmp);
    Ok((plan, micros[micros.len() / 2]))
}

fn to_output(
    balancer: &'static str,
    plan: &Plan,
    loads: LoadMatrix<'_>,
    plan_micros: Option<f64>,
) -> PlanOutput {
    let metrics = plan.metrics();
    PlanOutput {
        balancer,
        instances: plan
            .instances()
            .iter()
            .map(|instance| InstanceOutput {
                expert: instance.expert,
                rank: instance.rank,
                replica: instance.is_replica(),
                slot: instance.replica_slot,
                quota: instance.quota,
            })
            .collect(),
        split: plan
            .split(loads)
            .map(|entry| SplitOutput {
                source: entry.source,
                expert: entry.expert,
                rank: plan.instances()[entry.instance as usize].rank,
                tokens: entry.tokens,
            })
            .collect(),
        rank_loads: plan.rank_loads().to_vec(),
        imbalance: metrics.imbalance(),
        initial_imbalance: metrics.initial_imbalance(),
        lower_bound: metrics.lower_bound_imbalance(),
        replicas: metrics.replicas,
        tokens_leaving_source: metrics.tokens_leaving_source,
        tokens_crossing_domains: metrics.tokens_crossing_domains,
        plan_micros,
    }
}
