//! `ultraep xfer`: direct fan-out against relays on a 64-GPU NVL72-class domain with DeepSeek-V3
//! experts (44 MB in FP8), for one expert replicated 1 to 32 times and for the planner's plans of the
//! published reference scenario.

use std::fmt::Write;
use std::io::IsTerminal;

use clap::Args;
use ultraep_plan::reference::ReferenceScenario;
use ultraep_plan::{Balancer, PlanConfig, Planner, TransferEstimate};
use ultraep_topo::Topology;
use ultraep_xfer::{
    ExpertState, Fanout, RelayPieces, ReplicaSet, RouteChooser, Simulation, TransferConfig,
    TransferCosts, TransferSchedule, simulate,
};

use ultraep_bench::BenchError;
use ultraep_bench::machine::nvl72_gpus;

/// Arguments of `ultraep xfer`.
#[derive(Debug, Args)]
pub struct XferArgs {
    /// Replica counts of the single-expert rows.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4, 8, 16, 32])]
    pub replicas: Vec<u32>,
    /// Skip the rows of the reference scenario's plans (which draw loads for a few seconds).
    #[arg(long)]
    pub no_reference: bool,
    /// Relays wait for whole 256 KiB chunks (as published); by default the chooser picks tiles
    /// or chunks expert by expert.
    #[arg(long, conflicts_with = "tile_relays")]
    pub chunk_relays: bool,
    /// Relays forward single 32 KiB tiles.
    #[arg(long)]
    pub tile_relays: bool,
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
    /// The plan's max/mean rank imbalance, for the rows of plans.
    pub imbalance: Option<f64>,
    /// Relayed experts in the chosen schedule.
    pub relayed: usize,
    /// Direct fan-out of every expert.
    pub direct: Simulation,
    /// The schedule the first, per-expert chooser picks ([`RouteChooser::PerExpert`]): the
    /// baseline the layer chooser is measured against.
    pub per_expert: Simulation,
    /// The schedule the configured chooser picked.
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
    let per_expert = TransferConfig {
        chooser: RouteChooser::PerExpert,
        ..config
    };
    let per_expert = TransferSchedule::build(replicas, state, topology, per_expert)?;
    Ok(XferRow {
        case,
        imbalance: None,
        replicas: replicas.replica_count(),
        relayed: schedule.relayed_count(),
        direct: simulate(&schedule.all_direct(), topology)?,
        per_expert: simulate(&per_expert, topology)?,
        chosen: simulate(&schedule, topology)?,
    })
}

/// The relay pieces `args` name.
fn relay_pieces(args: &XferArgs) -> RelayPieces {
    if args.chunk_relays {
        RelayPieces::Chunks
    } else if args.tile_relays {
        RelayPieces::Tiles
    } else {
        RelayPieces::Chosen
    }
}

/// What a copy costs the planner of the transfer-aware rows: one 44.05 MB expert over a 900 GB/s
/// port (48.9 us) against one token's expert GEMMs (2 x 3 x 7168 x 2048 FLOPs at an effective
/// 1 PFLOP/s, 88 ns): 556 tokens' worth.
pub fn copy_estimate() -> Result<TransferEstimate, BenchError> {
    Ok(TransferEstimate::from_times(48_945_494, 88_080)?)
}

/// Every row of the comparison.
pub fn rows(args: &XferArgs) -> Result<Vec<XferRow>, BenchError> {
    let topology = nvl72_gpus(64)?;
    let state = deepseek_v3_expert();
    let config = TransferConfig {
        relay_pieces: relay_pieces(args),
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
            for (suffix, transfer) in [
                ("", None),
                (", transfer-aware plan", Some(copy_estimate()?)),
            ] {
                let mut planner = Planner::new(
                    layout.clone(),
                    scenario.domains()?,
                    scenario.slots_per_rank,
                    PlanConfig {
                        transfer,
                        ..PlanConfig::default()
                    },
                )?;
                let plan = planner.plan(load.matrix())?;
                let replicas = ReplicaSet::from_plan(&plan, &layout, &topology)?;
                let mut row = compare(
                    format!("EP64 plan at {target:.1}{suffix}"),
                    &replicas,
                    &state,
                    &topology,
                    config,
                )?;
                row.imbalance = Some(plan.metrics().imbalance());
                rows.push(row);
            }
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
                    "imbalance": row.imbalance,
                    "relayed_experts": row.relayed,
                    "lower_bound_us": row.chosen.lower_bound_ps as f64 / 1e6,
                    "direct_us": row.direct.makespan_ps as f64 / 1e6,
                    "direct_efficiency": row.direct.efficiency(),
                    "per_expert_us": row.per_expert.makespan_ps as f64 / 1e6,
                    "per_expert_busiest_port_us": row.per_expert.busiest_port_ps as f64 / 1e6,
                    "chosen_us": row.chosen.makespan_ps as f64 / 1e6,
                    "chosen_busiest_port_us": row.chosen.busiest_port_ps as f64 / 1e6,
                    "chosen_efficiency": row.chosen.efficiency(),
                    "published_direct_us": published.map(|p| p.1),
                    "published_relays_us": published.map(|p| p.2),
                })
            })
            .collect();
        return crate::json_output::to_json(&serde_json::json!({
            "model": args.model,
            "per_transfer_ns": costs.per_transfer_ns,
            "bandwidth_ppm": costs.bandwidth_ppm,
            "relay_forward_ppm": costs.relay_forward_ppm,
            "backpressure": costs.backpressure,
            "relay_pieces": format!("{:?}", relay_pieces(args)),
            "rows": rows,
        }));
    }
    let pieces = match relay_pieces(args) {
        RelayPieces::Chunks => "relays forward 256 KiB chunks",
        RelayPieces::Tiles => "relays forward 32 KiB tiles",
        RelayPieces::Chosen => "relays forward tiles or chunks, as the chooser weighs them",
    };
    let mut out = format!(
        "DeepSeek-V3 experts (44.05 MB, FP8) on 64 GPUs of a GB200 NVL72 (900 GB/s per direction); {pieces}; \
         simulated with the {} transfer model ({:?}). Every time is in us; the port bound (in \
         brackets) is the schedule's busiest port's bytes at link speed; `per expert` is the \
         first chooser, `layer` the default.\n\n\
         | case | imbalance | replicas | relayed experts | lower bound | direct [port] | per expert [port] | layer [port] | layer eff. | layer / per expert | published direct / relays |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        args.model,
        costs(args)?,
    );
    let us = |ps: u64| ps as f64 / 1e6;
    let with_port = |simulation: &Simulation| {
        format!(
            "{:.1} [{:.1}]",
            us(simulation.makespan_ps),
            us(simulation.busiest_port_ps)
        )
    };
    for row in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {} |",
            row.case,
            row.imbalance.map_or("-".into(), |i| format!("{i:.3}")),
            row.replicas,
            row.relayed,
            us(row.chosen.lower_bound_ps),
            with_port(&row.direct),
            with_port(&row.per_expert),
            with_port(&row.chosen),
            row.chosen.efficiency(),
            row.chosen.makespan_ps as f64 / row.per_expert.makespan_ps.max(1) as f64,
            published_for(&row.case).map_or("-".into(), |(_, direct, relays)| format!(
                "{direct:.0} / {relays:.0}"
            )),
        );
    }
    Ok(out)
}
