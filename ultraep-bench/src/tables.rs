//! Markdown tables of simulated results: the summary and calibration against the published
//! figures, ultraep's critical path, the weight-transfer comparison, the sweeps and decode. The
//! `ultraep` command prints them and writes them into its report; `ultraep.simulate` returns the
//! same table the command prints, so both read from here.

use std::fmt::Write;

use serde::Serialize;

use crate::decode_objective::DecodeReport;
use crate::experiment::{BALANCERS, Scenario, ScenarioResult};
use crate::step_fit::{EfficiencySource, PEAK};
use crate::sweeps::Sweeps;

/// The balancers the tables and plots compare: every one but the ideal they are measured against.
pub const COMPARED: &[&str] = BALANCERS.split_last().expect("balancers").1;

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
    /// EPLB with full re-placement, mean fraction of ideal.
    pub eplb_replace_fraction_of_ideal: f64,
    /// LPLB, mean fraction of ideal.
    pub lplb_fraction_of_ideal: f64,
    /// No balancing, mean fraction of ideal.
    pub none_fraction_of_ideal: f64,
    /// ultraep's mean speedup over no balancing.
    pub ultraep_speedup: f64,
    /// ultraep's worst final imbalance in any scenario.
    pub ultraep_worst_final_imbalance: f64,
    /// The errors against the published figures.
    pub calibration: CalibrationError,
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
        eplb_replace_fraction_of_ideal: mean(&fraction("eplb-replace")),
        lplb_fraction_of_ideal: mean(&fraction("lplb")),
        none_fraction_of_ideal: mean(&fraction("none")),
        ultraep_speedup: mean(&|r| r.speedup_over_none()),
        ultraep_worst_final_imbalance: results
            .iter()
            .filter_map(|r| r.balancer("ultraep").map(|b| b.imbalance))
            .fold(0.0, f64::max),
        calibration: calibration_table(results).1,
    }
}

/// How far the simulation lands from the published figures, averaged over the scenarios that
/// publish each figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationError {
    /// Mean absolute error of ultraep's % of ideal, in percentage points.
    pub fraction_points: f64,
    /// Mean absolute relative error of ultraep's speedup over no balancing, in percent.
    pub speedup_percent: f64,
    /// Mean absolute error of EPLB's % of ideal (training), in percentage points.
    pub eplb_fraction_points: f64,
    /// Mean absolute error of LPLB's % of ideal (training), in percentage points.
    pub lplb_fraction_points: f64,
}

/// The calibration table (markdown): every published figure of every scenario beside the
/// simulated one, with the error, which figures were fitted, and the mean errors of the predicted
/// ones.
pub fn calibration_table(results: &[ScenarioResult]) -> (String, CalibrationError) {
    let mut out = String::from(
        "| scenario | compute rates: dense / experts (source) | final imbalance: published / simulated | % of ideal: published / simulated (error, points) | speedup over none: published / simulated (error) | EPLB: published / simulated (fixed masters; re-placing) | LPLB % of ideal: published / simulated (error) | TFLOPS/GPU published / simulated: ideal, none, ultraep |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let (mut fraction_errors, mut speedup_errors) = (vec![], vec![]);
    let (mut eplb_errors, mut lplb_errors) = (vec![], vec![]);
    for result in results {
        let scenario = &result.scenario;
        let (Some(ultraep), Some(eplb), Some(none), Some(ideal)) = (
            result.balancer("ultraep"),
            result.balancer("eplb"),
            result.balancer("none"),
            result.balancer("ideal"),
        ) else {
            continue;
        };
        let rate = |rate: f64| {
            if rate >= PEAK {
                "peak".to_owned()
            } else {
                format!("{rate:.2}")
            }
        };
        let rates = format!(
            "{} / {} ({})",
            rate(result.efficiency.dense),
            rate(result.efficiency.experts),
            match scenario.efficiency {
                EfficiencySource::Assumed => "assumed".to_owned(),
                EfficiencySource::Fitted => "fitted to ideal and none".to_owned(),
                EfficiencySource::FittedToNone { experts_from } => {
                    format!("dense fitted to none's % of ideal; experts {experts_from}'s")
                }
                EfficiencySource::FittedOn(name) => format!("{name}'s"),
            }
        );
        let fraction = ultraep.fraction_of_ideal * 100.0;
        let fraction_cell = scenario.published_fraction.map_or_else(
            || format!("- / {fraction:.1}"),
            |published| {
                let error = fraction - published * 100.0;
                fraction_errors.push(error.abs());
                format!("{:.1} / {fraction:.1} ({error:+.1})", published * 100.0)
            },
        );
        let speedup = result.speedup_over_none();
        let speedup_cell = scenario.published_speedup.map_or_else(
            || format!("- / {speedup:.2}x"),
            |published| {
                let error = (speedup / published - 1.0) * 100.0;
                speedup_errors.push(error.abs());
                format!("{published:.2}x / {speedup:.2}x ({error:+.0}%)")
            },
        );
        let replace = result.balancer("eplb-replace").unwrap_or(eplb);
        let eplb_cell = match (
            scenario.published_eplb_fraction,
            scenario.published_eplb_imbalance,
        ) {
            (Some(published), _) => {
                let simulated = eplb.fraction_of_ideal * 100.0;
                eplb_errors.push((simulated - published * 100.0).abs());
                format!(
                    "{:.1}% / {simulated:.1}% of ideal ({:+.1}); re-placing: {:.1}%",
                    published * 100.0,
                    simulated - published * 100.0,
                    replace.fraction_of_ideal * 100.0
                )
            }
            (None, Some(published)) => format!(
                "imbalance {published:.2} / {:.2}; re-placing: {:.2}",
                eplb.imbalance, replace.imbalance
            ),
            (None, None) => "-".into(),
        };
        let lplb = result.balancer("lplb").map_or(0.0, |b| b.fraction_of_ideal) * 100.0;
        let (lplb_cell, tflops_cell) = match scenario.published_tflops {
            Some(published) => {
                let error = lplb - published.lplb / published.ideal * 100.0;
                lplb_errors.push(error.abs());
                (
                    format!(
                        "{:.1} / {lplb:.1} ({error:+.1})",
                        published.lplb / published.ideal * 100.0
                    ),
                    format!(
                        "{:.0} / {:.0}, {:.0} / {:.0}, {:.0} / {:.0}",
                        published.ideal,
                        ideal.tflops_per_gpu,
                        published.none,
                        none.tflops_per_gpu,
                        published.ultraep,
                        ultraep.tflops_per_gpu
                    ),
                )
            }
            None => (
                format!("- / {lplb:.1}"),
                format!(
                    "- / {:.0}, - / {:.0}, - / {:.0}",
                    ideal.tflops_per_gpu, none.tflops_per_gpu, ultraep.tflops_per_gpu
                ),
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {rates} | {:.2} / {:.2} | {fraction_cell} | {speedup_cell} | {eplb_cell} | {lplb_cell} | {tflops_cell} |",
            scenario.name, scenario.published_final, ultraep.imbalance
        );
    }
    let mean = |errors: &[f64]| errors.iter().sum::<f64>() / errors.len().max(1) as f64;
    let error = CalibrationError {
        fraction_points: mean(&fraction_errors),
        speedup_percent: mean(&speedup_errors),
        eplb_fraction_points: mean(&eplb_errors),
        lplb_fraction_points: mean(&lplb_errors),
    };
    let _ = writeln!(
        out,
        "\nFitted: each workload's skew (to the published no-balancing imbalance) and, on the training scenarios, the two compute rates (to the published ideal and no-balancing TFLOPS, which the simulated ones then equal). Predicted, with their mean absolute errors: ultraep's % of ideal {:.1} points ({} scenarios), its speedup {:.0}% ({}), EPLB's % of ideal {:.1} points ({}), LPLB's {:.1} points ({}).",
        error.fraction_points,
        fraction_errors.len(),
        error.speedup_percent,
        speedup_errors.len(),
        error.eplb_fraction_points,
        eplb_errors.len(),
        error.lplb_fraction_points,
        lplb_errors.len()
    );
    (out, error)
}

/// Scenarios the paper does not evaluate (markdown: groups spanning scale-up domains, decode):
/// the machine, the imbalance with no balancing, the lowest any plan could reach with replicas
/// kept in their domains, and every balancer's.
pub fn spanning_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | GPUs | initial | bound within domains | final: none / eplb / eplb-replace / lplb / ultraep | % of ideal: none / eplb / eplb-replace / lplb / ultraep | ultraep vs none |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for result in results {
        let names = ["none", "eplb", "eplb-replace", "lplb", "ultraep"];
        let cell = |figure: &dyn Fn(&crate::experiment::BalancerResult) -> String| {
            names
                .iter()
                .map(|&name| result.balancer(name).map_or("-".into(), figure))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {} | {:.2}x |",
            result.scenario.name,
            result.scenario.machine,
            result.initial_imbalance,
            result.bound_imbalance,
            cell(&|b| format!("{:.2}", b.imbalance)),
            cell(&|b| format!("{:.1}", b.fraction_of_ideal * 100.0)),
            result.speedup_over_none()
        );
    }
    out
}

/// ultraep's critical path per layer, by part (markdown): simulated from the published costs,
/// with the planner's time measured on this host beside it.
pub fn overhead_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | all-gather | plan | task lists | weight transfer | reroute beyond transfer | gradient reduction | total (simulated) | plan on this host (measured, CPU) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for result in results {
        if let Some(ultraep) = result.balancer("ultraep") {
            let o = &ultraep.overhead;
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | **{:.1}** | {:.1} |",
                result.scenario.name,
                o.all_gather_us,
                o.planning_us,
                o.task_lists_us,
                o.transfer_us,
                o.reroute_us,
                o.reduction_us,
                o.total_us(),
                ultraep.planning_host_us
            );
        }
    }
    out
}

/// ultraep's weight transfer per layer on the critical path, scheduled by the first, per-expert
/// route chooser and by the layer chooser (the same plans, in the same run), and what the
/// difference does to the whole step (markdown; all simulated).
pub fn transfer_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | weight transfer per layer [busiest port at link speed]: per-expert chooser -> layer chooser (us) | ratio | % of ideal: per-expert -> layer | step: per-expert -> layer (ms) |\n\
         |---|---|---|---|---|\n",
    );
    for result in results {
        let Some(ultraep) = result.balancer("ultraep") else {
            continue;
        };
        let Some(first) = ultraep.first_chooser else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} [{:.1}] -> {:.1} [{:.1}] | {:.2} | {:.1} -> {:.1} | {:.2} -> {:.2} |",
            result.scenario.name,
            first.transfer_us,
            first.transfer_port_bound_us,
            ultraep.transfer_us,
            ultraep.overhead.transfer_port_bound_us,
            if first.transfer_us > 0.0 {
                ultraep.transfer_us / first.transfer_us
            } else {
                1.0
            },
            first.fraction_of_ideal * 100.0,
            ultraep.fraction_of_ideal * 100.0,
            first.step_seconds * 1e3,
            ultraep.step_seconds * 1e3,
        );
    }
    out
}

/// The summary table (markdown): imbalance and fraction of ideal per balancer, speedup, memory.
pub fn summary_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | initial | final: none / eplb / eplb-replace / lplb / eplb-oracle / ultraep | % of ideal: none / eplb / eplb-replace / lplb / eplb-oracle / ultraep | ultraep vs none | peak receive buffer: none -> ultraep |\n\
         |---|---|---|---|---|---|\n",
    );
    for result in results {
        let get = |name| result.balancer(name);
        let finals: Vec<String> = COMPARED
            .iter()
            .map(|n| get(n).map_or("-".into(), |b| format!("{:.2}", b.imbalance)))
            .collect();
        let fractions: Vec<String> = COMPARED
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
        "| **average** | | ultraep worst {:.2} | {:.1} / {:.1} / {:.1} / {:.1} / - / **{:.1}** | **{:.2}x** | |",
        averages.ultraep_worst_final_imbalance,
        averages.none_fraction_of_ideal * 100.0,
        averages.eplb_fraction_of_ideal * 100.0,
        averages.eplb_replace_fraction_of_ideal * 100.0,
        averages.lplb_fraction_of_ideal * 100.0,
        averages.ultraep_fraction_of_ideal * 100.0,
        averages.ultraep_speedup,
    );
    out
}

/// The sweep tables (markdown).
pub fn sweep_tables(sweeps: &Sweeps) -> String {
    let mut out = format!(
        "Sweeps on {} ({} steps x {} layers per point: shorter than the runs above, so a point's figures differ a little from the scenario's row):\n\n",
        sweeps.scenario, sweeps.steps, sweeps.layers
    );
    for (title, points) in [
        ("expert-parallel size (one NVL72 domain)", &sweeps.ep_size),
        ("redundant slots per rank (EP64)", &sweeps.slots),
        (
            "relays for ultraep's weight transfers (EP64)",
            &sweeps.relays,
        ),
        (
            "ultraep's planner weighing transfers among plans as balanced (EP64): imbalance against transfer",
            &sweeps.transfer_aware,
        ),
        (
            "transfer bandwidth, as a fraction of a port, on top of the calibrated transfer costs (EP64)",
            &sweeps.transfer_bandwidth,
        ),
        (
            "the workload's unpublished knobs, one at a time (EP64; skew recalibrated to the published imbalance)",
            &sweeps.workload_knobs,
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

/// The summary table of `result` and one row per balancer, in Markdown.
pub fn scenario_table(result: &ScenarioResult) -> String {
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

/// The comparison as a markdown table (simulated figures).
pub fn decode_table(scenario: &Scenario, report: &DecodeReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} at 16-256 tokens per rank (simulated by the MoE step simulator, on held-out seeds \
         {} and {}; the gates' margin and window were tuned on seeds {} and {}: cost-aware gate \
         {} x its all-gather and planning over {} steps, resident gate {} x over {} steps). Mean \
         step time, worst step against no balancing, steps slower than no balancing. \
         \"Every layer\" gathers and plans every layer; \"gated\" only the layers whose \
         predicted net saving cleared the gate; \"resident\" keeps the replicas the slow loop \
         chose in place and re-splits each batch among them behind its gate; LPLB re-splits \
         over its fixed hypercube copies every layer; \"decided\" leaves out the all-gather and \
         planning:\n\n\
         | tokens per rank | none (ms) | token objective (ms) | cost-aware, every layer (ms) | cost-aware, gated (ms) | LPLB (ms) | resident (ms) | resident vs none | worst step: tokens / every layer / gated / LPLB / resident | slower steps: every layer / gated / LPLB / resident | decided: worst / slower steps | layers balanced: gated / resident | replicas per layer: tokens / cost-aware / resident | resident copies' wait (ms) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        scenario.name,
        report.held_out_seeds[0],
        report.held_out_seeds[1],
        report.tuning_seeds[0],
        report.tuning_seeds[1],
        report.gated.margin,
        report.gated.window,
        report.resident.margin,
        report.resident.window,
    );
    for point in &report.points {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3}x | {:.2}x / {:.3}x / {:.3}x / {:.3}x / {:.3}x | {} / {} / {} / {} of {} | {:.3}x / {} | {:.0}% / {:.0}% | {:.1} / {:.1} / {:.1} | {:.2} |",
            point.tokens_per_rank,
            point.none_seconds * 1e3,
            point.tokens_seconds * 1e3,
            point.cost_seconds * 1e3,
            point.gated_seconds * 1e3,
            point.lplb_seconds * 1e3,
            point.resident_seconds * 1e3,
            point.none_seconds / point.resident_seconds,
            point.worst_ratio[0],
            point.worst_ratio[1],
            point.worst_ratio[2],
            point.worst_ratio[3],
            point.worst_ratio[4],
            point.slower_steps[1],
            point.slower_steps[2],
            point.slower_steps[3],
            point.slower_steps[4],
            point.steps,
            point.cost_worst_ratio_decided,
            point.cost_slower_steps_decided,
            point.balanced_layers[0] * 100.0,
            point.balanced_layers[1] * 100.0,
            point.replicas[0],
            point.replicas[1],
            point.replicas[2],
            point.resident_wait_seconds * 1e3,
        );
    }
    out
}
