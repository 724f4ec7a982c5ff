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
    /// How routes are chosen.
    pub chooser: RouteChooser,
    /// What moving a piece costs beyond its bytes at the port's bandwidth: what the simulator
    /// plays and the relay chooser weighs.
    pub costs: TransferCosts,
}

/// How a transfer behaves on real hardware, beyond bytes over a port. Integers only, so that every
/// rank's chooser decides alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferCosts {
    /// Nanoseconds every transfer holds its sender's port beyond its bytes: issuing the stores,
    /// the fence and the ready flag, and the receiver's poll.
    pub per_transfer_ns: u32,
    /// The bandwidth bytes move at, in parts per million of the port's.
    pub bandwidth_ppm: u32,
    /// Parts per million added to a forwarded piece's time on a relay: its SMs read the landed
    /// piece back from memory before storing it on.
    pub relay_forward_ppm: u32,
    /// Whether a sender waits for the receiver's port (a switch without buffering to spare): the
    /// transfer then holds both ports at once.
    pub backpressure: bool,
}

impl TransferCosts {
    /// Bytes at the full port bandwidth and nothing else: the optimistic model, a bound.
    pub const IDEAL: Self = Self {
        per_transfer_ns: 0,
        bandwidth_ppm: 1_000_000,
        relay_forward_ppm: 0,
        backpressure: false,
    };

    /// Calibrated against the published EP64 weight-sync measurements (direct 214 / 265 / 317 us,
    /// relays 194 / 195 / 188 us, for the reference plans at 1.5 / 2.0 / 3.0 imbalance; `ultraep
    /// xfer --chunk-relays` prints both): 20 ns per transfer and backpressure bring direct fan-out
    /// to 210 / 263 / 315 us, and a forwarded byte costing a relay three times a direct store (it
    /// is read back from memory, stored on, and its SMs are shared) brings relays to
    /// 155 / 203 / 203 us (mean 187 against 192).
    pub const CALIBRATED: Self = Self {
        per_transfer_ns: 20,
        bandwidth_ppm: 1_000_000,
        relay_forward_ppm: 2_000_000,
        backpressure: true,
    };
}

/// What a relay waits for before it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayPieces {
    /// Whichever of tiles and chunks the chooser costs cheaper, expert by expert. The default:
    /// tiles drain the relay pipeline sooner, chunks pay the per-transfer cost eight times less
    /// often, and which wins depends on the costs and the fan-out.
    Chosen,
    /// Every tile on its own: the relay pipeline fills and drains in `n` tile times. Under the
    /// ideal costs it keeps relays above 0.94 of the bound for 4 to 32 replicas.
    Tiles,
    /// Whole chunks, as published: fewer flags to signal and poll, but the pipeline fills and
    /// drains in `n` chunk times (0.82-0.94 of the bound for 4 to 32 replicas under the ideal
    /// costs).
    Chunks,
}

/// How the schedule chooses every expert's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteChooser {
    /// A cost model of the whole layer (the default): every expert weighs direct fan-out against
    /// relays by tile or chunk, every relay count, a share of pieces sent directly and trees two
    /// relays deep, against the egress and ingress every port carries for the other experts; a
    /// second pass chooses every expert again against the final loads of all the others.
    Layer,
    /// The first chooser, kept as the baseline the bench compares against: expert by expert,
    /// direct or flat relays with the configured piece (tiles if [`RelayPieces::Chosen`]), against
    /// the egress of the experts before it only. Its relays also keep their first order of
    /// forwards (starting at twice the piece number), so that its schedules are the first ones
    /// exactly.
    PerExpert,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            tile_bytes: 32 * 1024,
            chunk_bytes: 256 * 1024,
            allow_relays: true,
            relay_pieces: RelayPieces::Chosen,
            chooser: RouteChooser::Layer,
            costs: TransferCosts::CALIBRATED,
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
        if self.costs.bandwidth_ppm == 0 || self.costs.bandwidth_ppm > 1_000_000 {
            return Err(XferError::InvalidConfig {
                reason: "the bandwidth must be above 0 and at most 1,000,000 ppm of the port's",
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
