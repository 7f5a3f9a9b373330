//! Routing-table rebuild time: `build_table` alone (no parsing, no swap, and the dropped table
//! is freed outside the timed loop) for 10, 1,000 and 10,000 `[[dispatcher]]` rows.
//!
//! `mix/N`: a realistic farm: 2 sets (N = 10) or 4 sets, rows interleaved over the sets, every
//! other row an fs:// weight whose box has fresh heartbeat numbers in `Stats` (so the FreeSWITCH
//! weight arithmetic runs), the rest static weights 1..=10. `rr_worst/N`: one set holding all N
//! rows with static weights spread over 1..=100 (gcd 1), so the smooth weighted round-robin
//! schedule is as long as the builder allows. Counters persist across iterations as in the
//! runtime (steady state: every destination already has its counters).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-cpbench cargo bench -p fsroute-controlplane --bench rebuild`

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use fsroute_controlplane::build::{build_table, AdminState, CounterStore, FsStats, Stats};
use fsroute_controlplane::config::{self, Config, Weight};
use support::{config_text, dest_addr, Row, RowWeight};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// The fs:// endpoint of row i: 127.1.x.y:8021 (never connected to; only parsed).
fn esl_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 1, (1 + i / 250) as u8, (1 + i % 250) as u8], 8021))
}

fn mix_rows(n: usize) -> Vec<Row> {
    let sets = if n <= 10 { 2 } else { 4 };
    (0..n)
        .map(|i| Row {
            setid: 1 + (i % sets) as i32,
            sip: dest_addr(i),
            weight: if i % 2 == 0 { RowWeight::Fs(esl_addr(i)) } else { RowWeight::Static(1 + (i % 10) as u32) },
        })
        .collect()
}

fn rr_rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| Row { setid: 1, sip: dest_addr(i), weight: RowWeight::Static(1 + ((i * 37 + 11) % 100) as u32) })
        .collect()
}

fn parse(rows: &[Row]) -> Config {
    let text = config_text("127.0.0.1:5060".parse().unwrap(), "127.0.0.1:9060".parse().unwrap(), rows);
    let started = Instant::now();
    let c = config::parse(&text, Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("(setup) parsing {} rows took {:?} (one run, not part of the measurement)", rows.len(), started.elapsed());
    c
}

/// Fresh heartbeat numbers for every fs:// box in `config`, varied so weights differ.
fn populated_stats(config: &Config) -> Stats {
    let mut stats = Stats::default();
    let now = Instant::now();
    for (i, row) in config.dispatcher.iter().enumerate() {
        if let Weight::Fs(fs) = &row.weight {
            stats.fs.insert(
                fs.key(),
                FsStats {
                    connected: true,
                    idle_cpu_micro: 50_000_000 + ((i * 7_919) % 50) as u32 * 1_000_000,
                    session_count: ((i * 37) % 1_000) as u32,
                    max_sessions: 1_000,
                    last_heartbeat: Some(now),
                    stale: false,
                },
            );
        }
    }
    stats
}

fn bench_case(c: &mut Criterion, group: &str, rows: fn(usize) -> Vec<Row>) {
    let mut g = c.benchmark_group(group);
    g.sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let config = parse(&rows(n));
        let stats = populated_stats(&config);
        let admin = AdminState::default();
        let mut counters = CounterStore::new();
        let mut generation = 1;
        let first = build_table(&config, &stats, &admin, &mut counters, generation);
        let schedule_hint: usize = first.sets.iter().map(|s| s.destinations.len()).sum();
        assert_eq!(schedule_hint, n);
        drop(first);
        if n >= 10_000 {
            g.sample_size(10).measurement_time(Duration::from_secs(8));
        } else {
            g.sample_size(30).measurement_time(Duration::from_secs(4));
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_with_large_drop(|| {
                generation += 1;
                build_table(&config, &stats, &admin, &mut counters, generation)
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_case(c, "mix", mix_rows);
    bench_case(c, "rr_worst", rr_rows);
}

criterion_group! {
    name = rebuild;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(rebuild);
