//! Which expert states must move: every replica of a plan, with where it comes from and goes to.

use ultraep_plan::{ExpertLayout, Plan, PlanKind};
use ultraep_topo::{RankId, Topology};

use crate::XferError;

/// A place on a rank that holds one expert state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// The master copy of the rank's `index`-th expert of this layer (experts by ascending id).
    Master {
        /// The expert's index among the experts homed on the rank.
        index: u32,
    },
    /// A redundant slot (shared by all layers).
    Slot {
        /// The slot number.
        slot: u16,
    },
}

/// One replicated expert: its master and the slots its state goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fanout {
    /// The expert.
    pub expert: u32,
    /// The master's rank.
    pub master: u32,
    /// The expert's index among its master rank's experts.
    pub master_index: u32,
    /// Destination (rank, slot) pairs, by ascending rank.
    pub destinations: Vec<(u32, u16)>,
}

/// Every expert of a plan that has replicas, by ascending expert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ReplicaSet {
    /// The fan-outs.
    pub fanouts: Vec<Fanout>,
}

impl ReplicaSet {
    /// The replicas of `plan`, whose experts live where `layout` says, checked against
    /// `topology`: every rank exists and every replica is in its master's domain.
    pub fn from_plan(
        plan: &Plan,
        layout: &ExpertLayout,
        topology: &Topology,
    ) -> Result<Self, XferError> {
        if plan.kind() != PlanKind::Realizable {
            return Err(XferError::NotRealizable);
        }
        if plan.num_experts() != layout.num_experts() {
            return Err(XferError::LayoutMismatch {
                plan: plan.num_experts(),
                layout: layout.num_experts(),
            });
        }
        let rank_count = topology.rank_count() as u32;
        let (master_indices, _) = layout.home_indices();
        let mut fanouts = Vec::new();
        for expert in 0..plan.num_experts() {
            let instances = plan.instances_of(expert);
            if instances.len() < 2 {
                continue;
            }
            let master = instances[0].rank;
            let master_index = master_indices[expert as usize];
            let mut destinations = Vec::with_capacity(instances.len() - 1);
            for instance in &instances[1..] {
                for rank in [master, instance.rank] {
                    if rank >= rank_count {
                        return Err(XferError::UnknownRank { rank, rank_count });
                    }
                }
                if !topology
                    .same_domain(RankId(master), RankId(instance.rank))
                    .unwrap_or(false)
                {
                    return Err(XferError::CrossDomainReplica {
                        expert,
                        master,
                        rank: instance.rank,
                    });
                }
                destinations.push((instance.rank, instance.replica_slot.unwrap_or(0)));
            }
            destinations.sort_unstable();
            fanouts.push(Fanout {
                expert,
                master,
                master_index,
                destinations,
            });
        }
        Ok(Self { fanouts })
    }

    /// Replicas in the set.
    pub fn replica_count(&self) -> usize {
        self.fanouts.iter().map(|f| f.destinations.len()).sum()
    }
}
