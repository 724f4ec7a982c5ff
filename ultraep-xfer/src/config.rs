//! Sizes and switches of the transfer schedule.

use crate::XferError;

/// How expert state is cut up and moved.
///
/// Direct fan-out moves whole chunks (no one waits for them); relays forward per
/// [`TransferConfig::relay_pieces`].
///
/// ```
/// let config = ultraep_xfer::TransferConfig::default();
/// assert_eq!((config.tile_bytes, config.chunk_bytes), (32 * 1024, 256 * 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferConfig {
    /// The unit a GPU block loads once and stores to every destination (32 KiB published).
    pub tile_bytes: u32,
    /// The unit a relay waits for before forwarding (256 KiB published); a multiple of the tile.
    pub chunk_bytes: u32,
    /// Whether experts may be fanned out through relays; off forces direct fan-out.
    pub allow_relays: bool,
    /// The unit a relay waits for and forwards.
    pub relay_pieces: RelayPieces,
}

/// What a relay waits for before it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayPieces {
    /// Every tile on its own: the relay pipeline fills and drains in `n` tile times. The default:
    /// in the simulator it keeps relays above 0.94 of the bound for 4 to 32 replicas.
    Tiles,
    /// Whole chunks, as published: fewer flags to signal and poll, but the pipeline fills and
    /// drains in `n` chunk times (0.82-0.94 of the bound for 4 to 32 replicas).
    Chunks,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            tile_bytes: 32 * 1024,
            chunk_bytes: 256 * 1024,
            allow_relays: true,
            relay_pieces: RelayPieces::Tiles,
        }
    }
}

impl TransferConfig {
    /// Checks that tiles are positive, 16-byte aligned (the kernel's vector width) and divide the
    /// chunk.
    pub fn validate(&self) -> Result<(), XferError> {
        if self.tile_bytes == 0 || self.chunk_bytes == 0 {
            return Err(XferError::InvalidConfig {
                reason: "tiles and chunks must be at least one byte",
            });
        }
        if !self.tile_bytes.is_multiple_of(16) {
            return Err(XferError::InvalidConfig {
                reason: "tiles must be a multiple of 16 bytes (the kernel's vector width)",
            });
        }
        if !self.chunk_bytes.is_multiple_of(self.tile_bytes) {
            return Err(XferError::InvalidConfig {
                reason: "a chunk must be a whole number of tiles",
            });
        }
        Ok(())
    }
}
