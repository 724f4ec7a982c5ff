//! The fuzz targets' bodies: each takes arbitrary bytes and runs one reader, and what a command
//! does with what it reads, the way the `ultraep` command would. A panic, an abort, a hang or
//! unbounded memory in any of them is a bug.
//!
//! `fuzz/` drives them with libFuzzer (`cargo xtask fuzz --seconds N`); the integration test
//! `fuzz_corpus` replays every seed and every input that ever crashed through them, so each
//! crash found stays a regression test.

use ultraep_plan::{Balancer, Eplb, EplbMode, LoadMatrix, NoBalance, PlanConfig, Planner};
use ultraep_topo::Topology;

use crate::problem_file::PlanProblem;
use crate::trace::Trace;

/// A fuzz target: a name (its corpus folder under `fuzz/corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: [Target; 4] = [
    ("problem_json", problem_json),
    ("topology_toml", topology_toml),
    ("trace_jsonl", trace_jsonl),
    ("trace_trtllm", trace_trtllm),
];

/// Separates the files of a [`trace_trtllm`] input: `meta_info.json`, then each rank's file.
pub const FILE_SEPARATOR: &[u8] = b"\n--ultraep-file--\n";

/// A planning-problem file: parsed, then planned by ultraep, EPLB (both split modes it may use)
/// and no balancing; every plan must be consistent with its load.
pub fn problem_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(problem) = PlanProblem::from_json(text) else {
        return;
    };
    let ranks = problem.layout.num_ranks() as usize;
    let experts = problem.layout.num_experts() as usize;
    let Ok(loads) = LoadMatrix::new(&problem.loads, ranks, experts) else {
        return;
    };
    let tight = PlanConfig {
        min_replica_tokens: 1,
        ..PlanConfig::default()
    };
    let (layout, domains, slots) = (&problem.layout, &problem.domains, problem.slots_per_rank);
    let planner = |config| Planner::new(layout.clone(), domains.clone(), slots, config);
    // Balancers the problem's shape allows; one that refuses it is not run.
    let balancers: [Option<Box<dyn Balancer>>; 4] = [
        boxed(planner(PlanConfig::default())),
        boxed(planner(tight)),
        boxed(Eplb::new(
            layout.clone(),
            domains.clone(),
            slots,
            EplbMode::Oracle,
        )),
        boxed(NoBalance::new(layout.clone(), domains.clone())),
    ];
    let total: u64 = problem.loads.iter().map(|&c| u64::from(c)).sum();
    for mut balancer in balancers.into_iter().flatten() {
        if let Ok(plan) = balancer.plan(loads) {
            // Every token is planned somewhere, once.
            assert_eq!(
                plan.rank_loads().iter().sum::<u64>(),
                total,
                "{} lost or made tokens",
                balancer.name()
            );
        }
    }
}

/// `balancer` as a trait object, if it was built.
fn boxed<B: Balancer + 'static, E>(balancer: Result<B, E>) -> Option<Box<dyn Balancer>> {
    balancer.ok().map(|b| Box::new(b) as Box<dyn Balancer>)
}

/// A topology file: parsed, and if valid written back and read again unchanged.
pub fn topology_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(topology) = Topology::from_toml_str(text) else {
        return;
    };
    let written = topology.to_toml_string().expect("a valid topology writes");
    let again = Topology::from_toml_str(&written).expect("a written topology reads back");
    assert_eq!(again.rank_count(), topology.rank_count());
    assert_eq!(again.domain_count(), topology.domain_count());
}

/// A JSON-lines trace: parsed, and if valid written back and read again unchanged.
pub fn trace_jsonl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(trace) = Trace::from_jsonl(text, "fuzz") else {
        return;
    };
    let written = trace
        .to_jsonl()
        .expect("a trace read from a file writes back");
    let again = Trace::from_jsonl(&written, "fuzz").expect("a written trace reads back");
    assert_eq!(again, trace);
}

/// A TensorRT-LLM dump: `meta_info.json` and the ranks' safetensors files, joined by
/// [`FILE_SEPARATOR`].
pub fn trace_trtllm(data: &[u8]) {
    let mut parts = files(data);
    let Some(meta) = parts.next() else {
        return;
    };
    let ranks: Vec<Vec<u8>> = parts.map(<[u8]>::to_vec).collect();
    if let Ok(trace) = Trace::from_trtllm_files("fuzz", meta, &ranks) {
        assert_eq!(trace.ranks as usize, ranks.len());
        for layers in &trace.steps {
            for matrix in layers {
                assert_eq!(matrix.len(), trace.ranks as usize * trace.experts as usize);
            }
        }
    }
}

/// The files of a [`trace_trtllm`] input: the pieces of `data` between [`FILE_SEPARATOR`]s.
pub fn files(data: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let separator = FILE_SEPARATOR;
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current
            .windows(separator.len())
            .position(|window| window == separator)
        {
            Some(at) => {
                rest = Some(&current[at + separator.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}
