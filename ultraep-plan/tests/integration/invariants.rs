//! The constraints every realizable plan must meet, checked from the outside.

use std::collections::HashSet;

use ultraep_plan::{ExpertLayout, LoadMatrix, Plan, PlanKind, RankDomains};

/// What a balancer promised beyond the constraints every plan meets.
#[derive(Debug, Clone, Copy)]
pub struct Promises {
    /// Every replica takes at least this many tokens.
    pub min_replica_tokens: u32,
    /// A loaded master keeps a token.
    pub master_keeps_token: bool,
}

/// Panics (with a message naming the broken rule) unless `plan` is a realizable plan of `loads`.
pub fn check_plan(
    plan: &Plan,
    loads: LoadMatrix<'_>,
    layout: &ExpertLayout,
    domains: &RankDomains,
    slots_per_rank: u32,
    promises: Option<Promises>,
) {
    assert_eq!(plan.kind(), PlanKind::Realizable);
    let experts = layout.num_experts();
    let ranks = layout.num_ranks() as usize;
    assert_eq!(plan.num_experts(), experts);
    let expert_load: Vec<u64> = (0..experts as usize)
        .map(|e| (0..ranks).map(|s| u64::from(loads.get(s, e))).sum())
        .collect();

    let mut replicas_on_rank = vec![HashSet::new(); ranks];
    let mut rank_load = vec![0u64; ranks];
    let mut replicas = 0;
    for expert in 0..experts {
        let instances = plan.instances_of(expert);
        let master = instances[0];
        assert_eq!(
            (master.rank, master.replica_slot),
            (layout.home(expert), None),
            "master of {expert} stays home"
        );
        let mut ranks_with_copy = HashSet::new();
        let mut quota_sum = 0u64;
        for (index, instance) in instances.iter().enumerate() {
            assert_eq!(instance.expert, expert);
            assert!(
                ranks_with_copy.insert(instance.rank),
                "two copies of expert {expert} on rank {}",
                instance.rank
            );
            quota_sum += u64::from(instance.quota);
            rank_load[instance.rank as usize] += u64::from(instance.quota);
            if index > 0 {
                replicas += 1;
                let slot = instance
                    .replica_slot
                    .expect("only the first instance is the master");
                assert!(u32::from(slot) < slots_per_rank, "slot {slot} out of range");
                assert!(
                    replicas_on_rank[instance.rank as usize].insert(slot),
                    "slot {slot} of rank {} used twice",
                    instance.rank
                );
                assert_eq!(
                    domains.domain_of(instance.rank),
                    domains.domain_of(master.rank),
                    "replica of {expert} leaves its domain"
                );
                if let Some(promises) = promises {
                    assert!(
                        instance.quota >= promises.min_replica_tokens,
                        "replica of {expert} below the minimum quota"
                    );
                }
            }
        }
        assert_eq!(
            quota_sum, expert_load[expert as usize],
            "quotas of {expert} add up to its load"
        );
        if let Some(promises) = promises
            && promises.master_keeps_token
            && expert_load[expert as usize] > 0
        {
            assert!(master.quota >= 1, "loaded master of {expert} keeps a token");
        }
    }
    for (rank, slots) in replicas_on_rank.iter().enumerate() {
        assert!(
            slots.len() as u32 <= slots_per_rank,
            "rank {rank} holds {} replicas",
            slots.len()
        );
    }
    assert_eq!(
        plan.rank_loads(),
        rank_load.as_slice(),
        "rank loads are the sums of quotas"
    );

    let metrics = plan.metrics();
    assert_eq!(metrics.replicas, replicas);
    assert_eq!(metrics.total_tokens, expert_load.iter().sum::<u64>());
    assert_eq!(
        metrics.max_rank_load,
        rank_load.iter().copied().max().unwrap_or(0)
    );
    assert!(
        metrics.max_rank_load >= metrics.lower_bound,
        "below the lower bound"
    );

    if plan.has_split() {
        check_split(plan, loads, &expert_load, metrics.tokens_leaving_source);
    }
}

fn check_split(plan: &Plan, loads: LoadMatrix<'_>, expert_load: &[u64], leaving: u64) {
    let ranks = loads.ranks();
    let mut from_source = vec![0u64; ranks * expert_load.len()];
    let mut into_instance = vec![0u64; plan.instances().len()];
    let mut previous: Option<(u32, u32, u32)> = None;
    let mut moved = 0u64;
    for entry in plan.split(loads) {
        let key = (entry.expert, entry.source, entry.instance);
        assert!(
            previous < Some(key),
            "split entries in (expert, source, instance) order, once each"
        );
        previous = Some(key);
        assert!(entry.tokens > 0, "zero split entry");
        let instance = plan.instances()[entry.instance as usize];
        assert_eq!(
            instance.expert, entry.expert,
            "split entry to another expert's instance"
        );
        from_source[entry.source as usize * expert_load.len() + entry.expert as usize] +=
            u64::from(entry.tokens);
        into_instance[entry.instance as usize] += u64::from(entry.tokens);
        if instance.rank != entry.source {
            moved += u64::from(entry.tokens);
        }
    }
    for source in 0..ranks {
        for expert in 0..expert_load.len() {
            assert_eq!(
                from_source[source * expert_load.len() + expert],
                u64::from(loads.get(source, expert)),
                "source {source} sends all its tokens for expert {expert}"
            );
        }
    }
    for (index, instance) in plan.instances().iter().enumerate() {
        assert_eq!(
            into_instance[index],
            u64::from(instance.quota),
            "instance {index} receives its quota"
        );
    }
    assert_eq!(moved, leaving, "tokens leaving their source");
}
