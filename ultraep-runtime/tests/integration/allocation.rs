//! A warm engine step allocates nothing: planning, slot choice, schedule, task list, the transfer
//! and its verification, on the published EP64 shape. Counted on this thread, so the CPU backend
//! runs with one worker (the calling thread); the step benchmark counts every thread with four.

#[path = "../../../test-support/counting_allocator.rs"]
mod counting_allocator;

use counting_allocator::{CountingAllocator, allocations_on_this_thread};
use ultraep_runtime::StepId;

use crate::ep64::{LAYERS, ep64_engine, ep64_loads};

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
