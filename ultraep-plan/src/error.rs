//! The one error type of this crate.

use thiserror::Error;

/// Everything the planner refuses. Every variant is bad input: the planner never fails on a valid
/// problem (where the lower bound cannot be reached it returns the best plan it found).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A residency hint made for another number of ranks or slots.
    #[error("the residency hint does not match the planner's ranks and slots")]
    ResidencyShape,
    /// The problem has no rank.
    #[error("there are no ranks")]
    NoRanks,
    /// The problem has no expert.
    #[error("there are no experts")]
    NoExperts,
    /// `experts_per_rank` is zero.
    #[error("experts_per_rank must be at least 1")]
    NoExpertsPerRank,
    /// An expert's home rank does not exist.
    #[error("expert {expert} has home rank {home}, but there are only {num_ranks} ranks")]
    HomeOutOfRange {
        /// The expert.
        expert: u32,
        /// Its home as given.
        home: u32,
        /// How many ranks there are.
        num_ranks: u32,
    },
    /// The domain table does not have one entry per rank.
    #[error("the domain table has {got} entries, but there are {num_ranks} ranks")]
    DomainTableLength {
        /// Entries given.
        got: usize,
        /// Ranks in the problem.
        num_ranks: u32,
    },
    /// Uniform domains of this size do not divide the ranks.
    #[error("domain size {domain_size} does not divide the {num_ranks} ranks")]
    DomainSizeMismatch {
        /// The domain size asked for.
        domain_size: u32,
        /// Ranks in the problem.
        num_ranks: u32,
    },
    /// The load matrix does not match the layout.
    #[error(
        "the load matrix is {rows} x {columns}, but the layout has {num_ranks} ranks and {num_experts} experts"
    )]
    LoadShape {
        /// Rows of the matrix (source ranks).
        rows: usize,
        /// Columns of the matrix (experts).
        columns: usize,
        /// Ranks of the layout.
        num_ranks: u32,
        /// Experts of the layout.
        num_experts: u32,
    },
    /// The load matrix's data does not have rows x columns entries.
    #[error("a {rows} x {columns} load matrix needs {} entries, got {len}", rows * columns)]
    LoadLength {
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        columns: usize,
        /// Entries given.
        len: usize,
    },
    /// An expert's total load over all source ranks does not fit in 32 bits.
    #[error("expert {expert} receives {tokens} tokens in total, more than 2^32 - 1")]
    ExpertLoadOverflow {
        /// The expert.
        expert: u32,
        /// Its total load.
        tokens: u64,
    },
    /// More slots per rank than a plan can address.
    #[error("{slots} slots per rank is more than the {max} a plan can address")]
    TooManySlots {
        /// Slots asked for.
        slots: u32,
        /// The most allowed.
        max: u32,
    },
    /// A problem whose buffers would not fit: refused before anything that size is allocated.
    #[error("{what} would need {size} entries, more than the {max} a planner may allocate")]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Entries it would need.
        size: u64,
        /// The most allowed.
        max: u64,
    },
    /// A rank past the plan's ranks.
    #[error("rank {rank} is not one of the plan's {num_ranks} ranks")]
    RankOutOfRange {
        /// The rank asked for.
        rank: u32,
        /// Ranks of the plan.
        num_ranks: u32,
    },
    /// A setting that cannot be used (an instance cost, a history's decay).
    #[error("invalid setting: {0}")]
    InvalidSetting(&'static str),
    /// A reroute table that cannot be built from the plan, load or split row it was given (the
    /// message says which).
    #[error("cannot build the reroute table: {0}")]
    InvalidReroute(String),
    /// A rank's split needs a cell of the load it did not gather.
    #[error(
        "the split needs the tokens rank {from_rank} routed to expert {expert}, which were not gathered"
    )]
    NotGathered {
        /// The source rank.
        from_rank: u32,
        /// The expert.
        expert: u32,
    },
    /// A domain number past the domains.
    #[error("domain {domain} is not one of the {num_domains} domains")]
    DomainOutOfRange {
        /// The domain asked for (or the number of thresholds given).
        domain: u32,
        /// Domains of the planner.
        num_domains: u32,
    },
    /// A replica (from a peer) that no plan could hold.
    #[error("replica of expert {expert} on rank {rank}: {reason}")]
    InvalidReplica {
        /// The expert.
        expert: u32,
        /// The rank.
        rank: u32,
        /// What is wrong.
        reason: &'static str,
    },
}
