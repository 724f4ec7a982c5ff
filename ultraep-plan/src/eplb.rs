//! The EPLB baseline: DeepSeek's expert-parallel load balancer, adapted to masters that stay home.
//!
//! EPLB plans from a load *estimate* (a history window, or the exact load when used as an oracle)
//! and is then applied to whatever load arrives. Per domain, with `slots * ranks` redundant slots:
//!
//! 1. Replica counts: repeatedly give one more instance to the expert with the largest estimated
//!    load per instance (ties: lower expert), until the slots are used, no expert has load, or every
//!    loaded expert has a copy on every rank of its domain.
//! 2. Placement: replicas longest first (largest estimated load per instance; ties: lower expert),
//!    each on the least loaded rank (by estimated load; ties: lower rank) that has a free slot and no
//!    copy of the expert. A replica that fits nowhere is dropped.
//! 3. Applied to a load: each expert's tokens are split evenly over its instances (the first
//!    instances take one more when it does not divide), and every source sends to the instances in
//!    proportion to their quotas: EPLB has no per-source locality.
//!
//! DeepSeek's original re-places masters too and packs whole expert groups; with fixed masters only
//! the redundant copies move, which is how a per-domain slot budget compares with ultraep's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::assembler::{Assembler, Replica};
use crate::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanError, RankDomains, SplitMode};

/// When an [`Eplb`] balancer re-plans its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EplbMode {
    /// Keep the replicas of the last [`Eplb::rebalance`] (none until the first one): EPLB as
    /// deployed, planning from history.
    Periodic,
    /// Re-plan from the exact load of every microbatch: EPLB with a perfect predictor.
    Oracle,
}

/// The EPLB baseline balancer.
#[derive(Debug, Clone)]
pub struct Eplb {
    assembler: Assembler,
    mode: EplbMode,
    /// Placed replicas as (expert, rank); their quotas are set per microbatch.
    placement: Vec<(u32, u32)>,
    instance_count: Vec<u32>,
    estimated_rank_load: Vec<u64>,
    slots_free: Vec<u32>,
    /// Every (expert, rank) copy that exists, for the no-two-copies rule.
    has_copy: Vec<bool>,
    order: Vec<u32>,
    /// Scratch of a re-plan: experts by load per instance, ranks with room by estimated load,
    /// and ranks passed over for one expert.
    by_load_per_instance: BinaryHeap<PerInstance>,
    by_rank_load: BinaryHeap<Reverse<(u64, u32)>>,
    set_aside: Vec<Reverse<(u64, u32)>>,
    /// Per microbatch: replica shares handed out so far, per expert.
    handed: Vec<u32>,
    replicas: Vec<Replica>,
}

impl Eplb {
    /// EPLB for experts placed by `layout` on ranks grouped by `domains`, with `slots_per_rank`
    /// redundant slots on every rank.
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
        mode: EplbMode,
    ) -> Result<Self, PlanError> {
        let assembler = Assembler::new(layout, domains, slots_per_rank)?;
        let ranks = assembler.layout.num_ranks() as usize;
        let experts = assembler.layout.num_experts() as usize;
        Ok(Self {
            mode,
            placement: Vec::with_capacity(assembler.max_replicas()),
            instance_count: vec![1; experts],
            estimated_rank_load: vec![0; ranks],
            slots_free: vec![0; ranks],
            has_copy: vec![false; ranks * experts],
            order: Vec::with_capacity(experts),
            by_load_per_instance: BinaryHeap::with_capacity(experts),
            by_rank_load: BinaryHeap::with_capacity(ranks),
            set_aside: Vec::new(),
            handed: vec![0; experts],
            replicas: Vec::with_capacity(assembler.max_replicas()),
            assembler,
        })
    }

    /// The replicas currently placed, as (expert, rank), in placement order.
    pub fn placement(&self) -> &[(u32, u32)] {
        &self.placement
    }

    /// Re-plans the replicas from `estimate` (e.g. the summed load of a history window).
    pub fn rebalance(&mut self, estimate: LoadMatrix<'_>) -> Result<(), PlanError> {
        self.assembler.measure(estimate)?;
        self.placement.clear();
        let experts = self.assembler.layout.num_experts() as usize;
        self.has_copy.fill(false);
        for (expert, &home) in self.assembler.layout.homes().iter().enumerate() {
            self.has_copy[home as usize * experts + expert] = true;
        }
        self.instance_count.fill(1);
        for domain in 0..self.assembler.domains.num_domains() {
            self.rebalance_domain(domain);
        }
        debug_assert!(self.placement.len() <= self.assembler.max_replicas());
        Ok(())
    }

    fn rebalance_domain(&mut self, domain: u32) {
        let assembler = &self.assembler;
        let ranks = assembler.domains.ranks_of(domain);
        let load = &assembler.expert_load;
        let experts = assembler.layout.num_experts() as usize;
        // Step 1: replica counts, one at a time to the largest load per instance.
        self.order.clear();
        for &rank in ranks {
            self.order.extend_from_slice(assembler.experts_of(rank));
        }
        let budget = ranks.len() * assembler.slots_per_rank as usize;
        let max_instances = ranks.len() as u32;
        // A heap keyed by load per instance: n log n in the budget, where a scan of every expert
        // per replica was quadratic on large groups.
        self.by_load_per_instance.clear();
        for &expert in &self.order {
            if load[expert as usize] > 0 && max_instances > 1 {
                self.by_load_per_instance.push(PerInstance {
                    load: load[expert as usize],
                    count: 1,
                    expert,
                });
            }
        }
        for _ in 0..budget {
            let Some(mut top) = self.by_load_per_instance.pop() else {
                break;
            };
            top.count += 1;
            self.instance_count[top.expert as usize] = top.count;
            if top.count < max_instances {
                self.by_load_per_instance.push(top);
            }
        }
        // Step 2: place replicas longest first on the least loaded rank with room and no copy.
        for &rank in ranks {
            self.estimated_rank_load[rank as usize] = 0;
            self.slots_free[rank as usize] = assembler.slots_per_rank;
        }
        let per_instance =
            |expert: u32| load[expert as usize] / u64::from(self.instance_count[expert as usize]);
        for &rank in ranks {
            for &expert in assembler.experts_of(rank) {
                self.estimated_rank_load[rank as usize] += per_instance(expert);
            }
        }
        self.order
            .retain(|&expert| self.instance_count[expert as usize] > 1);
        self.order
            .sort_unstable_by_key(|&expert| (Reverse(per_instance(expert)), expert));
        // Ranks with a free slot, least loaded first (ties: lower rank). A rank that already holds
        // the expert is set aside until the expert's replicas are placed, so each rank is passed
        // over at most once per expert: n log n in all.
        self.by_rank_load.clear();
        if assembler.slots_per_rank > 0 {
            for &rank in ranks {
                self.by_rank_load
                    .push(Reverse((self.estimated_rank_load[rank as usize], rank)));
            }
        }
        for &expert in &self.order {
            self.set_aside.clear();
            for _ in 1..self.instance_count[expert as usize] {
                let mut target = None;
                while let Some(Reverse((rank_load, rank))) = self.by_rank_load.pop() {
                    if self.has_copy[rank as usize * experts + expert as usize] {
                        self.set_aside.push(Reverse((rank_load, rank)));
                    } else {
                        target = Some(rank);
                        break;
                    }
                }
                let Some(rank) = target else { break };
                self.slots_free[rank as usize] -= 1;
                self.has_copy[rank as usize * experts + expert as usize] = true;
                self.estimated_rank_load[rank as usize] += per_instance(expert);
                self.placement.push((expert, rank));
                if self.slots_free[rank as usize] > 0 {
                    self.by_rank_load
                        .push(Reverse((self.estimated_rank_load[rank as usize], rank)));
                }
            }
            self.by_rank_load.extend(self.set_aside.drain(..));
        }
    }
}

/// An expert in the replica-count heap: the greatest load per instance first, compared without
/// division (ties: the lower expert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PerInstance {
    load: u64,
    count: u32,
    expert: u32,
}

impl Ord for PerInstance {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let left = u128::from(self.load) * u128::from(other.count);
        let right = u128::from(other.load) * u128::from(self.count);
        left.cmp(&right).then(other.expert.cmp(&self.expert))
    }
}

impl PartialOrd for PerInstance {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Balancer for Eplb {
    fn name(&self) -> &'static str {
        "eplb"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        if self.mode == EplbMode::Oracle {
            self.rebalance(loads)?;
        }
        plan_even_shares(
            &mut self.assembler,
            &self.placement,
            &mut self.instance_count,
            &mut self.handed,
            &mut self.replicas,
            loads,
            plan,
        )
    }
}

/// Plans `loads` with EPLB's even split over the instances of `placement` (the replicas, as
/// (expert, rank)): the master takes the first share of every expert's load, the replicas the
/// next ones in placement order, the first `load % count` shares one token more; every source
/// sends in proportion. `instance_count` and `handed` are scratch, one entry per expert.
pub(crate) fn plan_even_shares(
    assembler: &mut Assembler,
    placement: &[(u32, u32)],
    instance_count: &mut [u32],
    handed: &mut [u32],
    replicas: &mut Vec<Replica>,
    loads: LoadMatrix<'_>,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    assembler.measure(loads)?;
    instance_count.fill(1);
    for &(expert, _) in placement {
        instance_count[expert as usize] += 1;
    }
    replicas.clear();
    handed.fill(0);
    for &(expert, rank) in placement {
        let e = expert as usize;
        let count = u64::from(instance_count[e]);
        let load = assembler.expert_load[e];
        handed[e] += 1;
        let index = u64::from(handed[e]);
        let quota = load / count + u64::from(index < load % count);
        replicas.push(Replica {
            expert,
            rank,
            quota: quota as u32,
        });
    }
    assembler.assemble(Some(loads), replicas, SplitMode::Proportional, &[], plan);
    assembler.record_busiest_ranks(plan);
    Ok(())
}
