//! The `Balancer` trait every balancer implements, and the two simplest: none and the ideal.

use crate::assembler::Assembler;
use crate::{
    ExpertLayout, Instance, LoadMatrix, Plan, PlanError, PlanKind, PlanMetrics, RankDomains,
    SplitMode,
};

/// Something that turns one microbatch's exact load into a [`Plan`].
pub trait Balancer {
    /// A short name for reports: "ultraep", "eplb", "none", "ideal".
    fn name(&self) -> &'static str;

    /// Plans `loads` into `plan`, reusing its buffers.
    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError>;

    /// Plans `loads` into a new plan.
    fn plan(&mut self, loads: LoadMatrix<'_>) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        self.plan_into(loads, &mut plan)?;
        Ok(plan)
    }
}

/// No balancing: every expert's tokens go to its master.
#[derive(Debug, Clone)]
pub struct NoBalance {
    assembler: Assembler,
}

impl NoBalance {
    /// No balancing for experts placed by `layout` on ranks grouped by `domains`.
    pub fn new(layout: ExpertLayout, domains: RankDomains) -> Result<Self, PlanError> {
        Ok(Self {
            assembler: Assembler::new(layout, domains, 0)?,
        })
    }
}

impl Balancer for NoBalance {
    fn name(&self) -> &'static str {
        "none"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.assembler.measure(loads)?;
        self.assembler
            .assemble(Some(loads), &mut [], SplitMode::LocalityAware, &[], plan);
        self.assembler.record_busiest_ranks(plan);
        Ok(())
    }
}

/// The force-balanced ideal: every rank gets the global mean load (give or take a token), as if the
/// router had spread tokens perfectly. No placement of the real load achieves it; it is the
/// reference that throughput is compared against. Its plans are [`PlanKind::Ideal`]: masters only,
/// each rank's share spread evenly over its experts, and no split.
#[derive(Debug, Clone)]
pub struct ForceBalanced {
    assembler: Assembler,
}

impl ForceBalanced {
    /// The ideal for experts placed by `layout` on ranks grouped by `domains`.
    pub fn new(layout: ExpertLayout, domains: RankDomains) -> Result<Self, PlanError> {
        Ok(Self {
            assembler: Assembler::new(layout, domains, 0)?,
        })
    }
}

impl Balancer for ForceBalanced {
    fn name(&self) -> &'static str {
        "ideal"
    }

    fn plan_into(&mut self, loads: LoadMatrix<'_>, plan: &mut Plan) -> Result<(), PlanError> {
        self.assembler.measure(loads)?;
        let assembler = &self.assembler;
        let ranks = u64::from(assembler.layout.num_ranks());
        let total: u64 = assembler.expert_load.iter().sum();
        let share = |index: u64, count: u64, amount: u64| {
            amount / count + u64::from(index < amount % count)
        };

        plan.kind = PlanKind::Ideal;
        plan.has_split = false;
        // Only ranks that own experts can take a share of the load.
        let holders = (0..ranks)
            .filter(|&rank| !assembler.experts_of(rank as u32).is_empty())
            .count() as u64;
        plan.rank_loads.clear();
        let mut holder = 0;
        for rank in 0..ranks {
            if assembler.experts_of(rank as u32).is_empty() {
                plan.rank_loads.push(0);
            } else {
                plan.rank_loads.push(share(holder, holders, total));
                holder += 1;
            }
        }
        plan.instances.clear();
        plan.instance_offsets.clear();
        plan.instance_offsets.push(0);
        for expert in 0..assembler.layout.num_experts() {
            let home = assembler.layout.home(expert);
            let siblings = assembler.experts_of(home);
            let position = siblings.iter().position(|&e| e == expert).unwrap_or(0) as u64;
            let quota = share(
                position,
                siblings.len() as u64,
                plan.rank_loads[home as usize],
            );
            plan.instances.push(Instance {
                expert,
                rank: home,
                replica_slot: None,
                quota: u32::try_from(quota).unwrap_or(u32::MAX),
            });
            plan.instance_offsets.push(plan.instances.len() as u32);
        }
        plan.split.clear();
        plan.split_offsets.clear();
        plan.split_offsets
            .resize(assembler.layout.num_experts() as usize + 1, 0);
        plan.domain_thresholds.clear();
        let max = plan.rank_loads.iter().copied().max().unwrap_or(0);
        plan.domain_thresholds
            .resize(assembler.domains.num_domains() as usize, max);
        plan.metrics = PlanMetrics {
            num_ranks: assembler.layout.num_ranks(),
            total_tokens: total,
            initial_max_rank_load: assembler
                .master_rank_load
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
            max_rank_load: max,
            lower_bound: total.div_ceil(holders.max(1)),
            replicas: 0,
            tokens_leaving_source: 0,
            tokens_crossing_domains: 0,
        };
        Ok(())
    }
}
