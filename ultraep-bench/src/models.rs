//! Model shapes: what the step simulator needs to know about an MoE model.
//!
//! Routed experts, top-k, MoE layers, hidden size and expert width are the public configuration
//! figures (see `shared/reference/ultraep-facts.md` section 8). The attention and shared-expert
//! parameter counts per layer are ours, derived from the public configurations (heads x head
//! dimension for the projections); they set the size of each layer's balanced part and are marked
//! approximate. Dense layers, their MLP width and the vocabulary are the public configurations'
//! (`first_k_dense_replace`, `intermediate_size`, `vocab_size`): they set the time outside the MoE
//! layers, so that speedups are end to end.

/// One MoE model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Its name in reports.
    pub name: &'static str,
    /// Routed experts per MoE layer.
    pub routed_experts: u32,
    /// Experts every token is routed to.
    pub top_k: u32,
    /// MoE layers (the model's other layers are dense and counted in the balanced part).
    pub moe_layers: u32,
    /// Hidden size.
    pub hidden: u64,
    /// Intermediate width of one routed expert.
    pub expert_width: u64,
    /// Approximate attention parameters per layer (projections; see the module docs).
    pub attention_params: u64,
    /// Parameters of the shared experts per layer (zero without one).
    pub shared_expert_params: u64,
    /// Query heads x head dimension: the width attention scores are computed over.
    pub attention_width: u64,
    /// Bytes per expert weight as trained or served (2 for BF16).
    pub weight_bytes: u64,
    /// Layers whose feed-forward part is one dense MLP instead of experts (the first layers of
    /// DeepSeek-V3 and GLM; none in Qwen3).
    pub dense_layers: u32,
    /// Intermediate width of those dense MLPs.
    pub dense_width: u64,
    /// Vocabulary size (the output projection's rows).
    pub vocabulary: u64,
    /// Bytes of key-value cache per token and layer (BF16): what decode's attention reads.
    pub kv_bytes_per_token: u64,
}

impl ModelShape {
    /// GLM-4.5-Air (106B-A12B): 128 routed experts + 1 shared, top-8, 45 MoE layers, hidden 4096,
    /// expert width 1408; 96 query heads and 8 KV heads of 128.
    pub const GLM_4_5_AIR: Self = Self {
        name: "GLM-4.5-Air",
        routed_experts: 128,
        top_k: 8,
        moe_layers: 45,
        hidden: 4096,
        expert_width: 1408,
        attention_params: 4096 * (12288 + 2 * 1024) + 12288 * 4096,
        shared_expert_params: 3 * 4096 * 1408,
        attention_width: 12288,
        weight_bytes: 2,
        dense_layers: 1,
        dense_width: 10944,
        vocabulary: 151_552,
        kv_bytes_per_token: 2 * 8 * 128 * 2,
    };

    /// Qwen3-235B-A22B: 128 routed experts, top-8, 94 MoE layers, hidden 4096, expert width 1536;
    /// 64 query heads and 4 KV heads of 128.
    pub const QWEN3_235B: Self = Self {
        name: "Qwen3-235B",
        routed_experts: 128,
        top_k: 8,
        moe_layers: 94,
        hidden: 4096,
        expert_width: 1536,
        attention_params: 4096 * (8192 + 2 * 512) + 8192 * 4096,
        shared_expert_params: 0,
        attention_width: 8192,
        weight_bytes: 2,
        dense_layers: 0,
        dense_width: 0,
        vocabulary: 151_936,
        kv_bytes_per_token: 2 * 4 * 128 * 2,
    };

    /// DeepSeek-V3 (671B-A37B): 256 routed experts + 1 shared, top-8, 58 MoE layers, hidden 7168,
    /// expert width 2048; multi-head latent attention, about 187M parameters per layer ((671B less
    /// the experts and embeddings) / 61 layers).
    pub const DEEPSEEK_V3: Self = Self {
        name: "DeepSeek-V3",
        routed_experts: 256,
        top_k: 8,
        moe_layers: 58,
        hidden: 7168,
        expert_width: 2048,
        attention_params: 187_000_000,
        shared_expert_params: 3 * 7168 * 2048,
        attention_width: 128 * 192,
        weight_bytes: 2,
        dense_layers: 3,
        dense_width: 18432,
        vocabulary: 129_280,
        kv_bytes_per_token: (512 + 64) * 2,
    };

    /// GLM-4.7 (358B-A32B): 160 routed experts + 1 shared, top-8, 89 MoE layers, hidden 5120,
    /// expert width 1536; 96 query heads and 8 KV heads of 128.
    pub const GLM_4_7: Self = Self {
        name: "GLM-4.7",
        routed_experts: 160,
        top_k: 8,
        moe_layers: 89,
        hidden: 5120,
        expert_width: 1536,
        attention_params: 5120 * (12288 + 2 * 1024) + 12288 * 5120,
        shared_expert_params: 3 * 5120 * 1536,
        attention_width: 12288,
        weight_bytes: 2,
        dense_layers: 3,
        dense_width: 12288,
        vocabulary: 151_552,
        kv_bytes_per_token: 2 * 8 * 128 * 2,
    };

    /// Every preset.
    pub const ALL: [Self; 4] = [
        Self::GLM_4_5_AIR,
        Self::QWEN3_235B,
        Self::DEEPSEEK_V3,
        Self::GLM_4_7,
    ];

    /// The preset called `name`, case-insensitively ("qwen3-235b", "deepseek-v3", ...).
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|model| model.name.eq_ignore_ascii_case(name))
    }

    /// Parameters of one routed expert (gate, up and down: three `hidden x width` matrices).
    pub const fn expert_params(&self) -> u64 {
        3 * self.hidden * self.expert_width
    }

    /// Bytes of one routed expert's weights.
    pub const fn expert_bytes(&self) -> u64 {
        self.expert_params() * self.weight_bytes
    }

    /// Forward FLOPs of one token through one routed expert.
    pub const fn expert_flops_per_token(&self) -> u64 {
        2 * self.expert_params()
    }

    /// Bytes of weights outside the routed experts that every layer reads (attention and the
    /// shared expert, as trained or served).
    pub const fn balanced_weight_bytes(&self) -> u64 {
        (self.attention_params + self.shared_expert_params) * self.weight_bytes
    }

    /// Bytes of weights outside the MoE layers: the dense layers and the output projection.
    pub const fn outside_moe_weight_bytes(&self) -> u64 {
        (self.dense_layers as u64 * (self.attention_params + 3 * self.hidden * self.dense_width)
            + self.vocabulary * self.hidden)
            * self.weight_bytes
    }

    /// Forward FLOPs of one token outside the MoE layers: the dense layers (attention and a dense
    /// MLP each) and the output projection over the vocabulary.
    pub const fn outside_moe_flops_per_token(&self, sequence: u64) -> u64 {
        let dense_layer = 2 * (self.attention_params + 3 * self.hidden * self.dense_width)
            + 2 * sequence * self.attention_width;
        self.dense_layers as u64 * dense_layer + 2 * self.vocabulary * self.hidden
    }

    /// Forward FLOPs of one token through the balanced part of one layer (attention projections,
    /// shared expert, and attention scores over `sequence` tokens with a causal mask).
    pub const fn balanced_flops_per_token(&self, sequence: u64) -> u64 {
        2 * (self.attention_params + self.shared_expert_params)
            + 2 * sequence * self.attention_width
    }
}
