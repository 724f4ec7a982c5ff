//! The CPU references: what every kernel must compute.

use proptest::prelude::*;
use ultraep_kernels::reference::arrivals::first_missing;
use ultraep_kernels::reference::histogram::histogram;
use ultraep_kernels::reference::reduce::{reduce, reduce_jobs};
use ultraep_kernels::reference::reroute::{
    NO_INSTANCE, RerouteEntry, RerouteTable, reroute, reroute_into,
};
use ultraep_kernels::reference::stream::{RankMemory, stream};
use ultraep_plan::{ExpertLayout, LoadMatrix};
use ultraep_topo::Preset;
use ultraep_xfer::{
    ExpertState, Fanout, Region, ReplicaSet, TileTaskList, TransferConfig, TransferSchedule,
    reduce_gradients,
};

use crate::common::{
    REGIONS_PER_RANK, plan_of as planned, region_address, shuffled_ids as ids_of, skewed_loads,
};

proptest! {
    /// The first missing arrival is missing, and every pair before it has arrived; none missing
    /// means every pair arrived.
    #[test]
    fn the_first_missing_arrival_is_the_first_pair_not_at_the_round(
        words in prop::collection::vec(0u64..3, 1..64),
        slots in prop::collection::vec(0u32..10, 0..6),
        tiles in 1u32..5,
    ) {
        let round = 2;
        let arrived = |pair: u32| {
            let slot = slots[(pair / tiles) as usize];
            let index = (u64::from(slot) * u64::from(tiles) + u64::from(pair % tiles)) as usize;
            words.get(index) == Some(&round)
        };
        let pairs = slots.len() as u32 * tiles;
        match first_missing(&words, &slots, tiles, round) {
            Some(pair) => {
                prop_assert!(pair < pairs);
                prop_assert!(!arrived(pair));
                prop_assert!((0..pair).all(arrived));
            }
            None => prop_assert!((0..pairs).all(arrived)),
        }
    }

    #[test]
    fn reroute_gives_every_instance_exactly_its_share(
        loads in prop::collection::vec(0u32..400, 8 * 32),
        hot in 0usize..32,
        seed in any::<u64>(),
    ) {
        let mut loads = loads;
        for source in 0..8 {
            loads[source * 32 + hot] += 2000;
        }
        let plan = planned(&loads);
        let matrix = LoadMatrix::new(&loads, 8, 32).unwrap();
        for source in 0..8u32 {
            let table = RerouteTable::for_source(&plan, matrix, source).unwrap();
            let ids = ids_of(matrix.row(source as usize), seed);
            let (instances, invalid) = reroute(&ids, &table);
            prop_assert_eq!(invalid, 0);
            let mut received = vec![0u32; plan.instances().len()];
            for (&id, &instance) in ids.iter().zip(&instances) {
                prop_assert_eq!(plan.instances()[instance as usize].expert, id);
                received[instance as usize] += 1;
            }
            for entry in plan.split(matrix).filter(|e| e.source == source) {
                prop_assert_eq!(received[entry.instance as usize], entry.tokens);
            }
            // Deterministic: the same ids give the same instances.
            prop_assert_eq!(reroute(&ids, &table).0, instances);
        }
    }

    #[test]
    fn a_reused_table_is_the_split_of_its_source(
        loads in prop::collection::vec(0u32..400, 8 * 32),
        hot in 0usize..32,
        seed in any::<u64>(),
    ) {
        let mut loads = loads;
        for source in 0..8 {
            loads[source * 32 + hot] += 2000;
        }
        let plan = planned(&loads);
        let matrix = LoadMatrix::new(&loads, 8, 32).unwrap();
        // One table and one pair of buffers for every source in turn, as the engine uses them.
        let (mut table, mut seen, mut routed) = (RerouteTable::default(), Vec::new(), Vec::new());
        for source in (0..8u32).rev() {
            table.rebuild(&plan, matrix, source).unwrap();
            // The table spelled out from the plan's split, expert by expert.
            let mut offsets = vec![0u32];
            let mut entries = Vec::new();
            for expert in 0..32 {
                let mut end = 0;
                for entry in plan.split(matrix).filter(|e| e.source == source && e.expert == expert) {
                    end += entry.tokens;
                    entries.push(RerouteEntry { end, instance: entry.instance });
                }
                offsets.push(entries.len() as u32);
            }
            prop_assert_eq!(&table.offsets, &offsets);
            prop_assert_eq!(&table.entries, &entries);
            let ids = ids_of(matrix.row(source as usize), seed);
            let invalid = reroute_into(&ids, &table, &mut seen, &mut routed);
            prop_assert_eq!((routed.clone(), invalid), reroute(&ids, &table));
        }
    }
}

#[test]
fn histogram_counts_and_reports_bad_ids() {
    let (counts, invalid) = histogram(&[3, 1, 3, 3, 0, 7], 4);
    assert_eq!((counts, invalid), (vec![1, 1, 0, 3], 1));
}

#[test]
fn reroute_reports_ids_beyond_the_split() {
    let mut loads = vec![10u32; 8 * 32];
    loads[0] = 3000;
    let plan = planned(&loads);
    let matrix = LoadMatrix::new(&loads, 8, 32).unwrap();
    let table = RerouteTable::for_source(&plan, matrix, 0).unwrap();
    // One occurrence too many of expert 5 (source 0 sent 10), and an id past the experts.
    let mut ids = ids_of(matrix.row(0), 1);
    ids.push(5);
    ids.push(99);
    let (instances, invalid) = reroute(&ids, &table);
    assert_eq!(invalid, 2);
    assert_eq!(instances[instances.len() - 1], NO_INSTANCE);
}

#[test]
fn streaming_reference_delivers_every_replica() {
    let topology = Preset::HgxH100.topology(1).unwrap();
    let loads = skewed_loads(7);
    let plan = planned(&loads);
    let layout = ExpertLayout::contiguous(8, 4).unwrap();
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap();
    // Large enough that relays pay for their extra hop (the cost model charges its latency).
    let state_bytes = 1024 * 1024;
    let state = ExpertState::opaque(state_bytes).unwrap();
    let config = TransferConfig {
        tile_bytes: 4096,
        chunk_bytes: 16384,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, config).unwrap();
    assert!(schedule.relayed_count() > 0);
    let tasks = TileTaskList::build(&schedule);
    let mut memory: Vec<RankMemory> = (0..8)
        .map(|rank| RankMemory {
            masters: (0..4 * state_bytes)
                .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(rank) as u8)
                .collect(),
            slots: vec![0; 2 * state_bytes as usize],
        })
        .collect();
    stream(&tasks, &mut memory, state_bytes).unwrap();
    for fanout in schedule.fanouts() {
        let bytes = state_bytes as usize;
        let master = &memory[fanout.master as usize].masters
            [fanout.master_index as usize * bytes..][..bytes];
        for &(rank, slot) in &fanout.destinations {
            let copy = &memory[rank as usize].slots[slot as usize * bytes..][..bytes];
            assert!(copy == master, "expert {} on rank {rank}", fanout.expert);
        }
    }
}

/// The GPU trial's wide fan-outs, here on the reference, relayed and direct: the task lists
/// build, every task has a destination (the streamers' loop may also meet none), the direct one
/// has tasks with more destinations than the streamers stage at once (32: the path that
/// re-stages targets), and every copy arrives.
#[test]
fn a_forty_way_fanout_arrives_whole_relayed_or_direct() {
    for allow_relays in [true, false] {
        forty_way_fanout(allow_relays);
    }
}

fn forty_way_fanout(allow_relays: bool) {
    let topology = Preset::Gb200Nvl72.topology(1).unwrap();
    let replicas = Fanout::new(0, 0, 0, (1..=40).map(|rank| (rank, 0)).collect())
        .and_then(|fanout| ReplicaSet::new(vec![fanout]))
        .unwrap();
    let state_bytes = 3 * 1024 * 1024 + 16;
    let state = ExpertState::opaque(state_bytes).unwrap();
    let config = TransferConfig {
        allow_relays,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, config).unwrap();
    assert_eq!(
        schedule.relayed_count() > 0,
        allow_relays,
        "relays only where allowed"
    );
    let tasks = TileTaskList::build(&schedule);
    let widest = tasks
        .tasks()
        .iter()
        .map(|task| tasks.destinations_of(task).len())
        .collect::<Vec<_>>();
    assert!(
        widest.iter().all(|&count| count >= 1),
        "a task with no destination"
    );
    if !allow_relays {
        assert!(
            widest.iter().any(|&count| count > 32),
            "a direct 40-way fan-out stores a tile to all 40 at once"
        );
    }
    let master: Vec<u8> = (0..state_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let mut memory: Vec<RankMemory> = (0..41)
        .map(|rank| RankMemory {
            masters: if rank == 0 {
                master.clone()
            } else {
                Vec::new()
            },
            slots: vec![0xa5; state_bytes as usize],
        })
        .collect();
    stream(&tasks, &mut memory, state_bytes).unwrap();
    for (rank, memory) in memory.iter().enumerate().skip(1) {
        assert!(memory.slots == master, "rank {rank}");
    }
}

#[test]
fn reduction_jobs_sum_exactly_as_the_documented_order() {
    let topology = Preset::HgxH100.topology(1).unwrap();
    let loads = skewed_loads(8);
    let plan = planned(&loads);
    let layout = ExpertLayout::contiguous(8, 4).unwrap();
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).unwrap();
    let floats = 6000usize;
    let state = ExpertState::opaque(floats as u64 * 4).unwrap();
    let config = TransferConfig {
        tile_bytes: 1024,
        chunk_bytes: 4096,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, &state, &topology, config).unwrap();
    // One flat memory: per rank 4 master states then 2 slots.
    let region_floats = floats;
    let rank_floats = REGIONS_PER_RANK * region_floats;
    let address = |rank: u32, region: Region| region_address(rank, region, region_floats);
    let value = |i: usize| ((i * 7919) % 1000) as f32 * 10f32.powi((i % 9) as i32 - 4) - 3.0;
    let mut memory: Vec<f32> = (0..8 * rank_floats).map(value).collect();
    let original = memory.clone();
    let (jobs, list) = reduce_jobs(&schedule, address).unwrap();
    reduce(&jobs, &list, &mut memory).unwrap();
    for fanout in schedule.fanouts() {
        let slice = |m: &Vec<f32>, rank: u32, region: Region| {
            let start = (address(rank, region) / 4) as usize;
            m[start..start + floats].to_vec()
        };
        let mut expected = slice(
            &original,
            fanout.master,
            Region::Master {
                index: fanout.master_index,
            },
        );
        let gradients: Vec<(u32, Vec<f32>)> = fanout
            .destinations
            .iter()
            .map(|&(rank, slot)| (rank, slice(&original, rank, Region::Slot { slot })))
            .collect();
        reduce_gradients(&schedule, fanout, &mut expected, |rank| {
            gradients
                .iter()
                .find(|(r, _)| *r == rank)
                .map(|(_, g)| g.as_slice())
                .unwrap()
        })
        .unwrap();
        let reduced = slice(
            &memory,
            fanout.master,
            Region::Master {
                index: fanout.master_index,
            },
        );
        assert!(
            reduced
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "expert {}",
            fanout.expert
        );
        for &(rank, slot) in &fanout.destinations {
            assert!(
                slice(&memory, rank, Region::Slot { slot })
                    .iter()
                    .all(|&v| v == 0.0),
                "replica slots are zeroed"
            );
        }
    }
}
