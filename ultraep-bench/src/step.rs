//! The MoE step simulator: how long one MoE layer takes for one microbatch under a plan.
//!
//! Per layer:
//! - **Balanced part**: attention, shared expert and scores for every rank's own tokens at the
//!   dense rate (`DENSE_EFFICIENCY` of the GPU's dense BF16 peak); the rank with the most tokens
//!   sets it (prefill batches are uneven).
//! - **Expert compute**: every instance is a grouped-GEMM problem with a roofline: `max(FLOPs /
//!   (peak x GEMM_EFFICIENCY), weight bytes / HBM bandwidth)`, so small token counts are bound by
//!   reading the weights and large ones by FLOPs; the busiest rank sets the time.
//! - **Dispatch and combine**: every token an instance takes from another rank crosses the fabric
//!   as `hidden` BF16 values, each way; the rank that sends or receives most over its scale-up port
//!   sets the time (plus one hop of latency per all-to-all).
//! - **Balancer**: what the balancer puts on the critical path (planning, weight transfers,
//!   gradient reduction), measured by running it and by the transfer simulator.
//!
//! Training is forward plus backward: backward expert compute is twice the forward (Dgrad and
//! Wgrad), the balanced part likewise, and the all-to-alls run again for the gradients. Prefill is
//! forward only.

use ultraep_plan::{LoadMatrix, Plan, PlanKind};
use ultraep_topo::{RankId, Topology};

use crate::BenchError;
use crate::models::ModelShape;

/// Fraction of the dense BF16 peak that attention and dense layers reach (an assumption: typical
/// large-model training MFU).
pub const DENSE_EFFICIENCY: f64 = 0.6;
/// Fraction of the dense BF16 peak that expert grouped GEMMs reach when bound by FLOPs (an
/// assumption: grouped GEMMs on large token counts).
pub const GEMM_EFFICIENCY: f64 = 0.7;
/// Bytes per activation value crossing the fabric (BF16).
pub const ACTIVATION_BYTES: u64 = 2;

/// Training (forward and backward) or prefill (forward only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Mode {
    /// Forward and backward passes.
    Training,
    /// Forward only.
    Prefill,
}

/// The machine figures the simulator uses, from the topology.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hardware {
    /// Dense BF16 FLOP/s of one GPU.
    pub peak_flops: f64,
    /// HBM bytes per second of one GPU.
    pub memory_bandwidth: f64,
    /// Scale-up bytes per second of rank 0's egress (ranks of a preset are alike).
    pub link_bandwidth: f64,
    /// Seconds of one scale-up hop.
    pub link_latency: f64,
}

impl Hardware {
    /// The figures of `topology`'s accelerator and rank 0's links.
    pub fn of(topology: &Topology) -> Result<Self, BenchError> {
        let gpu = topology
            .accelerator()
            .ok_or_else(|| BenchError::InvalidProblem {
                source_name: topology.name().to_owned(),
                message: "the topology names no accelerator, so compute cannot be timed".into(),
            })?;
        let links = topology.links(RankId(0))?;
        Ok(Self {
            peak_flops: gpu.dense_bf16_gflops as f64 * 1e9,
            memory_bandwidth: gpu.memory_bandwidth.get() as f64,
            link_bandwidth: links.scale_up_egress.get() as f64,
            link_latency: links.scale_up_latency.get() as f64 * 1e-9,
        })
    }
}

/// Seconds one MoE layer takes, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LayerTime {
    /// Attention and the other balanced work.
    pub balanced: f64,
    /// The busiest rank's expert compute.
    pub experts: f64,
    /// Dispatch and combine all-to-alls.
    pub all_to_all: f64,
    /// What the balancer adds to the critical path.
    pub balancer: f64,
}

impl LayerTime {
    /// The layer's total.
    pub fn total(&self) -> f64 {
        self.balanced + self.experts + self.all_to_all + self.balancer
    }
}

/// What one layer under one plan costs, and the largest receive buffer it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerOutcome {
    /// Seconds, by part.
    pub time: LayerTime,
    /// Bytes the busiest rank receives in the dispatch: the buffer a dispatcher must size.
    pub peak_receive_bytes: u64,
}

/// The cost of one layer of `model` in `mode` under `plan` of `loads`, with `balancer_seconds` on
/// the critical path; `sequence` is the attention context length.
pub fn layer_outcome(
    model: &ModelShape,
    mode: Mode,
    hardware: &Hardware,
    plan: &Plan,
    loads: LoadMatrix<'_>,
    sequence: u64,
    balancer_seconds: f64,
) -> LayerOutcome {
    let ranks = loads.ranks();
    let top_k = u64::from(model.top_k);
    // Tokens of every rank: its routed token-expert pairs over k.
    let tokens: Vec<u64> = (0..ranks)
        .map(|r| loads.row(r).iter().map(|&c| u64::from(c)).sum::<u64>() / top_k.max(1))
        .collect();
    let most_tokens = tokens.iter().copied().max().unwrap_or(0);
    let balanced = most_tokens as f64 * model.balanced_flops_per_token(sequence) as f64
        / (hardware.peak_flops * DENSE_EFFICIENCY);

    let mut compute = vec![0.0_f64; ranks];
    let weight_read = model.expert_bytes() as f64 / hardware.memory_bandwidth;
    for instance in plan.instances() {
        if instance.quota > 0 {
            let flops = f64::from(instance.quota) * model.expert_flops_per_token() as f64;
            compute[instance.rank as usize] +=
                (flops / (hardware.peak_flops * GEMM_EFFICIENCY)).max(weight_read);
        }
    }
    let experts = compute.iter().copied().fold(0.0, f64::max);

    let (sent, received) = fabric_tokens(plan, loads, &tokens, top_k);
    let busiest = sent.iter().chain(&received).copied().max().unwrap_or(0);
    let one_way = (busiest * model.hidden * ACTIVATION_BYTES) as f64 / hardware.link_bandwidth
        + hardware.link_latency;
    let peak_receive_bytes =
        plan.rank_loads().iter().copied().max().unwrap_or(0) * model.hidden * ACTIVATION_BYTES;

    let passes = match mode {
        Mode::Prefill => 1.0,
        Mode::Training => 3.0,
    };
    let all_to_alls = match mode {
        Mode::Prefill => 2.0,
        Mode::Training => 4.0,
    };
    LayerOutcome {
        time: LayerTime {
            balanced: balanced * passes,
            experts: experts * passes,
            all_to_all: one_way * all_to_alls,
            balancer: balancer_seconds,
        },
        peak_receive_bytes,
    }
}

/// Tokens every rank sends to and receives from other ranks in the dispatch.
fn fabric_tokens(
    plan: &Plan,
    loads: LoadMatrix<'_>,
    tokens: &[u64],
    top_k: u64,
) -> (Vec<u64>, Vec<u64>) {
    let ranks = loads.ranks();
    let mut sent = vec![0u64; ranks];
    let mut received = vec![0u64; ranks];
    if plan.kind() == PlanKind::Ideal || !plan.has_split() {
        // No split to follow: tokens spread evenly, all but a 1/R share leave their rank.
        let keep = |x: u64| x * (ranks as u64 - 1) / ranks.max(1) as u64;
        for rank in 0..ranks {
            sent[rank] = keep(tokens[rank] * top_k);
            received[rank] = keep(plan.rank_loads()[rank]);
        }
        return (sent, received);
    }
    for entry in plan.split(loads) {
        let destination = plan.instances()[entry.instance as usize].rank;
        if destination != entry.source {
            sent[entry.source as usize] += u64::from(entry.tokens);
            received[destination as usize] += u64::from(entry.tokens);
        }
    }
    (sent, received)
}
