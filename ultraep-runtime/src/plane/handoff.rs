//! The host plane's side of the gradient hand-off (`crate::gradient_handoff`): the words live
//! in the shared segments, and the masters are summed on the CPU.

use std::sync::atomic::{AtomicU64, Ordering};

use ultraep_xfer::{Region, ScheduledFanout, SlotState, TransferSchedule};

use super::HostPlane;
use crate::RuntimeError;
use crate::gradient_handoff::HandoffPlane;
use crate::slot_readiness::SlotReadiness;

impl HandoffPlane for HostPlane {
    fn slot_readiness(&self) -> &SlotReadiness {
        &self.slots
    }

    fn store_word(&self, rank: u32, slot: u16, value: u64) -> Result<(), RuntimeError> {
        self.handoff_word(rank, slot)?
            .store(value, Ordering::Release);
        Ok(())
    }

    fn wait_word(
        &self,
        rank: u32,
        slot: u16,
        value: u64,
        writer: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), RuntimeError> {
        self.peers().wait_for(
            self.handoff_word(rank, slot)?,
            value,
            self.timeout,
            None,
            Some(writer),
            what,
        )
    }

    fn sum_into_masters(
        &mut self,
        schedule: &TransferSchedule,
    ) -> (usize, Result<(), RuntimeError>) {
        let mut summed = 0;
        for fanout in schedule.fanouts() {
            if !self.local.contains(&fanout.master) {
                continue;
            }
            if let Err(error) = self.sum_master(schedule, fanout) {
                return (summed, Err(error));
            }
            summed += 1;
        }
        (summed, Ok(()))
    }

    fn empty_replica(&mut self, rank: u32, slot: u16) -> Result<(), RuntimeError> {
        let local = self.local_index(rank)?;
        let segment = &*self.pool.state().peers.segments[rank as usize];
        segment
            .region_mut(&mut self.owners[local], Region::Slot { slot })?
            .fill(0);
        self.slots.set(rank, slot, SlotState::Empty)
    }
}

impl HostPlane {
    /// The hand-off word of slot `slot` of `rank`, in that rank's segment.
    fn handoff_word(&self, rank: u32, slot: u16) -> Result<&AtomicU64, RuntimeError> {
        let segment = self.peers().segment(rank)?;
        if slot >= segment.layout().slots {
            return Err(RuntimeError::SlotNotReady { rank, slot });
        }
        Ok(segment.slot_word(slot))
    }

    /// Sums `fanout`'s replicas into its master, which this plane holds, in the documented order.
    fn sum_master(
        &mut self,
        schedule: &TransferSchedule,
        fanout: &ScheduledFanout,
    ) -> Result<(), RuntimeError> {
        let floats = (schedule.state_bytes() / 4) as usize;
        let local = self.local_index(fanout.master)?;
        // The master changes: its kept checksum no longer holds.
        if let Some(sum) = self
            .master_sums
            .get_mut(self.master_sums_at[local] + fanout.master_index as usize)
        {
            *sum = None;
        }
        let peers = &self.pool.state().peers;
        let segment = &*peers.segments[fanout.master as usize];
        let master = segment.region_mut(
            &mut self.owners[local],
            Region::Master {
                index: fanout.master_index,
            },
        )?;
        let master: &mut [f32] = bytemuck::try_cast_slice_mut(master)
            .map_err(|error| RuntimeError::Backend(format!("gradient memory: {error}")))?;
        let empty: &[f32] = &[];
        self.reduction.reduce(schedule, fanout, master, |rank| {
            fanout
                .destinations
                .iter()
                .find(|(r, _)| *r == rank)
                .and_then(|&(rank, slot)| {
                    peers.segment(rank).ok()?.region(Region::Slot { slot }).ok()
                })
                .and_then(|bytes| bytemuck::try_cast_slice(bytes).ok())
                .filter(|values: &&[f32]| values.len() == floats)
                .unwrap_or(empty)
        })?;
        Ok(())
    }
}
