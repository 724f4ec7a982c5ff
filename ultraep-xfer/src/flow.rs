//! A schedule as a list of chunk transfers with their dependencies: what the simulator plays and
//! what the tile task list is cut from.

use crate::TransferSchedule;
use crate::schedule::rotated;

/// One piece moving from one rank to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkTransfer {
    /// Index of the fan-out in the schedule.
    pub fanout: u32,
    /// Index of the piece in the fan-out's pieces.
    pub piece: u32,
    pub from: u32,
    pub to: u32,
    pub bytes: u64,
    /// Whether the sender forwards a piece it received (a relay) rather than its own state.
    pub forwarded: bool,
}

/// Transfers and, for each, the transfers that must land before it can start.
pub(crate) struct Flow {
    pub transfers: Vec<ChunkTransfer>,
    pub predecessors: Vec<Vec<u32>>,
}

impl Flow {
    fn push(&mut self, transfer: ChunkTransfer, predecessors: Vec<u32>) -> u32 {
        self.transfers.push(transfer);
        self.predecessors.push(predecessors);
        self.transfers.len() as u32 - 1
    }
}

/// Every piece transfer of a weight distribution, piece-major (piece 0 of every expert, then piece
/// 1, ...), each piece's hops as [`TransferSchedule::hops_into`] lists them. A transfer only ever
/// waits for one listed earlier.
pub(crate) fn distribution(schedule: &TransferSchedule) -> Flow {
    let pieces: Vec<_> = schedule
        .fanouts()
        .iter()
        .map(|f| schedule.pieces(f))
        .collect();
    let steps = pieces.iter().map(Vec::len).max().unwrap_or(0);
    let mut flow = Flow {
        transfers: Vec::new(),
        predecessors: Vec::new(),
    };
    let mut hops = Vec::new();
    for step in 0..steps {
        for (index, fanout) in schedule.fanouts().iter().enumerate() {
            let Some(piece) = pieces[index].get(step) else {
                continue;
            };
            hops.clear();
            schedule.hops_into(fanout, step, piece, &mut hops);
            let first = flow.transfers.len() as u32;
            for hop in &hops {
                let transfer = ChunkTransfer {
                    fanout: index as u32,
                    piece: step as u32,
                    from: hop.from,
                    to: hop.to,
                    bytes: piece.bytes,
                    forwarded: hop.forwarded,
                };
                flow.push(
                    transfer,
                    hop.feed.map(|feed| first + feed).into_iter().collect(),
                );
            }
        }
    }
    flow
}

/// Every piece transfer of a gradient reduction: the distribution's routes reversed. Direct: every
/// replica sends each piece to the master. Relayed: every replica but the piece's owner sends it to
/// the owner, and the owner sends its partial sum to the master once all of them have landed.
pub(crate) fn reduction(schedule: &TransferSchedule) -> Flow {
    let mut flow = Flow {
        transfers: Vec::new(),
        predecessors: Vec::new(),
    };
    for (index, fanout) in schedule.fanouts().iter().enumerate() {
        for (step, piece) in schedule.pieces(fanout).iter().enumerate() {
            let (fanout_index, piece_index) = (index as u32, step as u32);
            let transfer = |from: u32, to: u32, forwarded: bool| ChunkTransfer {
                fanout: fanout_index,
                piece: piece_index,
                from,
                to,
                bytes: piece.bytes,
                forwarded,
            };
            match piece.owner {
                None => {
                    for to in rotated(&fanout.destinations, step) {
                        flow.push(transfer(to, fanout.master, false), Vec::new());
                    }
                }
                Some(owner) => {
                    let start = fanout
                        .destinations
                        .iter()
                        .position(|d| d.0 == owner)
                        .unwrap_or(0)
                        + 1;
                    let inbound: Vec<u32> = rotated(&fanout.destinations, start)
                        .filter(|&from| from != owner)
                        .map(|from| flow.push(transfer(from, owner, false), Vec::new()))
                        .collect();
                    flow.push(transfer(owner, fanout.master, true), inbound);
                }
            }
        }
    }
    flow
}
