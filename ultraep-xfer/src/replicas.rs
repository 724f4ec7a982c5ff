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

/// One replicated expert: its master and the slots its state goes to. Built by [`Fanout::new`],
/// which checks that it can be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fanout {
    pub(crate) expert: u32,
    pub(crate) master: u32,
    pub(crate) master_index: u32,
    pub(crate) destinations: Vec<(u32, u16)>,
}

impl Fanout {
    /// Expert `expert`, mastered on rank `master` (its `master_index`-th expert there), copied to
    /// `destinations` as (rank, slot) pairs in any order. Refused: no destination, the master's
    /// rank among them, or a rank twice.
    ///
    /// ```
    /// use ultraep_xfer::Fanout;
    /// let fanout = Fanout::new(7, 0, 1, vec![(3, 0), (2, 1)])?;
    /// assert_eq!(fanout.destinations(), &[(2, 1), (3, 0)]);
    /// assert!(Fanout::new(7, 0, 1, vec![(0, 0)]).is_err());
    /// # Ok::<(), ultraep_xfer::XferError>(())
    /// ```
    pub fn new(
        expert: u32,
        master: u32,
        master_index: u32,
        mut destinations: Vec<(u32, u16)>,
    ) -> Result<Self, XferError> {
        let refuse = |reason: String| XferError::InvalidReplicaSet { expert, reason };
        destinations.sort_unstable();
        if destinations.is_empty() {
            return Err(refuse("a fan-out needs at least one destination".into()));
        }
        if destinations.iter().any(|&(rank, _)| rank == master) {
            return Err(refuse(format!(
                "its master's rank {master} is also one of its destinations"
            )));
        }
        if let Some(pair) = destinations.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(refuse(format!("rank {} is a destination twice", pair[0].0)));
        }
        Ok(Self {
            expert,
            master,
            master_index,
            destinations,
        })
    }

    /// The expert.
    pub fn expert(&self) -> u32 {
        self.expert
    }

    /// The master's rank.
    pub fn master(&self) -> u32 {
        self.master
    }

    /// The expert's index among its master rank's experts.
    pub fn master_index(&self) -> u32 {
        self.master_index
    }

    /// Destination (rank, slot) pairs, by ascending rank, each rank once.
    pub fn destinations(&self) -> &[(u32, u16)] {
        &self.destinations
    }
}

/// Every expert of a plan that has replicas, by ascending expert. Built by [`ReplicaSet::new`] or
/// [`ReplicaSet::from_plan`], which check that it can be carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ReplicaSet {
    pub(crate) fanouts: Vec<Fanout>,
}

impl ReplicaSet {
    /// The set of `fanouts`, in any order. Refused: an expert twice, or one slot of a rank given to
    /// two experts (the second would overwrite the first).
    pub fn new(mut fanouts: Vec<Fanout>) -> Result<Self, XferError> {
        fanouts.sort_unstable_by_key(|fanout| fanout.expert);
        if let Some(pair) = fanouts
            .windows(2)
            .find(|pair| pair[0].expert == pair[1].expert)
        {
            return Err(XferError::InvalidReplicaSet {
                expert: pair[1].expert,
                reason: "it has two fan-outs".into(),
            });
        }
        check_slots(&fanouts, &mut Vec::new())?;
        Ok(Self { fanouts })
    }

    /// The fan-outs, by ascending expert.
    pub fn fanouts(&self) -> &[Fanout] {
        &self.fanouts
    }

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
            fanouts.push(Fanout::new(expert, master, master_index, destinations)?);
        }
        Self::new(fanouts)
    }

    /// Replicas in the set.
    pub fn replica_count(&self) -> usize {
        self.fanouts.iter().map(|f| f.destinations.len()).sum()
    }
}

/// Builds a [`ReplicaSet`] again and again without allocating once warm (cleared fan-outs keep
/// their buffers), with the checks of [`Fanout::new`] and [`ReplicaSet::new`]: what a runtime
/// uses on its per-microbatch path.
///
/// ```
/// use ultraep_xfer::ReplicaSetBuilder;
/// let mut builder = ReplicaSetBuilder::default();
/// builder.add(4, 0, 0, (2, 0))?;
/// builder.add(4, 0, 0, (1, 0))?;
/// assert!(builder.add(4, 0, 0, (0, 1)).is_err(), "the master's own rank");
/// let set = builder.finish()?;
/// assert_eq!(set.fanouts()[0].destinations(), &[(1, 0), (2, 0)]);
/// # Ok::<(), ultraep_xfer::XferError>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct ReplicaSetBuilder {
    set: ReplicaSet,
    spare: Vec<Fanout>,
    slots: Vec<(u32, u16, u32)>,
}

impl ReplicaSetBuilder {
    /// Starts again with no fan-outs.
    pub fn clear(&mut self) {
        while let Some(mut fanout) = self.set.fanouts.pop() {
            fanout.destinations.clear();
            self.spare.push(fanout);
        }
    }

    /// Adds `destination` (rank, slot) to the fan-out of `expert`, starting one (from rank
    /// `master`, the expert's `master_index`-th there) if it has none yet. Refused: the master's
    /// own rank, a rank the expert already goes to, or a master other than the fan-out's.
    pub fn add(
        &mut self,
        expert: u32,
        master: u32,
        master_index: u32,
        destination: (u32, u16),
    ) -> Result<(), XferError> {
        let refuse = |reason: String| XferError::InvalidReplicaSet { expert, reason };
        if destination.0 == master {
            return Err(refuse(format!(
                "its master's rank {master} is also one of its destinations"
            )));
        }
        if let Some(fanout) = self.set.fanouts.iter_mut().find(|f| f.expert == expert) {
            if fanout.master != master || fanout.master_index != master_index {
                return Err(refuse(format!(
                    "its master is rank {} (index {}), not rank {master} (index {master_index})",
                    fanout.master, fanout.master_index
                )));
            }
            if fanout.destinations.iter().any(|d| d.0 == destination.0) {
                return Err(refuse(format!(
                    "rank {} is a destination twice",
                    destination.0
                )));
            }
            fanout.destinations.push(destination);
            return Ok(());
        }
        let mut fanout = self.spare.pop().unwrap_or_else(|| Fanout {
            expert,
            master,
            master_index,
            destinations: Vec::new(),
        });
        fanout.expert = expert;
        fanout.master = master;
        fanout.master_index = master_index;
        fanout.destinations.push(destination);
        self.set.fanouts.push(fanout);
        Ok(())
    }

    /// Replicas added so far.
    pub fn replica_count(&self) -> usize {
        self.set.replica_count()
    }

    /// Whether no fan-out was added.
    pub fn is_empty(&self) -> bool {
        self.set.fanouts.is_empty()
    }

    /// Orders the set (experts and destinations ascending), checks that no slot of a rank is given
    /// to two experts, and returns it.
    pub fn finish(&mut self) -> Result<&ReplicaSet, XferError> {
        self.set
            .fanouts
            .sort_unstable_by_key(|fanout| fanout.expert);
        for fanout in &mut self.set.fanouts {
            fanout.destinations.sort_unstable();
        }
        check_slots(&self.set.fanouts, &mut self.slots)?;
        Ok(&self.set)
    }

    /// The set as built so far (ordered and checked only after [`ReplicaSetBuilder::finish`]).
    pub fn set(&self) -> &ReplicaSet {
        &self.set
    }
}

/// Refuses `fanouts` that give one slot of a rank to two experts; `slots` is scratch.
fn check_slots(fanouts: &[Fanout], slots: &mut Vec<(u32, u16, u32)>) -> Result<(), XferError> {
    slots.clear();
    for fanout in fanouts {
        let expert = fanout.expert;
        slots.extend(
            fanout
                .destinations
                .iter()
                .map(|&(rank, slot)| (rank, slot, expert)),
        );
    }
    slots.sort_unstable();
    match slots
        .windows(2)
        .find(|pair| (pair[0].0, pair[0].1) == (pair[1].0, pair[1].1))
    {
        Some(pair) => Err(XferError::InvalidReplicaSet {
            expert: pair[1].2,
            reason: format!(
                "slot {} of rank {} is also expert {}'s",
                pair[1].1, pair[1].0, pair[0].2
            ),
        }),
        None => Ok(()),
    }
}
