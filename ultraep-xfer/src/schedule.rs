//! The transfer schedule: for every replicated expert, how its state reaches its replicas.
//!
//! An expert's state travels in pieces, and every piece crosses a small tree whose root is the
//! master ([`TransferSchedule::hops_into`] lists its hops):
//! - **Direct**: the master stores the piece to every destination (it loads each tile once).
//! - **Relayed**: the master sends the piece to one destination, its owner, which forwards it to
//!   the others as soon as it has landed (a wait per piece, no barrier). Owners take the pieces
//!   in turn by bytes owned, so relays forward equal shares.
//! - **Deep**: as relayed, but the owner hands half of the others to a second relay (the next
//!   relay of the route), which forwards to them: a relay that relays. It halves how long the last
//!   piece takes to reach everyone.
//!
//! Relays forward per 32 KiB tile or per 256 KiB chunk; the chooser picks either per expert unless
//! [`crate::RelayPieces`] fixes one.
//!
//! Which route every expert takes comes from [`crate::RouteChooser`]: by default a cost model of
//! the whole layer (`chooser.rs`), which weighs every option against every port's egress and
//! ingress.

use crate::{RouteChooser, TransferConfig};

/// How one expert's state travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// The master sends every chunk to every destination.
    Direct,
    /// Pieces go from the master to a relay, their owner, which forwards them to every other
    /// destination ([`TransferSchedule::pieces`] says which piece each relay owns). Relays are
    /// destination ranks.
    Relayed {
        /// The relay ranks, in piece-ownership order.
        relays: Vec<u32>,
        /// Whether the owner of a piece hands half of the other destinations to a second relay
        /// (the relay after it in `relays`), which forwards to them: a tree two relays deep.
        deep: bool,
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
    /// In a deep tree, the relay the owner feeds first and that forwards to half of the others.
    pub second: Option<u32>,
}

/// One hop of a piece's tree: `from` stores the piece to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hop {
    /// The sender: the master or a relay.
    pub from: u32,
    /// The receiver, a destination.
    pub to: u32,
    /// Whether `from` forwards a piece it received (a relay) rather than its own state.
    pub forwarded: bool,
    /// For a forwarded hop, the index (among the piece's hops) of the hop that brings the piece
    /// to `from`; it is always an earlier hop.
    pub feed: Option<u32>,
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
    pub(crate) config: TransferConfig,
    pub(crate) state_bytes: u64,
    pub(crate) fanouts: Vec<ScheduledFanout>,
}

impl Default for TransferSchedule {
    /// An empty schedule (no fan-out), to build into with [`crate::ScheduleBuilder::build_into`].
    fn default() -> Self {
        Self {
            config: TransferConfig::default(),
            state_bytes: 0,
            fanouts: Vec::new(),
        }
    }
}

impl TransferSchedule {
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
            second: None,
        }));
        if let Route::Relayed { relays, deep } = &fanout.route {
            if relays.is_empty() {
                return;
            }
            owned.clear();
            owned.resize(relays.len(), 0);
            for piece in &mut pieces[first..] {
                let mut least = 0;
                for candidate in 1..owned.len() {
                    if owned[candidate] < owned[least] {
                        least = candidate;
                    }
                }
                owned[least] += piece.bytes;
                piece.owner = Some(relays[least]);
                if *deep && relays.len() > 1 {
                    piece.second = Some(relays[(least + 1) % relays.len()]);
                }
            }
        }
    }

    /// Appends the hops of `piece` (the `step`-th piece of `fanout`) to `hops`: the master's sends
    /// first, then the owner's forwards, then the second relay's. Every piece's tree is defined
    /// here, and only here: the flow the simulator plays, the tile task list and the runtime's
    /// messages are all cut from these hops.
    ///
    /// Senders start their round at different destinations (a master at the piece number, a relay
    /// just after itself): played as a sequence of stores, every sender starting at the same
    /// destination would flood one receiver after another, where a GPU's concurrent stores spread
    /// over them.
    pub fn hops_into(
        &self,
        fanout: &ScheduledFanout,
        step: usize,
        piece: &Piece,
        hops: &mut Vec<Hop>,
    ) {
        let first = hops.len();
        let Some(owner) = piece.owner else {
            hops.extend(rotated(&fanout.destinations, step).map(|to| Hop {
                from: fanout.master,
                to,
                forwarded: false,
                feed: None,
            }));
            return;
        };
        hops.push(Hop {
            from: fanout.master,
            to: owner,
            forwarded: false,
            feed: None,
        });
        let second = piece.second.filter(|&second| second != owner);
        let forward = |from: u32, to: u32, feed: usize| Hop {
            from,
            to,
            forwarded: true,
            feed: Some((feed - first) as u32),
        };
        let others = || {
            rotated(&fanout.destinations, self.rotation(fanout, owner, step))
                .filter(move |&to| to != owner && Some(to) != second)
        };
        match second {
            None => hops.extend(others().map(|to| forward(owner, to, first))),
            Some(second) => {
                // The owner sends to the second relay first, then to half of the rest; the second
                // relay forwards to the other half, so both send about as many copies.
                let rest = others().count();
                let owner_share = rest.saturating_sub(1) / 2;
                let feed_second = hops.len();
                hops.push(forward(owner, second, first));
                hops.extend(
                    others()
                        .take(owner_share)
                        .map(|to| forward(owner, to, first)),
                );
                hops.extend(
                    others()
                        .skip(owner_share)
                        .map(|to| forward(second, to, feed_second)),
                );
            }
        }
    }

    /// Where a relay starts its round of forwards: just after its own place among the
    /// destinations. Relays that forward at the same time then store to different receivers
    /// (relay `i` sends its `k`-th copy to destination `i + k`), where starting every relay at the
    /// same place would have them queue for one receiver after another. The per-expert baseline
    /// keeps its own order (twice the piece number), so that it is the first schedule exactly.
    fn rotation(&self, fanout: &ScheduledFanout, owner: u32, step: usize) -> usize {
        if self.config.chooser == RouteChooser::PerExpert {
            return 2 * step;
        }
        fanout
            .destinations
            .iter()
            .position(|d| d.0 == owner)
            .map_or(0, |position| position + 1)
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

fn chunk_count(state_bytes: u64, config: TransferConfig) -> u32 {
    state_bytes.div_ceil(u64::from(config.chunk_bytes)) as u32
}

/// `bytes` at `bytes_per_second`, in picoseconds, rounded up; integer arithmetic only.
pub(crate) fn picoseconds(bytes: u64, bytes_per_second: u64) -> u64 {
    let numerator = u128::from(bytes) * 1_000_000_000_000;
    u64::try_from(numerator.div_ceil(u128::from(bytes_per_second.max(1)))).unwrap_or(u64::MAX)
}

/// The destination ranks starting at position `start` (modulo their count) and wrapping around.
pub(crate) fn rotated(destinations: &[(u32, u16)], start: usize) -> impl Iterator<Item = u32> + '_ {
    let count = destinations.len().max(1);
    (0..destinations.len()).map(move |i| destinations[(start + i) % count].0)
}
