//! `ultraep engine`: a published scenario's drifting loads through the runtime's real engines, one
//! per rank on threads of this process (each holding only its rank's memory, as in a process of
//! its own): plans, slot choices, real copies of (scaled-down) expert weights, and in
//! training the backward's restores and gradient reductions; with and without the planner's
//! preference for replicas already in place. Optionally writes the run's JSON-lines trace.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use ultraep_plan::{ExpertLayout, LoadMatrix, PlanConfig};
use ultraep_runtime::{
    Collective, Dtype, Engine, EngineConfig, InProcessCollective, ModelShape, PlaneOptions,
    RouterOutput, StepId, Summary, TraceWriter,
};
use ultraep_xfer::TransferConfig;

use ultraep_bench::BenchError;
use ultraep_bench::experiment::{RunConfig, Scenario, workload_config};
use ultraep_bench::machine::nvl72_gpus;
use ultraep_bench::step::Mode;
use ultraep_bench::workload::Workload;

/// Arguments of `ultraep engine`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// A published scenario (by name, or a part of it such as "DeepSeek").
    #[arg(long, default_value = "Qwen3-235B training")]
    pub scenario: String,
    /// Microbatches.
    #[arg(long, default_value_t = 8)]
    pub steps: u32,
    /// MoE layers.
    #[arg(long, default_value_t = 4)]
    pub layers: u32,
    /// Worker threads of each rank's data plane (besides the rank's own thread).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Write the run's trace (JSON lines, replayable by `ultraep simulate --trace`) here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Print the table as JSON (its cells as printed).
    #[arg(long)]
    pub json: bool,
}

/// What one run did: the engine's summary of its steps, and the backward's restores.
#[derive(Debug, Default)]
struct Totals {
    steps: Summary,
    restore_copies: u64,
    restore_bytes: u64,
}

/// The table's rows, in the order of [`Totals::cells`].
const ROWS: [&str; 7] = [
    "max/mean before -> after",
    "replicas per layer step",
    "weight copies / reused in place",
    "copies again before the backward",
    "bytes moved (MB)",
    "planning per layer step (us)",
    "placing and copying per layer step (us)",
];

impl Totals {
    /// The figures of [`ROWS`], formatted.
    fn cells(&self) -> [String; 7] {
        let summary = &self.steps;
        let steps = summary.steps.max(1) as f64;
        [
            format!(
                "{:.2} -> {:.3}",
                summary.initial_imbalance_sum / steps,
                summary.imbalance_sum / steps
            ),
            format!("{:.1}", summary.replicas as f64 / steps),
            format!("{} / {}", summary.copies, summary.copies_skipped),
            self.restore_copies.to_string(),
            format!(
                "{:.1}",
                (summary.bytes_moved + self.restore_bytes) as f64 / 1e6
            ),
            format!("{:.1}", summary.planning.as_secs_f64() * 1e6 / steps),
            format!("{:.1}", summary.transfer.as_secs_f64() * 1e6 / steps),
        ]
    }
}

/// Runs `ultraep engine` and returns its table.
pub fn run(args: &EngineArgs) -> Result<String, BenchError> {
    let scenario = Scenario::matching(&args.scenario)?[0];
    if args.steps == 0 || args.layers == 0 {
        return Err(BenchError::InvalidProblem {
            source_name: "ultraep engine".into(),
            message: "--steps and --layers must be at least 1".into(),
        });
    }
    // The engine replays the workload from its first step: no warm-up to skip.
    let run = RunConfig {
        steps: args.steps,
        warmup_steps: 0,
        layers: args.layers,
        ..RunConfig::QUICK
    };
    let workload = workload_config(&scenario, &run);
    let mut trace = match &args.trace {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| BenchError::Io {
                path: path.clone(),
                source,
            })?;
            Some(TraceWriter::new(
                std::io::BufWriter::new(file),
                64,
                scenario.model.routed_experts,
                args.layers,
                Some(scenario.model.top_k),
            )?)
        }
        None => None,
    };
    let with = engine_run(
        &scenario,
        args,
        Workload::new(workload),
        true,
        trace.as_mut(),
    )?;
    let without =
        engine_run::<std::io::Sink>(&scenario, args, Workload::new(workload), false, None)?;
    if let Some(trace) = trace {
        let mut out = trace.finish()?;
        out.flush().map_err(|source| BenchError::Io {
            path: args.trace.clone().unwrap_or_default(),
            source,
        })?;
    }
    if args.json {
        let rows: serde_json::Map<String, serde_json::Value> = ROWS
            .iter()
            .zip(with.cells().into_iter().zip(without.cells()))
            .map(|(name, (a, b))| {
                (
                    (*name).to_owned(),
                    serde_json::json!({ "prefer_replicas_in_place": a, "no_preference": b }),
                )
            })
            .collect();
        return crate::json_output::to_json(&serde_json::json!({
            "scenario": scenario.name,
            "steps": args.steps,
            "layers": args.layers,
            "rows": rows,
        }));
    }
    let mut out = format!(
        "{} on 64 GB200 NVL72 GPUs through the runtime's engines (one per rank on threads, \
         host data plane, times while 64 ranks share this machine's cores, 48 KiB experts \
         standing in for the real ones): {} microbatches x {} layers\n\n\
         | | prefer replicas in place | no preference |\n|---|---|---|\n",
        scenario.name, args.steps, args.layers
    );
    for (name, (a, b)) in ROWS
        .iter()
        .zip(with.cells().into_iter().zip(without.cells()))
    {
        out.push_str(&format!("| {name} | {a} | {b} |\n"));
    }
    Ok(out)
}

fn engine_run<W: Write>(
    scenario: &Scenario,
    args: &EngineArgs,
    mut workload: Workload,
    prefer: bool,
    trace: Option<&mut TraceWriter<W>>,
) -> Result<Totals, BenchError> {
    const RANKS: u32 = 64;
    let experts = scenario.model.routed_experts;
    let model = ModelShape {
        layers: args.layers,
        experts,
        top_k: scenario.model.top_k,
        hidden: 64,
        expert_width: 64,
        dtype: Dtype::F32,
    };
    let training = scenario.mode == Mode::Training;
    let config = EngineConfig {
        topology: nvl72_gpus(RANKS)?,
        layout: ExpertLayout::balanced_blocks(RANKS, experts)?,
        model,
        mode: if training {
            ultraep_runtime::Mode::Training
        } else {
            ultraep_runtime::Mode::Prefill
        },
        slots_per_rank: 2,
        staging_slots: 0,
        microbatches_in_flight: 1,
        prefer_resident_replicas: prefer,
        hold_forward: false,
        plan: PlanConfig::default(),
        transfer: TransferConfig {
            tile_bytes: 4096,
            chunk_bytes: 16384,
            ..TransferConfig::default()
        },
        workers: args.workers,
    };
    // Every microbatch's loads, drawn up front: the ranks read them from their threads.
    let loads: Vec<Vec<Vec<u32>>> = (0..args.steps).map(|_| workload.next_step()).collect();
    // One engine per rank, each on a thread of its own and holding only its rank's memory, as
    // each would in a process of its own; they gather every layer's load with their digests.
    let options = PlaneOptions {
        workers: args.workers,
        ..PlaneOptions::default()
    };
    let engines = Engine::group(config, options)?;
    let members = InProcessCollective::group(RANKS);
    let runs: Vec<Result<RankRun, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .into_iter()
            .zip(members)
            .map(|(engine, member)| {
                let loads = &loads;
                scope.spawn(move || rank_run(engine, member, loads, model, training))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(BenchError::Engine(ultraep_runtime::RuntimeError::Backend(
                        "a rank's thread panicked".into(),
                    )))
                })
            })
            .collect()
    });
    let mut runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Every rank made the same plans and copies; rank 0's figures are the group's.
    let first = runs.swap_remove(0);
    if let Some(trace) = trace {
        for (report, load) in &first.reports {
            trace.record(
                report,
                LoadMatrix::new(load, RANKS as usize, experts as usize)?,
            )?;
        }
    }
    Ok(first.totals)
}

/// What one rank's engine did.
struct RankRun {
    totals: Totals,
    /// Its step reports and the loads they were planned for (for the trace).
    reports: Vec<(ultraep_runtime::StepReport, Vec<u32>)>,
}

/// One rank's part of a run: its masters, then every layer of every microbatch gathered and
/// planned, and in training the backward's restores, its replicas' gradients and the reductions.
fn rank_run(
    mut engine: Engine,
    mut member: InProcessCollective,
    loads: &[Vec<Vec<u32>>],
    model: ModelShape,
    training: bool,
) -> Result<RankRun, BenchError> {
    let rank = engine.local_ranks().start;
    let experts = model.experts;
    let state = model.expert_state()?.bytes() as usize;
    let homes = engine.config().layout.clone();
    for layer in 0..model.layers {
        for expert in (0..experts).filter(|&e| homes.home(e) == rank) {
            engine.write_master(layer, expert, &vec![(layer + expert) as u8; state])?;
        }
    }
    let zeros = vec![0f32; model.gradient_state()?.bytes() as usize / 4];
    let mut totals = Totals::default();
    let mut reports = Vec::new();
    let mut row = Vec::new();
    let mut gathered = Vec::new();
    for (microbatch, layers) in loads.iter().enumerate() {
        for (layer, matrix) in layers.iter().enumerate() {
            let step = StepId::new(microbatch as u32, layer as u32);
            let counts = &matrix[rank as usize * experts as usize..][..experts as usize];
            engine.gather_row(RouterOutput::Counts(counts), &mut row)?;
            gathered.resize(row.len() * member.ranks() as usize, 0);
            member.all_gather(&row, &mut gathered)?;
            let report = engine.step_from_rows(step, &gathered)?;
            if rank == 0 {
                reports.push((report, matrix.clone()));
            }
        }
        if training {
            for layer in (0..model.layers).rev() {
                let step = StepId::new(microbatch as u32, layer);
                let restored = engine.restore(step)?;
                totals.restore_copies += u64::from(restored.copies);
                totals.restore_bytes += restored.bytes_moved;
                let instances = engine.plan(step).map_or(0, |plan| plan.instances().len());
                for instance in 0..instances as u32 {
                    if engine
                        .replica_slot(step, instance)
                        .is_some_and(|(holder, _)| holder == rank)
                    {
                        engine.write_replica_gradient(step, instance, &zeros)?;
                    }
                }
                engine.reduce_gradients(step)?;
            }
        }
    }
    totals.steps = *engine.summary();
    Ok(RankRun { totals, reports })
}
