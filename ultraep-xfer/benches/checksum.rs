//! The CPU checksum that verifies every copy on the host data planes, against a plain copy of the
//! same bytes measured in the same run (the ratio is what to compare across machines).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ultraep_xfer::checksum;

fn checksum_against_copy(c: &mut Criterion) {
    let bytes: Vec<u8> = (0..4u64 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut into = vec![0u8; bytes.len()];
    let mut group = c.benchmark_group("checksum_4MiB");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("checksum", |b| b.iter(|| checksum(black_box(&bytes))));
    group.bench_function("copy", |b| {
        b.iter(|| {
            into.copy_from_slice(black_box(&bytes));
            black_box(&into);
        })
    });
    group.finish();
}

criterion_group!(benches, checksum_against_copy);
criterion_main!(benches);
