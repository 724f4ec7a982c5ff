//! What an expert's state is made of: shards with byte sizes.

use crate::XferError;

/// One tensor of an expert's state, e.g. the fused gate+up matrix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shard {
    /// A human name, e.g. "gate_up".
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The state one expert instance holds: its shards laid out one after another.
///
/// Slots are shared by all layers, so one slot holds one expert state of any layer; its size is
/// what a slot costs in memory.
///
/// ```
/// use ultraep_xfer::ExpertState;
/// // DeepSeek-V3: hidden 7168, expert width 2048, FP8 weights with 128x128 block scales.
/// let weights = ExpertState::swiglu_fp8(7168, 2048);
/// assert_eq!(weights.bytes(), 44_040_192 + 10_752);
/// let gradients = ExpertState::swiglu_gradients(7168, 2048);
/// assert_eq!(gradients.bytes(), 4 * 44_040_192);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpertState {
    shards: Vec<Shard>,
}

impl ExpertState {
    /// A state of the given shards; refuses an empty one.
    pub fn new(shards: Vec<Shard>) -> Result<Self, XferError> {
        if shards.iter().map(|shard| shard.bytes).sum::<u64>() == 0 {
            return Err(XferError::EmptyState);
        }
        Ok(Self { shards })
    }

    /// One shard of `bytes` bytes (for tests and synthetic experts); `bytes` must be positive.
    pub fn opaque(bytes: u64) -> Result<Self, XferError> {
        Self::new(vec![Shard {
            name: "state".into(),
            bytes,
        }])
    }

    /// A SwiGLU expert (gate, up and down matrices of `hidden x width`) with `bytes_per_param`
    /// bytes per weight: 2 for BF16.
    pub fn swiglu(hidden: u64, width: u64, bytes_per_param: u64) -> Self {
        Self {
            shards: vec![
                Shard {
                    name: "gate_up".into(),
                    bytes: 2 * hidden * width * bytes_per_param,
                },
                Shard {
                    name: "down".into(),
                    bytes: hidden * width * bytes_per_param,
                },
            ],
        }
    }

    /// A SwiGLU expert in FP8 with one FP32 scale per 128 x 128 block of each matrix, as
    /// DeepSeek-V3 ships its weights.
    pub fn swiglu_fp8(hidden: u64, width: u64) -> Self {
        let blocks = hidden.div_ceil(128) * width.div_ceil(128);
        let mut state = Self::swiglu(hidden, width, 1);
        state.shards.push(Shard {
            name: "gate_up_scales".into(),
            bytes: 2 * blocks * 4,
        });
        state.shards.push(Shard {
            name: "down_scales".into(),
            bytes: blocks * 4,
        });
        state
    }

    /// The FP32 weight gradients of a SwiGLU expert, what training reduces into the master.
    pub fn swiglu_gradients(hidden: u64, width: u64) -> Self {
        Self::swiglu(hidden, width, 4)
    }

    /// The shards in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|shard| shard.bytes).sum()
    }
}
