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
use crate::{Arch, KernelError, KernelSource, compile_for, launch_checks, sources};

/// Threads per block for every kernel.
pub(crate) const BLOCK: u32 = 256;

/// Ids per block of the chunked reroute kernel (`chunked_reroute.rs`).
pub const CHUNK: u32 = 1024;

/// Above this many ids [`Gpu::reroute`] takes the chunked kernel. The single block does
/// `ids / BLOCK` serial rounds on one multiprocessor (about 0.4 ms for 65,536 ids, estimated);
/// the chunked form's three launches cost a few microseconds each, so it wins once the ids fill
/// a few of its chunks. An estimate until a GPU measures the crossing (`gpu-bench` times both).
pub const CHUNKED_ABOVE: usize = 4 * CHUNK as usize;

/// Tile streamer blocks per multiprocessor: 32 warps, each thread with four 16-byte loads in
/// flight, about 64 KiB in flight per multiprocessor (8.4 MB on an H100's 132), several times
/// what the device's bandwidth-latency product asks for.
pub(crate) const STREAMER_BLOCKS_PER_SM: u32 = 4;

pub(crate) fn driver(error: impl std::fmt::Debug) -> KernelError {
    KernelError::Device(format!("{error:?}"))
}

/// One GPU, its stream, and the kernels loaded so far.
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The architecture of the device, which every module is compiled for.
    arch: Arch,
    modules: [OnceLock<Result<Arc<CudaModule>, KernelError>>; sources::ALL.len()],
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
    /// Opens GPU `ordinal`, after checking what the kernels need of it: a driver that loads the
    /// PTX of the pinned NVRTC (CUDA 13.0, R580 or newer), a device of an architecture the kernels
    /// are built for ([`Arch`]), and NVRTC itself. Each missing piece is an error that says what
    /// to install, never an opaque CUDA error at the first launch.
    pub fn open(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_available() {
            return Err(KernelError::DriverUnavailable);
        }
        let mut version = 0;
        // SAFETY: cuDriverGetVersion only writes the version through the pointer.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(driver)?;
        check_driver_version(version)?;
        if !crate::nvrtc_available() {
            return Err(KernelError::NvrtcUnavailable);
        }
        let context = CudaContext::new(ordinal).map_err(driver)?;
        let capability = |attribute| {
            context
                .attribute(attribute)
                .map(|value| u32::try_from(value).unwrap_or(0))
                .map_err(driver)
        };
        let arch = Arch::for_capability(
            capability(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            capability(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        )?;
        let stream = context.default_stream();
        Ok(Self {
            context,
            stream,
            arch,
            modules: Default::default(),
        })
    }

    /// The architecture the kernels are compiled for on this device.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Streaming multiprocessors: how many blocks a persistent grid runs.
    pub fn multiprocessors(&self) -> Result<u32, KernelError> {
        let count = self
            .context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver)?;
        Ok(count.max(1) as u32)
    }

    /// The grid of a persistent kernel (the tile streamers): as many blocks as stay resident
    /// together, up to [`STREAMER_BLOCKS_PER_SM`] per multiprocessor. Every block must be resident
    /// at once, since a block may wait for tiles another block forwards.
    pub(crate) fn persistent_grid(&self, function: &CudaFunction) -> Result<u32, KernelError> {
        let resident = function
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK, 0, None)
            .map_err(driver)?;
        Ok(self.multiprocessors()? * resident.clamp(1, STREAMER_BLOCKS_PER_SM))
    }

    /// The context of the GPU.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The stream every wrapper runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn function(&self, kernel: &KernelSource) -> Result<CudaFunction, KernelError> {
        self.function_named(kernel, kernel.entry_points[0])
    }

    /// Entry point `entry` of `kernel`, compiled and loaded the first time.
    pub(crate) fn function_named(
        &self,
        kernel: &KernelSource,
        entry: &str,
    ) -> Result<CudaFunction, KernelError> {
        let index = sources::ALL
            .iter()
            .position(|k| k.name == kernel.name)
            .ok_or_else(|| KernelError::InvalidInput(format!("unknown kernel {}", kernel.name)))?;
        let module = self.modules[index]
            .get_or_init(|| {
                let ptx = compile_for(kernel, self.arch)?;
                self.context.load_module(ptx).map_err(driver)
            })
            .clone()?;
        module.load_function(entry).map_err(driver)
    }

    /// Counts of every expert among a rank's router ids (the [`crate::reference::histogram`]
    /// semantics); ids naming no expert are an error.
    pub fn histogram(&self, ids: &[u32], experts: u32) -> Result<Vec<u32>, KernelError> {
        let n = launch_checks::count32("router ids", ids.len())?;
        launch_checks::shared_words("the histogram", u64::from(experts))?;
        let ids_device = self.stream.clone_htod(&pad(ids)).map_err(driver)?;
        let mut counts = self
            .stream
            .alloc_zeros::<u32>(experts as usize + 1)
            .map_err(driver)?;
        self.launch_histogram(&ids_device, n, experts, &mut counts)?;
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

    /// Launches the histogram on device-resident ids; `counts` (`experts + 1` words, the last
    /// counting bad ids) is zeroed first.
    pub fn launch_histogram(
        &self,
        ids: &CudaSlice<u32>,
        n: u32,
        experts: u32,
        counts: &mut CudaSlice<u32>,
    ) -> Result<(), KernelError> {
        if counts.len() < experts as usize + 1 || ids.len() < n as usize {
            return Err(KernelError::InvalidInput(
                "histogram buffers are too short".into(),
            ));
        }
        let shared_mem_bytes = launch_checks::shared_words("the histogram", u64::from(experts))?;
        let function = self.function(&sources::HISTOGRAM)?;
        self.stream.memset_zeros(counts).map_err(driver)?;
        let config = LaunchConfig {
            grid_dim: (n.div_ceil(BLOCK).clamp(1, 1024), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch.arg(ids).arg(&n).arg(&experts).arg(counts);
        // SAFETY: the arguments match the kernel's signature and every buffer is as long as the
        // kernel reads or writes (checked above; shared: experts words).
        unsafe { launch.launch(config) }.map_err(driver)?;
        Ok(())
    }

    /// The instance of every id of one source (the [`crate::reference::reroute`] semantics), and
    /// how many could not be placed: by the single-block kernel up to [`CHUNKED_ABOVE`] ids, by
    /// the chunked one above (equal results; the chunked form spreads the ids over many
    /// multiprocessors where one block would walk them serially).
    pub fn reroute(
        &self,
        ids: &[u32],
        table: &RerouteTable,
    ) -> Result<(Vec<u32>, u32), KernelError> {
        if ids.len() > CHUNKED_ABOVE {
            self.reroute_chunked(ids, table)
        } else {
            self.reroute_single_block(ids, table)
        }
    }

    /// [`Gpu::reroute`] by the single-block kernel, whatever the number of ids.
    pub fn reroute_single_block(
        &self,
        ids: &[u32],
        table: &RerouteTable,
    ) -> Result<(Vec<u32>, u32), KernelError> {
        self.run_reroute(ids, table, |resident, out, invalid| {
            self.launch_reroute(resident, out, invalid)
        })
    }

    /// Uploads `ids` and `table`, runs `launch` on them with poisoned outputs, and brings back
    /// the instances and the count of ids placed nowhere.
    pub(crate) fn run_reroute(
        &self,
        ids: &[u32],
        table: &RerouteTable,
        launch: impl FnOnce(
            &mut DeviceReroute,
            &mut CudaSlice<u32>,
            &mut CudaSlice<u32>,
        ) -> Result<(), KernelError>,
    ) -> Result<(Vec<u32>, u32), KernelError> {
        let mut resident = self.upload_reroute(ids, table)?;
        let mut out = self
            .stream
            .clone_htod(&vec![0xdead_beef_u32; ids.len().max(1)])
            .map_err(driver)?;
        let mut invalid = self.stream.alloc_zeros::<u32>(1).map_err(driver)?;
        launch(&mut resident, &mut out, &mut invalid)?;
        let mut instances = self.stream.clone_dtoh(&out).map_err(driver)?;
        instances.truncate(ids.len());
        let invalid = self.stream.clone_dtoh(&invalid).map_err(driver)?;
        Ok((instances, invalid.first().copied().unwrap_or(0)))
    }

    /// Copies one source's ids and reroute table to the device.
    pub fn upload_reroute(
        &self,
        ids: &[u32],
        table: &RerouteTable,
    ) -> Result<DeviceReroute, KernelError> {
        let entries: &[u8] = bytemuck::cast_slice(&table.entries);
        let experts = table.offsets.len().saturating_sub(1);
        let n = launch_checks::count32("router ids", ids.len())?;
        let expert_count = launch_checks::count32("reroute table experts", experts)?;
        let chunks = ids.len().div_ceil(CHUNK as usize).max(1);
        Ok(DeviceReroute {
            chunk_counts: self
                .stream
                .alloc_zeros::<u32>((chunks * experts).max(1))
                .map_err(driver)?,
            ids: self.stream.clone_htod(&pad(ids)).map_err(driver)?,
            n,
            experts: expert_count,
            offsets: self
                .stream
                .clone_htod(&pad(&table.offsets))
                .map_err(driver)?,
            entries: self.stream.clone_htod(&pad(entries)).map_err(driver)?,
        })
    }

    /// Launches the reroute on device-resident inputs; `invalid` is zeroed first.
    pub fn launch_reroute(
        &self,
        input: &DeviceReroute,
        out: &mut CudaSlice<u32>,
        invalid: &mut CudaSlice<u32>,
    ) -> Result<(), KernelError> {
        if out.len() < input.n as usize || invalid.is_empty() {
            return Err(KernelError::InvalidInput(
                "reroute buffers are too short".into(),
            ));
        }
        let shared_mem_bytes = launch_checks::shared_words(
            "the reroute",
            u64::from(input.experts) + u64::from(BLOCK),
        )?;
        let function = self.function(&sources::REROUTE)?;
        self.stream.memset_zeros(invalid).map_err(driver)?;
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&input.ids)
            .arg(&input.n)
            .arg(&input.experts)
            .arg(&input.offsets)
            .arg(&input.entries)
            .arg(out)
            .arg(invalid);
        // SAFETY: arguments match the kernel's signature; offsets has experts + 1 entries, the
        // entries the table's, out at least n words (checked); shared memory is experts + BLOCK
        // words.
        unsafe { launch.launch(config) }.map_err(driver)?;
        Ok(())
    }

    /// Executes `tasks` on the ranks' memory (copied to one device buffer per rank and region
    /// kind, then back), with a persistent grid of up to four blocks per multiprocessor.
    pub fn stream_tiles(
        &self,
        tasks: &TileTaskList,
        memory: &mut [RankMemory],
        state_bytes: u64,
    ) -> Result<(), KernelError> {
        launch_checks::tasks_fit(tasks, state_bytes, memory.len())?;
        let mut ranks = self.upload_ranks(memory, state_bytes)?;
        let mut device_tasks = self.upload_tasks(tasks)?;
        self.run_tiles(&mut device_tasks, &mut ranks)?;
        for (rank, (master, slot)) in memory
            .iter_mut()
            .zip(ranks.masters.iter().zip(&ranks.slots))
        {
            let back = self.stream.clone_dtoh(master).map_err(driver)?;
            let len = rank.masters.len();
            rank.masters.copy_from_slice(&back[..len]);
            let back = self.stream.clone_dtoh(slot).map_err(driver)?;
            let len = rank.slots.len();
            rank.slots.copy_from_slice(&back[..len]);
        }
        Ok(())
    }

    /// Copies every rank's memory to its own device buffers (ranks emulated on one GPU).
    pub fn upload_ranks(
        &self,
        memory: &[RankMemory],
        state_bytes: u64,
    ) -> Result<DeviceRanks, KernelError> {
        if !state_bytes.is_multiple_of(16) {
            return Err(KernelError::InvalidInput(
                "expert states must be a multiple of 16 bytes".into(),
            ));
        }
        let mut masters = Vec::with_capacity(memory.len());
        let mut slots = Vec::with_capacity(memory.len());
        for rank in memory {
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
        Ok(DeviceRanks {
            masters,
            slots,
            master_bases,
            slot_bases,
            state_bytes,
        })
    }

    /// Copies a task list to the device, with its flags and task counter.
    pub fn upload_tasks(&self, tasks: &TileTaskList) -> Result<DeviceTasks, KernelError> {
        let task_bytes: &[u8] = bytemuck::cast_slice(tasks.tasks());
        let destination_bytes: &[u8] = bytemuck::cast_slice(tasks.destinations());
        Ok(DeviceTasks {
            tasks: self.stream.clone_htod(&pad(task_bytes)).map_err(driver)?,
            destinations: self
                .stream
                .clone_htod(&pad(destination_bytes))
                .map_err(driver)?,
            flags: self
                .stream
                .alloc_zeros::<u32>(tasks.flag_count().max(1) as usize)
                .map_err(driver)?,
            // The task counter, and the word the streamer sets when a wait times out.
            next: self.stream.alloc_zeros::<u32>(2).map_err(driver)?,
            count: tasks.tasks().len() as u32,
        })
    }

    /// Runs the tile streamer on device-resident tasks and ranks (flags and the task counter are
    /// reset first, so a task list can be run again) and waits for it; a wait for a forwarded
    /// piece that has not arrived after 10 s ends the run with [`KernelError::PeerTimeout`].
    pub fn run_tiles(
        &self,
        tasks: &mut DeviceTasks,
        ranks: &mut DeviceRanks,
    ) -> Result<(), KernelError> {
        self.launch_tiles(tasks, ranks)?;
        self.finish_tiles(tasks)
    }

    /// Queues the tile streamer on device-resident tasks and ranks without waiting for it (what
    /// a benchmark times); [`Gpu::finish_tiles`] waits and reports a wait that gave up.
    pub fn launch_tiles(
        &self,
        tasks: &mut DeviceTasks,
        ranks: &mut DeviceRanks,
    ) -> Result<(), KernelError> {
        let function = self.function(&sources::TILE_STREAM)?;
        self.stream.memset_zeros(&mut tasks.flags).map_err(driver)?;
        self.stream.memset_zeros(&mut tasks.next).map_err(driver)?;
        let config = LaunchConfig {
            grid_dim: (self.persistent_grid(&function)?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&tasks.tasks)
            .arg(&tasks.count)
            .arg(&tasks.destinations)
            .arg(&ranks.master_bases)
            .arg(&ranks.slot_bases)
            .arg(&ranks.state_bytes)
            .arg(&mut tasks.flags)
            .arg(&mut tasks.next);
        // SAFETY: arguments match the kernel's signature; the descriptors are the #[repr(C)] Pod
        // structures the kernel declares; every region a task names exists (the task list was
        // built for this memory) and the grid is no larger than the resident block count
        // (occupancy), so waiting blocks never starve the tasks they wait for.
        unsafe { launch.launch(config) }.map_err(driver)?;
        Ok(())
    }

    /// Waits for the tile streamer queued by [`Gpu::launch_tiles`], then reports whether a wait
    /// for a forwarded piece gave up ([`KernelError::PeerTimeout`]).
    pub fn finish_tiles(&self, tasks: &DeviceTasks) -> Result<(), KernelError> {
        let counters = self.stream.clone_dtoh(&tasks.next).map_err(driver)?;
        if counters.get(1).copied().unwrap_or(0) != 0 {
            return Err(KernelError::PeerTimeout {
                waited_ms: 10_000,
                what: "a tile waited for a forwarded piece whose tiles never all arrived".into(),
            });
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
        let address_buffer = self.stream.clone_htod(&pad(&addresses)).map_err(driver)?;
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

/// One source's router ids and reroute table on the device.
pub struct DeviceReroute {
    pub(crate) ids: CudaSlice<u32>,
    pub(crate) n: u32,
    pub(crate) experts: u32,
    pub(crate) offsets: CudaSlice<u32>,
    pub(crate) entries: CudaSlice<u8>,
    /// Per-chunk counts of the chunked reroute (chunks x experts).
    pub(crate) chunk_counts: CudaSlice<u32>,
}

/// Every rank's memory on the device.
pub struct DeviceRanks {
    /// Master expert states, one buffer per rank.
    pub masters: Vec<CudaSlice<u8>>,
    /// Replica slots, one buffer per rank.
    pub slots: Vec<CudaSlice<u8>>,
    pub(crate) master_bases: CudaSlice<u64>,
    pub(crate) slot_bases: CudaSlice<u64>,
    pub(crate) state_bytes: u64,
}

/// A tile task list on the device.
pub struct DeviceTasks {
    tasks: CudaSlice<u8>,
    destinations: CudaSlice<u8>,
    flags: CudaSlice<u32>,
    next: CudaSlice<u32>,
    count: u32,
}

/// `values`, or one zero value if empty (the driver does not allocate nothing).
pub(crate) fn pad<T: Copy + Default>(values: &[T]) -> Vec<T> {
    if values.is_empty() {
        vec![T::default()]
    } else {
        values.to_vec()
    }
}

/// The oldest driver the kernels' PTX loads on, as `cuDriverGetVersion` reports it: CUDA 13.0
/// (driver R580), whose PTX ISA 9.0 the pinned NVRTC 13.0 emits.
pub const MIN_DRIVER_VERSION: i32 = 13_000;

/// Refuses a driver older than [`MIN_DRIVER_VERSION`], naming what to install.
///
/// ```
/// use ultraep_kernels::gpu::check_driver_version;
/// assert!(check_driver_version(13_000).is_ok());
/// assert!(check_driver_version(12_080).unwrap_err().to_string().contains("R580"));
/// ```
pub fn check_driver_version(version: i32) -> Result<(), KernelError> {
    if version < MIN_DRIVER_VERSION {
        return Err(KernelError::UnsupportedDevice(format!(
            "the CUDA driver supports CUDA {}.{}, but the kernels are compiled by NVRTC 13.0 to PTX ISA 9.0, which needs a driver for CUDA 13.0 or newer (R580 or newer)",
            version / 1000,
            version % 1000 / 10
        )));
    }
    Ok(())
}
