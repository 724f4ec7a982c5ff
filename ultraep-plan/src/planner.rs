//! The ultraep planner: exact load in, replicas and quotas out, reusing its buffers every call.

use crate::assembler::Assembler;
use crate::threshold::{DomainProblem, ExportSearch};
use crate::{
    Balancer, ExpertLayout, InstanceCost, LoadMatrix, Plan, PlanConfig, PlanError, RankDomains,
    Replica, Residency,
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
        self.search_and_assemble(Some(loads), residency, plan);
        Ok(())
    }

    /// Plans from every expert's total load alone (`totals[e]`: the tokens every rank routed to
    /// expert `e`, what an all-reduce of the ranks' rows gives, 4 bytes per expert) instead of the
    /// whole matrix: the same replicas, quotas and rank loads as [`Balancer::plan_into`] on any
    /// matrix with these column sums, with no split (each rank computes its own part with
    /// [`crate::RankSplit::compute_gathered`]) and no count of tokens leaving their source or
    /// crossing domains (totals do not say where tokens are). Its cost grows with the experts,
    /// not with ranks x experts.
    ///
    /// ```
    /// use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanConfig, Planner, RankDomains, SplitMode};
    /// let config = PlanConfig { min_replica_tokens: 1, split: SplitMode::None, ..PlanConfig::default() };
    /// let mut planner = Planner::new(ExpertLayout::contiguous(4, 1)?, RankDomains::single(4)?, 1, config)?;
    /// let loads = [100, 10, 10, 0, 100, 10, 0, 10, 100, 0, 10, 10, 100, 10, 10, 10];
    /// let mut from_totals = Plan::default();
    /// planner.plan_totals_into(&[400, 30, 30, 30], &mut from_totals)?;
    /// let full = planner.plan(LoadMatrix::new(&loads, 4, 4)?)?;
    /// assert_eq!(from_totals.instances(), full.instances());
    /// # Ok::<(), ultraep_plan::PlanError>(())
    /// ```
    pub fn plan_totals_into(&mut self, totals: &[u32], plan: &mut Plan) -> Result<(), PlanError> {
        self.assembler.measure_totals(totals)?;
        self.search_and_assemble(None, None, plan);
        Ok(())
    }

    /// The threshold search of every domain on the measured loads, then the plan.
    fn search_and_assemble(
        &mut self,
        loads: Option<LoadMatrix<'_>>,
        residency: Option<&Residency>,
        plan: &mut Plan,
    ) {
        self.replicas.clear();
        self.thresholds.clear();
        for domain in 0..self.assembler.domains.num_domains() {
            let threshold = self.search_domain(domain, residency);
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
    }

    /// Balances `domain` on the measured loads: its threshold, its replicas left in
    /// `self.search.best`.
    fn search_domain(&mut self, domain: u32, residency: Option<&Residency>) -> u64 {
        let assembler = &self.assembler;
        let expert_load = &assembler.expert_load;
        let cost = self.config.cost.normalized();
        // Order every rank's experts by load, largest first (ties: lower expert), in place; the
        // search runs on rank costs: the token loads themselves under the token objective,
        // otherwise every loaded master's cost summed per rank.
        for &rank in assembler.domains.ranks_of(domain) {
            let rank = rank as usize;
            let range = assembler.rank_expert_offsets[rank] as usize
                ..assembler.rank_expert_offsets[rank + 1] as usize;
            self.experts_by_load[range.clone()]
                .sort_unstable_by_key(|&e| (std::cmp::Reverse(expert_load[e as usize]), e));
            if cost != InstanceCost::TOKENS {
                self.rank_cost[rank] = assembler.rank_experts[range]
                    .iter()
                    .map(|&e| cost.of(expert_load[e as usize]))
                    .fold(0u64, u64::saturating_add);
            }
        }
        let rank_cost = if cost == InstanceCost::TOKENS {
            &assembler.master_rank_load
        } else {
            &self.rank_cost
        };
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
        self.search.balance(&problem)
    }

    /// Balances `domain` alone from every expert's total load (as [`Planner::plan_totals_into`]
    /// does for every domain): its replicas go to `replicas` (replacing what was there) and its
    /// threshold is returned. What one rank computes when each domain plans for itself and the
    /// domains exchange their replicas (12 bytes each): its cost grows with the domain, not the
    /// group. [`Planner::assemble_into`] then builds the whole plan from every domain's replicas.
    pub fn plan_domain_into(
        &mut self,
        domain: u32,
        totals: &[u32],
        replicas: &mut Vec<Replica>,
    ) -> Result<u64, PlanError> {
        if domain >= self.assembler.domains.num_domains() {
            return Err(PlanError::DomainOutOfRange {
                domain,
                num_domains: self.assembler.domains.num_domains(),
            });
        }
        self.assembler.measure_totals(totals)?;
        let threshold = self.search_domain(domain, None);
        replicas.clear();
        replicas.extend_from_slice(&self.search.best);
        Ok(threshold)
    }

    /// The plan (without a split, as [`Planner::plan_totals_into`] makes it) from every expert's
    /// total and every domain's replicas and threshold, in domain order (what
    /// [`Planner::plan_domain_into`] gave on each domain, gathered): the same plan, bit for bit.
    /// Replicas from peers are checked first: each must be of an expert homed in its rank's
    /// domain, on a rank with a free slot and no other copy of the expert, and an expert's
    /// replicas may not take more than its load (with one token left to its master where the
    /// configuration keeps one).
    pub fn assemble_into(
        &mut self,
        totals: &[u32],
        replicas: &[Replica],
        thresholds: &[u64],
        plan: &mut Plan,
    ) -> Result<(), PlanError> {
        self.assembler.measure_totals(totals)?;
        if thresholds.len() != self.assembler.domains.num_domains() as usize {
            return Err(PlanError::DomainOutOfRange {
                domain: thresholds.len() as u32,
                num_domains: self.assembler.domains.num_domains(),
            });
        }
        self.replicas.clear();
        self.replicas.extend_from_slice(replicas);
        self.assembler
            .check_replicas(&mut self.replicas, self.config.master_keeps_token)?;
        self.thresholds.clear();
        self.thresholds.extend_from_slice(thresholds);
        self.assembler.assemble(
            None,
            &mut self.replicas,
            self.config.split,
            &self.thresholds,
            plan,
        );
        Ok(())
    }
}
