//! The evaluation report that `ultraep bench` writes: `report.md`, `results.json` and SVG plots,
//! built from the library's tables ([`ultraep_bench::tables`]) and this crate's plots.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;
use ultraep_bench::BenchError;
use ultraep_bench::experiment::{RunConfig, ScenarioResult};
use ultraep_bench::sweeps::{SweepPoint, Sweeps};
use ultraep_bench::tables::{
    Averages, COMPARED, PUBLISHED, averages, calibration_table, overhead_table, spanning_table,
    summary_table, sweep_tables, transfer_table,
};

use crate::svg;

#[derive(Serialize)]
struct ResultsFile<'a> {
    run: &'a RunConfig,
    averages: Averages,
    scenarios: &'a [ScenarioResult],
    spanning_domains: &'a [ScenarioResult],
    sweeps: Option<&'a Sweeps>,
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
    spanning: &[ScenarioResult],
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
    if !spanning.is_empty() {
        report.push_str(
            "\n## Scenarios the paper does not evaluate\n\nSimulated, with nothing published to \
             compare: groups that span scale-up domains (replicas stay in their master's domain, \
             tokens between domains cross the scale-out network) and decode (weight and cache \
             reads set the times; counts drawn per microbatch).\n\n",
        );
        report.push_str(&spanning_table(spanning));
    }
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
        spanning_domains: spanning,
        sweeps,
    })
    .map_err(|error| BenchError::InvalidProblem {
        source_name: "results.json".into(),
        message: error.to_string(),
    })?;
    write("results.json", &json)?;
    let names: Vec<String> = results.iter().map(|r| r.scenario.name.to_owned()).collect();
    let fractions: Vec<(String, Vec<f64>)> = COMPARED
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
    for result in results.iter().chain(spanning) {
        let series: Vec<(String, Vec<f64>)> = COMPARED
            .iter()
            .filter_map(|&b| {
                result
                    .balancer(b)
                    .map(|x| (b.to_owned(), x.per_layer_imbalance.clone()))
            })
            .collect();
        write(
            &format!("imbalance-{}.svg", file_name(result.scenario.name)),
            &svg::lines(
                &format!(
                    "{}: max/mean imbalance per simulated layer",
                    result.scenario.name
                ),
                "",
                "simulated layer",
                1.0,
                &series,
            ),
        )?;
    }
    Ok(())
}

/// `name` as a file name: lower case, words joined by hyphens.
fn file_name(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("-")
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
    out.push_str(
        "\n## Calibration against the paper\n\nSimulated figures (the MoE step simulator) beside the \
         published ones. Fitted: each workload's skew (to the published no-balancing imbalance) and the \
         training scenarios' two compute rates (to the published ideal and no-balancing TFLOPS); every other figure is a prediction.\n\n",
    );
    out.push_str(&calibration_table(results).0);
    out.push_str(
        "\n## ultraep on the critical path, per layer (us)\n\nSimulated from the published costs \
         (planning 56 us, task lists 38 us, reroute 36-39 us overlapping the transfer, transfers \
         under the calibrated transfer model); the last column is the real planner measured on this machine's CPU, \
         reported beside the simulation and not part of it.\n\n",
    );
    out.push_str(&overhead_table(results));
    out.push_str(
        "\n### Weight transfer: the layer route chooser against the first one\n\nSimulated (the \
         calibrated transfer model, relays forwarding 256 KiB chunks): the same plans with their \
         weight transfers scheduled by the first, per-expert route chooser and by the layer chooser \
         (the default), in the same run; a training layer moves its weights twice. The step and \
         fraction of ideal change only through the transfer's place on the critical path.\n\n",
    );
    out.push_str(&transfer_table(results));
    out.push_str(
        "\nPlots: `throughput.svg` (fraction of ideal per scenario), `critical-path.svg` (ultraep's planning and weight \
         transfer per layer), `imbalance-<scenario>.svg` (imbalance per simulated layer, averaged over steps, one line per balancer). Method: \
         `ultraep-bench/src/experiment.rs`, `step.rs` and `workload.rs`.\n",
    );
    out
}
