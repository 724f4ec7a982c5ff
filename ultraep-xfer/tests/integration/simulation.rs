//! The simulator on cases worked by hand.

use ultraep_topo::Preset;
use ultraep_xfer::{
    ExpertState, Fanout, ReplicaSet, Route, TransferConfig, TransferCosts, TransferSchedule,
    simulate,
};

/// The worked cases below count bytes at port speed and nothing else: the ideal model.
fn ideal() -> TransferConfig {
    TransferConfig {
        costs: TransferCosts::IDEAL,
        ..TransferConfig::default()
    }
}

#[test]
fn one_replica_takes_one_transfer_time() {
    // 9 MB at 900 GB/s is 10 us; pieces pipeline, plus one hop of latency (1 us).
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let replicas = ReplicaSet::new(vec![Fanout::new(0, 0, 0, vec![(5, 0)]).unwrap()]).unwrap();
    let state = ExpertState::opaque(9_000_000).unwrap();
    let schedule = TransferSchedule::build(&replicas, &state, &topology, ideal()).unwrap();
    assert_eq!(schedule.fanouts()[0].route, Route::Direct);
    let simulation = simulate(&schedule, &topology).unwrap();
    assert_eq!(simulation.lower_bound_ps, 10_000_000);
    // 35 pieces, each rounded up to a whole picosecond, the last landing 1 us after it is sent.
    assert!(
        (11_000_000..11_000_035).contains(&simulation.makespan_ps),
        "{}",
        simulation.makespan_ps
    );
}

#[test]
fn direct_fan_out_is_bound_by_the_master() {
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let replicas = ReplicaSet::new(vec![
        Fanout::new(0, 0, 0, (1..=8).map(|r| (r, 0)).collect()).unwrap(),
    ])
    .unwrap();
    let state = ExpertState::opaque(9_000_000).unwrap();
    let direct = TransferConfig {
        allow_relays: false,
        ..ideal()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, direct).unwrap();
    let simulation = simulate(&schedule, &topology).unwrap();
    // The master sends 8 copies: 80 us; the bound is one copy's 10 us.
    assert!(simulation.makespan_ps >= 80_000_000);
    assert!(simulation.efficiency() < 0.13);
    let relayed = TransferSchedule::build(&replicas, &state, &topology, ideal()).unwrap();
    assert!(matches!(relayed.fanouts()[0].route, Route::Relayed { .. }));
    // Relays cut 80 us to about 14 us; on a 10 us transfer two 1 us hops are most of what is left.
    let efficiency = simulate(&relayed, &topology).unwrap().efficiency();
    assert!(efficiency > 5.0 * simulation.efficiency(), "{efficiency}");
    assert!(efficiency > 0.65, "{efficiency}");
}
