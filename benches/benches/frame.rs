//! Criterion: encoding and decoding frames, the per-request CPU cost of the
//! protocol.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use store_protocol::{
    content_digest, decode_body, encode_frame, CommitRequest, Request, TxnId, Write,
    DEFAULT_MAX_FRAME_BYTES,
};

fn commit_1k() -> Request {
    let writes = vec![Write::Put {
        key: Bytes::from_static(b"bench/00000042"),
        value: Bytes::from(vec![b'x'; 1024]),
    }];
    Request::Commit(CommitRequest {
        txn_id: TxnId {
            client_id: u128::MAX / 3,
            seq: 42,
        },
        acked_below: 42,
        digest: content_digest(&[], &writes),
        read_set: vec![],
        writes,
    })
}

fn frames(c: &mut Criterion) {
    let request = commit_1k();
    let frame = encode_frame(&request, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("encode_commit_1k", |b| {
        b.iter(|| encode_frame(std::hint::black_box(&request), DEFAULT_MAX_FRAME_BYTES).unwrap())
    });
    group.bench_function("decode_commit_1k", |b| {
        b.iter(|| decode_body::<Request>(std::hint::black_box(&frame[4..])).unwrap())
    });
    group.bench_function("digest_commit_1k", |b| {
        let Request::Commit(commit) = &request else {
            unreachable!()
        };
        b.iter(|| content_digest(&commit.read_set, std::hint::black_box(&commit.writes)))
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
