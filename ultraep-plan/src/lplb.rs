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
//! integer water-filling instead ([`FixedReplicas`] under the token count): with every
//! unreplicated expert at its master, each replicated expert (largest load first) pours its
//! tokens into its instances' ranks from the least loaded up, and three passes re-pour every
//! expert against the others; if even shares of the same replicas would leave a lower maximum,
//! those are used, as the linear program would never do worse. It approaches the program's
//! optimum from above: what gap remains makes this baseline's balance slightly worse than
//! LPLB's, never better.

use crate::{
    Balancer, ExpertLayout, FixedReplicas, InstanceCost, LoadMatrix, Plan, PlanError, RankDomains,
};

/// The LPLB baseline balancer.
#[derive(Debug, Clone)]
pub struct Lplb {
    replicas: FixedReplicas,
    /// The copies being chosen, as (expert, rank), and a neighbour's experts by load.
    placement: Vec<(u32, u32)>,
    order: Vec<u32>,
}

impl Lplb {
    /// LPLB for experts placed by `layout` on ranks grouped by `domains`, with `slots_per_rank`
    /// redundant slots on every rank; no replicas until [`Lplb::place`].
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
    ) -> Result<Self, PlanError> {
        let experts = layout.num_experts() as usize;
        Ok(Self {
            replicas: FixedReplicas::new(layout, domains, slots_per_rank, InstanceCost::TOKENS)?,
            placement: Vec::new(),
            order: Vec::with_capacity(experts),
        })
    }

    /// Places the copies once, by the hypercube, copying the experts most loaded in
    /// `estimate`; they stay for every later plan.
    pub fn place(&mut self, estimate: LoadMatrix<'_>) -> Result<(), PlanError> {
        let assembler = self.replicas.assembler_mut();
        assembler.measure(estimate)?;
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
        self.replicas.set_placement(&self.placement)
    }

    /// The replicas placed, as (expert, rank).
    pub fn placement(&self) -> &[(u32, u32)] {
        self.replicas.placement()
    }
}

impl Balancer for Lplb {
    fn name(&self) -> &'static str {
        "lplb"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.replicas.plan_into(loads, plan)
    }
}
