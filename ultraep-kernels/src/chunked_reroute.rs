//! The chunked reroute on a GPU: [`crate::sources::REROUTE_CHUNKED`]'s three passes, one block
//! per chunk of ids, with the semantics of [`crate::reference::reroute`].

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::gpu::{BLOCK, CHUNK, DeviceReroute, Gpu, driver};
use crate::reference::reroute::{NO_INSTANCE, RerouteTable};
use crate::{KernelError, launch_checks, sources};

impl Gpu {
    /// The instance of every id of one source, by the chunked kernel, and how many could not be
    /// placed; equal to [`Gpu::reroute`] and to the CPU reference.
    pub fn reroute_chunked(
        &self,
        ids: &[u32],
        table: &RerouteTable,
    ) -> Result<(Vec<u32>, u32), KernelError> {
        self.run_reroute(ids, table, |resident, out, invalid| {
            self.launch_reroute_chunked(resident, out, invalid)
        })
    }

    /// Launches the three passes on device-resident inputs; `invalid` is zeroed first.
    pub fn launch_reroute_chunked(
        &self,
        input: &mut DeviceReroute,
        out: &mut CudaSlice<u32>,
        invalid: &mut CudaSlice<u32>,
    ) -> Result<(), KernelError> {
        if out.len() < input.n as usize || invalid.is_empty() {
            return Err(KernelError::InvalidInput(
                "reroute buffers are too short".into(),
            ));
        }
        let stream = self.stream();
        stream.memset_zeros(invalid).map_err(driver)?;
        if input.n == 0 {
            return Ok(());
        }
        if input.experts == 0 {
            // No id names an expert: every one is placed nowhere, as in the reference and the
            // single-block kernel (this returned early and left the output poisoned).
            stream
                .memcpy_htod(&vec![NO_INSTANCE; input.n as usize], out)
                .map_err(driver)?;
            stream.memcpy_htod(&[input.n], invalid).map_err(driver)?;
            return Ok(());
        }
        let chunks = input.n.div_ceil(CHUNK);
        let warps = BLOCK / 32;
        let count_shared =
            launch_checks::shared_words("the chunked reroute's count", u64::from(input.experts))?;
        let assign_shared = launch_checks::shared_words(
            "the chunked reroute's assignment",
            u64::from(input.experts) * u64::from(1 + warps),
        )?;
        let count = self.function_named(&sources::REROUTE_CHUNKED, "ultraep_reroute_count")?;
        let scan = self.function_named(&sources::REROUTE_CHUNKED, "ultraep_reroute_scan")?;
        let assign = self.function_named(&sources::REROUTE_CHUNKED, "ultraep_reroute_assign")?;

        let mut launch = stream.launch_builder(&count);
        launch
            .arg(&input.ids)
            .arg(&input.n)
            .arg(&input.experts)
            .arg(&CHUNK)
            .arg(&mut input.chunk_counts);
        let config = LaunchConfig {
            grid_dim: (chunks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: count_shared,
        };
        // SAFETY: arguments match the kernel's signature; chunk_counts holds chunks x experts
        // words (allocated by upload_reroute for these ids), ids holds n words.
        unsafe { launch.launch(config) }.map_err(driver)?;

        let mut launch = stream.launch_builder(&scan);
        launch
            .arg(&mut input.chunk_counts)
            .arg(&chunks)
            .arg(&input.experts);
        let config = LaunchConfig {
            grid_dim: (input.experts.div_ceil(BLOCK), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; one thread per expert walks the chunks.
        unsafe { launch.launch(config) }.map_err(driver)?;

        let mut launch = stream.launch_builder(&assign);
        launch
            .arg(&input.ids)
            .arg(&input.n)
            .arg(&input.experts)
            .arg(&CHUNK)
            .arg(&input.chunk_counts)
            .arg(&input.offsets)
            .arg(&input.entries)
            .arg(out)
            .arg(invalid);
        let config = LaunchConfig {
            grid_dim: (chunks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: assign_shared,
        };
        // SAFETY: arguments match the kernel's signature; offsets has experts + 1 entries, out at
        // least n words (checked), the block size a multiple of 32 (every lane joins the warp
        // match), shared memory as the kernel's documentation says.
        unsafe { launch.launch(config) }.map_err(driver)?;
        Ok(())
    }
}
