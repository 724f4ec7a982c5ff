//! The host data plane: every rank's expert memory is a [`segment`] that its peers map, and a
//! rank moves expert state by storing tiles straight into its peers' slots, the way a GPU stores
//! over NVLink. The same code serves ranks that are threads of one process (anonymous segments)
//! and ranks that are processes of one host (named segments under `/dev/shm`).
//!
//! A plane owns the memory of its *local* ranks only (one rank per process, or several ranks
//! of one process) and executes only their share of a transfer: the tiles they send (from a
//! master, or forwarded from a relay slot as soon as that tile has landed) and the wait for the
//! tiles their slots receive. Every wait ends: with the data, with [`RuntimeError::PeerLost`] when
//! the rank that should have written it is gone, or with [`RuntimeError::Timeout`].

mod job;
pub(crate) mod segment;

use std::borrow::Cow;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ultraep_xfer::{
    Checksum, NO_FLAG, ReductionScratch, Region, SlotState, TileDestination, TileTask,
    TileTaskList, TransferSchedule, WorkerPool, region_of,
};

use crate::RuntimeError;
use crate::backend::{Backend, MemoryShape, Started};
use job::{Job, Shared};
use segment::{Owner, Segment, SegmentLayout};

/// The bit that marks a gradient hand-off word as acknowledged by the master's rank.
const ACKNOWLEDGED: u64 = 1 << 63;

/// Every rank's segment, as this process sees them.
#[derive(Debug)]
pub(crate) struct Peers {
    segments: Vec<Arc<Segment>>,
}

impl Peers {
    fn segment(&self, rank: u32) -> Result<&Segment, RuntimeError> {
        self.segments
            .get(rank as usize)
            .map(|s| &**s)
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!(
                    "rank {rank} is not in the group of {}",
                    self.segments.len()
                ))
            })
    }

    /// The rank expected to write (`awaited`) if it is gone; with no rank expected, any rank
    /// that is gone.
    fn lost_peer(&self, awaited: Option<u32>) -> Option<u32> {
        let gone = |rank: u32| {
            self.segments
                .get(rank as usize)
                .is_some_and(|segment| !segment.owner_alive())
        };
        match awaited {
            Some(rank) => Some(rank).filter(|&rank| gone(rank)),
            None => (0..self.segments.len() as u32).find(|&rank| gone(rank)),
        }
    }

    /// Waits until `word` holds `target` (acquire), for at most `timeout`; gives up early when
    /// `failed` is set by another worker, or when a peer is gone (`awaited`, the rank expected to
    /// write the word, is checked first). `what` names the wait in the error.
    fn wait_for(
        &self,
        word: &AtomicU64,
        target: u64,
        timeout: Duration,
        failed: Option<&AtomicBool>,
        awaited: Option<u32>,
        what: impl Fn() -> String,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let mut spins = 0u32;
        while word.load(Ordering::Acquire) != target {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
                continue;
            }
            if failed.is_some_and(|f| f.load(Ordering::Acquire)) {
                return Err(RuntimeError::Backend("another worker failed first".into()));
            }
            if spins.is_multiple_of(1024) {
                if let Some(rank) = self.lost_peer(awaited) {
                    return Err(RuntimeError::PeerLost { rank });
                }
                if started.elapsed() >= timeout {
                    return Err(RuntimeError::Timeout {
                        waited: timeout,
                        what: what(),
                    });
                }
            }
            if spins < 4096 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// Executes one tile task: waits for the tile if the task forwards it from a relay slot,
    /// stores it into every destination slot, and marks it landed there for `round`.
    fn execute(
        &self,
        task: &TileTask,
        destinations: &[TileDestination],
        round: u64,
        timeout: Duration,
        failed: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let source = self.segment(task.source_rank)?;
        let layout = source.layout();
        let tile_bytes = u64::from(layout.tile_bytes.max(1));
        if !task.offset.is_multiple_of(tile_bytes) {
            return Err(RuntimeError::InvalidInput(format!(
                "a tile task at offset {} is not on the {tile_bytes}-byte tile grid",
                task.offset
            )));
        }
        let tile = (task.offset / tile_bytes) as usize;
        let region = region_of(task.source_region);
        if task.wait_flag != NO_FLAG {
            let Region::Slot { slot } = region else {
                return Err(RuntimeError::InvalidInput(
                    "a tile task waits for a master, which never arrives".into(),
                ));
            };
            check_tile(&layout, slot, tile)?;
            self.wait_for(
                source.tile_word(slot, tile),
                round,
                timeout,
                Some(failed),
                None,
                || {
                    format!(
                        "tile {tile} of slot {slot} of relay rank {} to arrive",
                        task.source_rank
                    )
                },
            )?;
        }
        for destination in destinations {
            let target = self.segment(destination.rank)?;
            let Region::Slot { slot } = region_of(destination.region) else {
                return Err(RuntimeError::InvalidInput(
                    "a tile task writes a master; only slots receive".into(),
                ));
            };
            check_tile(&target.layout(), slot, tile)?;
            // Not before the slot's owner has opened it for this round: until then it may still
            // be receiving, or computing with, what an earlier call put there.
            self.wait_for(
                target.open_word(slot),
                round,
                timeout,
                Some(failed),
                Some(destination.rank),
                || {
                    format!(
                        "rank {} to open slot {slot} for transfer round {round}",
                        destination.rank
                    )
                },
            )?;
            source.copy_to(
                region,
                task.offset,
                task.bytes,
                target,
                Region::Slot { slot },
            )?;
            target.tile_word(slot, tile).store(round, Ordering::Release);
        }
        Ok(())
    }
}

fn check_tile(layout: &SegmentLayout, slot: u16, tile: usize) -> Result<(), RuntimeError> {
    if slot >= layout.slots || tile >= layout.tiles() {
        return Err(RuntimeError::InvalidInput(format!(
            "tile {tile} of slot {slot} does not exist ({} slots of {} tiles)",
            layout.slots,
            layout.tiles()
        )));
    }
    Ok(())
}

/// A slot this plane's ranks receive in a transfer, and where its master is.
#[derive(Debug, Clone, Copy)]
struct Receive {
    rank: u32,
    slot: u16,
    expert: u32,
    master: u32,
    master_index: u32,
}

/// The host data plane of one or more local ranks: each rank's memory is a segment its peers
/// map (anonymous for threads of one process, named under `/dev/shm` for processes of one host),
/// and a rank stores its tiles straight into its peers' slots, relays forwarding each tile as it
/// lands. The plane owns its local ranks' memory only, executes only their share of a transfer,
/// and ends every wait on a peer with the data, [`RuntimeError::PeerLost`] or
/// [`RuntimeError::Timeout`].
#[derive(Debug)]
pub struct HostPlane {
    pool: WorkerPool<Shared>,
    local: Range<u32>,
    owners: Vec<Owner>,
    slots_per_rank: u16,
    slot_states: Vec<SlotState>,
    round: u64,
    timeout: Duration,
    fail_at_task: Option<usize>,
    /// The bytes of the distribution running on the workers.
    running: Option<u64>,
    /// The checksum of every local master, kept until the master is written again (local rank
    /// after local rank, masters in order); `None` until computed.
    master_sums: Vec<Option<u64>>,
    /// Where each local rank's masters start in `master_sums`.
    master_sums_at: Vec<usize>,
    receives: Vec<Receive>,
    reduction: ReductionScratch,
}

/// How a host plane waits and works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneOptions {
    /// The longest a rank waits for a peer (a tile, a gradient, a segment) before it returns
    /// [`RuntimeError::Timeout`].
    pub timeout: Duration,
    /// Threads that execute this plane's tile tasks (1: the caller's thread).
    pub workers: usize,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            workers: 1,
        }
    }
}

impl HostPlane {
    fn layout(shape: &MemoryShape<'_>, rank: u32) -> SegmentLayout {
        SegmentLayout {
            masters: shape.masters_per_rank[rank as usize],
            slots: shape.slots_per_rank,
            state_bytes: shape.state_bytes,
            tile_bytes: shape.tile_bytes,
        }
    }

    fn assemble(
        shape: &MemoryShape<'_>,
        segments: Vec<Arc<Segment>>,
        owners: Vec<Owner>,
        options: PlaneOptions,
    ) -> Self {
        let local = shape.local.clone();
        let slot_count = local.len() * usize::from(shape.slots_per_rank);
        let mut master_sums_at = vec![0];
        for rank in local.clone() {
            let last = master_sums_at.last().copied().unwrap_or(0);
            master_sums_at.push(last + shape.masters_per_rank[rank as usize] as usize);
        }
        Self {
            pool: WorkerPool::new(
                Shared {
                    peers: Peers { segments },
                    job: RwLock::new(Job::default()),
                },
                options.workers.max(1),
                Shared::work,
            ),
            local,
            owners,
            slots_per_rank: shape.slots_per_rank,
            slot_states: vec![SlotState::Empty; slot_count],
            round: 0,
            timeout: options.timeout,
            fail_at_task: None,
            running: None,
            master_sums: vec![None; master_sums_at.last().copied().unwrap_or(0)],
            master_sums_at,
            receives: Vec::new(),
            reduction: ReductionScratch::default(),
        }
    }

    /// A plane whose local ranks are `shape.local`, over anonymous segments of every rank of
    /// the group. Used with all ranks local, it is the in-process backend of tools and tests.
    pub fn in_process(
        shape: &MemoryShape<'_>,
        options: PlaneOptions,
    ) -> Result<Self, RuntimeError> {
        let mut segments = Vec::with_capacity(shape.masters_per_rank.len());
        let mut owners = Vec::new();
        for rank in 0..shape.masters_per_rank.len() as u32 {
            let segment = Segment::anonymous(Self::layout(shape, rank))?;
            if shape.local.contains(&rank) {
                owners.push(Owner::of(&segment));
            }
            segments.push(Arc::new(segment));
        }
        Ok(Self::assemble(shape, segments, owners, options))
    }

    /// One plane per rank of `shape`'s group, each owning its rank's segment only and mapping
    /// the others': ranks that are threads of one process.
    pub fn per_rank(
        shape: &MemoryShape<'_>,
        options: PlaneOptions,
    ) -> Result<Vec<Self>, RuntimeError> {
        let ranks = shape.masters_per_rank.len() as u32;
        let segments = (0..ranks)
            .map(|rank| Segment::anonymous(Self::layout(shape, rank)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((0..ranks)
            .map(|rank| {
                let owner = Owner::of(&segments[rank as usize]);
                let local = MemoryShape {
                    local: rank..rank + 1,
                    ..shape.clone()
                };
                Self::assemble(&local, segments.clone(), vec![owner], options)
            })
            .collect())
    }

    /// The plane of this process's ranks (`shape.local`) in the group named `group` of processes
    /// on this host: it creates a named segment for each local rank and maps every peer's,
    /// waiting for each to appear for at most `options.timeout`. `group` must be the same in
    /// every process of the group and new for every group (a rebuilt group takes a new name).
    pub fn shared_memory(
        group: &str,
        shape: &MemoryShape<'_>,
        options: PlaneOptions,
    ) -> Result<Self, RuntimeError> {
        let ranks = shape.masters_per_rank.len() as u32;
        let mut created = Vec::new();
        let mut owners = Vec::new();
        for rank in shape.local.clone() {
            let path = segment_path(group, shape.purpose, rank)?;
            let segment = Segment::create(&path, Self::layout(shape, rank))?;
            owners.push(Owner::of(&segment));
            created.push(Arc::new(segment));
        }
        let started = Instant::now();
        let mut segments = Vec::with_capacity(ranks as usize);
        for rank in 0..ranks {
            if shape.local.contains(&rank) {
                segments.push(Arc::clone(&created[(rank - shape.local.start) as usize]));
                continue;
            }
            let path = segment_path(group, shape.purpose, rank)?;
            loop {
                if let Some(segment) = Segment::open(&path, Self::layout(shape, rank))? {
                    segments.push(Arc::new(segment));
                    break;
                }
                if started.elapsed() >= options.timeout {
                    return Err(RuntimeError::Timeout {
                        waited: options.timeout,
                        what: format!("rank {rank}'s memory ({}) to appear", path.display()),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(Self::assemble(shape, segments, owners, options))
    }

    fn peers(&self) -> &Peers {
        &self.pool.state().peers
    }

    /// The ranks whose memory this plane owns.
    pub fn local_ranks(&self) -> Range<u32> {
        self.local.clone()
    }

    /// Bytes of expert state this plane owns: its ranks' masters and slots.
    pub fn owned_state_bytes(&self) -> u64 {
        self.local
            .clone()
            .map(|rank| {
                self.peers().segments[rank as usize]
                    .layout()
                    .state_bytes_total()
            })
            .sum()
    }

    fn local_index(&self, rank: u32) -> Result<usize, RuntimeError> {
        if self.local.contains(&rank) {
            Ok((rank - self.local.start) as usize)
        } else {
            Err(RuntimeError::NotLocal {
                rank,
                local: self.local.clone(),
            })
        }
    }

    fn slot_state_index(&self, rank: u32, slot: u16) -> Result<usize, RuntimeError> {
        let index = self.local_index(rank)?;
        if slot >= self.slots_per_rank {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {rank} has no slot {slot} (it has {})",
                self.slots_per_rank
            )));
        }
        Ok(index * usize::from(self.slots_per_rank) + usize::from(slot))
    }

    /// What slot `slot` of local rank `rank` holds.
    pub fn slot_state(&self, rank: u32, slot: u16) -> Result<SlotState, RuntimeError> {
        Ok(self.slot_states[self.slot_state_index(rank, slot)?])
    }

    /// The bytes of master `index` of local rank `rank`, in place.
    pub fn master(&self, rank: u32, index: u32) -> Result<&[u8], RuntimeError> {
        self.local_index(rank)?;
        self.peers().segment(rank)?.region(Region::Master { index })
    }

    /// The bytes of master `index` of local rank `rank`, to write in place (a framework keeps
    /// its parameters here instead of copying them in).
    pub fn master_mut(&mut self, rank: u32, index: u32) -> Result<&mut [u8], RuntimeError> {
        let local = self.local_index(rank)?;
        // The bytes may change: the kept checksum no longer holds.
        if let Some(sum) = self
            .master_sums
            .get_mut(self.master_sums_at[local] + index as usize)
        {
            *sum = None;
        }
        let segment = &*self.pool.state().peers.segments[rank as usize];
        segment.region_mut(&mut self.owners[local], Region::Master { index })
    }

    /// The bytes of a ready slot of local rank `rank`, in place.
    pub fn slot(&self, rank: u32, slot: u16) -> Result<&[u8], RuntimeError> {
        match self.slot_state(rank, slot)? {
            SlotState::Ready { .. } => self.peers().segment(rank)?.region(Region::Slot { slot }),
            _ => Err(RuntimeError::SlotNotReady { rank, slot }),
        }
    }

    fn set_slot_state(
        &mut self,
        rank: u32,
        slot: u16,
        state: SlotState,
    ) -> Result<(), RuntimeError> {
        let index = self.slot_state_index(rank, slot)?;
        self.slot_states[index] = state;
        Ok(())
    }

    /// Publishes the checksum of every master this plane sends in `schedule`, before any of its
    /// tiles leaves: receivers compare their copy with it. A master's checksum is computed once
    /// and kept until the master is written again.
    fn publish_checksums(&mut self, schedule: &TransferSchedule) -> Result<(), RuntimeError> {
        for fanout in schedule.fanouts() {
            if !self.local.contains(&fanout.master) {
                continue;
            }
            let local = self.local_index(fanout.master)?;
            let at = self.master_sums_at[local] + fanout.master_index as usize;
            let segment = self.pool.state().peers.segment(fanout.master)?;
            let sum = match self.master_sums.get(at).copied().flatten() {
                Some(sum) => sum,
                None => {
                    let bytes = segment.region(Region::Master {
                        index: fanout.master_index,
                    })?;
                    let mut sum = Checksum::new(bytes.len() as u64);
                    sum.update(bytes);
                    let sum = sum.finish();
                    if let Some(kept) = self.master_sums.get_mut(at) {
                        *kept = Some(sum);
                    }
                    sum
                }
            };
            segment
                .checksum_word(fanout.master_index)
                .store(sum, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits for every tile of every slot this plane receives in this round, then checks each
    /// copy against its master's published checksum.
    fn complete_receives(&mut self) -> Result<(), RuntimeError> {
        let peers = &self.pool.state().peers;
        for receive in &self.receives {
            let segment = peers.segment(receive.rank)?;
            for tile in 0..segment.layout().tiles() {
                peers.wait_for(
                    segment.tile_word(receive.slot, tile),
                    self.round,
                    self.timeout,
                    None,
                    Some(receive.master),
                    || {
                        format!(
                            "tile {tile} of expert {} for slot {} of rank {}",
                            receive.expert, receive.slot, receive.rank
                        )
                    },
                )?;
            }
        }
        for index in 0..self.receives.len() {
            let receive = self.receives[index];
            let peers = &self.pool.state().peers;
            let bytes = peers
                .segment(receive.rank)?
                .region(Region::Slot { slot: receive.slot })?;
            let mut sum = Checksum::new(bytes.len() as u64);
            sum.update(bytes);
            let found = sum.finish();
            let expected = peers
                .segment(receive.master)?
                .checksum_word(receive.master_index)
                .load(Ordering::Relaxed);
            if found != expected {
                return Err(ultraep_xfer::XferError::ChecksumMismatch {
                    expert: receive.expert,
                    rank: receive.rank,
                    slot: receive.slot,
                    expected,
                    found,
                }
                .into());
            }
            self.set_slot_state(
                receive.rank,
                receive.slot,
                SlotState::Ready {
                    expert: receive.expert,
                },
            )?;
        }
        Ok(())
    }
}

/// The file of rank `rank`'s `purpose` memory in group `group`.
pub(crate) fn segment_path(group: &str, purpose: &str, rank: u32) -> Result<PathBuf, RuntimeError> {
    let valid = !group.is_empty()
        && group.len() <= 64
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(RuntimeError::InvalidConfig(format!(
            "group name {group:?}: use 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    Ok(PathBuf::from(format!(
        "/dev/shm/ultraep-{group}-{purpose}-{rank}"
    )))
}

impl Backend for HostPlane {
    fn local_ranks(&self) -> Range<u32> {
        self.local.clone()
    }

    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError> {
        let region = self.master_mut(rank, index)?;
        if region.len() != bytes.len() {
            return Err(RuntimeError::WrongSize {
                what: "state",
                got: bytes.len(),
                expected: region.len() as u64,
            });
        }
        region.copy_from_slice(bytes);
        Ok(())
    }

    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.master(rank, index).map(Cow::Borrowed)
    }

    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError> {
        self.slot(rank, slot).map(Cow::Borrowed)
    }

    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
        token: u64,
    ) -> Result<(), RuntimeError> {
        let local = self.local_index(rank)?;
        self.slot_state_index(rank, slot)?;
        let segment = &*self.pool.state().peers.segments[rank as usize];
        let region = segment.region_mut(&mut self.owners[local], Region::Slot { slot })?;
        if region.len() != bytes.len() {
            return Err(RuntimeError::WrongSize {
                what: "state",
                got: bytes.len(),
                expected: region.len() as u64,
            });
        }
        region.copy_from_slice(bytes);
        // The hand-off word comes after the bytes: a master's rank that sees it sees them.
        segment
            .slot_word(slot)
            .store(token & !ACKNOWLEDGED, Ordering::Release);
        self.set_slot_state(rank, slot, SlotState::Ready { expert })
    }

    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError> {
        match self.start_distribute(schedule, tasks)? {
            Started::Done(bytes) => Ok(bytes),
            Started::Running => self.finish_distribute(),
        }
    }

    fn start_distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<Started, RuntimeError> {
        let segments = self.peers().segments.len() as u32;
        let tile_bytes = schedule.config().tile_bytes;
        if schedule.state_bytes()
            != self
                .peers()
                .segments
                .first()
                .map_or(0, |s| s.layout().state_bytes)
            || self
                .peers()
                .segments
                .first()
                .is_some_and(|s| s.layout().tile_bytes != tile_bytes)
        {
            return Err(RuntimeError::InvalidInput(format!(
                "a schedule of {}-byte states in {tile_bytes}-byte tiles for other memory",
                schedule.state_bytes()
            )));
        }
        // Every rank of the group runs the same rounds in the same order, so the round number
        // is the same everywhere without being sent.
        self.round += 1;
        self.receives.clear();
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if rank >= segments {
                    return Err(RuntimeError::InvalidInput(format!(
                        "a destination on rank {rank} of {segments}"
                    )));
                }
                if self.local.contains(&rank) {
                    self.slot_state_index(rank, slot)?;
                    self.receives.push(Receive {
                        rank,
                        slot,
                        expert: fanout.expert,
                        master: fanout.master,
                        master_index: fanout.master_index,
                    });
                }
            }
        }
        // From here until verified, the slots being written must not be used.
        for index in 0..self.receives.len() {
            let receive = self.receives[index];
            self.set_slot_state(
                receive.rank,
                receive.slot,
                SlotState::NotReady {
                    expert: receive.expert,
                },
            )?;
        }
        self.publish_checksums(schedule)?;
        // Open the slots this plane receives for this round; senders wait for it.
        for receive in &self.receives {
            self.pool
                .state()
                .peers
                .segment(receive.rank)?
                .open_word(receive.slot)
                .store(self.round, Ordering::Release);
        }
        {
            let mut job = self
                .pool
                .state()
                .job
                .write()
                .map_err(|_| RuntimeError::Backend("a data-plane worker panicked".into()))?;
            job.tasks.clear();
            job.destinations.clear();
            for task in &tasks.tasks {
                if !self.local.contains(&task.source_rank) {
                    continue;
                }
                let first = job.destinations.len() as u32;
                job.destinations
                    .extend_from_slice(tasks.destinations_of(task));
                job.tasks.push(TileTask {
                    first_destination: first,
                    ..*task
                });
            }
            job.round = self.round;
            job.timeout = self.timeout;
            job.fail_at_task = self.fail_at_task.take();
            job.next.store(0, Ordering::Relaxed);
            job.failed.store(false, Ordering::Relaxed);
            if let Ok(mut failure) = job.failure.lock() {
                *failure = None;
            }
        }
        self.pool.start()?;
        self.running = Some(tasks.bytes_stored());
        Ok(Started::Running)
    }

    fn finish_distribute(&mut self) -> Result<u64, RuntimeError> {
        let bytes = self
            .running
            .take()
            .ok_or_else(|| RuntimeError::Backend("no distribution is running".into()))?;
        self.pool.wait()?;
        let failure = self
            .pool
            .state()
            .job
            .read()
            .ok()
            .and_then(|job| job.failure.lock().ok()?.take());
        if let Some(error) = failure {
            return Err(error);
        }
        self.complete_receives()?;
        Ok(bytes)
    }

    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        token: u64,
    ) -> Result<(), RuntimeError> {
        let token = token & !ACKNOWLEDGED;
        let floats = (schedule.state_bytes() / 4) as usize;
        if !schedule.state_bytes().is_multiple_of(4) {
            return Err(RuntimeError::InvalidInput(format!(
                "a {}-byte gradient is not FP32 values",
                schedule.state_bytes()
            )));
        }
        // Every replica gradient this plane reduces must be there before any master changes, so
        // that a failure changes nothing.
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if self.local.contains(&rank) {
                    let expected = SlotState::Ready {
                        expert: fanout.expert,
                    };
                    if self.slot_state(rank, slot)? != expected {
                        return Err(RuntimeError::SlotNotReady { rank, slot });
                    }
                }
                if self.local.contains(&fanout.master) {
                    let peers = self.peers();
                    let segment = peers.segment(rank)?;
                    if slot >= segment.layout().slots {
                        return Err(RuntimeError::SlotNotReady { rank, slot });
                    }
                    peers.wait_for(
                        segment.slot_word(slot),
                        token,
                        self.timeout,
                        None,
                        Some(rank),
                        || {
                            format!(
                                "the gradient of expert {}'s replica on rank {rank}",
                                fanout.expert
                            )
                        },
                    )?;
                }
            }
        }
        // Masters here: sum their replicas in the documented order, then acknowledge.
        for fanout in schedule.fanouts() {
            if !self.local.contains(&fanout.master) {
                continue;
            }
            let local = self.local_index(fanout.master)?;
            if let Some(sum) = self
                .master_sums
                .get_mut(self.master_sums_at[local] + fanout.master_index as usize)
            {
                *sum = None;
            }
            let peers = &self.pool.state().peers;
            let segment = &*peers.segments[fanout.master as usize];
            let master = segment.region_mut(
                &mut self.owners[local],
                Region::Master {
                    index: fanout.master_index,
                },
            )?;
            let master: &mut [f32] = bytemuck::try_cast_slice_mut(master)
                .map_err(|error| RuntimeError::Backend(format!("gradient memory: {error}")))?;
            let empty: &[f32] = &[];
            self.reduction.reduce(schedule, fanout, master, |rank| {
                fanout
                    .destinations
                    .iter()
                    .find(|(r, _)| *r == rank)
                    .and_then(|&(rank, slot)| {
                        peers.segment(rank).ok()?.region(Region::Slot { slot }).ok()
                    })
                    .and_then(|bytes| bytemuck::try_cast_slice(bytes).ok())
                    .filter(|values: &&[f32]| values.len() == floats)
                    .unwrap_or(empty)
            })?;
            for &(rank, slot) in &fanout.destinations {
                peers
                    .segment(rank)?
                    .slot_word(slot)
                    .store(token | ACKNOWLEDGED, Ordering::Release);
            }
        }
        // Replicas here: once their master's rank has read them, empty them for the next layer.
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                if !self.local.contains(&rank) {
                    continue;
                }
                let local = self.local_index(rank)?;
                let peers = &self.pool.state().peers;
                let segment = &*peers.segments[rank as usize];
                peers.wait_for(
                    segment.slot_word(slot),
                    token | ACKNOWLEDGED,
                    self.timeout,
                    None,
                    Some(fanout.master),
                    || {
                        format!(
                            "rank {} to reduce expert {}'s gradient",
                            fanout.master, fanout.expert
                        )
                    },
                )?;
                segment
                    .region_mut(&mut self.owners[local], Region::Slot { slot })?
                    .fill(0);
                segment.slot_word(slot).store(0, Ordering::Release);
                self.set_slot_state(rank, slot, SlotState::Empty)?;
            }
        }
        Ok(())
    }

    fn inject_failure_at(&mut self, task: usize) {
        self.fail_at_task = Some(task);
    }
}
