//! Where expert weights and gradients live and how they move: the engine's data plane.
//!
//! [`Backend`] is what the engine needs of it: the memory of the engine's *local* ranks (one rank
//! in a process-per-GPU deployment) and the means to take part in a transfer with the others.
//! Two implementations ship: [`crate::HostPlane`] (CPU memory that peers map: ranks that are
//! threads of one process, or processes of one host over shared memory) and [`CudaBackend`] (every
//! rank local, emulated as separate buffers of one GPU, moved by the tile-streaming kernel and
//! reduced by the reduction kernel of `ultraep-kernels`).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use ultraep_kernels::gpu::{DeviceRanks, Gpu};
use ultraep_xfer::{Region, SlotState, TileTaskList, TransferSchedule, XferError};

use crate::RuntimeError;

/// The shape of one backend memory: every rank's master states and slots, and which ranks'
/// memory this backend holds.
#[derive(Debug, Clone)]
pub struct MemoryShape<'a> {
    /// What the memory holds (`"weights"` or `"gradients"`): it names shared-memory segments.
    pub purpose: &'static str,
    /// The ranks whose memory this backend holds; it reaches the others only as peers.
    pub local: Range<u32>,
    /// Master expert states on every rank of the group (every layer's).
    pub masters_per_rank: &'a [u32],
    /// Redundant slots per rank.
    pub slots_per_rank: u16,
    /// Bytes of one state (weights, or an FP32 gradient).
    pub state_bytes: u64,
    /// The transfer tile (the CPU transport locks memory in tile-sized blocks).
    pub tile_bytes: u32,
    /// Worker threads (CPU).
    pub workers: usize,
}

/// The bit that marks a gradient hand-off word as acknowledged by the master's rank: the host
/// plane and the CUDA IPC plane hand replica gradients over with the same words.
pub(crate) const ACKNOWLEDGED: u64 = 1 << 63;

/// How [`Backend::start_distribute`] left a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// It is complete: this many bytes stored.
    Done(u64),
    /// It runs on the backend's workers; [`Backend::finish_distribute`] waits for it.
    Running,
}

/// Rank memory and the means to move expert state between ranks.
///
/// A backend never lets a half-written slot be read: a slot a distribution writes is not ready
/// until every byte has landed and been verified, and stays not ready if the distribution fails.
pub trait Backend {
    /// The ranks whose memory this backend holds.
    fn local_ranks(&self) -> Range<u32>;
    /// Sets master state `index` of `rank`.
    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError>;
    /// Master state `index` of `rank`: borrowed in place where the memory is the host's.
    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError>;
    /// The state in slot `slot` of `rank`, if it holds a complete copy: borrowed in place where
    /// the memory is the host's.
    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError>;
    /// Fills slot `slot` of `rank` with `bytes` of `expert` and marks it ready (a replica's
    /// gradient, which the next reduction hands to its master's rank).
    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), RuntimeError>;
    /// Whether [`Backend::distribute`] reads the tile task list. A backend that does not (the
    /// host-driven one works from the schedule) spares the engine building it; it then gets an
    /// empty list.
    fn uses_tile_tasks(&self) -> bool {
        true
    }
    /// Executes this backend's share of a weight distribution (the tiles its ranks send or
    /// forward, and the wait for the slots they receive); returns the bytes the whole
    /// distribution stores.
    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError>;
    /// Starts this backend's share of a weight distribution; [`Backend::finish_distribute`] ends
    /// it. A backend that cannot overlap transfers with the caller's work runs it whole here.
    fn start_distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<Started, RuntimeError> {
        self.distribute(schedule, tasks).map(Started::Done)
    }
    /// Finishes the distribution [`Backend::start_distribute`] left running; returns the bytes
    /// it stores.
    fn finish_distribute(&mut self) -> Result<u64, RuntimeError> {
        Err(RuntimeError::Backend("no distribution is running".into()))
    }
    /// Sums the replicas' FP32 states of `schedule` into their masters' in the documented order
    /// (for the masters this backend holds) and empties the replica slots (those it holds);
    /// every replica slot must be ready, or nothing changes. `token` names the reduction the same
    /// on every rank, so that ranks hand gradients over without sending the name.
    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        token: u64,
    ) -> Result<(), RuntimeError>;
    /// Copies the state staged in slot `slot` of local rank `rank` into its master `index`: how
    /// a layout switch installs a master that moved to the rank. The slot must be ready. A
    /// backend whose memory is elsewhere (the host-driven one) leaves the copy to its caller.
    fn install_staged(&mut self, rank: u32, slot: u16, index: u32) -> Result<(), RuntimeError> {
        let staged = self.read_slot(rank, slot)?.into_owned();
        self.write_master(rank, index, &staged)
    }
    /// Makes the next distribution fail at this backend's tile task `task`: the hook behind
    /// `Engine::inject_transfer_failure` (feature `fault-injection`). Does nothing by default.
    #[doc(hidden)]
    fn inject_failure_at(&mut self, _task: usize) {}
}

/// Ranks emulated on one GPU: every rank's masters and slots are device buffers of their own,
/// weights move by the persistent tile-streaming kernel, gradients are reduced in place by the
/// reduction kernel, and every copy is verified against its master by checksums computed on the
/// device.
///
/// ```no_run
/// use std::sync::Arc;
/// use ultraep_kernels::gpu::Gpu;
/// use ultraep_runtime::{CudaBackend, Engine, EngineConfig, RuntimeError};
///
/// fn on_gpu(config: EngineConfig, gpu: Arc<Gpu>) -> Result<Engine<CudaBackend>, RuntimeError> {
///     Engine::with_backend(config, |shape| CudaBackend::new(Arc::clone(&gpu), shape))
/// }
/// ```
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    ranks: DeviceRanks,
    slot_states: Vec<Vec<SlotState>>,
    fail_at_task: Option<usize>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Zeroed device memory of `shape` on `gpu`; every rank of the group must be local.
    pub fn new(gpu: Arc<Gpu>, shape: &MemoryShape<'_>) -> Result<Self, RuntimeError> {
        let ranks = shape.masters_per_rank.len() as u32;
        if shape.local != (0..ranks) {
            return Err(RuntimeError::InvalidConfig(format!(
                "CudaBackend emulates every rank on one GPU; it cannot hold ranks {:?} of {ranks} \
                 alone",
                shape.local
            )));
        }
        let ranks = gpu
            .alloc_ranks(
                shape.masters_per_rank,
                shape.slots_per_rank,
                shape.state_bytes,
            )
            .map_err(kernel)?;
        Ok(Self {
            gpu,
            ranks,
            slot_states: vec![
                vec![SlotState::Empty; usize::from(shape.slots_per_rank)];
                shape.masters_per_rank.len()
            ],
            fail_at_task: None,
        })
    }

    fn slot_state(&self, rank: u32, slot: u16) -> Result<SlotState, RuntimeError> {
        self.slot_states
            .get(rank as usize)
            .and_then(|states| states.get(usize::from(slot)))
            .copied()
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!("rank {rank} has no slot {slot} on the GPU"))
            })
    }

    fn set_slot(&mut self, rank: u32, slot: u16, state: SlotState) {
        if let Some(entry) = self
            .slot_states
            .get_mut(rank as usize)
            .and_then(|states| states.get_mut(usize::from(slot)))
        {
            *entry = state;
        }
    }
}

fn kernel(error: ultraep_kernels::KernelError) -> RuntimeError {
    RuntimeError::Backend(error.to_string())
}

impl Backend for CudaBackend {
    fn local_ranks(&self) -> Range<u32> {
        0..self.slot_states.len() as u32
    }

    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.gpu
            .write_region(&mut self.ranks, rank, Region::Master { index }, bytes)
            .map_err(kernel)
    }

    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.gpu
            .read_region(&self.ranks, rank, Region::Master { index })
            .map(Cow::Owned)
            .map_err(kernel)
    }

    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        match self.slot_state(rank, slot)? {
            SlotState::Ready { .. } => self
                .gpu
                .read_region(&self.ranks, rank, Region::Slot { slot })
                .map(Cow::Owned)
                .map_err(kernel),
            _ => Err(RuntimeError::SlotNotReady { rank, slot }),
        }
    }

    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), RuntimeError> {
        self.gpu
            .write_region(&mut self.ranks, rank, Region::Slot { slot }, bytes)
            .map_err(kernel)?;
        self.set_slot(rank, slot, SlotState::Ready { expert });
        Ok(())
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        let mut slots = 0;
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.slot_state(rank, slot)?;
                self.set_slot(
                    rank,
                    slot,
                    SlotState::NotReady {
                        expert: fanout.expert,
                    },
                );
                slots += 1;
            }
        }
        // An injected failure runs the tasks before it and stops: a transfer cut off midway.
        if let Some(task) = self.fail_at_task.take() {
            let mut partial = tasks.clone();
            partial.truncate(task);
            self.gpu
                .stream_resident(&partial, &mut self.ranks)
                .map_err(kernel)?;
            return Err(XferError::TransferFailed {
                task,
                reason: "injected failure".into(),
                slots,
            }
            .into());
        }
        self.gpu
            .stream_resident(tasks, &mut self.ranks)
            .map_err(kernel)?;
        // Every master and every copy summed on the device, in one launch: 8 bytes come back
        // per region, not the region.
        let mut regions = Vec::new();
        for fanout in schedule.fanouts() {
            regions.push((
                fanout.master,
                Region::Master {
                    index: fanout.master_index,
                },
            ));
            regions.extend(
                fanout
                    .destinations
                    .iter()
                    .map(|&(rank, slot)| (rank, Region::Slot { slot })),
            );
        }
        let sums = self
            .gpu
            .region_checksums(&self.ranks, &regions)
            .map_err(kernel)?;
        if sums.len() != regions.len() {
            return Err(kernel(ultraep_kernels::KernelError::Device(format!(
                "{} checksums for {} regions",
                sums.len(),
                regions.len()
            ))));
        }
        let mut sums = sums.into_iter();
        for fanout in schedule.fanouts() {
            let expected = sums.next().unwrap_or_default();
            for &(rank, slot) in &fanout.destinations {
                let found = sums.next().unwrap_or_default();
                if found != expected {
                    return Err(XferError::ChecksumMismatch {
                        expert: fanout.expert,
                        rank,
                        slot,
                        expected,
                        found,
                    }
                    .into());
                }
                self.set_slot(
                    rank,
                    slot,
                    SlotState::Ready {
                        expert: fanout.expert,
                    },
                );
            }
        }
        Ok(tasks.bytes_stored())
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        _token: u64,
    ) -> Result<(), RuntimeError> {
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if self.slot_state(rank, slot)?
                    != (SlotState::Ready {
                        expert: fanout.expert,
                    })
                {
                    return Err(RuntimeError::SlotNotReady { rank, slot });
                }
            }
        }
        self.gpu
            .reduce_resident(schedule, &mut self.ranks)
            .map_err(kernel)?;
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.set_slot(rank, slot, SlotState::Empty);
            }
        }
        Ok(())
    }

    fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }
}
