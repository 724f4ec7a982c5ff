//! `ultraep xfer`: relays against direct fan-out on 64 GPUs with DeepSeek-V3 experts, under the
//! ideal transfer model (bytes at port speed) and the calibrated one.

use ultraep_cli::xfer_command::{PUBLISHED_EP64_US, XferArgs, rows};

fn args(replicas: Vec<u32>, no_reference: bool, chunk_relays: bool, model: &str) -> XferArgs {
    XferArgs {
        replicas,
        no_reference,
        chunk_relays,
        tile_relays: false,
        model: model.into(),
        per_transfer_ns: None,
        relay_forward_ppm: None,
        json: false,
    }
}

#[test]
fn ideal_relays_reach_ninety_percent_where_direct_fan_out_is_at_most_half() {
    let rows = rows(&args(vec![1, 4, 8, 16, 32], false, false, "ideal")).unwrap();
    // 5 single-expert rows, and 3 EP64 plans each planned with and without a transfer estimate.
    assert_eq!(rows.len(), 11);
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
    // Every row with 4 or more replicas (4 single-expert rows and the 6 EP64 layers).
    assert_eq!(compared, 10);
}

#[test]
fn the_calibrated_model_lands_on_the_published_weight_sync_times() {
    // The published EP64 measurement forwards 256 KiB chunks; the model was fitted with the first,
    // per-expert chooser's schedules, which every row keeps beside the layer chooser's.
    let rows = rows(&args(vec![], false, true, "calibrated")).unwrap();
    let mut relayed = Vec::new();
    for (target, direct, relays) in PUBLISHED_EP64_US {
        let row = rows
            .iter()
            .find(|row| row.case == format!("EP64 plan at {target:.1}"))
            .unwrap();
        let simulated_direct = row.direct.makespan_ps as f64 / 1e6;
        // Direct fan-out within 5% of each published time.
        assert!(
            (simulated_direct / direct - 1.0).abs() <= 0.05,
            "{}: direct {simulated_direct:.1} us against {direct}",
            row.case
        );
        assert!(row.relayed > 0, "{}", row.case);
        assert!(
            row.per_expert.makespan_ps <= row.direct.makespan_ps,
            "{}",
            row.case
        );
        relayed.push((row.per_expert.makespan_ps as f64 / 1e6, relays));
    }
    // Relays: the chooser's decisions move single rows by up to a fifth; their mean is within
    // 5% of the published mean.
    let simulated: f64 = relayed.iter().map(|(s, _)| s).sum::<f64>() / 3.0;
    let published: f64 = relayed.iter().map(|(_, p)| p).sum::<f64>() / 3.0;
    assert!(
        (simulated / published - 1.0).abs() <= 0.05,
        "relays {relayed:?}"
    );
    for (simulated, published) in relayed {
        assert!(
            (simulated / published - 1.0).abs() <= 0.25,
            "{simulated} against {published}"
        );
    }
}

#[test]
fn chunk_relays_are_slower_but_still_far_ahead_of_direct() {
    for row in rows(&args(vec![8, 32], true, true, "ideal")).unwrap() {
        assert!(
            row.chosen.efficiency() >= 5.0 * row.direct.efficiency(),
            "{}",
            row.case
        );
    }
    // Under the calibrated costs relays still pay for many replicas, by less.
    for row in rows(&args(vec![8, 32], true, true, "calibrated")).unwrap() {
        assert!(
            row.chosen.makespan_ps * 2 <= row.direct.makespan_ps,
            "{}",
            row.case
        );
    }
}

#[test]
fn the_default_schedules_beat_the_published_relays_on_every_ep64_plan() {
    // The default mode: the layer chooser, relays by tile or chunk as it weighs them, the
    // calibrated costs.
    let rows = rows(&args(vec![4, 8, 16, 32], false, false, "calibrated")).unwrap();
    let mut ratios = Vec::new();
    for (target, _, published) in PUBLISHED_EP64_US {
        let row = rows
            .iter()
            .find(|row| row.case == format!("EP64 plan at {target:.1}"))
            .unwrap();
        let chosen = row.chosen.makespan_ps as f64 / 1e6;
        assert!(
            chosen <= published,
            "{}: {chosen:.1} us against {published}",
            row.case
        );
        ratios.push(chosen / published);
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    assert!(mean <= 0.9, "chosen / published: {ratios:?}");
    // The single-expert fan-outs are no slower than the first chooser's (tile relays, its
    // default).
    for row in rows.iter().filter(|row| row.case.starts_with("1 expert")) {
        assert!(
            row.chosen.makespan_ps <= row.per_expert.makespan_ps,
            "{}: {} ps against {} ps",
            row.case,
            row.chosen.makespan_ps,
            row.per_expert.makespan_ps
        );
    }
}

#[test]
fn transfer_aware_plans_are_as_balanced_and_move_their_weights_no_slower() {
    let rows = rows(&args(vec![], false, false, "calibrated")).unwrap();
    let mut spread = 0;
    for (target, _, _) in PUBLISHED_EP64_US {
        let case = format!("EP64 plan at {target:.1}");
        let plain = rows.iter().find(|row| row.case == case).unwrap();
        let aware = rows
            .iter()
            .find(|row| row.case == format!("{case}, transfer-aware plan"))
            .unwrap();
        assert!(
            aware.imbalance.unwrap() <= plain.imbalance.unwrap(),
            "{case}: {:?} against {:?}",
            aware.imbalance,
            plain.imbalance
        );
        assert!(
            aware.chosen.makespan_ps <= plain.chosen.makespan_ps,
            "{case}: {} ps against {} ps",
            aware.chosen.makespan_ps,
            plain.chosen.makespan_ps
        );
        assert!(aware.chosen.lower_bound_ps <= plain.chosen.lower_bound_ps);
        // Copies spread over the receiving ports: no rank takes two where the plain plan put two.
        if aware.chosen.lower_bound_ps < plain.chosen.lower_bound_ps {
            spread += 1;
        }
    }
    assert!(spread > 0, "no plan spread its copies");
}
