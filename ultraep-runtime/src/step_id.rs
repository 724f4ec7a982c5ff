//! Which step of the model a call is about: a microbatch and one of its MoE layers.

use std::fmt;

/// One MoE layer of one microbatch.
///
/// Microbatch numbers are the framework's own; several microbatches may be in flight at once
/// (see [`crate::EngineConfig::microbatches_in_flight`]), and each keeps its own plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepId {
    /// The microbatch.
    pub microbatch: u32,
    /// The MoE layer.
    pub layer: u32,
}

impl StepId {
    /// Layer `layer` of microbatch `microbatch`.
    pub const fn new(microbatch: u32, layer: u32) -> Self {
        Self { microbatch, layer }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "microbatch {} layer {}", self.microbatch, self.layer)
    }
}
