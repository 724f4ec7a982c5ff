//! What the planner produces: instances with quotas, the token split, rank loads and metrics.

use crate::LoadMatrix;

/// One copy of an expert on one rank: the master (at its home) or a replica in a redundant slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instance {
    /// The expert.
    pub expert: u32,
    /// The rank holding this copy.
    pub rank: u32,
    /// `None` for the master; for a replica, the redundant slot of `rank` it occupies.
    pub replica_slot: Option<u16>,
    /// Exactly how many tokens this instance processes.
    pub quota: u32,
}

impl Instance {
    /// Whether this is a replica (not the master).
    pub fn is_replica(&self) -> bool {
        self.replica_slot.is_some()
    }
}

/// Tokens that one source rank sends to one instance of one expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SplitEntry {
    /// The source rank (where the tokens were routed from).
    pub source: u32,
    /// The expert.
    pub expert: u32,
    /// The instance, as an index into [`Plan::instances`].
    pub instance: u32,
    /// How many of the source's tokens for the expert go to that instance.
    pub tokens: u32,
}

/// Whether a plan can be executed as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// Every constraint holds: quotas sum to the exact loads and the split delivers them.
    #[default]
    Realizable,
    /// The force-balanced ideal: every rank gets the mean load, which no placement of the real
    /// load achieves. It has rank loads and quotas for throughput comparisons, and no split.
    Ideal,
}

/// Figures that describe a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PlanMetrics {
    /// Ranks of the problem.
    pub num_ranks: u32,
    /// Tokens (token-expert pairs) in the microbatch.
    pub total_tokens: u64,
    /// The busiest rank's load with masters only, before balancing.
    pub initial_max_rank_load: u64,
    /// The busiest rank's load under this plan.
    pub max_rank_load: u64,
    /// No plan can do better than this: the largest over domains of ceil(domain load / ranks),
    /// since load never leaves its domain.
    pub lower_bound: u64,
    /// Replicas in the plan.
    pub replicas: u32,
    /// Tokens processed on a rank other than the one they were routed from. For a plan without a
    /// split, the fewest any split must move.
    pub tokens_leaving_source: u64,
    /// Tokens processed in a domain other than their source's (the same for every realizable plan
    /// of a problem: replicas stay in their master's domain).
    pub tokens_crossing_domains: u64,
}

impl PlanMetrics {
    /// Mean rank load, in tokens.
    pub fn mean_rank_load(&self) -> f64 {
        self.total_tokens as f64 / f64::from(self.num_ranks.max(1))
    }

    /// `max / mean` rank load under this plan (1.0 is perfect; 1.0 for an empty microbatch).
    pub fn imbalance(&self) -> f64 {
        self.ratio(self.max_rank_load)
    }

    /// `max / mean` rank load before balancing.
    pub fn initial_imbalance(&self) -> f64 {
        self.ratio(self.initial_max_rank_load)
    }

    /// The best `max / mean` any plan could reach on this input.
    pub fn lower_bound_imbalance(&self) -> f64 {
        self.ratio(self.lower_bound)
    }

    /// How many tokens the busiest rank carries above the lower bound.
    pub fn gap_to_lower_bound(&self) -> u64 {
        self.max_rank_load.saturating_sub(self.lower_bound)
    }

    fn ratio(&self, load: u64) -> f64 {
        if self.total_tokens == 0 {
            1.0
        } else {
            load as f64 / self.mean_rank_load()
        }
    }
}

/// The plan of one MoE layer for one microbatch.
///
/// Instances are grouped by expert, master first, then replicas by ascending rank. The split lists,
/// for every expert with replicas, how every source rank's tokens are shared among the instances;
/// an expert without replicas sends every token to its master, and [`Plan::split`] spells those
/// entries out too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub(crate) kind: PlanKind,
    /// Whether `split` was computed ([`crate::SplitMode::None`] skips it).
    pub(crate) has_split: bool,
    pub(crate) instances: Vec<Instance>,
    /// Instances of expert e are `instances[instance_offsets[e]..instance_offsets[e + 1]]`.
    pub(crate) instance_offsets: Vec<u32>,
    /// Split entries of replicated experts, ordered by (expert, source, instance).
    pub(crate) split: Vec<SplitEntry>,
    /// Entries of expert e are `split[split_offsets[e]..split_offsets[e + 1]]`.
    pub(crate) split_offsets: Vec<u32>,
    pub(crate) rank_loads: Vec<u64>,
    /// The token threshold every domain was balanced to (per domain).
    pub(crate) domain_thresholds: Vec<u64>,
    pub(crate) metrics: PlanMetrics,
}

impl Plan {
    /// Whether the plan can be executed as is.
    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    /// Every instance, grouped by expert, master first.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// The instances of `expert`, master first.
    ///
    /// # Panics
    /// If `expert` is out of range, like slice indexing.
    pub fn instances_of(&self, expert: u32) -> &[Instance] {
        let expert = expert as usize;
        &self.instances
            [self.instance_offsets[expert] as usize..self.instance_offsets[expert + 1] as usize]
    }

    /// Index in [`Plan::instances`] of the master of `expert`.
    ///
    /// # Panics
    /// If `expert` is out of range, like slice indexing.
    pub fn master_index(&self, expert: u32) -> u32 {
        self.instance_offsets[expert as usize]
    }

    /// Experts in the plan.
    pub fn num_experts(&self) -> u32 {
        self.instance_offsets.len().saturating_sub(1) as u32
    }

    /// Whether the plan carries the split of every source's tokens (see [`crate::SplitMode`]).
    pub fn has_split(&self) -> bool {
        self.has_split
    }

    /// The split entries of `expert` if it has replicas; empty if every token goes to its master
    /// (or if the plan has no split).
    ///
    /// # Panics
    /// If `expert` is out of range, like slice indexing.
    pub fn replicated_split(&self, expert: u32) -> &[SplitEntry] {
        let expert = expert as usize;
        &self.split[self.split_offsets[expert] as usize..self.split_offsets[expert + 1] as usize]
    }

    /// Every nonzero split entry, ordered by (expert, source, instance), including the implied ones
    /// of experts without replicas; `loads` must be the load this plan was made for. Empty for an
    /// [`PlanKind::Ideal`] plan or one without a split.
    pub fn split<'a>(&'a self, loads: LoadMatrix<'a>) -> impl Iterator<Item = SplitEntry> + 'a {
        let experts = if self.has_split {
            self.num_experts()
        } else {
            0
        };
        (0..experts).flat_map(move |expert| {
            let explicit = self.replicated_split(expert);
            let master = self.master_index(expert);
            let implied_sources = if self.instances_of(expert).len() > 1 {
                0..0
            } else {
                0..loads.ranks() as u32
            };
            explicit
                .iter()
                .copied()
                .chain(implied_sources.filter_map(move |source| {
                    let tokens = loads.get(source as usize, expert as usize);
                    (tokens > 0).then_some(SplitEntry {
                        source,
                        expert,
                        instance: master,
                        tokens,
                    })
                }))
        })
    }

    /// The load (tokens) of every rank under this plan.
    pub fn rank_loads(&self) -> &[u64] {
        &self.rank_loads
    }

    /// The threshold each domain was balanced to, in the order of the domain numbering: tokens,
    /// or under a fixed instance cost the rank cost in the planner's normalized units
    /// ([`crate::InstanceCost::normalized`]).
    pub fn domain_thresholds(&self) -> &[u64] {
        &self.domain_thresholds
    }

    /// Figures describing the plan.
    pub fn metrics(&self) -> &PlanMetrics {
        &self.metrics
    }
}
