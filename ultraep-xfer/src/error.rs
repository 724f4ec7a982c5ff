//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong building, simulating or executing transfers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum XferError {
    /// Tile or chunk sizes that cannot work.
    #[error("invalid transfer configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// A route given by hand that cannot be carried out.
    #[error("expert {expert}: {reason}")]
    InvalidRoute {
        /// The expert.
        expert: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// An expert state with no bytes.
    #[error("the expert state is empty")]
    EmptyState,
    /// A rank of the plan is not in the topology.
    #[error("rank {rank} is not in the topology ({rank_count} ranks)")]
    UnknownRank {
        /// The rank.
        rank: u32,
        /// Ranks in the topology.
        rank_count: u32,
    },
    /// A replica is not in its master's scale-up domain.
    #[error(
        "expert {expert}: replica on rank {rank} is outside the domain of its master on rank {master}"
    )]
    CrossDomainReplica {
        /// The expert.
        expert: u32,
        /// Its master's rank.
        master: u32,
        /// The replica's rank.
        rank: u32,
    },
    /// A fan-out or replica set that cannot be carried out: no destination, the master among its
    /// own destinations, a rank twice for one expert, an expert twice, or one slot of a rank given
    /// to two experts.
    #[error("expert {expert}: {reason}")]
    InvalidReplicaSet {
        /// The expert.
        expert: u32,
        /// What is wrong.
        reason: String,
    },
    /// The plan and the expert layout disagree.
    #[error("the plan has {plan} experts but the layout has {layout}")]
    LayoutMismatch {
        /// Experts in the plan.
        plan: u32,
        /// Experts in the layout.
        layout: u32,
    },
    /// The plan has no instances to transfer (an ideal plan).
    #[error("the plan is not realizable, so it has no replicas to transfer")]
    NotRealizable,
    /// A transfer failed part way; the slots it was writing are not ready.
    #[error("transfer failed at task {task}: {reason}; {slots} slot(s) left not ready")]
    TransferFailed {
        /// The tile task that failed.
        task: usize,
        /// Why.
        reason: String,
        /// Slots that were being written.
        slots: usize,
    },
    /// A destination's bytes do not match its source after the transfer.
    #[error(
        "expert {expert} on rank {rank} slot {slot}: checksum {found:#018x}, expected {expected:#018x}"
    )]
    ChecksumMismatch {
        /// The expert.
        expert: u32,
        /// The destination rank.
        rank: u32,
        /// The destination slot.
        slot: u16,
        /// Checksum of the master's bytes.
        expected: u64,
        /// Checksum of the slot's bytes.
        found: u64,
    },
    /// Memory handed to a reduction does not match the schedule.
    #[error("the memory does not fit the schedule: {reason}")]
    MemoryMismatch {
        /// What does not fit.
        reason: String,
    },
}
