//! Per-message cost of the fast path: scan + route + rewrite of a 900-byte INVITE and of a 180
//! response, through the sans-IO router exactly as a shard runs it (no sockets).
//! Run: `cargo bench -p fsroute-dataplane --bench forward`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fsroute_dataplane::dispatch::Algorithm;
use fsroute_dataplane::router::{Action, Router};
use fsroute_dataplane::sip;
use fsroute_dataplane::stats::ShardStats;
use fsroute_dataplane::table::RoutingTable;
use fsroute_dataplane::testing::one_set_table;

const INVITE: &[u8] = include_bytes!("../testdata/sip-corpus/01-invite-from-sbc.sip");
const RINGING: &[u8] = include_bytes!("../testdata/sip-corpus/03-180.sip");

fn table() -> RoutingTable {
    one_set_table(&[1, 1, 1, 1], Algorithm::HashCallId, 1)
}

fn bench(c: &mut Criterion) {
    let t = table();
    let src: SocketAddr = "127.0.0.7:5060".parse().unwrap();
    let mut r = Router::new(0, 1, 7, Arc::new(ShardStats::default()));
    let mut out = Vec::with_capacity(4096);
    let now = Instant::now();
    // The 180 the backend sends carries fsroute's Via on top of the caller's.
    let Action::Forward(_) = r.handle(&t, src, INVITE, now, &mut out) else { panic!("INVITE not forwarded") };
    let our_via = sip::parse(&out).unwrap().top_via.unwrap().span.get(&out).to_vec();
    let m = sip::parse(RINGING).unwrap();
    let at = m.headers_start as usize;
    let mut ringing = RINGING[..at].to_vec();
    ringing.extend_from_slice(b"Via: ");
    ringing.extend_from_slice(&our_via);
    ringing.extend_from_slice(b"\r\n");
    ringing.extend_from_slice(&RINGING[at..]);
    let backend: SocketAddr = "127.0.0.1:5071".parse().unwrap();

    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scan_only_invite_900B", |b| b.iter(|| black_box(sip::parse(black_box(INVITE)).unwrap().call_id)));
    g.bench_function("invite_scan_route_rewrite", |b| {
        b.iter(|| black_box(r.handle(&t, src, black_box(INVITE), now, &mut out)))
    });
    g.bench_function("ringing_180_scan_route_rewrite", |b| {
        b.iter(|| black_box(r.handle(&t, backend, black_box(&ringing), now, &mut out)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
