//! A reused planner allocates nothing once warm: counted with an allocator that counts the
//! allocations of the thread that asks, so tests running alongside do not disturb the count.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ultraep_plan::{Balancer, NoBalance, Plan};

use crate::reference::{planner, scenarios};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: during thread teardown the counter may be gone; such allocations are not ours.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the contract.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_during(work: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    work();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    // The check below would pass vacuously if the allocator were not counting.
    let counted = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(counted, 1);
}

#[test]
fn a_warm_planner_does_not_allocate() {
    let scenario = &scenarios()[0].2;
    let mut ultraep = planner(scenario);
    let mut none = NoBalance::new(scenario.layout().unwrap(), scenario.domains().unwrap()).unwrap();
    let mut plan = Plan::default();
    // Warm up on every load the loop will see.
    for (_, _, _, load) in scenarios() {
        ultraep.plan_into(load.matrix(), &mut plan).unwrap();
        none.plan_into(load.matrix(), &mut plan).unwrap();
    }
    let counted = allocations_during(|| {
        for _ in 0..20 {
            for (_, _, _, load) in scenarios() {
                ultraep.plan_into(load.matrix(), &mut plan).unwrap();
                none.plan_into(load.matrix(), &mut plan).unwrap();
            }
        }
    });
    assert_eq!(counted, 0, "allocations in 120 warm plans");
}
