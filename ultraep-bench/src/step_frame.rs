//! What one step costs and computes outside the balancers' reach, shared by the experiments and
//! the compute-rate fit.

use crate::scenario::Scenario;
use crate::step::{Hardware, outside_moe};

/// What one step costs and computes outside the balancers' reach: the time outside the MoE layers
/// and the model FLOPs of every rank's tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFrame {
    /// Seconds of the dense layers and the output projection (the rank with the most tokens).
    pub outside_seconds: f64,
    /// Model FLOPs outside the MoE layers, over all ranks.
    pub outside_flops: f64,
    /// Model FLOPs of the simulated MoE layers (attention and experts), over all ranks.
    pub moe_flops: f64,
}

impl StepFrame {
    /// The frame of one step whose MoE layers route `layers` (each `ranks` rows of the model's
    /// experts); the first layer's rows give every rank's tokens.
    pub fn of(scenario: &Scenario, hardware: &Hardware, ranks: u32, layers: &[Vec<u32>]) -> Self {
        let model = scenario.model;
        let experts = model.routed_experts as usize;
        let top_k = u64::from(model.top_k.max(1));
        let tokens_of = |loads: &[u32], rank: usize| {
            loads
                .get(rank * experts..(rank + 1) * experts)
                .map_or(0, |row| {
                    row.iter().map(|&c| u64::from(c)).sum::<u64>() / top_k
                })
        };
        let first = layers.first().map_or(&[][..], Vec::as_slice);
        let most_tokens = (0..ranks as usize)
            .map(|rank| tokens_of(first, rank))
            .max()
            .unwrap_or(0);
        let all_tokens: u64 = (0..ranks as usize).map(|rank| tokens_of(first, rank)).sum();
        let passes = scenario.mode.passes();
        let outside_flops = all_tokens as f64
            * model.outside_moe_flops_per_token(scenario.sequence) as f64
            * passes;
        let mut moe_flops = 0.0;
        for loads in layers {
            let tokens = loads.iter().map(|&c| u64::from(c)).sum::<u64>() / top_k;
            moe_flops += tokens as f64
                * (model.balanced_flops_per_token(scenario.sequence) as f64
                    + f64::from(model.top_k) * model.expert_flops_per_token() as f64)
                * passes;
        }
        Self {
            outside_seconds: outside_moe(
                &model,
                scenario.mode,
                hardware,
                most_tokens,
                scenario.sequence,
            ),
            outside_flops,
            moe_flops,
        }
    }

    /// Model FLOPs of the whole step, the simulated MoE layers standing for `layer_scale` times
    /// as many.
    pub fn step_flops(&self, layer_scale: f64) -> f64 {
        self.outside_flops + self.moe_flops * layer_scale
    }
}
