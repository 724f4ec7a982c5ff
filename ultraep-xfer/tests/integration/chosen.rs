//! The schedules the chooser picks, as a snapshot: for single fan-outs of 1 to 32 destinations
//! and for a layer of several experts that share ports, each expert's route (direct, or its
//! relays), its piece size, and the layer's chunk count and simulated makespan, on the calibrated
//! transfer costs. The flow checker accepts any valid schedule; this shows which one is chosen,
//! so that a change to the cost model or the chooser is seen in review.

use std::fmt::Write as _;

use ultraep_topo::Preset;
use ultraep_xfer::{
    ExpertState, Fanout, RelayPieces, ReplicaSet, Route, RouteChooser, TransferConfig,
    TransferSchedule, simulate,
};

fn describe(replicas: &ReplicaSet, state: &ExpertState, config: TransferConfig) -> String {
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let schedule = TransferSchedule::build(replicas, state, &topology, config).unwrap();
    let mut out = format!(
        "chunks {} of {} bytes (last {}), {} relayed, makespan {} ps\n",
        schedule.chunk_count(),
        schedule.chunk_len(0),
        schedule.chunk_len(schedule.chunk_count() - 1),
        schedule.relayed_count(),
        simulate(&schedule, &topology).unwrap().makespan_ps
    );
    for fanout in schedule.fanouts() {
        let route = match &fanout.route {
            Route::Direct => "direct".to_string(),
            Route::Relayed { relays, deep } => format!(
                "relays {relays:?}{}",
                if *deep { ", two relays deep" } else { "" }
            ),
        };
        let _ = writeln!(
            out,
            "  expert {} from rank {} to {} ranks: {route}, pieces of {} bytes",
            fanout.expert,
            fanout.master,
            fanout.destinations.len(),
            fanout.piece_bytes
        );
    }
    out
}

#[test]
fn single_fan_outs_take_the_routes_the_costs_choose() {
    let mut out = String::new();
    // A 44 MB expert (DeepSeek-V3's, FP8), where relays pay from two destinations, and a 96 KiB
    // state, where a relay's extra hop and per-piece costs outweigh what it saves.
    let large = ExpertState::swiglu_fp8(7168, 2048);
    let small = ExpertState::opaque(96 << 10).unwrap();
    for (destinations, state) in [1u32, 2, 4, 8, 16, 32]
        .into_iter()
        .map(|count| (count, &large))
        .chain([2u32, 4, 8].into_iter().map(|count| (count, &small)))
    {
        let replicas = Fanout::new(0, 0, 0, (1..=destinations).map(|rank| (rank, 0)).collect())
            .and_then(|fanout| ReplicaSet::new(vec![fanout]))
            .unwrap();
        for allow_relays in [false, true] {
            let config = TransferConfig {
                allow_relays,
                ..TransferConfig::default()
            };
            let _ = write!(
                out,
                "x{destinations} of {} bytes, relays {}: {}",
                state.bytes(),
                if allow_relays { "allowed" } else { "off" },
                describe(&replicas, state, config)
            );
        }
    }
    insta::assert_snapshot!(out);
}

/// Three hot experts whose fan-outs overlap, so that their routes compete for ports.
fn overlapping_layer() -> ReplicaSet {
    ReplicaSet::new(vec![
        Fanout::new(0, 0, 0, (1..=12).map(|rank| (rank, 0)).collect()).unwrap(),
        Fanout::new(1, 1, 0, (8..=16).map(|rank| (rank, 1)).collect()).unwrap(),
        Fanout::new(2, 2, 0, vec![(3, 1), (4, 1), (20, 0)]).unwrap(),
    ])
    .unwrap()
}

#[test]
fn a_layer_of_experts_sharing_ports_is_chosen_against_the_whole_layer() {
    // The layer chooser weighs every expert against the egress and ingress the others put on
    // each port, and chooses every expert again once all have chosen.
    let state = ExpertState::swiglu_fp8(7168, 2048);
    insta::assert_snapshot!(describe(
        &overlapping_layer(),
        &state,
        TransferConfig::default()
    ));
}

#[test]
fn the_per_expert_baseline_chooses_expert_by_expert() {
    // Later experts see the egress the earlier ones loaded, so relays land on destinations that
    // send least so far; nobody chooses again.
    let state = ExpertState::swiglu_fp8(7168, 2048);
    let config = TransferConfig {
        chooser: RouteChooser::PerExpert,
        relay_pieces: RelayPieces::Tiles,
        ..TransferConfig::default()
    };
    insta::assert_snapshot!(describe(&overlapping_layer(), &state, config));
}

#[test]
fn a_deep_tree_splits_each_pieces_forwards_between_its_two_relays() {
    // Seven destinations, relays 1 and 2, two deep: the owner of a piece sends it to the second
    // relay and to half of the five others, the second relay to the other half, so each sends
    // three copies of the piece (where a flat tree has the owner send all six).
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let replicas = Fanout::new(0, 0, 0, (1..=7).map(|rank| (rank, 0)).collect())
        .and_then(|fanout| ReplicaSet::new(vec![fanout]))
        .unwrap();
    let state = ExpertState::opaque(1 << 20).unwrap();
    let config = TransferConfig::default();
    let deep = Route::Relayed {
        relays: vec![1, 2],
        deep: true,
    };
    let schedule = TransferSchedule::with_routes(
        &replicas,
        &state,
        &topology,
        config,
        vec![(deep, config.chunk_bytes)],
    )
    .unwrap();
    let fanout = &schedule.fanouts()[0];
    for (step, piece) in schedule.pieces(fanout).iter().enumerate() {
        let (owner, second) = (piece.owner.unwrap(), piece.second.unwrap());
        assert_ne!(owner, second);
        let mut hops = Vec::new();
        schedule.hops_into(fanout, step, piece, &mut hops);
        let sent_by = |rank: u32| hops.iter().filter(|hop| hop.from == rank).count();
        assert_eq!(sent_by(0), 1, "piece {step}: the master sends once");
        assert_eq!(
            (sent_by(owner), sent_by(second)),
            (3, 3),
            "piece {step}: {hops:?}"
        );
        // The second relay forwards only after the owner's hop brought the piece to it.
        let feed = hops.iter().position(|hop| hop.to == second).unwrap() as u32;
        assert!(
            hops.iter()
                .filter(|hop| hop.from == second)
                .all(|hop| hop.forwarded && hop.feed == Some(feed))
        );
    }
}
