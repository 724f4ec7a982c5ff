//! How fast the topology answers the queries the transfer scheduler makes for every replica.
//!
//! Each iteration answers one query for each of 4096 fixed pseudo-random rank pairs on four GB200
//! NVL72 racks (288 ranks), so the figure per pair is the reported time / 4096.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ultraep_topo::{Preset, RankId, Topology};

const PAIRS: usize = 4096;

/// Rank pairs from a fixed linear congruential sequence: the same pairs on every run.
fn rank_pairs(topo: &Topology) -> Vec<(RankId, RankId)> {
    let n = topo.rank_count() as u64;
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        RankId(((state >> 33) % n) as u32)
    };
    (0..PAIRS).map(|_| (next(), next())).collect()
}

fn topology_queries(c: &mut Criterion) {
    let topo = Preset::Gb200Nvl72.topology(4).expect("a valid preset");
    let pairs = rank_pairs(&topo);
    let mut group = c.benchmark_group("topology");
    group.throughput(Throughput::Elements(PAIRS as u64));
    group.bench_function("domain_of", |b| {
        b.iter(|| {
            for &(a, _) in &pairs {
                black_box(topo.domain_of(black_box(a)).ok());
            }
        })
    });
    group.bench_function("link_class", |b| {
        b.iter(|| {
            for &(a, z) in &pairs {
                black_box(topo.link_class(black_box(a), black_box(z)).ok());
            }
        })
    });
    group.bench_function("transfer_time_44MB", |b| {
        b.iter(|| {
            for &(a, z) in &pairs {
                black_box(
                    topo.transfer_time(black_box(a), black_box(z), 44_000_000)
                        .ok(),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, topology_queries);
criterion_main!(benches);
