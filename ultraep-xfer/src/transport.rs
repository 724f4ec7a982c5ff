//! Executing a schedule: the `Transport` trait.

use crate::{TileTaskList, TransferSchedule, XferError};

/// What a completed distribution did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReport {
    /// Tile tasks executed.
    pub tasks: usize,
    /// Bytes stored (every tile times its destinations).
    pub bytes_stored: u64,
    /// Replica slots now ready, each verified against its master.
    pub replicas_ready: usize,
}

/// Something that moves expert state between ranks: in-process CPU memory, GPU memory, a network.
///
/// A transport never lets a half-written slot be used: the slots a distribution writes are not
/// ready until every byte has landed and been verified, and stay not ready if it fails.
pub trait Transport {
    /// Executes the weight distribution of `schedule`, cut into `tasks`.
    fn distribute(
        &mut self,
        schedule: &TransferSchedule,
        tasks: &TileTaskList,
    ) -> Result<TransferReport, XferError>;
}
