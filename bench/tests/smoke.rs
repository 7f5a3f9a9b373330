//! CI smoke runs of every scenario against the real binaries, so the harness cannot rot: each
//! runs `fsroute-bench SCENARIO --smoke --json` (a few seconds, loopback only; the soak runs
//! `soak --seconds 12 --json`) and checks that
//! it ran and produced sane numbers (calls answered, zero failures where the scenario demands
//! zero), never timing thresholds. The harness finds `fsroute` next to its own executable, so
//! the proxy binary must be built in the same target dir: `cargo test --workspace` does that
//! (the root package's tests build target/<profile>/fsroute); with `cargo test -p fsroute-bench`
//! alone, build it first (`cargo build --bin fsroute`) or set FSROUTE_BIN.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The scenarios share two cores and ports: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsroute-bench"))
}

fn fsroute_present() -> bool {
    if std::env::var_os("FSROUTE_BIN").is_some() {
        return true;
    }
    let dir = bench_bin().parent().map(PathBuf::from).unwrap_or_default();
    dir.join("fsroute").is_file()
}

/// Runs one scenario with `--smoke --json`, bounded in time; returns (exit code, JSON).
fn run(scenario: &str) -> (i32, Value) {
    let out_dir = std::env::temp_dir().join(format!("fsroute-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_dir = out_dir.display().to_string();
    run_args(scenario, &["--smoke", "--json", "--out-dir", &out_dir])
}

/// Runs `fsroute-bench SCENARIO ARGS...` (which must print JSON), bounded in time.
fn run_args(scenario: &str, args: &[&str]) -> (i32, Value) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        fsroute_present(),
        "the fsroute binary is not in {}: run `cargo test --workspace` (it builds it) or `cargo build --bin fsroute` first, or set FSROUTE_BIN",
        bench_bin().parent().unwrap().display()
    );
    let mut child = Command::new(bench_bin())
        .arg(scenario)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fsroute-bench");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{scenario} --smoke did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{scenario}: no JSON ({e}); stderr: {stderr}; stdout: {stdout}"));
    (out.status.code().unwrap_or(-1), v)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn throughput_smoke_finds_a_zero_failure_rate_for_every_target() {
    let (code, v) = run("throughput");
    assert_eq!(code, 0, "{v}");
    let searches = v["searches"].as_array().unwrap();
    let names: Vec<&str> = searches.iter().map(|s| s["target"].as_str().unwrap()).collect();
    for want in ["direct", "bare UDP relay", "fsroute 1 shard", "fsroute 2 shards"] {
        assert!(names.iter().any(|n| n.starts_with(want)), "{want} missing from {names:?}");
    }
    for s in searches {
        let steps = s["steps"].as_array().unwrap();
        assert!(!steps.is_empty());
        let answered: u64 = steps.iter().map(|st| u(&st["uac"]["answered"])).sum();
        assert!(answered > 0, "{}: no call answered", s["target"]);
        if s["target"].as_str().unwrap().starts_with("fsroute") {
            // A few hundred calls/s is far below any limit: it must pass with zero failures.
            assert!(s["max_rate"].as_f64().unwrap() > 0.0, "fsroute failed the smoke rate: {}", steps[0]["why"]);
            assert_eq!(u(&steps[0]["uac"]["reordered_calls"]), 0, "fsroute reordered a call");
        }
    }
    for st in v["cpu_steps"].as_array().unwrap() {
        assert!(st["proxy_cpu_s"].as_f64().is_some(), "no CPU figure for {}", st["target"]);
    }
}

#[test]
fn single_peer_smoke_reports_shares_and_keeps_flow_order() {
    let (code, v) = run("single-peer");
    assert_eq!(code, 0, "{v}");
    let modes = v["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    for m in modes {
        let f = &m["fixed"]["uac"];
        assert!(u(&f["answered"]) > 0, "{}: nothing answered", m["name"]);
        assert_eq!(u(&f["attempted"]) - u(&f["completed"]), 0, "{}: calls failed at the smoke rate", m["name"]);
        let shares: f64 = m["received_share"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 0.01, "{}: shard shares sum to {shares}", m["name"]);
        if m["ingress"] == "flow" {
            assert_eq!(u(&f["reordered_calls"]), 0, "{}: flow ingress reordered a call", m["name"]);
        }
    }
    // With one peer and flow ingress, both shards must still process work (the hand-off).
    let two_flow = modes.iter().find(|m| m["shards"].as_u64() > Some(1) && m["ingress"] == "flow").unwrap();
    let processed: Vec<f64> = two_flow["processed_share"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(processed.iter().all(|p| *p > 0.05), "flow ingress did not spread work: {processed:?}");
}

#[test]
fn fs_aware_smoke_runs_the_modes_and_draws_the_cdf() {
    let (code, v) = run("fs-aware");
    assert_eq!(code, 0, "{v}");
    let modes = v["modes"].as_array().unwrap();
    let rr = &modes[0];
    assert!(rr["mode"].as_str().unwrap().contains("round-robin"));
    assert!(u(&rr["uac"]["answered"]) > 0, "round-robin answered nothing");
    for m in modes {
        if m["uac"].is_null() {
            assert!(m["unavailable"].as_str().unwrap().contains("not available"), "{m}");
        } else {
            assert!(u(&m["uac"]["answered"]) > 0, "{}: nothing answered", m["mode"]);
            assert_eq!(m["boxes"].as_array().unwrap().len(), 3);
        }
    }
    let plot = v["plot"].as_str().expect("no plot path");
    let svg = std::fs::read_to_string(plot).expect("plot file");
    assert!(svg.contains("<svg") && svg.contains("polyline"), "plot has no lines");
}

#[test]
fn reload_smoke_loses_no_call() {
    let (code, v) = run("reload");
    let f = &v["step"]["uac"];
    assert!(u(&f["answered"]) > 0);
    assert_eq!(u(&f["attempted"]) - u(&f["completed"]), 0, "calls failed under SIGHUP: {v}");
    assert!(u(&v["reloads_applied"]) > 0, "no reload applied: {v}");
    assert_eq!(u(&v["reload_failures"]), 0);
    assert_eq!(code, 0);
}

#[test]
fn soak_smoke_survives_floods_and_reloads_and_writes_its_files() {
    let dir = std::env::temp_dir().join(format!("fsroute-bench-soak-smoke-{}", std::process::id()));
    let out = dir.display().to_string();
    let (code, v) = run_args("soak", &["--seconds", "12", "--json", "--out", &out]);
    assert_eq!(code, 0, "fsroute died under the soak: {}", v["fsroute_died"]);
    assert!(u(&v["calls_attempted"]) > 0 && u(&v["calls_completed"]) > 0, "no legitimate call completed");
    assert!(u(&v["flood_sent"]) > 0, "no flood was sent");
    assert!(u(&v["sighups_sent"]) > 0, "no SIGHUP was sent");
    assert_eq!(u(&v["reload_failures_reported"]), 0, "a reload was rejected");
    assert!(u(&v["rss_peak_kib"]) > 0, "no RSS sample");
    let csv = std::fs::read_to_string(v["csv"].as_str().unwrap()).expect("soak.csv");
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("t_s,rss_kib,calls_attempted,calls_ok,calls_failed,flood_sent"));
    assert!(lines.count() >= 5, "too few samples in the CSV");
    let png = std::fs::read(v["plot"].as_str().unwrap_or_else(|| panic!("no plot: {}", v["plot_error"]))).expect("plot file");
    assert!(png.starts_with(b"\x89PNG"), "the plot is not a PNG");
    let _ = std::fs::remove_dir_all(&dir);
}
