//! The engine on CUDA IPC: one process per GPU, peers' memory opened from IPC handles
//! (feature `cuda`).

use std::sync::Arc;

use ultraep_kernels::gpu::Gpu;

use super::Engine;
use crate::{CudaPeerPlane, EngineConfig, PlaneOptions, RuntimeError, StepId};

impl Engine<CudaPeerPlane> {
    /// The device address of the weights instance `instance` of `step`'s plan computes with, on
    /// this rank's GPU: its master's region, or its replica's slot (refused once stale, like
    /// [`Engine::instance_weights`]). Read in place by the framework's expert kernels; valid
    /// until the next call that moves weights.
    pub fn instance_pointer(&self, step: StepId, instance: u32) -> Result<u64, RuntimeError> {
        let (rank, region) = self.instance_region(step, instance)?;
        self.weights.region_pointer(rank, region)
    }

    /// The engine of rank `rank` in a group of processes with a GPU each (or sharing GPUs): its
    /// memory on `gpu`, its peers' opened from CUDA IPC handles all-gathered through
    /// `collective` (whose members are the group's ranks; `ShmCollective` on one host).
    pub fn cuda_ipc(
        config: EngineConfig,
        gpu: Arc<Gpu>,
        rank: u32,
        collective: &mut dyn crate::Collective,
        options: PlaneOptions,
    ) -> Result<Self, RuntimeError> {
        Self::for_ranks(config, rank..rank + 1, |shape| {
            CudaPeerPlane::new(Arc::clone(&gpu), shape, collective, options)
        })
    }
}
