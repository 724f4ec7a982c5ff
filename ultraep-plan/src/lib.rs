//! The pure planner of ultraep: exact load in, plan out.
//!
//! After the router of an MoE layer, every rank holds the same all-gathered load matrix:
//! `loads[source][expert]`, the tokens routed from each source rank to each expert. From it the
//! planner decides which hot experts get replicas in which redundant slots of colder ranks of the
//! same scale-up domain, and the integer quota of tokens every instance takes, so that every rank
//! processes about the same number of tokens. Every rank runs it on the same matrix and, since it
//! uses integer arithmetic only and breaks every tie by number, gets a bit-identical plan: no plan
//! is ever broadcast.
//!
//! Who uses it: anyone who wants plans without the rest of ultraep (the crate stands alone),
//! `ultraep-xfer`, `ultraep-kernels`, `ultraep-runtime`, `ultraep-bench`, `ultraep-cli` and
//! `ultraep-py`. What it may depend on: no other ultraep crate, no CUDA, no I/O.
//!
//! # Using it
//!
//! Build a [`Planner`] once per layer shape and call [`Balancer::plan_into`] every microbatch with
//! the same [`Plan`]: once warm, planning allocates nothing.
//!
//! ```
//! use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanConfig, Planner, RankDomains};
//! let layout = ExpertLayout::contiguous(64, 4)?; // EP64, 256 experts
//! let domains = RankDomains::single(64)?; // one NVL72-class domain
//! let mut planner = Planner::new(layout, domains, 2, PlanConfig::default())?;
//! let mut plan = Plan::default();
//! let loads = vec![100u32; 64 * 256];
//! planner.plan_into(LoadMatrix::new(&loads, 64, 256)?, &mut plan)?;
//! assert_eq!(plan.metrics().replicas, 0); // already balanced
//! # Ok::<(), ultraep_plan::PlanError>(())
//! ```
//!
//! # The model
//!
//! Each expert has one master on its home rank ([`ExpertLayout`]), which never moves. Each rank has
//! `slots` redundant slots; a replica of an expert may go in a slot of another rank of the master's
//! domain ([`RankDomains`]), one copy of an expert per rank at most. The quotas of an expert's
//! instances sum to its exact load; a replica's quota is at least
//! [`PlanConfig::min_replica_tokens`] (a smaller one does not pay for copying the expert), and a
//! loaded master keeps at least one token unless [`PlanConfig::master_keeps_token`] is off.
//!
//! The objective, in order: the smallest largest rank load, then as few replicas as possible
//! (every replica is bytes on the critical path), then as few tokens leaving their source rank as
//! possible.
//!
//! # The algorithm
//!
//! Domains are independent (load never leaves its domain), so each is balanced on its own.
//!
//! 1. **Loads.** Sum the matrix into per-expert loads and masters-only rank loads. The domain's
//!    lower bound is `lo = ceil(domain load / domain ranks)`; no plan does better.
//! 2. **Threshold.** Probe `T = floor(lo * (1 + tolerance))` (1% by default). A probe is a greedy
//!    export: overloaded ranks, most loaded first, shed their excess above `T` from their experts,
//!    largest first. Each piece becomes a replica on a rank with slack below `T`, a free slot and no
//!    copy of the expert: the rank with the *least* slack that takes the whole remaining excess
//!    (best fit keeps big gaps for big excesses and finishes a rank in one piece), or if none can,
//!    the rank with the *most* slack (worst fit makes the piece as large as possible). A piece below
//!    the minimum replica quota is raised to it. If the probe fails, bisect `T` between the failed
//!    value and the current maximum (which needs no replica) until the interval is within the
//!    tolerance, and keep the replicas of the lowest `T` that succeeded.
//! 3. **Quotas.** A replica's quota is its piece; the master keeps the rest of the expert's load.
//! 4. **Split.** For every replicated expert, tokens already on an instance's rank fill that instance
//!    first (they never move); the sources then share what is left, in rank order, in proportion to
//!    the instances' *remaining* quotas with largest-remainder rounding. Proportion to what remains
//!    keeps both sums exact: each source sends exactly its tokens and each instance receives
//!    exactly its quota. Experts without replicas send everything to their master.
//!
//! Where slots or the minimum quota keep a domain from its lower bound, the search settles on the
//! lowest threshold the greedy export reaches; [`PlanMetrics::gap_to_lower_bound`] says how far
//! that is. Planning never fails on a valid input.
//!
//! **Complexity** for `R` ranks, `E` experts, `n` ranks in a domain with `S` slots each: the loads
//! are `O(R E)`; a probe is `O(P n)` for its `P <= n S` pieces; the search makes one probe in the
//! common case, otherwise about `log2((max - lo) / (lo * tolerance))` more (8 for a domain at 3x its
//! mean with the 1% tolerance; about `log2(max - lo)` with no tolerance); the split is
//! `O(R k)` per replicated expert with `k` instances. On the published EP64 scenario that is about
//! 9-10 us for the plan without the split and 44-51 us with it, on one core of the development
//! machine (`cargo bench -p ultraep-plan`).
//!
//! # A worked example: four ranks
//!
//! Four ranks in one domain, one expert each (expert `e` lives on rank `e`), one redundant slot per
//! rank, a minimum replica quota of one token and the default 1% tolerance. Every rank sends 100
//! tokens to expert 0 and up to 10 to each other expert:
//!
//! | source | e0 | e1 | e2 | e3 |
//! |---|---|---|---|---|
//! | rank 0 | 100 | 10 | 10 | 0 |
//! | rank 1 | 100 | 10 | 0 | 10 |
//! | rank 2 | 100 | 0 | 10 | 10 |
//! | rank 3 | 100 | 10 | 10 | 10 |
//!
//! Expert loads are 400, 30, 30, 30, so with masters only rank 0 carries 400 tokens and the others
//! 30 each: max/mean = 400 / 122.5 = 3.27. The lower bound is `lo = ceil(490 / 4) = 123` and the
//! first probe is `T = floor(123 * 1.01) = 124`.
//!
//! Rank 0 must shed 400 - 124 = 276 tokens of expert 0 (it may give up 399; its master keeps one).
//! Ranks 1-3 each have slack 124 - 30 = 94. No rank takes 276 whole, so the most slack wins, ties to
//! the lower rank: 94 tokens to rank 1, then 94 to rank 2. The remaining 88 fit whole in rank 3
//! (best fit). The probe succeeds with three replicas: expert 0's quotas are 124 (master), 94, 94
//! and 88, and the rank loads 124, 124, 124, 118 (max/mean 1.012, the bound being 1.004).
//!
//! The split of expert 0: each source's own 100 tokens fill the instance on its rank first: 100 of
//! rank 0's master quota, all 94 of rank 1's replica, 94 of rank 2's, 88 of rank 3's. What is left
//! (6 tokens from rank 1, 6 from rank 2, 12 from rank 3) goes to the only instance with quota left,
//! the master. Tokens leaving their source: 24 of expert 0 plus 20 for each of experts 1-3.
//!
//! ```
//! use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, PlanConfig, Planner, RankDomains};
//! let config = PlanConfig { min_replica_tokens: 1, ..PlanConfig::default() };
//! let mut planner = Planner::new(ExpertLayout::contiguous(4, 1)?, RankDomains::single(4)?, 1, config)?;
//! let loads = [100, 10, 10, 0, 100, 10, 0, 10, 100, 0, 10, 10, 100, 10, 10, 10];
//! let plan = planner.plan(LoadMatrix::new(&loads, 4, 4)?)?;
//! let quotas: Vec<u32> = plan.instances_of(0).iter().map(|i| i.quota).collect();
//! assert_eq!(quotas, [124, 94, 94, 88]);
//! assert_eq!(plan.rank_loads(), &[124, 124, 124, 118]);
//! assert_eq!(plan.metrics().tokens_leaving_source, 24 + 3 * 20);
//! # Ok::<(), ultraep_plan::PlanError>(())
//! ```
//!
//! # Baselines
//!
//! [`NoBalance`] (masters only), [`Eplb`] (DeepSeek's EPLB with fixed masters, planned from an
//! estimate and applied to the real load) and [`ForceBalanced`] (the unreachable ideal, for
//! throughput comparisons) implement the same [`Balancer`] trait and return the same [`Plan`].
//! [`reference`](mod@reference) rebuilds the published EP64 test scenario.

mod assembler;
mod balancer;
mod config;
mod describe;
mod eplb;
mod eplb_hierarchical;
mod eplb_replace;
mod error;
mod fixed_replicas;
mod layout;
mod load;
mod lplb;
mod plan;
mod planner;
mod rank_split;
pub mod reference;
mod rehome;
pub mod reroute;
mod residency;
mod split;
mod threshold;

pub use assembler::{MAX_CELLS, MAX_REPLICAS, MAX_SLOTS_PER_RANK, Replica};
pub use balancer::{Balancer, ForceBalanced, NoBalance};
pub use config::{InstanceCost, PlanConfig, SplitMode, TransferEstimate};
pub use eplb::{Eplb, EplbMode};
pub use eplb_hierarchical::EplbHierarchical;
pub use eplb_replace::EplbReplace;
pub use error::PlanError;
pub use fixed_replicas::FixedReplicas;
pub use layout::{ExpertLayout, MAX_EXPERTS, MAX_RANKS, RankDomains};
pub use load::LoadMatrix;
pub use lplb::Lplb;
pub use plan::{Instance, Plan, PlanKind, PlanMetrics, SplitEntry};
pub use planner::Planner;
pub use rank_split::{GatheredLoads, RankSplit};
pub use rehome::{LoadHistory, MasterMove, RehomeConfig, Rehoming, rehome};
pub use residency::Residency;
