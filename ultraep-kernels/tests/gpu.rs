//! Every kernel on a GPU, compared exactly with its CPU reference on random inputs.
//!
//! A custom harness: without a GPU (no driver, or no device) the trials show as *ignored*; with
//! `ULTRAEP_REQUIRE_GPU=1` (as the GPU bundle's script sets) that is a failure instead.

#[path = "common/mod.rs"]
mod common;
#[path = "../../test-support/isolated_trials.rs"]
mod isolated_trials;

use std::sync::OnceLock;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed};
use ultraep_kernels::gpu::{Gpu, driver_available};
use ultraep_kernels::ipc::IpcLayout;
use ultraep_kernels::reference::arrivals::first_missing;
use ultraep_kernels::reference::histogram::histogram;
use ultraep_kernels::reference::reduce::{reduce, reduce_jobs};
use ultraep_kernels::reference::reroute::{RerouteTable, reroute};
use ultraep_kernels::reference::stream::{RankMemory, stream};
use ultraep_plan::{ExpertLayout, LoadMatrix};
use ultraep_topo::Preset;
use ultraep_xfer::{
    ExpertState, Fanout, Region, ReplicaSet, SLOT_REGION, TileTaskList, TransferConfig,
    TransferSchedule,
};

fn gpu() -> Result<&'static Gpu, Failed> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| Gpu::open(0).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Failed::from(format!("no GPU: {e}")))
}

/// A small deterministic generator for test inputs.
struct Random(u64);
impl Random {
    fn next(&mut self) -> u64 {
        common::next(&mut self.0)
    }
}

fn planned(seed: u64) -> (Vec<u32>, ultraep_plan::Plan) {
    let loads = common::skewed_loads(seed);
    let plan = common::plan_of(&loads);
    (loads, plan)
}

fn fail(error: impl std::fmt::Display) -> Failed {
    Failed::from(error.to_string())
}

fn check(condition: bool, message: &str) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(Failed::from(message))
    }
}

fn histogram_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    for (experts, seed) in [(64u32, 1u64), (128, 2), (256, 3)] {
        let mut random = Random(seed);
        let ids: Vec<u32> = (0..8192 * 8)
            .map(|_| (random.next() % u64::from(experts)) as u32)
            .collect();
        let counts = gpu.histogram(&ids, experts).map_err(fail)?;
        check(
            counts == histogram(&ids, experts).0,
            "histogram differs from the CPU reference",
        )?;
    }
    let bad = gpu.histogram(&[0, 1, 70], 64);
    check(bad.is_err(), "an id naming no expert must be an error")
}

/// `kernel` reroutes like the CPU reference on every source of small skewed plans.
fn matches_on_small_plans(
    kernel: impl Fn(&[u32], &RerouteTable) -> Result<(Vec<u32>, u32), Failed>,
) -> Result<(), Failed> {
    for seed in 1..4 {
        let (loads, plan) = planned(seed);
        let matrix = LoadMatrix::new(&loads, 8, 32).map_err(fail)?;
        for source in 0..8u32 {
            let table = RerouteTable::for_source(&plan, matrix, source).map_err(fail)?;
            let ids =
                common::shuffled_ids(matrix.row(source as usize), seed * 31 + u64::from(source));
            check(
                kernel(&ids, &table)? == reroute(&ids, &table),
                "the reroute differs from the CPU reference",
            )?;
        }
    }
    Ok(())
}

fn reroute_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    matches_on_small_plans(|ids, table| gpu.reroute_single_block(ids, table).map_err(fail))?;
    // Small and large inputs through the size-picking entry point (single block, then chunked).
    matches_on_small_plans(|ids, table| gpu.reroute(ids, table).map_err(fail))
}

/// The chunked reroute equals the CPU reference too: small plans, and 8192 tokens x top-8 of
/// random ids (64 chunks, the last one partial), many naming no expert or beyond its split.
fn chunked_reroute_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    matches_on_small_plans(|ids, table| gpu.reroute_chunked(ids, table).map_err(fail))?;
    let (loads, plan) = planned(9);
    let matrix = LoadMatrix::new(&loads, 8, 32).map_err(fail)?;
    let table = RerouteTable::for_source(&plan, matrix, 0).map_err(fail)?;
    let mut random = Random(5);
    let mut ids: Vec<u32> = (0..8192 * 8 + 77)
        .map(|_| (random.next() % 33) as u32)
        .collect();
    ids[17] = u32::MAX;
    let got = gpu.reroute_chunked(&ids, &table).map_err(fail)?;
    check(
        got == reroute(&ids, &table),
        "the chunked reroute of 65 613 ids differs from the CPU reference",
    )?;
    // Past CHUNKED_ABOVE the size-picking entry point takes the chunked kernel: the same result.
    check(
        ids.len() > ultraep_kernels::gpu::CHUNKED_ABOVE
            && gpu.reroute(&ids, &table).map_err(fail)? == got,
        "Gpu::reroute of 65 613 ids differs from the chunked kernel's",
    )
}

/// Runs `tasks` on `memory` on the GPU and on the CPU reference; the results must be equal.
fn streams_as_the_reference(
    gpu: &Gpu,
    tasks: &TileTaskList,
    memory: Vec<RankMemory>,
    state_bytes: u64,
) -> Result<(), Failed> {
    let mut expected = memory.clone();
    stream(tasks, &mut expected, state_bytes).map_err(fail)?;
    let mut got = memory;
    gpu.stream_tiles(tasks, &mut got, state_bytes)
        .map_err(fail)?;
    check(
        got == expected,
        &format!(
            "tile streaming of {} tasks differs from the CPU reference",
            tasks.tasks().len()
        ),
    )
}

/// A streaming case: the tasks, every rank's memory before them, and the masters and slots each
/// rank has (for the peer streamer's layout).
struct StreamCase {
    tasks: TileTaskList,
    memory: Vec<RankMemory>,
    masters: u32,
    slots: u16,
}

/// The small skewed plans of 8 ranks (4 masters and 2 slots each) with states of `state_bytes`.
fn skewed_cases(state_bytes: u64) -> Result<Vec<StreamCase>, Failed> {
    let topology = Preset::HgxH100.topology(1).map_err(fail)?;
    let layout = ExpertLayout::contiguous(8, 4).map_err(fail)?;
    let state = ExpertState::opaque(state_bytes).map_err(fail)?;
    (1..3)
        .map(|seed| {
            let (_, plan) = planned(seed);
            let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).map_err(fail)?;
            let schedule =
                TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default())
                    .map_err(fail)?;
            let mut random = Random(seed);
            let memory = (0..8)
                .map(|_| RankMemory {
                    masters: (0..4 * state_bytes).map(|_| random.next() as u8).collect(),
                    // Poisoned: every byte a transfer should write differs from what it will hold.
                    slots: vec![0xa5; 2 * state_bytes as usize],
                })
                .collect();
            Ok(StreamCase {
                tasks: TileTaskList::build(&schedule),
                memory,
                masters: 4,
                slots: 2,
            })
        })
        .collect()
}

/// One master to 40 destinations (more than the 32 destination addresses a block stages at a
/// time), direct and then with relays where the topology allows them.
fn wide_fanout_cases(state_bytes: u64) -> Result<Vec<StreamCase>, Failed> {
    let topology = Preset::Gb200Nvl72.topology(1).map_err(fail)?;
    let replicas = Fanout::new(0, 0, 0, (1..=40).map(|rank| (rank, 0)).collect())
        .and_then(|fanout| ReplicaSet::new(vec![fanout]))
        .map_err(fail)?;
    let state = ExpertState::opaque(state_bytes).map_err(fail)?;
    [false, true]
        .into_iter()
        .map(|allow_relays| {
            let config = TransferConfig {
                allow_relays,
                ..TransferConfig::default()
            };
            let schedule =
                TransferSchedule::build(&replicas, &state, &topology, config).map_err(fail)?;
            let mut random = Random(41);
            let memory = (0..41)
                .map(|rank| RankMemory {
                    masters: if rank == 0 {
                        (0..state_bytes).map(|_| random.next() as u8).collect()
                    } else {
                        Vec::new()
                    },
                    slots: vec![0xa5; state_bytes as usize],
                })
                .collect();
            Ok(StreamCase {
                tasks: TileTaskList::build(&schedule),
                memory,
                masters: 1,
                slots: 1,
            })
        })
        .collect()
}

fn streaming_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    let state_bytes = 1024 * 1024;
    for case in skewed_cases(state_bytes)? {
        streams_as_the_reference(gpu, &case.tasks, case.memory, state_bytes)?;
    }
    Ok(())
}

/// The wide fan-out (an odd state size, not a whole number of tiles) against the CPU reference.
fn wide_fanout_streaming_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    let state_bytes = 3 * 1024 * 1024 + 16;
    for case in wide_fanout_cases(state_bytes)? {
        streams_as_the_reference(gpu, &case.tasks, case.memory, state_bytes)?;
    }
    Ok(())
}

/// Runs `tasks` with the peer streamer (every rank's memory its own allocation of this process,
/// reached through pointer tables as peers' would be), then waits for every destination's tiles
/// on the device: the slots must equal the CPU reference's, and every arrival must be seen.
fn peer_streams_as_the_reference(
    gpu: &Gpu,
    tasks: &TileTaskList,
    memory: Vec<RankMemory>,
    layout: IpcLayout,
) -> Result<(), Failed> {
    let round = 3;
    let mut expected = memory.clone();
    stream(tasks, &mut expected, layout.state_bytes).map_err(fail)?;
    let owned = memory
        .iter()
        .map(|_| gpu.alloc_ipc_rank(layout))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let ranks: Vec<_> = owned.iter().map(|rank| gpu.own_pointers(rank)).collect();
    for (rank, pointers) in memory.iter().zip(&ranks) {
        if !rank.masters.is_empty() {
            gpu.write_device(pointers.masters, &rank.masters)
                .map_err(fail)?;
        }
        gpu.write_device(pointers.slots, &rank.slots)
            .map_err(fail)?;
        for slot in 0..layout.slots {
            gpu.write_word(pointers.words, layout.open_word(slot), round)
                .map_err(fail)?;
        }
    }
    gpu.stream_peer_tiles(tasks, &ranks, layout, round, Duration::from_secs(10))
        .map_err(fail)?;
    for (rank, (pointers, expected)) in ranks.iter().zip(&expected).enumerate() {
        let mut slots: Vec<u16> = tasks
            .destinations()
            .iter()
            .filter(|to| to.rank as usize == rank)
            .map(|to| (to.region & !SLOT_REGION) as u16)
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let missing = gpu
            .await_arrivals(
                pointers.words,
                &slots,
                layout,
                round,
                Duration::from_millis(2),
            )
            .map_err(fail)?;
        check(
            missing.is_none(),
            &format!("rank {rank}: arrival {missing:?} of slots {slots:?} never seen"),
        )?;
        let mut got = vec![0u8; expected.slots.len()];
        gpu.read_device(pointers.slots, &mut got).map_err(fail)?;
        check(
            got == expected.slots,
            &format!("rank {rank}'s slots after peer streaming differ from the CPU reference"),
        )?;
    }
    Ok(())
}

/// The peer streamer (the CUDA IPC plane's kernel) in one process against the CPU reference: the
/// small skewed plans of 8 ranks, and one master to 40 destinations (more than a block stages at
/// once) with and without relays, so that relays wait on arrival words the same launch sets.
fn peer_streaming_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    let state_bytes = 256 * 1024;
    for case in skewed_cases(state_bytes)?
        .into_iter()
        .chain(wide_fanout_cases(state_bytes)?)
    {
        let layout = IpcLayout {
            masters: case.masters,
            slots: case.slots,
            state_bytes,
            tile_bytes: TransferConfig::default().tile_bytes,
        };
        peer_streams_as_the_reference(gpu, &case.tasks, case.memory, layout)?;
    }
    Ok(())
}

/// Checksums computed on the device against `ultraep_xfer::checksum` of the same bytes, on
/// states from 16 bytes to 5 MB and on many regions at once.
fn device_checksums_match() -> Result<(), Failed> {
    let gpu = gpu()?;
    let mut random = Random(17);
    for (state_bytes, regions) in [(16u64, 3u32), (4096, 70), (1 << 20, 9), (5 << 20, 2)] {
        let mut ranks = gpu
            .alloc_ranks(&vec![1; regions as usize], 1, state_bytes)
            .map_err(fail)?;
        let mut expected = Vec::new();
        let mut list = Vec::new();
        for rank in 0..regions {
            let bytes: Vec<u8> = (0..state_bytes).map(|_| random.next() as u8).collect();
            gpu.write_region(&mut ranks, rank, Region::Master { index: 0 }, &bytes)
                .map_err(fail)?;
            expected.push(ultraep_xfer::checksum(&bytes));
            // The slot stays zeroed: its sum is that of zeros.
            expected.push(ultraep_xfer::checksum(&vec![0; state_bytes as usize]));
            list.push((rank, Region::Master { index: 0 }));
            list.push((rank, Region::Slot { slot: 0 }));
        }
        let got = gpu.region_checksums(&ranks, &list).map_err(fail)?;
        check(
            got == expected,
            &format!("device checksums of {state_bytes}-byte states differ from the CPU's"),
        )?;
    }
    Ok(())
}

fn reduction_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    let topology = Preset::HgxH100.topology(1).map_err(fail)?;
    let layout = ExpertLayout::contiguous(8, 4).map_err(fail)?;
    let (_, plan) = planned(5);
    let replicas = ReplicaSet::from_plan(&plan, &layout, &topology).map_err(fail)?;
    let floats = 65536usize;
    let state = ExpertState::opaque(floats as u64 * 4).map_err(fail)?;
    let schedule = TransferSchedule::build(&replicas, &state, &topology, TransferConfig::default())
        .map_err(fail)?;
    let rank_floats = common::REGIONS_PER_RANK * floats;
    let address = |rank: u32, region: Region| common::region_address(rank, region, floats);
    let (jobs, list) = reduce_jobs(&schedule, address).map_err(fail)?;
    let mut random = Random(9);
    let memory: Vec<f32> = (0..8 * rank_floats)
        .map(|_| (random.next() % 20001) as f32 * 10f32.powi((random.next() % 9) as i32 - 4) - 1.0)
        .collect();
    let mut expected = memory.clone();
    reduce(&jobs, &list, &mut expected).map_err(fail)?;
    let mut got = memory;
    gpu.reduce(&jobs, &list, &mut got).map_err(fail)?;
    check(
        got.iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "gradient reduction differs from the CPU reference bit for bit",
    )
}

/// The device's arrival wait against `reference::arrivals::first_missing`: with every tile
/// arrived it reports none at once; with tiles missing (some still at the previous round, some
/// never written) it waits out its deadline and names the smallest missing pair, as the CPU does.
fn arrivals_await_matches() -> Result<(), Failed> {
    let gpu = gpu()?;
    let layout = IpcLayout {
        masters: 1,
        slots: 6,
        state_bytes: 1 << 20,
        tile_bytes: 32 << 10,
    };
    let memory = gpu.alloc_ipc_rank(layout).map_err(fail)?;
    let words = gpu.own_pointers(&memory).words;
    let tiles = layout.tiles();
    let round = 9u64;
    let mut random = Random(23);
    for case in 0..6 {
        let mut values = vec![round; (u64::from(layout.slots) * tiles) as usize];
        // Case 0 has everything arrived; later cases miss more and more tiles.
        for _ in 0..case * case {
            let at = (random.next() % values.len() as u64) as usize;
            values[at] = if random.next().is_multiple_of(2) {
                round - 1
            } else {
                0
            };
        }
        let bytes: Vec<u8> = values.iter().flat_map(|word| word.to_le_bytes()).collect();
        gpu.write_device(words, &bytes).map_err(fail)?;
        for slots in [vec![0u16, 1, 2, 3, 4, 5], vec![5, 2], vec![3]] {
            let wide: Vec<u32> = slots.iter().map(|&slot| u32::from(slot)).collect();
            let expected = first_missing(&values, &wide, tiles as u32, round);
            let got = gpu
                .await_arrivals(words, &slots, layout, round, Duration::from_millis(2))
                .map_err(fail)?;
            check(
                got == expected,
                &format!(
                    "case {case}, slots {slots:?}: the device found {got:?}, the CPU {expected:?}"
                ),
            )?;
        }
    }
    check(
        gpu.await_arrivals(words, &[6], layout, round, Duration::from_millis(2))
            .is_err(),
        "a wait on a slot the layout lacks must be refused",
    )
}

/// Every trial: a name and its body.
const TRIALS: [(&str, isolated_trials::Body); 9] = [
    ("gpu_histogram_matches_the_reference", histogram_matches),
    ("gpu_reroute_matches_the_reference", reroute_matches),
    (
        "gpu_chunked_reroute_matches_the_reference",
        chunked_reroute_matches,
    ),
    (
        "gpu_tile_streaming_matches_the_reference",
        streaming_matches,
    ),
    (
        "gpu_wide_fanout_streaming_matches_the_reference",
        wide_fanout_streaming_matches,
    ),
    (
        "gpu_peer_streaming_matches_the_reference",
        peer_streaming_matches,
    ),
    ("gpu_device_checksums_match_the_cpu", device_checksums_match),
    ("gpu_reduction_matches_the_reference", reduction_matches),
    (
        "gpu_arrivals_await_matches_the_reference",
        arrivals_await_matches,
    ),
];

fn main() {
    isolated_trials::run_child_if_asked(&TRIALS);
    let args = Arguments::from_args();
    let required = std::env::var("ULTRAEP_REQUIRE_GPU").is_ok_and(|value| value == "1");
    let available = driver_available() && Gpu::open(0).is_ok();
    let ignore = !available && !required;
    // One at a time, each in a process (and so a CUDA context) of its own.
    let mut args = args;
    args.test_threads = Some(1);
    libtest_mimic::run(&args, isolated_trials::isolated(&TRIALS, ignore)).exit();
}
