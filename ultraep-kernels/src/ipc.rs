//! One rank's memory on its GPU, shared with the peer processes of its group through CUDA IPC:
//! its masters, its slots, and its signal words (per-tile arrival words, then per-slot open words,
//! then per-slot gradient hand-off words, then per-master checksum words). A process exports the
//! handles of its three buffers, opens its peers' handles, and the peer tile streamer
//! ([`crate::sources::TILE_STREAM_PEER`]) stores straight into peers' slots through the opened
//! pointers, the way it would over NVLink.
//!
//! Nothing here has run on a GPU yet: it compiles, and `ultraep-runtime`'s GPU tests run it where
//! a GPU is present.

use std::sync::Arc;

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg, result, sys};
use ultraep_xfer::{NO_FLAG, Region, SLOT_REGION, TileTaskList, region_of};

use crate::gpu::{BLOCK, Gpu, driver, pad};
use crate::{KernelError, sources};

/// Words of one exported IPC handle (64 bytes).
pub const HANDLE_WORDS: usize = 16;
/// Words of a rank's exported handles: masters, slots, signal words.
pub const RANK_HANDLE_WORDS: usize = 3 * HANDLE_WORDS;

/// The shape of one rank's memory; every rank of a group agrees on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcLayout {
    /// Master states of the rank (every layer's).
    pub masters: u32,
    /// Replica slots of every rank.
    pub slots: u16,
    /// Bytes of one expert state (a multiple of 16).
    pub state_bytes: u64,
    /// The transfer tile.
    pub tile_bytes: u32,
}

impl IpcLayout {
    /// Tiles of one state.
    pub fn tiles(&self) -> u64 {
        self.state_bytes.div_ceil(u64::from(self.tile_bytes.max(1)))
    }

    fn slots(&self) -> u64 {
        u64::from(self.slots)
    }

    /// Index of the arrival word of tile `tile` of slot `slot`.
    pub fn arrival_word(&self, slot: u16, tile: u64) -> u64 {
        u64::from(slot) * self.tiles() + tile
    }

    /// Index of slot `slot`'s open word.
    pub fn open_word(&self, slot: u16) -> u64 {
        self.slots() * self.tiles() + u64::from(slot)
    }

    /// Index of slot `slot`'s gradient hand-off word.
    pub fn gradient_word(&self, slot: u16) -> u64 {
        self.slots() * self.tiles() + self.slots() + u64::from(slot)
    }

    /// Index of master `index`'s checksum word.
    pub fn checksum_word(&self, index: u32) -> u64 {
        self.slots() * self.tiles() + 2 * self.slots() + u64::from(index)
    }

    fn words(&self) -> u64 {
        self.checksum_word(self.masters)
    }

    /// Byte offset of `region` in its buffer, if the rank has it.
    pub fn offset(&self, region: Region) -> Option<u64> {
        match region {
            Region::Master { index } if index < self.masters => {
                Some(u64::from(index) * self.state_bytes)
            }
            Region::Slot { slot } if slot < self.slots => Some(u64::from(slot) * self.state_bytes),
            _ => None,
        }
    }
}

/// This process's rank memory on its GPU: three plain driver allocations (`cuMemAlloc`), since
/// only those can be exported through `cuIpcGetMemHandle` (stream-ordered pool memory cannot).
/// Freed when dropped; drop it only after every peer has closed its mappings.
pub struct IpcRankMemory {
    masters: u64,
    slots: u64,
    words: u64,
    layout: IpcLayout,
    context: Arc<CudaContext>,
}

impl Drop for IpcRankMemory {
    fn drop(&mut self) {
        // A context that cannot be bound any more has nothing left to free.
        if self.context.bind_to_thread().is_ok() {
            for pointer in [self.masters, self.slots, self.words] {
                // SAFETY: each pointer came from cuMemAlloc in this context and is freed once.
                let _ = unsafe { result::free_sync(pointer) };
            }
        }
    }
}

impl std::fmt::Debug for IpcRankMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcRankMemory")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// A rank's three buffers as device pointers in this process: its own, or a peer's opened from
/// its handles (closed again when dropped).
#[derive(Debug)]
pub struct PeerPointers {
    /// Its masters.
    pub masters: u64,
    /// Its slots.
    pub slots: u64,
    /// Its signal words.
    pub words: u64,
    /// The context that opened them, when they are a peer's (closed on drop).
    opened: Option<Arc<CudaContext>>,
}

impl Drop for PeerPointers {
    fn drop(&mut self) {
        if let Some(context) = &self.opened
            && context.bind_to_thread().is_ok()
        {
            for pointer in [self.masters, self.slots, self.words] {
                // SAFETY: each pointer came from cuIpcOpenMemHandle in this context and is
                // closed once; a failure leaves nothing to clean up.
                let _ = unsafe { sys::cuIpcCloseMemHandle(pointer) };
            }
        }
    }
}

impl Gpu {
    /// Zeroed memory of this process's rank, shareable with its peers.
    pub fn alloc_ipc_rank(&self, layout: IpcLayout) -> Result<IpcRankMemory, KernelError> {
        if layout.state_bytes == 0
            || !layout.state_bytes.is_multiple_of(16)
            || layout.tile_bytes == 0
        {
            return Err(KernelError::InvalidInput(
                "expert states must be a positive multiple of 16 bytes, tiles positive".into(),
            ));
        }
        let bytes = |count: u64, each: u64| {
            count
                .checked_mul(each)
                .map(|b| b.max(1) as usize)
                .ok_or_else(|| KernelError::InvalidInput("rank memory too large".into()))
        };
        let sizes = [
            bytes(u64::from(layout.masters), layout.state_bytes)?,
            bytes(u64::from(layout.slots), layout.state_bytes)?,
            bytes(layout.words(), 8)?,
        ];
        self.context().bind_to_thread().map_err(driver)?;
        let mut pointers = [0u64; 3];
        for (pointer, &size) in pointers.iter_mut().zip(&sizes) {
            // SAFETY: a plain allocation of `size` bytes in the bound context, zeroed before
            // anyone can see it (synchronously: the handles go out only after this returns).
            unsafe {
                *pointer = result::malloc_sync(size).map_err(driver)?;
                result::memset_d8_sync(*pointer, 0, size).map_err(driver)?;
            }
        }
        Ok(IpcRankMemory {
            masters: pointers[0],
            slots: pointers[1],
            words: pointers[2],
            layout,
            context: Arc::clone(self.context()),
        })
    }

    /// The IPC handles of `memory`'s buffers, as words to all-gather.
    pub fn export_ipc(
        &self,
        memory: &IpcRankMemory,
    ) -> Result<[u32; RANK_HANDLE_WORDS], KernelError> {
        let pointers = self.own_pointers(memory);
        self.context().bind_to_thread().map_err(driver)?;
        let mut words = [0u32; RANK_HANDLE_WORDS];
        for (at, pointer) in [pointers.masters, pointers.slots, pointers.words]
            .into_iter()
            .enumerate()
        {
            let mut handle = std::mem::MaybeUninit::<sys::CUipcMemHandle>::zeroed();
            // SAFETY: `pointer` is the base of a live allocation of this context; the handle is
            // written by the driver before it is read.
            let handle = unsafe {
                sys::cuIpcGetMemHandle(handle.as_mut_ptr(), pointer)
                    .result()
                    .map_err(driver)?;
                handle.assume_init()
            };
            for (word, bytes) in words[at * HANDLE_WORDS..][..HANDLE_WORDS]
                .iter_mut()
                .zip(handle.reserved.chunks_exact(4))
            {
                *word = u32::from_le_bytes([
                    bytes[0] as u8,
                    bytes[1] as u8,
                    bytes[2] as u8,
                    bytes[3] as u8,
                ]);
            }
        }
        Ok(words)
    }

    /// `memory`'s buffers as device pointers (not to be closed).
    pub fn own_pointers(&self, memory: &IpcRankMemory) -> PeerPointers {
        PeerPointers {
            masters: memory.masters,
            slots: memory.slots,
            words: memory.words,
            opened: None,
        }
    }

    /// Opens a peer's buffers from the handles it exported.
    pub fn open_ipc(&self, handles: &[u32]) -> Result<PeerPointers, KernelError> {
        if handles.len() != RANK_HANDLE_WORDS {
            return Err(KernelError::InvalidInput(format!(
                "{} handle words, {RANK_HANDLE_WORDS} expected",
                handles.len()
            )));
        }
        self.context().bind_to_thread().map_err(driver)?;
        let mut pointers = [0u64; 3];
        for (at, pointer) in pointers.iter_mut().enumerate() {
            let mut handle = sys::CUipcMemHandle_st { reserved: [0; 64] };
            for (bytes, word) in handle
                .reserved
                .chunks_exact_mut(4)
                .zip(&handles[at * HANDLE_WORDS..][..HANDLE_WORDS])
            {
                for (byte, value) in bytes.iter_mut().zip(word.to_le_bytes()) {
                    *byte = value as core::ffi::c_char;
                }
            }
            // SAFETY: the handle came from cuIpcGetMemHandle in a peer process; the driver
            // writes the pointer before it is read, and the context is bound to this thread.
            unsafe {
                sys::cuIpcOpenMemHandle_v2(
                    pointer,
                    handle,
                    sys::CUipcMem_flags_enum::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
                        as core::ffi::c_uint,
                )
                .result()
                .map_err(driver)?;
            }
        }
        Ok(PeerPointers {
            masters: pointers[0],
            slots: pointers[1],
            words: pointers[2],
            opened: Some(Arc::clone(self.context())),
        })
    }

    /// Copies `bytes` to `pointer` (device memory of this process or an opened peer's).
    pub fn write_device(&self, pointer: u64, bytes: &[u8]) -> Result<(), KernelError> {
        self.context().bind_to_thread().map_err(driver)?;
        // SAFETY: the caller names a device range of at least `bytes.len()` bytes (a region or a
        // word of rank memory); the copy is synchronous.
        unsafe { result::memcpy_htod_sync(pointer, bytes) }.map_err(driver)
    }

    /// Copies from `pointer` into `out`.
    pub fn read_device(&self, pointer: u64, out: &mut [u8]) -> Result<(), KernelError> {
        self.context().bind_to_thread().map_err(driver)?;
        self.stream().synchronize().map_err(driver)?;
        // SAFETY: as in `write_device`, for reading.
        unsafe { result::memcpy_dtoh_sync(out, pointer) }.map_err(driver)
    }

    /// Reads the 64-bit word `index` of the signal words at `words`.
    pub fn read_word(&self, words: u64, index: u64) -> Result<u64, KernelError> {
        let mut bytes = [0u8; 8];
        self.read_device(words + 8 * index, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Writes the 64-bit word `index` of the signal words at `words`.
    pub fn write_word(&self, words: u64, index: u64, value: u64) -> Result<(), KernelError> {
        self.write_device(words + 8 * index, &value.to_le_bytes())
    }

    /// Runs this rank's tile tasks of transfer round `round` against every rank's pointers
    /// (`ranks[r]` for rank `r`), waiting on a peer at most `wait` each time (on the GPU's global
    /// timer); [`KernelError::PeerTimeout`] if a wait ran out.
    pub fn stream_peer_tiles(
        &self,
        tasks: &TileTaskList,
        ranks: &[PeerPointers],
        layout: IpcLayout,
        round: u64,
        wait: std::time::Duration,
    ) -> Result<(), KernelError> {
        if tasks.tasks().is_empty() {
            return Ok(());
        }
        let tile_bytes = u64::from(layout.tile_bytes);
        for task in tasks.tasks() {
            let known = |rank: u32| (rank as usize) < ranks.len();
            let slot_ok = |region: u32| {
                region >= SLOT_REGION && (region & !SLOT_REGION) < u32::from(layout.slots)
            };
            let outside = !known(task.source_rank)
                || layout.offset(region_of(task.source_region)).is_none()
                || task.offset + u64::from(task.bytes) > layout.state_bytes
                || !task.offset.is_multiple_of(tile_bytes)
                || (task.wait_flag != NO_FLAG && !slot_ok(task.source_region))
                || tasks
                    .destinations_of(task)
                    .iter()
                    .any(|to| !known(to.rank) || !slot_ok(to.region));
            if outside {
                return Err(KernelError::InvalidInput(format!(
                    "a tile task from rank {} outside the group's memory, off the tile grid, \
                     or waiting for a master",
                    task.source_rank
                )));
            }
        }
        let stream = self.stream();
        let table =
            |pick: fn(&PeerPointers) -> u64| -> Vec<u64> { ranks.iter().map(pick).collect() };
        let masters = stream.clone_htod(&table(|p| p.masters)).map_err(driver)?;
        let slots = stream.clone_htod(&table(|p| p.slots)).map_err(driver)?;
        let words = stream.clone_htod(&table(|p| p.words)).map_err(driver)?;
        let task_bytes: &[u8] = bytemuck::cast_slice(tasks.tasks());
        let destination_bytes: &[u8] = bytemuck::cast_slice(tasks.destinations());
        let device_tasks = stream.clone_htod(&pad(task_bytes)).map_err(driver)?;
        let device_destinations = stream.clone_htod(&pad(destination_bytes)).map_err(driver)?;
        let mut next = stream.alloc_zeros::<u32>(1).map_err(driver)?;
        let mut status = stream.alloc_zeros::<u32>(1).map_err(driver)?;
        let function = self.function(&sources::TILE_STREAM_PEER)?;
        let count = tasks.tasks().len() as u32;
        let tiles = layout.tiles() as u32;
        let slots_per_rank = u32::from(layout.slots);
        let wait_ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        let config = LaunchConfig {
            grid_dim: (self.persistent_grid(&function)?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&function);
        launch
            .arg(&device_tasks)
            .arg(&count)
            .arg(&device_destinations)
            .arg(&masters)
            .arg(&slots)
            .arg(&words)
            .arg(&layout.state_bytes)
            .arg(&layout.tile_bytes)
            .arg(&tiles)
            .arg(&slots_per_rank)
            .arg(&round)
            .arg(&wait_ns)
            .arg(&mut next)
            .arg(&mut status);
        // SAFETY: arguments match the kernel's signature; every task names ranks of the tables
        // and regions of the layout (checked above); every pointer is a live allocation of this
        // process or a peer's opened through IPC; every wait ends by its deadline.
        unsafe { launch.launch(config) }.map_err(driver)?;
        stream.synchronize().map_err(driver)?;
        let status = stream.clone_dtoh(&status).map_err(driver)?;
        if status.first().copied().unwrap_or(0) != 0 {
            return Err(KernelError::PeerTimeout {
                waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                what: "a peer to open a slot, or a relayed tile to arrive".into(),
            });
        }
        Ok(())
    }

    /// Waits on the device until every tile of this rank's slots `slots` has arrived in transfer
    /// round `round` (its arrival word in the signal words at `words` holds the round), for at
    /// most `wait` on the GPU's global timer; then one read brings the outcome back. `None` when
    /// every tile arrived, else the index of a missing `(slot, tile)` pair in the order of
    /// [`crate::reference::arrivals::first_missing`] (the smallest missing one, when nothing
    /// arrives while the kernel reports). Waits for the work queued before, this rank's own
    /// streaming included.
    pub fn await_arrivals(
        &self,
        words: u64,
        slots: &[u16],
        layout: IpcLayout,
        round: u64,
        wait: std::time::Duration,
    ) -> Result<Option<u32>, KernelError> {
        let pairs = crate::launch_checks::arrival_pairs(slots, layout.tiles(), layout.slots)?;
        if pairs == 0 {
            return Ok(None);
        }
        let stream = self.stream();
        let function = self.function(&sources::ARRIVALS_AWAIT)?;
        let wide: Vec<u32> = slots.iter().map(|&slot| u32::from(slot)).collect();
        let device_slots = stream.clone_htod(&wide).map_err(driver)?;
        let mut first_missing = stream.clone_htod(&[u32::MAX]).map_err(driver)?;
        let slot_count = slots.len() as u32;
        let tiles = layout.tiles() as u32;
        let wait_ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        // One thread per pair up to a full device: a waiting thread costs a warp slot, not work.
        let blocks = pairs
            .div_ceil(BLOCK)
            .clamp(1, self.multiprocessors()?.saturating_mul(4).max(1));
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&function);
        launch
            .arg(&words)
            .arg(&device_slots)
            .arg(&slot_count)
            .arg(&tiles)
            .arg(&round)
            .arg(&wait_ns)
            .arg(&mut first_missing);
        // SAFETY: arguments match the kernel's signature; `words` is a rank's signal words (the
        // caller's contract, as for `read_word`), which hold `slots x tiles` arrival words first,
        // and every slot is one of the layout's (checked); every wait ends by its deadline.
        unsafe { launch.launch(config) }.map_err(driver)?;
        let back = stream.clone_dtoh(&first_missing).map_err(driver)?;
        Ok(back.first().copied().filter(|&pair| pair != u32::MAX))
    }

    /// Runs the gradient reduction kernel on `jobs` whose master and replica addresses are
    /// device pointers of this process (its own memory, or peers' opened through IPC).
    pub fn reduce_peer(
        &self,
        jobs: &[crate::reference::reduce::ReduceJob],
        replicas: &[u64],
    ) -> Result<(), KernelError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let stream = self.stream();
        let function = self.function(&sources::GRADIENT_REDUCE)?;
        let job_bytes: &[u8] = bytemuck::cast_slice(jobs);
        let job_buffer = stream.clone_htod(&pad(job_bytes)).map_err(driver)?;
        let address_buffer = stream.clone_htod(&pad(replicas)).map_err(driver)?;
        let job_count = jobs.len() as u32;
        let config = LaunchConfig {
            grid_dim: (job_count.clamp(1, 4096), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&function);
        launch.arg(&job_buffer).arg(&job_count).arg(&address_buffer);
        // SAFETY: arguments match the kernel's signature; the caller builds the jobs from the
        // group's memory, every address inside a region, each value with one writer.
        unsafe { launch.launch(config) }.map_err(driver)?;
        stream.synchronize().map_err(driver)
    }
}
