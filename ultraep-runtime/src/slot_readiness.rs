//! Which slots of a data plane's local ranks hold a complete, verified copy. Every backend keeps
//! this one record, so that none reads a half-written slot: a distribution marks its destination
//! slots not ready before any byte moves and ready only once each copy is verified, and a
//! reduction requires every replica gradient ready before it sums any.

use std::ops::Range;

use ultraep_xfer::{SlotState, TransferSchedule};

use crate::RuntimeError;

/// The state of every slot of a backend's local ranks.
#[derive(Debug, Clone)]
pub(crate) struct SlotReadiness {
    local: Range<u32>,
    slots_per_rank: u16,
    states: Vec<SlotState>,
}

impl SlotReadiness {
    /// Every slot of `local` ranks (`slots_per_rank` each) empty.
    pub(crate) fn new(local: Range<u32>, slots_per_rank: u16) -> Self {
        let count = local.len() * usize::from(slots_per_rank);
        Self {
            local,
            slots_per_rank,
            states: vec![SlotState::Empty; count],
        }
    }

    /// The ranks whose slots this record keeps.
    pub(crate) fn local(&self) -> Range<u32> {
        self.local.clone()
    }

    fn index(&self, rank: u32, slot: u16) -> Result<usize, RuntimeError> {
        if !self.local.contains(&rank) {
            return Err(RuntimeError::NotLocal {
                rank,
                local: self.local.clone(),
            });
        }
        if slot >= self.slots_per_rank {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {rank} has no slot {slot} (it has {})",
                self.slots_per_rank
            )));
        }
        Ok(
            (rank - self.local.start) as usize * usize::from(self.slots_per_rank)
                + usize::from(slot),
        )
    }

    /// What slot `slot` of local rank `rank` holds.
    pub(crate) fn get(&self, rank: u32, slot: u16) -> Result<SlotState, RuntimeError> {
        Ok(self.states[self.index(rank, slot)?])
    }

    /// Records what slot `slot` of local rank `rank` holds.
    pub(crate) fn set(
        &mut self,
        rank: u32,
        slot: u16,
        state: SlotState,
    ) -> Result<(), RuntimeError> {
        let index = self.index(rank, slot)?;
        self.states[index] = state;
        Ok(())
    }

    /// Fails with [`RuntimeError::SlotNotReady`] unless slot `slot` of `rank` holds a complete
    /// copy (of `expert`, when one is named).
    pub(crate) fn require_ready(
        &self,
        rank: u32,
        slot: u16,
        expert: Option<u32>,
    ) -> Result<(), RuntimeError> {
        match self.get(rank, slot)? {
            SlotState::Ready { expert: held } if expert.is_none_or(|wanted| wanted == held) => {
                Ok(())
            }
            _ => Err(RuntimeError::SlotNotReady { rank, slot }),
        }
    }

    /// Marks every slot that `schedule` writes as being written, before any byte moves; returns
    /// how many it marked. For a backend that holds every rank of the group: every destination
    /// must be a slot of these ranks, checked first, so that a schedule naming another rank or a
    /// slot that does not exist changes nothing.
    pub(crate) fn begin_receiving(
        &mut self,
        schedule: &TransferSchedule,
    ) -> Result<usize, RuntimeError> {
        self.require_every_destination(schedule)?;
        let mut marked = 0;
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                let index = self.index(rank, slot)?;
                self.states[index] = SlotState::NotReady {
                    expert: fanout.expert,
                };
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// Fails unless every slot `schedule` writes is a slot of these ranks: for a backend that
    /// holds every rank of the group, a schedule naming another is bad input.
    pub(crate) fn require_every_destination(
        &self,
        schedule: &TransferSchedule,
    ) -> Result<(), RuntimeError> {
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.index(rank, slot)?;
            }
        }
        Ok(())
    }

    /// Fails with [`RuntimeError::SlotNotReady`] unless every replica slot of `schedule` on
    /// these ranks holds its expert's complete state: what a reduction requires before it sums.
    pub(crate) fn require_replicas_ready(
        &self,
        schedule: &TransferSchedule,
    ) -> Result<(), RuntimeError> {
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if self.local.contains(&rank) {
                    self.require_ready(rank, slot, Some(fanout.expert))?;
                }
            }
        }
        Ok(())
    }
}
