//! `Engine::step` on the CPU backend for the published EP64 shape (64 ranks of one NVL72 domain,
//! 256 experts, 4 + 2 slots per rank, top-8, 8192 tokens per rank), next to the planner alone on
//! the same loads: what the engine adds on top of planning.
//!
//! - `planner/imbalance-X`: `Planner::plan_into` alone.
//! - `engine/in-place/imbalance-X`: a step whose replicas are already in their slots (the same
//!   load again): planning plus slot choice and bookkeeping, no bytes moved.
//! - `engine/in-place-no-preference/imbalance-2.0`: the same without the planner's preference for
//!   replicas already in place (its extra probe and the residency it reads).
//! - `engine/reroute/one-rank`: `Engine::reroute` of one rank's 65 536 top-8 ids (8192 tokens)
//!   after a step at imbalance 2.0: the CPU reference of the reroute kernel (the published GPU
//!   reroute takes 36-39 us).
//! - `engine/moving/rotation`: every step a layer sees another load, so replicas move: planning,
//!   slot choice, schedule, task list, the copies (48 KiB experts, 4 worker threads) and their
//!   checksums; the time per step.
//! - `rank/program/rotation-of-9-steps`: what one rank of a process-per-GPU group computes per
//!   step, on one core: a host-driven engine of rank 63 planning without a split, choosing slots,
//!   building the schedule, the tile tasks and its `TransferProgram`. Nine steps whose replicas
//!   move; divide by nine. `rank/split-and-reroute/...` adds the rank's own split (its
//!   `RankSplit` row) and the reroute of its 65 536 ids.
//!
//! - `engine/layout-round/32-masters`: one round of a layout change, 32 masters (48 KiB each)
//!   copied into staging slots on 4 worker threads and verified.
//!
//! Before measuring, it counts heap allocations of every thread over warm steps of both kinds
//! and fails if there is any.

#[path = "../../test-support/counting_allocator.rs"]
mod counting_allocator;
#[path = "../tests/integration/ep64.rs"]
mod ep64;

use std::hint::black_box;

use counting_allocator::{CountingAllocator, allocations_everywhere};
use criterion::{Criterion, criterion_group, criterion_main};
use ultraep_plan::reference::ReferenceScenario;
use ultraep_plan::{Balancer, Plan, PlanConfig, Planner};
use ultraep_runtime::{Engine, StepId};

use ep64::{LAYERS, ep64_engine, ep64_engine_with, ep64_loads};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const TARGETS: [f64; 3] = [1.5, 2.0, 3.0];

/// Every layer sees every load once: 9 steps that move replicas.
fn rotation(engine: &mut Engine, loads: &[ultraep_plan::reference::ReferenceLoad]) -> u32 {
    let mut copies = 0;
    for (index, load) in loads.iter().enumerate() {
        for layer in 0..LAYERS {
            let step = StepId::new(index as u32, layer);
            copies += engine.step(step, load.matrix()).expect("steps").copies;
        }
    }
    copies
}

fn check_no_allocations(engine: &mut Engine, loads: &[ultraep_plan::reference::ReferenceLoad]) {
    for _ in 0..2 {
        rotation(engine, loads);
    }
    let mut copies = 0;
    let moving = allocations_everywhere(|| {
        for _ in 0..3 {
            copies += rotation(engine, loads);
        }
    });
    let in_place = allocations_everywhere(|| {
        for _ in 0..10 {
            engine
                .step(StepId::new(0, 0), loads[0].matrix())
                .expect("steps");
        }
    });
    println!(
        "heap allocations, every thread: {moving} in 27 warm steps moving {copies} replicas, \
         {in_place} in 10 warm in-place steps"
    );
    assert_eq!((moving, in_place), (0, 0), "a warm step allocated");
}

fn step(c: &mut Criterion) {
    let loads = ep64_loads();
    let mut engine = ep64_engine(4);
    check_no_allocations(&mut engine, &loads);

    let scenario = ReferenceScenario::published(2.0);
    let mut planner = Planner::new(
        scenario.layout().expect("a valid layout"),
        scenario.domains().expect("valid domains"),
        scenario.slots_per_rank,
        PlanConfig::default(),
    )
    .expect("a valid planner");
    let mut plan = Plan::default();
    for (target, load) in TARGETS.iter().zip(&loads) {
        planner.plan_into(load.matrix(), &mut plan).expect("plans");
        c.bench_function(&format!("planner/imbalance-{target:.1}"), |b| {
            b.iter(|| {
                planner
                    .plan_into(black_box(load.matrix()), &mut plan)
                    .expect("plans");
                black_box(plan.metrics().max_rank_load)
            })
        });
        let id = StepId::new(0, 0);
        engine.step(id, load.matrix()).expect("steps");
        c.bench_function(&format!("engine/in-place/imbalance-{target:.1}"), |b| {
            b.iter(|| {
                let report = engine.step(id, black_box(load.matrix())).expect("steps");
                black_box(report.copies_skipped)
            })
        });
    }
    let mut plain = ep64_engine_with(4, false);
    let id = StepId::new(0, 0);
    plain.step(id, loads[1].matrix()).expect("steps");
    c.bench_function("engine/in-place-no-preference/imbalance-2.0", |b| {
        b.iter(|| {
            let report = plain.step(id, black_box(loads[1].matrix())).expect("steps");
            black_box(report.copies_skipped)
        })
    });
    drop(plain);
    // Rank 0's ids: every expert as often as the load says, in expert order.
    let row = loads[1].matrix().row(0);
    let ids: Vec<u32> = (0..row.len() as u32)
        .flat_map(|expert| std::iter::repeat_n(expert, row[expert as usize] as usize))
        .collect();
    engine.step(id, loads[1].matrix()).expect("steps");
    let mut routed = Vec::new();
    c.bench_function("engine/reroute/one-rank", |b| {
        b.iter(|| {
            engine
                .reroute(id, 0, black_box(&ids), &mut routed)
                .expect("reroutes");
            black_box(routed.len())
        })
    });
    c.bench_function("engine/moving/rotation-of-9-steps", |b| {
        b.iter(|| black_box(rotation(&mut engine, &loads)))
    });
    drop(engine);

    layout_round(c);

    let mut config = ep64::ep64_config(1, true);
    config.plan.split = ultraep_plan::SplitMode::None;
    let mut rank = Engine::host_driven(config, 63).expect("a valid engine");
    let own: Vec<Vec<u32>> = loads
        .iter()
        .map(|load| {
            let row = load.matrix().row(63);
            (0..row.len() as u32)
                .flat_map(|expert| std::iter::repeat_n(expert, row[expert as usize] as usize))
                .collect()
        })
        .collect();
    let mut rank_rotation = |reroute: bool| -> usize {
        let mut messages = 0;
        for (index, load) in loads.iter().enumerate() {
            for layer in 0..LAYERS {
                let step = StepId::new(index as u32, layer);
                rank.step(step, load.matrix()).expect("steps");
                messages += rank.transfer_program().sends(63..64).count();
                if reroute {
                    rank.reroute(step, 63, &own[index], &mut routed)
                        .expect("reroutes");
                }
            }
        }
        messages
    };
    for _ in 0..2 {
        rank_rotation(true);
    }
    let allocations = allocations_everywhere(|| {
        rank_rotation(true);
    });
    println!("heap allocations of a warm rank's 9 steps and reroutes (host-driven): {allocations}");
    assert_eq!(allocations, 0, "a warm rank step allocated");
    c.bench_function("rank/program/rotation-of-9-steps", |b| {
        b.iter(|| black_box(rank_rotation(false)))
    });
    c.bench_function("rank/split-and-reroute/rotation-of-9-steps", |b| {
        b.iter(|| black_box(rank_rotation(true)))
    });
}

/// A round of a layout change: 32 masters of one layer (the first expert of each of ranks 0-15
/// swapped with the first of ranks 32-47) copied into the staging slots of their new ranks by 4
/// worker threads and verified. An optimiser step between rounds (`masters_updated`) makes every
/// staged copy stale, so each round copies all 32 again.
fn layout_round(c: &mut Criterion) {
    let mut config = ep64::ep64_config(4, true);
    config.staging_slots = 1;
    let mut homes = config.layout.homes().to_vec();
    let first_of = |homes: &[u32], rank: u32| {
        homes
            .iter()
            .position(|&home| home == rank)
            .expect("every rank holds experts")
    };
    for rank in 0..16 {
        let (a, b) = (first_of(&homes, rank), first_of(&homes, rank + 32));
        homes.swap(a, b);
    }
    let target = ultraep_plan::ExpertLayout::from_homes(64, homes).expect("a valid layout");
    let state = config.model.expert_state().expect("a valid state").bytes();
    let mut engine = Engine::new(config).expect("a valid engine");
    let moves = engine
        .begin_layout_change(0, target)
        .expect("a change that swaps masters")
        .len() as u64;
    let mut group = c.benchmark_group("engine/layout-round");
    group.throughput(criterion::Throughput::Bytes(moves * state));
    group.bench_function(format!("{moves}-masters"), |b| {
        b.iter(|| {
            engine.masters_updated().expect("no round in flight");
            let progress = engine.advance_layout_change(u64::MAX).expect("copies");
            assert_eq!(u64::from(progress.copied), moves);
            black_box(progress.bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
