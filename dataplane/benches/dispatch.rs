//! Pick latency of every dispatcher algorithm at 4 and 64 destinations, the rendezvous score alone
//! (integer against the float score it replaced, at 2, 4 and 16 destinations, equal and unequal
//! weights, side by side), plus the cost of building a `Selector` (control-plane work on each
//! routing-table rebuild). Before measuring, it checks that picks
//! allocate nothing, with a counting global allocator that only this bench binary installs.

use fsroute_dataplane::testing::{allocations, CountingAlloc};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use fsroute_dataplane::dispatch::{
    opensips_uri_keys, rendezvous_call_hash, trim_callid, Algorithm, HashMode, Member, Selector,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SIZES: [usize; 2] = [4, 64];

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("sip:10.0.{}.{}:5060", i / 256, i % 256))
        .collect()
}

/// Unequal weights, one inactive member: the realistic shape, not the best case.
fn members(keys: &[String]) -> Vec<Member<'_>> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| Member {
            key,
            weight: 10 + (i as u32 * 37) % 91,
            priority: (i % 3) as i32,
            active: i != 1,
        })
        .collect()
}

fn call_ids() -> Vec<String> {
    // Deterministic pseudo-random Call-IDs (splitmix64), so runs compare.
    let mut x: u64 = 0x1234_5678_9abc_def0;
    (0..1024)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}@pc{}.example.com", z ^ (z >> 31), z % 50)
        })
        .collect()
}

fn assert_picks_do_not_allocate() {
    let ids = call_ids();
    for n in SIZES {
        let keys = keys(n);
        let s = Selector::new(&members(&keys));
        let before = allocations();
        let mut acc = 0usize;
        for (i, id) in ids.iter().enumerate() {
            let (u, h) = opensips_uri_keys(b"\"Bob\" <sip:bob@biloxi.com:5070>;tag=a6c85cf");
            for alg in Algorithm::ALL {
                for mode in [HashMode::Rendezvous, HashMode::Opensips] {
                    let k = if alg == Algorithm::HashCallId {
                        (trim_callid(id.as_bytes()), &b""[..])
                    } else {
                        (u, h)
                    };
                    acc += s
                        .pick(alg, mode, k, i as u64, i as u64 * 0x9e37_79b9)
                        .unwrap_or(0);
                }
            }
        }
        black_box(acc);
        let allocated = allocations() - before;
        assert_eq!(
            allocated, 0,
            "picks allocated {allocated} times at {n} members"
        );
    }
    eprintln!("dispatch: picks made 0 allocations");
}

fn bench_picks(c: &mut Criterion) {
    let ids = call_ids();
    let mut group = c.benchmark_group("dispatch/pick");
    for n in SIZES {
        let keys = keys(n);
        let s = Selector::new(&members(&keys));
        for mode in [HashMode::Rendezvous, HashMode::Opensips] {
            group.bench_with_input(
                BenchmarkId::new(format!("hash-callid/{}", mode.name()), n),
                &s,
                |b, s| {
                    let mut i = 0usize;
                    b.iter(|| {
                        i = (i + 1) & 1023;
                        s.pick_hash(mode, trim_callid(black_box(ids[i].as_bytes())), b"")
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("hash-from/{}", mode.name()), n),
                &s,
                |b, s| {
                    b.iter(|| {
                        let (u, h) = opensips_uri_keys(black_box(
                            b"\"Alice\" <sip:alice@atlanta.com:5070>;tag=1928301774",
                        ));
                        s.pick_hash(mode, u, h)
                    })
                },
            );
        }
        group.bench_with_input(BenchmarkId::new("round-robin", n), &s, |b, s| {
            let mut cursor = 0u64;
            b.iter(|| {
                cursor = cursor.wrapping_add(1);
                s.pick_round_robin(black_box(cursor))
            })
        });
        group.bench_with_input(BenchmarkId::new("random", n), &s, |b, s| {
            let mut r = 0u64;
            b.iter(|| {
                r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
                s.pick_random(black_box(r))
            })
        });
        group.bench_with_input(BenchmarkId::new("first", n), &s, |b, s| {
            b.iter(|| black_box(s).pick_first())
        });
    }
    group.finish();
}

/// The score alone, for an already hashed call: `integer` is fsroute's pick, `float` the `-ln(u) / w`
/// pick it replaced (kept behind the `testing` feature as the tests' oracle), on the same candidates.
fn bench_rendezvous(c: &mut Criterion) {
    let hashes: Vec<u64> = call_ids().iter().map(|id| rendezvous_call_hash(trim_callid(id.as_bytes()), b"")).collect();
    let mut group = c.benchmark_group("dispatch/rendezvous");
    for n in [2, 4, 16] {
        let keys = keys(n);
        for (shape, weight) in [("equal", (|_| 50) as fn(usize) -> u32), ("unequal", |i| 10 + (i as u32 * 37) % 91)] {
            let m: Vec<Member> = keys.iter().enumerate().map(|(i, key)| Member { key, weight: weight(i), priority: 0, active: true }).collect();
            let s = Selector::new(&m);
            group.bench_with_input(BenchmarkId::new(format!("integer/{shape}"), n), &s, |b, s| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    s.pick_rendezvous(black_box(hashes[i]))
                })
            });
            group.bench_with_input(BenchmarkId::new(format!("float/{shape}"), n), &s, |b, s| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    s.pick_rendezvous_float(black_box(hashes[i]))
                })
            });
        }
    }
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch/build");
    for n in SIZES {
        let keys = keys(n);
        let m = members(&keys);
        group.bench_with_input(BenchmarkId::new("selector", n), &m, |b, m| {
            b.iter(|| Selector::new(black_box(m)))
        });
        // Coprime large weights: the longest round-robin schedule (65,536 slots) is built.
        let heavy: Vec<Member> = m
            .iter()
            .enumerate()
            .map(|(i, x)| Member {
                weight: 10_007 + 2 * i as u32,
                ..*x
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::new("selector-max-schedule", n),
            &heavy,
            |b, m| b.iter(|| Selector::new(black_box(m))),
        );
    }
    group.finish();
}

fn main() {
    assert_picks_do_not_allocate();
    let mut c = Criterion::default().configure_from_args();
    bench_picks(&mut c);
    bench_rendezvous(&mut c);
    bench_build(&mut c);
    c.final_summary();
}
