//! The CUDA C++ sources of the kernels, compiled at run time by NVRTC.
//!
//! Header-free on purpose: no CUDA include paths are needed, so any NVRTC compiles them. The
//! structures mirror the `#[repr(C)]` descriptors of `ultraep-xfer` and of this crate field for
//! field. Every kernel is deterministic: the same input gives the same output bit for bit.

/// One kernel source and the entry points it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// A short name, e.g. "histogram".
    pub name: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// The `extern "C"` functions it defines.
    pub entry_points: &'static [&'static str],
}

/// Router top-k ids of one rank's tokens -> per-expert counts. `counts` has `experts + 1` entries,
/// zeroed before launch; the last counts ids that are out of range, so a bad input is reported,
/// not miscounted. Shared memory: `experts * 4` bytes.
pub const HISTOGRAM: KernelSource = KernelSource {
    name: "histogram",
    entry_points: &["ultraep_histogram"],
    source: r#"
extern "C" __global__ void ultraep_histogram(const unsigned int* ids, unsigned int n,
                                             unsigned int experts, unsigned int* counts) {
    extern __shared__ unsigned int local[];
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x) local[e] = 0;
    __syncthreads();
    unsigned int invalid = 0;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int e = ids[i];
        if (e < experts) atomicAdd(&local[e], 1u); else ++invalid;
    }
    if (invalid) atomicAdd(&counts[experts], invalid);
    __syncthreads();
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x)
        if (local[e]) atomicAdd(&counts[e], local[e]);
}
"#,
};

/// Rewrites every (token, k) expert id of one source rank to the instance the plan's split assigns:
/// the `j`-th occurrence of expert `e`, in token order, goes to the first entry of `e` whose
/// cumulative `end` exceeds `j`. One block per source; occurrences are ranked in tiles of
/// `blockDim.x` with shared counters, so the result does not depend on scheduling. Ids out of
/// range, or occurrences beyond the expert's split, become `0xffffffff` and are counted in
/// `invalid`. Shared memory: `experts * 4 + blockDim.x * 4` bytes.
pub const REROUTE: KernelSource = KernelSource {
    name: "reroute",
    entry_points: &["ultraep_reroute"],
    source: r#"
struct RerouteEntry { unsigned int end; unsigned int instance; };

extern "C" __global__ void ultraep_reroute(const unsigned int* ids, unsigned int n, unsigned int experts,
                                           const unsigned int* offsets, const RerouteEntry* entries,
                                           unsigned int* out, unsigned int* invalid) {
    extern __shared__ unsigned int shared[];
    unsigned int* seen = shared;
    unsigned int* tile = shared + experts;
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x) seen[e] = 0;
    __syncthreads();
    for (unsigned int base = 0; base < n; base += blockDim.x) {
        unsigned int i = base + threadIdx.x;
        unsigned int e = i < n ? ids[i] : 0xffffffffu;
        tile[threadIdx.x] = e;
        __syncthreads();
        if (i < n) {
            unsigned int result = 0xffffffffu;
            if (e < experts) {
                unsigned int before = 0;
                for (unsigned int j = 0; j < threadIdx.x; ++j) before += (tile[j] == e);
                unsigned int occurrence = seen[e] + before;
                for (unsigned int k = offsets[e]; k < offsets[e + 1]; ++k) {
                    if (occurrence < entries[k].end) { result = entries[k].instance; break; }
                }
            }
            if (result == 0xffffffffu) atomicAdd(invalid, 1u);
            out[i] = result;
        }
        __syncthreads();
        unsigned int in_tile = min(blockDim.x, n - base);
        for (unsigned int x = threadIdx.x; x < experts; x += blockDim.x) {
            unsigned int count = 0;
            for (unsigned int j = 0; j < in_tile; ++j) count += (tile[j] == x);
            seen[x] += count;
        }
        __syncthreads();
    }
}
"#,
};

/// The tile task descriptors (the `#[repr(C)]` `TileTask` and `TileDestination` of
/// `ultraep-xfer`, field for field) and the region address both tile streamers compute: one
/// definition, spliced into each kernel's source.
macro_rules! tile_descriptors {
    () => {
        r#"
struct TileTask {
    unsigned int source_rank; unsigned int source_region; unsigned long long offset;
    unsigned int bytes; unsigned int first_destination; unsigned int destination_count;
    unsigned int wait_flag; unsigned int wait_count; unsigned int piece;
};
struct TileDestination { unsigned int rank; unsigned int region; unsigned int signal_flag; unsigned int expert; };
struct __align__(16) Vec16 { unsigned int x, y, z, w; };

__device__ unsigned char* region_ptr(unsigned int rank, unsigned int region,
                                     const unsigned long long* master_bases,
                                     const unsigned long long* slot_bases,
                                     unsigned long long state_bytes) {
    if (region >= 0x80000000u)
        return (unsigned char*)slot_bases[rank] + (unsigned long long)(region & 0x7fffffffu) * state_bytes;
    return (unsigned char*)master_bases[rank] + (unsigned long long)region * state_bytes;
}
"#
    };
}

/// The persistent tile streamer: blocks take tile tasks in list order from an atomic counter,
/// wait (thread 0, acquire) until a forwarded piece's flag counts all its tiles (at most 10 s by
/// the GPU's global timer: past that it sets `next_task[1]`, and every block stops taking tasks,
/// so a wait that can never end is reported, not spun on forever), load each tile
/// once with 16-byte loads and store it to every destination, make the stores visible
/// system-wide, then bump the destinations' flags. Regions: masters at `master_bases[rank] +
/// index * state_bytes`, slots at `slot_bases[rank] + slot * state_bytes`; `state_bytes` and tile
/// offsets are multiples of 16.
pub const TILE_STREAM: KernelSource = KernelSource {
    name: "tile_stream",
    entry_points: &["ultraep_tile_stream"],
    source: concat!(
        tile_descriptors!(),
        r#"
extern "C" __global__ void ultraep_tile_stream(const TileTask* tasks, unsigned int task_count,
                                               const TileDestination* destinations,
                                               const unsigned long long* master_bases,
                                               const unsigned long long* slot_bases,
                                               unsigned long long state_bytes,
                                               unsigned int* flags, unsigned int* next_task) {
    __shared__ unsigned int claimed;
    __shared__ unsigned int gave_up;
    volatile unsigned int* timed_out = next_task + 1;
    while (true) {
        if (threadIdx.x == 0) claimed = *timed_out ? task_count : atomicAdd(next_task, 1u);
        __syncthreads();
        unsigned int t = claimed;
        __syncthreads();
        if (t >= task_count) return;
        TileTask task = tasks[t];
        if (task.wait_flag != 0xffffffffu) {
            if (threadIdx.x == 0) {
                volatile unsigned int* flag = flags + task.wait_flag;
                unsigned long long start, now;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
                gave_up = 0;
                while (*flag < task.wait_count) {
                    __nanosleep(64);
                    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
                    if (now - start > 10000000000ull || *timed_out) {
                        atomicExch((unsigned int*)timed_out, 1u);
                        gave_up = 1;
                        break;
                    }
                }
                __threadfence_system();
            }
            __syncthreads();
            if (gave_up) return;
        }
        const unsigned char* source = region_ptr(task.source_rank, task.source_region, master_bases,
                                                 slot_bases, state_bytes) + task.offset;
        unsigned int vectors = task.bytes / 16;
        for (unsigned int v = threadIdx.x; v < vectors; v += blockDim.x) {
            Vec16 value = ((const Vec16*)source)[v];
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                unsigned char* target = region_ptr(to.rank, to.region, master_bases, slot_bases,
                                                   state_bytes) + task.offset;
                ((Vec16*)target)[v] = value;
            }
        }
        for (unsigned int b = vectors * 16 + threadIdx.x; b < task.bytes; b += blockDim.x) {
            unsigned char value = source[b];
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                region_ptr(to.rank, to.region, master_bases, slot_bases, state_bytes)[task.offset + b] = value;
            }
        }
        __threadfence_system();
        __syncthreads();
        if (threadIdx.x == 0) {
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                unsigned int flag = destinations[task.first_destination + d].signal_flag;
                if (flag != 0xffffffffu) atomicAdd(flags + flag, 1u);
            }
        }
    }
}
"#
    ),
};

/// Gradient reduction in the documented order, one thread per FP32 value and no atomics: a job
/// without an owner adds its replicas to the master in list order (ascending rank); a job with an
/// owner sums the owner's value and then the others' in list order, and adds that to the master.
/// Every replica value is zeroed after it is read, ready for the next layer.
pub const GRADIENT_REDUCE: KernelSource = KernelSource {
    name: "gradient_reduce",
    entry_points: &["ultraep_gradient_reduce"],
    source: r#"
struct ReduceJob {
    unsigned long long master; unsigned int first_replica; unsigned int replica_count;
    unsigned int owner; unsigned int floats;
};

extern "C" __global__ void ultraep_gradient_reduce(const ReduceJob* jobs, unsigned int job_count,
                                                   const unsigned long long* replicas) {
    for (unsigned int j = blockIdx.x; j < job_count; j += gridDim.x) {
        ReduceJob job = jobs[j];
        float* master = (float*)job.master;
        for (unsigned int i = threadIdx.x; i < job.floats; i += blockDim.x) {
            if (job.owner == 0xffffffffu) {
                float sum = master[i];
                for (unsigned int r = 0; r < job.replica_count; ++r) {
                    float* replica = (float*)replicas[job.first_replica + r];
                    sum += replica[i];
                    replica[i] = 0.0f;
                }
                master[i] = sum;
            } else {
                float* owner = (float*)replicas[job.first_replica + job.owner];
                float partial = owner[i];
                owner[i] = 0.0f;
                for (unsigned int r = 0; r < job.replica_count; ++r) {
                    if (r == job.owner) continue;
                    float* replica = (float*)replicas[job.first_replica + r];
                    partial += replica[i];
                    replica[i] = 0.0f;
                }
                master[i] = master[i] + partial;
            }
        }
    }
}
"#,
};

/// The reroute of [`REROUTE`] spread over many blocks, in three deterministic passes over chunks of
/// `chunk` ids (one block per chunk):
///
/// 1. `ultraep_reroute_count`: every chunk counts its ids per expert into `counts[chunk][e]`.
/// 2. `ultraep_reroute_scan`: per expert, an exclusive prefix sum over the chunks, in place, so
///    `counts[chunk][e]` becomes the occurrences of `e` before the chunk.
/// 3. `ultraep_reroute_assign`: every chunk ranks its ids in sub-tiles of `blockDim.x`: within a
///    warp with `__match_any_sync` (the lanes before with the same expert), across the warps of the
///    sub-tile through per-warp counts in shared memory, across sub-tiles with running counters
///    seeded from pass 2. The occurrence then picks the entry as in [`REROUTE`].
///
/// No ordering depends on scheduling, so the result equals the single-block kernel's. Shared
/// memory of pass 1: `experts * 4` bytes; of pass 3: `experts * 4 * (1 + blockDim.x / 32)`.
pub const REROUTE_CHUNKED: KernelSource = KernelSource {
    name: "reroute_chunked",
    entry_points: &[
        "ultraep_reroute_count",
        "ultraep_reroute_scan",
        "ultraep_reroute_assign",
    ],
    source: r#"
struct RerouteEntry { unsigned int end; unsigned int instance; };

extern "C" __global__ void ultraep_reroute_count(const unsigned int* ids, unsigned int n,
                                                 unsigned int experts, unsigned int chunk,
                                                 unsigned int* counts) {
    extern __shared__ unsigned int local[];
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x) local[e] = 0;
    __syncthreads();
    unsigned long long start = (unsigned long long)blockIdx.x * chunk;
    unsigned long long end = min(start + chunk, (unsigned long long)n);
    for (unsigned long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        unsigned int e = ids[i];
        if (e < experts) atomicAdd(&local[e], 1u);
    }
    __syncthreads();
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x)
        counts[(unsigned long long)blockIdx.x * experts + e] = local[e];
}

extern "C" __global__ void ultraep_reroute_scan(unsigned int* counts, unsigned int chunks,
                                                unsigned int experts) {
    unsigned int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= experts) return;
    unsigned int running = 0;
    for (unsigned int c = 0; c < chunks; ++c) {
        unsigned long long at = (unsigned long long)c * experts + e;
        unsigned int here = counts[at];
        counts[at] = running;
        running += here;
    }
}

extern "C" __global__ void ultraep_reroute_assign(const unsigned int* ids, unsigned int n,
                                                  unsigned int experts, unsigned int chunk,
                                                  const unsigned int* before_chunk,
                                                  const unsigned int* offsets,
                                                  const RerouteEntry* entries,
                                                  unsigned int* out, unsigned int* invalid) {
    extern __shared__ unsigned int shared[];
    unsigned int warps = blockDim.x / 32;
    unsigned int* seen = shared;
    unsigned int* warp_counts = shared + experts;
    unsigned int lane = threadIdx.x & 31u;
    unsigned int warp = threadIdx.x >> 5;
    for (unsigned int e = threadIdx.x; e < experts; e += blockDim.x)
        seen[e] = before_chunk[(unsigned long long)blockIdx.x * experts + e];
    unsigned long long start = (unsigned long long)blockIdx.x * chunk;
    unsigned long long end = min(start + chunk, (unsigned long long)n);
    unsigned int bad = 0;
    for (unsigned long long base = start; base < end; base += blockDim.x) {
        for (unsigned int x = threadIdx.x; x < warps * experts; x += blockDim.x) warp_counts[x] = 0;
        __syncthreads();
        unsigned long long i = base + threadIdx.x;
        unsigned int e = i < end ? ids[i] : 0xffffffffu;
        bool valid = i < end && e < experts;
        unsigned int key = valid ? e : 0xffffffffu;
        unsigned int same = __match_any_sync(0xffffffffu, key);
        unsigned int rank_in_warp = __popc(same & ((1u << lane) - 1u));
        if (valid && (unsigned int)(__ffs(same) - 1) == lane)
            warp_counts[warp * experts + e] = __popc(same);
        __syncthreads();
        if (i < end) {
            unsigned int result = 0xffffffffu;
            if (valid) {
                unsigned int occurrence = seen[e] + rank_in_warp;
                for (unsigned int w = 0; w < warp; ++w) occurrence += warp_counts[w * experts + e];
                for (unsigned int k = offsets[e]; k < offsets[e + 1]; ++k) {
                    if (occurrence < entries[k].end) { result = entries[k].instance; break; }
                }
            }
            if (result == 0xffffffffu) ++bad;
            out[i] = result;
        }
        __syncthreads();
        for (unsigned int x = threadIdx.x; x < experts; x += blockDim.x) {
            unsigned int sum = 0;
            for (unsigned int w = 0; w < warps; ++w) sum += warp_counts[w * experts + x];
            seen[x] += sum;
        }
        __syncthreads();
    }
    if (bad) atomicAdd(invalid, bad);
}
"#,
};

/// Tile streaming into peer processes' memory (CUDA IPC, or one device's ranks): every rank's
/// masters, slots and signal words are reached through base-pointer tables, which may hold
/// pointers opened from peers' IPC handles. A sender stores into a slot only once the slot's
/// owner has opened it for this transfer round (its open word holds the round); after a tile's
/// bytes, a system-wide fence, then the tile's arrival word takes the round, so that whoever sees
/// the word sees the bytes. A relay forwards a tile of its own slot once that tile's arrival word
/// holds the round, reading it with volatile loads. A wait longer than `wait_ns` (on the global
/// timer) sets `status` to 1, which ends every block's waits and the kernel: never a hang.
///
/// Signal words of a rank, 64-bit: `slots x tiles` arrival words, then `slots` open words.
pub const TILE_STREAM_PEER: KernelSource = KernelSource {
    name: "tile_stream_peer",
    entry_points: &["ultraep_tile_stream_peer"],
    source: concat!(
        tile_descriptors!(),
        r#"
__device__ unsigned long long global_ns() {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    return now;
}

/* Waits until the word holds `round`; false if `wait_ns` passed first, or another block failed. */
__device__ bool wait_round(const unsigned long long* word, unsigned long long round,
                           unsigned long long wait_ns, const unsigned int* status) {
    volatile const unsigned long long* w = word;
    unsigned long long started = global_ns();
    while (*w != round) {
        if (*(volatile const unsigned int*)status != 0u) return false;
        if (global_ns() - started > wait_ns) return false;
        __nanosleep(128);
    }
    __threadfence_system();
    return true;
}

extern "C" __global__ void ultraep_tile_stream_peer(const TileTask* tasks, unsigned int task_count,
                                                    const TileDestination* destinations,
                                                    const unsigned long long* master_bases,
                                                    const unsigned long long* slot_bases,
                                                    const unsigned long long* word_bases,
                                                    unsigned long long state_bytes,
                                                    unsigned int tile_bytes,
                                                    unsigned int tiles_per_state,
                                                    unsigned int slots_per_rank,
                                                    unsigned long long round,
                                                    unsigned long long wait_ns,
                                                    unsigned int* next_task,
                                                    unsigned int* status) {
    __shared__ unsigned int claimed;
    __shared__ unsigned int ok;
    while (true) {
        if (threadIdx.x == 0) claimed = atomicAdd(next_task, 1u);
        __syncthreads();
        unsigned int t = claimed;
        __syncthreads();
        if (t >= task_count || *(volatile unsigned int*)status != 0u) return;
        TileTask task = tasks[t];
        unsigned int tile = (unsigned int)(task.offset / tile_bytes);
        if (threadIdx.x == 0) {
            ok = 1u;
            if (task.wait_flag != 0xffffffffu && task.source_region >= 0x80000000u) {
                unsigned int slot = task.source_region & 0x7fffffffu;
                const unsigned long long* arrival = (const unsigned long long*)word_bases[task.source_rank]
                    + (unsigned long long)slot * tiles_per_state + tile;
                if (!wait_round(arrival, round, wait_ns, status)) ok = 0u;
            }
            for (unsigned int d = 0; ok && d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                unsigned int slot = to.region & 0x7fffffffu;
                const unsigned long long* open = (const unsigned long long*)word_bases[to.rank]
                    + (unsigned long long)slots_per_rank * tiles_per_state + slot;
                if (!wait_round(open, round, wait_ns, status)) ok = 0u;
            }
            if (!ok) atomicExch(status, 1u);
        }
        __syncthreads();
        if (!ok) return;
        const unsigned char* source = region_ptr(task.source_rank, task.source_region, master_bases,
                                                  slot_bases, state_bytes) + task.offset;
        unsigned int vectors = task.bytes / 16;
        bool relayed = task.wait_flag != 0xffffffffu;
        for (unsigned int v = threadIdx.x; v < vectors; v += blockDim.x) {
            Vec16 value;
            if (relayed) {
                /* Bytes another process stored into this rank's slot: read past every cache. */
                volatile const unsigned int* from = (volatile const unsigned int*)(source + 16 * (unsigned long long)v);
                value.x = from[0]; value.y = from[1]; value.z = from[2]; value.w = from[3];
            } else {
                value = ((const Vec16*)source)[v];
            }
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                unsigned char* target = region_ptr(to.rank, to.region, master_bases, slot_bases,
                                                    state_bytes) + task.offset;
                ((Vec16*)target)[v] = value;
            }
        }
        for (unsigned int b = vectors * 16 + threadIdx.x; b < task.bytes; b += blockDim.x) {
            unsigned char value = relayed ? ((volatile const unsigned char*)source)[b] : source[b];
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                region_ptr(to.rank, to.region, master_bases, slot_bases, state_bytes)[task.offset + b] = value;
            }
        }
        __threadfence_system();
        __syncthreads();
        if (threadIdx.x == 0) {
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                unsigned int slot = to.region & 0x7fffffffu;
                volatile unsigned long long* arrival = (unsigned long long*)word_bases[to.rank]
                    + (unsigned long long)slot * tiles_per_state + tile;
                *arrival = round;
            }
            __threadfence_system();
        }
    }
}
"#
    ),
};

/// Every kernel.
pub const ALL: [KernelSource; 6] = [
    HISTOGRAM,
    REROUTE,
    REROUTE_CHUNKED,
    TILE_STREAM,
    GRADIENT_REDUCE,
    TILE_STREAM_PEER,
];
