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

mod handoff;
mod job;
mod peers;
pub(crate) mod segment;
mod transfer;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ultraep_xfer::{ReductionScratch, Region, SlotState, WorkerPool};

use crate::RuntimeError;
use crate::backend::MemoryShape;
use crate::slot_readiness::SlotReadiness;
use job::{Job, Shared};
use peers::Peers;
pub(crate) use peers::wait_until;
use segment::{Owner, Segment, SegmentLayout};
use transfer::Receive;

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
    /// What every slot of the local ranks holds.
    slots: SlotReadiness,
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
            slots: SlotReadiness::new(shape.local.clone(), shape.slots_per_rank),
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

    /// What slot `slot` of local rank `rank` holds.
    pub fn slot_state(&self, rank: u32, slot: u16) -> Result<SlotState, RuntimeError> {
        self.slots.get(rank, slot)
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
        if self.running.is_some() {
            return Err(RuntimeError::Backend(
                "a distribution is reading the masters: finish it before writing one".into(),
            ));
        }
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
        self.slots.require_ready(rank, slot, None)?;
        self.peers().segment(rank)?.region(Region::Slot { slot })
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
