//! DeepSeek's EPLB in its hierarchical mode, as we read it: experts packed onto domains (nodes)
//! so that the domains' estimated loads even out, then every copy placed anew inside each domain
//! ([`crate::EplbReplace`]).
//!
//! Re-placement across domains from an estimate, every time it re-plans: the baseline the slow
//! loop ([`crate::rehome`]) is measured against. Where the slow loop swaps the few masters that
//! even the domains out and moves them in the background, this moves every expert whose domain
//! the packing changes, at the re-plan.
//!
//! 1. Domains: experts heaviest first (estimated load; ties: lower expert), each to the domain
//!    with the least load so far that has room (ties: lower domain); a domain has room for as
//!    many experts as the original layout homes there.
//! 2. Ranks: inside each domain, its experts heaviest first to the rank with the least load so far
//!    that has room (as many as the original layout homes there; ties: lower rank).
//! 3. Copies: [`crate::EplbReplace`] over that layout, re-planned from the same estimate.

use crate::{
    Balancer, EplbReplace, ExpertLayout, LoadMatrix, MasterMove, Plan, PlanError, RankDomains,
};

/// EPLB's hierarchical mode: masters re-packed across domains at every re-plan.
#[derive(Debug, Clone)]
pub struct EplbHierarchical {
    original: ExpertLayout,
    domains: RankDomains,
    slots_per_rank: u32,
    current: ExpertLayout,
    inner: EplbReplace,
    moved: Vec<MasterMove>,
}

impl EplbHierarchical {
    /// The hierarchical EPLB over `layout` (which sets every domain's and rank's number of
    /// experts) with `slots_per_rank` extra slots on every rank; until the first
    /// [`EplbHierarchical::rebalance`], every expert is at its original home alone.
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
    ) -> Result<Self, PlanError> {
        let inner = EplbReplace::new(layout.clone(), domains.clone(), slots_per_rank)?;
        Ok(Self {
            current: layout.clone(),
            original: layout,
            domains,
            slots_per_rank,
            inner,
            moved: Vec::new(),
        })
    }

    /// The masters the last re-plan moved to another domain.
    pub fn moved_masters(&self) -> &[MasterMove] {
        &self.moved
    }

    /// The in-domain placement of the last re-plan (its moved copies included).
    pub fn in_domains(&self) -> &EplbReplace {
        &self.inner
    }

    /// The layout of the last re-plan: every expert's domain and rank before in-domain copies.
    pub fn layout(&self) -> &ExpertLayout {
        &self.current
    }

    /// Re-packs experts onto domains and ranks from `estimate`, then places copies in each domain.
    pub fn rebalance(&mut self, estimate: LoadMatrix<'_>) -> Result<(), PlanError> {
        let ranks = self.original.num_ranks() as usize;
        let experts = self.original.num_experts() as usize;
        estimate.expect_shape(ranks, experts)?;
        let mut load = vec![0u64; experts];
        for source in 0..ranks {
            for (total, &count) in load.iter_mut().zip(estimate.row(source)) {
                *total += u64::from(count);
            }
        }
        let mut order: Vec<u32> = (0..experts as u32).collect();
        order.sort_unstable_by_key(|&e| (std::cmp::Reverse(load[e as usize]), e));

        let domain_count = self.domains.num_domains() as usize;
        let mut rank_room = vec![0u32; ranks];
        for &home in self.original.homes() {
            rank_room[home as usize] += 1;
        }
        let mut domain_room = vec![0u32; domain_count];
        for (rank, &room) in rank_room.iter().enumerate() {
            domain_room[self.domains.domain_of(rank as u32) as usize] += room;
        }
        let mut domain_load = vec![0u64; domain_count];
        let mut domain_of_expert = vec![0u32; experts];
        for &expert in &order {
            let domain = (0..domain_count)
                .filter(|&d| domain_room[d] > 0)
                .min_by_key(|&d| (domain_load[d], d))
                .ok_or(PlanError::NoExpertsPerRank)?;
            domain_room[domain] -= 1;
            domain_load[domain] += load[expert as usize];
            domain_of_expert[expert as usize] = domain as u32;
        }
        let mut rank_load = vec![0u64; ranks];
        let mut homes = vec![0u32; experts];
        for &expert in &order {
            let domain = domain_of_expert[expert as usize];
            let rank = self
                .domains
                .ranks_of(domain)
                .iter()
                .copied()
                .filter(|&r| rank_room[r as usize] > 0)
                .min_by_key(|&r| (rank_load[r as usize], r))
                .ok_or(PlanError::NoExpertsPerRank)?;
            rank_room[rank as usize] -= 1;
            rank_load[rank as usize] += load[expert as usize];
            homes[expert as usize] = rank;
        }
        let layout = ExpertLayout::from_homes(ranks as u32, homes)?;
        self.moved.clear();
        for expert in 0..experts as u32 {
            let (from, to) = (self.current.home(expert), layout.home(expert));
            if self.domains.domain_of(from) != self.domains.domain_of(to) {
                self.moved.push(MasterMove { expert, from, to });
            }
        }
        self.inner = EplbReplace::new(layout.clone(), self.domains.clone(), self.slots_per_rank)?;
        self.inner.rebalance(estimate)?;
        self.current = layout;
        Ok(())
    }
}

impl Balancer for EplbHierarchical {
    fn name(&self) -> &'static str {
        "eplb-hierarchical"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.inner.plan_into(loads, plan)
    }
}
