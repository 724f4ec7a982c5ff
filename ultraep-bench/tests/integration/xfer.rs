//! `ultraep xfer`: relays against direct fan-out on 64 GPUs with DeepSeek-V3 experts.

use ultraep_bench::xfer_command::{XferArgs, rows};

#[test]
fn relays_reach_ninety_percent_where_direct_fan_out_is_at_most_half() {
    let args = XferArgs {
        replicas: vec![1, 4, 8, 16, 32],
        no_reference: false,
        chunk_relays: false,
    };
    let rows = rows(&args).unwrap();
    assert_eq!(rows.len(), 8);
    let mut compared = 0;
    for row in &rows {
        let (direct, chosen) = (row.direct.efficiency(), row.chosen.efficiency());
        assert!(
            row.chosen.makespan_ps <= row.direct.makespan_ps,
            "{}",
            row.case
        );
        assert!(chosen <= 1.0 && direct <= 1.0, "{}", row.case);
        if direct <= 0.5 {
            compared += 1;
            assert!(
                chosen >= 0.9,
                "{}: relays {chosen}, direct {direct}",
                row.case
            );
        }
    }
    // Every row with 4 or more replicas (4 single-expert rows and the 3 EP64 layers).
    assert_eq!(compared, 7);
}

#[test]
fn chunk_relays_are_slower_but_still_far_ahead_of_direct() {
    let args = XferArgs {
        replicas: vec![8, 32],
        no_reference: true,
        chunk_relays: true,
    };
    for row in rows(&args).unwrap() {
        assert!(
            row.chosen.efficiency() >= 5.0 * row.direct.efficiency(),
            "{}",
            row.case
        );
    }
}
