//! Replicas already in place, and the per-batch re-split of every expert's tokens among them:
//! no weight moves, only whole tokens. LPLB ([`crate::Lplb`]) is this re-split over its hypercube
//! placement; decode with resident replicas is the same re-split over the replicas a slow loop
//! chose from recent loads.
//!
//! The re-split is integer water-filling under an instance cost ([`InstanceCost`]): with every
//! unreplicated expert at its master, each replicated expert (largest load first) pours its
//! tokens into its instances' ranks from the least costly up, an instance that takes a token
//! paying its fixed cost (a weight read) as well as its tokens' cost; three more passes re-pour
//! every expert against the others. If even shares of the same replicas would leave a lower
//! busiest rank, those are used. Under [`InstanceCost::TOKENS`] the costs are token counts.

use crate::SplitMode;
use crate::assembler::{Assembler, Replica};
use crate::{Balancer, ExpertLayout, InstanceCost, LoadMatrix, Plan, PlanError, RankDomains};

/// Re-pouring passes after the first.
const REFINEMENTS: usize = 3;

/// A fixed set of replicas and the re-split of each batch's tokens among them.
///
/// ```
/// use ultraep_plan::{Balancer, ExpertLayout, FixedReplicas, InstanceCost, LoadMatrix, RankDomains};
/// // Two ranks, one expert each; rank 1 holds a copy of expert 0, which gets every token.
/// let layout = ExpertLayout::contiguous(2, 1).unwrap();
/// let mut resident = FixedReplicas::new(layout, RankDomains::single(2).unwrap(), 1, InstanceCost::TOKENS).unwrap();
/// resident.set_placement(&[(0, 1)]).unwrap();
/// let loads = [30, 0, 31, 0];
/// let plan = resident.plan(LoadMatrix::new(&loads, 2, 2).unwrap()).unwrap();
/// assert_eq!(plan.rank_loads(), &[31, 30]);
/// ```
#[derive(Debug, Clone)]
pub struct FixedReplicas {
    assembler: Assembler,
    cost: InstanceCost,
    /// The copies, as (expert, rank), in placement order.
    placement: Vec<(u32, u32)>,
    /// Per batch: every rank's cost, every instance's quota (by placement order, masters after
    /// the replicas), and the instances of the expert being poured, sorted.
    rank_cost: Vec<u64>,
    quotas: Vec<u64>,
    /// The same with even shares, the fallback.
    even_cost: Vec<u64>,
    even_quotas: Vec<u64>,
    sorted: Vec<(u64, u32, usize)>,
    order: Vec<u32>,
    /// Per expert: its instances' indices into `quotas` (master last).
    instance_offsets: Vec<u32>,
    instances: Vec<(u32, usize)>,
    replicas: Vec<Replica>,
}

impl FixedReplicas {
    /// No replicas yet, for experts placed by `layout` on ranks grouped by `domains`, with
    /// `slots_per_rank` redundant slots on every rank, re-splitting under `cost`.
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
        cost: InstanceCost,
    ) -> Result<Self, PlanError> {
        if cost.per_token == 0 {
            return Err(PlanError::InvalidSetting("a token must cost something"));
        }
        let assembler = Assembler::new(layout, domains, slots_per_rank)?;
        let ranks = assembler.layout.num_ranks() as usize;
        let experts = assembler.layout.num_experts() as usize;
        let mut fixed = Self {
            assembler,
            cost,
            placement: Vec::new(),
            rank_cost: vec![0; ranks],
            quotas: Vec::new(),
            even_cost: vec![0; ranks],
            even_quotas: Vec::new(),
            sorted: Vec::new(),
            order: Vec::with_capacity(experts),
            instance_offsets: (0..=experts as u32).collect(),
            instances: Vec::new(),
            replicas: Vec::new(),
        };
        fixed.index();
        Ok(fixed)
    }

    /// Puts the replicas `placement` (as (expert, rank)) in place for every later batch. Refused,
    /// leaving the replicas as they were: an expert or rank outside the layout, a copy on its
    /// expert's home or outside its domain, two copies of an expert on one rank, or more copies
    /// on a rank than it has slots.
    pub fn set_placement(&mut self, placement: &[(u32, u32)]) -> Result<(), PlanError> {
        let mut checked: Vec<Replica> = placement
            .iter()
            .map(|&(expert, rank)| Replica {
                expert,
                rank,
                quota: 0,
            })
            .collect();
        self.assembler.check_replicas(&mut checked, false)?;
        self.placement.clear();
        self.placement.extend_from_slice(placement);
        self.index();
        Ok(())
    }

    /// The replicas in place, as (expert, rank), in the order given.
    pub fn placement(&self) -> &[(u32, u32)] {
        &self.placement
    }

    /// The layout, domains and per-batch loads the replicas serve (LPLB measures its estimate
    /// with them).
    pub(crate) fn assembler_mut(&mut self) -> &mut Assembler {
        &mut self.assembler
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
}

/// Pours `load` tokens into `instances` (as (rank, index into `quotas`)), least costly first, in
/// whole tokens: every instance stands at its rank's cost counted in tokens (rounded up), and the
/// ranks reached end as level as whole tokens allow (ties: lower rank first). An instance that
/// takes a token adds its fixed cost to its rank too; every candidate would pay the same, so it
/// does not change which are reached. One left without a token adds nothing.
fn pour(
    instances: &[(u32, usize)],
    load: u64,
    cost: InstanceCost,
    rank_cost: &mut [u64],
    quotas: &mut [u64],
    sorted: &mut Vec<(u64, u32, usize)>,
) {
    let per_token = u64::from(cost.per_token);
    sorted.clear();
    for &(rank, index) in instances {
        let level = rank_cost[rank as usize].div_ceil(per_token);
        sorted.push((level, rank, index));
    }
    sorted.sort_unstable();
    // How many of the lowest instances the load reaches: raising the `count` lowest to the next
    // one's level takes count * level - (their sum) tokens.
    let mut filled = 0usize;
    let mut prefix = 0u64;
    for (count, &(level, _, _)) in sorted.iter().enumerate() {
        if (count as u64).saturating_mul(level) - prefix > load {
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
        rank_cost[rank as usize] += cost.of(quota);
    }
    for &(_, _, index) in &sorted[filled..] {
        quotas[index] = 0;
    }
}

impl Balancer for FixedReplicas {
    fn name(&self) -> &'static str {
        "fixed-replicas"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.assembler.measure(loads)?;
        let assembler = &self.assembler;
        let cost = self.cost;
        let experts = assembler.layout.num_experts() as usize;
        let homes = assembler.layout.homes();
        let expert_load = &assembler.expert_load;
        let placement = &self.placement;
        let masters_from = placement.len();
        // Unreplicated experts stay at their masters; replicated ones are poured, largest first.
        self.rank_cost.fill(0);
        self.order.clear();
        for expert in 0..experts {
            let count = self.instance_offsets[expert + 1] - self.instance_offsets[expert];
            if count == 1 {
                self.quotas[masters_from + expert] = expert_load[expert];
                self.rank_cost[homes[expert] as usize] += cost.of(expert_load[expert]);
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
                        self.rank_cost[rank as usize] -= cost.of(self.quotas[index]);
                    }
                }
                pour(
                    instances,
                    expert_load[e],
                    cost,
                    &mut self.rank_cost,
                    &mut self.quotas,
                    &mut self.sorted,
                );
            }
        }
        // Where even shares of the same replicas leave a lower busiest rank, they are taken.
        let poured = self.rank_cost.iter().copied().max().unwrap_or(0);
        self.even_cost.fill(0);
        for expert in 0..experts {
            if self.instance_offsets[expert + 1] - self.instance_offsets[expert] == 1 {
                self.even_cost[homes[expert] as usize] += cost.of(expert_load[expert]);
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
                self.even_cost[rank as usize] += cost.of(quota);
            }
        }
        if self.even_cost.iter().copied().max().unwrap_or(0) < poured {
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
