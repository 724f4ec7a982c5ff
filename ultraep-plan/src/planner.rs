//! The ultraep planner: exact load in, replicas and quotas out, reusing its buffers every call.

use crate::assembler::{Assembler, Replica};
use crate::threshold::{DomainProblem, ExportSearch};
use crate::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, Plan, PlanConfig, PlanError, RankDomains,
    Residency,
};

/// The quota planner. Build it once per layer shape; call [`Balancer::plan_into`] every microbatch.
///
/// ```
/// use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, PlanConfig, Planner, RankDomains};
/// // 4 ranks in one domain, one expert each, 1 redundant slot per rank.
/// let layout = ExpertLayout::contiguous(4, 1)?;
/// let config = PlanConfig { min_replica_tokens: 1, ..PlanConfig::default() };
/// let mut planner = Planner::new(layout, RankDomains::single(4)?, 1, config)?;
/// // Every rank routes its tokens mostly to expert 0 (home: rank 0).
/// let loads = [
///     100, 10, 10, 0, //
///     100, 10, 0, 10, //
///     100, 0, 10, 10, //
///     100, 10, 10, 10,
/// ];
/// let plan = planner.plan(LoadMatrix::new(&loads, 4, 4)?)?;
/// assert_eq!(plan.metrics().initial_max_rank_load, 400);
/// assert_eq!(plan.rank_loads(), &[124, 124, 124, 118]);
/// assert_eq!(plan.metrics().replicas, 3);
/// # Ok::<(), ultraep_plan::PlanError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Planner {
    assembler: Assembler,
    config: PlanConfig,
    /// Experts of every rank, largest load first (same offsets as the assembler's table).
    experts_by_load: Vec<u32>,
    search: ExportSearch,
    replicas: Vec<Replica>,
    thresholds: Vec<u64>,
    /// Per call, with a fixed instance cost: every rank's masters-only cost.
    rank_cost: Vec<u64>,
}

impl Planner {
    /// A planner for experts placed by `layout` on ranks grouped by `domains`, with
    /// `slots_per_rank` redundant slots on every rank.
    pub fn new(
        layout: ExpertLayout,
        domains: RankDomains,
        slots_per_rank: u32,
        config: PlanConfig,
    ) -> Result<Self, PlanError> {
        let assembler = Assembler::new(layout, domains, slots_per_rank)?;
        let ranks = assembler.layout.num_ranks() as usize;
        let max_replicas = assembler.max_replicas();
        Ok(Self {
            experts_by_load: assembler.rank_experts.clone(),
            search: ExportSearch::new(ranks, max_replicas),
            replicas: Vec::with_capacity(max_replicas),
            thresholds: Vec::with_capacity(assembler.domains.num_domains() as usize),
            rank_cost: vec![0; ranks],
            assembler,
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &PlanConfig {
        &self.config
    }

    /// The expert layout planned for.
    pub fn layout(&self) -> &ExpertLayout {
        &self.assembler.layout
    }

    /// The domains planned for.
    pub fn domains(&self) -> &RankDomains {
        &self.assembler.domains
    }

    /// Redundant slots per rank.
    pub fn slots_per_rank(&self) -> u32 {
        self.assembler.slots_per_rank
    }
}

impl Balancer for Planner {
    fn name(&self) -> &'static str {
        "ultraep"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.plan_preferring(loads, None, plan)
    }
}

impl Planner {
    /// Like [`Balancer::plan_into`], preferring replica placements where `residency` says the
    /// expert's weights already are, when that costs no balance: the busiest rank of every
    /// domain is never busier than without the preference. Deterministic like every plan, given
    /// the same residency on every rank.
    pub fn plan_preferring(
        &mut self,
        loads: LoadMatrix<'_>,
        residency: Option<&Residency>,
        plan: &mut Plan,
    ) -> Result<(), PlanError> {
        if let Some(residency) = residency
            && !residency.fits(
                self.assembler.layout.num_ranks(),
                self.assembler.slots_per_rank,
            )
        {
            return Err(PlanError::ResidencyShape);
        }
        self.assembler.measure(loads)?;
        let assembler = &self.assembler;
        // Order every rank's experts by load, largest first (ties: lower expert), in place.
        let expert_load = &assembler.expert_load;
        for rank in 0..assembler.layout.num_ranks() as usize {
            let range = assembler.rank_expert_offsets[rank] as usize
                ..assembler.rank_expert_offsets[rank + 1] as usize;
            self.experts_by_load[range]
                .sort_unstable_by_key(|&e| (std::cmp::Reverse(expert_load[e as usize]), e));
        }
        // The search runs on rank costs: the token loads themselves under the token objective,
        // otherwise every loaded master's cost summed per rank.
        let cost = self.config.cost.normalized();
        let rank_cost = if cost == InstanceCost::TOKENS {
            &assembler.master_rank_load
        } else {
            for rank in 0..assembler.layout.num_ranks() as usize {
                let range = assembler.rank_expert_offsets[rank] as usize
                    ..assembler.rank_expert_offsets[rank + 1] as usize;
                self.rank_cost[rank] = assembler.rank_experts[range]
                    .iter()
                    .map(|&e| cost.of(expert_load[e as usize]))
                    .fold(0u64, u64::saturating_add);
            }
            &self.rank_cost
        };
        self.replicas.clear();
        self.thresholds.clear();
        for domain in 0..assembler.domains.num_domains() {
            let problem = DomainProblem {
                ranks: assembler.domains.ranks_of(domain),
                rank_load: rank_cost,
                expert_load,
                experts: &self.experts_by_load,
                offsets: &assembler.rank_expert_offsets,
                slots_per_rank: assembler.slots_per_rank,
                config: &self.config,
                cost,
                residency,
            };
            let threshold = self.search.balance(&problem);
            self.thresholds.push(threshold);
            self.replicas.extend_from_slice(&self.search.best);
        }
        self.assembler.assemble(
            loads,
            &mut self.replicas,
            self.config.split,
            &self.thresholds,
            plan,
        );
        Ok(())
    }
}
