//! Reading a plan's replicas: where they come from, and the plans that cannot be transferred.

use ultraep_plan::{
    Balancer, ExpertLayout, ForceBalanced, LoadMatrix, PlanConfig, Planner, RankDomains,
};
use ultraep_topo::Preset;
use ultraep_xfer::{ReplicaSet, XferError};

/// Two HGX nodes, 4 experts per rank, all load on expert 0 (rank 0).
fn hot_loads() -> Vec<u32> {
    let mut loads = vec![0u32; 16 * 64];
    for source in 0..16 {
        loads[source * 64] = 5000;
    }
    loads
}

#[test]
fn replicas_name_their_master_and_slots() {
    let topology = Preset::HgxH100.topology(2).unwrap();
    let layout = ExpertLayout::contiguous(16, 4).unwrap();
    let domains = RankDomains::uniform(16, 8).unwrap();
    let mut planner = Planner::new(layout.clone(), domains, 1, PlanConfig::default()).unwrap();
    let loads = hot_loads();
    let plan = planner
        .plan(LoadMatrix::new(&loads, 16, 64).unwrap())
        .unwrap();
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap();
    assert_eq!(replicas.fanouts().len(), 1);
    let fanout = &replicas.fanouts()[0];
    assert_eq!(
        (fanout.expert(), fanout.master(), fanout.master_index()),
        (0, 0, 0)
    );
    assert_eq!(
        fanout.destinations().len(),
        7,
        "one replica on every other rank of node 0"
    );
    assert!(
        fanout
            .destinations()
            .iter()
            .all(|&(rank, slot)| (1..8).contains(&rank) && slot == 0)
    );
}

#[test]
fn a_replica_outside_its_masters_domain_is_refused() {
    // The planner believes all 16 ranks share a domain; the machine has two nodes.
    let topology = Preset::HgxH100.topology(2).unwrap();
    let layout = ExpertLayout::contiguous(16, 4).unwrap();
    let mut planner = Planner::new(
        layout.clone(),
        RankDomains::single(16).unwrap(),
        1,
        PlanConfig::default(),
    )
    .unwrap();
    let loads = hot_loads();
    let plan = planner
        .plan(LoadMatrix::new(&loads, 16, 64).unwrap())
        .unwrap();
    let error = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap_err();
    assert!(
        matches!(
            error,
            XferError::CrossDomainReplica {
                expert: 0,
                master: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn ideal_plans_and_other_layouts_are_refused() {
    let topology = Preset::HgxH100.topology(2).unwrap();
    let layout = ExpertLayout::contiguous(16, 4).unwrap();
    let loads = hot_loads();
    let matrix = LoadMatrix::new(&loads, 16, 64).unwrap();
    let ideal = ForceBalanced::new(layout.clone(), RankDomains::uniform(16, 8).unwrap())
        .unwrap()
        .plan(matrix)
        .unwrap();
    assert_eq!(
        ReplicaSet::from_plan(&ideal, &layout, &topology),
        Err(XferError::NotRealizable)
    );
    let mut planner = Planner::new(
        layout,
        RankDomains::uniform(16, 8).unwrap(),
        1,
        PlanConfig::default(),
    )
    .unwrap();
    let plan = planner.plan(matrix).unwrap();
    let other = ExpertLayout::contiguous(16, 2).unwrap();
    assert!(matches!(
        ReplicaSet::from_plan(&plan, &other, &topology),
        Err(XferError::LayoutMismatch { .. })
    ));
}

/// Fan-outs that cannot be carried out are refused when built, before any schedule sees them.
/// Before the fields were private, each of these was accepted; with a rank listed twice the
/// second slot silently received 0 bytes and the simulator reported an efficiency above 1.
#[test]
fn impossible_fanouts_are_refused_when_built() {
    use ultraep_xfer::{Fanout, ReplicaSetBuilder, XferError};
    let refused = |result: Result<Fanout, XferError>, fragment: &str| {
        let error = result.unwrap_err().to_string();
        assert!(error.contains(fragment), "{error:?} lacks {fragment:?}");
    };
    refused(Fanout::new(3, 0, 0, vec![]), "at least one destination");
    refused(
        Fanout::new(3, 0, 0, vec![(2, 0), (0, 1)]),
        "master's rank 0",
    );
    refused(
        Fanout::new(3, 0, 0, vec![(2, 0), (5, 0), (2, 1)]),
        "rank 2 is a destination twice",
    );
    let one = || Fanout::new(3, 0, 0, vec![(2, 0)]).unwrap();
    let error = ReplicaSet::new(vec![one(), one()]).unwrap_err().to_string();
    assert!(error.contains("two fan-outs"), "{error}");
    let other = Fanout::new(4, 1, 0, vec![(2, 0)]).unwrap();
    let error = ReplicaSet::new(vec![one(), other]).unwrap_err().to_string();
    assert!(
        error.contains("slot 0 of rank 2 is also expert 3's"),
        "{error}"
    );
    // The builder a runtime reuses every step checks the same, without allocating once warm.
    let mut builder = ReplicaSetBuilder::default();
    builder.add(3, 0, 0, (2, 0)).unwrap();
    assert!(builder.add(3, 0, 0, (2, 1)).is_err(), "rank 2 twice");
    assert!(builder.add(3, 1, 0, (4, 0)).is_err(), "another master");
    builder.add(4, 1, 0, (2, 0)).unwrap();
    assert!(builder.finish().is_err(), "slot 0 of rank 2 twice");
    builder.clear();
    builder.add(4, 1, 0, (2, 0)).unwrap();
    builder.add(3, 0, 0, (2, 1)).unwrap();
    let set = builder.finish().unwrap();
    assert_eq!(set.fanouts()[0].expert(), 3, "ordered by expert");
    assert_eq!(set.replica_count(), 2);
}
