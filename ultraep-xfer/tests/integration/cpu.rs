//! The CPU transport: a full layer's replicas over 8 in-process ranks, failures, and gradients.

use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, PlanConfig, Planner, RankDomains};
use ultraep_topo::Preset;
use ultraep_xfer::{
    CpuTransport, ExpertState, RelayPieces, ReplicaSet, Route, SlotState, TileTaskList,
    TransferConfig, TransferCosts, TransferSchedule, Transport, XferError,
};

const STATE_BYTES: u64 = 1 << 20;

/// A real plan of 8 ranks x 4 experts with 2 slots, under a load skewed towards rank 0.
fn layer() -> (ExpertLayout, ReplicaSet, ultraep_topo::Topology) {
    let topology = Preset::HgxB200.topology(1).unwrap();
    let layout = ExpertLayout::contiguous(8, 4).unwrap();
    let loads: Vec<u32> = (0..8 * 32)
        .map(|i| 20_000 / ((i % 32) as u32 + 1))
        .collect();
    let config = PlanConfig {
        min_replica_tokens: 64,
        ..PlanConfig::default()
    };
    let mut planner =
        Planner::new(layout.clone(), RankDomains::single(8).unwrap(), 2, config).unwrap();
    let plan = planner
        .plan(LoadMatrix::new(&loads, 8, 32).unwrap())
        .unwrap();
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap();
    (layout, replicas, topology)
}

fn weights(expert: u32) -> Vec<u8> {
    (0..STATE_BYTES)
        .map(|i| (i.wrapping_mul(31) ^ (u64::from(expert) * 131)) as u8)
        .collect()
}

fn ranks_with_weights(layout: &ExpertLayout) -> CpuTransport {
    let mut ranks = CpuTransport::new(&[4; 8], 2, STATE_BYTES, 32 * 1024, 4);
    for expert in 0..layout.num_experts() {
        ranks
            .write_master(layout.home(expert), expert % 4, &weights(expert))
            .unwrap();
    }
    ranks
}

#[test]
fn every_route_shape_arrives_with_every_checksum_correct() {
    // The same layer with routes drawn by hand: every fan-out with two or more destinations as a
    // tree two relays deep (in tiles, then in chunks), the rest as flat relays and direct fan-out
    // in turn, so that the executor's flags and waits carry every shape a route can take.
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let config = TransferConfig::default();
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
        let mut ranks = ranks_with_weights(&layout);
        let report = ranks
            .distribute(&schedule, &TileTaskList::build(&schedule))
            .unwrap();
        assert_eq!(report.replicas_ready, replicas.replica_count());
        for fanout in schedule.fanouts() {
            for &(rank, slot) in &fanout.destinations {
                assert_eq!(ranks.read_slot(rank, slot).unwrap(), weights(fanout.expert));
            }
        }
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
    // Under the ideal costs the chooser relays this small layer's hot experts, which is what
    // this test of the relayed data path needs.
    let config = TransferConfig {
        costs: TransferCosts::IDEAL,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, config).unwrap();
    assert!(schedule.relayed_count() > 0, "the layer exercises relays");
    let mut ranks = ranks_with_weights(&layout);
    let report = ranks
        .distribute(&schedule, &TileTaskList::build(&schedule))
        .unwrap();
    assert_eq!(report.replicas_ready, replicas.replica_count());
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            assert_eq!(
                ranks.slot_state(rank, slot).unwrap(),
                SlotState::Ready {
                    expert: fanout.expert
                }
            );
            assert_eq!(ranks.read_slot(rank, slot).unwrap(), weights(fanout.expert));
        }
    }
}

#[test]
fn a_failed_transfer_leaves_its_slots_not_ready_and_can_be_retried() {
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule =
        TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default()).unwrap();
    let tasks = TileTaskList::build(&schedule);
    let mut ranks = ranks_with_weights(&layout);
    ranks.inject_failure_at(tasks.tasks().len() / 2);
    let error = ranks.distribute(&schedule, &tasks).unwrap_err();
    assert!(
        matches!(error, XferError::TransferFailed { slots, .. } if slots == replicas.replica_count()),
        "{error}"
    );
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            assert_eq!(
                ranks.slot_state(rank, slot).unwrap(),
                SlotState::NotReady {
                    expert: fanout.expert
                }
            );
            assert_eq!(
                ranks.read_slot(rank, slot),
                Err(XferError::SlotNotReady { rank, slot })
            );
        }
    }
    // Masters are untouched, and the same distribution succeeds when retried.
    for expert in 0..layout.num_experts() {
        assert_eq!(
            ranks.read_master(layout.home(expert), expert % 4).unwrap(),
            weights(expert)
        );
    }
    ranks.distribute(&schedule, &tasks).unwrap();
}

#[test]
fn a_missing_tile_is_caught_by_the_checksum() {
    let (layout, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let direct = TransferConfig {
        allow_relays: false,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, direct).unwrap();
    let all = TileTaskList::build(&schedule);
    let dropped = all.tasks()[3];
    let mut tasks = TileTaskList::default();
    all.share_into(|task| *task != dropped, &mut tasks);
    let mut ranks = ranks_with_weights(&layout);
    let error = ranks.distribute(&schedule, &tasks).unwrap_err();
    let XferError::ChecksumMismatch { rank, slot, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(
        ranks.read_slot(rank, slot),
        Err(XferError::SlotNotReady { rank, slot })
    );
}

#[test]
fn memory_that_does_not_fit_is_refused() {
    let (_, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule =
        TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default()).unwrap();
    let mut too_small = CpuTransport::new(&[4; 8], 2, STATE_BYTES / 2, 32 * 1024, 2);
    assert!(matches!(
        too_small.distribute(&schedule, &TileTaskList::build(&schedule)),
        Err(XferError::MemoryMismatch { .. })
    ));
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
    let mut ranks = CpuTransport::new(&[4; 8], 2, gradient_bytes, 1024, 2);
    let floats = (gradient_bytes / 4) as usize;
    let encode = |values: &[f32]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for fanout in schedule.fanouts() {
        ranks
            .write_master(
                fanout.master,
                fanout.master_index,
                &encode(&vec![1.0; floats]),
            )
            .unwrap();
        for &(rank, slot) in &fanout.destinations {
            ranks
                .write_slot(rank, slot, fanout.expert, &encode(&vec![0.5; floats]))
                .unwrap();
        }
    }
    ranks.reduce_gradients(&schedule).unwrap();
    for fanout in schedule.fanouts() {
        let master = ranks
            .read_master(fanout.master, fanout.master_index)
            .unwrap();
        let expected = 1.0 + 0.5 * fanout.destinations.len() as f32;
        assert!(
            master
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) == expected)
        );
        for &(rank, slot) in &fanout.destinations {
            assert_eq!(ranks.slot_state(rank, slot).unwrap(), SlotState::Empty);
        }
    }
    // A second reduction finds no replica gradients and changes nothing.
    assert!(matches!(
        ranks.reduce_gradients(&schedule),
        Err(XferError::SlotNotReady { .. })
    ));
}

/// A task list is built only from a schedule, or as a share of one: its runs are always in
/// range, and a task from another list reads as no destinations rather than a panic.
#[test]
fn task_lists_cannot_point_out_of_range() {
    let (_, replicas, topology) = layer();
    let state = ExpertState::opaque(STATE_BYTES).unwrap();
    let schedule =
        TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default()).unwrap();
    let list = TileTaskList::build(&schedule);
    for task in list.tasks() {
        assert_eq!(
            list.destinations_of(task).len(),
            task.destination_count as usize
        );
        if task.wait_flag != ultraep_xfer::NO_FLAG {
            assert!(task.wait_flag < list.flag_count());
        }
    }
    // A share keeps every destination of the tasks it keeps, renumbered into its own runs.
    let mut share = TileTaskList::default();
    list.share_into(
        |task| task.source_rank == list.tasks()[0].source_rank,
        &mut share,
    );
    assert!(!share.tasks().is_empty() && share.tasks().len() <= list.tasks().len());
    let stored: u64 = share.bytes_stored();
    assert!(stored > 0);
    // The last task of the whole list, asked of an empty list.
    let foreign = *list.tasks().last().unwrap();
    assert!(TileTaskList::default().destinations_of(&foreign).is_empty());
}
