//! [`CudaBackend`]: every rank of a group emulated on one GPU, moved and reduced by the kernels
//! of `ultraep-kernels` (feature `cuda`).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use ultraep_kernels::gpu::{DeviceRanks, Gpu};
use ultraep_xfer::{Region, SlotState, TileTaskList, TransferSchedule, XferError};

use crate::RuntimeError;
use crate::backend::{Backend, MemoryShape};
use crate::slot_readiness::SlotReadiness;

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
    /// What every slot of every rank holds.
    slots: SlotReadiness,
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
            slots: SlotReadiness::new(0..shape.masters_per_rank.len() as u32, shape.slots_per_rank),
            fail_at_task: None,
        })
    }
}

fn kernel(error: ultraep_kernels::KernelError) -> RuntimeError {
    RuntimeError::Backend(error.to_string())
}

impl Backend for CudaBackend {
    fn local_ranks(&self) -> Range<u32> {
        self.slots.local()
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
        self.slots.require_ready(rank, slot, None)?;
        self.gpu
            .read_region(&self.ranks, rank, Region::Slot { slot })
            .map(Cow::Owned)
            .map_err(kernel)
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
        self.slots.set(rank, slot, SlotState::Ready { expert })
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        let slots = self.slots.begin_receiving(schedule)?;
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
                self.slots.set(
                    rank,
                    slot,
                    SlotState::Ready {
                        expert: fanout.expert,
                    },
                )?;
            }
        }
        Ok(tasks.bytes_stored())
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        _token: u64,
    ) -> Result<(), RuntimeError> {
        self.slots.require_every_destination(schedule)?;
        self.slots.require_replicas_ready(schedule)?;
        self.gpu
            .reduce_resident(schedule, &mut self.ranks)
            .map_err(kernel)?;
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.slots.set(rank, slot, SlotState::Empty)?;
            }
        }
        Ok(())
    }

    fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }
}
