//! A warm engine step allocates nothing: planning, slot choice, schedule, task list, the transfer
//! and its verification, on the published EP64 shape; and a training step's backward (restore,
//! replica gradients, reduction). Counted on this thread, so the CPU backend
//! runs with one worker (the calling thread); the step benchmark counts every thread with four.

#[path = "../../../test-support/counting_allocator.rs"]
mod counting_allocator;

use counting_allocator::{CountingAllocator, allocations_on_this_thread};
use ultraep_runtime::{InProcessCollective, RouterOutput, StepId};

use crate::ep64::{LAYERS, ep64_engine, ep64_loads};
use crate::fixture::{GRADIENT, base_config, engine_with, loads, on_threads};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn the_counter_sees_allocations() {
    let counted = allocations_on_this_thread(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(counted, 1);
}

#[test]
fn a_warm_step_does_not_allocate() {
    let mut engine = ep64_engine(1);
    let loads = ep64_loads();
    // Every layer sees every load in turn, so replicas move from step to step.
    let round = |engine: &mut ultraep_runtime::Engine, copies: &mut u32| {
        for (index, load) in loads.iter().enumerate() {
            for layer in 0..LAYERS {
                let step = StepId::new(index as u32, layer);
                let report = engine.step(step, load.matrix()).expect("steps");
                *copies += report.copies;
            }
        }
    };
    let mut warm_copies = 0;
    round(&mut engine, &mut warm_copies);
    round(&mut engine, &mut warm_copies);
    let mut copies = 0;
    let counted = allocations_on_this_thread(|| {
        for _ in 0..3 {
            round(&mut engine, &mut copies);
        }
    });
    assert!(
        copies > 100,
        "the counted steps moved weights ({copies} copies)"
    );
    assert_eq!(counted, 0, "allocations in 27 warm steps");
}

/// Router ids that add up to `row`: every expert's id as often as its count, spread over tokens.
fn ids_of(row: &[u32]) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for (expert, &count) in row.iter().enumerate() {
        ids.extend(std::iter::repeat_n(expert as u32, count as usize));
    }
    ids
}

#[test]
fn a_warm_routed_step_and_its_reroute_do_not_allocate() {
    let mut engine = ep64_engine(1);
    let loads = ep64_loads();
    let ids: Vec<Vec<Vec<u32>>> = loads
        .iter()
        .map(|load| {
            (0..64)
                .map(|rank| ids_of(load.matrix().row(rank)))
                .collect()
        })
        .collect();
    let mut routed = Vec::new();
    // The engine holds every rank: its collective is itself alone.
    let mut alone = InProcessCollective::group(1).remove(0);
    let mut round = |engine: &mut ultraep_runtime::Engine, tokens: &mut usize| {
        for (index, ids) in ids.iter().enumerate() {
            let rows: [&[u32]; 64] = std::array::from_fn(|rank| ids[rank].as_slice());
            for layer in 0..LAYERS {
                let step = StepId::new(index as u32, layer);
                engine
                    .step_gathered(step, &mut alone, RouterOutput::Ids(&rows))
                    .expect("steps");
                for (rank, row) in rows.iter().enumerate() {
                    engine
                        .reroute(step, rank as u32, row, &mut routed)
                        .expect("reroutes");
                    *tokens += routed.len();
                }
            }
        }
    };
    let mut warm = 0;
    round(&mut engine, &mut warm);
    round(&mut engine, &mut warm);
    let mut tokens = 0;
    let counted = allocations_on_this_thread(|| round(&mut engine, &mut tokens));
    assert_eq!(tokens, 3 * 3 * 64 * 8192 * 8, "every id was rerouted");
    assert_eq!(
        counted, 0,
        "allocations in 9 warm routed steps and their 576 reroutes"
    );
}

#[test]
fn a_warm_backward_does_not_allocate() {
    let mut engine = engine_with(ultraep_runtime::EngineConfig {
        workers: 1,
        ..base_config()
    });
    let gradient = vec![0.5f32; (GRADIENT / 4) as usize];
    let hot: Vec<Vec<u32>> = [0, 9, 18].into_iter().map(loads).collect();
    let mut instances = Vec::new();
    let mut round = |engine: &mut ultraep_runtime::Engine, reduced: &mut usize| {
        for (microbatch, loads) in hot.iter().enumerate() {
            let matrix = ultraep_plan::LoadMatrix::new(loads, 8, 32).expect("a load");
            for layer in 0..3 {
                let step = StepId::new(microbatch as u32, layer);
                engine.step(step, matrix).expect("steps");
            }
            for layer in (0..3).rev() {
                let step = StepId::new(microbatch as u32, layer);
                engine.restore(step).expect("restores");
                instances.clear();
                let count = engine.plan(step).map_or(0, |plan| plan.instances().len());
                instances
                    .extend((0..count as u32).filter(|&i| engine.replica_slot(step, i).is_some()));
                for &instance in &instances {
                    engine
                        .write_replica_gradient(step, instance, &gradient)
                        .expect("writes");
                }
                engine.reduce_gradients(step).expect("reduces");
                *reduced += instances.len();
            }
        }
    };
    let mut warm = 0;
    round(&mut engine, &mut warm);
    round(&mut engine, &mut warm);
    let mut reduced = 0;
    let counted = allocations_on_this_thread(|| round(&mut engine, &mut reduced));
    assert!(
        reduced > 20,
        "the counted backward passes reduced {reduced} replicas"
    );
    assert_eq!(
        counted, 0,
        "allocations in 9 warm forward and backward layer steps"
    );
}

/// A warm step planned by domain allocates nothing on any rank's thread either: the totals'
/// all-reduce, the domain's plan, the gathered replicas and cells, the assembly, the rank's split,
/// the slot choice and the copies (one worker: the rank's own thread).
#[test]
fn a_warm_step_by_domain_does_not_allocate() {
    use crate::by_domain::{RANKS, config, ids};
    use ultraep_runtime::{Collective, Engine, PlaneOptions};

    let engines = Engine::group(config(), PlaneOptions::default()).unwrap();
    let members = InProcessCollective::group(RANKS);
    let counted = on_threads(
        engines.into_iter().zip(members),
        |(mut engine, mut member)| {
            let rank = member.rank();
            let rounds: Vec<Vec<u32>> = (0..3).map(|m| ids(rank, m)).collect();
            let round = |engine: &mut Engine, member: &mut InProcessCollective| {
                for (microbatch, mine) in rounds.iter().enumerate() {
                    for layer in 0..2 {
                        let step = StepId::new(microbatch as u32, layer);
                        engine
                            .step_by_domain(step, member, RouterOutput::Ids(&[mine]))
                            .unwrap();
                    }
                }
            };
            round(&mut engine, &mut member);
            round(&mut engine, &mut member);
            allocations_on_this_thread(|| round(&mut engine, &mut member))
        },
    );
    assert!(
        counted.iter().all(|&n| n == 0),
        "allocations per rank: {counted:?}"
    );
}
