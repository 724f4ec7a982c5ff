//! What a replica slot holds, as every data plane tracks it: a slot is read only when it holds a
//! complete, verified copy.

/// What a replica slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Nothing usable: never written.
    Empty,
    /// Being written, or left half-written by a failed distribution: must not be used.
    NotReady {
        /// The expert that was being written.
        expert: u32,
    },
    /// A complete, verified copy.
    Ready {
        /// The expert it holds.
        expert: u32,
    },
}
