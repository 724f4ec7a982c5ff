//! The fuzz targets' seeds and every input that ever crashed one (`fuzz/corpus`,
//! `fuzz/regressions`), replayed through the targets' bodies on every test run: a crash the
//! fuzzer finds is fixed once and stays fixed.

use std::path::{Path, PathBuf};

use ultraep_bench::fuzzing::{TARGETS, files};
use ultraep_bench::problem_file::PlanProblem;
use ultraep_bench::trace::Trace;
use ultraep_topo::Topology;

fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(folder)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_regression_runs_through_its_target() {
    let mut replayed = 0;
    for (target, body) in TARGETS {
        for folder in ["corpus", "regressions"] {
            for path in inputs(folder, target) {
                body(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 20, "only {replayed} inputs");
}

/// Seeds are valid inputs, so that the fuzzer starts from what a reader accepts; regressions are
/// hostile ones, which the readers refuse.
#[test]
fn seeds_are_accepted_and_regressions_refused() {
    let accepts = |target: &str, data: &[u8]| -> bool {
        let text = std::str::from_utf8(data);
        match target {
            "problem_json" => text.is_ok_and(|t| PlanProblem::from_json(t).is_ok()),
            "topology_toml" => text.is_ok_and(|t| Topology::from_toml_str(t).is_ok()),
            "trace_jsonl" => text.is_ok_and(|t| Trace::from_jsonl(t, "seed").is_ok()),
            _ => {
                let parts: Vec<&[u8]> = files(data).collect();
                let ranks: Vec<Vec<u8>> = parts[1..].iter().map(|p| p.to_vec()).collect();
                Trace::from_trtllm_files("seed", parts[0], &ranks).is_ok()
            }
        }
    };
    for (target, _) in TARGETS {
        for path in inputs("corpus", target) {
            assert!(
                accepts(target, &std::fs::read(&path).unwrap()),
                "{}",
                path.display()
            );
        }
        for path in inputs("regressions", target) {
            assert!(
                !accepts(target, &std::fs::read(&path).unwrap()),
                "{}",
                path.display()
            );
        }
    }
}
