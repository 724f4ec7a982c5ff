//! The CUDA data plane of one rank per process: the rank's masters, slots and signal words live on
//! its GPU, its peers' are opened from CUDA IPC handles all-gathered through the collective, and
//! the peer tile streamer stores this rank's tiles straight into its peers' slots. The protocol is
//! the host plane's: a slot is written only in the transfer round its owner has opened it for,
//! every tile's arrival word takes the round after its bytes, receivers verify every copy against
//! the checksum its master's rank published, and replica gradients are handed to their masters'
//! ranks through tokened words. Every wait is bounded by [`PlaneOptions::timeout`].
//!
//! It compiles and is covered by GPU tests (`tests/gpu.rs`), which show as ignored where there is
//! no GPU; it has not yet run on one.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ultraep_kernels::KernelError;
use ultraep_kernels::gpu::Gpu;
use ultraep_kernels::ipc::{IpcLayout, IpcRankMemory, PeerPointers, RANK_HANDLE_WORDS};
use ultraep_kernels::reference::reduce::reduce_jobs;
use ultraep_xfer::{Region, SlotState, TileTaskList, TransferSchedule, XferError};

use crate::backend::{Backend, MemoryShape};
use crate::gradient_handoff::{self, HandoffPlane};
use crate::slot_readiness::SlotReadiness;
use crate::{Collective, PlaneOptions, RuntimeError};

fn kernel(error: KernelError) -> RuntimeError {
    match error {
        KernelError::PeerTimeout { waited_ms, what } => RuntimeError::Timeout {
            waited: Duration::from_millis(waited_ms),
            what,
        },
        other => RuntimeError::Backend(other.to_string()),
    }
}

/// One rank's memory on its GPU, its peers' opened through CUDA IPC: the data plane of a
/// process-per-GPU group (several processes may also share one GPU). Tiles go straight into
/// peers' slots, each slot written only in the transfer round its owner opened it for, every copy
/// verified against its master's published checksum, every wait bounded.
pub struct CudaPeerPlane {
    gpu: Arc<Gpu>,
    rank: u32,
    layout: IpcLayout,
    /// Every rank's buffers as pointers of this process (its own, and peers' opened). Declared
    /// before `_memory` so that the peers' mappings close before this rank's buffers are freed.
    ranks: Vec<PeerPointers>,
    /// Kept alive: the rank's buffers, which `ranks[rank]` points into.
    _memory: IpcRankMemory,
    /// What every slot of this rank holds.
    slots: SlotReadiness,
    round: u64,
    timeout: Duration,
    master_sums: Vec<Option<u64>>,
    local_tasks: TileTaskList,
    fail_at_task: Option<usize>,
}

impl std::fmt::Debug for CudaPeerPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPeerPlane")
            .field("rank", &self.rank)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl CudaPeerPlane {
    /// The memory of the one local rank of `shape` on `gpu`, with its peers' opened from the
    /// handles every rank all-gathers through `collective` (whose members are the group's ranks).
    pub fn new(
        gpu: Arc<Gpu>,
        shape: &MemoryShape<'_>,
        collective: &mut dyn Collective,
        options: PlaneOptions,
    ) -> Result<Self, RuntimeError> {
        let ranks = shape.masters_per_rank.len() as u32;
        if shape.local.len() != 1 || collective.ranks() != ranks {
            return Err(RuntimeError::InvalidConfig(format!(
                "a CUDA peer plane holds one rank of a collective of all {ranks}, not {:?}",
                shape.local
            )));
        }
        let rank = shape.local.start;
        let layout = IpcLayout {
            masters: shape.masters_per_rank[rank as usize],
            slots: shape.slots_per_rank,
            state_bytes: shape.state_bytes,
            tile_bytes: shape.tile_bytes,
        };
        let memory = gpu.alloc_ipc_rank(layout).map_err(kernel)?;
        let mine = gpu.export_ipc(&memory).map_err(kernel)?;
        let mut all = vec![0u32; RANK_HANDLE_WORDS * ranks as usize];
        collective.all_gather(&mine, &mut all)?;
        let mut pointers = Vec::with_capacity(ranks as usize);
        for peer in 0..ranks {
            pointers.push(if peer == rank {
                gpu.own_pointers(&memory)
            } else {
                gpu.open_ipc(&all[peer as usize * RANK_HANDLE_WORDS..][..RANK_HANDLE_WORDS])
                    .map_err(kernel)?
            });
        }
        Ok(Self {
            gpu,
            rank,
            layout,
            ranks: pointers,
            _memory: memory,
            slots: SlotReadiness::new(rank..rank + 1, shape.slots_per_rank),
            round: 0,
            timeout: options.timeout,
            master_sums: vec![None; layout.masters as usize],
            local_tasks: TileTaskList::default(),
            fail_at_task: None,
        })
    }

    fn check_local(&self, rank: u32) -> Result<(), RuntimeError> {
        if rank == self.rank {
            Ok(())
        } else {
            Err(RuntimeError::NotLocal {
                rank,
                local: self.rank..self.rank + 1,
            })
        }
    }

    fn check_size(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        if bytes.len() as u64 != self.layout.state_bytes {
            return Err(RuntimeError::WrongSize {
                what: "state",
                got: bytes.len(),
                expected: self.layout.state_bytes,
            });
        }
        Ok(())
    }

    fn offset(&self, region: Region) -> Result<u64, RuntimeError> {
        self.layout.offset(region).ok_or_else(|| {
            RuntimeError::InvalidInput(format!("no {region:?} in rank {}'s memory", self.rank))
        })
    }

    fn pointer(&self, rank: u32, region: Region) -> Result<u64, RuntimeError> {
        let pointers = self.ranks.get(rank as usize).ok_or_else(|| {
            RuntimeError::InvalidInput(format!("rank {rank} is not in the group"))
        })?;
        let base = match region {
            Region::Master { .. } => pointers.masters,
            Region::Slot { .. } => pointers.slots,
        };
        Ok(base + self.offset(region)?)
    }

    /// The device address of `region` of this plane's rank, for kernels that read it in place.
    pub fn region_pointer(&self, rank: u32, region: Region) -> Result<u64, RuntimeError> {
        self.check_local(rank)?;
        if let Region::Slot { slot } = region {
            self.slots.require_ready(rank, slot, None)?;
        }
        self.pointer(rank, region)
    }

    fn read_region(&self, rank: u32, region: Region) -> Result<Vec<u8>, RuntimeError> {
        let mut bytes = vec![0u8; self.layout.state_bytes as usize];
        self.gpu
            .read_device(self.pointer(rank, region)?, &mut bytes)
            .map_err(kernel)?;
        Ok(bytes)
    }

    /// Waits until word `index` of rank `rank`'s signal words holds `value`.
    fn wait_signal(
        &self,
        rank: u32,
        index: u64,
        value: u64,
        what: impl Fn() -> String,
    ) -> Result<(), RuntimeError> {
        let words = self.ranks[rank as usize].words;
        let started = Instant::now();
        loop {
            if self.gpu.read_word(words, index).map_err(kernel)? == value {
                return Ok(());
            }
            if started.elapsed() >= self.timeout {
                return Err(RuntimeError::Timeout {
                    waited: self.timeout,
                    what: what(),
                });
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// The checksums of the expert states at `pointers`, computed on the device: one per pointer.
    fn device_checksums(&self, pointers: &[u64]) -> Result<Vec<u64>, RuntimeError> {
        let sums = self
            .gpu
            .checksums_at(pointers, self.layout.state_bytes)
            .map_err(kernel)?;
        if sums.len() != pointers.len() {
            return Err(kernel(KernelError::Device(format!(
                "{} checksums for {} regions",
                sums.len(),
                pointers.len()
            ))));
        }
        Ok(sums)
    }

    /// The checksum of master `index`, kept until the master is written again.
    fn master_sum(&mut self, index: u32) -> Result<u64, RuntimeError> {
        if let Some(Some(sum)) = self.master_sums.get(index as usize) {
            return Ok(*sum);
        }
        let pointer = self.pointer(self.rank, Region::Master { index })?;
        let sum = self.device_checksums(&[pointer])?[0];
        if let Some(kept) = self.master_sums.get_mut(index as usize) {
            *kept = Some(sum);
        }
        Ok(sum)
    }
}

impl Backend for CudaPeerPlane {
    fn local_ranks(&self) -> Range<u32> {
        self.rank..self.rank + 1
    }

    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.check_local(rank)?;
        self.check_size(bytes)?;
        let pointer = self.pointer(rank, Region::Master { index })?;
        self.gpu.write_device(pointer, bytes).map_err(kernel)?;
        if let Some(sum) = self.master_sums.get_mut(index as usize) {
            *sum = None;
        }
        Ok(())
    }

    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.check_local(rank)?;
        self.read_region(rank, Region::Master { index })
            .map(Cow::Owned)
    }

    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.check_local(rank)?;
        self.slots.require_ready(rank, slot, None)?;
        self.read_region(rank, Region::Slot { slot })
            .map(Cow::Owned)
    }

    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), RuntimeError> {
        self.check_local(rank)?;
        self.check_size(bytes)?;
        let pointer = self.pointer(rank, Region::Slot { slot })?;
        self.gpu.write_device(pointer, bytes).map_err(kernel)?;
        // Handed to the master's rank only when this rank reduces.
        self.slots.set(rank, slot, SlotState::Ready { expert })
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        if schedule.state_bytes() != self.layout.state_bytes
            || schedule.config().tile_bytes != self.layout.tile_bytes
        {
            return Err(RuntimeError::InvalidInput(
                "a schedule for other memory than this plane's".into(),
            ));
        }
        self.round += 1;
        let round = self.round;
        let mut receives = Vec::new();
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if rank == self.rank {
                    self.slots.set(
                        rank,
                        slot,
                        SlotState::NotReady {
                            expert: fanout.expert,
                        },
                    )?;
                    receives.push((slot, fanout.expert, fanout.master, fanout.master_index));
                }
            }
            if fanout.master == self.rank {
                let sum = self.master_sum(fanout.master_index)?;
                let words = self.ranks[self.rank as usize].words;
                self.gpu
                    .write_word(words, self.layout.checksum_word(fanout.master_index), sum)
                    .map_err(kernel)?;
            }
        }
        let words = self.ranks[self.rank as usize].words;
        for &(slot, ..) in &receives {
            self.gpu
                .write_word(words, self.layout.open_word(slot), round)
                .map_err(kernel)?;
        }
        // This rank's share of the tasks: the tiles it sends or forwards.
        let rank = self.rank;
        tasks.share_into(|task| task.source_rank == rank, &mut self.local_tasks);
        if let Some(task) = self.fail_at_task.take() {
            self.local_tasks.truncate(task);
            let _ = self.gpu.stream_peer_tiles(
                &self.local_tasks,
                &self.ranks,
                self.layout,
                round,
                self.timeout,
            );
            return Err(XferError::TransferFailed {
                task,
                reason: "injected failure".into(),
                slots: receives.len(),
            }
            .into());
        }
        self.gpu
            .stream_peer_tiles(
                &self.local_tasks,
                &self.ranks,
                self.layout,
                round,
                self.timeout,
            )
            .map_err(kernel)?;
        // Every tile of every received slot waited for on the device, in one launch: the host
        // reads one word per transfer, not one per tile.
        let slots: Vec<u16> = receives.iter().map(|&(slot, ..)| slot).collect();
        let words = self.ranks[self.rank as usize].words;
        let missing = self
            .gpu
            .await_arrivals(words, &slots, self.layout, round, self.timeout)
            .map_err(kernel)?;
        if let Some(pair) = missing {
            let tiles = self.layout.tiles();
            let tile = u64::from(pair) % tiles;
            let what = match receives.get((u64::from(pair) / tiles) as usize) {
                Some(&(slot, expert, ..)) => {
                    format!("tile {tile} of expert {expert} for slot {slot}")
                }
                None => format!("arrival {pair}, beyond this transfer's tiles"),
            };
            return Err(RuntimeError::Timeout {
                waited: self.timeout,
                what,
            });
        }
        let received = slots
            .iter()
            .map(|&slot| self.pointer(self.rank, Region::Slot { slot }))
            .collect::<Result<Vec<_>, _>>()?;
        // Every received copy summed on the device in one launch; only the sums come back.
        let found = self.device_checksums(&received)?;
        for (&(slot, expert, master, master_index), found) in receives.iter().zip(found) {
            let expected = self
                .gpu
                .read_word(
                    self.ranks[master as usize].words,
                    self.layout.checksum_word(master_index),
                )
                .map_err(kernel)?;
            if found != expected {
                return Err(XferError::ChecksumMismatch {
                    expert,
                    rank: self.rank,
                    slot,
                    expected,
                    found,
                }
                .into());
            }
            self.slots
                .set(self.rank, slot, SlotState::Ready { expert })?;
        }
        Ok(tasks.bytes_stored())
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        token: u64,
    ) -> Result<(), RuntimeError> {
        gradient_handoff::reduce(self, schedule, token)
    }

    fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }
}

/// The CUDA IPC plane's side of the gradient hand-off (`crate::gradient_handoff`): the words are
/// the ranks' signal words in device memory, and the masters are summed on the device.
impl HandoffPlane for CudaPeerPlane {
    fn slot_readiness(&self) -> &SlotReadiness {
        &self.slots
    }

    fn store_word(&self, rank: u32, slot: u16, value: u64) -> Result<(), RuntimeError> {
        // The synchronous copies before it put the word after the bytes.
        let words = self.ranks[rank as usize].words;
        self.gpu
            .write_word(words, self.layout.gradient_word(slot), value)
            .map_err(kernel)
    }

    fn wait_word(
        &self,
        rank: u32,
        slot: u16,
        value: u64,
        _writer: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), RuntimeError> {
        self.wait_signal(rank, self.layout.gradient_word(slot), value, what)
    }

    fn sum_into_masters(
        &mut self,
        schedule: &TransferSchedule,
    ) -> (usize, Result<(), RuntimeError>) {
        // One launch sums every master here: all of them, or none.
        let masters = schedule
            .fanouts()
            .iter()
            .filter(|f| f.master == self.rank)
            .count();
        match self.sum_all_masters(schedule) {
            Ok(()) => (masters, Ok(())),
            Err(error) => (0, Err(error)),
        }
    }

    fn empty_replica(&mut self, rank: u32, slot: u16) -> Result<(), RuntimeError> {
        self.slots.set(rank, slot, SlotState::Empty)
    }
}

impl CudaPeerPlane {
    /// Sums every replica of `schedule` into this rank's masters on the device.
    fn sum_all_masters(&mut self, schedule: &TransferSchedule) -> Result<(), RuntimeError> {
        let (mut jobs, replicas) = reduce_jobs(schedule, |rank, region| {
            self.pointer(rank, region).unwrap_or(0)
        })
        .map_err(kernel)?;
        let own = self.ranks[self.rank as usize].masters;
        let span = u64::from(self.layout.masters) * self.layout.state_bytes;
        jobs.retain(|job| (own..own + span).contains(&job.master));
        self.gpu.reduce_peer(&jobs, &replicas).map_err(kernel)?;
        // The masters changed: their kept checksums no longer hold.
        for fanout in schedule.fanouts().iter().filter(|f| f.master == self.rank) {
            if let Some(sum) = self.master_sums.get_mut(fanout.master_index as usize) {
                *sum = None;
            }
        }
        Ok(())
    }
}
