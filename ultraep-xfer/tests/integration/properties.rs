//! Property tests of schedules and transfers: every destination gets every byte once, relays forward only what they hold,
//! gradient reduction follows its documented order bit for bit, schedules are deterministic, and
//! builders reused from one layer to the next build what fresh ones do. The flow and task-list
//! checks run both on the schedules the choosers pick and on hand-shaped ones: every route shape,
//! trees two relays deep included, in tiles and chunks.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ultraep_topo::{Bandwidth, Nanos, RankLinks, Topology, TopologyBuilder};
use ultraep_xfer::{
    ExpertState, Fanout, NO_FLAG, Region, RelayPieces, ReplicaSet, Route, RouteChooser,
    ScheduleBuilder, TaskListBuilder, TileTaskList, TransferConfig, TransferCosts,
    TransferSchedule, played_transfers, reduce_gradients, region_of, simulate, simulate_reduction,
};

/// A tile stored into a slot: (offset, bytes, expert).
type Stored = (u64, u64, u32);

fn topology(ranks: u32) -> Topology {
    let gb = |n| Bandwidth::gigabytes_per_second(n).unwrap();
    let links = RankLinks {
        scale_up_egress: gb(900),
        scale_up_ingress: gb(900),
        scale_up_latency: Nanos::from_micros(1),
        scale_out: gb(50),
        scale_out_latency: Nanos::from_micros(3),
    };
    TopologyBuilder::new("test domain")
        .domain("d", 0..ranks, links)
        .build()
        .unwrap()
}

/// A random layer: ranks, experts with masters, and replicas on distinct other ranks.
#[derive(Debug, Clone)]
struct Case {
    ranks: u32,
    replicas: ReplicaSet,
    state_bytes: u64,
    config: TransferConfig,
}

/// Fan-outs of `(master, destinations)` per expert, with slots numbered on each rank in order and
/// a master's own rank dropped from its destinations; experts left with none are dropped.
fn replica_set(ranks: u32, fanouts: Vec<(u32, std::collections::BTreeSet<u32>)>) -> ReplicaSet {
    let mut next_slot = vec![0u16; ranks as usize];
    let mut masters = vec![0u32; ranks as usize];
    let fanouts = fanouts
        .into_iter()
        .enumerate()
        .filter_map(|(expert, (master, destinations))| {
            let master_index = masters[master as usize];
            masters[master as usize] += 1;
            let destinations: Vec<(u32, u16)> = destinations
                .into_iter()
                .filter(|&rank| rank != master)
                .map(|rank| {
                    let slot = next_slot[rank as usize];
                    next_slot[rank as usize] += 1;
                    (rank, slot)
                })
                .collect();
            (!destinations.is_empty())
                .then(|| Fanout::new(expert as u32, master, master_index, destinations).unwrap())
        })
        .collect();
    ReplicaSet::new(fanouts).unwrap()
}

fn case() -> impl Strategy<Value = Case> {
    (
        2u32..=24,
        1usize..=6,
        1u64..=40_000,
        any::<bool>(),
        0u32..3,
        0u8..3,
        costs(),
    )
        .prop_flat_map(
            |(ranks, experts, state_bytes, allow_relays, tile_scale, tiles, costs)| {
                let fanouts = prop::collection::vec(
                    (
                        0..ranks,
                        prop::collection::btree_set(0..ranks, 1..ranks as usize),
                    ),
                    experts,
                );
                let relay_pieces = match tiles {
                    0 => RelayPieces::Tiles,
                    1 => RelayPieces::Chunks,
                    _ => RelayPieces::Chosen,
                };
                (
                    Just(ranks),
                    fanouts,
                    Just(state_bytes),
                    Just(allow_relays),
                    Just(tile_scale),
                    Just(relay_pieces),
                    Just(costs),
                )
            },
        )
        .prop_map(
            |(ranks, fanouts, state_bytes, allow_relays, tile_scale, relay_pieces, costs)| {
                let tile = 256u32 << tile_scale;
                Case {
                    ranks,
                    replicas: replica_set(ranks, fanouts),
                    state_bytes,
                    config: TransferConfig {
                        tile_bytes: tile,
                        chunk_bytes: tile * 4,
                        allow_relays,
                        relay_pieces,
                        chooser: if state_bytes % 2 == 0 {
                            RouteChooser::Layer
                        } else {
                            RouteChooser::PerExpert
                        },
                        costs,
                    },
                }
            },
        )
}

/// The ideal model, the calibrated one, or any other.
fn costs() -> impl Strategy<Value = TransferCosts> {
    prop_oneof![
        Just(TransferCosts::IDEAL),
        Just(TransferCosts::CALIBRATED),
        (
            0u32..200,
            300_000u32..=1_000_000,
            0u32..3_000_000,
            any::<bool>()
        )
            .prop_map(
                |(per_transfer_ns, bandwidth_ppm, relay_forward_ppm, backpressure)| TransferCosts {
                    per_transfer_ns,
                    bandwidth_ppm,
                    relay_forward_ppm,
                    backpressure,
                }
            ),
    ]
}

/// A layer where relays pay: megabytes of state, hot experts with 6 or more replicas on domains
/// of more than 8 ranks, small tiles.
fn relay_case() -> impl Strategy<Value = Case> {
    (
        12u32..=24,
        1usize..=3,
        512u64..=2048,
        costs(),
        any::<bool>(),
    )
        .prop_flat_map(|(ranks, experts, kib, costs, tiles)| {
            let fanouts = prop::collection::vec(
                (
                    0..ranks,
                    prop::collection::btree_set(0..ranks, 7..ranks as usize),
                ),
                experts,
            );
            (
                Just(ranks),
                fanouts,
                Just(kib * 1024),
                Just(costs),
                Just(tiles),
            )
        })
        .prop_map(|(ranks, fanouts, state_bytes, costs, tiles)| Case {
            ranks,
            replicas: replica_set(ranks, fanouts),
            state_bytes,
            config: TransferConfig {
                tile_bytes: 16 * 1024,
                chunk_bytes: 64 * 1024,
                allow_relays: true,
                relay_pieces: if tiles {
                    RelayPieces::Tiles
                } else {
                    RelayPieces::Chunks
                },
                chooser: if state_bytes % 2048 == 0 {
                    RouteChooser::PerExpert
                } else {
                    RouteChooser::Layer
                },
                costs,
            },
        })
}

/// How one fan-out of a hand-shaped case travels: direct, flat relays or a tree two relays deep,
/// with a relay count and choice drawn from `seed`, in tiles or chunks.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: u8,
    seed: u32,
    tiles: bool,
}

/// A case whose routes are drawn instead of chosen: every shape a route can take, deep trees
/// included, whatever the chooser would pick.
fn shaped(cases: impl Strategy<Value = Case>) -> impl Strategy<Value = (Case, Vec<(Route, u32)>)> {
    cases.prop_flat_map(|case| {
        let fanouts = case.replicas.fanouts().len();
        let shapes = prop::collection::vec(
            (0u8..3, any::<u32>(), any::<bool>()).prop_map(|(kind, seed, tiles)| Shape {
                kind,
                seed,
                tiles,
            }),
            fanouts,
        );
        (Just(case), shapes).prop_map(|(case, shapes)| {
            let routes = case
                .replicas
                .fanouts()
                .iter()
                .zip(shapes)
                .map(|(fanout, shape)| route(&case.config, fanout.destinations(), shape))
                .collect();
            (case, routes)
        })
    })
}

fn route(config: &TransferConfig, destinations: &[(u32, u16)], shape: Shape) -> (Route, u32) {
    let n = destinations.len();
    let piece = if shape.tiles {
        config.tile_bytes
    } else {
        config.chunk_bytes
    };
    let deep = shape.kind == 2 && n >= 2;
    if shape.kind == 0 || n < 2 && !deep && shape.seed.is_multiple_of(2) {
        return (Route::Direct, config.chunk_bytes);
    }
    let count = if deep {
        2 + shape.seed as usize % (n - 1)
    } else {
        1 + shape.seed as usize % n
    };
    let start = (shape.seed / 7) as usize;
    let relays = (0..count)
        .map(|i| destinations[(start + i) % n].0)
        .collect();
    (Route::Relayed { relays, deep }, piece)
}

fn shaped_schedule(case: &Case, routes: &[(Route, u32)]) -> TransferSchedule {
    let state = ExpertState::opaque(case.state_bytes).unwrap();
    TransferSchedule::with_routes(
        &case.replicas,
        &state,
        &topology(case.ranks),
        case.config,
        routes.to_vec(),
    )
    .unwrap()
}

/// Checks the flow the simulator plays: every destination receives every byte of its expert
/// exactly once and nothing else, a relay forwards a piece only after it landed there, and no
/// port carries two transfers at once (so none carries more than its bandwidth).
fn check_flow(case: &Case, schedule: &TransferSchedule) -> Result<(), TestCaseError> {
    let topology = topology(case.ranks);
    let played = played_transfers(schedule, &topology)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    // (expert, rank) -> received (offset, bytes).
    let mut received: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for transfer in &played {
        received
            .entry((transfer.expert, transfer.to))
            .or_default()
            .push((transfer.offset, transfer.bytes));
        if transfer.forwarded {
            let arrival = played
                .iter()
                .filter(|t| {
                    t.expert == transfer.expert
                        && t.to == transfer.from
                        && t.offset == transfer.offset
                })
                .map(|t| t.landed_ps)
                .min();
            prop_assert!(
                arrival.is_some(),
                "rank {} forwards a piece it never received",
                transfer.from
            );
            prop_assert!(
                arrival.unwrap() <= transfer.egress_ps.0,
                "forwarded before it landed"
            );
        }
        if case.config.costs.backpressure {
            prop_assert_eq!(transfer.egress_ps, transfer.ingress_ps);
        }
    }
    for fanout in case.replicas.fanouts() {
        for &(rank, _) in fanout.destinations() {
            let mut pieces = received
                .remove(&(fanout.expert(), rank))
                .unwrap_or_default();
            pieces.sort_unstable();
            let mut next = 0;
            for (offset, bytes) in pieces {
                prop_assert_eq!(
                    offset,
                    next,
                    "expert {} on rank {}: a gap or a byte twice",
                    fanout.expert(),
                    rank
                );
                next = offset + bytes;
            }
            prop_assert_eq!(
                next,
                case.state_bytes,
                "expert {} on rank {} incomplete",
                fanout.expert(),
                rank
            );
        }
    }
    // Relays receive the pieces they own too; nothing else may arrive anywhere.
    for ((expert, rank), _) in received {
        let fanout = case
            .replicas
            .fanouts()
            .iter()
            .find(|f| f.expert() == expert);
        prop_assert!(fanout.is_some(), "expert {} has no fan-out", expert);
        let fanout = fanout.map_or(&[][..], |f| f.destinations());
        prop_assert!(
            fanout.iter().any(|&(d, _)| d == rank),
            "expert {} sent to rank {}",
            expert,
            rank
        );
    }
    for rank in 0..case.ranks {
        for port in [true, false] {
            let mut spans: Vec<(u64, u64)> = played
                .iter()
                .filter(|t| if port { t.from == rank } else { t.to == rank })
                .map(|t| if port { t.egress_ps } else { t.ingress_ps })
                .collect();
            spans.sort_unstable();
            for pair in spans.windows(2) {
                prop_assert!(
                    pair[0].1 <= pair[1].0,
                    "rank {} port carries two transfers at once",
                    rank
                );
            }
        }
    }
    Ok(())
}

/// Checks the tile task list: every destination slot receives every byte of its expert once, and
/// nothing is stored anywhere else.
fn check_task_list(case: &Case, schedule: &TransferSchedule) -> Result<(), TestCaseError> {
    let list = TileTaskList::build(schedule);
    // (rank, slot) -> stored (offset, bytes, expert).
    let mut stored: BTreeMap<(u32, u16), Vec<Stored>> = BTreeMap::new();
    for task in list.tasks() {
        for destination in list.destinations_of(task) {
            let Region::Slot { slot } = region_of(destination.region) else {
                panic!("a store into a master region");
            };
            stored.entry((destination.rank, slot)).or_default().push((
                task.offset,
                u64::from(task.bytes),
                destination.expert,
            ));
        }
    }
    let mut expected = 0;
    for fanout in schedule.fanouts() {
        for &(rank, slot) in &fanout.destinations {
            expected += 1;
            let mut ranges = stored.remove(&(rank, slot)).unwrap_or_default();
            ranges.sort_unstable();
            let mut covered = 0;
            for (offset, bytes, expert) in ranges {
                prop_assert_eq!(expert, fanout.expert);
                prop_assert_eq!(
                    offset,
                    covered,
                    "a gap or an overlap in rank {} slot {}",
                    rank,
                    slot
                );
                covered += bytes;
            }
            prop_assert_eq!(covered, case.state_bytes);
        }
    }
    prop_assert!(
        stored.is_empty(),
        "stores to slots that are not destinations: {:?}",
        stored.keys()
    );
    prop_assert!(expected > 0 || schedule.fanouts().is_empty());
    Ok(())
}

/// Checks that, executed in list order, every forwarding task's source range was stored into the
/// relay by tasks that signal the flag it waits for, and that the wait is satisfiable then.
fn check_relays_hold(schedule: &TransferSchedule) -> Result<(), TestCaseError> {
    let list = TileTaskList::build(schedule);
    // Executed in list order (what an atomic counter hands out), a forwarding task's source
    // range must have been stored into the relay by tasks that signal the flag it waits for.
    let mut flag_count = vec![0u32; list.flag_count() as usize];
    let mut held: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for task in list.tasks() {
        match region_of(task.source_region) {
            Region::Master { .. } => {
                prop_assert_eq!(task.wait_flag, NO_FLAG, "a master waits for nothing")
            }
            Region::Slot { .. } => {
                prop_assert!(
                    task.wait_flag != NO_FLAG,
                    "a relay forwards only after a wait"
                );
                prop_assert_eq!(
                    flag_count[task.wait_flag as usize],
                    task.wait_count,
                    "the wait is satisfiable when reached"
                );
                let ranges = held
                    .get(&(task.source_rank, task.source_region))
                    .cloned()
                    .unwrap_or_default();
                let end = task.offset + u64::from(task.bytes);
                prop_assert!(
                    ranges
                        .iter()
                        .any(|&(start, stop)| start <= task.offset && end <= stop),
                    "rank {} forwards bytes {}..{} it does not hold",
                    task.source_rank,
                    task.offset,
                    end
                );
            }
        }
        for destination in list.destinations_of(task) {
            if destination.signal_flag != NO_FLAG {
                flag_count[destination.signal_flag as usize] += 1;
                held.entry((destination.rank, destination.region))
                    .or_default()
                    .push((task.offset, task.offset + u64::from(task.bytes)));
            }
        }
    }
    Ok(())
}

/// Checks that `reduce_gradients` sums every piece in the documented order, bit for bit: direct
/// pieces replica by replica into the master, relayed ones at their owner first (a deep tree's
/// reduction gathers at the owner, one level).
fn check_reduction(
    case: &Case,
    schedule: &TransferSchedule,
    seed: u32,
) -> Result<(), TestCaseError> {
    let floats = (case.state_bytes / 4) as usize;
    // Values of very different magnitudes, so that the order of additions shows in the bits.
    let value = |rank: u32, i: usize| {
        let x = (seed as usize ^ (rank as usize * 7919)).wrapping_mul(i + 1) % 1000;
        (x as f32 - 500.0) * 10f32.powi((x % 7) as i32 - 3)
    };
    for fanout in schedule.fanouts() {
        let gradients: Vec<(u32, Vec<f32>)> = fanout
            .destinations
            .iter()
            .map(|&(rank, _)| (rank, (0..floats).map(|i| value(rank, i)).collect()))
            .collect();
        let replica = |rank: u32| {
            gradients
                .iter()
                .find(|(r, _)| *r == rank)
                .unwrap()
                .1
                .as_slice()
        };
        let mut reduced: Vec<f32> = (0..floats).map(|i| value(fanout.master, i)).collect();
        reduce_gradients(schedule, fanout, &mut reduced, replica)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        // The documented order, spelled out element by element.
        let pieces = schedule.pieces(fanout);
        for (i, &result) in reduced.iter().enumerate() {
            let byte = i as u64 * 4;
            let piece = pieces
                .iter()
                .find(|p| p.offset <= byte && byte < p.offset + p.bytes)
                .unwrap();
            let mut master = value(fanout.master, i);
            match piece.owner {
                None => {
                    for &(rank, _) in &fanout.destinations {
                        master += replica(rank)[i];
                    }
                }
                Some(owner) => {
                    let mut partial = replica(owner)[i];
                    for &(rank, _) in fanout.destinations.iter().filter(|d| d.0 != owner) {
                        partial += replica(rank)[i];
                    }
                    master += partial;
                }
            }
            prop_assert_eq!(
                result.to_bits(),
                master.to_bits(),
                "value {} of expert {}",
                i,
                fanout.expert
            );
        }
    }
    Ok(())
}

fn schedule(case: &Case) -> TransferSchedule {
    let state = ExpertState::opaque(case.state_bytes).unwrap();
    TransferSchedule::build(&case.replicas, &state, &topology(case.ranks), case.config).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_played_flow_delivers_every_byte_once_without_overusing_a_port(case in case()) {
        check_flow(&case, &schedule(&case))?;
    }

    #[test]
    fn relayed_flows_deliver_every_byte_once_without_overusing_a_port(case in relay_case()) {
        let schedule = schedule(&case);
        // These cases are sized so that relays pay under every cost model generated: a test of
        // relays that never builds one would test nothing.
        prop_assert!(schedule.relayed_count() > 0, "no relay chosen");
        check_flow(&case, &schedule)?;
    }

    #[test]
    fn every_destination_gets_every_byte_exactly_once(case in case()) {
        check_task_list(&case, &schedule(&case))?;
    }

    #[test]
    fn relays_forward_only_pieces_they_hold(case in case()) {
        check_relays_hold(&schedule(&case))?;
    }

    #[test]
    fn schedules_and_task_lists_are_deterministic(case in case()) {
        let first = schedule(&case);
        let second = schedule(&case);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(TileTaskList::build(&first), TileTaskList::build(&second));
    }

    #[test]
    fn reused_builders_build_what_fresh_ones_do(first in case(), second in case()) {
        // One builder and one pair of buffers for two layers in a row, as the engine uses them.
        let mut schedule_builder = ScheduleBuilder::default();
        let mut task_builder = TaskListBuilder::default();
        let mut reused = TransferSchedule::default();
        let mut tasks = TileTaskList::default();
        for case in [&first, &second, &first] {
            let state = ExpertState::opaque(case.state_bytes).unwrap();
            let topology = topology(case.ranks);
            schedule_builder
                .build_into(&case.replicas, &state, &topology, case.config, &mut reused)
                .unwrap();
            let fresh = schedule(case);
            prop_assert_eq!(&reused, &fresh);
            task_builder.build_into(&reused, &mut tasks);
            prop_assert_eq!(&tasks, &TileTaskList::build(&fresh));
        }
    }

    #[test]
    fn simulations_respect_the_lower_bound(case in case()) {
        let schedule = schedule(&case);
        let topology = topology(case.ranks);
        for simulation in [simulate(&schedule, &topology).unwrap(), simulate_reduction(&schedule, &topology).unwrap()] {
            prop_assert!(simulation.makespan_ps >= simulation.lower_bound_ps);
            prop_assert!(simulation.efficiency() <= 1.0);
            for ready in &simulation.ready {
                prop_assert!(ready.at_ps <= simulation.makespan_ps);
            }
        }
        let moved = simulate(&schedule, &topology).unwrap().bytes_moved;
        prop_assert_eq!(moved, TileTaskList::build(&schedule).bytes_stored());
    }

    #[test]
    fn gradient_reduction_follows_the_documented_order(case in case(), seed in any::<u32>()) {
        // Gradient states are FP32: round the size to whole values.
        let case = Case { state_bytes: case.state_bytes.div_ceil(4) * 4, ..case };
        check_reduction(&case, &schedule(&case), seed)?;
    }

    #[test]
    fn every_shape_delivers_every_byte_once_without_overusing_a_port(
        (case, routes) in shaped(prop_oneof![case(), relay_case()])
    ) {
        let schedule = shaped_schedule(&case, &routes);
        check_flow(&case, &schedule)?;
        check_task_list(&case, &schedule)?;
        check_relays_hold(&schedule)?;
    }

    #[test]
    fn every_shape_reduces_gradients_in_the_documented_order(
        (case, routes) in shaped(case()),
        seed in any::<u32>(),
    ) {
        let case = Case { state_bytes: case.state_bytes.div_ceil(4) * 4, ..case };
        check_reduction(&case, &shaped_schedule(&case, &routes), seed)?;
    }
}
