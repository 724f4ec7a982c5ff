//! What the engine needs to know about the model: its MoE shape, the weights' number format, and
//! whether it trains or only runs forward.

use ultraep_xfer::{ExpertState, XferError};

/// How expert weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 4 bytes a weight (small models, tests, the example).
    F32,
    /// 2 bytes a weight.
    Bf16,
    /// 1 byte a weight plus one FP32 scale per 128 x 128 block, as DeepSeek-V3 ships its weights.
    Fp8,
}

/// What the engine is balancing for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Forward and backward: replicas are restored before the expert backward and their gradients
    /// are reduced into the masters' afterwards. Every slot also holds an FP32 gradient.
    Training,
    /// Forward only (prefill or inference): no gradients, and a plan is done with once its layer
    /// ran.
    Prefill,
}

/// The MoE shape of a model: every MoE layer has `experts` routed SwiGLU experts of
/// `hidden x expert_width`, and every token goes to `top_k` of them.
///
/// ```
/// use ultraep_runtime::{Dtype, ModelShape};
/// // DeepSeek-V3: 58 MoE layers of 256 experts, FP8 weights of 44 MB an expert.
/// let model = ModelShape { layers: 58, experts: 256, top_k: 8, hidden: 7168, expert_width: 2048, dtype: Dtype::Fp8 };
/// assert_eq!(model.expert_state()?.bytes(), 44_040_192 + 3 * 56 * 16 * 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelShape {
    /// MoE layers.
    pub layers: u32,
    /// Routed experts per layer.
    pub experts: u32,
    /// Experts every token is routed to.
    pub top_k: u32,
    /// Hidden size.
    pub hidden: u64,
    /// Intermediate width of one expert.
    pub expert_width: u64,
    /// How the weights are stored.
    pub dtype: Dtype,
}

impl ModelShape {
    /// The state of one expert's weights, as the transfers move it.
    pub fn expert_state(&self) -> Result<ExpertState, XferError> {
        let state = match self.dtype {
            Dtype::F32 => ExpertState::swiglu(self.hidden, self.expert_width, 4),
            Dtype::Bf16 => ExpertState::swiglu(self.hidden, self.expert_width, 2),
            Dtype::Fp8 => ExpertState::swiglu_fp8(self.hidden, self.expert_width),
        };
        // `swiglu` builds shards directly; `new` checks them (no empty expert).
        ExpertState::new(state.shards().to_vec())
    }

    /// The FP32 weight gradient of one expert, what training reduces into the master.
    pub fn gradient_state(&self) -> Result<ExpertState, XferError> {
        ExpertState::new(
            ExpertState::swiglu_gradients(self.hidden, self.expert_width)
                .shards()
                .to_vec(),
        )
    }
}
