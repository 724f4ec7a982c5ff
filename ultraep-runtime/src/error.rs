//! The one error type of this crate.

use thiserror::Error;
use ultraep_plan::PlanError;
use ultraep_topo::TopoError;
use ultraep_xfer::XferError;

/// Everything the engine refuses or fails at. After any error the engine is usable and keeps the
/// state it had before the failed call.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration does not hold together (the message names the problem).
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// A layer number past the model's layers.
    #[error("layer {layer} does not exist (the model has {layers})")]
    UnknownLayer {
        /// The layer asked for.
        layer: u32,
        /// Layers of the model.
        layers: u32,
    },
    /// A layer that has had no successful step has no replicas to restore.
    #[error("layer {layer} has no plan yet: step it before restoring it")]
    NoPlan {
        /// The layer.
        layer: u32,
    },
    /// Master weights of the wrong size.
    #[error("expert weights of {got} bytes, but an expert state is {expected} bytes")]
    WeightSize {
        /// Bytes given.
        got: usize,
        /// Bytes of one expert state.
        expected: u64,
    },
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
