//! DeepSeek's EPLB as published: every copy of every expert, masters included, placed anew from a
//! load estimate.
//!
//! Each rank has `experts homed there + slots` physical expert slots. Per domain (experts stay in
//! the domain of their original home), with every slot of the domain to fill:
//!
//! 1. Copies: every expert has one; one more at a time goes to the expert with the largest
//!    estimated load per copy (ties: lower expert), until the slots are used or every loaded
//!    expert has a copy on every rank of the domain.
//! 2. Placement: copies heaviest first (load per copy; ties: lower expert), each on the least
//!    loaded rank (by estimated load; ties: lower rank) with a free slot and no copy of the expert.
//!    An expert's first copy placed becomes its master for the plan; a later copy that fits
//!    nowhere is dropped (a first copy always fits: there are at least as many slots as experts).
//! 3. Applied to a load: each expert's tokens are split evenly over its copies, proportionally
//!    from every source, as [`crate::Eplb`] does.
//!
//! Unlike [`crate::Eplb`], masters move: [`EplbReplace::moved`] lists the copies a re-placement
//! created, whose weights (and in training optimizer state) must travel before they serve.

use crate::assembler::{Assembler, Replica};
use crate::eplb::plan_even_shares;
use crate::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanError, RankDomains};

/// EPLB with full re-placement.
#[derive(Debug, Clone)]
pub struct EplbReplace {
    original: ExpertLayout,
    domains: RankDomains,
    /// Physical expert slots of every rank.
    capacity: Vec<u32>,
    assembler: Assembler,
    /// Copies that are not their expert's master, as (expert, rank).
    placement: Vec<(u32, u32)>,
    /// Every (rank, expert) copy that exists, masters included.
    copies: Vec<bool>,
    /// Copies the last re-placement created, as (expert, rank).
    moved: Vec<(u32, u32)>,
    /// Every expert's master before the last re-placement: where its moved copies come from.
    previous_homes: Vec<u32>,
    instances: Vec<u32>,
    handed: Vec<u32>,
    replicas: Vec<Replica>,
}

impl EplbReplace {
    /// EPLB over the experts of `layout` (their original homes set each expert's domain and each
    /// rank's number of slots) with `slots_per_rank` extra slots on every rank. Until the first
    /// [`EplbReplace::rebalance`] every expert is at its original home alone.
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
    ) -> Result<Self, PlanError> {
        let ranks = layout.num_ranks() as usize;
        let experts = layout.num_experts() as usize;
        let mut capacity = vec![slots_per_rank; ranks];
        for &home in layout.homes() {
            capacity[home as usize] += 1;
        }
        let most = capacity.iter().copied().max().unwrap_or(0);
        let assembler = Assembler::new(layout.clone(), domains.clone(), most)?;
        let mut copies = vec![false; ranks * experts];
        for (expert, &home) in layout.homes().iter().enumerate() {
            copies[home as usize * experts + expert] = true;
        }
        let layout_homes = layout.homes().to_vec();
        Ok(Self {
            original: layout,
            domains,
            capacity,
            assembler,
            placement: Vec::new(),
            copies,
            moved: Vec::new(),
            previous_homes: layout_homes,
            instances: vec![1; experts],
            handed: vec![0; experts],
            replicas: Vec::new(),
        })
    }

    /// The copies the last [`EplbReplace::rebalance`] created, as (expert, rank): each must be
    /// filled from a rank that held the expert before.
    pub fn moved(&self) -> &[(u32, u32)] {
        &self.moved
    }

    /// Every expert's master under the current placement.
    pub fn homes(&self) -> &[u32] {
        self.assembler.layout.homes()
    }

    /// The master `expert` had before the last re-placement: the rank its moved copies are
    /// filled from.
    pub fn previous_home(&self, expert: u32) -> u32 {
        self.previous_homes[expert as usize]
    }

    /// Places every copy anew from `estimate` (e.g. the summed load of a history window).
    pub fn rebalance(&mut self, estimate: LoadMatrix<'_>) -> Result<(), PlanError> {
        let ranks = self.original.num_ranks() as usize;
        let experts = self.original.num_experts() as usize;
        estimate.expect_shape(ranks, experts)?;
        let mut load = vec![0u64; experts];
        for source in 0..ranks {
            for (sum, &count) in load.iter_mut().zip(estimate.row(source)) {
                *sum += u64::from(count);
            }
        }
        let mut count = vec![1u32; experts];
        let mut copies = vec![false; ranks * experts];
        let mut homes = vec![u32::MAX; experts];
        let mut placement = Vec::new();
        let mut estimated = vec![0u64; ranks];
        let mut free = self.capacity.clone();
        for domain in 0..self.domains.num_domains() {
            let domain_ranks = self.domains.ranks_of(domain);
            let members: Vec<u32> = (0..experts as u32)
                .filter(|&e| self.domains.domain_of(self.original.home(e)) == domain)
                .collect();
            let budget: u64 = domain_ranks
                .iter()
                .map(|&r| u64::from(self.capacity[r as usize]))
                .sum();
            let mut extra = budget.saturating_sub(members.len() as u64);
            let most = domain_ranks.len() as u32;
            while extra > 0 {
                // load[e] / count[e] largest, compared without division; ties to the lower expert.
                let best = members
                    .iter()
                    .copied()
                    .filter(|&e| load[e as usize] > 0 && count[e as usize] < most)
                    .max_by(|&a, &b| {
                        let left = u128::from(load[a as usize]) * u128::from(count[b as usize]);
                        let right = u128::from(load[b as usize]) * u128::from(count[a as usize]);
                        left.cmp(&right).then(b.cmp(&a))
                    });
                let Some(expert) = best else { break };
                count[expert as usize] += 1;
                extra -= 1;
            }
            let per_copy = |e: u32| load[e as usize] / u64::from(count[e as usize]);
            let mut order: Vec<(u32, u32)> = members
                .iter()
                .flat_map(|&e| (0..count[e as usize]).map(move |copy| (e, copy)))
                .collect();
            order.sort_unstable_by_key(|&(e, copy)| (std::cmp::Reverse(per_copy(e)), e, copy));
            for (expert, _) in order {
                let e = expert as usize;
                let target = domain_ranks
                    .iter()
                    .copied()
                    .filter(|&r| free[r as usize] > 0 && !copies[r as usize * experts + e])
                    .min_by_key(|&r| (estimated[r as usize], r));
                let Some(rank) = target else { continue };
                free[rank as usize] -= 1;
                copies[rank as usize * experts + e] = true;
                estimated[rank as usize] += per_copy(expert);
                if homes[e] == u32::MAX {
                    homes[e] = rank;
                } else {
                    placement.push((expert, rank));
                }
            }
        }
        let layout = ExpertLayout::from_homes(ranks as u32, homes)?;
        let most = self.capacity.iter().copied().max().unwrap_or(0);
        let assembler = Assembler::new(layout, self.domains.clone(), most)?;
        self.previous_homes.clear();
        self.previous_homes
            .extend_from_slice(self.assembler.layout.homes());
        self.assembler = assembler;
        self.moved.clear();
        for rank in 0..ranks {
            for expert in 0..experts {
                if copies[rank * experts + expert] && !self.copies[rank * experts + expert] {
                    self.moved.push((expert as u32, rank as u32));
                }
            }
        }
        self.copies = copies;
        self.placement = placement;
        Ok(())
    }
}

impl Balancer for EplbReplace {
    fn name(&self) -> &'static str {
        "eplb-replace"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        plan_even_shares(
            &mut self.assembler,
            &self.placement,
            &mut self.instances,
            &mut self.handed,
            &mut self.replicas,
            loads,
            plan,
        )
    }
}
