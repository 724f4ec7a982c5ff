//! The one error type of this crate.

use thiserror::Error;
use ultraep_plan::PlanError;
use ultraep_topo::TopoError;
use ultraep_xfer::XferError;

use crate::StepId;

/// Everything the engine refuses or fails at. After any error the engine is usable and keeps the
/// state it had before the failed call.
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
