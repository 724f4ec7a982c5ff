//! One real layer to move: the plan of 8 ranks x 4 experts with 2 slots under a load skewed
//! towards rank 0, as replicas on an HGX B200 node. The transfer crate's task-list tests and the
//! runtime's host-plane tests both use it, through `#[path]`.

use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, PlanConfig, Planner, RankDomains};
use ultraep_topo::Preset;
use ultraep_xfer::ReplicaSet;

/// The layout, the plan's replicas and the topology.
pub fn layer() -> (ExpertLayout, ReplicaSet, ultraep_topo::Topology) {
    let topology = Preset::HgxB200.topology(1).unwrap();
    let layout = ExpertLayout::contiguous(8, 4).unwrap();
    let loads: Vec<u32> = (0..8 * 32)
        .map(|i| 20_000 / ((i % 32) as u32 + 1))
        .collect();
    let config = PlanConfig {
        min_replica_tokens: 64,
        ..PlanConfig::default()
    };
    let mut planner =
        Planner::new(layout.clone(), RankDomains::single(8).unwrap(), 2, config).unwrap();
    let plan = planner
        .plan(LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap();
    (layout, replicas, topology)
}
