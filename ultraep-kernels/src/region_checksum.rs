//! Checksums of expert states computed where the states lie, on the device: a transfer is
//! verified by reading back 8 bytes per region instead of the region itself.
//!
//! The kernel ([`crate::sources::REGION_CHECKSUM`]) adds the same per-word terms as
//! [`ultraep_xfer::Checksum`], in whatever order its threads finish; the sum is a wrapping
//! integer sum, so the result equals the CPU's bit for bit on every run.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use ultraep_xfer::{Checksum, Region};

use crate::gpu::{BLOCK, DeviceRanks, Gpu, driver};
use crate::{KernelError, launch_checks, sources};

/// The most regions one launch covers: the grid's y dimension.
const REGIONS_PER_LAUNCH: usize = 65_535;

/// 16-byte vectors one thread sums before its block's share of a region is done, when the grid
/// is not spread further to fill the device.
const VECTORS_PER_THREAD: u64 = 4;

impl Gpu {
    /// The [`ultraep_xfer::checksum`] of each region of `bytes` bytes at the device addresses
    /// `regions` (memory of this context, or a peer's opened through IPC), computed on the
    /// device; `bytes` is a positive multiple of 16. Waits for the work queued before.
    pub fn checksums_at(&self, regions: &[u64], bytes: u64) -> Result<Vec<u64>, KernelError> {
        launch_checks::checksum_regions(regions.len(), bytes)?;
        if regions.is_empty() {
            return Ok(Vec::new());
        }
        let function = self.function(&sources::REGION_CHECKSUM)?;
        let stream = self.stream();
        let vectors = bytes / 16;
        let wanted_blocks = u64::from(self.multiprocessors()?) * 8;
        let mut sums = Vec::with_capacity(regions.len());
        for chunk in regions.chunks(REGIONS_PER_LAUNCH) {
            let count = chunk.len() as u64;
            // Enough blocks per region to fill the device, but no block with less than a few
            // vectors per thread.
            let per_region = vectors
                .div_ceil(u64::from(BLOCK) * VECTORS_PER_THREAD)
                .min(wanted_blocks.div_ceil(count))
                .clamp(1, 65_535);
            let addresses = stream.clone_htod(chunk).map_err(driver)?;
            let mut terms = stream.alloc_zeros::<u64>(chunk.len()).map_err(driver)?;
            let config = LaunchConfig {
                grid_dim: (per_region as u32, chunk.len() as u32, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&function);
            launch.arg(&addresses).arg(&bytes).arg(&mut terms);
            // SAFETY: arguments match the kernel's signature; every address names `bytes`
            // readable bytes of device memory (the caller's contract, as for `read_device`),
            // `bytes` is a multiple of 16 (checked), and `terms` has one word per region.
            unsafe { launch.launch(config) }.map_err(driver)?;
            let back = stream.clone_dtoh(&terms).map_err(driver)?;
            sums.extend(
                back.into_iter()
                    .map(|terms| Checksum::from_terms(terms, bytes)),
            );
        }
        Ok(sums)
    }

    /// The checksum of each `(rank, region)` of device-resident `ranks`, computed on the device.
    pub fn region_checksums(
        &self,
        ranks: &DeviceRanks,
        regions: &[(u32, Region)],
    ) -> Result<Vec<u64>, KernelError> {
        let addresses = regions
            .iter()
            .map(|&(rank, region)| ranks.address(rank, region, self.stream()))
            .collect::<Result<Vec<_>, _>>()?;
        self.checksums_at(&addresses, ranks.state_bytes)
    }
}
