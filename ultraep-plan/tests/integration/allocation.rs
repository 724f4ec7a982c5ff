//! A reused planner allocates nothing once warm: counted with an allocator that counts the
//! allocations of the thread that asks, so tests running alongside do not disturb the count.

#[path = "../../../test-support/counting_allocator.rs"]
mod counting_allocator;

use counting_allocator::{CountingAllocator, allocations_on_this_thread as allocations_during};
use ultraep_plan::{Balancer, NoBalance, Plan};

use crate::reference::{planner, scenarios};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

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
