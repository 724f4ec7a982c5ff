//! The one error type of this crate.

use std::ops::Range;
use std::time::Duration;

use thiserror::Error;
use ultraep_plan::PlanError;
use ultraep_topo::TopoError;
use ultraep_xfer::XferError;

use crate::StepId;

/// Everything the engine refuses or fails at. After a refused call (bad input, a busy slot, a
/// step in flight...) the engine is usable and keeps the state it had before the call. A failed
/// transfer or reduction leaves the slots it was writing not ready; an engine that holds every
/// rank may retry it, but in a group of processes (or of rank-local engines) the ranks may no
/// longer agree on what happened: treat [`RuntimeError::PeerLost`], [`RuntimeError::Timeout`]
/// and a failed transfer or reduction as the end of the group, and rebuild it.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration does not hold together (the message names the problem).
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// Input whose shape or counts do not match the configuration or the step's load (the
    /// message names the problem).
    #[error("input does not match: {0}")]
    InvalidInput(String),
    /// A layer number past the model's layers.
    #[error("layer {layer} does not exist (the model has {layers})")]
    UnknownLayer {
        /// The layer asked for.
        layer: u32,
        /// Layers of the model.
        layers: u32,
    },
    /// A step that has not run (or whose plan was replaced by a later microbatch's).
    #[error("{step} has no plan: step it first")]
    NoPlan {
        /// The step.
        step: StepId,
    },
    /// Another microbatch still needs this layer's plan: its backward has not finished.
    #[error(
        "{step} would replace the plan of microbatch {busy}, whose backward has not finished; \
         raise microbatches_in_flight"
    )]
    InFlight {
        /// The step refused.
        step: StepId,
        /// The microbatch whose plan it would replace.
        busy: u32,
    },
    /// Every slot of a rank that a replica needs is held by backward passes in progress.
    #[error("{step} needs a slot on rank {rank}, but backward passes in progress hold all of them")]
    SlotsBusy {
        /// The step refused.
        step: StepId,
        /// The rank without a free slot.
        rank: u32,
    },
    /// Master weights or gradients of the wrong size.
    #[error("{got} bytes given, but an expert's {what} is {expected} bytes")]
    WrongSize {
        /// Weights or gradient.
        what: &'static str,
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        expected: u64,
    },
    /// A rank of the group is gone (its process ended): rebuild the group.
    #[error("rank {rank} is gone: its process ended; rebuild the group")]
    PeerLost {
        /// The rank that is gone.
        rank: u32,
    },
    /// A peer did not do its part in time (it may hang, or be far behind).
    #[error("waited {waited:?} for {what}")]
    Timeout {
        /// How long the rank waited.
        waited: Duration,
        /// What it waited for.
        what: String,
    },
    /// The ranks' metadata (plans, slot tables, weights versions) are no longer the same: a rank
    /// planned another load, or skipped a call the others made.
    #[error(
        "rank {rank}'s plans and slot table differ from rank {reference}'s (digests {found:#018x} \
         and {expected:#018x}): every rank must plan the same gathered load and make the same \
         calls in the same order"
    )]
    Diverged {
        /// The first rank whose digest differs.
        rank: u32,
        /// The rank it was compared with.
        reference: u32,
        /// The reference digest.
        expected: u64,
        /// The differing digest.
        found: u64,
    },
    /// A call about memory this engine does not hold: another process holds that rank.
    #[error("rank {rank}'s memory is not held here (this engine holds ranks {local:?})")]
    NotLocal {
        /// The rank asked for.
        rank: u32,
        /// The ranks this engine holds.
        local: Range<u32>,
    },
    /// A step's weights are still moving: finish it first.
    #[error("{step}'s weights are still moving: call finish_step first")]
    TransferPending {
        /// The step whose transfers are in flight.
        step: StepId,
    },
    /// A slot that does not hold a complete, verified copy.
    #[error("slot {slot} of rank {rank} is not ready")]
    SlotNotReady {
        /// The rank.
        rank: u32,
        /// The slot.
        slot: u16,
    },
    /// A replica whose slot no longer holds its current weights: a later step took the slot,
    /// or the masters changed since.
    #[error(
        "the slot of instance {instance} of {step} no longer holds its current weights (a later \
         step took it, or the masters changed): restore {step}"
    )]
    StaleReplica {
        /// The step.
        step: StepId,
        /// The instance.
        instance: u32,
    },
    /// An expert number past the model's experts.
    #[error("expert {expert} does not exist (a layer has {experts})")]
    UnknownExpert {
        /// The expert asked for.
        expert: u32,
        /// Experts per layer.
        experts: u32,
    },
    /// Masters were written since the last [`crate::Engine::masters_updated`]: call it (on every
    /// rank) before the next step, so that no replica keeps old weights.
    #[error("masters were written since the last masters_updated(): call it on every rank first")]
    MastersChanged,
    /// A layout change was refused or is not ready (it says why); the layer keeps its layout.
    #[error("layout change: {0}")]
    LayoutChange(String),
    /// The all-gather of the load failed.
    #[error("the collective failed: {0}")]
    Collective(String),
    /// The backend (the GPU, its driver or its kernels) failed; the message says how.
    #[error("the backend failed: {0}")]
    Backend(String),
    /// Writing the trace failed.
    #[error("writing the trace failed: {0}")]
    Trace(String),
    /// The planner refused the load.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Building or executing the transfers failed.
    #[error(transparent)]
    Transfer(#[from] XferError),
    /// The topology is inconsistent with the model.
    #[error(transparent)]
    Topology(#[from] TopoError),
}
