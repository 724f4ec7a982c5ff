//! Training's backward half: every replica's weight gradient summed into its master's gradient in
//! a fixed, documented order, so the result is the same bit for bit on every run and every machine.
//!
//! The order, piece by piece of the gradient state (pieces as [`TransferSchedule::pieces`] cuts
//! them), in FP32, element by element:
//!
//! - **Direct route**: `master += replica` for every destination in ascending rank order.
//! - **Relayed route**, for a piece owned by relay `o`: `partial = replica(o)`, then
//!   `partial += replica(d)` for every other destination `d` in ascending rank order, then
//!   `master += partial`. The relays add up their pieces' gradients and send one partial sum each
//!   to the master, which then receives each byte once instead of once per replica.
//!
//! No atomics: each piece has one writer at a time and a fixed sequence of additions.

use crate::{Piece, ScheduledFanout, TransferSchedule, XferError};

/// Sums `fanout`'s replica gradients into `master` in the documented order. `replica(rank)` gives
/// the gradient held by the replica on `rank`; every buffer holds the whole gradient state as FP32.
pub fn reduce_gradients<'a>(
    schedule: &TransferSchedule,
    fanout: &ScheduledFanout,
    master: &mut [f32],
    replica: impl Fn(u32) -> &'a [f32],
) -> Result<(), XferError> {
    ReductionScratch::default().reduce(schedule, fanout, master, replica)
}

/// The buffers of a reduction, kept between calls: once warm, [`ReductionScratch::reduce`]
/// allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct ReductionScratch {
    pieces: Vec<Piece>,
    owned: Vec<u64>,
    partial: Vec<f32>,
}

impl ReductionScratch {
    /// [`reduce_gradients`] in these buffers.
    pub fn reduce<'a>(
        &mut self,
        schedule: &TransferSchedule,
        fanout: &ScheduledFanout,
        master: &mut [f32],
        replica: impl Fn(u32) -> &'a [f32],
    ) -> Result<(), XferError> {
        let floats = (schedule.state_bytes() / 4) as usize;
        if !schedule.state_bytes().is_multiple_of(4) || master.len() != floats {
            return Err(XferError::MemoryMismatch {
                reason: format!(
                    "a {}-byte gradient state is not {} FP32 values",
                    schedule.state_bytes(),
                    master.len()
                ),
            });
        }
        for &(rank, _) in &fanout.destinations {
            if replica(rank).len() != floats {
                return Err(XferError::MemoryMismatch {
                    reason: format!("the replica gradient on rank {rank} has the wrong length"),
                });
            }
        }
        let partial = &mut self.partial;
        self.pieces.clear();
        schedule.pieces_into(fanout, &mut self.pieces, &mut self.owned);
        for &piece in &self.pieces {
            let range = (piece.offset / 4) as usize..((piece.offset + piece.bytes) / 4) as usize;
            match piece.owner {
                None => {
                    for &(rank, _) in &fanout.destinations {
                        for (sum, value) in master[range.clone()]
                            .iter_mut()
                            .zip(&replica(rank)[range.clone()])
                        {
                            *sum += *value;
                        }
                    }
                }
                Some(owner) => {
                    partial.clear();
                    partial.extend_from_slice(&replica(owner)[range.clone()]);
                    for &(rank, _) in fanout.destinations.iter().filter(|d| d.0 != owner) {
                        for (sum, value) in partial.iter_mut().zip(&replica(rank)[range.clone()]) {
                            *sum += *value;
                        }
                    }
                    for (sum, value) in master[range].iter_mut().zip(partial.iter()) {
                        *sum += *value;
                    }
                }
            }
        }
        Ok(())
    }
}
