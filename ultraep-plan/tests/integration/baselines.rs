//! Every balancer on one small skewed problem over two domains, as snapshots: the plans a
//! baseline's replica counts, placement, packing and split produce, so that a change in any of
//! them shows in review (constraint checks alone accept a worse plan), and the names the reports
//! print.

use ultraep_plan::{
    Balancer, Eplb, EplbHierarchical, EplbMode, EplbReplace, ExpertLayout, FixedReplicas,
    InstanceCost, LoadMatrix, Lplb, NoBalance, PlanConfig, Planner, RankDomains,
};

const RANKS: u32 = 8;
const EXPERTS: u32 = 16;

/// 8 ranks in two domains of 4, two experts per rank, two slots per rank. Every source sends
/// each expert a share of a load skewed towards low experts, the first domain's experts hotter,
/// with a source-dependent wobble so that no two rows are equal.
fn loads() -> Vec<u32> {
    (0..RANKS)
        .flat_map(|source| {
            (0..EXPERTS).map(move |expert| {
                let base = 960 / (expert + 1) + if expert < 8 { 40 } else { 0 };
                base + (source * 7 + expert * 3) % 11
            })
        })
        .collect()
}

fn layout() -> ExpertLayout {
    ExpertLayout::contiguous(RANKS, EXPERTS / RANKS).unwrap()
}

fn domains() -> RankDomains {
    RankDomains::uniform(RANKS, 4).unwrap()
}

fn matrix(loads: &[u32]) -> LoadMatrix<'_> {
    LoadMatrix::new(loads, RANKS as usize, EXPERTS as usize).unwrap()
}

#[test]
fn ultraep_over_two_domains() {
    let loads = loads();
    let plan = Planner::new(layout(), domains(), 2, PlanConfig::default())
        .unwrap()
        .plan(matrix(&loads))
        .unwrap();
    insta::assert_snapshot!(plan.to_string());
    // Tokens crossing domains: every token whose source lies in another domain than its
    // expert's master (replicas never leave that domain), counted here from the loads alone.
    let crossing: u64 = (0..RANKS)
        .flat_map(|source| (0..EXPERTS).map(move |expert| (source, expert)))
        .filter(|&(source, expert)| {
            domains().domain_of(source) != domains().domain_of(layout().home(expert))
        })
        .map(|(source, expert)| u64::from(loads[(source * EXPERTS + expert) as usize]))
        .sum();
    assert_eq!(plan.metrics().tokens_crossing_domains, crossing);
}

#[test]
fn eplb_with_two_slots_per_rank() {
    let loads = loads();
    let mut eplb = Eplb::new(layout(), domains(), 2, EplbMode::Periodic).unwrap();
    eplb.rebalance(matrix(&loads)).unwrap();
    let plan = eplb.plan(matrix(&loads)).unwrap();
    insta::assert_snapshot!(format!("placement {:?}\n{plan}", eplb.placement()));
}

#[test]
fn eplb_re_placing_every_copy() {
    let loads = loads();
    let mut replace = EplbReplace::new(layout(), domains(), 2).unwrap();
    replace.rebalance(matrix(&loads)).unwrap();
    let plan = replace.plan(matrix(&loads)).unwrap();
    insta::assert_snapshot!(format!("homes {:?}\n{plan}", replace.homes()));
}

#[test]
fn eplb_hierarchical_packs_the_domains() {
    let loads = loads();
    let mut hierarchical = EplbHierarchical::new(layout(), domains(), 2).unwrap();
    hierarchical.rebalance(matrix(&loads)).unwrap();
    let plan = hierarchical.plan(matrix(&loads)).unwrap();
    insta::assert_snapshot!(format!(
        "homes {:?}\nmoved {:?}\n{plan}",
        hierarchical.layout().homes(),
        hierarchical.moved_masters()
    ));
}

#[test]
fn lplb_on_its_hypercube() {
    let loads = loads();
    let mut lplb = Lplb::new(layout(), domains(), 2).unwrap();
    lplb.place(matrix(&loads)).unwrap();
    let plan = lplb.plan(matrix(&loads)).unwrap();
    insta::assert_snapshot!(format!("placement {:?}\n{plan}", lplb.placement()));
}

#[test]
fn resident_replicas_under_a_weight_read_cost() {
    // A weight read worth 30 tokens: the re-split leaves a replica out where a handful of tokens
    // would not pay for its read.
    let loads = loads();
    let cost = InstanceCost {
        per_token: 10,
        per_instance: 300,
    };
    let chosen = Planner::new(layout(), domains(), 2, PlanConfig::default())
        .unwrap()
        .plan(matrix(&loads))
        .unwrap();
    let placement: Vec<(u32, u32)> = chosen
        .instances()
        .iter()
        .filter(|instance| instance.is_replica())
        .map(|instance| (instance.expert, instance.rank))
        .collect();
    let mut resident = FixedReplicas::new(layout(), domains(), 2, cost).unwrap();
    resident.set_placement(&placement).unwrap();
    let shifted: Vec<u32> = loads.iter().map(|&load| load * 3 / 4).collect();
    insta::assert_snapshot!(resident.plan(matrix(&shifted)).unwrap().to_string());
}

#[test]
fn every_balancer_is_named_as_reports_print_it() {
    let names = [
        Planner::new(layout(), domains(), 2, PlanConfig::default())
            .unwrap()
            .name(),
        NoBalance::new(layout(), domains()).unwrap().name(),
        Eplb::new(layout(), domains(), 2, EplbMode::Periodic)
            .unwrap()
            .name(),
        EplbReplace::new(layout(), domains(), 2).unwrap().name(),
        EplbHierarchical::new(layout(), domains(), 2)
            .unwrap()
            .name(),
        Lplb::new(layout(), domains(), 2).unwrap().name(),
        FixedReplicas::new(layout(), domains(), 2, InstanceCost::TOKENS)
            .unwrap()
            .name(),
    ];
    insta::assert_snapshot!(names.join(", "));
}

#[test]
fn ultraep_reuses_a_resident_copy_where_it_costs_no_balance() {
    // The plain plan's first replica, and the same expert resident in a slot of another rank of
    // its domain that the plain plan leaves without a copy of it: planned again with that
    // residency, the copy goes to the resident slot, and no rank is busier.
    // One domain; expert 0 hot, every other expert alike, so that ranks 1-7 are equally cold.
    let loads: Vec<u32> = (0..RANKS * EXPERTS)
        .map(|cell| if cell % EXPERTS == 0 { 400 } else { 10 })
        .collect();
    let domains = || RankDomains::single(RANKS).unwrap();
    let mut planner = Planner::new(layout(), domains(), 2, PlanConfig::default()).unwrap();
    let plain = planner.plan(matrix(&loads)).unwrap();
    let first = plain
        .instances()
        .iter()
        .find(|instance| instance.is_replica())
        .copied()
        .unwrap();
    let holds = |plan: &ultraep_plan::Plan, rank: u32| {
        plan.instances()
            .iter()
            .any(|instance| instance.expert == first.expert && instance.rank == rank)
    };
    let domain = domains().domain_of(first.rank);
    let other = *domains()
        .ranks_of(domain)
        .iter()
        .find(|&&rank| !holds(&plain, rank))
        .unwrap();
    let mut residency = ultraep_plan::Residency::new(RANKS, 2);
    residency.set(other, 0, Some(first.expert));
    let mut preferring = ultraep_plan::Plan::default();
    planner
        .plan_preferring(matrix(&loads), Some(&residency), &mut preferring)
        .unwrap();
    assert!(
        holds(&preferring, other),
        "expert {} is resident on rank {other}, but the plan copies it elsewhere:\n{preferring}",
        first.expert
    );
    assert!(preferring.metrics().max_rank_load <= plain.metrics().max_rank_load);
}
