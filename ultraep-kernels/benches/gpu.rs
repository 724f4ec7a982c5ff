//! GPU benchmarks: tile streaming and device checksums against a device-to-device copy of the
//! same bytes, and the histogram and reroute kernels, all measured in one run. Prints markdown
//! rows for `docs/gpu-results.md`. Without a GPU it says so and exits (with `ULTRAEP_REQUIRE_GPU=1`, it
//! fails instead).

use std::time::Instant;

use ultraep_kernels::KernelError;
use ultraep_kernels::gpu::Gpu;
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
            let replicas = Fanout::new(0, 0, 0, (1..=destinations).map(|r| (r, 0)).collect())
                .and_then(|fanout| ReplicaSet::new(vec![fanout]))
                .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
            let config = TransferConfig {
                allow_relays: relays,
                ..TransferConfig::default()
            };
            let schedule = TransferSchedule::build(&replicas, &state, &topology, config)
                .map_err(|e| KernelError::InvalidInput(e.to_string()))?;
            if relays && schedule.relayed_count() == 0 {
                continue;
            }
            let tasks = TileTaskList::build(&schedule);
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
            let moved = (bytes * u64::from(destinations)) as f64;
            println!(
                "| {destinations} | {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.2} |",
                if relays { "relayed" } else { "direct" },
                tasks.tasks().len(),
                copy_seconds * 1e6,
                moved / copy_seconds / 1e9,
                stream_seconds * 1e6,
                moved / stream_seconds / 1e9,
                copy_seconds / stream_seconds
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
        .and_then(|()| checksums(&gpu))
        .and_then(|()| histogram_and_reroute(&gpu))
    {
        eprintln!("GPU benchmark failed: {error}");
        std::process::exit(1);
    }
}
