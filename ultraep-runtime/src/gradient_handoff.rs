//! How replica gradients reach their masters' ranks on a data plane whose ranks are separate
//! processes or threads (the host plane, the CUDA IPC plane): one word per replica slot, written
//! after the gradient's bytes, so that a master's rank that sees the word sees the bytes.
//!
//! A reduction, named by a `token` every rank derives alike:
//! 1. every replica slot this plane holds must hold its expert's complete gradient;
//! 2. each such slot's word is set to `token`: the gradient is handed over;
//! 3. a plane holding masters waits for every word of their replicas, before any master
//!    changes, so that a wait that fails changes no master;
//! 4. it sums the replicas into its masters in the documented order, then sets each replica's
//!    word to `token | ACKNOWLEDGED` (also when a later master's sum fails: the masters summed
//!    are acknowledged);
//! 5. a plane holding replicas waits for every acknowledgement before it empties any, so that
//!    nothing is emptied while a master's rank may still read it.

use ultraep_xfer::TransferSchedule;

use crate::RuntimeError;
use crate::slot_readiness::SlotReadiness;

/// The bit that marks a hand-off word as acknowledged by the master's rank.
pub(crate) const ACKNOWLEDGED: u64 = 1 << 63;

/// What the hand-off needs of a data plane.
pub(crate) trait HandoffPlane {
    /// What every slot of the plane's local ranks holds.
    fn slot_readiness(&self) -> &SlotReadiness;
    /// Stores `value` in the hand-off word of slot `slot` of `rank`, after every byte written to
    /// the slot before it (release).
    fn store_word(&self, rank: u32, slot: u16, value: u64) -> Result<(), RuntimeError>;
    /// Waits until the hand-off word of slot `slot` of `rank` holds `value`, which rank `writer`
    /// stores; `what` names the wait in a timeout's error.
    fn wait_word(
        &self,
        rank: u32,
        slot: u16,
        value: u64,
        writer: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), RuntimeError>;
    /// Sums every replica of `schedule` into the masters this plane holds, in the documented
    /// order (every replica's gradient has been handed over). Returns how many of those masters
    /// it summed, in schedule order, and the error that stopped it, if one did: the masters
    /// summed are acknowledged either way, so that their replicas' ranks do not wait in vain.
    fn sum_into_masters(
        &mut self,
        schedule: &TransferSchedule,
    ) -> (usize, Result<(), RuntimeError>);
    /// Empties replica slot `slot` of local rank `rank`, its gradient read by its master's rank.
    fn empty_replica(&mut self, rank: u32, slot: u16) -> Result<(), RuntimeError>;
}

/// Runs this plane's part of the reduction of `schedule` named `token` (see the module's
/// documentation). Every plane of the group calls it with the same schedule and token.
pub(crate) fn reduce(
    plane: &mut impl HandoffPlane,
    schedule: &TransferSchedule,
    token: u64,
) -> Result<(), RuntimeError> {
    let token = token & !ACKNOWLEDGED;
    let local = plane.slot_readiness().local();
    let holds = |rank: u32| local.contains(&rank);
    plane.slot_readiness().require_replicas_ready(schedule)?;
    for fanout in schedule.fanouts() {
        for &(rank, slot) in fanout.destinations.iter().filter(|d| holds(d.0)) {
            plane.store_word(rank, slot, token)?;
        }
    }
    for fanout in schedule.fanouts().iter().filter(|f| holds(f.master)) {
        for &(rank, slot) in &fanout.destinations {
            plane.wait_word(rank, slot, token, rank, &|| {
                format!(
                    "the gradient of expert {}'s replica on rank {rank}",
                    fanout.expert
                )
            })?;
        }
    }
    let (summed, result) = plane.sum_into_masters(schedule);
    for fanout in schedule
        .fanouts()
        .iter()
        .filter(|f| holds(f.master))
        .take(summed)
    {
        for &(rank, slot) in &fanout.destinations {
            plane.store_word(rank, slot, token | ACKNOWLEDGED)?;
        }
    }
    result?;
    for fanout in schedule.fanouts() {
        for &(rank, slot) in fanout.destinations.iter().filter(|d| holds(d.0)) {
            plane.wait_word(rank, slot, token | ACKNOWLEDGED, fanout.master, &|| {
                format!(
                    "rank {} to reduce expert {}'s gradient",
                    fanout.master, fanout.expert
                )
            })?;
        }
    }
    for fanout in schedule.fanouts() {
        for &(rank, slot) in fanout.destinations.iter().filter(|d| holds(d.0)) {
            plane.store_word(rank, slot, 0)?;
            plane.empty_replica(rank, slot)?;
        }
    }
    Ok(())
}
