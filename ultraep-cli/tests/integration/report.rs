//! The report `ultraep bench` writes: its files, their names and the plots' axes.

use ultraep_bench::experiment::{Scenario, run_scenario};
use ultraep_cli::report::write_report;

use crate::fixtures::SMALL;

#[test]
fn the_report_names_its_plots_by_scenario_and_starts_imbalance_at_one() {
    // A short run of a published scenario: the plots' names and axes do not depend on its figures.
    let scenario = Scenario::matching("Qwen3-235B training").unwrap()[0];
    let topology = scenario.machine.topology().unwrap();
    let results = vec![run_scenario(&scenario, &SMALL, &topology, &mut || {}).unwrap()];
    let directory =
        std::env::temp_dir().join(format!("ultraep-report-test-{}", std::process::id()));
    write_report(&directory, &SMALL, &results, &[], None).unwrap();
    let plot =
        std::fs::read_to_string(directory.join("imbalance-qwen3-235b-training.svg")).unwrap();
    let report = std::fs::read_to_string(directory.join("report.md")).unwrap();
    std::fs::remove_dir_all(&directory).ok();
    // The lowest y tick is 1.00, the x axis is labelled, and every compared balancer has a line.
    assert!(plot.contains(">1.00 <"), "{plot}");
    assert!(plot.contains("simulated layer"));
    assert!(plot.contains(r#"text-anchor="middle">0</text>"#));
    for balancer in [
        "none",
        "eplb",
        "eplb-replace",
        "lplb",
        "eplb-oracle",
        "ultraep",
    ] {
        assert!(
            plot.contains(&format!("<title>{balancer}</title>")),
            "{balancer}"
        );
    }
    assert!(report.contains("Calibration against the paper"));
}
