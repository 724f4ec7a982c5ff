//! Planning time on the published reference scenario (EP64, 256 experts, 4 masters + 2 slots per
//! rank, top-8, 8192 tokens per rank) at initial imbalance 1.5, 2.0 and 3.0, with the planner reused
//! as it is every microbatch. The published GPU planner takes 56-78 us here (and its token reroute
//! another 36-39 us).
//!
//! `ultraep/full` is a whole plan: thresholds, replicas, quotas and the split of every source's
//! tokens. `ultraep/contiguous-split` is the same with the division-free contiguous split.
//! `ultraep/no-split` leaves the split to the consumer (`PlanConfig::split = None`), which is
//! what the published planner's figure covers. `ultraep/rank-split` is what one rank of a group
//! needs: the plan without the split, then its own row and columns (`RankSplit`, for the rank
//! that takes longest); `ultraep/rank-split-alone` is that last part by itself.
//! `ultraep/cost-aware` and `ultraep/cost-aware-no-split` are `full` and `no-split` under the
//! decode objective (a fixed cost per instance: a 44 MB FP8 expert read at 4.8 TB/s, worth about
//! 104 tokens at 1 PFLOP/s), on the same shapes. `ultraep/transfer-aware` is `full` with a
//! transfer estimate (a 44 MB copy over a 900 GB/s port against a token's expert GEMMs at
//! 1 PFLOP/s: 556 tokens), which probes the threshold found once more preferring cheap
//! transfers. `eplb-oracle` and `none` are the baselines.
//!
//! `scale/*` is one rank's work per layer as the group grows to EP576 (see [`scaling`]).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ultraep_plan::reference::{ReferenceLoad, ReferenceScenario};
use ultraep_plan::{
    Balancer, Eplb, EplbMode, ExpertLayout, GatheredLoads, InstanceCost, LoadMatrix, NoBalance,
    Plan, PlanConfig, Planner, RankDomains, RankSplit, SplitMode, TransferEstimate,
};

fn scenarios() -> Vec<(f64, ReferenceScenario, ReferenceLoad)> {
    [1.5, 2.0, 3.0]
        .into_iter()
        .map(|target| {
            let scenario = ReferenceScenario::published(target);
            let load = scenario.generate();
            (target, scenario, load)
        })
        .collect()
}

fn planner(scenario: &ReferenceScenario, split: SplitMode) -> Planner {
    planner_with(scenario, split, InstanceCost::TOKENS)
}

fn planner_with(scenario: &ReferenceScenario, split: SplitMode, cost: InstanceCost) -> Planner {
    let config = PlanConfig {
        split,
        cost,
        ..PlanConfig::default()
    };
    Planner::new(
        scenario.layout().expect("valid layout"),
        scenario.domains().expect("valid domains"),
        scenario.slots_per_rank,
        config,
    )
    .expect("valid planner")
}

fn bench_balancer(
    c: &mut Criterion,
    name: &str,
    target: f64,
    balancer: &mut dyn Balancer,
    load: &ReferenceLoad,
) {
    let mut plan = Plan::default();
    balancer.plan_into(load.matrix(), &mut plan).expect("plans");
    c.bench_function(&format!("{name}/imbalance-{target:.1}"), |b| {
        b.iter(|| {
            balancer
                .plan_into(black_box(load.matrix()), &mut plan)
                .expect("plans");
            black_box(plan.metrics().max_rank_load)
        })
    });
}

fn reference_scenario(c: &mut Criterion) {
    for (target, scenario, load) in scenarios() {
        let mut full = planner(&scenario, SplitMode::LocalityAware);
        bench_balancer(c, "ultraep/full", target, &mut full, &load);
        let mut transfer_aware = Planner::new(
            scenario.layout().expect("valid layout"),
            scenario.domains().expect("valid domains"),
            scenario.slots_per_rank,
            PlanConfig {
                transfer: Some(
                    TransferEstimate::from_times(48_945_494, 88_080).expect("valid times"),
                ),
                ..PlanConfig::default()
            },
        )
        .expect("valid planner");
        bench_balancer(
            c,
            "ultraep/transfer-aware",
            target,
            &mut transfer_aware,
            &load,
        );
        let mut contiguous = planner(&scenario, SplitMode::Contiguous);
        bench_balancer(
            c,
            "ultraep/contiguous-split",
            target,
            &mut contiguous,
            &load,
        );
        let mut no_split = planner(&scenario, SplitMode::None);
        bench_balancer(c, "ultraep/no-split", target, &mut no_split, &load);
        let decode = InstanceCost::from_rates(
            44_040_192,
            4_800_000_000_000,
            88_080_384,
            1_000_000_000_000_000,
        )
        .expect("valid rates");
        let mut cost_aware = planner_with(&scenario, SplitMode::LocalityAware, decode);
        bench_balancer(c, "ultraep/cost-aware", target, &mut cost_aware, &load);
        let mut cost_aware = planner_with(&scenario, SplitMode::None, decode);
        bench_balancer(
            c,
            "ultraep/cost-aware-no-split",
            target,
            &mut cost_aware,
            &load,
        );
        // What one rank needs: the plan without the split, then its own row and columns. The
        // last rank has the longest prefix to add up, so it is the slowest.
        let mut plan = Plan::default();
        let mut mine = RankSplit::default();
        let last = load.matrix().ranks() as u32 - 1;
        c.bench_function(&format!("ultraep/rank-split/imbalance-{target:.1}"), |b| {
            b.iter(|| {
                no_split
                    .plan_into(black_box(load.matrix()), &mut plan)
                    .expect("plannable");
                mine.compute(&plan, load.matrix(), last)
                    .expect("rank in range");
                black_box(mine.row().len() + mine.columns().len())
            })
        });
        c.bench_function(
            &format!("ultraep/rank-split-alone/imbalance-{target:.1}"),
            |b| {
                b.iter(|| {
                    mine.compute(&plan, black_box(load.matrix()), last)
                        .expect("rank in range");
                    black_box(mine.row().len() + mine.columns().len())
                })
            },
        );
        let layout = scenario.layout().expect("valid layout");
        let domains = scenario.domains().expect("valid domains");
        let mut eplb = Eplb::new(
            layout.clone(),
            domains.clone(),
            scenario.slots_per_rank,
            EplbMode::Oracle,
        )
        .expect("valid eplb");
        bench_balancer(c, "eplb-oracle", target, &mut eplb, &load);
        let mut none = NoBalance::new(layout, domains).expect("valid layout");
        bench_balancer(c, "none", target, &mut none, &load);
    }
}

/// Skewed loads for `ranks` ranks and `experts` experts (top-8, 8192 tokens per rank): expert
/// `e`'s share falls as `1 / (1 + e mod 97)`, with a deterministic jitter per cell.
fn skewed_loads(ranks: usize, experts: usize) -> Vec<u32> {
    let weights: Vec<u64> = (0..experts)
        .map(|e| 1_000_000 / (1 + (e % 97) as u64))
        .collect();
    let total: u64 = weights.iter().sum();
    let pairs = 8 * 8192u64;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut loads = Vec::with_capacity(ranks * experts);
    for _ in 0..ranks {
        for &weight in &weights {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let base = pairs * weight / total;
            loads.push((base + state % (base / 4 + 1)) as u32);
        }
    }
    loads
}

/// What one rank computes per layer as the group grows (EP64 with 256 experts in one domain,
/// EP256 with 1,024 in four domains of 64, EP576 with 2,304 in eight NVL72 racks of 72), three
/// ways besides `full-plan` (the whole plan with every source's split, as every rank computes it
/// today): `whole-matrix`, the plan from the gathered matrix and the rank's own split;
/// `totals-and-gathered`, every domain's plan from the experts' totals and the split from the
/// cells the rank gathered ([`GatheredLoads`], built outside the timing: a deployment receives
/// them from its collectives); `domain-plan-and-gathered`, the rank's own domain planned from
/// the totals, the plan assembled with the other domains' replicas (gathered, outside the
/// timing), and the split from the gathered cells. The slowest rank (the last) is timed.
fn scaling(c: &mut Criterion) {
    for (ranks, experts, domain_size) in [(64u32, 256u32, 64u32), (256, 1024, 64), (576, 2304, 72)]
    {
        let loads = skewed_loads(ranks as usize, experts as usize);
        let matrix = LoadMatrix::new(&loads, ranks as usize, experts as usize).expect("shape");
        let totals: Vec<u32> = (0..experts as usize)
            .map(|e| {
                (0..ranks as usize)
                    .map(|r| loads[r * experts as usize + e])
                    .sum()
            })
            .collect();
        let mut planner = Planner::new(
            ExpertLayout::contiguous(ranks, experts / ranks).expect("layout"),
            RankDomains::uniform(ranks, domain_size).expect("domains"),
            2,
            PlanConfig {
                split: SplitMode::None,
                ..PlanConfig::default()
            },
        )
        .expect("planner");
        let last = ranks - 1;
        let mut plan = Plan::default();
        let mut mine = RankSplit::default();
        // The whole plan with the locality-aware split of every source: what every rank
        // computes today, and what the 51 us / 0.73 ms / 5.0 ms measure.
        let mut full = Planner::new(
            ExpertLayout::contiguous(ranks, experts / ranks).expect("layout"),
            RankDomains::uniform(ranks, domain_size).expect("domains"),
            2,
            PlanConfig::default(),
        )
        .expect("planner");
        c.bench_function(
            &format!("scale/full-plan/ep{ranks}-{experts}-experts"),
            |b| {
                b.iter(|| {
                    full.plan_into(black_box(matrix), &mut plan).expect("plans");
                    black_box(plan.metrics().max_rank_load)
                })
            },
        );
        planner.plan_totals_into(&totals, &mut plan).expect("plans");
        let gathered = GatheredLoads::gather(&plan, matrix, last).expect("gathers");
        let shape = format!("ep{ranks}-{experts}-experts");
        c.bench_function(&format!("scale/whole-matrix/{shape}"), |b| {
            b.iter(|| {
                planner
                    .plan_into(black_box(matrix), &mut plan)
                    .expect("plans");
                mine.compute(&plan, matrix, last).expect("splits");
                black_box(mine.row().len())
            })
        });
        c.bench_function(&format!("scale/totals-and-gathered/{shape}"), |b| {
            b.iter(|| {
                planner
                    .plan_totals_into(black_box(&totals), &mut plan)
                    .expect("plans");
                mine.compute_gathered(&plan, &gathered).expect("splits");
                black_box(mine.row().len())
            })
        });
        // Each domain plans for itself and the domains exchange replicas and thresholds: the
        // last rank plans its own domain, then assembles the plan from what it gathered.
        let own = ranks / domain_size - 1;
        let (mut replicas, mut thresholds, mut mine_replicas) =
            (Vec::new(), Vec::new(), Vec::new());
        for domain in 0..ranks / domain_size {
            thresholds.push(
                planner
                    .plan_domain_into(domain, &totals, &mut mine_replicas)
                    .expect("plans"),
            );
            replicas.extend_from_slice(&mine_replicas);
        }
        c.bench_function(&format!("scale/domain-plan-and-gathered/{shape}"), |b| {
            b.iter(|| {
                planner
                    .plan_domain_into(own, black_box(&totals), &mut mine_replicas)
                    .expect("plans");
                planner
                    .assemble_into(&totals, black_box(&replicas), &thresholds, &mut plan)
                    .expect("assembles");
                mine.compute_gathered(&plan, &gathered).expect("splits");
                black_box(mine.row().len())
            })
        });
        let replica_bytes = 12 * replicas.len() as u64 + 8 * thresholds.len() as u64;
        c.bench_function(&format!("scale/parts/domain-plan/{shape}"), |b| {
            b.iter(|| {
                planner
                    .plan_domain_into(own, black_box(&totals), &mut mine_replicas)
                    .expect("plans")
            })
        });
        c.bench_function(&format!("scale/parts/assemble/{shape}"), |b| {
            b.iter(|| {
                planner
                    .assemble_into(&totals, black_box(&replicas), &thresholds, &mut plan)
                    .expect("assembles");
            })
        });
        eprintln!(
            "{shape}: rank {last} receives {} bytes per layer (totals {} + cells {} + every domain's replicas and thresholds {}), against {} for the whole matrix",
            4 * u64::from(experts) + gathered.bytes_received() + replica_bytes,
            4 * u64::from(experts),
            gathered.bytes_received(),
            replica_bytes,
            4 * u64::from(ranks) * u64::from(experts)
        );
    }
}

criterion_group!(benches, reference_scenario, scaling);
criterion_main!(benches);
