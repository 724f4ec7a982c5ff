//! The CPU transport: ranks are in-process memory, worker threads execute the tile task list.
//!
//! Every region (a master expert state or a slot) is cut into tile-sized blocks, each behind its own
//! lock, so workers copy tiles concurrently without `unsafe`. Workers take tasks in list order from
//! an atomic counter; a task that forwards a piece waits (yielding) until the piece's arrival flag
//! counts all its tiles, with release/acquire ordering so the bytes are visible once the count is.
//! A failure (an injected one, a poisoned lock, a wait that times out) stops every worker, and the
//! slots the distribution was writing stay not ready.
//!
//! The workers are threads started with the transport and kept until it is dropped; each
//! distribution copies the task list into buffers they share and wakes them. With one worker the
//! calling thread does the work. Either way a distribution allocates nothing once the buffers have
//! grown to the largest task list seen, and verification checksums regions block by block.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::transport::{TransferReport, Transport};
use crate::{
    Checksum, NO_FLAG, ReductionScratch, Region, TileTask, TileTaskList, TransferSchedule,
    WorkerPool, XferError, region_of,
};

/// How long a worker waits for a piece before declaring the distribution failed.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// What a replica slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Nothing usable: never written.
    Empty,
    /// Being written, or left half-written by a failed distribution: must not be used.
    NotReady {
        /// The expert that was being written.
        expert: u32,
    },
    /// A complete, verified copy.
    Ready {
        /// The expert it holds.
        expert: u32,
    },
}

/// One expert-state-sized region, in lockable tile-sized blocks.
#[derive(Debug)]
struct RegionMemory {
    blocks: Vec<Mutex<Vec<u8>>>,
}

impl RegionMemory {
    fn new(bytes: u64, block: u64) -> Self {
        let blocks = (0..bytes.div_ceil(block))
            .map(|index| {
                let len = block.min(bytes - index * block) as usize;
                Mutex::new(vec![0u8; len])
            })
            .collect();
        Self { blocks }
    }

    fn checksum(&self, bytes: u64) -> Result<u64, XferError> {
        let mut sum = Checksum::new(bytes);
        for block in &self.blocks {
            sum.update(&lock(block)?);
        }
        Ok(sum.finish())
    }

    /// Reads the region as little-endian FP32 values into `out` (cleared first).
    fn read_floats_into(&self, out: &mut Vec<f32>) -> Result<(), XferError> {
        out.clear();
        for block in &self.blocks {
            let block = lock(block)?;
            out.extend(
                block
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(())
    }

    /// Writes `values` as little-endian FP32 over the whole region.
    fn write_floats(&self, values: &[f32]) -> Result<(), XferError> {
        let mut values = values.iter();
        for block in &self.blocks {
            let mut block = lock(block)?;
            for (bytes, value) in block.chunks_exact_mut(4).zip(&mut values) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
        }
        Ok(())
    }

    fn zero(&self) -> Result<(), XferError> {
        for block in &self.blocks {
            lock(block)?.fill(0);
        }
        Ok(())
    }

    fn read_all(&self) -> Result<Vec<u8>, XferError> {
        let mut out = Vec::new();
        for block in &self.blocks {
            out.extend_from_slice(&lock(block)?);
        }
        Ok(out)
    }

    fn write_all(&self, bytes: &[u8]) -> Result<(), XferError> {
        let len: usize = self
            .blocks
            .iter()
            .map(|block| lock(block).map_or(0, |b| b.len()))
            .sum();
        if bytes.len() != len {
            return Err(XferError::MemoryMismatch {
                reason: format!("{} bytes for a {len}-byte expert state", bytes.len()),
            });
        }
        let mut at = 0;
        for block in &self.blocks {
            let mut guard = lock(block)?;
            let len = guard.len();
            guard.copy_from_slice(&bytes[at..at + len]);
            at += len;
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, XferError> {
    mutex.lock().map_err(|_| poisoned())
}

fn poisoned() -> XferError {
    XferError::TransferFailed {
        task: usize::MAX,
        reason: "a lock was poisoned by a panicking worker".into(),
        slots: 0,
    }
}

#[derive(Debug)]
struct RankMemory {
    masters: Vec<RegionMemory>,
    slots: Vec<RegionMemory>,
}

/// Every rank's memory: what the workers share.
#[derive(Debug)]
struct Memory {
    ranks: Vec<RankMemory>,
    block_bytes: u64,
}

/// One distribution's work, in buffers reused from one distribution to the next.
#[derive(Debug, Default)]
struct Job {
    tasks: TileTaskList,
    flags: Vec<AtomicU32>,
    next: AtomicUsize,
    failed: AtomicBool,
    failure: Mutex<Option<(usize, String)>>,
    fail_at_task: Option<usize>,
}

/// A reduction's master and replica values, and the reduction's own scratch.
#[derive(Debug, Default)]
struct ReductionBuffers {
    master: Vec<f32>,
    replicas: Vec<(u32, Vec<f32>)>,
    scratch: ReductionScratch,
}

/// What the workers share: the ranks' memory and the job in progress.
#[derive(Debug)]
struct Shared {
    memory: Memory,
    job: RwLock<Job>,
}

impl Shared {
    /// One worker's part of the job in progress.
    fn work(&self, tile: &mut Vec<u8>) {
        if let Ok(job) = self.job.read() {
            self.memory.work(&job, tile);
        }
    }
}

/// In-process ranks and the workers that move expert state between them.
///
/// ```
/// use ultraep_topo::Preset;
/// use ultraep_xfer::*;
/// let topo = Preset::HgxH100.topology(1)?;
/// let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(3, 1)])?])?;
/// let state = ExpertState::opaque(100_000)?;
/// let schedule = TransferSchedule::build(&replicas, &state, &topo, TransferConfig::default())?;
/// let mut ranks = CpuTransport::new(&[1; 8], 2, state.bytes(), 32 * 1024, 4);
/// let weights: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
/// ranks.write_master(0, 0, &weights)?;
/// ranks.distribute(&schedule, &TileTaskList::build(&schedule))?;
/// assert_eq!(ranks.read_slot(3, 1)?, weights);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CpuTransport {
    state_bytes: u64,
    block_bytes: u64,
    /// The workers, sharing the memory and the job; each keeps a tile buffer.
    pool: WorkerPool<Shared, Vec<u8>>,
    /// What every slot of every rank holds (only the caller's thread changes it).
    slot_states: Vec<Vec<SlotState>>,
    /// Buffers of gradient reductions, kept between calls.
    reduction: ReductionBuffers,
    fail_at_task: Option<usize>,
}

impl CpuTransport {
    /// Ranks with `masters_per_rank[r]` master expert states and `slots` replica slots each, every
    /// state `state_bytes` long and locked in `block_bytes` blocks (the schedule's tile size), moved
    /// by `workers` threads.
    pub fn new(
        masters_per_rank: &[u32],
        slots: u16,
        state_bytes: u64,
        block_bytes: u32,
        workers: usize,
    ) -> Self {
        let block = u64::from(block_bytes.max(1));
        let ranks = masters_per_rank
            .iter()
            .map(|&masters| RankMemory {
                masters: (0..masters)
                    .map(|_| RegionMemory::new(state_bytes, block))
                    .collect(),
                slots: (0..slots)
                    .map(|_| RegionMemory::new(state_bytes, block))
                    .collect(),
            })
            .collect();
        let shared = Shared {
            memory: Memory {
                ranks,
                block_bytes: block,
            },
            job: RwLock::new(Job::default()),
        };
        Self {
            state_bytes,
            block_bytes: block,
            pool: WorkerPool::new(shared, workers, Shared::work),
            slot_states: vec![vec![SlotState::Empty; usize::from(slots)]; masters_per_rank.len()],
            reduction: ReductionBuffers::default(),
            fail_at_task: None,
        }
    }

    /// Makes the next distribution fail when a worker reaches task `task` (for tests).
    pub fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }

    /// Sets the master copy of the `index`-th expert of `rank`.
    pub fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), XferError> {
        self.region(rank, Region::Master { index })?
            .write_all(bytes)
    }

    /// The master copy of the `index`-th expert of `rank`.
    pub fn read_master(&self, rank: u32, index: u32) -> Result<Vec<u8>, XferError> {
        self.region(rank, Region::Master { index })?.read_all()
    }

    /// Fills slot `slot` of `rank` with `bytes` of `expert` and marks it ready: what a replica's
    /// backward pass does when it writes the replica's weight gradient.
    pub fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), XferError> {
        self.region(rank, Region::Slot { slot })?.write_all(bytes)?;
        self.slot_states[rank as usize][usize::from(slot)] = SlotState::Ready { expert };
        Ok(())
    }

    /// Sums every replica's gradient (FP32, in its slot) into its master's gradient (the master
    /// region) in the documented order of [`crate::reduce_gradients`], then zeroes the replica
    /// slots and marks them empty for the next layer. `schedule` is a schedule of the gradient
    /// state. Every replica slot must be ready and hold its expert; otherwise nothing changes.
    pub fn reduce_gradients(&mut self, schedule: &TransferSchedule) -> Result<(), XferError> {
        if schedule.state_bytes() != self.state_bytes || !self.state_bytes.is_multiple_of(4) {
            return Err(XferError::MemoryMismatch {
                reason: format!(
                    "a schedule of {}-byte gradients on memory of {}-byte FP32 states",
                    schedule.state_bytes(),
                    self.state_bytes
                ),
            });
        }
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if self.slot_state(rank, slot)?
                    != (SlotState::Ready {
                        expert: fanout.expert,
                    })
                {
                    return Err(XferError::SlotNotReady { rank, slot });
                }
            }
        }
        let memory = &self.pool.state().memory;
        let buffers = &mut self.reduction;
        for fanout in schedule.fanouts() {
            let master = memory.region(
                fanout.master,
                Region::Master {
                    index: fanout.master_index,
                },
            )?;
            master.read_floats_into(&mut buffers.master)?;
            // Replica buffers are kept (and reused) across fan-outs and calls.
            let count = fanout.destinations.len();
            while buffers.replicas.len() < count {
                buffers.replicas.push((0, Vec::new()));
            }
            for (&(rank, slot), (held_rank, values)) in
                fanout.destinations.iter().zip(&mut buffers.replicas)
            {
                *held_rank = rank;
                memory
                    .region(rank, Region::Slot { slot })?
                    .read_floats_into(values)?;
            }
            let replicas = &buffers.replicas[..count];
            let empty: &[f32] = &[];
            buffers
                .scratch
                .reduce(schedule, fanout, &mut buffers.master, |rank| {
                    replicas
                        .iter()
                        .find(|(r, _)| *r == rank)
                        .map_or(empty, |(_, gradient)| gradient.as_slice())
                })?;
            master.write_floats(&buffers.master)?;
            for &(rank, slot) in &fanout.destinations {
                memory.region(rank, Region::Slot { slot })?.zero()?;
                self.slot_states[rank as usize][usize::from(slot)] = SlotState::Empty;
            }
        }
        Ok(())
    }

    /// What slot `slot` of `rank` holds.
    pub fn slot_state(&self, rank: u32, slot: u16) -> Result<SlotState, XferError> {
        self.slot_states
            .get(rank as usize)
            .and_then(|states| states.get(usize::from(slot)))
            .copied()
            .ok_or_else(|| self.no_such(rank, Region::Slot { slot }))
    }

    /// The bytes of a ready slot; an error for a slot that is not ready.
    pub fn read_slot(&self, rank: u32, slot: u16) -> Result<Vec<u8>, XferError> {
        match self.slot_state(rank, slot)? {
            SlotState::Ready { .. } => self.region(rank, Region::Slot { slot })?.read_all(),
            _ => Err(XferError::SlotNotReady { rank, slot }),
        }
    }

    fn region(&self, rank: u32, region: Region) -> Result<&RegionMemory, XferError> {
        self.pool.state().memory.region(rank, region)
    }

    fn no_such(&self, rank: u32, region: Region) -> XferError {
        self.pool.state().memory.no_such(rank, region)
    }

    /// Checks that every task and destination of `tasks` names memory that exists.
    fn check_fits(
        &self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<(), XferError> {
        if schedule.state_bytes() != self.state_bytes
            || u64::from(schedule.config().tile_bytes) != self.block_bytes
        {
            return Err(XferError::MemoryMismatch {
                reason: format!(
                    "schedule of {}-byte states in {}-byte tiles, memory of {}-byte states in {}-byte blocks",
                    schedule.state_bytes(),
                    schedule.config().tile_bytes,
                    self.state_bytes,
                    self.block_bytes
                ),
            });
        }
        for task in &tasks.tasks {
            self.region(task.source_rank, region_of(task.source_region))?;
            for destination in tasks.destinations_of(task) {
                self.region(destination.rank, region_of(destination.region))?;
            }
            if task.wait_flag != NO_FLAG && task.wait_flag >= tasks.flag_count {
                return Err(XferError::MemoryMismatch {
                    reason: format!(
                        "task waits on flag {} of {}",
                        task.wait_flag, tasks.flag_count
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Memory {
    fn region(&self, rank: u32, region: Region) -> Result<&RegionMemory, XferError> {
        let memory = self.ranks.get(rank as usize);
        let found = match region {
            Region::Master { index } => memory.and_then(|m| m.masters.get(index as usize)),
            Region::Slot { slot } => memory.and_then(|m| m.slots.get(usize::from(slot))),
        };
        found.ok_or_else(|| self.no_such(rank, region))
    }

    fn no_such(&self, rank: u32, region: Region) -> XferError {
        XferError::MemoryMismatch {
            reason: format!("rank {rank} has no {region:?} ({} ranks)", self.ranks.len()),
        }
    }

    /// Copies one tile to every destination of `task` through `tile`, bumping their flags.
    fn execute(
        &self,
        task: &TileTask,
        tasks: &TileTaskList,
        flags: &[AtomicU32],
        tile: &mut Vec<u8>,
    ) -> Result<(), XferError> {
        let block = (task.offset / self.block_bytes) as usize;
        let within = (task.offset % self.block_bytes) as usize;
        let bytes = task.bytes as usize;
        {
            let source = self.region(task.source_rank, region_of(task.source_region))?;
            let guard = lock(&source.blocks[block])?;
            tile.clear();
            tile.extend_from_slice(&guard[within..within + bytes]);
        }
        for destination in tasks.destinations_of(task) {
            let region = self.region(destination.rank, region_of(destination.region))?;
            lock(&region.blocks[block])?[within..within + bytes].copy_from_slice(tile);
            if destination.signal_flag != NO_FLAG {
                flags[destination.signal_flag as usize].fetch_add(1, Ordering::Release);
            }
        }
        Ok(())
    }

    /// One worker's share of `job`: tasks taken in list order until none is left or one fails.
    fn work(&self, job: &Job, tile: &mut Vec<u8>) {
        let fail = |task: usize, reason: String| {
            job.failed.store(true, Ordering::Release);
            if let Ok(mut first) = job.failure.lock()
                && first.is_none()
            {
                *first = Some((task, reason));
            }
        };
        let tasks = &job.tasks;
        loop {
            let index = job.next.fetch_add(1, Ordering::Relaxed);
            if index >= tasks.tasks.len() || job.failed.load(Ordering::Acquire) {
                return;
            }
            if job.fail_at_task == Some(index) {
                fail(index, "injected failure".into());
                return;
            }
            let task = &tasks.tasks[index];
            if task.wait_flag != NO_FLAG {
                let flag = &job.flags[task.wait_flag as usize];
                let started = Instant::now();
                while flag.load(Ordering::Acquire) < task.wait_count {
                    if job.failed.load(Ordering::Acquire) {
                        return;
                    }
                    if started.elapsed() > WAIT_LIMIT {
                        fail(
                            index,
                            format!("piece {} never arrived at its relay", task.piece),
                        );
                        return;
                    }
                    std::thread::yield_now();
                }
            }
            if let Err(error) = self.execute(task, tasks, &job.flags, tile) {
                fail(index, error.to_string());
                return;
            }
        }
    }
}

impl CpuTransport {
    /// Runs `tasks` on the workers (or on this thread with one worker); returns the first
    /// failure, if any.
    fn run_workers(&mut self, tasks: &TileTaskList) -> Result<Option<(usize, String)>, XferError> {
        {
            let mut job = self.pool.state().job.write().map_err(|_| poisoned())?;
            job.tasks.tasks.clone_from(&tasks.tasks);
            job.tasks.destinations.clone_from(&tasks.destinations);
            job.tasks.flag_count = tasks.flag_count;
            let flags = tasks.flag_count as usize;
            if job.flags.len() < flags {
                job.flags.resize_with(flags, || AtomicU32::new(0));
            }
            for flag in &job.flags[..flags] {
                flag.store(0, Ordering::Relaxed);
            }
            job.next.store(0, Ordering::Relaxed);
            job.failed.store(false, Ordering::Relaxed);
            *lock(&job.failure)? = None;
            job.fail_at_task = self.fail_at_task;
        }
        self.pool.run()?;
        let job = self.pool.state().job.read().map_err(|_| poisoned())?;
        let failure = lock(&job.failure)?.take();
        Ok(failure)
    }
}

impl Transport for CpuTransport {
    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<TransferReport, XferError> {
        self.check_fits(schedule, tasks)?;
        // From here until verified, the slots being written must not be used.
        let mut slots = 0;
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                self.region(rank, Region::Slot { slot })?;
                self.slot_states[rank as usize][usize::from(slot)] = SlotState::NotReady {
                    expert: fanout.expert,
                };
                slots += 1;
            }
        }
        let failure = self.run_workers(tasks);
        self.fail_at_task = None;
        let failure = failure?;
        if let Some((task, reason)) = failure {
            return Err(XferError::TransferFailed {
                task,
                reason,
                slots,
            });
        }
        for fanout in schedule.fanouts() {
            let expected = self
                .region(
                    fanout.master,
                    Region::Master {
                        index: fanout.master_index,
                    },
                )?
                .checksum(self.state_bytes)?;
            for &(rank, slot) in &fanout.destinations {
                let found = self
                    .region(rank, Region::Slot { slot })?
                    .checksum(self.state_bytes)?;
                if found != expected {
                    return Err(XferError::ChecksumMismatch {
                        expert: fanout.expert,
                        rank,
                        slot,
                        expected,
                        found,
                    });
                }
                self.slot_states[rank as usize][usize::from(slot)] = SlotState::Ready {
                    expert: fanout.expert,
                };
            }
        }
        Ok(TransferReport {
            tasks: tasks.tasks.len(),
            bytes_stored: tasks.bytes_stored(),
            replicas_ready: slots,
        })
    }
}
