//! The tile task list: the schedule cut into 32 KiB tiles, as plain descriptors a GPU kernel (or the
//! runtime's host plane) executes as they are.
//!
//! A [`TileTask`] loads one tile from one place and stores it to each of its
//! [`TileDestination`]s (a contiguous run of the destination array). A task that forwards a piece
//! (a chunk, or a tile of a relayed expert's tail) waits until that piece's arrival flag counts all
//! of its tiles; every store into a relay bumps the flag of the piece it belongs to. Tasks are listed
//! piece-major, and every task that waits comes after every task that bumps its flag, so executors
//! that take tasks in list order (an atomic counter) never wait for a task nobody has taken.

use bytemuck::{Pod, Zeroable};

use crate::replicas::Region;
use crate::{Hop, Piece, ScheduledFanout, TransferSchedule};

/// Where a multicast reads from.
#[derive(Debug, Clone, Copy)]
struct Source {
    rank: u32,
    region: u32,
}

/// No flag: the task waits for nothing, or nobody waits for the store.
pub const NO_FLAG: u32 = u32::MAX;

/// Region codes at or above this are slots (`SLOT_REGION | slot`); below, master expert indices.
pub const SLOT_REGION: u32 = 0x8000_0000;

/// Encodes a [`Region`] as the kernel's 32-bit region code.
pub fn region_code(region: Region) -> u32 {
    match region {
        Region::Master { index } => index,
        Region::Slot { slot } => SLOT_REGION | u32::from(slot),
    }
}

/// Decodes a region code.
pub fn region_of(code: u32) -> Region {
    if code >= SLOT_REGION {
        Region::Slot {
            slot: (code & !SLOT_REGION) as u16,
        }
    } else {
        Region::Master { index: code }
    }
}

/// One tile to load once and store to several destinations.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TileTask {
    /// The rank the tile is read from.
    pub source_rank: u32,
    /// The region it is read from ([`region_code`]).
    pub source_region: u32,
    /// Byte offset of the tile in its region (the same in every destination region).
    pub offset: u64,
    /// Bytes in the tile (a multiple of 16 except perhaps the last tile of a state).
    pub bytes: u32,
    /// Index of the first destination in [`TileTaskList::destinations`].
    pub first_destination: u32,
    /// How many destinations follow it.
    pub destination_count: u32,
    /// The flag to wait for before loading, or [`NO_FLAG`].
    pub wait_flag: u32,
    /// The count `wait_flag` must reach.
    pub wait_count: u32,
    /// The piece the tile belongs to (within its expert's pieces).
    pub piece: u32,
}

/// One store of a tile.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TileDestination {
    /// The rank stored to.
    pub rank: u32,
    /// The region stored to ([`region_code`]).
    pub region: u32,
    /// The flag to bump once the tile is stored, or [`NO_FLAG`].
    pub signal_flag: u32,
    /// The expert whose state this is (for checks and tracing).
    pub expert: u32,
}

/// The tasks of one layer's weight distribution. Built only from a schedule
/// ([`TileTaskList::build`], [`TaskListBuilder::build_into`]) or as a rank's share of such a list
/// ([`TileTaskList::share_into`]), so that every task's destinations are in the list and every
/// flag a task waits for is one of the list's, signalled by the tasks of the whole list (a share's
/// waits are signalled by the other ranks' shares): a user cannot hand a kernel a list that points
/// out of range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TileTaskList {
    pub(crate) tasks: Vec<TileTask>,
    pub(crate) destinations: Vec<TileDestination>,
    pub(crate) flag_count: u32,
}

/// Cuts schedules into task lists again and again in the same buffers: once warm,
/// [`TaskListBuilder::build_into`] does not allocate.
#[derive(Debug, Default)]
pub struct TaskListBuilder {
    /// Every fan-out's pieces, one after the other; fan-out `f`'s start at `starts[f]`.
    pieces: Vec<Piece>,
    starts: Vec<usize>,
    owned: Vec<u64>,
    hops: Vec<Hop>,
    /// One sender's stores: (rank, slot, the flag each store bumps).
    targets: Vec<(u32, u16, u32)>,
}

impl TaskListBuilder {
    /// Builds into `list` what [`TileTaskList::build`] returns, reusing its buffers.
    pub fn build_into(&mut self, schedule: &TransferSchedule, list: &mut TileTaskList) {
        list.tasks.clear();
        list.destinations.clear();
        list.flag_count = 0;
        self.pieces.clear();
        self.starts.clear();
        for fanout in schedule.fanouts() {
            self.starts.push(self.pieces.len());
            schedule.pieces_into(fanout, &mut self.pieces, &mut self.owned);
        }
        self.starts.push(self.pieces.len());
        let steps = self
            .starts
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0);
        let tile = u64::from(schedule.config().tile_bytes);
        for step in 0..steps {
            for (index, fanout) in schedule.fanouts().iter().enumerate() {
                let (start, end) = (self.starts[index], self.starts[index + 1]);
                if start + step >= end {
                    continue;
                }
                let piece = self.pieces[start + step];
                self.hops.clear();
                schedule.hops_into(fanout, step, &piece, &mut self.hops);
                // Every sender of the piece stores it as one multicast: the master first, then
                // each relay, which waits for its own arrival flag. A store into a relay bumps
                // that relay's flag; other stores bump nothing.
                let first_flag = list.flag_count;
                let mut sender_flags: [(u32, u32); 2] = [(u32::MAX, NO_FLAG); 2];
                let mut relays = 0;
                for hop in &self.hops {
                    if hop.forwarded && !sender_flags[..relays].iter().any(|f| f.0 == hop.from) {
                        sender_flags[relays] = (hop.from, first_flag + relays as u32);
                        relays += 1;
                    }
                }
                list.flag_count += relays as u32;
                let flag_of = |rank: u32| {
                    sender_flags[..relays]
                        .iter()
                        .find(|f| f.0 == rank)
                        .map_or(NO_FLAG, |f| f.1)
                };
                let senders = std::iter::once((fanout.master, None)).chain(
                    sender_flags[..relays]
                        .iter()
                        .map(|&(rank, flag)| (rank, Some(flag))),
                );
                for (sender, wait) in senders {
                    self.targets.clear();
                    self.targets.extend(
                        self.hops
                            .iter()
                            .filter(|hop| hop.from == sender)
                            .map(|hop| (hop.to, fanout.slot_of(hop.to), flag_of(hop.to))),
                    );
                    if self.targets.is_empty() {
                        continue;
                    }
                    let source = match wait {
                        None => Source {
                            rank: fanout.master,
                            region: region_code(Region::Master {
                                index: fanout.master_index,
                            }),
                        },
                        Some(_) => Source {
                            rank: sender,
                            region: region_code(Region::Slot {
                                slot: fanout.slot_of(sender),
                            }),
                        },
                    };
                    list.push_multicast(
                        tile,
                        fanout,
                        step as u32,
                        piece,
                        source,
                        &self.targets,
                        wait,
                    );
                }
            }
        }
    }
}

impl TileTaskList {
    /// Cuts `schedule` into tiles.
    ///
    /// ```
    /// use ultraep_topo::Preset;
    /// use ultraep_xfer::{ExpertState, ReplicaSet, Fanout, TileTaskList, TransferConfig, TransferSchedule};
    /// let topo = Preset::HgxH100.topology(1)?;
    /// let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(1, 0), (2, 0)])?])?;
    /// let state = ExpertState::opaque(1 << 20)?; // 1 MiB: 4 chunks of 8 tiles
    /// let direct = TransferConfig { allow_relays: false, ..TransferConfig::default() };
    /// let schedule = TransferSchedule::build(&replicas, &state, &topo, direct)?;
    /// let list = TileTaskList::build(&schedule);
    /// assert_eq!(list.tasks().len(), 32); // direct: every tile loaded once, stored twice
    /// assert!(list.tasks().iter().all(|t| t.destination_count == 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build(schedule: &TransferSchedule) -> Self {
        let mut list = TileTaskList::default();
        TaskListBuilder::default().build_into(schedule, &mut list);
        list
    }

    /// Appends the tiles of one piece sent from `source` to every destination in `to` (rank, slot,
    /// and the flag the store bumps), waiting for `wait` (the piece's arrival at a relay).
    #[allow(clippy::too_many_arguments)]
    fn push_multicast(
        &mut self,
        tile: u64,
        fanout: &ScheduledFanout,
        piece_index: u32,
        piece: Piece,
        source: Source,
        to: &[(u32, u16, u32)],
        wait: Option<u32>,
    ) {
        let end = piece.offset + piece.bytes;
        let tiles_in_piece = piece.bytes.div_ceil(tile) as u32;
        let mut offset = piece.offset;
        while offset < end {
            let bytes = tile.min(end - offset) as u32;
            let first_destination = self.destinations.len() as u32;
            self.destinations
                .extend(to.iter().map(|&(rank, slot, signal)| TileDestination {
                    rank,
                    region: region_code(Region::Slot { slot }),
                    signal_flag: signal,
                    expert: fanout.expert,
                }));
            self.tasks.push(TileTask {
                source_rank: source.rank,
                source_region: source.region,
                offset,
                bytes,
                first_destination,
                destination_count: to.len() as u32,
                wait_flag: wait.unwrap_or(NO_FLAG),
                wait_count: if wait.is_some() { tiles_in_piece } else { 0 },
                piece: piece_index,
            });
            offset += u64::from(bytes);
        }
    }

    /// The destinations of `task`.
    pub fn destinations_of(&self, task: &TileTask) -> &[TileDestination] {
        // A task of this list is always in range; another list's task gets an empty run rather
        // than a panic.
        let first = task.first_destination as usize;
        first
            .checked_add(task.destination_count as usize)
            .and_then(|end| self.destinations.get(first..end))
            .unwrap_or(&[])
    }

    /// The tasks in execution order.
    pub fn tasks(&self) -> &[TileTask] {
        &self.tasks
    }

    /// The destination runs the tasks point into.
    pub fn destinations(&self) -> &[TileDestination] {
        &self.destinations
    }

    /// The arrival flags the list uses (each starts at zero).
    pub fn flag_count(&self) -> u32 {
        self.flag_count
    }

    /// Empties the list, keeping its buffers.
    pub fn clear(&mut self) {
        self.tasks.clear();
        self.destinations.clear();
        self.flag_count = 0;
    }

    /// Writes into `share` the tasks of this list that `keep` selects (a rank's sends, say), in
    /// order, with their destinations; the flags stay this list's. Reuses `share`'s buffers.
    pub fn share_into(&self, keep: impl Fn(&TileTask) -> bool, share: &mut TileTaskList) {
        share.clear();
        share.flag_count = self.flag_count;
        for task in self.tasks.iter().filter(|task| keep(task)) {
            let first = share.destinations.len() as u32;
            share
                .destinations
                .extend_from_slice(self.destinations_of(task));
            share.tasks.push(TileTask {
                first_destination: first,
                ..*task
            });
        }
    }

    /// Drops every task from the `count`-th on: a transfer cut off midway (fault injection).
    pub fn truncate(&mut self, count: usize) {
        self.tasks.truncate(count);
    }

    /// Bytes stored in all: every tile times its destinations.
    pub fn bytes_stored(&self) -> u64 {
        self.tasks
            .iter()
            .map(|task| u64::from(task.bytes) * u64::from(task.destination_count))
            .sum()
    }
}
