//! The evaluation report: the summary table, `report.md`, `results.json` and SVG plots.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::BenchError;
use crate::experiment::{RunConfig, ScenarioResult, SweepPoint, Sweeps};
use crate::svg;

/// The published averages this evaluation is compared with (`ultraep-facts.md` section 6).
pub const PUBLISHED: &str = "published UltraEP: 94.3% of ideal on average over the seven scenarios, 1.49x over no \
balancing, final imbalance 1.01-1.04";

/// Averages over scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Averages {
    /// ultraep's mean fraction of ideal throughput.
    pub ultraep_fraction_of_ideal: f64,
    /// EPLB as deployed, mean fraction of ideal.
    pub eplb_fraction_of_ideal: f64,
    /// No balancing, mean fraction of ideal.
    pub none_fraction_of_ideal: f64,
    /// ultraep's mean speedup over no balancing.
    pub ultraep_speedup: f64,
    /// ultraep's worst final imbalance in any scenario.
    pub ultraep_worst_final_imbalance: f64,
}

/// The averages of `results`.
pub fn averages(results: &[ScenarioResult]) -> Averages {
    let mean = |f: &dyn Fn(&ScenarioResult) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len().max(1) as f64
    };
    let fraction = |name: &str| {
        let name = name.to_owned();
        move |r: &ScenarioResult| r.balancer(&name).map_or(0.0, |b| b.fraction_of_ideal)
    };
    Averages {
        ultraep_fraction_of_ideal: mean(&fraction("ultraep")),
        eplb_fraction_of_ideal: mean(&fraction("eplb")),
        none_fraction_of_ideal: mean(&fraction("none")),
        ultraep_speedup: mean(&|r| r.speedup_over_none()),
        ultraep_worst_final_imbalance: results
            .iter()
            .filter_map(|r| r.balancer("ultraep").map(|b| b.imbalance))
            .fold(0.0, f64::max),
    }
}

/// The summary table (markdown): imbalance and fraction of ideal per balancer, speedup, memory.
pub fn summary_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | initial | final: none / eplb / eplb-oracle / ultraep | % of ideal: none / eplb / eplb-oracle / ultraep | ultraep vs none | peak receive buffer: none -> ultraep |\n\
         |---|---|---|---|---|---|\n",
    );
    for result in results {
        let get = |name| result.balancer(name);
        let finals: Vec<String> = ["none", "eplb", "eplb-oracle", "ultraep"]
            .iter()
            .map(|n| get(n).map_or("-".into(), |b| format!("{:.2}", b.imbalance)))
            .collect();
        let fractions: Vec<String> = ["none", "eplb", "eplb-oracle", "ultraep"]
            .iter()
            .map(|n| {
                get(n).map_or("-".into(), |b| {
                    format!("{:.1}", b.fraction_of_ideal * 100.0)
                })
            })
            .collect();
        let memory = |name| get(name).map_or(0.0, |b| b.peak_receive_bytes as f64 / 1e6);
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {} | {:.2}x | {:.0} MB -> {:.0} MB |",
            result.scenario.name,
            result.initial_imbalance,
            finals.join(" / "),
            fractions.join(" / "),
            result.speedup_over_none(),
            memory("none"),
            memory("ultraep"),
        );
    }
    let averages = averages(results);
    let _ = writeln!(
        out,
        "| **average** | | ultraep worst {:.2} | {:.1} / {:.1} / - / **{:.1}** | **{:.2}x** | |",
        averages.ultraep_worst_final_imbalance,
        averages.none_fraction_of_ideal * 100.0,
        averages.eplb_fraction_of_ideal * 100.0,
        averages.ultraep_fraction_of_ideal * 100.0,
        averages.ultraep_speedup,
    );
    out
}

#[derive(Serialize)]
struct ResultsFile<'a> {
    run: &'a RunConfig,
    averages: Averages,
    scenarios: &'a [ScenarioResult],
    sweeps: Option<&'a Sweeps>,
}

/// The sweep tables (markdown).
pub fn sweep_tables(sweeps: &Sweeps) -> String {
    let mut out = format!("Sweeps on {}:\n\n", sweeps.scenario);
    for (title, points) in [
        ("expert-parallel size (one NVL72 domain)", &sweeps.ep_size),
        ("redundant slots per rank (EP64)", &sweeps.slots),
        (
            "relays for ultraep's weight transfers (EP64)",
            &sweeps.relays,
        ),
    ] {
        let _ = writeln!(out, "**{title}**\n");
        out.push_str("| point | initial | ultraep final | % of ideal: none / eplb / ultraep | ultraep replicas per layer | ultraep transfer per layer (us) |\n|---|---|---|---|---|---|\n");
        for p in points.iter() {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} | {:.1} | {:.0} |",
                p.label,
                p.initial_imbalance,
                p.ultraep_imbalance,
                p.none_fraction * 100.0,
                p.eplb_fraction * 100.0,
                p.ultraep_fraction * 100.0,
                p.replicas,
                p.transfer_us
            );
        }
        out.push('\n');
    }
    out
}

fn sweep_chart(title: &str, points: &[SweepPoint]) -> String {
    let labels: Vec<String> = points.iter().map(|p| p.label.clone()).collect();
    let series = vec![
        (
            "none".to_owned(),
            points.iter().map(|p| p.none_fraction).collect(),
        ),
        (
            "eplb".to_owned(),
            points.iter().map(|p| p.eplb_fraction).collect(),
        ),
        (
            "ultraep".to_owned(),
            points.iter().map(|p| p.ultraep_fraction).collect(),
        ),
    ];
    svg::grouped_bars(title, "", &labels, &series)
}

/// Writes `report.md`, `results.json` and the plots into `directory`.
pub fn write_report(
    directory: &Path,
    run: &RunConfig,
    results: &[ScenarioResult],
    sweeps: Option<&Sweeps>,
) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        path: directory.to_owned(),
        source,
    };
    std::fs::create_dir_all(directory).map_err(io)?;
    let write = |name: &str, text: &str| {
        let path = directory.join(name);
        std::fs::write(&path, text).map_err(|source| BenchError::Io { path, source })
    };
    let mut report = markdown(run, results);
    if let Some(sweeps) = sweeps {
        report.push('\n');
        report.push_str(&sweep_tables(sweeps));
        write(
            "sweep-ep-size.svg",
            &sweep_chart("Fraction of ideal by expert-parallel size", &sweeps.ep_size),
        )?;
        write(
            "sweep-slots.svg",
            &sweep_chart(
                "Fraction of ideal by redundant slots per rank",
                &sweeps.slots,
            ),
        )?;
    }
    write("report.md", &report)?;
    let json = serde_json::to_string_pretty(&ResultsFile {
        run,
        averages: averages(results),
        scenarios: results,
        sweeps,
    })
    .map_err(|error| BenchError::InvalidProblem {
        source_name: "results.json".into(),
        message: error.to_string(),
    })?;
    write("results.json", &json)?;
    let names: Vec<String> = results.iter().map(|r| r.scenario.name.to_owned()).collect();
    let fractions: Vec<(String, Vec<f64>)> = ["none", "eplb", "eplb-oracle", "ultraep"]
        .iter()
        .map(|&b| {
            let values = results
                .iter()
                .map(|r| r.balancer(b).map_or(0.0, |x| x.fraction_of_ideal))
                .collect();
            (b.to_owned(), values)
        })
        .collect();
    write(
        "throughput.svg",
        &svg::grouped_bars(
            "Throughput as a fraction of the force-balanced ideal",
            "",
            &names,
            &fractions,
        ),
    )?;
    let critical: Vec<(String, Vec<f64>)> = vec![
        (
            "planning (us)".into(),
            results
                .iter()
                .map(|r| r.balancer("ultraep").map_or(0.0, |b| b.planning_us))
                .collect(),
        ),
        (
            "weight transfer (us)".into(),
            results
                .iter()
                .map(|r| r.balancer("ultraep").map_or(0.0, |b| b.transfer_us))
                .collect(),
        ),
    ];
    write(
        "critical-path.svg",
        &svg::grouped_bars(
            "ultraep on the critical path, per layer",
            "us",
            &names,
            &critical,
        ),
    )?;
    for (index, result) in results.iter().enumerate() {
        let series: Vec<(String, Vec<f64>)> = ["none", "eplb", "ultraep"]
            .iter()
            .filter_map(|&b| {
                result
                    .balancer(b)
                    .map(|x| (b.to_owned(), x.per_layer_imbalance.clone()))
            })
            .collect();
        write(
            &format!("imbalance-{index}.svg"),
            &svg::lines(
                &format!(
                    "{}: max/mean imbalance per simulated layer",
                    result.scenario.name
                ),
                "",
                "layer",
                &series,
            ),
        )?;
    }
    Ok(())
}

fn markdown(run: &RunConfig, results: &[ScenarioResult]) -> String {
    let mut out = String::from("# ultraep evaluation\n\n");
    let _ = writeln!(
        out,
        "64 GPUs of a GB200 NVL72 (one NVLink domain), {} steps x {} simulated MoE layers per scenario, {} redundant slots per rank; \
         EPLB re-plans every {} steps from the last {} steps; seed {}.\n",
        run.steps, run.layers, run.slots_per_rank, run.eplb_interval, run.eplb_window, run.seed
    );
    out.push_str(&summary_table(results));
    let _ = writeln!(out, "\n{PUBLISHED}.\n");
    out.push_str("| scenario | published final (ultraep) | published % of ideal (ultraep) | calibrated skew | planning / transfer per layer (us) |\n|---|---|---|---|---|\n");
    for result in results {
        let ultraep = result.balancer("ultraep");
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {:.3} | {:.1} / {:.1} |",
            result.scenario.name,
            result.scenario.published_final,
            result
                .scenario
                .published_fraction
                .map_or("-".into(), |f| format!("{:.1}", f * 100.0)),
            result.skew,
            ultraep.map_or(0.0, |b| b.planning_us),
            ultraep.map_or(0.0, |b| b.transfer_us),
        );
    }
    out.push_str(
        "\nPlots: `throughput.svg` (fraction of ideal per scenario), `critical-path.svg` (ultraep's planning and weight \
         transfer per layer), `imbalance-N.svg` (imbalance per simulated layer, scenario N). Method: \
         `ultraep-bench/src/experiment.rs`, `step.rs` and `workload.rs`.\n",
    );
    out
}
