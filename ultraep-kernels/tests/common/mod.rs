//! Inputs shared by the CPU-reference tests and the GPU tests: small skewed plans and router ids.

use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, Plan, PlanConfig, Planner, RankDomains};
use ultraep_xfer::Region;

/// Regions of every rank in the flat gradient memory of the reduction tests: its 4 master states,
/// then its 2 slots, each `floats` FP32 values.
pub const REGIONS_PER_RANK: usize = 6;

/// The byte offset of `region` of `rank` in that memory.
pub fn region_address(rank: u32, region: Region, floats: usize) -> u64 {
    let index = match region {
        Region::Master { index } => index as usize,
        Region::Slot { slot } => 4 + slot as usize,
    };
    ((rank as usize * REGIONS_PER_RANK * floats + index * floats) * 4) as u64
}

/// The plan of 8 ranks x 4 experts (2 slots, no minimum replica quota) for `loads` (8 x 32).
pub fn plan_of(loads: &[u32]) -> Plan {
    let config = PlanConfig {
        min_replica_tokens: 1,
        ..PlanConfig::default()
    };
    let mut planner = Planner::new(
        ExpertLayout::contiguous(8, 4).unwrap(),
        RankDomains::single(8).unwrap(),
        2,
        config,
    )
    .unwrap();
    planner
        .plan(LoadMatrix::new(loads, 8, 32).unwrap())
        .unwrap()
}

/// Random loads of 8 ranks x 32 experts with experts 0 and 9 hot.
pub fn skewed_loads(seed: u64) -> Vec<u32> {
    let mut state = seed | 1;
    let mut loads: Vec<u32> = (0..8 * 32)
        .map(|_| (next(&mut state) % 300) as u32)
        .collect();
    for source in 0..8 {
        loads[source * 32] += 4000;
        loads[source * 32 + 9] += 2500;
    }
    loads
}

/// A rank's router ids: every expert repeated by its load in `row`, shuffled by `seed`.
pub fn shuffled_ids(row: &[u32], seed: u64) -> Vec<u32> {
    let mut ids: Vec<u32> = row
        .iter()
        .enumerate()
        .flat_map(|(e, &n)| std::iter::repeat_n(e as u32, n as usize))
        .collect();
    let mut state = seed | 1;
    for i in (1..ids.len()).rev() {
        ids.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    ids
}

/// A xorshift step.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
