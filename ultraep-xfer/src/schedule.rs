//! The transfer schedule: for every replicated expert, how its state reaches its replicas.
//!
//! Two routes exist. **Direct**: the master sends every chunk to every destination, loading each
//! tile once and storing it to all of them. **Relayed**: every piece crosses a two-stage tree; the
//! master sends each piece to one relay (a destination), which forwards it to every other
//! destination as soon as it has landed. The master then sends each byte once instead of once per
//! destination, forwarding is spread evenly over the relays, and there is no barrier, only a wait
//! per piece. Relays forward per tile by default ([`crate::RelayPieces`]): the pipeline then fills
//! and drains in a few tile times instead of a few chunk times.
//!
//! The route of every expert comes from a cost model of the layer: experts with the most
//! destinations go first; for each, direct fan-out and every relay count `r` are costed as the time
//! the busiest affected egress port (the master or a relay) would need for everything it sends so
//! far, plus, for relays, one piece time and one hop of latency for the second stage; relays are the
//! destinations that send least so far (ties: lower rank). The cheapest wins (ties: direct, then
//! fewer relays), and its bytes are added to the port loads the next expert sees. Ingress needs no
//! choice: every destination receives one copy whatever the route.

use ultraep_topo::{RankId, Topology};

use crate::{ExpertState, RelayPieces, ReplicaSet, TransferConfig, XferError};

/// How one expert's state travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// The master sends every chunk to every destination.
    Direct,
    /// Chunk `c` goes from the master to `relays[c % relays.len()]`, which forwards it to every
    /// other destination. Relays are destination ranks.
    Relayed {
        /// The relay ranks, in chunk-ownership order.
        relays: Vec<u32>,
    },
}

/// One replicated expert with its route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduledFanout {
    /// The expert.
    pub expert: u32,
    /// The master's rank.
    pub master: u32,
    /// The expert's index among its master rank's experts.
    pub master_index: u32,
    /// Destination (rank, slot) pairs, by ascending rank.
    pub destinations: Vec<(u32, u16)>,
    /// How the state travels.
    pub route: Route,
    /// The size of the pieces the state travels in: a chunk for direct fan-out; for relays, a
    /// tile or a chunk as [`crate::TransferConfig::relay_pieces`] says (the last piece may be
    /// shorter).
    pub piece_bytes: u32,
}

/// A contiguous part of an expert state that travels, and is waited for, as one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Piece {
    /// Byte offset in the state.
    pub offset: u64,
    /// Bytes.
    pub bytes: u64,
    /// The relay that receives it from the master and forwards it; `None` for direct fan-out.
    pub owner: Option<u32>,
}

impl ScheduledFanout {
    /// The slot `rank` receives this expert in (0 if `rank` is not a destination).
    pub fn slot_of(&self, rank: u32) -> u16 {
        self.destinations
            .iter()
            .find(|d| d.0 == rank)
            .map_or(0, |d| d.1)
    }
}

/// The schedule of one layer's expert-state transfers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransferSchedule {
    config: TransferConfig,
    state_bytes: u64,
    fanouts: Vec<ScheduledFanout>,
}

impl Default for TransferSchedule {
    /// An empty schedule (no fan-out), to build into with [`ScheduleBuilder::build_into`].
    fn default() -> Self {
        Self {
            config: TransferConfig::default(),
            state_bytes: 0,
            fanouts: Vec::new(),
        }
    }
}

impl TransferSchedule {
    /// Chooses a route for every expert of `replicas`, whose state is `state`, on `topology`.
    pub fn build(
        replicas: &ReplicaSet,
        state: &ExpertState,
        topology: &Topology,
        config: TransferConfig,
    ) -> Result<Self, XferError> {
        let mut schedule = Self::default();
        ScheduleBuilder::default().build_into(replicas, state, topology, config, &mut schedule)?;
        Ok(schedule)
    }

    /// The scheduled fan-outs, by ascending expert.
    pub fn fanouts(&self) -> &[ScheduledFanout] {
        &self.fanouts
    }

    /// The sizes the schedule was built with.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// Bytes of one expert state.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Chunks per expert state.
    pub fn chunk_count(&self) -> u32 {
        chunk_count(self.state_bytes, self.config)
    }

    /// The pieces `fanout`'s state travels in, in order. A relayed expert's pieces go to the relay
    /// that owns the fewest bytes so far (ties: the earlier relay), so relays forward equal shares.
    pub fn pieces(&self, fanout: &ScheduledFanout) -> Vec<Piece> {
        let mut pieces = Vec::new();
        self.pieces_into(fanout, &mut pieces, &mut Vec::new());
        pieces
    }

    /// Appends [`TransferSchedule::pieces`] of `fanout` to `pieces`, counting relays' bytes in
    /// `owned` (scratch); allocates nothing once the buffers are large enough.
    pub fn pieces_into(
        &self,
        fanout: &ScheduledFanout,
        pieces: &mut Vec<Piece>,
        owned: &mut Vec<u64>,
    ) {
        let size = u64::from(fanout.piece_bytes.max(1));
        let first = pieces.len();
        pieces.extend((0..self.state_bytes.div_ceil(size)).map(|index| Piece {
            offset: index * size,
            bytes: size.min(self.state_bytes - index * size),
            owner: None,
        }));
        if let Route::Relayed { relays } = &fanout.route {
            owned.clear();
            owned.resize(relays.len(), 0);
            for piece in &mut pieces[first..] {
                let mut least = 0;
                for index in 1..owned.len() {
                    if owned[index] < owned[least] {
                        least = index;
                    }
                }
                owned[least] += piece.bytes;
                piece.owner = Some(relays[least]);
            }
        }
    }

    /// Bytes of chunk `chunk` (the last one may be short).
    pub fn chunk_len(&self, chunk: u32) -> u64 {
        let start = u64::from(chunk) * u64::from(self.config.chunk_bytes);
        (self.state_bytes - start).min(u64::from(self.config.chunk_bytes))
    }

    /// Fan-outs whose route uses relays.
    pub fn relayed_count(&self) -> usize {
        self.fanouts
            .iter()
            .filter(|f| matches!(f.route, Route::Relayed { .. }))
            .count()
    }

    /// The same replicas with every route forced to direct fan-out (for comparisons).
    pub fn all_direct(&self) -> Self {
        let mut direct = self.clone();
        for fanout in &mut direct.fanouts {
            fanout.route = Route::Direct;
            fanout.piece_bytes = direct.config.chunk_bytes;
        }
        direct.config.allow_relays = false;
        direct
    }
}

/// Builds schedules again and again in the same buffers: once warm (after a layer with as many
/// fan-outs, destinations and relays), [`ScheduleBuilder::build_into`] does not allocate.
///
/// ```
/// use ultraep_topo::Preset;
/// use ultraep_xfer::*;
/// let topo = Preset::HgxH100.topology(1)?;
/// let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(1, 0), (2, 0)])?])?;
/// let state = ExpertState::opaque(1 << 20)?;
/// let mut builder = ScheduleBuilder::default();
/// let mut schedule = TransferSchedule::default();
/// builder.build_into(&replicas, &state, &topo, TransferConfig::default(), &mut schedule)?;
/// assert_eq!(schedule, TransferSchedule::build(&replicas, &state, &topo, TransferConfig::default())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct ScheduleBuilder {
    egress_ps: Vec<u64>,
    candidates: Vec<(u64, u32)>,
    order: Vec<usize>,
    /// Fan-outs and relay lists of earlier schedules, kept for their buffers.
    spare_fanouts: Vec<ScheduledFanout>,
    spare_relays: Vec<Vec<u32>>,
}

impl ScheduleBuilder {
    /// Builds into `schedule` what [`TransferSchedule::build`] returns, reusing the buffers of
    /// this builder and of the schedule's previous contents. On error `schedule` is left empty.
    pub fn build_into(
        &mut self,
        replicas: &ReplicaSet,
        state: &ExpertState,
        topology: &Topology,
        config: TransferConfig,
        schedule: &mut TransferSchedule,
    ) -> Result<(), XferError> {
        while let Some(mut fanout) = schedule.fanouts.pop() {
            if let Route::Relayed { relays } = std::mem::replace(&mut fanout.route, Route::Direct) {
                self.spare_relays.push(relays);
            }
            self.spare_fanouts.push(fanout);
        }
        config.validate()?;
        let state_bytes = state.bytes();
        if state_bytes == 0 {
            return Err(XferError::EmptyState);
        }
        let rank_count = topology.rank_count() as u32;
        for fanout in &replicas.fanouts {
            for rank in
                std::iter::once(fanout.master).chain(fanout.destinations.iter().map(|d| d.0))
            {
                if rank >= rank_count {
                    return Err(XferError::UnknownRank { rank, rank_count });
                }
            }
        }
        schedule.config = config;
        schedule.state_bytes = state_bytes;
        for fanout in &replicas.fanouts {
            let mut scheduled = self.spare_fanouts.pop().unwrap_or(ScheduledFanout {
                expert: 0,
                master: 0,
                master_index: 0,
                destinations: Vec::new(),
                route: Route::Direct,
                piece_bytes: 0,
            });
            scheduled.expert = fanout.expert;
            scheduled.master = fanout.master;
            scheduled.master_index = fanout.master_index;
            scheduled.destinations.clear();
            scheduled
                .destinations
                .extend_from_slice(&fanout.destinations);
            scheduled.piece_bytes = config.chunk_bytes;
            schedule.fanouts.push(scheduled);
        }
        // Experts with the most destinations choose their route first.
        self.order.clear();
        self.order.extend(0..replicas.fanouts.len());
        self.order.sort_unstable_by_key(|&i| {
            let fanout = &replicas.fanouts[i];
            (
                std::cmp::Reverse(fanout.destinations.len()),
                fanout.expert,
                i,
            )
        });
        self.egress_ps.clear();
        self.egress_ps.resize(topology.rank_count(), 0);
        let mut model = CostModel {
            egress_ps: &mut self.egress_ps,
            state_bytes,
            config,
            candidates: &mut self.candidates,
        };
        for &index in &self.order {
            let fanout = &mut schedule.fanouts[index];
            let mut relays = self.spare_relays.pop().unwrap_or_default();
            if model.choose(&replicas.fanouts[index], topology, &mut relays) {
                fanout.route = Route::Relayed { relays };
                if config.relay_pieces == RelayPieces::Tiles {
                    fanout.piece_bytes = config.tile_bytes;
                }
            } else {
                self.spare_relays.push(relays);
            }
        }
        Ok(())
    }
}

/// Port loads of the layer so far, in picoseconds of egress per rank.
struct CostModel<'a> {
    egress_ps: &'a mut Vec<u64>,
    state_bytes: u64,
    config: TransferConfig,
    candidates: &'a mut Vec<(u64, u32)>,
}

impl CostModel<'_> {
    /// Picoseconds `rank`'s scale-up egress port needs to send `bytes` in pieces of `piece`
    /// bytes under the configured costs (forwarded pieces pay the relay's extra read).
    fn egress_time(
        &self,
        topology: &Topology,
        rank: u32,
        bytes: u64,
        piece: u64,
        forwarded: bool,
    ) -> u64 {
        let costs = self.config.costs;
        let bandwidth = topology
            .links(RankId(rank))
            .map_or(1, |links| links.scale_up_egress.get());
        let bandwidth =
            (u128::from(bandwidth) * u128::from(costs.bandwidth_ppm) / 1_000_000).max(1) as u64;
        let mut time = picoseconds(bytes, bandwidth);
        if forwarded {
            time += (u128::from(time) * u128::from(costs.relay_forward_ppm) / 1_000_000) as u64;
        }
        time + bytes.div_ceil(piece.max(1)) * u64::from(costs.per_transfer_ns) * 1000
    }

    /// Chooses the route of `fanout`: `true` for relays, whose ranks are then in `relays`
    /// (cleared first), `false` for direct fan-out.
    fn choose(
        &mut self,
        fanout: &crate::Fanout,
        topology: &Topology,
        relays: &mut Vec<u32>,
    ) -> bool {
        let n = fanout.destinations.len() as u64;
        let master = fanout.master;
        let chunk = u64::from(self.config.chunk_bytes);
        let one_copy = self.egress_time(topology, master, self.state_bytes, chunk, false);
        let direct_cost = self.egress_ps[master as usize] + one_copy * n;
        if !self.config.allow_relays || n < 2 {
            self.egress_ps[master as usize] += one_copy * n;
            return false;
        }
        // Relay candidates: destinations that send least so far, ties to the lower rank.
        self.candidates.clear();
        self.candidates.extend(
            fanout
                .destinations
                .iter()
                .map(|&(rank, _)| (self.egress_ps[rank as usize], rank)),
        );
        self.candidates.sort_unstable();
        let first = fanout.destinations[0].0;
        // The second stage starts a piece later than the first and crosses one more hop.
        let piece = u64::from(match self.config.relay_pieces {
            RelayPieces::Tiles => self.config.tile_bytes,
            RelayPieces::Chunks => self.config.chunk_bytes,
        });
        let hop = self.egress_time(topology, master, piece.min(self.state_bytes), piece, false)
            + topology
                .path(RankId(master), RankId(first))
                .map_or(0, |path| path.latency.get() * 1000);
        let master_once = self.egress_ps[master as usize]
            + self.egress_time(topology, master, self.state_bytes, piece, false);
        let state_bytes = self.state_bytes;
        // Pieces go to relays by least bytes owned, so each forwards about 1/r of the state to
        // every other destination.
        let forwarded = |relays: usize| state_bytes.div_ceil(relays as u64) * (n - 1);
        let mut best: Option<(u64, usize)> = None;
        for count in 1..=fanout.destinations.len() {
            let mut worst = master_once;
            for &(load, rank) in &self.candidates[..count] {
                worst = worst
                    .max(load + self.egress_time(topology, rank, forwarded(count), piece, true));
            }
            let cost = worst + hop;
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, count));
            }
        }
        match best {
            Some((cost, count)) if cost < direct_cost => {
                self.egress_ps[master as usize] = master_once;
                relays.clear();
                for index in 0..count {
                    let rank = self.candidates[index].1;
                    let time = self.egress_time(topology, rank, forwarded(count), piece, true);
                    self.egress_ps[rank as usize] += time;
                    relays.push(rank);
                }
                true
            }
            _ => {
                self.egress_ps[master as usize] += one_copy * n;
                false
            }
        }
    }
}

fn chunk_count(state_bytes: u64, config: TransferConfig) -> u32 {
    state_bytes.div_ceil(u64::from(config.chunk_bytes)) as u32
}

/// `bytes` at `bytes_per_second`, in picoseconds, rounded up; integer arithmetic only.
pub(crate) fn picoseconds(bytes: u64, bytes_per_second: u64) -> u64 {
    let numerator = u128::from(bytes) * 1_000_000_000_000;
    u64::try_from(numerator.div_ceil(u128::from(bytes_per_second.max(1)))).unwrap_or(u64::MAX)
}
