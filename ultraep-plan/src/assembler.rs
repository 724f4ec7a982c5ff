//! Turning a list of replicas into a complete plan: slots, quotas, split, rank loads, metrics.
//!
//! Every balancer decides only *which* replicas to make and how many tokens each takes; this module
//! does the rest the same way for all of them, so their plans are comparable.

use crate::split::{SplitScratch, split_expert, split_expert_contiguous};
use crate::{
    ExpertLayout, Instance, LoadMatrix, Plan, PlanError, PlanKind, PlanMetrics, RankDomains,
    SplitMode,
};

/// The most redundant slots a rank may have (slot numbers are 16-bit).
pub const MAX_SLOTS_PER_RANK: u32 = u16::MAX as u32;

/// The most replicas a planner sizes its buffers for (ranks x min(slots, experts)): 2^24, far
/// beyond any machine (576 ranks with 8 slots need 4,608) and about a gigabyte of buffers.
pub const MAX_REPLICAS: u64 = 1 << 24;

/// The most (rank, expert) cells a balancer's tables may hold: 2^31, a load matrix of 8 GB.
pub const MAX_CELLS: u64 = 1 << 31;

/// A replica a balancer wants: a copy of `expert` on `rank` taking `quota` tokens. What a
/// domain's plan is made of ([`crate::Planner::plan_domain_into`]), and what domains exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    /// The expert copied.
    pub expert: u32,
    /// The rank that holds the copy, in one of its redundant slots.
    pub rank: u32,
    /// The tokens the copy takes.
    pub quota: u32,
}

/// The static description of the problem and the buffers every plan is built with.
#[derive(Debug, Clone)]
pub(crate) struct Assembler {
    pub layout: ExpertLayout,
    pub domains: RankDomains,
    pub slots_per_rank: u32,
    /// Experts homed on rank r: `rank_experts[rank_expert_offsets[r]..rank_expert_offsets[r + 1]]`.
    pub rank_experts: Vec<u32>,
    pub rank_expert_offsets: Vec<u32>,
    expert_domain: Vec<u32>,
    /// Per call: total load of every expert.
    pub expert_load: Vec<u64>,
    /// Per call: load of every expert from sources in its own domain.
    same_domain_load: Vec<u64>,
    /// Per call: the load of every rank with masters only.
    pub master_rank_load: Vec<u64>,
    next_slot: Vec<u16>,
    split_scratch: SplitScratch,
}

impl Assembler {
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
    ) -> Result<Self, PlanError> {
        if domains.num_ranks() != layout.num_ranks() {
            return Err(PlanError::DomainTableLength {
                got: domains.num_ranks() as usize,
                num_ranks: layout.num_ranks(),
            });
        }
        if slots_per_rank > MAX_SLOTS_PER_RANK {
            return Err(PlanError::TooManySlots {
                slots: slots_per_rank,
                max: MAX_SLOTS_PER_RANK,
            });
        }
        let ranks = layout.num_ranks() as usize;
        let experts = layout.num_experts() as usize;
        // Refused before any buffer is sized: a few numbers must not ask for terabytes.
        let cells = ranks as u64 * experts as u64;
        if cells > MAX_CELLS {
            return Err(PlanError::TooLarge {
                what: "a rank x expert table",
                size: cells,
                max: MAX_CELLS,
            });
        }
        let replicas = ranks as u64 * u64::from(slots_per_rank).min(experts as u64);
        if replicas > MAX_REPLICAS {
            return Err(PlanError::TooLarge {
                what: "the replica buffers",
                size: replicas,
                max: MAX_REPLICAS,
            });
        }
        let mut rank_expert_offsets = vec![0u32; ranks + 1];
        for &home in layout.homes() {
            rank_expert_offsets[home as usize + 1] += 1;
        }
        for rank in 0..ranks {
            rank_expert_offsets[rank + 1] += rank_expert_offsets[rank];
        }
        let mut fill = rank_expert_offsets.clone();
        let mut rank_experts = vec![0u32; experts];
        for (expert, &home) in layout.homes().iter().enumerate() {
            rank_experts[fill[home as usize] as usize] = expert as u32;
            fill[home as usize] += 1;
        }
        let expert_domain = layout
            .homes()
            .iter()
            .map(|&home| domains.domain_of(home))
            .collect();
        Ok(Self {
            layout,
            domains,
            slots_per_rank,
            rank_experts,
            rank_expert_offsets,
            expert_domain,
            expert_load: vec![0; experts],
            same_domain_load: vec![0; experts],
            master_rank_load: vec![0; ranks],
            next_slot: vec![0; ranks],
            split_scratch: SplitScratch::default(),
        })
    }

    /// The most replicas a plan can hold: every rank's slots, where a rank can hold at most one
    /// copy of each expert. Buffers are sized by this, so a slot count far beyond the experts (a
    /// hostile or mistaken input) costs no more memory than the load matrix itself.
    pub fn max_replicas(&self) -> usize {
        self.layout.num_ranks() as usize
            * (self.slots_per_rank as usize).min(self.layout.num_experts() as usize)
    }

    /// The experts homed on `rank`, ascending.
    pub fn experts_of(&self, rank: u32) -> &[u32] {
        let rank = rank as usize;
        &self.rank_experts
            [self.rank_expert_offsets[rank] as usize..self.rank_expert_offsets[rank + 1] as usize]
    }

    /// Checks the matrix against the layout and computes the per-expert and per-rank loads.
    pub fn measure(&mut self, loads: LoadMatrix<'_>) -> Result<(), PlanError> {
        let ranks = self.layout.num_ranks();
        let experts = self.layout.num_experts();
        loads.expect_shape(ranks as usize, experts as usize)?;
        // Column sums first, in a loop the compiler vectorises; the per-domain pass is needed only
        // when there is more than one domain (with one, every token stays in its domain).
        self.expert_load.fill(0);
        // Four rows per pass over the totals: a quarter of the loads and stores of the totals.
        let mut rows = loads.as_slice().chunks_exact(4 * experts as usize);
        for block in &mut rows {
            let (first, rest) = block.split_at(experts as usize);
            let (second, rest) = rest.split_at(experts as usize);
            let (third, fourth) = rest.split_at(experts as usize);
            for ((((total, &a), &b), &c), &d) in self
                .expert_load
                .iter_mut()
                .zip(first)
                .zip(second)
                .zip(third)
                .zip(fourth)
            {
                *total += u64::from(a) + u64::from(b) + u64::from(c) + u64::from(d);
            }
        }
        for row in rows.remainder().chunks_exact(experts as usize) {
            for (total, &tokens) in self.expert_load.iter_mut().zip(row) {
                *total += u64::from(tokens);
            }
        }
        if self.domains.num_domains() == 1 {
            self.same_domain_load.copy_from_slice(&self.expert_load);
        } else {
            self.same_domain_load.fill(0);
            for source in 0..ranks {
                let source_domain = self.domains.domain_of(source);
                let row = loads.row(source as usize);
                for ((same, &tokens), &domain) in self
                    .same_domain_load
                    .iter_mut()
                    .zip(row)
                    .zip(&self.expert_domain)
                {
                    if domain == source_domain {
                        *same += u64::from(tokens);
                    }
                }
            }
        }
        self.finish_measure()
    }

    /// Takes every expert's total load (what an all-reduce of the ranks' rows gives) instead of
    /// the whole matrix: enough to plan, not to split ([`Assembler::assemble`] then takes no
    /// matrix). Which tokens cross domains is not known from totals.
    pub fn measure_totals(&mut self, totals: &[u32]) -> Result<(), PlanError> {
        let experts = self.layout.num_experts() as usize;
        if totals.len() != experts {
            return Err(PlanError::LoadLength {
                rows: 1,
                columns: experts,
                len: totals.len(),
            });
        }
        for (load, &total) in self.expert_load.iter_mut().zip(totals) {
            *load = u64::from(total);
        }
        self.same_domain_load.copy_from_slice(&self.expert_load);
        self.finish_measure()
    }

    /// The checks and per-rank loads both measures end with.
    fn finish_measure(&mut self) -> Result<(), PlanError> {
        if let Some((expert, &tokens)) = self
            .expert_load
            .iter()
            .enumerate()
            .find(|(_, tokens)| **tokens > u64::from(u32::MAX))
        {
            return Err(PlanError::ExpertLoadOverflow {
                expert: expert as u32,
                tokens,
            });
        }
        self.master_rank_load.fill(0);
        for (&home, &load) in self.layout.homes().iter().zip(&self.expert_load) {
            self.master_rank_load[home as usize] += load;
        }
        Ok(())
    }

    /// Refuses replicas [`Assembler::assemble`] could not build a plan from (they may come from
    /// peers): unknown experts or ranks, a copy outside its expert's domain or on its home, two
    /// copies of an expert on one rank, more copies on a rank than it has slots, or copies taking
    /// more than their expert's load (less the token a master keeps). Sorts them. Call a measure
    /// first.
    pub fn check_replicas(
        &mut self,
        replicas: &mut [Replica],
        master_keeps_token: bool,
    ) -> Result<(), PlanError> {
        replicas.sort_unstable();
        let experts = self.layout.num_experts();
        let ranks = self.layout.num_ranks();
        // The slots every rank has used so far: the slot counter `assemble` resets before use.
        let per_rank = &mut self.next_slot;
        per_rank.fill(0);
        let mut taken = 0u64;
        for (index, replica) in replicas.iter().enumerate() {
            let refuse = |reason: &'static str| {
                Err(PlanError::InvalidReplica {
                    expert: replica.expert,
                    rank: replica.rank,
                    reason,
                })
            };
            if replica.expert >= experts || replica.rank >= ranks {
                return refuse("an expert or rank outside the layout");
            }
            let home = self.layout.home(replica.expert);
            if home == replica.rank {
                return refuse("a copy on the expert's home");
            }
            if self.domains.domain_of(home) != self.domains.domain_of(replica.rank) {
                return refuse("a copy outside its expert's domain");
            }
            if index > 0
                && replicas[index - 1].expert == replica.expert
                && replicas[index - 1].rank == replica.rank
            {
                return refuse("two copies of the expert on one rank");
            }
            let slots = &mut per_rank[replica.rank as usize];
            *slots = slots.saturating_add(1);
            if u32::from(*slots) > self.slots_per_rank {
                return refuse("more copies on the rank than it has slots");
            }
            taken = if index > 0 && replicas[index - 1].expert == replica.expert {
                taken + u64::from(replica.quota)
            } else {
                u64::from(replica.quota)
            };
            let load = self.expert_load[replica.expert as usize];
            if taken + u64::from(master_keeps_token && load > 0) > load {
                return refuse("copies taking more than the expert's load");
            }
        }
        Ok(())
    }

    /// Builds `plan` from `replicas` (any order; each replica's expert must be homed in the
    /// replica's domain, the quotas of an expert's replicas must not exceed its load, and no rank
    /// may get more replicas than it has slots). Call [`Assembler::measure`] first, or
    /// [`Assembler::measure_totals`] and pass no matrix: the plan then has no split and counts no
    /// tokens leaving their source or crossing domains (totals do not say where tokens are).
    pub fn assemble(
        &mut self,
        loads: Option<LoadMatrix<'_>>,
        replicas: &mut [Replica],
        split: SplitMode,
        domain_thresholds: &[u64],
        plan: &mut Plan,
    ) {
        replicas.sort_unstable();
        let experts = self.layout.num_experts();
        plan.kind = PlanKind::Realizable;
        let split = if loads.is_some() {
            split
        } else {
            SplitMode::None
        };
        plan.has_split = split != SplitMode::None;
        plan.instances.clear();
        plan.instances
            .reserve(experts as usize + self.max_replicas());
        plan.instance_offsets.clear();
        plan.instance_offsets.push(0);
        self.next_slot.fill(0);
        let mut next = 0;
        for expert in 0..experts {
            let start = next;
            while next < replicas.len() && replicas[next].expert == expert {
                next += 1;
            }
            let moved: u64 = replicas[start..next]
                .iter()
                .map(|replica| u64::from(replica.quota))
                .sum();
            let load = self.expert_load[expert as usize];
            debug_assert!(
                moved <= load,
                "replicas of expert {expert} take more than its load"
            );
            plan.instances.push(Instance {
                expert,
                rank: self.layout.home(expert),
                replica_slot: None,
                quota: (load - moved) as u32,
            });
            for replica in &replicas[start..next] {
                let slot = &mut self.next_slot[replica.rank as usize];
                plan.instances.push(Instance {
                    expert,
                    rank: replica.rank,
                    replica_slot: Some(*slot),
                    quota: replica.quota,
                });
                *slot += 1;
            }
            plan.instance_offsets.push(plan.instances.len() as u32);
        }

        plan.rank_loads.clear();
        plan.rank_loads.resize(self.layout.num_ranks() as usize, 0);
        for instance in &plan.instances {
            plan.rank_loads[instance.rank as usize] += u64::from(instance.quota);
        }

        plan.split.clear();
        plan.split_offsets.clear();
        plan.split_offsets.push(0);
        let mut leaving: u64 = 0;
        for expert in 0..experts {
            let Some(loads) = loads else {
                plan.split_offsets.push(0);
                continue;
            };
            let first = plan.instance_offsets[expert as usize];
            let instances = &plan.instances
                [first as usize..plan.instance_offsets[expert as usize + 1] as usize];
            let load = self.expert_load[expert as usize];
            if instances.len() == 1 {
                let home = instances[0].rank as usize;
                leaving += load - u64::from(loads.get(home, expert as usize));
            } else if split == SplitMode::None {
                // Without a split, count the fewest tokens any split must move: all but those
                // that can stay on an instance's own rank.
                let staying: u64 = instances
                    .iter()
                    .map(|instance| {
                        let local = loads.get(instance.rank as usize, expert as usize);
                        u64::from(local.min(instance.quota))
                    })
                    .sum();
                leaving += load - staying;
            } else if split == SplitMode::Contiguous {
                leaving += split_expert_contiguous(
                    expert,
                    first,
                    instances,
                    loads,
                    &mut self.split_scratch,
                    &mut plan.split,
                );
            } else {
                leaving += split_expert(
                    expert,
                    first,
                    instances,
                    loads,
                    split == SplitMode::LocalityAware,
                    &mut self.split_scratch,
                    &mut plan.split,
                );
            }
            plan.split_offsets.push(plan.split.len() as u32);
        }

        plan.domain_thresholds.clear();
        plan.domain_thresholds.extend_from_slice(domain_thresholds);
        plan.metrics = PlanMetrics {
            num_ranks: self.layout.num_ranks(),
            total_tokens: self.expert_load.iter().sum(),
            initial_max_rank_load: self.master_rank_load.iter().copied().max().unwrap_or(0),
            max_rank_load: plan.rank_loads.iter().copied().max().unwrap_or(0),
            lower_bound: self.lower_bound(),
            replicas: replicas.len() as u32,
            tokens_leaving_source: leaving,
            tokens_crossing_domains: self
                .expert_load
                .iter()
                .zip(&self.same_domain_load)
                .map(|(total, same)| total - same)
                .sum(),
        };
    }

    /// Sets every domain's threshold to its busiest rank's load under `plan`: what a balancer that
    /// does not search thresholds reaches.
    pub fn record_busiest_ranks(&self, plan: &mut Plan) {
        plan.domain_thresholds.clear();
        for domain in 0..self.domains.num_domains() {
            let busiest = self
                .domains
                .ranks_of(domain)
                .iter()
                .map(|&rank| plan.rank_loads[rank as usize])
                .max()
                .unwrap_or(0);
            plan.domain_thresholds.push(busiest);
        }
    }

    /// The largest over domains of ceil(domain load / domain ranks).
    pub fn lower_bound(&self) -> u64 {
        (0..self.domains.num_domains())
            .map(|domain| {
                let ranks = self.domains.ranks_of(domain);
                let load: u64 = ranks
                    .iter()
                    .map(|&rank| self.master_rank_load[rank as usize])
                    .sum();
                load.div_ceil(ranks.len() as u64)
            })
            .max()
            .unwrap_or(0)
    }
}
