//! The MoE step simulator: how long one MoE layer takes for one microbatch under a plan.
//!
//! Per layer:
//! - **Balanced part**: attention, shared expert and scores for every rank's own tokens at the
//!   dense rate (a fraction of the GPU's dense BF16 peak, [`Efficiency`]); the rank with the most
//!   tokens sets it (prefill batches are uneven).
//! - **Expert compute**: every instance is a grouped-GEMM problem with a roofline: `max(FLOPs /
//!   (peak x efficiency(tokens)), weight bytes / HBM bandwidth)`, so small token counts are bound by
//!   reading the weights and large ones by FLOPs; the efficiency falls for small groups
//!   ([`Efficiency::gemm`]), which charges a split expert for its smaller GEMMs. The busiest rank
//!   sets the time.
//! - **Dispatch and combine**: every token an instance takes from another rank crosses the fabric
//!   as `hidden` BF16 values, each way; the rank that sends or receives most over its scale-up port
//!   sets the time (plus one hop of latency per all-to-all). Every balancer follows its own token
//!   split; the ideal's is the uniform routing that defines it (see `fabric_tokens`).
//! - **Balancer**: what the balancer puts on the critical path (the load all-gather, planning,
//!   task lists, weight transfers, reroute, gradient reduction), from the published costs in
//!   [`Overheads`] and the transfer simulator; never a wall-clock measurement, so that a seed
//!   reproduces every simulated figure.
//!
//! Outside the MoE layers, the dense layers and the output projection take [`outside_moe`]: the
//! same for every balancer, so that throughput and speedups are end to end.
//!
//! Training is forward plus backward: backward expert compute is twice the forward (Dgrad and
//! Wgrad), the balanced part likewise, and the all-to-alls run again for the gradients. Prefill is
//! forward only.

use ultraep_plan::{LoadMatrix, Plan, PlanKind};
use ultraep_topo::{RankId, Topology};

use crate::BenchError;
use crate::models::ModelShape;

/// Bytes per activation value crossing the fabric (BF16).
pub const ACTIVATION_BYTES: u64 = 2;

/// Tokens per expert instance at which a grouped GEMM reaches half of its large-count efficiency
/// (an assumption: a 128-row tile is the unit of work of Hopper and Blackwell grouped GEMMs, and a
/// group of fewer rows wastes the rest of its tile).
pub const GEMM_HALF_TOKENS: f64 = 128.0;

/// The fractions of the GPU's dense BF16 peak the two kinds of compute reach: the balanced work
/// (attention, shared experts, dense layers) and the expert grouped GEMMs on large token counts.
///
/// Nothing in the model derives them; for the published scenarios they are fitted to the published
/// throughputs of the ideal and of no balancing (see [`crate::step_fit`]), and
/// [`Efficiency::ASSUMED`] stands in where no figure is published.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Efficiency {
    /// Fraction of the dense peak reached by the balanced work.
    pub dense: f64,
    /// Fraction of the dense peak reached by expert grouped GEMMs with many tokens per instance.
    pub experts: f64,
}

impl Efficiency {
    /// Typical large-model figures, used where nothing is fitted: 0.6 for dense work, 0.7 for
    /// grouped GEMMs on large token counts.
    pub const ASSUMED: Self = Self {
        dense: 0.6,
        experts: 0.7,
    };

    /// The fraction of the dense peak a grouped GEMM of `tokens` rows reaches:
    /// `experts * tokens / (tokens + GEMM_HALF_TOKENS)`, so a split expert pays for its smaller
    /// GEMMs.
    pub fn gemm(&self, tokens: u32) -> f64 {
        let tokens = f64::from(tokens);
        self.experts * tokens / (tokens + GEMM_HALF_TOKENS)
    }
}

/// What the published system pays per layer beyond compute and all-to-all, and how fast its weight
/// transfers run: the costs every balancer is charged from. Figures from the paper
/// (`ultraep-facts.md` sections 4 and 5) unless marked.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Overheads {
    /// Planning per layer: the GPU planner at EP64, Qwen3-235B (56 us published).
    pub planning: f64,
    /// Building the transfer task lists on the device, per layer that moves weights (38 us).
    pub task_lists: f64,
    /// The token reroute per layer (36-39 us published). It overlaps the weight transfer (both
    /// follow the plan and neither needs the other), so a layer pays the longer of the two.
    pub reroute: f64,
    /// LPLB's per-batch linear program on one SM (about 100 us published).
    pub lplb_solve: f64,
    /// The fraction of a port's bandwidth weight transfers' bytes move at, on top of the
    /// calibrated transfer model (`ultraep_xfer::TransferCosts::CALIBRATED`: 20 ns per transfer,
    /// backpressure, a relay's forwarded byte costing three direct ones), which reproduces the
    /// published direct weight-sync times at the full port bandwidth: 1.0. Swept in the report.
    pub transfer_bandwidth: f64,
}

impl Overheads {
    /// The published figures.
    pub const PUBLISHED: Self = Self {
        planning: 56e-6,
        task_lists: 38e-6,
        reroute: 37.5e-6,
        lplb_solve: 100e-6,
        transfer_bandwidth: 1.0,
    };

    /// The transfer costs the simulator and the relay chooser use.
    pub fn transfer_costs(&self) -> ultraep_xfer::TransferCosts {
        ultraep_xfer::TransferCosts {
            bandwidth_ppm: (self.transfer_bandwidth.clamp(1e-6, 1.0) * 1e6).round() as u32,
            ..ultraep_xfer::TransferCosts::CALIBRATED
        }
    }

    /// Seconds of the all-gather of the load: every rank receives every other rank's counts (4
    /// bytes per expert) over its scale-up port, after one hop.
    pub fn all_gather(&self, hardware: &Hardware, ranks: u32, experts: u32) -> f64 {
        let bytes = f64::from(ranks.saturating_sub(1)) * f64::from(experts) * 4.0;
        hardware.link_latency + bytes / hardware.link_bandwidth
    }
}

/// Seconds of one step outside the MoE layers: the dense layers and the output projection for
/// the rank with the most tokens (`tokens`), forward, and in training backward too.
pub fn outside_moe(
    model: &ModelShape,
    mode: Mode,
    hardware: &Hardware,
    tokens: u64,
    sequence: u64,
) -> f64 {
    let compute =
        tokens as f64 * model.outside_moe_flops_per_token(sequence) as f64 * mode.passes()
            / (hardware.peak_flops * hardware.efficiency.dense);
    if mode == Mode::Decode {
        // Decode reads every weight for a handful of tokens, and the dense layers' caches.
        let reads = model.outside_moe_weight_bytes() as f64
            + (u64::from(model.dense_layers) * tokens * sequence * model.kv_bytes_per_token) as f64;
        return compute.max(reads / hardware.memory_bandwidth);
    }
    compute
}

/// Training (forward and backward), prefill (forward only), or decode (forward, one token per
/// sequence over a long context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Mode {
    /// Forward and backward passes.
    Training,
    /// Forward only.
    Prefill,
    /// Forward only, few tokens: weight and key-value cache reads set the times, not FLOPs.
    Decode,
}

impl Mode {
    /// Passes over the weights' FLOPs: forward, and in training Dgrad and Wgrad.
    pub fn passes(self) -> f64 {
        match self {
            Mode::Training => 3.0,
            Mode::Prefill | Mode::Decode => 1.0,
        }
    }
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
    /// Scale-out bytes per second of rank 0 (between domains).
    pub scale_out_bandwidth: f64,
    /// Seconds of one scale-out hop.
    pub scale_out_latency: f64,
    /// The fractions of the peak the compute reaches.
    pub efficiency: Efficiency,
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
            scale_out_bandwidth: links.scale_out.get() as f64,
            scale_out_latency: links.scale_out_latency.get() as f64 * 1e-9,
            efficiency: Efficiency::ASSUMED,
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

/// One simulated MoE layer: what stays the same whichever balancer plans it. The one cost
/// function every experiment times its layers with ([`SimulatedLayer::outcome`]).
#[derive(Debug, Clone, Copy)]
pub struct SimulatedLayer<'a> {
    /// The model.
    pub model: &'a ModelShape,
    /// Training, prefill or decode.
    pub mode: Mode,
    /// The GPUs and links.
    pub hardware: &'a Hardware,
    /// The router's load.
    pub loads: LoadMatrix<'a>,
    /// The attention context length.
    pub sequence: u64,
    /// Every rank's scale-up domain (tokens between domains cross the slower scale-out network).
    pub domains: &'a [u32],
}

impl SimulatedLayer<'_> {
    /// The layer's cost under `plan` of its load, with `balancer_seconds` on the critical path.
    pub fn outcome(&self, plan: &Plan, balancer_seconds: f64) -> LayerOutcome {
        let SimulatedLayer {
            model,
            mode,
            hardware,
            loads,
            sequence,
            domains,
        } = *self;
        let ranks = loads.ranks();
        let top_k = u64::from(model.top_k);
        // Tokens of every rank: its routed token-expert pairs over k.
        let tokens: Vec<u64> = (0..ranks)
            .map(|r| loads.row(r).iter().map(|&c| u64::from(c)).sum::<u64>() / top_k.max(1))
            .collect();
        let most_tokens = tokens.iter().copied().max().unwrap_or(0);
        let mut balanced = most_tokens as f64 * model.balanced_flops_per_token(sequence) as f64
            / (hardware.peak_flops * hardware.efficiency.dense);
        if mode == Mode::Decode {
            // Attention reads its weights and every sequence's key-value cache.
            let reads = model.balanced_weight_bytes() as f64
                + (most_tokens * sequence * model.kv_bytes_per_token) as f64;
            balanced = balanced.max(reads / hardware.memory_bandwidth);
        }

        let mut compute = vec![0.0_f64; ranks];
        let weight_read = model.expert_bytes() as f64 / hardware.memory_bandwidth;
        for instance in plan.instances() {
            if instance.quota > 0 {
                let flops = f64::from(instance.quota) * model.expert_flops_per_token() as f64;
                compute[instance.rank as usize] += (flops
                    / (hardware.peak_flops * hardware.efficiency.gemm(instance.quota)))
                .max(weight_read);
            }
        }
        let experts = compute.iter().copied().fold(0.0, f64::max);

        let traffic = fabric_tokens(plan, loads, &tokens, top_k, domains);
        // Every rank's port time each way: tokens within its domain at scale-up speed, the rest at
        // scale-out speed; the busiest port of either direction sets the all-to-all.
        let bytes = |tokens: u64| (tokens * model.hidden * ACTIVATION_BYTES) as f64;
        let port = |(near, far): (u64, u64)| {
            bytes(near) / hardware.link_bandwidth + bytes(far) / hardware.scale_out_bandwidth
        };
        let busiest = traffic
            .sent
            .iter()
            .zip(&traffic.sent_far)
            .chain(traffic.received.iter().zip(&traffic.received_far))
            .map(|(&near, &far)| port((near, far)))
            .fold(0.0, f64::max);
        let crosses = traffic.sent_far.iter().any(|&far| far > 0);
        let one_way = busiest
            + if crosses {
                hardware.scale_out_latency
            } else {
                hardware.link_latency
            };
        let peak_receive_bytes =
            plan.rank_loads().iter().copied().max().unwrap_or(0) * model.hidden * ACTIVATION_BYTES;

        let passes = mode.passes();
        let all_to_alls = match mode {
            Mode::Prefill | Mode::Decode => 2.0,
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
}

/// Tokens every rank sends to and receives from other ranks of its domain, and of other domains,
/// in the dispatch.
struct Traffic {
    sent: Vec<u64>,
    received: Vec<u64>,
    sent_far: Vec<u64>,
    received_far: Vec<u64>,
}

fn fabric_tokens(
    plan: &Plan,
    loads: LoadMatrix<'_>,
    tokens: &[u64],
    top_k: u64,
    domains: &[u32],
) -> Traffic {
    let ranks = loads.ranks();
    let mut traffic = Traffic {
        sent: vec![0u64; ranks],
        received: vec![0u64; ranks],
        sent_far: vec![0u64; ranks],
        received_far: vec![0u64; ranks],
    };
    let domain = |rank: usize| domains.get(rank).copied().unwrap_or(0);
    if plan.kind() == PlanKind::Ideal || !plan.has_split() {
        // The force-balanced ideal is the paper's: the router's choices replaced by a uniform
        // spread over the experts. Its split is then each rank's pairs spread evenly over the
        // ranks, all but a 1/R share crossing the fabric (those bound for other domains over
        // scale-out), and its receivers get their even share likewise. (A balancer whose split
        // keeps tokens home can cross less: the ideal bounds balance, not traffic.)
        let mut domain_size = std::collections::BTreeMap::new();
        for rank in 0..ranks {
            *domain_size.entry(domain(rank)).or_insert(0u64) += 1;
        }
        let share = |x: u64, of: u64| x * of / ranks.max(1) as u64;
        for rank in 0..ranks {
            let near = domain_size[&domain(rank)] - 1;
            let far = ranks as u64 - 1 - near;
            let own = tokens[rank] * top_k;
            traffic.sent[rank] = share(own, near);
            traffic.sent_far[rank] = share(own, far);
            traffic.received[rank] = share(plan.rank_loads()[rank], near);
            traffic.received_far[rank] = share(plan.rank_loads()[rank], far);
        }
        return traffic;
    }
    for entry in plan.split(loads) {
        let destination = plan.instances()[entry.instance as usize].rank as usize;
        let source = entry.source as usize;
        if destination == source {
            continue;
        }
        let tokens = u64::from(entry.tokens);
        if domain(source) == domain(destination) {
            traffic.sent[source] += tokens;
            traffic.received[destination] += tokens;
        } else {
            traffic.sent_far[source] += tokens;
            traffic.received_far[destination] += tokens;
        }
    }
    traffic
}
