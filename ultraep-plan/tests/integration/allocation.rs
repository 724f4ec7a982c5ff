//! A reused planner allocates nothing once warm: counted with an allocator that counts the
//! allocations of the thread that asks, so tests running alongside do not disturb the count.

#[path = "../../../test-support/counting_allocator.rs"]
mod counting_allocator;

use counting_allocator::{CountingAllocator, allocations_on_this_thread as allocations_during};
use ultraep_plan::{Balancer, NoBalance, Plan};

use crate::reference::{planner, scenarios};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn the_counter_sees_allocations() {
    // The check below would pass vacuously if the allocator were not counting.
    let counted = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(counted, 1);
}

#[test]
fn a_warm_planner_does_not_allocate() {
    let scenario = &scenarios()[0].2;
    let mut ultraep = planner(scenario);
    let mut none = NoBalance::new(scenario.layout().unwrap(), scenario.domains().unwrap()).unwrap();
    let mut plan = Plan::default();
    // Warm up on every load the loop will see.
    for (_, _, _, load) in scenarios() {
        ultraep.plan_into(load.matrix(), &mut plan).unwrap();
        none.plan_into(load.matrix(), &mut plan).unwrap();
    }
    let counted = allocations_during(|| {
        for _ in 0..20 {
            for (_, _, _, load) in scenarios() {
                ultraep.plan_into(load.matrix(), &mut plan).unwrap();
                none.plan_into(load.matrix(), &mut plan).unwrap();
            }
        }
    });
    assert_eq!(counted, 0, "allocations in 120 warm plans");
}

/// The per-domain path allocates nothing once warm either: a domain's plan from the totals, the
/// plan assembled from every domain's replicas, and the rank's split from its gathered cells.
#[test]
fn a_warm_per_domain_planner_does_not_allocate() {
    use ultraep_plan::{GatheredLoads, PlanConfig, Planner, RankSplit, SplitMode};
    let scenario = &scenarios()[0].2;
    let config = PlanConfig {
        split: SplitMode::None,
        ..PlanConfig::default()
    };
    let mut planner = Planner::new(
        scenario.layout().unwrap(),
        scenario.domains().unwrap(),
        scenario.slots_per_rank,
        config,
    )
    .unwrap();
    let loads: Vec<_> = scenarios().iter().map(|(_, _, _, load)| load).collect();
    let totals: Vec<Vec<u32>> = loads
        .iter()
        .map(|load| {
            let matrix = load.matrix();
            (0..matrix.experts())
                .map(|e| (0..matrix.ranks()).map(|r| matrix.get(r, e)).sum())
                .collect()
        })
        .collect();
    let (mut plan, mut split, mut mine) = (Plan::default(), RankSplit::default(), Vec::new());
    // Per load: its domain's replicas and threshold (one domain here) and rank 5's cells.
    let mut prepared = Vec::new();
    for (load, totals) in loads.iter().zip(&totals) {
        let threshold = planner.plan_domain_into(0, totals, &mut mine).unwrap();
        planner.plan_totals_into(totals, &mut plan).unwrap();
        let gathered = GatheredLoads::gather(&plan, load.matrix(), 5).unwrap();
        prepared.push((mine.clone(), threshold, gathered));
    }
    let mut round = |planner: &mut Planner| {
        for (totals, (replicas, threshold, gathered)) in totals.iter().zip(&prepared) {
            planner.plan_domain_into(0, totals, &mut mine).unwrap();
            planner
                .assemble_into(totals, replicas, &[*threshold], &mut plan)
                .unwrap();
            split.compute_gathered(&plan, gathered).unwrap();
        }
    };
    round(&mut planner);
    let counted = allocations_during(|| {
        for _ in 0..20 {
            round(&mut planner);
        }
    });
    assert_eq!(counted, 0, "allocations in warm per-domain plans");
}
