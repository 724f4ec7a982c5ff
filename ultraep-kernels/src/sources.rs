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
/// `ultraep-xfer`, field for field), the region address both tile streamers compute, and the
/// copy loop they share: one definition, spliced into each kernel's source.
///
/// The copy loop is built for bandwidth. A block stages its task and up to
/// `ULTRAEP_STAGED_TARGETS` destination addresses in shared memory (one descriptor load per
/// destination per tile, not one per store), and each thread keeps `ULTRAEP_LOADS_IN_FLIGHT`
/// independent 16-byte loads in flight before it stores them to every destination. Sources that
/// nothing writes during the run (masters) are read through the read-only path (`ld.global.nc`);
/// relayed sources, written by other blocks or processes during the run, are read at the L2
/// (`ld.global.cg`), past the multiprocessor's incoherent L1.
macro_rules! tile_copy {
    () => {
        r#"
struct TileTask {
    unsigned int source_rank; unsigned int source_region; unsigned long long offset;
    unsigned int bytes; unsigned int first_destination; unsigned int destination_count;
    unsigned int wait_flag; unsigned int wait_count; unsigned int piece;
};
struct TileDestination { unsigned int rank; unsigned int region; unsigned int signal_flag; unsigned int expert; };
struct __align__(16) Vec16 { unsigned int x, y, z, w; };

#define ULTRAEP_LOADS_IN_FLIGHT 4
#define ULTRAEP_STAGED_TARGETS 32

__device__ unsigned char* region_ptr(unsigned int rank, unsigned int region,
                                     const unsigned long long* master_bases,
                                     const unsigned long long* slot_bases,
                                     unsigned long long state_bytes) {
    if (region >= 0x80000000u)
        return (unsigned char*)slot_bases[rank] + (unsigned long long)(region & 0x7fffffffu) * state_bytes;
    return (unsigned char*)master_bases[rank] + (unsigned long long)region * state_bytes;
}

__device__ __forceinline__ Vec16 load_read_only(const Vec16* from) {
    Vec16 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(from));
    return v;
}

__device__ __forceinline__ Vec16 load_at_l2(const Vec16* from) {
    Vec16 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(from) : "memory");
    return v;
}

__device__ __forceinline__ void store_global(Vec16* to, Vec16 v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};"
                 :: "l"(to), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

/* Copies `bytes` from `source` to the first `count` staged targets; every thread of the block
   calls it. Loads are issued in groups of ULTRAEP_LOADS_IN_FLIGHT before any store. */
__device__ void copy_to_targets(const unsigned char* source, unsigned int bytes, bool relayed,
                                unsigned char* const* targets, unsigned int count) {
    const Vec16* from = (const Vec16*)source;
    unsigned int vectors = bytes / 16;
    unsigned int stride = blockDim.x * ULTRAEP_LOADS_IN_FLIGHT;
    for (unsigned int first = threadIdx.x; first < vectors; first += stride) {
        Vec16 values[ULTRAEP_LOADS_IN_FLIGHT];
#pragma unroll
        for (unsigned int u = 0; u < ULTRAEP_LOADS_IN_FLIGHT; ++u) {
            unsigned int v = first + u * blockDim.x;
            if (v < vectors) values[u] = relayed ? load_at_l2(from + v) : load_read_only(from + v);
        }
        for (unsigned int d = 0; d < count; ++d) {
            Vec16* to = (Vec16*)targets[d];
#pragma unroll
            for (unsigned int u = 0; u < ULTRAEP_LOADS_IN_FLIGHT; ++u) {
                unsigned int v = first + u * blockDim.x;
                if (v < vectors) store_global(to + v, values[u]);
            }
        }
    }
    for (unsigned int b = vectors * 16 + threadIdx.x; b < bytes; b += blockDim.x) {
        unsigned char value = ((volatile const unsigned char*)source)[b];
        for (unsigned int d = 0; d < count; ++d) targets[d][b] = value;
    }
}

/* Copies one tile task from its source to all its destinations, staging up to
   ULTRAEP_STAGED_TARGETS destination addresses at a time in `targets` (shared memory); every
   thread of the block calls it, and it ends with a barrier. */
__device__ void copy_task(const TileTask& task, const TileDestination* destinations,
                          const unsigned long long* master_bases,
                          const unsigned long long* slot_bases, unsigned long long state_bytes,
                          bool relayed, unsigned char** targets) {
    const unsigned char* source = region_ptr(task.source_rank, task.source_region, master_bases,
                                             slot_bases, state_bytes) + task.offset;
    for (unsigned int first = 0; first < task.destination_count; first += ULTRAEP_STAGED_TARGETS) {
        unsigned int count = min(task.destination_count - first, (unsigned int)ULTRAEP_STAGED_TARGETS);
        if (threadIdx.x < count) {
            TileDestination to = destinations[task.first_destination + first + threadIdx.x];
            targets[threadIdx.x] = region_ptr(to.rank, to.region, master_bases, slot_bases,
                                              state_bytes) + task.offset;
        }
        __syncthreads();
        copy_to_targets(source, task.bytes, relayed, targets, count);
        __syncthreads();
    }
}
"#
    };
}

/// The persistent tile streamer: blocks take tile tasks in list order from an atomic counter,
/// wait (thread 0, acquire) until a forwarded piece's flag counts all its tiles (at most 10 s by
/// the GPU's global timer: past that it sets `next_task[1]`, and every block stops taking tasks,
/// so a wait that can never end is reported, not spun on forever), copy each tile once from its
/// source to every destination (the shared copy loop above), and bump the destinations' flags.
/// Only a tile that signals a flag pays for a fence, and one thread fences after the block's
/// barrier (a fence orders what its thread has observed, the barrier included): the kernel's end
/// publishes everything else. Regions: masters at `master_bases[rank] + index * state_bytes`,
/// slots at `slot_bases[rank] + slot * state_bytes`; `state_bytes` and tile offsets are
/// multiples of 16.
pub const TILE_STREAM: KernelSource = KernelSource {
    name: "tile_stream",
    entry_points: &["ultraep_tile_stream"],
    source: concat!(
        tile_copy!(),
        r#"
extern "C" __global__ void __launch_bounds__(256)
ultraep_tile_stream(const TileTask* tasks, unsigned int task_count,
                    const TileDestination* destinations,
                    const unsigned long long* master_bases,
                    const unsigned long long* slot_bases,
                    unsigned long long state_bytes,
                    unsigned int* flags, unsigned int* next_task) {
    __shared__ TileTask task;
    __shared__ unsigned int claimed;
    __shared__ unsigned int gave_up;
    __shared__ unsigned char* targets[ULTRAEP_STAGED_TARGETS];
    volatile unsigned int* timed_out = next_task + 1;
    while (true) {
        if (threadIdx.x == 0) {
            claimed = *timed_out ? task_count : atomicAdd(next_task, 1u);
            if (claimed < task_count) task = tasks[claimed];
        }
        __syncthreads();
        if (claimed >= task_count) return;
        bool relayed = task.wait_flag != 0xffffffffu;
        if (relayed) {
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
                __threadfence();
            }
            __syncthreads();
            if (gave_up) return;
        }
        bool signals = false;
        copy_task(task, destinations, master_bases, slot_bases, state_bytes, relayed, targets);
        if (threadIdx.x == 0) {
            for (unsigned int d = 0; d < task.destination_count; ++d)
                signals |= destinations[task.first_destination + d].signal_flag != 0xffffffffu;
            if (signals) {
                __threadfence();
                for (unsigned int d = 0; d < task.destination_count; ++d) {
                    unsigned int flag = destinations[task.first_destination + d].signal_flag;
                    if (flag != 0xffffffffu) atomicAdd(flags + flag, 1u);
                }
            }
        }
        /* Every thread is done with the shared task (copy_task's last read of its
           destination_count included, and with no destination copy_task has no barrier) before
           thread 0 claims the next one into it. */
        __syncthreads();
    }
}
"#
    ),
};

/// The checksums of whole regions on the device ([`ultraep_xfer::Checksum`]'s sum, computed in
/// parallel): block `(x, y)` adds the terms of its share of the 16-byte vectors of region `y`
/// (at `regions[y]`, `bytes` long, a multiple of 16), a warp adds its threads' sums by shuffles,
/// and one thread per warp adds the warp's sum to `sums[y]` atomically. The terms' sum is a
/// wrapping integer sum, so the order the atomics land in does not change a bit; the host
/// finishes it with the length (`Checksum::from_terms`). `sums` is zeroed before the launch.
pub const REGION_CHECKSUM: KernelSource = KernelSource {
    name: "region_checksum",
    entry_points: &["ultraep_region_checksum"],
    source: r#"
__device__ __forceinline__ unsigned long long checksum_mix(unsigned long long x) {
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 32);
}

__device__ __forceinline__ unsigned long long checksum_term(unsigned long long index,
                                                            unsigned long long word) {
    unsigned long long key = (index + 1ull) * 0x9e3779b97f4a7c15ull;
    unsigned int low = (unsigned int)word + (unsigned int)key;
    unsigned int high = (unsigned int)(word >> 32) + (unsigned int)(key >> 32);
    return (unsigned long long)low * high;
}

extern "C" __global__ void __launch_bounds__(256)
ultraep_region_checksum(const unsigned long long* regions, unsigned long long bytes,
                        unsigned long long* sums) {
    const unsigned long long* words = (const unsigned long long*)regions[blockIdx.y];
    unsigned long long vectors = bytes / 16;
    unsigned long long sum = 0;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long v = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         v < vectors; v += stride) {
        unsigned long long low, high;
        asm volatile("ld.global.cg.v2.u64 {%0, %1}, [%2];"
                     : "=l"(low), "=l"(high) : "l"(words + 2 * v) : "memory");
        sum += checksum_term(2 * v, low) + checksum_term(2 * v + 1, high);
    }
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
        unsigned int low = __shfl_xor_sync(0xffffffffu, (unsigned int)sum, lane_mask);
        unsigned int high = __shfl_xor_sync(0xffffffffu, (unsigned int)(sum >> 32), lane_mask);
        sum += ((unsigned long long)high << 32) | low;
    }
    if ((threadIdx.x & 31u) == 0u) atomicAdd(sums + blockIdx.y, sum);
}
"#,
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
/// holds the round, reading it at the L2. A wait longer than `wait_ns` (on the global
/// timer) sets `status` to 1, which ends every block's waits and the kernel: never a hang.
///
/// Signal words of a rank, 64-bit: `slots x tiles` arrival words, then `slots` open words.
pub const TILE_STREAM_PEER: KernelSource = KernelSource {
    name: "tile_stream_peer",
    entry_points: &["ultraep_tile_stream_peer"],
    source: concat!(
        tile_copy!(),
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

extern "C" __global__ void __launch_bounds__(256)
ultraep_tile_stream_peer(const TileTask* tasks, unsigned int task_count,
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
    __shared__ TileTask task;
    __shared__ unsigned int claimed;
    __shared__ unsigned int ok;
    __shared__ unsigned int stop;
    __shared__ unsigned char* targets[ULTRAEP_STAGED_TARGETS];
    while (true) {
        if (threadIdx.x == 0) {
            claimed = atomicAdd(next_task, 1u);
            if (claimed < task_count) task = tasks[claimed];
            /* The status is read once, for the whole block: a block must leave together, or
               the threads that stay wait at a barrier the others never reach. */
            stop = claimed >= task_count || *(volatile unsigned int*)status != 0u;
        }
        __syncthreads();
        if (stop) return;
        unsigned int tile = (unsigned int)(task.offset / tile_bytes);
        bool relayed = task.wait_flag != 0xffffffffu;
        if (threadIdx.x == 0) {
            ok = 1u;
            if (relayed && task.source_region >= 0x80000000u) {
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
        copy_task(task, destinations, master_bases, slot_bases, state_bytes, relayed, targets);
        /* Every tile's arrival word is read by another process (the slot's owner, and a relay),
           so every tile ends with a system-scope fence: one, by the thread that publishes. */
        if (threadIdx.x == 0) {
            __threadfence_system();
            for (unsigned int d = 0; d < task.destination_count; ++d) {
                TileDestination to = destinations[task.first_destination + d];
                unsigned int slot = to.region & 0x7fffffffu;
                volatile unsigned long long* arrival = (unsigned long long*)word_bases[to.rank]
                    + (unsigned long long)slot * tiles_per_state + tile;
                *arrival = round;
            }
            __threadfence_system();
        }
        /* Every thread is done with the shared task before thread 0 claims the next one. */
        __syncthreads();
    }
}
"#
    ),
};

/// The receiving side of a peer transfer, reported by the device once: thread `i` (grid-strided)
/// watches arrival word `slots[i / tiles_per_state] * tiles_per_state + i % tiles_per_state` of
/// this rank's signal words until it holds `round`. A thread that finds its word still short
/// after `wait_ns` (on the global timer, from the kernel's start), or once another thread has
/// reported, records its pair's index with `atomicMin` into `first_missing` (set to `0xffffffff`
/// before the launch) and stops waiting; the rest of its pairs it reads once each. So the host
/// makes one launch and one read per transfer, not one round trip per tile, and when nothing
/// arrives during the reports the recorded index is the smallest missing one: that of the CPU
/// reference ([`crate::reference::arrivals::first_missing`]). No thread waits at a barrier, so a
/// thread that stops early cannot strand another.
pub const ARRIVALS_AWAIT: KernelSource = KernelSource {
    name: "arrivals_await",
    entry_points: &["ultraep_arrivals_await"],
    source: r#"
extern "C" __global__ void __launch_bounds__(256)
ultraep_arrivals_await(const unsigned long long* words, const unsigned int* slots,
                       unsigned int slot_count, unsigned int tiles_per_state,
                       unsigned long long round, unsigned long long wait_ns,
                       unsigned int* first_missing) {
    unsigned long long started, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(started));
    volatile const unsigned int* reported = first_missing;
    unsigned long long pairs = (unsigned long long)slot_count * tiles_per_state;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < pairs; i += stride) {
        volatile const unsigned long long* word =
            words + (unsigned long long)slots[i / tiles_per_state] * tiles_per_state
                  + i % tiles_per_state;
        while (*word != round) {
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
            if (*reported != 0xffffffffu || now - started > wait_ns) {
                if (*word != round) atomicMin(first_missing, (unsigned int)i);
                break;
            }
            __nanosleep(256);
        }
    }
}
"#,
};

/// Every kernel.
pub const ALL: [KernelSource; 8] = [
    HISTOGRAM,
    REROUTE,
    REROUTE_CHUNKED,
    TILE_STREAM,
    GRADIENT_REDUCE,
    TILE_STREAM_PEER,
    REGION_CHECKSUM,
    ARRIVALS_AWAIT,
];
