//! The weighted canary pick (`Split::pick`). Run: `cargo bench -p tern-benches --bench split`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tern_proxy::metrics::Metrics;
use tern_proxy::split::Split;

fn bench_pick(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("split_pick");
    for weights in [vec![1u32], vec![90, 10], vec![50, 20, 15, 10, 5]] {
        let split = Split::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (i, w, metrics.target("l", "r", &format!("b{i}"))))
                .collect(),
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{}_backends", weights.len())),
            &split,
            |b, s| b.iter(|| black_box(s.pick().map(|t| t.backend))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
