//! The slow loop's re-placement of masters across domains, on random layouts and loads.

use proptest::prelude::*;
use ultraep_plan::{
    Balancer, EplbHierarchical, ExpertLayout, LoadHistory, LoadMatrix, RankDomains, RehomeConfig,
    rehome,
};

/// A random layout over random domains, with every expert's expected load.
fn case() -> impl Strategy<Value = (ExpertLayout, RankDomains, Vec<u64>, RehomeConfig)> {
    (2u32..=24, 1u32..=4, 1u32..=4)
        .prop_flat_map(|(ranks, per_rank, domain_count)| {
            let experts = (ranks * per_rank) as usize;
            (
                Just(ranks),
                prop::collection::vec(0..ranks, experts),
                prop::collection::vec(0..domain_count, ranks as usize),
                prop::collection::vec(
                    prop_oneof![0u64..10, 0u64..100_000, 1_000_000u64..2_000_000],
                    experts,
                ),
                (
                    prop_oneof![Just(0u32), Just(10_000), Just(200_000)],
                    0u32..40,
                ),
            )
        })
        .prop_map(
            |(ranks, homes, labels, expected, (tolerance_ppm, max_moves))| {
                (
                    ExpertLayout::from_homes(ranks, homes).unwrap(),
                    RankDomains::from_labels(labels).unwrap(),
                    expected,
                    RehomeConfig {
                        tolerance_ppm,
                        max_moves,
                    },
                )
            },
        )
}

fn domain_loads(layout: &ExpertLayout, domains: &RankDomains, expected: &[u64]) -> Vec<u64> {
    let mut loads = vec![0u64; domains.num_domains() as usize];
    for (expert, &home) in layout.homes().iter().enumerate() {
        loads[domains.domain_of(home) as usize] += expected[expert];
    }
    loads
}

fn masters_per_rank(layout: &ExpertLayout) -> Vec<u32> {
    let mut count = vec![0u32; layout.num_ranks() as usize];
    for &home in layout.homes() {
        count[home as usize] += 1;
    }
    count
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_rehoming_evens_domains_without_making_any_worse((layout, domains, expected, config) in case()) {
        let rehoming = rehome(&layout, &domains, &expected, &config).unwrap();
        // Every expert keeps exactly one master, every rank its number of masters.
        prop_assert_eq!(rehoming.layout.num_experts(), layout.num_experts());
        prop_assert_eq!(masters_per_rank(&rehoming.layout), masters_per_rank(&layout));
        // The reported loads are the layouts' own.
        prop_assert_eq!(&rehoming.domain_loads_before, &domain_loads(&layout, &domains, &expected));
        prop_assert_eq!(&rehoming.domain_loads_after, &domain_loads(&rehoming.layout, &domains, &expected));
        // The hottest domain is never hotter, the coldest never colder.
        let max = |loads: &[u64]| loads.iter().copied().max().unwrap();
        let min = |loads: &[u64]| loads.iter().copied().min().unwrap();
        prop_assert!(max(&rehoming.domain_loads_after) <= max(&rehoming.domain_loads_before));
        prop_assert!(min(&rehoming.domain_loads_after) >= min(&rehoming.domain_loads_before));
        // The moves are exactly the experts whose home changed, within the budget.
        prop_assert!(rehoming.moves.len() <= config.max_moves as usize);
        for (expert, (&after, &before)) in rehoming.layout.homes().iter().zip(layout.homes()).enumerate() {
            let moved = rehoming.moves.iter().find(|m| m.expert == expert as u32);
            match moved {
                Some(m) => prop_assert!(m.from == before && m.to == after && before != after),
                None => prop_assert_eq!(after, before),
            }
        }
        // Every rank computes the same re-placement from the same history.
        prop_assert_eq!(&rehome(&layout, &domains, &expected, &config).unwrap(), &rehoming);
    }

    #[test]
    fn a_history_is_the_same_on_every_rank_and_settles_on_a_steady_load(
        loads in prop::collection::vec(0u32..100_000, 6),
        shift in 0u32..8,
        steps in 1usize..80,
    ) {
        let matrix = LoadMatrix::new(&loads, 2, 3).unwrap();
        let mut one = LoadHistory::new(3, shift).unwrap();
        let mut other = LoadHistory::new(3, shift).unwrap();
        for _ in 0..steps {
            one.record(matrix).unwrap();
            other.record(matrix).unwrap();
        }
        prop_assert_eq!(&one, &other);
        for (expert, &total) in one.expected().iter().enumerate() {
            let steady = u64::from(loads[expert] + loads[3 + expert]) << shift;
            prop_assert!(total <= steady, "never above the steady value");
        }
    }
}

#[test]
fn a_rehoming_stops_within_its_tolerance_and_budget() {
    // Four domains of one rank, four experts per rank; domain 0 holds every hot expert.
    let layout = ExpertLayout::contiguous(4, 4).unwrap();
    let domains = RankDomains::uniform(4, 1).unwrap();
    let expected: Vec<u64> = (0..16).map(|e| if e < 4 { 1000 } else { 10 }).collect();
    let none = rehome(
        &layout,
        &domains,
        &expected,
        &RehomeConfig {
            max_moves: 0,
            ..RehomeConfig::default()
        },
    )
    .unwrap();
    assert!(none.moves.is_empty());
    assert_eq!(none.layout, layout);
    let full = rehome(&layout, &domains, &expected, &RehomeConfig::default()).unwrap();
    // One hot expert per domain is even: three swaps, six moves.
    assert_eq!(full.domain_loads_after, [1030, 1030, 1030, 1030]);
    assert_eq!(full.moves.len(), 6);
    assert_eq!(full.imbalance().1, 1.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// EPLB's hierarchical mode keeps every domain's and rank's number of experts, lists exactly
    /// the experts whose domain changed, keeps every token, and is deterministic.
    #[test]
    fn eplb_hierarchical_packs_domains_and_keeps_every_token(
        (layout, domains, _, _) in case(),
        slots in 0u32..3,
        seed in any::<u64>(),
    ) {
        let ranks = layout.num_ranks() as usize;
        let experts = layout.num_experts() as usize;
        let mut state = seed | 1;
        let loads: Vec<u32> = (0..ranks * experts)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 5000) as u32
            })
            .collect();
        let matrix = LoadMatrix::new(&loads, ranks, experts).unwrap();
        let mut eplb = EplbHierarchical::new(layout.clone(), domains.clone(), slots).unwrap();
        eplb.rebalance(matrix).unwrap();
        let packed = eplb.layout().clone();
        prop_assert_eq!(masters_per_rank(&packed), masters_per_rank(&layout));
        for movement in eplb.moved_masters() {
            prop_assert_eq!(layout.home(movement.expert), movement.from);
            prop_assert_eq!(packed.home(movement.expert), movement.to);
            prop_assert_ne!(domains.domain_of(movement.from), domains.domain_of(movement.to));
        }
        let crossed = (0..experts as u32)
            .filter(|&e| domains.domain_of(layout.home(e)) != domains.domain_of(packed.home(e)))
            .count();
        prop_assert_eq!(crossed, eplb.moved_masters().len());
        let plan = eplb.plan(matrix).unwrap();
        prop_assert_eq!(plan.metrics().total_tokens, loads.iter().map(|&c| u64::from(c)).sum::<u64>());
        let mut again = EplbHierarchical::new(layout, domains, slots).unwrap();
        again.rebalance(matrix).unwrap();
        prop_assert_eq!(again.layout(), &packed);
        prop_assert_eq!(&again.plan(matrix).unwrap(), &plan);
    }
}

#[test]
fn huge_expected_loads_are_rehomed_without_overflow() {
    let layout = ExpertLayout::contiguous(4, 2).unwrap();
    let domains = RankDomains::uniform(4, 2).unwrap();
    let huge = u64::MAX / 8;
    let expected = [huge, huge - 5, huge / 2, 3, 1, 0, 7, huge / 3];
    let rehoming = rehome(&layout, &domains, &expected, &RehomeConfig::default()).unwrap();
    let max = |loads: &[u64]| loads.iter().copied().max().unwrap();
    assert!(max(&rehoming.domain_loads_after) <= max(&rehoming.domain_loads_before));
}
