//! The kernels on a GPU: safe wrappers that take host data, run a kernel, and return host data.
//!
//! A [`Gpu`] holds one context and stream; each kernel is compiled by NVRTC and loaded the first
//! time it is used, then reused. On one GPU, ranks are emulated as separate device buffers, so the
//! tile streamer moves real bytes between real allocations. A missing driver, a device that cannot
//! be opened or a failing launch is a [`KernelError`], never a panic.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg, sys,
};
use ultraep_xfer::TileTaskList;

use crate::reference::reduce::ReduceJob;
use crate::reference::reroute::RerouteTable;
use crate::reference::stream::RankMemory;
use crate::{KernelError, KernelSource, compile, sources};

/// Threads per block for every kernel.
const BLOCK: u32 = 256;

fn driver(error: impl std::fmt::Debug) -> KernelError {
    KernelError::Device(format!("{error:?}"))
}

/// One GPU, its stream, and the kernels loaded so far.
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: [OnceLock<Result<Arc<CudaModule>, KernelError>>; 4],
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").finish_non_exhaustive()
    }
}

/// Whether the CUDA driver library can be loaded here.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library and reports whether it loaded.
    unsafe { sys::is_culib_present() }
}

impl Gpu {
    /// Opens GPU `ordinal`.
    pub fn open(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_available() {
            return Err(KernelError::DriverUnavailable);
        }
        let context = CudaContext::new(ordinal).map_err(driver)?;
        let stream = context.default_stream();
        Ok(Self {
            context,
            stream,
            modules: Default::default(),
        })
    }

    /// Streaming multiprocessors: how many blocks a persistent grid runs.
    pub fn multiprocessors(&self) -> Result<u32, KernelError> {
        let count = self
            .context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver)?;
        Ok(count.max(1) as u32)
    }

    /// The stream every wrapper runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn function(&self, kernel: &KernelSource) -> Result<CudaFunction, KernelError> {
        let index = sources::ALL
            .iter()
            .position(|k| k.name == kernel.name)
            .ok_or_else(|| KernelError::InvalidInput(format!("unknown kernel {}", kernel.name)))?;
        let module = self.modules[index]
            .get_or_init(|| {
                let ptx = compile(kernel)?;
                self.context.load_module(ptx).map_err(driver)
            })
            .clone()?;
        module.load_function(kernel.entry_points[0]).map_err(driver)
    }

    /// Counts of every expert among a rank's router ids (the [`crate::reference::histogram`]
    /// semantics); ids naming no expert are an error.
    pub fn histogram(&self, ids: &[u32], experts: u32) -> Result<Vec<u32>, KernelError> {
        let function = self.function(&sources::HISTOGRAM)?;
        let ids_device = self.stream.clone_htod(ids).map_err(driver)?;
        let mut counts = self
            .stream
            .alloc_zeros::<u32>(experts as usize + 1)
            .map_err(driver)?;
        let n = ids.len() as u32;
        let blocks = n.div_ceil(BLOCK).clamp(1, 1024);
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: experts * 4,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&ids_device)
            .arg(&n)
            .arg(&experts)
            .arg(&mut counts);
        // SAFETY: the arguments match the kernel's signature and every buffer is as long as the
        // kernel reads or writes (ids: n, counts: experts + 1; shared: experts words).
        unsafe { launch.launch(config) }.map_err(driver)?;
        let mut host = self.stream.clone_dtoh(&counts).map_err(driver)?;
        let invalid = host.pop().unwrap_or(0);
        if invalid > 0 {
            return Err(KernelError::InvalidExpertIds {
                count: invalid,
                experts,
            });
        }
        Ok(host)
    }

    /// The instance of every id of one source (the [`crate::reference::reroute`] semantics), and
    /// how many could not be placed.
    pub fn reroute(
        &self,
        ids: &[u32],
        table: &RerouteTable,
    ) -> Result<(Vec<u32>, u32), KernelError> {
        let function = self.function(&sources::REROUTE)?;
        let experts = table.offsets.len().saturating_sub(1) as u32;
        let ids_device = self.stream.clone_htod(ids).map_err(driver)?;
        let offsets = self.stream.clone_htod(&table.offsets).map_err(driver)?;
        let entries_bytes: &[u8] = bytemuck::cast_slice(&table.entries);
        let entries = self.stream.clone_htod(entries_bytes).map_err(driver)?;
        let mut out = self
            .stream
            .clone_htod(&vec![0xdead_beef_u32; ids.len().max(1)])
            .map_err(driver)?;
        let mut invalid = self.stream.alloc_zeros::<u32>(1).map_err(driver)?;
        let n = ids.len() as u32;
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: (experts + BLOCK) * 4,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&ids_device)
            .arg(&n)
            .arg(&experts)
            .arg(&offsets)
            .arg(&entries)
            .arg(&mut out)
            .arg(&mut invalid);
        // SAFETY: arguments match the kernel's signature; offsets has experts + 1 entries, the
        // entries the table's, out n words; shared memory is experts + BLOCK words.
        unsafe { launch.launch(config) }.map_err(driver)?;
        let mut instances = self.stream.clone_dtoh(&out).map_err(driver)?;
        instances.truncate(ids.len());
        let invalid = self.stream.clone_dtoh(&invalid).map_err(driver)?;
        Ok((instances, invalid.first().copied().unwrap_or(0)))
    }

    /// Executes `tasks` on the ranks' memory (copied to one device buffer per rank and region
    /// kind, then back), with a persistent grid of one block per multiprocessor.
    pub fn stream_tiles(
        &self,
        tasks: &TileTaskList,
        memory: &mut [RankMemory],
        state_bytes: u64,
    ) -> Result<(), KernelError> {
        if !state_bytes.is_multiple_of(16) {
            return Err(KernelError::InvalidInput(
                "expert states must be a multiple of 16 bytes".into(),
            ));
        }
        let function = self.function(&sources::TILE_STREAM)?;
        let mut masters: Vec<CudaSlice<u8>> = Vec::with_capacity(memory.len());
        let mut slots: Vec<CudaSlice<u8>> = Vec::with_capacity(memory.len());
        for rank in memory.iter() {
            masters.push(
                self.stream
                    .clone_htod(&pad(&rank.masters))
                    .map_err(driver)?,
            );
            slots.push(self.stream.clone_htod(&pad(&rank.slots)).map_err(driver)?);
        }
        let bases = |buffers: &[CudaSlice<u8>]| -> Vec<u64> {
            buffers
                .iter()
                .map(|b| b.device_ptr(&self.stream).0)
                .collect()
        };
        let master_bases = self.stream.clone_htod(&bases(&masters)).map_err(driver)?;
        let slot_bases = self.stream.clone_htod(&bases(&slots)).map_err(driver)?;
        let task_bytes: &[u8] = bytemuck::cast_slice(&tasks.tasks);
        let destination_bytes: &[u8] = bytemuck::cast_slice(&tasks.destinations);
        let task_buffer = self.stream.clone_htod(&pad(task_bytes)).map_err(driver)?;
        let destination_buffer = self
            .stream
            .clone_htod(&pad(destination_bytes))
            .map_err(driver)?;
        let mut flags = self
            .stream
            .alloc_zeros::<u32>(tasks.flag_count.max(1) as usize)
            .map_err(driver)?;
        let mut next = self.stream.alloc_zeros::<u32>(1).map_err(driver)?;
        let task_count = tasks.tasks.len() as u32;
        let config = LaunchConfig {
            grid_dim: (self.multiprocessors()?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&task_buffer)
            .arg(&task_count)
            .arg(&destination_buffer)
            .arg(&master_bases)
            .arg(&slot_bases)
            .arg(&state_bytes)
            .arg(&mut flags)
            .arg(&mut next);
        // SAFETY: arguments match the kernel's signature; the descriptors are the #[repr(C)] Pod
        // structures the kernel declares; every region a task names exists (the task list was
        // built for this memory) and the grid is no larger than the resident block count, so
        // waiting blocks never starve the tasks they wait for.
        unsafe { launch.launch(config) }.map_err(driver)?;
        for (rank, (master, slot)) in memory.iter_mut().zip(masters.iter().zip(&slots)) {
            let back = self.stream.clone_dtoh(master).map_err(driver)?;
            let len = rank.masters.len();
            rank.masters.copy_from_slice(&back[..len]);
            let back = self.stream.clone_dtoh(slot).map_err(driver)?;
            let len = rank.slots.len();
            rank.slots.copy_from_slice(&back[..len]);
        }
        Ok(())
    }

    /// Executes reduction `jobs` on `memory` (job addresses are byte offsets into it), as
    /// [`crate::reference::reduce::reduce`] does.
    pub fn reduce(
        &self,
        jobs: &[ReduceJob],
        replicas: &[u64],
        memory: &mut [f32],
    ) -> Result<(), KernelError> {
        let function = self.function(&sources::GRADIENT_REDUCE)?;
        let device_memory = self.stream.clone_htod(memory).map_err(driver)?;
        let base = device_memory.device_ptr(&self.stream).0;
        let relocated: Vec<ReduceJob> = jobs
            .iter()
            .map(|job| ReduceJob {
                master: base + job.master,
                ..*job
            })
            .collect();
        let addresses: Vec<u64> = replicas.iter().map(|offset| base + offset).collect();
        let job_bytes: &[u8] = bytemuck::cast_slice(&relocated);
        let job_buffer = self.stream.clone_htod(&pad(job_bytes)).map_err(driver)?;
        let address_buffer = self
            .stream
            .clone_htod(&pad_u64(&addresses))
            .map_err(driver)?;
        let job_count = jobs.len() as u32;
        let config = LaunchConfig {
            grid_dim: (job_count.clamp(1, 4096), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch.arg(&job_buffer).arg(&job_count).arg(&address_buffer);
        // SAFETY: arguments match the kernel's signature; every address is inside `memory`'s
        // device copy (checked by the caller's job builder) and each value has one writer.
        unsafe { launch.launch(config) }.map_err(driver)?;
        self.stream
            .memcpy_dtoh(&device_memory, memory)
            .map_err(driver)?;
        Ok(())
    }
}

/// `bytes`, or one zero byte if empty (the driver does not allocate nothing).
fn pad(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        vec![0]
    } else {
        bytes.to_vec()
    }
}

fn pad_u64(values: &[u64]) -> Vec<u64> {
    if values.is_empty() {
        vec![0]
    } else {
        values.to_vec()
    }
}
