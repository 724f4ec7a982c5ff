//! The host plane executing schedules directly (what the engine drives it with): every route
//! shape, a full layer as the chooser schedules it, a failed or incomplete transfer, memory of another size, and the
//! gradient reduction. Every copy is checked byte for byte against its master.

use std::time::Duration;

use ultraep_plan::ExpertLayout;
use ultraep_runtime::{Backend, HostPlane, MemoryShape, PlaneOptions, RuntimeError};
use ultraep_xfer::{
    ExpertState, Region, RelayPieces, Route, SlotState, TileTaskList, TransferConfig,
    TransferSchedule, XferError, region_of,
};

use crate::skewed_layer::layer;

/// Small states, cut into 16 tiles and 4 chunks: this binary's soak test watches the process's
/// resident memory, so the planes here stay a few MiB each.
const STATE_BYTES: u64 = 128 * 1024;
const TILE_BYTES: u32 = 8 * 1024;
const CHUNK_BYTES: u32 = 32 * 1024;

/// The default transfer settings, at this file's tile and chunk sizes.
fn small_pieces() -> TransferConfig {
    TransferConfig {
        tile_bytes: TILE_BYTES,
        chunk_bytes: CHUNK_BYTES,
        ..TransferConfig::default()
    }
}

fn weights(expert: u32) -> Vec<u8> {
    (0..STATE_BYTES)
        .map(|i| (i.wrapping_mul(31) ^ (u64::from(expert) * 131)) as u8)
        .collect()
}

/// Every rank of the group in one plane, 4 workers, each state `state_bytes`.
fn plane(state_bytes: u64, tile_bytes: u32) -> HostPlane {
    let shape = MemoryShape {
        purpose: "weights",
        local: 0..8,
        masters_per_rank: &[4; 8],
        slots_per_rank: 2,
        state_bytes,
        tile_bytes,
        workers: 4,
    };
    let options = PlaneOptions {
        timeout: Duration::from_secs(2),
        workers: 4,
    };
    HostPlane::in_process(&shape, options).unwrap()
}

fn plane_with_weights(layout: &ExpertLayout) -> HostPlane {
    let mut plane = plane(STATE_BYTES, TILE_BYTES);
    for expert in 0..layout.num_experts() {
        plane
            .write_master(layout.home(expert), expert % 4, &weights(expert))
            .unwrap();
    }
    plane
}

/// Every replica of `schedule` is ready in `plane` and holds its expert's weights.
fn every_copy_arrived(plane: &HostPlane, schedule: &TransferSchedule) {
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            assert_eq!(
                plane.slot_state(rank, slot).unwrap(),
                SlotState::Ready {
                    expert: fanout.expert
                }
            );
            assert!(plane.slot(rank, slot).unwrap() == weights(fanout.expert));
        }
    }
}

#[test]
fn every_route_shape_arrives_with_every_checksum_correct() {
    // The same layer with routes drawn by hand: every fan-out with two or more destinations as a
    // tree two relays deep (in tiles, then in chunks), the rest as flat relays and direct fan-out
    // in turn, so that the plane's flags and waits carry every shape a route can take.
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let config = small_pieces();
    for piece in [config.tile_bytes, config.chunk_bytes] {
        let routes = replicas
            .fanouts()
            .iter()
            .enumerate()
            .map(|(index, fanout)| {
                let ranks: Vec<u32> = fanout.destinations().iter().map(|d| d.0).collect();
                match (ranks.len(), index % 2) {
                    (2.., _) => (
                        Route::Relayed {
                            relays: ranks,
                            deep: true,
                        },
                        piece,
                    ),
                    (_, 0) => (
                        Route::Relayed {
                            relays: ranks,
                            deep: false,
                        },
                        piece,
                    ),
                    _ => (Route::Direct, config.chunk_bytes),
                }
            })
            .collect();
        let schedule =
            TransferSchedule::with_routes(&replicas, &state, &topology, config, routes).unwrap();
        assert!(
            schedule
                .fanouts()
                .iter()
                .any(|f| matches!(f.route, Route::Relayed { deep: true, .. })),
            "the layer has a deep tree"
        );
        let mut plane = plane_with_weights(&layout);
        let tasks = TileTaskList::build(&schedule);
        let stored = plane.distribute(&schedule, &tasks).unwrap();
        assert_eq!(stored, tasks.bytes_stored());
        every_copy_arrived(&plane, &schedule);
    }
}

#[test]
fn a_full_layer_arrives_with_every_checksum_correct() {
    let (layout, replicas, topology) = layer();
    assert!(
        replicas.replica_count() >= 8,
        "a skewed layer needs many replicas"
    );
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    // The schedule the chooser makes, as the engine runs it (at these small states it sends
    // directly; every relayed shape is the test above).
    let schedule = TransferSchedule::build(&replicas, &state, &topology, small_pieces()).unwrap();
    let mut plane = plane_with_weights(&layout);
    plane
        .distribute(&schedule, &TileTaskList::build(&schedule))
        .unwrap();
    every_copy_arrived(&plane, &schedule);
}

#[test]
fn a_failed_transfer_leaves_its_slots_not_ready_and_can_be_retried() {
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule = TransferSchedule::build(&replicas, &state, &topology, small_pieces()).unwrap();
    let tasks = TileTaskList::build(&schedule);
    let mut plane = plane_with_weights(&layout);
    plane.inject_failure_at(tasks.tasks().len() / 2);
    let error = plane.distribute(&schedule, &tasks).unwrap_err();
    assert!(
        matches!(
            error,
            RuntimeError::Transfer(XferError::TransferFailed { .. })
        ),
        "{error}"
    );
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            assert_ne!(
                plane.slot_state(rank, slot).unwrap(),
                SlotState::Ready {
                    expert: fanout.expert
                }
            );
            assert!(matches!(
                plane.read_slot(rank, slot),
                Err(RuntimeError::SlotNotReady { .. })
            ));
        }
    }
    // Masters are untouched, and the same distribution succeeds when retried.
    for expert in 0..layout.num_experts() {
        assert!(plane.master(layout.home(expert), expert % 4).unwrap() == weights(expert));
    }
    plane.distribute(&schedule, &tasks).unwrap();
    every_copy_arrived(&plane, &schedule);
}

#[test]
fn a_missing_tile_leaves_its_slot_not_ready() {
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let direct = TransferConfig {
        allow_relays: false,
        ..small_pieces()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, direct).unwrap();
    let all = TileTaskList::build(&schedule);
    let dropped = all.tasks()[3];
    let mut tasks = TileTaskList::default();
    all.share_into(|task| *task != dropped, &mut tasks);
    let mut plane = plane_with_weights(&layout);
    let error = plane.distribute(&schedule, &tasks).unwrap_err();
    assert!(matches!(error, RuntimeError::Timeout { .. }), "{error}");
    let destinations = all.destinations_of(&dropped);
    assert!(!destinations.is_empty());
    for destination in destinations {
        let Region::Slot { slot } = region_of(destination.region) else {
            panic!("a weight distribution stores only into slots")
        };
        let rank = destination.rank;
        assert!(matches!(
            plane.read_slot(rank, slot),
            Err(RuntimeError::SlotNotReady { .. })
        ));
    }
}

#[test]
fn memory_that_does_not_fit_is_refused() {
    let (_, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule = TransferSchedule::build(&replicas, &state, &topology, small_pieces()).unwrap();
    let mut too_small = plane(STATE_BYTES / 2, TILE_BYTES);
    assert!(
        too_small
            .distribute(&schedule, &TileTaskList::build(&schedule))
            .is_err()
    );
}

#[test]
fn gradients_reduce_into_masters_and_free_the_slots() {
    let (_, replicas, topology) = layer();
    let gradient_bytes = 64 * 1024;
    let state = ExpertState::opaque(gradient_bytes).unwrap();
    let config = TransferConfig {
        tile_bytes: 1024,
        chunk_bytes: 4096,
        allow_relays: true,
        relay_pieces: RelayPieces::Chunks,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, config).unwrap();
    let mut plane = plane(gradient_bytes, 1024);
    let floats = (gradient_bytes / 4) as usize;
    let encode = |values: &[f32]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for fanout in schedule.fanouts() {
        plane
            .write_master(
                fanout.master,
                fanout.master_index,
                &encode(&vec![1.0; floats]),
            )
            .unwrap();
        for &(rank, slot) in &fanout.destinations {
            plane
                .write_slot(rank, slot, fanout.expert, &encode(&vec![0.5; floats]))
                .unwrap();
        }
    }
    plane.reduce_gradients(&schedule, 1).unwrap();
    for fanout in schedule.fanouts() {
        let master = plane.master(fanout.master, fanout.master_index).unwrap();
        let expected = 1.0 + 0.5 * fanout.destinations.len() as f32;
        assert!(
            master
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) == expected)
        );
        for &(rank, slot) in &fanout.destinations {
            assert_eq!(plane.slot_state(rank, slot).unwrap(), SlotState::Empty);
        }
    }
    // A second reduction finds no replica gradients and changes nothing.
    assert!(matches!(
        plane.reduce_gradients(&schedule, 2),
        Err(RuntimeError::SlotNotReady { .. })
    ));
}
