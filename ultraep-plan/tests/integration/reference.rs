//! The published reference scenario: EP64, 256 experts, 4 masters + 2 slots per rank, top-8,
//! 8192 tokens per rank, initial max/mean 1.5 / 2.0 / 3.0. Published: final 1.01 with 38 / 46 / 51
//! replicas. The loads are drawn once per test binary and shared.

use std::sync::OnceLock;

use ultraep_plan::reference::{ReferenceLoad, ReferenceScenario};
use ultraep_plan::{Balancer, Plan, PlanConfig, Planner};

use crate::invariants::{Promises, check_plan};

/// (target imbalance, published replica count, scenario, drawn loads).
pub fn scenarios() -> &'static [(f64, u32, ReferenceScenario, ReferenceLoad)] {
    static SCENARIOS: OnceLock<Vec<(f64, u32, ReferenceScenario, ReferenceLoad)>> = OnceLock::new();
    SCENARIOS.get_or_init(|| {
        [(1.5, 38), (2.0, 46), (3.0, 51)]
            .into_iter()
            .map(|(target, published)| {
                let scenario = ReferenceScenario::published(target);
                let load = scenario.generate();
                (target, published, scenario, load)
            })
            .collect()
    })
}

pub fn planner(scenario: &ReferenceScenario) -> Planner {
    Planner::new(
        scenario.layout().unwrap(),
        scenario.domains().unwrap(),
        scenario.slots_per_rank,
        PlanConfig::default(),
    )
    .unwrap()
}

#[test]
fn generated_loads_hit_the_target_imbalance() {
    for (target, _, _, load) in scenarios() {
        assert!(
            (load.imbalance / target - 1.0).abs() < 0.005,
            "target {target}, drawn {}",
            load.imbalance
        );
    }
}

#[test]
fn reaches_one_percent_with_fewer_replicas_than_published() {
    for (target, published, scenario, load) in scenarios() {
        let plan: Plan = planner(scenario).plan(load.matrix()).unwrap();
        let metrics = plan.metrics();
        assert!(
            metrics.imbalance() <= 1.01,
            "initial {target}: final {}",
            metrics.imbalance()
        );
        assert!(
            metrics.replicas <= *published,
            "initial {target}: {} replicas",
            metrics.replicas
        );
        let most_per_expert = (0..scenario.num_experts())
            .map(|e| plan.instances_of(e).len() - 1)
            .max()
            .unwrap();
        assert!(
            most_per_expert <= 6,
            "{most_per_expert} replicas of one expert"
        );
        let promises = Promises {
            min_replica_tokens: 1024,
            master_keeps_token: true,
        };
        check_plan(
            &plan,
            load.matrix(),
            &scenario.layout().unwrap(),
            &scenario.domains().unwrap(),
            2,
            Some(promises),
        );
    }
}
