//! The host plane as a [`Backend`]: masters and slots read and written in place, this plane's
//! share of a distribution (checksums published, slots opened, tiles sent, arrivals awaited and
//! verified), and the hand-off of replica gradients to their masters' ranks.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::Ordering;

use ultraep_xfer::{Region, Route, SlotState, TileTask, TileTaskList, TransferSchedule, checksum};

use super::HostPlane;
use crate::RuntimeError;
use crate::backend::{Backend, Started};
use crate::gradient_handoff;

/// A slot this plane's ranks receive in a transfer, and where its master is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Receive {
    rank: u32,
    slot: u16,
    expert: u32,
    master: u32,
    master_index: u32,
    /// Whether relays forward some of its tiles: then the rank a wait is for is not always the
    /// master, and a wait that stalls looks for any rank that is gone.
    relayed: bool,
}

impl HostPlane {
    /// Publishes the checksum of every master this plane sends in `schedule`, before any of its
    /// tiles leaves: receivers compare their copy with it. A master's checksum is computed once
    /// and kept until the master is written again.
    fn publish_checksums(&mut self, schedule: &TransferSchedule) -> Result<(), RuntimeError> {
        for fanout in schedule.fanouts() {
            if !self.local.contains(&fanout.master) {
                continue;
            }
            let local = self.local_index(fanout.master)?;
            let at = self.master_sums_at[local] + fanout.master_index as usize;
            let segment = self.pool.state().peers.segment(fanout.master)?;
            let sum = match self.master_sums.get(at).copied().flatten() {
                Some(sum) => sum,
                None => {
                    let bytes = segment.region(Region::Master {
                        index: fanout.master_index,
                    })?;
                    let sum = checksum(bytes);
                    if let Some(kept) = self.master_sums.get_mut(at) {
                        *kept = Some(sum);
                    }
                    sum
                }
            };
            segment
                .checksum_word(fanout.master_index)
                .store(sum, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits for every tile of every slot this plane receives in this round, then checks each
    /// copy against its master's published checksum.
    fn complete_receives(&mut self) -> Result<(), RuntimeError> {
        let peers = &self.pool.state().peers;
        for receive in &self.receives {
            let segment = peers.segment(receive.rank)?;
            for tile in 0..segment.layout().tiles() {
                peers.wait_for(
                    segment.tile_word(receive.slot, tile),
                    self.round,
                    self.timeout,
                    None,
                    (!receive.relayed).then_some(receive.master),
                    || {
                        format!(
                            "tile {tile} of expert {} for slot {} of rank {}",
                            receive.expert, receive.slot, receive.rank
                        )
                    },
                )?;
            }
        }
        for index in 0..self.receives.len() {
            let receive = self.receives[index];
            let peers = &self.pool.state().peers;
            let bytes = peers
                .segment(receive.rank)?
                .region(Region::Slot { slot: receive.slot })?;
            let found = checksum(bytes);
            let expected = peers
                .segment(receive.master)?
                .checksum_word(receive.master_index)
                .load(Ordering::Relaxed);
            if found != expected {
                return Err(ultraep_xfer::XferError::ChecksumMismatch {
                    expert: receive.expert,
                    rank: receive.rank,
                    slot: receive.slot,
                    expected,
                    found,
                }
                .into());
            }
            self.slots.set(
                receive.rank,
                receive.slot,
                SlotState::Ready {
                    expert: receive.expert,
                },
            )?;
        }
        Ok(())
    }
}

impl Backend for HostPlane {
    fn local_ranks(&self) -> Range<u32> {
        self.local.clone()
    }

    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError> {
        let region = self.master_mut(rank, index)?;
        if region.len() != bytes.len() {
            return Err(RuntimeError::WrongSize {
                what: "state",
                got: bytes.len(),
                expected: region.len() as u64,
            });
        }
        region.copy_from_slice(bytes);
        Ok(())
    }

    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.master(rank, index).map(Cow::Borrowed)
    }

    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.slot(rank, slot).map(Cow::Borrowed)
    }

    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), RuntimeError> {
        let local = self.local_index(rank)?;
        self.slots.get(rank, slot)?;
        let segment = &*self.pool.state().peers.segments[rank as usize];
        let region = segment.region_mut(&mut self.owners[local], Region::Slot { slot })?;
        if region.len() != bytes.len() {
            return Err(RuntimeError::WrongSize {
                what: "state",
                got: bytes.len(),
                expected: region.len() as u64,
            });
        }
        region.copy_from_slice(bytes);
        // The gradient is handed to its master's rank only when this rank reduces: until then
        // it may be written again, and nobody else reads it.
        self.slots.set(rank, slot, SlotState::Ready { expert })
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        match self.start_distribute(schedule, tasks)? {
            Started::Done(bytes) => Ok(bytes),
            Started::Running => self.finish_distribute(),
        }
    }

    fn start_distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<Started, RuntimeError> {
        let segments = self.peers().segments.len() as u32;
        let tile_bytes = schedule.config().tile_bytes;
        if schedule.state_bytes()
            != self
                .peers()
                .segments
                .first()
                .map_or(0, |s| s.layout().state_bytes)
            || self
                .peers()
                .segments
                .first()
                .is_some_and(|s| s.layout().tile_bytes != tile_bytes)
        {
            return Err(RuntimeError::InvalidInput(format!(
                "a schedule of {}-byte states in {tile_bytes}-byte tiles for other memory",
                schedule.state_bytes()
            )));
        }
        // Every rank of the group runs the same rounds in the same order, so the round number
        // is the same everywhere without being sent.
        self.round += 1;
        self.receives.clear();
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if rank >= segments {
                    return Err(RuntimeError::InvalidInput(format!(
                        "a destination on rank {rank} of {segments}"
                    )));
                }
                if self.local.contains(&rank) {
                    self.slots.get(rank, slot)?;
                    self.receives.push(Receive {
                        rank,
                        slot,
                        expert: fanout.expert,
                        master: fanout.master,
                        master_index: fanout.master_index,
                        relayed: matches!(fanout.route, Route::Relayed { .. }),
                    });
                }
            }
        }
        // From here until verified, the slots being written must not be used.
        for index in 0..self.receives.len() {
            let receive = self.receives[index];
            self.slots.set(
                receive.rank,
                receive.slot,
                SlotState::NotReady {
                    expert: receive.expert,
                },
            )?;
        }
        self.publish_checksums(schedule)?;
        // Open the slots this plane receives for this round; senders wait for it.
        for receive in &self.receives {
            self.pool
                .state()
                .peers
                .segment(receive.rank)?
                .open_word(receive.slot)
                .store(self.round, Ordering::Release);
        }
        {
            let mut job = self
                .pool
                .state()
                .job
                .write()
                .map_err(|_| RuntimeError::Backend("a data-plane worker panicked".into()))?;
            job.tasks.clear();
            job.destinations.clear();
            for task in tasks.tasks() {
                if !self.local.contains(&task.source_rank) {
                    continue;
                }
                let first = job.destinations.len() as u32;
                job.destinations
                    .extend_from_slice(tasks.destinations_of(task));
                job.tasks.push(TileTask {
                    first_destination: first,
                    ..*task
                });
            }
            job.round = self.round;
            job.timeout = self.timeout;
            job.fail_at_task = self.fail_at_task.take();
            job.next.store(0, Ordering::Relaxed);
            job.failed.store(false, Ordering::Relaxed);
            if let Ok(mut failure) = job.failure.lock() {
                *failure = None;
            }
        }
        self.pool.start()?;
        self.running = Some(tasks.bytes_stored());
        Ok(Started::Running)
    }

    fn finish_distribute(&mut self) -> Result<u64, RuntimeError> {
        let bytes = self
            .running
            .take()
            .ok_or_else(|| RuntimeError::Backend("no distribution is running".into()))?;
        self.pool.wait()?;
        let failure = self
            .pool
            .state()
            .job
            .read()
            .ok()
            .and_then(|job| job.failure.lock().ok()?.take());
        if let Some(error) = failure {
            return Err(error);
        }
        self.complete_receives()?;
        Ok(bytes)
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        token: u64,
    ) -> Result<(), RuntimeError> {
        if !schedule.state_bytes().is_multiple_of(4) {
            return Err(RuntimeError::InvalidInput(format!(
                "a {}-byte gradient is not FP32 values",
                schedule.state_bytes()
            )));
        }
        gradient_handoff::reduce(self, schedule, token)
    }

    fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }
}
