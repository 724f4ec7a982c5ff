//! `ultraep xfer`: direct fan-out against relays on a 64-GPU NVL72-class domain with DeepSeek-V3
//! experts (44 MB in FP8), for one expert replicated 1 to 32 times and for the planner's plans of the
//! published reference scenario.

use std::fmt::Write;
use std::io::IsTerminal;

use clap::Args;
use ultraep_plan::reference::ReferenceScenario;
use ultraep_plan::{Balancer, PlanConfig, Planner};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, Fanout, RelayPieces, ReplicaSet, Simulation, TransferConfig, TransferCosts,
    TransferSchedule, simulate,
};

use crate::BenchError;
use crate::machine::nvl72_gpus;

/// Arguments of `ultraep xfer`.
#[derive(Debug, Args)]
pub struct XferArgs {
    /// Replica counts of the single-expert rows.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4, 8, 16, 32])]
    pub replicas: Vec<u32>,
    /// Skip the rows of the reference scenario's plans (which draw loads for a few seconds).
    #[arg(long)]
    pub no_reference: bool,
    /// Relays wait for whole 256 KiB chunks (as published) instead of single tiles.
    #[arg(long)]
    pub chunk_relays: bool,
    /// The transfer model: "calibrated" (per-transfer cost and backpressure, calibrated against
    /// the published timings) or "ideal" (bytes at port speed only).
    #[arg(long, default_value = "calibrated")]
    pub model: String,
    /// Override the model's per-transfer cost in nanoseconds (for calibration).
    #[arg(long)]
    pub per_transfer_ns: Option<u32>,
    /// Override the model's relay forwarding overhead in parts per million (for calibration).
    #[arg(long)]
    pub relay_forward_ppm: Option<u32>,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The published EP64 weight-sync times, direct and with relays, of the reference plans at
/// 1.5 / 2.0 / 3.0 initial imbalance (`ultraep-facts.md` section 5), in microseconds.
pub const PUBLISHED_EP64_US: [(f64, f64, f64); 3] = [
    (1.5, 214.0, 194.0),
    (2.0, 265.0, 195.0),
    (3.0, 317.0, 188.0),
];

/// The published weight-sync times of a row, if it is one of the reference plans.
fn published_for(case: &str) -> Option<(f64, f64, f64)> {
    PUBLISHED_EP64_US
        .iter()
        .copied()
        .find(|(target, _, _)| case == format!("EP64 plan at {target:.1}"))
}

/// The transfer costs `args` name.
pub fn costs(args: &XferArgs) -> Result<TransferCosts, BenchError> {
    let mut costs = match args.model.to_lowercase().as_str() {
        "calibrated" => TransferCosts::CALIBRATED,
        "ideal" => TransferCosts::IDEAL,
        other => {
            return Err(BenchError::InvalidProblem {
                source_name: other.to_owned(),
                message: "unknown transfer model; known: calibrated, ideal".into(),
            });
        }
    };
    if let Some(ns) = args.per_transfer_ns {
        costs.per_transfer_ns = ns;
    }
    if let Some(ppm) = args.relay_forward_ppm {
        costs.relay_forward_ppm = ppm;
    }
    Ok(costs)
}

/// One row of the comparison.
#[derive(Debug, Clone)]
pub struct XferRow {
    /// What was moved.
    pub case: String,
    /// Replicas in the case.
    pub replicas: usize,
    /// Relayed experts in the chosen schedule.
    pub relayed: usize,
    /// Direct fan-out of every expert.
    pub direct: Simulation,
    /// The schedule the cost model chose.
    pub chosen: Simulation,
}

/// DeepSeek-V3's routed expert in FP8 with block scales.
pub fn deepseek_v3_expert() -> ExpertState {
    ExpertState::swiglu_fp8(7168, 2048)
}

/// Simulates `replicas` both ways.
pub fn compare(
    case: String,
    replicas: &ReplicaSet,
    state: &ExpertState,
    topology: &Topology,
    config: TransferConfig,
) -> Result<XferRow, BenchError> {
    let schedule = TransferSchedule::build(replicas, state, topology, config)?;
    Ok(XferRow {
        case,
        replicas: replicas.replica_count(),
        relayed: schedule.relayed_count(),
        direct: simulate(&schedule.all_direct(), topology)?,
        chosen: simulate(&schedule, topology)?,
    })
}

/// Every row of the comparison.
pub fn rows(args: &XferArgs) -> Result<Vec<XferRow>, BenchError> {
    let topology = nvl72_gpus(64)?;
    let state = deepseek_v3_expert();
    let config = TransferConfig {
        relay_pieces: if args.chunk_relays {
            RelayPieces::Chunks
        } else {
            RelayPieces::Tiles
        },
        costs: costs(args)?,
        ..TransferConfig::default()
    };
    let mut rows = Vec::new();
    for &count in &args.replicas {
        let count = count.clamp(1, 63);
        let replicas = ReplicaSet::new(vec![Fanout::new(
            0,
            0,
            0,
            (1..=count).map(|rank| (rank, 0)).collect(),
        )?])?;
        rows.push(compare(
            format!("1 expert x {count}"),
            &replicas,
            &state,
            &topology,
            config,
        )?);
    }
    if !args.no_reference {
        for target in [1.5, 2.0, 3.0] {
            let scenario = ReferenceScenario::published(target);
            let load = scenario.generate();
            let layout = scenario.layout()?;
            let mut planner = Planner::new(
                layout.clone(),
                scenario.domains()?,
                scenario.slots_per_rank,
                PlanConfig::default(),
            )?;
            let plan = planner.plan(load.matrix())?;
            let replicas = ReplicaSet::from_plan(&plan, &layout, &topology)?;
            rows.push(compare(
                format!("EP64 plan at {target:.1}"),
                &replicas,
                &state,
                &topology,
                config,
            )?);
            // The reference rows take seconds each: without a terminal to show that the command
            // works, a log gets a line per row.
            if !std::io::stderr().is_terminal() {
                eprintln!("ultraep xfer: EP64 plan at {target:.1} done");
            }
        }
    }
    Ok(rows)
}

/// Runs `ultraep xfer` and returns the table.
pub fn run(args: &XferArgs) -> Result<String, BenchError> {
    let rows = rows(args)?;
    if args.json {
        let costs = costs(args)?;
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let published = published_for(&row.case);
                serde_json::json!({
                    "case": row.case,
                    "replicas": row.replicas,
                    "relayed_experts": row.relayed,
                    "lower_bound_us": row.chosen.lower_bound_ps as f64 / 1e6,
                    "direct_us": row.direct.makespan_ps as f64 / 1e6,
                    "direct_efficiency": row.direct.efficiency(),
                    "chosen_us": row.chosen.makespan_ps as f64 / 1e6,
                    "chosen_efficiency": row.chosen.efficiency(),
                    "published_direct_us": published.map(|p| p.1),
                    "published_relays_us": published.map(|p| p.2),
                })
            })
            .collect();
        return crate::simulate_command::to_json(&serde_json::json!({
            "model": args.model,
            "per_transfer_ns": costs.per_transfer_ns,
            "bandwidth_ppm": costs.bandwidth_ppm,
            "relay_forward_ppm": costs.relay_forward_ppm,
            "backpressure": costs.backpressure,
            "chunk_relays": args.chunk_relays,
            "rows": rows,
        }));
    }
    let pieces = if args.chunk_relays {
        "256 KiB chunks"
    } else {
        "32 KiB tiles"
    };
    let mut out = format!(
        "DeepSeek-V3 experts (44.05 MB, FP8) on 64 GPUs of a GB200 NVL72 (900 GB/s per direction); relays forward {pieces}; \
         simulated with the {} transfer model ({:?})\n\n\
         | case | replicas | relayed experts | lower bound (us) | direct (us) | direct eff. | chosen (us) | chosen eff. | published direct / relays (us) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.model,
        costs(args)?,
    );
    for row in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} | {} |",
            row.case,
            row.replicas,
            row.relayed,
            row.chosen.lower_bound_ps as f64 / 1e6,
            row.direct.makespan_ps as f64 / 1e6,
            row.direct.efficiency(),
            row.chosen.makespan_ps as f64 / 1e6,
            row.chosen.efficiency(),
            PUBLISHED_EP64_US
                .iter()
                .find(|(target, _, _)| row.case == format!("EP64 plan at {target:.1}"))
                .map_or("-".into(), |(_, direct, relays)| format!(
                    "{direct:.0} / {relays:.0}"
                )),
        );
    }
    Ok(out)
}
