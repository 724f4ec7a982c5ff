//! Rank memory that lives on the GPU: allocated zeroed, written and read one region (an expert
//! state) at a time, moved by the tile streamer, and reduced in place. What a CUDA backend keeps
//! from one step to the next, instead of uploading every rank's memory for every transfer.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use ultraep_xfer::{Region, TileTaskList, TransferSchedule};

use crate::KernelError;
use crate::gpu::{DeviceRanks, Gpu, driver};
use crate::reference::reduce::reduce_jobs;

/// Where a region lies: which buffer, and the byte range in it.
struct Place {
    slots: bool,
    rank: usize,
    start: usize,
    end: usize,
}

impl DeviceRanks {
    fn place(&self, rank: u32, region: Region) -> Result<Place, KernelError> {
        let state = self.state_bytes as usize;
        let (slots, index) = match region {
            Region::Master { index } => (false, index as usize),
            Region::Slot { slot } => (true, usize::from(slot)),
        };
        let buffers = if slots { &self.slots } else { &self.masters };
        let start = index * state;
        let end = start + state;
        match buffers.get(rank as usize) {
            // Buffers of ranks without regions hold one padding byte: no region fits there.
            Some(buffer) if end <= buffer.len() => Ok(Place {
                slots,
                rank: rank as usize,
                start,
                end,
            }),
            _ => Err(KernelError::InvalidInput(format!(
                "rank {rank} has no {region:?} on the device"
            ))),
        }
    }

    /// The device address of `region` of `rank`.
    pub(crate) fn address(
        &self,
        rank: u32,
        region: Region,
        stream: &Arc<CudaStream>,
    ) -> Result<u64, KernelError> {
        let place = self.place(rank, region)?;
        Ok(self.buffer(&place).device_ptr(stream).0 + place.start as u64)
    }

    fn buffer(&self, place: &Place) -> &CudaSlice<u8> {
        if place.slots {
            &self.slots[place.rank]
        } else {
            &self.masters[place.rank]
        }
    }

    fn buffer_mut(&mut self, place: &Place) -> &mut CudaSlice<u8> {
        if place.slots {
            &mut self.slots[place.rank]
        } else {
            &mut self.masters[place.rank]
        }
    }
}

impl Gpu {
    /// Zeroed device memory for ranks with `masters_per_rank[r]` master states and `slots` slots
    /// each, every state `state_bytes` long (a multiple of 16, the streamer's vector width).
    pub fn alloc_ranks(
        &self,
        masters_per_rank: &[u32],
        slots: u16,
        state_bytes: u64,
    ) -> Result<DeviceRanks, KernelError> {
        if state_bytes == 0 || !state_bytes.is_multiple_of(16) {
            return Err(KernelError::InvalidInput(
                "expert states must be a positive multiple of 16 bytes".into(),
            ));
        }
        let stream = self.stream();
        let zeroed =
            |regions: u64| stream.alloc_zeros::<u8>((regions * state_bytes).max(1) as usize);
        let mut masters = Vec::with_capacity(masters_per_rank.len());
        let mut slot_buffers = Vec::with_capacity(masters_per_rank.len());
        for &count in masters_per_rank {
            masters.push(zeroed(u64::from(count)).map_err(driver)?);
            slot_buffers.push(zeroed(u64::from(slots)).map_err(driver)?);
        }
        let bases = |buffers: &[CudaSlice<u8>]| -> Vec<u64> {
            buffers.iter().map(|b| b.device_ptr(stream).0).collect()
        };
        let master_bases = stream.clone_htod(&bases(&masters)).map_err(driver)?;
        let slot_bases = stream.clone_htod(&bases(&slot_buffers)).map_err(driver)?;
        Ok(DeviceRanks {
            masters,
            slots: slot_buffers,
            master_bases,
            slot_bases,
            state_bytes,
        })
    }

    /// Copies `bytes` (one whole expert state) into `region` of `rank`.
    pub fn write_region(
        &self,
        ranks: &mut DeviceRanks,
        rank: u32,
        region: Region,
        bytes: &[u8],
    ) -> Result<(), KernelError> {
        let place = ranks.place(rank, region)?;
        if bytes.len() != place.end - place.start {
            return Err(KernelError::InvalidInput(format!(
                "{} bytes for a {}-byte expert state",
                bytes.len(),
                place.end - place.start
            )));
        }
        let (start, end) = (place.start, place.end);
        let mut view = ranks.buffer_mut(&place).slice_mut(start..end);
        self.stream().memcpy_htod(bytes, &mut view).map_err(driver)
    }

    /// The bytes of `region` of `rank` (waits for the work queued before).
    pub fn read_region(
        &self,
        ranks: &DeviceRanks,
        rank: u32,
        region: Region,
    ) -> Result<Vec<u8>, KernelError> {
        let place = ranks.place(rank, region)?;
        let view = ranks.buffer(&place).slice(place.start..place.end);
        self.stream().clone_dtoh(&view).map_err(driver)
    }

    /// Executes `tasks` on device-resident `ranks` and waits for it.
    pub fn stream_resident(
        &self,
        tasks: &TileTaskList,
        ranks: &mut DeviceRanks,
    ) -> Result<(), KernelError> {
        for task in tasks.tasks() {
            ranks.place(
                task.source_rank,
                ultraep_xfer::region_of(task.source_region),
            )?;
            for destination in tasks.destinations_of(task) {
                ranks.place(
                    destination.rank,
                    ultraep_xfer::region_of(destination.region),
                )?;
            }
        }
        let mut device_tasks = self.upload_tasks(tasks)?;
        self.run_tiles(&mut device_tasks, ranks)?;
        self.stream().synchronize().map_err(driver)
    }

    /// Sums every replica's FP32 gradient of `schedule` (a schedule of the gradient state) into
    /// its master's, in place, in the order of [`crate::reference::reduce::reduce`], and zeroes
    /// the replicas.
    pub fn reduce_resident(
        &self,
        schedule: &TransferSchedule,
        ranks: &mut DeviceRanks,
    ) -> Result<(), KernelError> {
        let stream = self.stream();
        for fanout in schedule.fanouts() {
            ranks.place(
                fanout.master,
                Region::Master {
                    index: fanout.master_index,
                },
            )?;
            for &(rank, slot) in &fanout.destinations {
                ranks.place(rank, Region::Slot { slot })?;
            }
        }
        let (jobs, replicas) = reduce_jobs(schedule, |rank, region| {
            // Every region was checked above.
            ranks.address(rank, region, stream).unwrap_or(0)
        })?;
        self.reduce_peer(&jobs, &replicas)
    }
}
