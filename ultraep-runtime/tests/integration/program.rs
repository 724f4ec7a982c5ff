//! The transfer program a host-driven caller executes: every replica receives every byte of its
//! expert exactly once, a relay forwards only what it has received, and the ranks' sends and
//! receives split the program between them.

use proptest::prelude::*;
use ultraep_runtime::{Region, TransferConfig, TransferProgram};
use ultraep_topo::Preset;
use ultraep_xfer::{ExpertState, Fanout, RelayPieces, ReplicaSet, Route, TransferSchedule};

/// Checks every invariant of `program` built from `schedule`; returns the relayed messages.
fn check(program: &TransferProgram, schedule: &TransferSchedule, ranks: u32) -> usize {
    let state = schedule.state_bytes();
    let transfers = program.transfers();
    for (index, message) in transfers.iter().enumerate() {
        assert_eq!(message.tag as usize, index, "tags are positions");
        match message.after {
            None => assert!(matches!(message.from, Region::Master { .. })),
            Some(first) => {
                let first = transfers[first as usize];
                assert!(
                    first.tag < message.tag,
                    "a forward comes after what it forwards"
                );
                assert_eq!(first.to_rank, message.from_rank);
                assert_eq!(
                    Region::Slot {
                        slot: first.to_slot
                    },
                    message.from
                );
                assert_eq!(
                    (first.expert, first.offset, first.bytes),
                    (message.expert, message.offset, message.bytes)
                );
            }
        }
    }
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            let mut pieces: Vec<(u64, u64)> = transfers
                .iter()
                .filter(|t| t.expert == fanout.expert && t.to_rank == rank && t.to_slot == slot)
                .map(|t| (t.offset, t.bytes))
                .collect();
            pieces.sort_unstable();
            let mut covered = 0;
            for (offset, bytes) in pieces {
                assert_eq!(offset, covered, "every byte once, in order, no gap");
                covered += bytes;
            }
            assert_eq!(
                covered, state,
                "the whole state reaches rank {rank} slot {slot}"
            );
        }
    }
    let sent: usize = (0..ranks).map(|r| program.sends(r..r + 1).count()).sum();
    let received: usize = (0..ranks).map(|r| program.receives(r..r + 1).count()).sum();
    assert_eq!((sent, received), (transfers.len(), transfers.len()));
    transfers.iter().filter(|t| t.after.is_some()).count()
}

/// Experts of 64 ranks of one NVL72 domain (where relays pay) fanned out to random ranks.
fn replica_sets() -> impl Strategy<Value = (Vec<(u32, Vec<u32>)>, u64, bool)> {
    (
        prop::collection::vec(
            (0..64u32, prop::collection::btree_set(0..64u32, 1..20)),
            1..6,
        ),
        // 64 KiB to 4 MiB in 16-byte steps: large enough that relays are chosen.
        (1u64 << 12..1 << 18).prop_map(|units| units * 16),
        any::<bool>(),
    )
        .prop_map(|(fanouts, state, tiles)| {
            let fanouts = fanouts
                .into_iter()
                .map(|(master, destinations)| {
                    let destinations = destinations.into_iter().filter(|&d| d != master).collect();
                    (master, destinations)
                })
                .filter(|(_, destinations): &(u32, Vec<u32>)| !destinations.is_empty())
                .collect();
            (fanouts, state, tiles)
        })
}

/// The same replicas with every fan-out of two or more destinations sent as a tree two relays deep
/// (its first `relays` destinations as relays, at least two), the others directly.
fn deep_schedule_of(
    fanouts: &[(u32, Vec<u32>)],
    state: u64,
    tiles: bool,
    relays: usize,
) -> TransferSchedule {
    let chosen = schedule_of(fanouts, state, tiles);
    let config = *chosen.config();
    let piece = if tiles {
        config.tile_bytes
    } else {
        config.chunk_bytes
    };
    let routes = chosen
        .fanouts()
        .iter()
        .map(|fanout| {
            let ranks: Vec<u32> = fanout.destinations.iter().map(|d| d.0).collect();
            if ranks.len() < 2 {
                return (Route::Direct, config.chunk_bytes);
            }
            let count = relays.clamp(2, ranks.len());
            (
                Route::Relayed {
                    relays: ranks[..count].to_vec(),
                    deep: true,
                },
                piece,
            )
        })
        .collect();
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let state = ExpertState::opaque(state).unwrap();
    TransferSchedule::with_routes(&replicas_of(fanouts), &state, &topology, config, routes).unwrap()
}

fn replicas_of(fanouts: &[(u32, Vec<u32>)]) -> ReplicaSet {
    // Every expert has a slot number of its own, so no two share a slot of a rank.
    ReplicaSet::new(
        fanouts
            .iter()
            .enumerate()
            .map(|(expert, (master, destinations))| {
                let slot = u16::try_from(expert).unwrap();
                Fanout::new(
                    expert as u32,
                    *master,
                    0,
                    destinations.iter().map(|&rank| (rank, slot)).collect(),
                )
                .unwrap()
            })
            .collect(),
    )
    .unwrap()
}

fn schedule_of(fanouts: &[(u32, Vec<u32>)], state: u64, tiles: bool) -> TransferSchedule {
    let replicas = replicas_of(fanouts);
    let config = TransferConfig {
        relay_pieces: if tiles {
            RelayPieces::Tiles
        } else {
            RelayPieces::Chunks
        },
        ..TransferConfig::default()
    };
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let state = ExpertState::opaque(state).unwrap();
    TransferSchedule::build(&replicas, &state, &topology, config).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_replica_receives_every_byte_once_and_relays_forward_what_they_received(
        (fanouts, state, tiles) in replica_sets()
    ) {
        prop_assume!(!fanouts.is_empty());
        let schedule = schedule_of(&fanouts, state, tiles);
        let mut program = TransferProgram::default();
        program.build_from(&schedule);
        check(&program, &schedule, 72);
    }

    #[test]
    fn deep_trees_deliver_every_byte_once_and_relays_forward_what_they_received(
        (fanouts, state, tiles) in replica_sets(),
        relays in 2usize..8,
    ) {
        prop_assume!(!fanouts.is_empty());
        let schedule = deep_schedule_of(&fanouts, state, tiles, relays);
        let mut program = TransferProgram::default();
        program.build_from(&schedule);
        check(&program, &schedule, 72);
    }
}

/// The generator reaches relays: a hot expert of 4 MiB fanned out to 16 ranks travels through
/// them, and the program's forwards say what they wait for.
#[test]
fn a_wide_fan_out_is_relayed_and_the_program_says_so() {
    let fanouts = vec![(0u32, (1..17).collect::<Vec<u32>>())];
    for tiles in [true, false] {
        let schedule = schedule_of(&fanouts, 4 << 20, tiles);
        let mut program = TransferProgram::default();
        program.build_from(&schedule);
        assert!(check(&program, &schedule, 72) > 0, "relays forward pieces");
    }
}
