//! `ultraep xfer`: relays against direct fan-out on 64 GPUs with DeepSeek-V3 experts.

use ultraep_bench::xfer_command::{XferArgs, rows};

#[test]
fn relays_beat_direct_fan_out() {
    let rows = rows(&XferArgs {
        replicas: vec![1, 4, 8, 16, 32],
        no_reference: false,
    })
    .unwrap();
    assert_eq!(rows.len(), 8);
    for row in &rows {
        assert!(
            row.chosen.makespan_ps <= row.direct.makespan_ps,
            "{}",
            row.case
        );
        assert!(row.chosen.efficiency() <= 1.0 && row.direct.efficiency() <= 1.0);
        if row.replicas >= 4 {
            // Direct fan-out is bound by the master sending every copy.
            assert!(
                row.direct.efficiency() <= 0.5,
                "{}: direct {}",
                row.case,
                row.direct.efficiency()
            );
            assert!(
                row.chosen.efficiency() >= 0.75,
                "{}: chosen {}",
                row.case,
                row.chosen.efficiency()
            );
        }
    }
    // Where the published comparison is made (the planner's EP64 layers) and for one expert with
    // up to 8 replicas, relays reach 90% of the bound.
    for row in rows
        .iter()
        .filter(|r| r.case.starts_with("EP64") || (2..=8).contains(&r.replicas))
    {
        assert!(
            row.chosen.efficiency() >= 0.9,
            "{}: {}",
            row.case,
            row.chosen.efficiency()
        );
    }
}
