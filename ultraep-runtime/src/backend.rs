//! Where expert weights and gradients live and how they move: the engine's data plane.
//!
//! [`Backend`] is what the engine needs of it: the memory of the engine's *local* ranks (one rank
//! in a process-per-GPU deployment) and the means to take part in a transfer with the others.
//! Two implementations ship: [`crate::HostPlane`] (CPU memory that peers map: ranks that are
//! threads of one process, or processes of one host over shared memory) and, with the `cuda`
//! feature, `CudaBackend` (every rank local, emulated as separate buffers of one GPU, moved by the
//! tile-streaming kernel and reduced by the reduction kernel of `ultraep-kernels`).

use std::borrow::Cow;
use std::ops::Range;

use ultraep_xfer::{TileTaskList, TransferSchedule};

use crate::RuntimeError;

/// The shape of one backend memory: every rank's master states and slots, and which ranks'
/// memory this backend holds.
#[derive(Debug, Clone)]
pub struct MemoryShape<'a> {
    /// What the memory holds (`"weights"` or `"gradients"`): it names shared-memory segments.
    pub purpose: &'static str,
    /// The ranks whose memory this backend holds; it reaches the others only as peers.
    pub local: Range<u32>,
    /// Master expert states on every rank of the group (every layer's).
    pub masters_per_rank: &'a [u32],
    /// Redundant slots per rank.
    pub slots_per_rank: u16,
    /// Bytes of one state (weights, or an FP32 gradient).
    pub state_bytes: u64,
    /// The transfer tile: the host plane signals every tile of a slot as it lands.
    pub tile_bytes: u32,
    /// Worker threads (CPU).
    pub workers: usize,
}

/// How [`Backend::start_distribute`] left a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// It is complete: this many bytes stored.
    Done(u64),
    /// It runs on the backend's workers; [`Backend::finish_distribute`] waits for it.
    Running,
}

/// Rank memory and the means to move expert state between ranks.
///
/// A backend never lets a half-written slot be read: a slot a distribution writes is not ready
/// until every byte has landed and been verified, and stays not ready if the distribution fails.
pub trait Backend {
    /// The ranks whose memory this backend holds.
    fn local_ranks(&self) -> Range<u32>;
    /// Sets master state `index` of `rank`.
    fn write_master(&mut self, rank: u32, index: u32, bytes: &[u8]) -> Result<(), RuntimeError>;
    /// Master state `index` of `rank`: borrowed in place where the memory is the host's.
    fn read_master(&self, rank: u32, index: u32) -> Result<Cow<'_, [u8]>, RuntimeError>;
    /// The state in slot `slot` of `rank`, if it holds a complete copy: borrowed in place where
    /// the memory is the host's.
    fn read_slot(&self, rank: u32, slot: u16) -> Result<Cow<'_, [u8]>, RuntimeError>;
    /// Fills slot `slot` of `rank` with `bytes` of `expert` and marks it ready (a replica's
    /// gradient, which the next reduction hands to its master's rank).
    fn write_slot(
        &mut self,
        rank: u32,
        slot: u16,
        expert: u32,
        bytes: &[u8],
    ) -> Result<(), RuntimeError>;
    /// Whether [`Backend::distribute`] reads the tile task list. A backend that does not (the
    /// host-driven one works from the schedule) spares the engine building it; it then gets an
    /// empty list.
    fn uses_tile_tasks(&self) -> bool {
        true
    }
    /// Executes this backend's share of a weight distribution (the tiles its ranks send or
    /// forward, and the wait for the slots they receive); returns the bytes the whole
    /// distribution stores.
    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<u64, RuntimeError>;
    /// Starts this backend's share of a weight distribution; [`Backend::finish_distribute`] ends
    /// it. A backend that cannot overlap transfers with the caller's work runs it whole here.
    fn start_distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<Started, RuntimeError> {
        self.distribute(schedule, tasks).map(Started::Done)
    }
    /// Finishes the distribution [`Backend::start_distribute`] left running; returns the bytes
    /// it stores.
    fn finish_distribute(&mut self) -> Result<u64, RuntimeError> {
        Err(RuntimeError::Backend("no distribution is running".into()))
    }
    /// Sums the replicas' FP32 states of `schedule` into their masters' in the documented order
    /// (for the masters this backend holds) and empties the replica slots (those it holds);
    /// every replica slot must be ready, or nothing changes. `token` names the reduction the same
    /// on every rank, so that ranks hand gradients over without sending the name.
    fn reduce_gradients(
        &mut self,
        schedule: &TransferSchedule,
        token: u64,
    ) -> Result<(), RuntimeError>;
    /// Copies the state staged in slot `slot` of local rank `rank` into its master `index`: how
    /// a layout switch installs a master that moved to the rank. The slot must be ready. A
    /// backend whose memory is elsewhere (the host-driven one) leaves the copy to its caller.
    fn install_staged(&mut self, rank: u32, slot: u16, index: u32) -> Result<(), RuntimeError> {
        let staged = self.read_slot(rank, slot)?.into_owned();
        self.write_master(rank, index, &staged)
    }
    /// Makes the next distribution fail at this backend's tile task `task`: the hook behind
    /// `Engine::inject_transfer_failure` (feature `fault-injection`). Does nothing by default.
    #[doc(hidden)]
    fn inject_failure_at(&mut self, _task: usize) {}
}
