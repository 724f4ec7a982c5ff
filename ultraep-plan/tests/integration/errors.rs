//! Bad input is an error that names the problem, never a panic.

use ultraep_plan::{
    Balancer, Eplb, EplbMode, ExpertLayout, LoadMatrix, PlanConfig, PlanError, Planner, RankDomains,
};

#[test]
fn load_matrix_of_the_wrong_length() {
    let error = LoadMatrix::new(&[1, 2, 3], 2, 2).unwrap_err();
    assert_eq!(
        error,
        PlanError::LoadLength {
            rows: 2,
            columns: 2,
            len: 3
        }
    );
    assert_eq!(
        error.to_string(),
        "a 2 x 2 load matrix needs 4 entries, got 3"
    );
}

#[test]
fn load_matrix_of_the_wrong_shape() {
    let mut planner = Planner::new(
        ExpertLayout::contiguous(2, 2).unwrap(),
        RankDomains::single(2).unwrap(),
        1,
        PlanConfig::default(),
    )
    .unwrap();
    let loads = [0u32; 6];
    let error = planner
        .plan(LoadMatrix::new(&loads, 2, 3).unwrap())
        .unwrap_err();
    assert!(matches!(
        error,
        PlanError::LoadShape {
            rows: 2,
            columns: 3,
            num_ranks: 2,
            num_experts: 4
        }
    ));
}

#[test]
fn home_out_of_range() {
    let error = ExpertLayout::from_homes(4, vec![0, 1, 4]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "expert 2 has home rank 4, but there are only 4 ranks"
    );
}

#[test]
fn empty_layouts_and_domains() {
    assert_eq!(
        ExpertLayout::from_homes(0, vec![]).unwrap_err(),
        PlanError::NoRanks
    );
    assert_eq!(
        ExpertLayout::from_homes(3, vec![]).unwrap_err(),
        PlanError::NoExperts
    );
    assert_eq!(
        ExpertLayout::contiguous(3, 0).unwrap_err(),
        PlanError::NoExpertsPerRank
    );
    assert_eq!(
        RankDomains::from_labels(vec![]).unwrap_err(),
        PlanError::NoRanks
    );
    assert!(matches!(
        RankDomains::uniform(10, 4),
        Err(PlanError::DomainSizeMismatch { .. })
    ));
    assert!(matches!(
        RankDomains::uniform(10, 0),
        Err(PlanError::DomainSizeMismatch { .. })
    ));
}

#[test]
fn domains_that_do_not_cover_the_ranks() {
    let error = Planner::new(
        ExpertLayout::contiguous(4, 1).unwrap(),
        RankDomains::single(3).unwrap(),
        1,
        PlanConfig::default(),
    )
    .unwrap_err();
    assert_eq!(
        error,
        PlanError::DomainTableLength {
            got: 3,
            num_ranks: 4
        }
    );
}

#[test]
fn too_many_slots() {
    let error = Planner::new(
        ExpertLayout::contiguous(2, 1).unwrap(),
        RankDomains::single(2).unwrap(),
        70_000,
        PlanConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(
        error,
        PlanError::TooManySlots { slots: 70_000, .. }
    ));
}

#[test]
fn expert_load_beyond_32_bits() {
    let mut planner = Planner::new(
        ExpertLayout::contiguous(2, 1).unwrap(),
        RankDomains::single(2).unwrap(),
        1,
        PlanConfig::default(),
    )
    .unwrap();
    let loads = [u32::MAX, 0, 1, 0];
    let error = planner
        .plan(LoadMatrix::new(&loads, 2, 2).unwrap())
        .unwrap_err();
    assert!(matches!(
        error,
        PlanError::ExpertLoadOverflow {
            expert: 0,
            tokens: 4_294_967_296
        }
    ));
    // The planner stays usable after refusing a load.
    let fine = [5, 0, 1, 0];
    assert!(planner.plan(LoadMatrix::new(&fine, 2, 2).unwrap()).is_ok());
}

/// A few numbers must not make a balancer allocate terabytes: shapes whose tables or replica
/// buffers would not fit are refused before anything is allocated.
#[test]
fn shapes_whose_buffers_would_not_fit_are_refused() {
    // 50,000 ranks x 50,000 experts: a 2.5 x 10^9-cell table.
    let layout = ExpertLayout::contiguous(50_000, 1).unwrap();
    let domains = RankDomains::single(50_000).unwrap();
    let error =
        Planner::new(layout.clone(), domains.clone(), 2, PlanConfig::default()).unwrap_err();
    assert!(
        matches!(
            error,
            PlanError::TooLarge {
                size: 2_500_000_000,
                ..
            }
        ),
        "{error}"
    );
    let error = Eplb::new(layout, domains, 2, EplbMode::Periodic).unwrap_err();
    assert!(matches!(error, PlanError::TooLarge { .. }), "{error}");
    // 100,000 ranks x 200 slots of 20,000 experts: 2 x 10^7 replicas.
    let layout = ExpertLayout::from_homes(100_000, (0..20_000).collect()).unwrap();
    let domains = RankDomains::single(100_000).unwrap();
    let error = Planner::new(layout, domains, 200, PlanConfig::default()).unwrap_err();
    assert!(
        matches!(
            error,
            PlanError::TooLarge {
                what: "the replica buffers",
                ..
            }
        ),
        "{error}"
    );
}

/// Two numbers asking for tables of billions of entries are refused before any is allocated;
/// a label per rank is renumbered through a map (it was a scan per rank: quadratic).
#[test]
fn layouts_and_domains_of_absurd_size_are_refused() {
    for error in [
        ExpertLayout::contiguous(u32::MAX, u32::MAX).unwrap_err(),
        ExpertLayout::balanced_blocks(4, u32::MAX).unwrap_err(),
        RankDomains::single(u32::MAX).unwrap_err(),
        RankDomains::uniform(u32::MAX - 1, 1).unwrap_err(),
        ExpertLayout::from_homes(u32::MAX, vec![0]).unwrap_err(),
    ] {
        assert!(matches!(error, PlanError::TooLarge { .. }), "{error}");
    }
    let labels: Vec<u32> = (0..200_000).rev().collect();
    let domains = RankDomains::from_labels(labels).unwrap();
    assert_eq!(domains.num_domains(), 200_000);
    assert_eq!(
        domains.domain_of(199_999),
        199_999,
        "first appearance order"
    );
}

/// A rank that gathered for another plan lacks cells the split needs: an error naming the cell,
/// never a split computed from missing tokens.
#[test]
fn a_split_from_cells_gathered_for_another_plan_is_refused() {
    use ultraep_plan::{GatheredLoads, NoBalance, RankSplit};
    let loads = [
        100, 10, 10, 0, 100, 10, 0, 10, 100, 0, 10, 10, 100, 10, 10, 10,
    ];
    let matrix = LoadMatrix::new(&loads, 4, 4).unwrap();
    let layout = ExpertLayout::contiguous(4, 1).unwrap();
    let domains = RankDomains::single(4).unwrap();
    let config = PlanConfig {
        min_replica_tokens: 1,
        ..PlanConfig::default()
    };
    let replicated = Planner::new(layout.clone(), domains.clone(), 1, config)
        .unwrap()
        .plan(matrix)
        .unwrap();
    let masters_only = NoBalance::new(layout, domains)
        .unwrap()
        .plan(matrix)
        .unwrap();
    // Rank 3 holds a replica of expert 0 in the replicated plan, not in the other.
    let gathered = GatheredLoads::gather(&masters_only, matrix, 3).unwrap();
    let error = RankSplit::default()
        .compute_gathered(&replicated, &gathered)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("expert 0, which were not gathered"),
        "{error}"
    );
}

/// Replicas from a peer that no plan could hold are refused before anything is built.
#[test]
fn replicas_a_peer_sent_that_no_plan_could_hold_are_refused() {
    use ultraep_plan::{Plan, Replica};
    let config = PlanConfig {
        min_replica_tokens: 1,
        ..PlanConfig::default()
    };
    let mut planner = Planner::new(
        ExpertLayout::contiguous(4, 1).unwrap(),
        RankDomains::uniform(4, 2).unwrap(),
        1,
        config,
    )
    .unwrap();
    let totals = [400, 30, 30, 30];
    let mut plan = Plan::default();
    let cases = [
        (
            Replica {
                expert: 0,
                rank: 0,
                quota: 10,
            },
            "on the expert's home",
        ),
        (
            Replica {
                expert: 0,
                rank: 2,
                quota: 10,
            },
            "outside its expert's domain",
        ),
        (
            Replica {
                expert: 0,
                rank: 1,
                quota: 400,
            },
            "more than the expert's load",
        ),
        (
            Replica {
                expert: 7,
                rank: 1,
                quota: 1,
            },
            "outside the layout",
        ),
    ];
    for (replica, reason) in cases {
        let error = planner
            .assemble_into(&totals, &[replica], &[0, 0], &mut plan)
            .unwrap_err();
        assert!(error.to_string().contains(reason), "{error}");
    }
    let two = [
        Replica {
            expert: 2,
            rank: 3,
            quota: 1,
        },
        Replica {
            expert: 3,
            rank: 2,
            quota: 1,
        },
        Replica {
            expert: 0,
            rank: 1,
            quota: 1,
        },
        Replica {
            expert: 1,
            rank: 0,
            quota: 1,
        },
    ];
    planner
        .assemble_into(&totals, &two, &[0, 0], &mut plan)
        .unwrap();
    let error = planner
        .assemble_into(&totals, &two[..2], &[0], &mut plan)
        .unwrap_err();
    assert!(
        error.to_string().contains("domain 1 is not one of the 2"),
        "{error}"
    );
}
