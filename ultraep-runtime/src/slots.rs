//! The redundant slots of every rank, shared by all layers: what each holds, which backward pass
//! holds it, and the choice of a slot for every replica of a plan.

use ultraep_plan::{Instance, Residency};

use crate::{RuntimeError, StepId};

/// A complete, verified copy of one expert's weights, at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotContent {
    pub layer: u32,
    pub expert: u32,
    pub version: u64,
}

/// Every slot of every rank (rank-major): the replicas' slots first, then the staging slots a
/// layout change writes incoming masters to (never given to a replica).
#[derive(Debug)]
pub(crate) struct SlotTable {
    per_rank: usize,
    /// Slots per rank that replicas may take (the first ones).
    replica_slots: usize,
    contents: Vec<Option<SlotContent>>,
    /// The step whose backward holds the slot (its weights are in use and its gradient twin
    /// waits to be reduced): no other step may take it.
    holders: Vec<Option<StepId>>,
    /// Scratch: slots given out by the placement in progress.
    taken: Vec<bool>,
}

/// Where the replicas of one plan go.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The physical slot of every instance (`None` for masters).
    pub slots: Vec<Option<(u32, u16)>>,
    /// Replicas whose slot already held their weights.
    pub skipped: u32,
}

impl SlotTable {
    pub fn new(ranks: u32, replica_slots: u16, staging_slots: u16) -> Self {
        let per_rank = usize::from(replica_slots) + usize::from(staging_slots);
        let count = ranks as usize * per_rank;
        Self {
            per_rank,
            replica_slots: usize::from(replica_slots),
            contents: vec![None; count],
            holders: vec![None; count],
            taken: vec![false; count],
        }
    }

    fn index(&self, rank: u32, slot: u16) -> usize {
        rank as usize * self.per_rank + usize::from(slot)
    }

    pub fn content(&self, rank: u32, slot: u16) -> Option<SlotContent> {
        self.contents.get(self.index(rank, slot)).copied().flatten()
    }

    /// Whether some slot of some rank holds `content`.
    pub fn holds(&self, content: SlotContent) -> bool {
        self.contents.contains(&Some(content))
    }

    pub fn set_content(&mut self, rank: u32, slot: u16, content: Option<SlotContent>) {
        let index = self.index(rank, slot);
        self.contents[index] = content;
    }

    /// Writes into `residency` which slots hold current weights of `step`'s layer and are free
    /// for `step` (not held by another step's backward).
    pub fn residency_into(
        &self,
        step: StepId,
        version_of: impl Fn(u32) -> u64,
        residency: &mut Residency,
    ) {
        residency.clear();
        for (index, (content, holder)) in self.contents.iter().zip(&self.holders).enumerate() {
            if let Some(content) = content
                && content.layer == step.layer
                && content.version == version_of(content.expert)
                && holder.is_none_or(|holder| holder == step)
                && index % self.per_rank < self.replica_slots
            {
                let (rank, slot) = (index / self.per_rank, index % self.per_rank);
                residency.set(rank as u32, slot as u32, Some(content.expert));
            }
        }
    }

    /// Marks `slots` as held by `step` until [`SlotTable::release`].
    pub fn hold(&mut self, step: StepId, slots: &[Option<(u32, u16)>]) {
        for &(rank, slot) in slots.iter().flatten() {
            let index = self.index(rank, slot);
            self.holders[index] = Some(step);
        }
    }

    /// Frees every slot `step` holds.
    pub fn release(&mut self, step: StepId) {
        for holder in &mut self.holders {
            if *holder == Some(step) {
                *holder = None;
            }
        }
    }

    /// Chooses a slot for every replica among `instances` (a plan of `step`), into `placement`:
    /// a slot of the replica's rank that already holds the expert's current weights if there is
    /// one (no copy), else a free slot, empty ones first, then the lowest number. Slots held by
    /// other steps' backward passes are never chosen. Every replica that needs a copy is handed
    /// to `needs_copy`. Nothing changes in the table.
    pub fn place(
        &mut self,
        step: StepId,
        instances: &[Instance],
        version_of: impl Fn(u32) -> u64,
        placement: &mut Placement,
        mut needs_copy: impl FnMut(u32, (u32, u16)),
    ) -> Result<(), RuntimeError> {
        let (per_rank, replica_slots) = (self.per_rank, self.replica_slots);
        for (taken, holder) in self.taken.iter_mut().zip(&self.holders) {
            *taken = holder.is_some_and(|holder| holder != step);
        }
        placement.slots.clear();
        placement.slots.resize(instances.len(), None);
        placement.skipped = 0;
        // First, replicas whose weights are already in a slot of their rank.
        for (index, instance) in instances.iter().enumerate() {
            if !instance.is_replica() {
                continue;
            }
            let wanted = SlotContent {
                layer: step.layer,
                expert: instance.expert,
                version: version_of(instance.expert),
            };
            let base = instance.rank as usize * per_rank;
            if let Some(slot) = (0..replica_slots)
                .find(|&s| !self.taken[base + s] && self.contents[base + s] == Some(wanted))
            {
                self.taken[base + slot] = true;
                placement.slots[index] = Some((instance.rank, slot as u16));
                placement.skipped += 1;
            }
        }
        // Then the others, into free slots.
        for (index, instance) in instances.iter().enumerate() {
            if !instance.is_replica() || placement.slots[index].is_some() {
                continue;
            }
            let base = instance.rank as usize * per_rank;
            let free = (0..replica_slots)
                .filter(|&s| !self.taken[base + s])
                .min_by_key(|&s| (self.contents[base + s].is_some(), s))
                .ok_or(RuntimeError::SlotsBusy {
                    step,
                    rank: instance.rank,
                })?;
            self.taken[base + free] = true;
            let destination = (instance.rank, free as u16);
            placement.slots[index] = Some(destination);
            needs_copy(instance.expert, destination);
        }
        Ok(())
    }
}
