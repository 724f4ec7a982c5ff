//! The planner's preference for replicas whose weights are already in a slot: fewer copies, and
//! never a busier rank.

use ultraep_runtime::StepId;

use crate::ep64::{LAYERS, ep64_engine_with, ep64_loads};

#[test]
fn preferring_resident_replicas_saves_copies_and_costs_no_balance() {
    let loads = ep64_loads();
    let mut totals = Vec::new();
    for prefer in [false, true] {
        let mut engine = ep64_engine_with(1, prefer);
        let (mut copies, mut skipped, mut peaks) = (0, 0, Vec::new());
        // Every layer sees every load in turn, three times over.
        for round in 0..3u32 {
            for (index, load) in loads.iter().enumerate() {
                for layer in 0..LAYERS {
                    let step = StepId::new(round * 3 + index as u32, layer);
                    let report = engine.step(step, load.matrix()).unwrap();
                    copies += report.copies;
                    skipped += report.copies_skipped;
                    peaks.push(report.metrics.max_rank_load);
                }
            }
        }
        totals.push((copies, skipped, peaks));
    }
    let (plain, preferring) = (&totals[0], &totals[1]);
    println!(
        "copies {} -> {}, reused in place {} -> {}",
        plain.0, preferring.0, plain.1, preferring.1
    );
    assert!(
        preferring.0 < plain.0,
        "fewer copies: {} vs {}",
        preferring.0,
        plain.0
    );
    for (with, without) in preferring.2.iter().zip(&plain.2) {
        assert!(with <= without, "a busier rank: {with} > {without}");
    }
}
