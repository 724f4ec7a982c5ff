//! What the small public accessors and setting checks promise, each asserted directly: mutation
//! testing found them read by no test.

use ultraep_plan::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, PlanConfig, Planner, RankDomains,
};

#[test]
fn the_gap_to_the_lower_bound_is_the_busiest_rank_above_it() {
    let loads = [900, 10, 10, 10, 900, 10, 10, 10];
    let plan = Planner::new(
        ExpertLayout::contiguous(2, 2).unwrap(),
        RankDomains::single(2).unwrap(),
        0,
        PlanConfig::default(),
    )
    .unwrap()
    .plan(LoadMatrix::new(&loads, 2, 4).unwrap())
    .unwrap();
    let metrics = plan.metrics();
    assert!(metrics.max_rank_load > metrics.lower_bound);
    assert_eq!(
        metrics.gap_to_lower_bound(),
        metrics.max_rank_load - metrics.lower_bound
    );
}

#[test]
fn a_planner_keeps_the_configuration_it_was_given() {
    let config = PlanConfig {
        min_replica_tokens: 7,
        ..PlanConfig::default()
    };
    let planner = Planner::new(
        ExpertLayout::contiguous(2, 2).unwrap(),
        RankDomains::single(2).unwrap(),
        1,
        config,
    )
    .unwrap();
    assert_eq!(planner.config(), &config);
}

#[test]
fn a_zero_rate_of_either_kind_is_refused() {
    assert!(InstanceCost::from_rates(1 << 20, 0, 1000, 1 << 40).is_err());
    assert!(InstanceCost::from_rates(1 << 20, 1 << 40, 1000, 0).is_err());
    assert!(InstanceCost::from_rates(1 << 20, 1 << 40, 1000, 1 << 40).is_ok());
}
