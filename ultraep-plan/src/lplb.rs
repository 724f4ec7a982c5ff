//! The LPLB baseline: DeepSeek's per-batch token redistribution over a fixed replica set.
//!
//! LPLB keeps redundant copies placed by a static graph and moves no weights. As in LPLB, every
//! copy links one original expert to one other rank, and no expert has more than one copy (LPLB
//! says itself that this makes it worse than EPLB under strong global imbalance). The graph here
//! is LPLB's hypercube: inside each domain, slot `p` of the rank at position `i` holds a copy of
//! the `p`-th most loaded expert (by the load seen before the run) of the rank at position
//! `i XOR 2^p`, so every rank can hand tokens to `slots` neighbours (a slot whose neighbour falls
//! outside a domain that is not a power of two stays empty). Choosing the most loaded
//! experts for the copies follows LPLB, which replicates the heaviest experts after EPLB's
//! reordering (here masters stay where they are).
//!
//! Per microbatch it re-splits every replicated expert's tokens among its instances to even out
//! the ranks, which DeepSeek does with a linear program on one SM. This baseline re-splits by
//! integer water-filling instead: with every unreplicated expert at its master, each replicated
//! expert (largest load first) pours its tokens into its instances' ranks from the least loaded
//! up, and three passes re-pour every expert against the others; if even shares of the same
//! replicas would leave a lower maximum, those are used, as the linear program would never do
//! worse. It approaches the program's optimum from above: what gap remains makes this
//! baseline's balance slightly worse than LPLB's, never better.

use crate::SplitMode;
use crate::assembler::{Assembler, Replica};
use crate::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanError, RankDomains};

/// Re-pouring passes after the first.
const REFINEMENTS: usize = 3;

/// The LPLB baseline balancer.
#[derive(Debug, Clone)]
pub struct Lplb {
    assembler: Assembler,
    /// The copies, as (expert, rank), in placement order.
    placement: Vec<(u32, u32)>,
    /// Per microbatch: every rank's load, every instance's quota (by placement order, masters
    /// after the replicas), and the instance ranks of the expert being poured.
    rank_load: Vec<u64>,
    quotas: Vec<u64>,
    /// The same with EPLB's even shares, the fallback.
    even_load: Vec<u64>,
    even_quotas: Vec<u64>,
    instance_ranks: Vec<(u64, u32, usize)>,
    order: Vec<u32>,
    /// Per expert: its instances' indices into `quotas` (master last).
    instance_offsets: Vec<u32>,
    instances: Vec<(u32, usize)>,
    replicas: Vec<Replica>,
}

impl Lplb {
    /// LPLB for experts placed by `layout` on ranks grouped by `domains`, with `slots_per_rank`
    /// redundant slots on every rank; no replicas until [`Lplb::place`].
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
    ) -> Result<Self, PlanError> {
        let assembler = Assembler::new(layout, domains, slots_per_rank)?;
        let ranks = assembler.layout.num_ranks() as usize;
        let experts = assembler.layout.num_experts() as usize;
        let mut lplb = Self {
            assembler,
            placement: Vec::new(),
            rank_load: vec![0; ranks],
            quotas: Vec::new(),
            even_load: vec![0; ranks],
            even_quotas: Vec::new(),
            instance_ranks: Vec::new(),
            order: Vec::with_capacity(experts),
            instance_offsets: (0..=experts as u32).collect(),
            instances: Vec::new(),
            replicas: Vec::new(),
        };
        lplb.index();
        Ok(lplb)
    }

    /// Places the copies once, by the hypercube, copying the experts most loaded in
    /// `estimate`; they stay for every later plan.
    pub fn place(&mut self, estimate: LoadMatrix<'_>) -> Result<(), PlanError> {
        self.assembler.measure(estimate)?;
        let assembler = &self.assembler;
        let load = &assembler.expert_load;
        self.placement.clear();
        for domain in 0..assembler.domains.num_domains() {
            let ranks = assembler.domains.ranks_of(domain);
            for (position, &rank) in ranks.iter().enumerate() {
                for slot in 0..assembler.slots_per_rank.min(usize::BITS - 1) {
                    let Some(&neighbour) = ranks.get(position ^ (1usize << slot)) else {
                        continue;
                    };
                    // The neighbour's experts by load, most loaded first (ties: lower expert).
                    self.order.clear();
                    self.order
                        .extend_from_slice(assembler.experts_of(neighbour));
                    self.order.sort_unstable_by_key(|&expert| {
                        (std::cmp::Reverse(load[expert as usize]), expert)
                    });
                    if let Some(&expert) = self.order.get(slot as usize) {
                        self.placement.push((expert, rank));
                    }
                }
            }
        }
        self.index();
        Ok(())
    }

    fn index(&mut self) {
        // Every expert's instances, as (rank, index into `quotas`): its replicas in placement
        // order, then its master (indices after every replica's).
        let assembler = &self.assembler;
        let experts = assembler.layout.num_experts() as usize;
        let placement = &self.placement;
        self.instance_offsets.fill(0);
        for &(expert, _) in placement {
            self.instance_offsets[expert as usize + 1] += 1;
        }
        for expert in 0..experts {
            self.instance_offsets[expert + 1] += 1 + self.instance_offsets[expert];
        }
        self.instances.clear();
        self.instances
            .resize(self.instance_offsets[experts] as usize, (0, 0));
        let mut fill: Vec<u32> = self.instance_offsets[..experts].to_vec();
        for (index, &(expert, rank)) in placement.iter().enumerate() {
            self.instances[fill[expert as usize] as usize] = (rank, index);
            fill[expert as usize] += 1;
        }
        for (expert, &home) in assembler.layout.homes().iter().enumerate() {
            self.instances[fill[expert] as usize] = (home, placement.len() + expert);
        }
        self.quotas.clear();
        self.quotas.resize(placement.len() + experts, 0);
        self.even_quotas.clear();
        self.even_quotas.resize(placement.len() + experts, 0);
        self.replicas.clear();
        self.replicas.reserve(placement.len());
    }

    /// The replicas placed, as (expert, rank).
    pub fn placement(&self) -> &[(u32, u32)] {
        &self.placement
    }
}

/// Pours `load` tokens into `instances` (as (rank, index into `quotas`)), least loaded rank first,
/// in integers: the ranks reached end as level as whole tokens allow (ties: lower rank first).
fn pour(
    instances: &[(u32, usize)],
    load: u64,
    rank_load: &mut [u64],
    quotas: &mut [u64],
    sorted: &mut Vec<(u64, u32, usize)>,
) {
    sorted.clear();
    for &(rank, index) in instances {
        sorted.push((rank_load[rank as usize], rank, index));
    }
    sorted.sort_unstable();
    // How many of the lowest ranks the load reaches: raising the `count` lowest to the next
    // one's level takes count * level - (their sum) tokens.
    let mut filled = 0usize;
    let mut prefix = 0u64;
    for (count, &(level, _, _)) in sorted.iter().enumerate() {
        if count as u64 * level - prefix > load {
            break;
        }
        filled = count + 1;
        prefix += level;
    }
    let total = prefix + load;
    let level = total / filled as u64;
    let mut extra = total % filled as u64;
    for &(current, rank, index) in &sorted[..filled] {
        let mut quota = level - current;
        if extra > 0 {
            quota += 1;
            extra -= 1;
        }
        quotas[index] = quota;
        rank_load[rank as usize] += quota;
    }
    for &(_, _, index) in &sorted[filled..] {
        quotas[index] = 0;
    }
}

impl Balancer for Lplb {
    fn name(&self) -> &'static str {
        "lplb"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.assembler.measure(loads)?;
        let assembler = &self.assembler;
        let experts = assembler.layout.num_experts() as usize;
        let homes = assembler.layout.homes();
        let expert_load = &assembler.expert_load;
        let placement = &self.placement;
        let masters_from = placement.len();
        // Unreplicated experts stay at their masters; replicated ones are poured, largest first.
        self.rank_load.fill(0);
        self.order.clear();
        for expert in 0..experts {
            let count = self.instance_offsets[expert + 1] - self.instance_offsets[expert];
            if count == 1 {
                self.quotas[masters_from + expert] = expert_load[expert];
                self.rank_load[homes[expert] as usize] += expert_load[expert];
            } else {
                self.order.push(expert as u32);
            }
        }
        self.order.sort_unstable_by_key(|&expert| {
            (std::cmp::Reverse(expert_load[expert as usize]), expert)
        });
        for pass in 0..=REFINEMENTS {
            for &expert in &self.order {
                let e = expert as usize;
                let instances = &self.instances
                    [self.instance_offsets[e] as usize..self.instance_offsets[e + 1] as usize];
                if pass > 0 {
                    for &(rank, index) in instances {
                        self.rank_load[rank as usize] -= self.quotas[index];
                    }
                }
                pour(
                    instances,
                    expert_load[e],
                    &mut self.rank_load,
                    &mut self.quotas,
                    &mut self.instance_ranks,
                );
            }
        }
        // A linear program's optimum is never worse than EPLB's even shares of the same
        // replicas; where the pouring ends worse, the even shares are taken instead.
        let poured = self.rank_load.iter().copied().max().unwrap_or(0);
        self.even_load.fill(0);
        for expert in 0..experts {
            if self.instance_offsets[expert + 1] - self.instance_offsets[expert] == 1 {
                self.even_load[homes[expert] as usize] += expert_load[expert];
            }
        }
        for &expert in &self.order {
            let e = expert as usize;
            let instances = &self.instances
                [self.instance_offsets[e] as usize..self.instance_offsets[e + 1] as usize];
            let count = instances.len() as u64;
            // Replicas in placement order take shares 1, 2, ...; the master the first share.
            for (share, &(rank, index)) in instances.iter().enumerate() {
                let share = if share + 1 == instances.len() {
                    0
                } else {
                    share as u64 + 1
                };
                let quota = expert_load[e] / count + u64::from(share < expert_load[e] % count);
                self.even_quotas[index] = quota;
                self.even_load[rank as usize] += quota;
            }
        }
        if self.even_load.iter().copied().max().unwrap_or(0) < poured {
            for &expert in &self.order {
                let e = expert as usize;
                for &(_, index) in &self.instances
                    [self.instance_offsets[e] as usize..self.instance_offsets[e + 1] as usize]
                {
                    self.quotas[index] = self.even_quotas[index];
                }
            }
        }
        self.replicas.clear();
        for (index, &(expert, rank)) in placement.iter().enumerate() {
            self.replicas.push(Replica {
                expert,
                rank,
                quota: self.quotas[index] as u32,
            });
        }
        let assembler = &mut self.assembler;
        assembler.assemble(
            Some(loads),
            &mut self.replicas,
            SplitMode::Proportional,
            &[],
            plan,
        );
        assembler.record_busiest_ranks(plan);
        Ok(())
    }
}
