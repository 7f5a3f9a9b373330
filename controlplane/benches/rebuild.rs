//! Routing-table rebuild time: `build_table` alone (no parsing, no swap, and the dropped table
//! is freed outside the timed loop) for 10, 1,000 and 10,000 `[[dispatcher]]` rows.
//!
//! `mix/N`: a realistic farm: 2 sets (N = 10) or 4 sets, rows interleaved over the sets, every
//! other row an fs:// weight whose box has fresh heartbeat numbers in `Stats` (so the FreeSWITCH
//! weight arithmetic runs), the rest static weights 1..=10. `rr_worst/N`: one set holding all N
//! rows with static weights spread over 1..=100 (gcd 1), so the smooth weighted round-robin
//! schedule is as long as the builder allows. `named_mix/N`: `mix/N` plus one row naming a host
//! with two resolved addresses in `Stats::dns` (docs/DNS.md), so the builder expands names (it
//! then works on a copy of the config). Counters persist across iterations as in the
//! runtime (steady state: every destination already has its counters).
//!
//! On a shared, loaded machine wall time mostly measures the scheduler; `REBUILD_CLOCK=cpu`
//! measures the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) instead, which excludes
//! time spent descheduled.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-cpbench cargo bench -p fsroute-controlplane --bench rebuild`
//! (add `REBUILD_CLOCK=cpu` in the environment for CPU time).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fsroute_controlplane::config::{self, Config, DnsTarget, Weight};
use fsroute_controlplane::dns::DnsAddr;
use fsroute_controlplane::state::{AdminState, CounterStore, FsStats, Stats};
use fsroute_controlplane::table_builder::build_table;
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
                    ..FsStats::default()
                },
            );
        }
    }
    stats
}

/// Adds a row naming `pool.bench:5060` to set 1, resolved to two addresses.
fn with_a_name(config: &mut Config, stats: &mut Stats) {
    let name = DnsTarget { host: "pool.bench".into(), port: Some(5060) };
    let mut row = config.dispatcher.iter().find(|r| matches!(r.weight, Weight::Static(_))).expect("a static row").clone();
    row.uri = "sip:pool.bench:5060".into();
    row.addr = "0.0.0.0:0".parse().unwrap();
    row.name = Some(name.clone());
    config.dispatcher.push(row);
    let addrs = ["127.3.0.1:5060", "127.3.0.2:5060"].map(|a| DnsAddr { srv: None, addr: a.parse().unwrap() });
    stats.dns.insert(name, addrs.to_vec());
}

fn bench_case<M: Measurement>(c: &mut Criterion<M>, group: &str, rows: fn(usize) -> Vec<Row>, named: bool) {
    let mut g = c.benchmark_group(group);
    g.sampling_mode(SamplingMode::Flat);
    for n in SIZES {
        let mut config = parse(&rows(n));
        let mut stats = populated_stats(&config);
        if named {
            with_a_name(&mut config, &mut stats);
        }
        let admin = AdminState::default();
        let mut counters = CounterStore::new();
        let mut generation = 1;
        let first = build_table(&config, &stats, &admin, &mut counters, generation);
        let schedule_hint: usize = first.sets.iter().map(|s| s.destinations.len()).sum();
        assert_eq!(schedule_hint, if named { n + 2 } else { n });
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

/// Groups `mix`, `named_mix` and `rr_worst` (wall time), or with a `cpu_` prefix (thread CPU time).
fn benches<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    bench_case(c, &format!("{prefix}mix"), mix_rows, false);
    bench_case(c, &format!("{prefix}named_mix"), mix_rows, true);
    bench_case(c, &format!("{prefix}rr_worst"), rr_rows, false);
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Criterion measurement: CPU time of the benchmark thread (criterion runs the routine on it).
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, i: Duration) -> Duration {
        thread_cpu().saturating_sub(i)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match typical {
            t if t < 1e3 => (1.0, "ns cpu"),
            t if t < 1e6 => (1e3, "µs cpu"),
            t if t < 1e9 => (1e6, "ms cpu"),
            _ => (1e9, "s cpu"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, _t: &Throughput, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = 1e9 / *v);
        "rebuilds/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn run<M: Measurement>(c: Criterion<M>, prefix: &str) {
    let mut c = c.warm_up_time(Duration::from_secs(1)).configure_from_args();
    benches(&mut c, prefix);
    c.final_summary();
}

fn main() {
    match std::env::var("REBUILD_CLOCK").as_deref() {
        Ok("cpu") => run(Criterion::default().with_measurement(ThreadCpu), "cpu_"),
        _ => run(Criterion::<WallTime>::default(), ""),
    }
}
