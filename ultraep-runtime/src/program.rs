//! A step's transfers as a program a caller executes with its own communication library
//! (`torch.distributed`'s `batch_isend_irecv`, NCCL's grouped send and receive): which bytes of
//! which expert state each rank sends to which slot of which rank, in which order, and which
//! messages a relay must have received before it forwards them.
//!
//! Every rank builds the same program from the same schedule, so the tags agree without being
//! sent: the sender of message `t` and its receiver both know it as `t`.

use std::ops::Range;

use ultraep_xfer::{Hop, Piece, Region, TransferSchedule};

/// One message: `bytes` bytes at `offset` of one expert state, from a region of `from_rank` to a
/// slot of `to_rank`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceTransfer {
    /// The message's tag, the same on every rank (its index in the program).
    pub tag: u32,
    /// The expert whose state travels.
    pub expert: u32,
    /// The sending rank.
    pub from_rank: u32,
    /// Where the sender reads: the expert's master, or (a relay forwarding) its own slot.
    pub from: Region,
    /// Byte offset in the expert state.
    pub offset: u64,
    /// Bytes.
    pub bytes: u64,
    /// The receiving rank.
    pub to_rank: u32,
    /// The slot it receives into.
    pub to_slot: u16,
    /// A relay forwards bytes it receives first: the tag of that message, which must have
    /// arrived before this one is sent.
    pub after: Option<u32>,
}

/// The messages of one weight distribution, for every rank: which bytes of which expert state
/// each rank sends to which slot of which rank, in tag order, and which message a relay must have
/// received before it forwards. Every rank builds the same program, so tags agree unsent.
///
/// ```
/// use ultraep_runtime::TransferProgram;
/// use ultraep_topo::Preset;
/// use ultraep_xfer::{ExpertState, Fanout, ReplicaSet, TransferConfig, TransferSchedule};
/// let replicas = ReplicaSet::new(vec![Fanout::new(5, 1, 1, vec![(3, 0), (6, 1)])?])?;
/// let state = ExpertState::opaque(40_000)?;
/// let topology = Preset::HgxH100.topology(1)?;
/// let schedule = TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default())?;
/// let mut program = TransferProgram::default();
/// program.build_from(&schedule);
/// // Rank 1 sends every byte to both replicas; rank 3 receives its copy whole.
/// assert_eq!(program.sends(1..2).map(|t| t.bytes).sum::<u64>(), 80_000);
/// assert_eq!(program.receives(3..4).map(|t| t.bytes).sum::<u64>(), 40_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferProgram {
    transfers: Vec<PieceTransfer>,
    pieces: Vec<Piece>,
    owned: Vec<u64>,
    hops: Vec<Hop>,
}

impl TransferProgram {
    /// Builds the program of `schedule` in this program's buffers: fan-out by fan-out, piece by
    /// piece, each piece's hops as [`TransferSchedule::hops_into`] lists them (a relayed piece
    /// first goes to its relay, which then forwards it).
    pub fn build_from(&mut self, schedule: &TransferSchedule) {
        self.transfers.clear();
        for fanout in schedule.fanouts() {
            self.pieces.clear();
            schedule.pieces_into(fanout, &mut self.pieces, &mut self.owned);
            let master = Region::Master {
                index: fanout.master_index,
            };
            for (step, piece) in self.pieces.iter().enumerate() {
                self.hops.clear();
                schedule.hops_into(fanout, step, piece, &mut self.hops);
                let first = self.transfers.len() as u32;
                for hop in &self.hops {
                    let tag = self.transfers.len() as u32;
                    self.transfers.push(PieceTransfer {
                        tag,
                        expert: fanout.expert,
                        from_rank: hop.from,
                        from: if hop.forwarded {
                            Region::Slot {
                                slot: fanout.slot_of(hop.from),
                            }
                        } else {
                            master
                        },
                        offset: piece.offset,
                        bytes: piece.bytes,
                        to_rank: hop.to,
                        to_slot: fanout.slot_of(hop.to),
                        after: hop.feed.map(|feed| first + feed),
                    });
                }
            }
        }
    }

    /// Every message, by tag.
    pub fn transfers(&self) -> &[PieceTransfer] {
        &self.transfers
    }

    /// The messages the ranks `ranks` send (a relay's forwards among them), by tag.
    pub fn sends(&self, ranks: Range<u32>) -> impl Iterator<Item = &PieceTransfer> + '_ {
        self.transfers
            .iter()
            .filter(move |t| ranks.contains(&t.from_rank))
    }

    /// The messages the ranks `ranks` receive, by tag.
    pub fn receives(&self, ranks: Range<u32>) -> impl Iterator<Item = &PieceTransfer> + '_ {
        self.transfers
            .iter()
            .filter(move |t| ranks.contains(&t.to_rank))
    }
}
