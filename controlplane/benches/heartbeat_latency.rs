//! Heartbeat -> table-visible latency of the real `fsroute` binary, as its control thread records
//! it (`/status` `control.heartbeat_to_table`: from the moment the ESL poll hands the heartbeat
//! over to the moment the rebuilt table is stored) plus `control.table_rebuild`. K emulated
//! FreeSWITCH boxes (`fsroute_fsemu`, in this process, loopback) heartbeat every
//! `HB_INTERVAL_MS`; a driver thread changes every box's reported Session-Count every 10 ms, so
//! every heartbeat carries new numbers and forces a rebuild. `/status` is read only before and
//! after the measured window, since serving it occupies the control thread.
//!
//! Run (the bench starts the release binary next to it, or `$FSROUTE_BIN`):
//! ```text
//! export CARGO_TARGET_DIR=/work/target-cpbench
//! cargo build --release --bin fsroute
//! cargo bench -p fsroute-controlplane --bench heartbeat_latency
//! ```
//! Knobs (env): `HB_K` (box counts, default `10,100`), `HB_SECS` (window, default 15),
//! `HB_INTERVAL_MS` (default 100), `HB_RUNS` (runs per K, default 3; medians are printed).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsroute_fsemu::{Emulator, EmulatorConfig, EmulatorHandle};
use support::{config_text, cpu_seconds, free_tcp, free_udp, fs_connected, median, Fsroute, Row, RowWeight};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct RunResult {
    count: u64,
    hb: [u64; 3],
    rebuild: [u64; 3],
    rebuild_count: u64,
    cpu_pct: f64,
}

fn summary(v: &serde_json::Value) -> [u64; 3] {
    [v["p50_us"].as_u64().unwrap_or(0), v["p99_us"].as_u64().unwrap_or(0), v["max_us"].as_u64().unwrap_or(0)]
}

fn one_run(k: usize, interval: Duration, secs: u64) -> RunResult {
    let boxes: Vec<EmulatorHandle> = (0..k)
        .map(|_| {
            Emulator::start(EmulatorConfig {
                heartbeat: interval,
                max_sessions: 1000,
                background_cpu: 0,
                hold: Duration::from_secs(600),
                ..EmulatorConfig::default()
            })
            .expect("start emulator")
        })
        .collect();
    for (i, b) in boxes.iter().enumerate() {
        b.set_reported((i % 900) as u64, 1000, 90_000_000);
    }
    let sets = 4.min(k);
    let rows: Vec<Row> = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| Row { setid: 1 + (i % sets) as i32, sip: b.sip_addr(), weight: RowWeight::Fs(b.esl_addr()) })
        .collect();
    let admin = free_tcp();
    let fsroute = Fsroute::start(&config_text(free_udp(), admin, &rows), admin, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (up, total) = fs_connected(&fsroute.status());
        if up == k && total == k {
            break;
        }
        assert!(Instant::now() < deadline, "only {up}/{total} boxes connected:\n{}", fsroute.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every box's numbers change every 10 ms, so every heartbeat differs from the one before.
    let stop = Arc::new(AtomicBool::new(false));
    let boxes = Arc::new(boxes);
    let driver = {
        let (stop, boxes) = (Arc::clone(&stop), Arc::clone(&boxes));
        std::thread::spawn(move || {
            let mut tick: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick += 1;
                for (i, b) in boxes.iter().enumerate() {
                    let sessions = (tick * 7 + i as u64 * 13) % 900;
                    b.set_reported(sessions, 1000, 50_000_000 + (tick % 50) as u32 * 1_000_000);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let cpu0 = cpu_seconds(fsroute.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_seconds(fsroute.pid()) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let st = fsroute.status();
    stop.store(true, Ordering::Relaxed);
    driver.join().unwrap();
    let c = &st["control"];
    let r = RunResult {
        count: c["heartbeat_to_table"]["count"].as_u64().unwrap_or(0),
        hb: summary(&c["heartbeat_to_table"]),
        rebuild: summary(&c["table_rebuild"]),
        rebuild_count: c["table_rebuild"]["count"].as_u64().unwrap_or(0),
        cpu_pct: 100.0 * cpu / wall,
    };
    fsroute.stop();
    r
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let ks: Vec<usize> = std::env::var("HB_K")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = env_or("HB_SECS", 15);
    let interval = Duration::from_millis(env_or("HB_INTERVAL_MS", 100));
    let runs: usize = env_or("HB_RUNS", 3);
    support::raise_nofile(65_536);
    println!(
        "heartbeat -> table visible, real fsroute ({}), {} s window, heartbeat every {:?}, {} run(s) per K",
        support::fsroute_bin().display(),
        secs,
        interval,
        runs
    );
    println!("{:>5} {:>4} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}", "K", "run", "hb", "hb p50", "hb p99", "hb max", "rb count", "rb p50", "rb p99", "rb max", "cpu%");
    let mut medians = Vec::new();
    for &k in &ks {
        let mut all = Vec::new();
        for run in 1..=runs {
            let r = one_run(k, interval, secs);
            println!(
                "{:>5} {:>4} {:>8} {:>7}us {:>7}us {:>7}us {:>9} {:>7}us {:>7}us {:>7}us {:>6.1}%",
                k, run, r.count, r.hb[0], r.hb[1], r.hb[2], r.rebuild_count, r.rebuild[0], r.rebuild[1], r.rebuild[2], r.cpu_pct
            );
            all.push(r);
        }
        let m = |f: &dyn Fn(&RunResult) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        medians.push((
            k,
            m(&|r| r.hb[0] as f64),
            m(&|r| r.hb[1] as f64),
            m(&|r| r.rebuild[0] as f64),
            m(&|r| r.rebuild[1] as f64),
            m(&|r| r.cpu_pct),
        ));
    }
    println!("\nmedian over runs (K, hb->table p50 / p99, rebuild p50 / p99, fsroute CPU):");
    for (k, h50, h99, r50, r99, cpu) in medians {
        println!("K={k:<4} hb->table p50 {h50:.0} us, p99 {h99:.0} us | rebuild p50 {r50:.0} us, p99 {r99:.0} us | fsroute CPU {cpu:.1}%");
    }
}
