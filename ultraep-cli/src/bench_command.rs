//! `ultraep bench`: the evaluation `cargo xtask bench` runs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ultraep_bench::BenchError;
use ultraep_bench::cross_domain::{
    CrossDomainResult, SlowLoop, cross_domain_table, run_cross_domain,
};
use ultraep_bench::decode_objective::{DecodeReport, run_decode_objective};
use ultraep_bench::experiment::{RunConfig, Scenario, run_scenario};
use ultraep_bench::step::Mode;
use ultraep_bench::sweeps::run_sweeps;
use ultraep_bench::tables::{
    PUBLISHED, calibration_table, decode_table, overhead_table, spanning_table, summary_table,
    sweep_tables,
};

use crate::report::write_report;

/// Arguments of `ultraep bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// More steps and layers (several minutes more).
    #[arg(long)]
    pub full: bool,
    /// Where to write report.md, results.json and the plots.
    #[arg(long, default_value = "target/ultraep-report")]
    pub out: PathBuf,
    /// Only scenarios whose name contains this text (ignoring case).
    #[arg(long)]
    pub only: Option<String>,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
    /// Forbid relays for ultraep's weight transfers.
    #[arg(long)]
    pub no_relays: bool,
    /// Redundant slots per rank.
    #[arg(long)]
    pub slots: Option<u32>,
    /// Skip the sweeps (EP size, slots, relays).
    #[arg(long)]
    pub no_sweeps: bool,
}

/// Runs the evaluation and returns the summary it prints.
pub fn run(args: &BenchArgs) -> Result<String, BenchError> {
    let mut config = if args.full {
        RunConfig::FULL
    } else {
        RunConfig::QUICK
    };
    config.relays = !args.no_relays;
    if let Some(slots) = args.slots {
        config.slots_per_rank = slots;
    }
    // The published scenarios, then those the paper does not evaluate (groups spanning domains,
    // decode), reported apart.
    let published: Vec<&str> = Scenario::published().iter().map(|s| s.name).collect();
    let (scenarios, spanning): (Vec<Scenario>, Vec<Scenario>) = match &args.only {
        Some(only) => Scenario::matching(only)?,
        None => Scenario::published()
            .into_iter()
            .chain(Scenario::spanning_domains())
            .chain(Scenario::decode())
            .collect(),
    }
    .into_iter()
    .partition(|s| published.contains(&s.name));
    // The report's folder is made first, so that a bad --out fails before minutes of work.
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        path: args.out.clone(),
        source,
    })?;
    // Without a terminal the bar is not drawn: a line per scenario tells a log that work goes on.
    let log_lines = !args.quiet && !std::io::stderr().is_terminal();
    // Sweeps: 25 points of a shorter run.
    let sweep_run = RunConfig {
        steps: (config.steps / 2).max(2),
        layers: (config.layers / 2).max(2),
        ..config
    };
    let sweep_steps = if args.no_sweeps {
        0
    } else {
        25 * u64::from(sweep_run.steps)
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(
            u64::from(config.steps) * (scenarios.len() + spanning.len()) as u64 + sweep_steps,
        )
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut results = Vec::new();
    let mut spanning_results = Vec::new();
    for (index, scenario) in scenarios.iter().chain(&spanning).enumerate() {
        bar.set_message(scenario.name);
        let topology = scenario.machine.topology()?;
        let result = run_scenario(scenario, &config, &topology, &mut || bar.inc(1))?;
        if index < scenarios.len() {
            results.push(result);
        } else {
            spanning_results.push(result);
        }
        if log_lines {
            eprintln!(
                "ultraep bench: {} done ({:.0} s)",
                scenario.name,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // The slow loop across domains, where a group spanning domains is selected.
    let spanning_names: Vec<&str> = Scenario::spanning_domains()
        .iter()
        .map(|s| s.name)
        .collect();
    let mut cross = Vec::new();
    for scenario in spanning.iter().filter(|s| spanning_names.contains(&s.name)) {
        bar.set_message("slow loop across domains");
        cross.push(run_cross_domain(
            scenario,
            &config,
            &SlowLoop::RUNS,
            &mut || {},
        )?);
    }
    // The decode objectives, batch size by batch size, where the decode scenario is selected.
    let mut decode = Vec::new();
    for scenario in spanning.iter().filter(|s| s.mode == Mode::Decode) {
        bar.set_message("decode objectives");
        let report = run_decode_objective(scenario, &config, &mut || {})?;
        decode.push((*scenario, report));
    }
    let sweeps = if args.no_sweeps {
        None
    } else {
        bar.set_message("sweeps");
        Some(run_sweeps(&sweep_run, &mut || bar.inc(1))?)
    };
    bar.finish_and_clear();
    write_report(
        &args.out,
        &config,
        &results,
        &spanning_results,
        sweeps.as_ref(),
    )?;
    let decode_tables: String = decode
        .iter()
        .map(|(scenario, report)| decode_table(scenario, report))
        .collect();
    if !decode.is_empty() {
        append_decode(&args.out, &decode_tables, &decode)?;
    }
    let cross_table = if cross.is_empty() {
        String::new()
    } else {
        cross_domain_table(&cross)
    };
    if !cross.is_empty() {
        append_cross_domain(&args.out, &cross_table, &cross)?;
    }
    Ok(format!(
        "{}\n{PUBLISHED}.\n\nCalibration (simulated beside published):\n\n{}\nultraep on the critical path per layer (us; simulated, and the planner measured on this CPU):\n\n{}\nScenarios the paper does not evaluate (simulated; nothing published to compare):\n\n{}\n{}{}{} scenarios, {} steps x {} layers each, in {:.0} s; report in {}\n",
        summary_table(&results),
        calibration_table(&results).0,
        overhead_table(&results),
        spanning_table(&spanning_results),
        if decode_tables.is_empty() {
            String::new()
        } else {
            format!("Decode objectives: {decode_tables}\n")
        } + &if cross_table.is_empty() {
            String::new()
        } else {
            format!("The slow loop across domains (simulated):\n\n{cross_table}\n")
        },
        sweeps.as_ref().map(sweep_tables).unwrap_or_default(),
        results.len() + spanning_results.len(),
        config.steps,
        config.layers,
        started.elapsed().as_secs_f64(),
        args.out.display()
    ))
}

/// Adds the slow loop's figures to the report: a section of `report.md` and `cross-domain.json`.
fn append_cross_domain(
    directory: &std::path::Path,
    table: &str,
    results: &[CrossDomainResult],
) -> Result<(), BenchError> {
    append_section(
        directory,
        "Groups spanning domains: the slow loop against EPLB's hierarchical mode",
        table,
        "cross-domain.json",
        &serde_json::to_string_pretty(results),
    )
}

/// Appends a section to `report.md` and writes its figures as JSON.
fn append_section(
    directory: &std::path::Path,
    title: &str,
    text: &str,
    json_name: &str,
    json: &Result<String, serde_json::Error>,
) -> Result<(), BenchError> {
    let path = directory.join("report.md");
    let io = |path: PathBuf| move |source| BenchError::Io { path, source };
    let mut report = std::fs::read_to_string(&path).map_err(io(path.clone()))?;
    report.push_str(&format!("\n## {title}\n\n{text}"));
    std::fs::write(&path, report).map_err(io(path.clone()))?;
    let json = json.as_ref().map_err(|error| BenchError::InvalidProblem {
        source_name: json_name.into(),
        message: error.to_string(),
    })?;
    let path = directory.join(json_name);
    std::fs::write(&path, json).map_err(io(path.clone()))
}

/// Adds the decode objectives to the report: a section of `report.md` and `decode.json`.
fn append_decode(
    directory: &std::path::Path,
    tables: &str,
    decode: &[(Scenario, DecodeReport)],
) -> Result<(), BenchError> {
    append_section(
        directory,
        "Decode: no balancing, the two objectives, LPLB and resident replicas",
        tables,
        "decode.json",
        &serde_json::to_string_pretty(
            &decode
                .iter()
                .map(|(scenario, report)| (scenario.name, report))
                .collect::<Vec<_>>(),
        ),
    )
}
