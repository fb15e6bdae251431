//! Criterion: a warm cached `get` in one process, freshness check included
//! (the target: ≥ 5 M reads/s; ZEO's warm cache does 170 k/s).
//! Starts its own `store-server` on 127.0.0.1 in a temporary directory.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use store_client::{ReadPolicy, Source};
use store_tests::ServerProcess;

/// Keys of the many-key reads, all cached before measuring.
const WARM_KEYS: usize = 1024;

fn cached_reads(c: &mut Criterion) {
    // Multi-threaded, so the session driver keeps proving freshness on a
    // worker while the measured loop runs (a loop of cache hits never yields).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = runtime.block_on(async {
        let server = ServerProcess::start(dir.path()).await;
        let client = server.client().await;
        client.put("warm", vec![b'x'; 1024]).await.unwrap();
        let mut txn = client.txn();
        for i in 0..WARM_KEYS {
            txn.put(format!("warm/{i:04}"), vec![b'x'; 1024]);
        }
        txn.commit().await.unwrap();
        for i in 0..WARM_KEYS {
            client.get(format!("warm/{i:04}")).await.unwrap();
        }
        client.get("warm").await.unwrap();
        let read = client.read("warm", ReadPolicy::FailFast).await.unwrap();
        assert_eq!(read.source, Source::Cache);
        (server, client)
    });
    let key = bytes::Bytes::from_static(b"warm");
    let keys: Vec<bytes::Bytes> = (0..WARM_KEYS)
        .map(|i| bytes::Bytes::from(format!("warm/{i:04}")))
        .collect();
    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("warm_get_1k", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                let mut hits = 0u64;
                for _ in 0..iters {
                    let read = client.read(key.clone(), ReadPolicy::FailFast).await;
                    hits += u64::from(matches!(read, Ok(ref r) if r.source == Source::Cache));
                    std::hint::black_box(read.ok());
                }
                let elapsed = start.elapsed();
                assert_eq!(hits, iters, "every measured read is a fresh cache hit");
                elapsed
            })
        })
    });
    // Reads spread over many warm keys, from one thread and from two at
    // once (the cache is shared): elements per second over both threads.
    for threads in [1u64, 2] {
        let name = format!("warm_get_1k_{WARM_KEYS}_keys_{threads}_threads");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let each = iters.div_ceil(threads);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (client, keys, runtime) = (&client, &keys, &runtime);
                        scope.spawn(move || {
                            runtime.block_on(async {
                                // Each thread walks the keys from its own offset.
                                let offset = (t as usize) * WARM_KEYS / 2;
                                for i in 0..each as usize {
                                    let key = &keys[(offset + i) % WARM_KEYS];
                                    let read = client.read(key.clone(), ReadPolicy::FailFast).await;
                                    assert!(matches!(read, Ok(ref r) if r.source == Source::Cache));
                                    std::hint::black_box(read.ok());
                                }
                            })
                        });
                    }
                });
                // Each thread did `each`: scale to the `iters` criterion asked for.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (threads * each) as f64)
            })
        });
    }
    group.finish();
    runtime.block_on(client.close());
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = cached_reads
}
criterion_main!(benches);
