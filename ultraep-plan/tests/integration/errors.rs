//! Bad input is an error that names the problem, never a panic.

use ultraep_plan::{
    Balancer, ExpertLayout, LoadMatrix, PlanConfig, PlanError, Planner, RankDomains,
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
