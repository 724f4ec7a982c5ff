//! GPU benchmarks: tile streaming (in-process and peer), and device checksums, against a
//! device-to-device copy of the same bytes, and the histogram and reroute kernels, all measured in one run. Prints markdown
//! rows for `docs/gpu-results.md`. Without a GPU it says so and exits (with `ULTRAEP_REQUIRE_GPU=1`, it
//! fails instead).

use std::time::{Duration, Instant};

use ultraep_kernels::KernelError;
use ultraep_kernels::gpu::Gpu;
use ultraep_kernels::ipc::IpcLayout;
use ultraep_kernels::reference::reroute::RerouteTable;
use ultraep_kernels::reference::stream::RankMemory;
use ultraep_plan::{Balancer, ExpertLayout, LoadMatrix, PlanConfig, Planner, RankDomains};
use ultraep_topo::Preset;
use ultraep_xfer::{
    ExpertState, Fanout, Region, ReplicaSet, TileTaskList, TransferConfig, TransferSchedule,
};

/// Median seconds of `reps` runs of `work`, each synchronised.
fn median_seconds(
    gpu: &Gpu,
    reps: usize,
    mut work: impl FnMut() -> Result<(), KernelError>,
) -> Result<f64, KernelError> {
    work()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        gpu.stream()
            .synchronize()
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let start = Instant::now();
        work()?;
        gpu.stream()
            .synchronize()
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        samples.push(start.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// The tile tasks of one master (rank 0's master 0) to slot 0 of ranks `1..=destinations`,
/// direct or relayed; `None` for a relayed route the schedule does not take.
fn fanout_tasks(
    destinations: u32,
    relays: bool,
    state: &ExpertState,
    topology: &ultraep_topo::Topology,
) -> Result<Option<TileTaskList>, KernelError> {
    let replicas = Fanout::new(0, 0, 0, (1..=destinations).map(|r| (r, 0)).collect())
        .and_then(|fanout| ReplicaSet::new(vec![fanout]))
        .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
    let config = TransferConfig {
        allow_relays: relays,
        ..TransferConfig::default()
    };
    let schedule = TransferSchedule::build(&replicas, state, topology, config)
        .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
    Ok((!relays || schedule.relayed_count() > 0).then(|| TileTaskList::build(&schedule)))
}

/// One row of a streamer's table: the copy's and the streamer's time and rate for the same bytes,
/// and the streamer's speed as a share of the copy's.
fn print_against_copy(
    destinations: u32,
    relays: bool,
    tasks: &TileTaskList,
    bytes: u64,
    copy_seconds: f64,
    streamer_seconds: f64,
) {
    let moved = (bytes * u64::from(destinations)) as f64;
    println!(
        "| {destinations} | {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.2} |",
        if relays { "relayed" } else { "direct" },
        tasks.tasks().len(),
        copy_seconds * 1e6,
        moved / copy_seconds / 1e9,
        streamer_seconds * 1e6,
        moved / streamer_seconds / 1e9,
        copy_seconds / streamer_seconds
    );
}

fn tile_streaming(gpu: &Gpu) -> Result<(), KernelError> {
    let state = ExpertState::swiglu_fp8(7168, 2048); // 44.05 MB, a multiple of 16
    let bytes = state.bytes();
    let topology = Preset::HgxH100
        .topology(2)
        .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
    println!(
        "| destinations | route | tiles | copy (us) | copy GB/s | stream (us) | stream GB/s | stream / copy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for destinations in 1..=8u32 {
        for relays in [false, true] {
            let Some(tasks) = fanout_tasks(destinations, relays, &state, &topology)? else {
                continue;
            };
            let memory: Vec<RankMemory> = (0..=destinations)
                .map(|rank| RankMemory {
                    masters: if rank == 0 {
                        vec![7u8; bytes as usize]
                    } else {
                        Vec::new()
                    },
                    slots: vec![0u8; bytes as usize],
                })
                .collect();
            let mut ranks = gpu.upload_ranks(&memory, bytes)?;
            let mut device_tasks = gpu.upload_tasks(&tasks)?;
            // The launch alone is timed (the counters' read-back is not); one checked run
            // first, so a streamer that gives up is an error, not a fast time.
            gpu.run_tiles(&mut device_tasks, &mut ranks)?;
            let stream_seconds =
                median_seconds(gpu, 10, || gpu.launch_tiles(&mut device_tasks, &mut ranks))?;
            gpu.finish_tiles(&device_tasks)?;
            // The baseline: the same bytes with the driver's device-to-device copy.
            let stream = gpu.stream().clone();
            let (source, rest) = ranks.masters.split_at(1);
            let _ = rest;
            let copy_seconds = median_seconds(gpu, 10, || {
                for slot in ranks.slots.iter_mut().skip(1) {
                    stream
                        .memcpy_dtod(&source[0], slot)
                        .map_err(|e| KernelError::Device(format!("{e:?}")))?;
                }
                Ok(())
            })?;
            print_against_copy(
                destinations,
                relays,
                &tasks,
                bytes,
                copy_seconds,
                stream_seconds,
            );
        }
    }
    Ok(())
}

/// The peer streamer (the CUDA IPC plane's kernel) against the driver's copy of the same bytes,
/// one master to 1-8 destinations, each rank's memory a shareable allocation reached through
/// pointer tables as a peer process's would be. Timed as the plane calls it: the tables'
/// upload, the launch, the synchronisation and the status read, then the device's wait for every
/// destination's arrivals (one read per transfer). On one GPU, every "peer" is memory of that
/// GPU: no NVLink is crossed, so this measures the kernel's copy rate and the per-transfer host
/// cost, not a link.
fn peer_streaming(gpu: &Gpu) -> Result<(), KernelError> {
    let state = ExpertState::swiglu_fp8(7168, 2048);
    let bytes = state.bytes();
    let config = TransferConfig::default();
    let topology = Preset::HgxH100
        .topology(2)
        .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
    println!();
    println!(
        "| destinations | route | tiles | copy (us) | copy GB/s | peer stream + arrivals (us) | peer GB/s | peer / copy speed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let layout = IpcLayout {
        masters: 1,
        slots: 1,
        state_bytes: bytes,
        tile_bytes: config.tile_bytes,
    };
    let owned = (0..=8)
        .map(|_| gpu.alloc_ipc_rank(layout))
        .collect::<Result<Vec<_>, _>>()?;
    let ranks: Vec<_> = owned.iter().map(|rank| gpu.own_pointers(rank)).collect();
    let pattern = vec![7u8; bytes as usize];
    gpu.write_device(ranks[0].masters, &pattern)?;
    // The baseline's buffers, made once for every case.
    let stream = gpu.stream().clone();
    let device = |e| KernelError::Device(format!("{e:?}"));
    let source = stream.clone_htod(&pattern).map_err(device)?;
    let mut copy_to = stream.alloc_zeros::<u8>(bytes as usize).map_err(device)?;
    let mut round = 0u64;
    for destinations in [1u32, 2, 4, 8] {
        for relays in [false, true] {
            let Some(tasks) = fanout_tasks(destinations, relays, &state, &topology)? else {
                continue;
            };
            let mut samples = Vec::new();
            for _ in 0..11 {
                round += 1;
                for rank in &ranks[1..=destinations as usize] {
                    gpu.write_word(rank.words, layout.open_word(0), round)?;
                }
                gpu.stream()
                    .synchronize()
                    .map_err(|e| KernelError::Device(format!("{e:?}")))?;
                let start = Instant::now();
                gpu.stream_peer_tiles(&tasks, &ranks, layout, round, Duration::from_secs(10))?;
                for rank in &ranks[1..=destinations as usize] {
                    if let Some(pair) =
                        gpu.await_arrivals(rank.words, &[0], layout, round, Duration::from_secs(1))?
                    {
                        return Err(KernelError::Device(format!("tile {pair} never arrived")));
                    }
                }
                samples.push(start.elapsed().as_secs_f64());
            }
            // The first run pays for loading the kernels.
            samples.remove(0);
            samples.sort_by(f64::total_cmp);
            let peer_seconds = samples[samples.len() / 2];
            let copy_seconds = median_seconds(gpu, 10, || {
                for _ in 0..destinations {
                    stream.memcpy_dtod(&source, &mut copy_to).map_err(device)?;
                }
                Ok(())
            })?;
            print_against_copy(
                destinations,
                relays,
                &tasks,
                bytes,
                copy_seconds,
                peer_seconds,
            );
        }
    }
    Ok(())
}

fn histogram_and_reroute(gpu: &Gpu) -> Result<(), KernelError> {
    println!(
        "\n| experts | ids | histogram (us) | histogram GB/s | reroute (us) | reroute GB/s | chunked reroute (us) | chunked GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for experts in [64u32, 128, 256] {
        let ranks = 64u32;
        let mut loads = vec![0u32; (ranks * experts) as usize];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for (i, load) in loads.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let expert = (i as u32) % experts;
            // 8192 tokens x 8 per rank, skewed towards low experts.
            *load = (8192 * 8 / experts) * 2 / (1 + expert % 4) + (state % 8) as u32;
        }
        let layout = ExpertLayout::balanced_blocks(ranks, experts)
            .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
        let mut planner = Planner::new(
            layout,
            RankDomains::single(ranks).map_err(|e| KernelError::InvalidInput(e.to_string()))?,
            2,
            PlanConfig::default(),
        )
        .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
        let matrix = LoadMatrix::new(&loads, ranks as usize, experts as usize)
            .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
        let plan = planner
            .plan(matrix)
            .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
        let table = RerouteTable::for_source(&plan, matrix, 0)?;
        let ids: Vec<u32> = matrix
            .row(0)
            .iter()
            .enumerate()
            .flat_map(|(e, &n)| std::iter::repeat_n(e as u32, n as usize))
            .collect();
        let mut resident = gpu.upload_reroute(&ids, &table)?;
        let stream = gpu.stream().clone();
        let ids_device = stream
            .clone_htod(&ids)
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let mut counts = stream
            .alloc_zeros::<u32>(experts as usize + 1)
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let mut out = stream
            .alloc_zeros::<u32>(ids.len())
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let mut invalid = stream
            .alloc_zeros::<u32>(1)
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let n = ids.len() as u32;
        let histogram = median_seconds(gpu, 50, || {
            gpu.launch_histogram(&ids_device, n, experts, &mut counts)
        })?;
        let reroute = median_seconds(gpu, 50, || {
            gpu.launch_reroute(&resident, &mut out, &mut invalid)
        })?;
        let chunked = median_seconds(gpu, 50, || {
            gpu.launch_reroute_chunked(&mut resident, &mut out, &mut invalid)
        })?;
        let bytes = (ids.len() * 4) as f64;
        println!(
            "| {experts} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} |",
            ids.len(),
            histogram * 1e6,
            bytes / histogram / 1e9,
            reroute * 1e6,
            2.0 * bytes / reroute / 1e9,
            chunked * 1e6,
            2.0 * bytes / chunked / 1e9
        );
    }
    Ok(())
}

/// Checksums of expert states on the device against a device-to-device copy of the same bytes:
/// the checksum reads each byte once, the copy reads and writes it.
fn checksums(gpu: &Gpu) -> Result<(), KernelError> {
    let state = ExpertState::swiglu_fp8(7168, 2048);
    let bytes = state.bytes();
    println!();
    println!(
        "| regions | checksum (us) | checksum GB/s read | copy (us) | copy GB/s | checksum / copy time |"
    );
    println!("|---|---|---|---|---|---|");
    for regions in [1u32, 8] {
        let mut ranks = gpu.alloc_ranks(&vec![1; regions as usize + 1], 1, bytes)?;
        let pattern: Vec<u8> = (0..bytes)
            .map(|i| ((i * 2_654_435_761) >> 13) as u8)
            .collect();
        for rank in 0..=regions {
            gpu.write_region(&mut ranks, rank, Region::Master { index: 0 }, &pattern)?;
        }
        let list: Vec<(u32, Region)> = (1..=regions)
            .map(|rank| (rank, Region::Master { index: 0 }))
            .collect();
        let sums = gpu.region_checksums(&ranks, &list)?;
        if sums
            .iter()
            .any(|&sum| sum != ultraep_xfer::checksum(&pattern))
        {
            return Err(KernelError::Device(
                "a device checksum differs from the CPU's".into(),
            ));
        }
        let checksum_seconds =
            median_seconds(gpu, 10, || gpu.region_checksums(&ranks, &list).map(drop))?;
        let stream = gpu.stream().clone();
        let (source, rest) = ranks.masters.split_at_mut(1);
        let copy_seconds = median_seconds(gpu, 10, || {
            for master in rest.iter_mut() {
                stream
                    .memcpy_dtod(&source[0], master)
                    .map_err(|e| KernelError::Device(format!("{e:?}")))?;
            }
            Ok(())
        })?;
        let total = (bytes * u64::from(regions)) as f64;
        println!(
            "| {regions} | {:.1} | {:.0} | {:.1} | {:.0} | {:.2} |",
            checksum_seconds * 1e6,
            total / checksum_seconds / 1e9,
            copy_seconds * 1e6,
            total / copy_seconds / 1e9,
            checksum_seconds / copy_seconds
        );
    }
    Ok(())
}

fn main() {
    let required = std::env::var("ULTRAEP_REQUIRE_GPU").is_ok_and(|value| value == "1");
    let gpu = match Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(error) => {
            println!("no GPU, GPU benchmarks not run: {error}");
            std::process::exit(if required { 1 } else { 0 });
        }
    };
    if let Err(error) = tile_streaming(&gpu)
        .and_then(|()| peer_streaming(&gpu))
        .and_then(|()| checksums(&gpu))
        .and_then(|()| histogram_and_reroute(&gpu))
    {
        eprintln!("GPU benchmark failed: {error}");
        std::process::exit(1);
    }
}
