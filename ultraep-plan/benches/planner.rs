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
//! 104 tokens at 1 PFLOP/s), on the same shapes. `eplb-oracle` and `none` are the baselines.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ultraep_plan::reference::{ReferenceLoad, ReferenceScenario};
use ultraep_plan::{
    Balancer, Eplb, EplbMode, InstanceCost, NoBalance, Plan, PlanConfig, Planner, RankSplit,
    SplitMode,
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

criterion_group!(benches, reference_scenario);
criterion_main!(benches);
