//! EPLB on a hand-checked example, and EPLB planned from one load and applied to another.

use ultraep_plan::{Balancer, Eplb, EplbMode, ExpertLayout, LoadMatrix, RankDomains};

/// Four ranks with two experts each and one slot each; every source sends a quarter of each
/// expert's load. Expert loads: 800, 100 | 300, 100 | 200, 100 | 50, 50.
fn estimate() -> Vec<u32> {
    let per_source = [200, 25, 75, 25, 50, 25, 12, 13];
    per_source.repeat(4)
}

fn eplb(mode: EplbMode) -> Eplb {
    Eplb::new(
        ExpertLayout::contiguous(4, 2).unwrap(),
        RankDomains::single(4).unwrap(),
        1,
        mode,
    )
    .unwrap()
}

#[test]
fn replicas_follow_the_published_rules() {
    // By hand. Counts: 4 slots go one at a time to the largest load per instance: e0 (800),
    // e0 (400 vs e2 300), e2 (300 vs e0 266), e0 (266 vs e4 200): e0 has 4 instances, e2 has 2.
    // Placement, longest first (e0 at 200 per instance, then e2 at 150), each on the least loaded
    // rank with a free slot and no copy; estimated loads start at 300, 250, 300, 100:
    // e0 -> rank 3 (100), e0 -> rank 1 (250), e0 -> rank 2 (300), e2 -> rank 0 (the only free slot).
    let mut balancer = eplb(EplbMode::Periodic);
    let loads = estimate();
    balancer
        .rebalance(LoadMatrix::new(&loads, 4, 8).unwrap())
        .unwrap();
    assert_eq!(balancer.placement(), &[(0, 3), (0, 1), (0, 2), (2, 0)]);
    let plan = balancer
        .plan(LoadMatrix::new(&loads, 4, 8).unwrap())
        .unwrap();
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn planned_from_history_applied_to_a_shifted_load() {
    // The replicas stay where history put them; the new hot expert 7 gets no help, and the even
    // split of each expert's new load is all EPLB does.
    let mut balancer = eplb(EplbMode::Periodic);
    let history = estimate();
    balancer
        .rebalance(LoadMatrix::new(&history, 4, 8).unwrap())
        .unwrap();
    let shifted = [20, 25, 75, 25, 50, 25, 12, 250].repeat(4);
    let plan = balancer
        .plan(LoadMatrix::new(&shifted, 4, 8).unwrap())
        .unwrap();
    insta::assert_snapshot!(plan.to_string());
    let oracle = eplb(EplbMode::Oracle)
        .plan(LoadMatrix::new(&shifted, 4, 8).unwrap())
        .unwrap();
    assert!(
        oracle.metrics().max_rank_load < plan.metrics().max_rank_load,
        "the oracle sees the shift"
    );
}

#[test]
fn without_a_rebalance_periodic_eplb_is_no_balancing() {
    let loads = estimate();
    let plan = eplb(EplbMode::Periodic)
        .plan(LoadMatrix::new(&loads, 4, 8).unwrap())
        .unwrap();
    assert_eq!(plan.metrics().replicas, 0);
}
